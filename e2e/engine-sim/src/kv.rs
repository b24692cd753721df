//! A KV-cache model, so where a request goes changes what it costs, as on a real
//! engine.
//!
//! - **Tokens** are words, as everywhere in engine-sim; a chat message is its role as
//!   one token, then its content's words.
//! - **The cache** holds blocks of `block_tokens` tokens, least recently used dropped
//!   first past `capacity_tokens`. A block is named by a hash chained over every token
//!   before it, so a request's cached prefix is its leading blocks the cache holds.
//! - **Prefill** costs `prefill_per_token` per token not cached, on one lane per
//!   replica (prefill is compute-bound: requests take turns), and fills the cache.
//! - **Decode** costs `decode_per_token` per output token, in parallel for the
//!   sequences in flight (continuous batching, up to `max_num_seqs`).
//!
//! [`KvCache::cached_tokens`] reads the true cache state without changing it: what an
//! oracle router, in a benchmark, routes on.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

/// The KV cache's shape and the engine's costs.
#[derive(Clone, Debug)]
pub struct KvConfig {
    /// Tokens the cache holds.
    pub capacity_tokens: u64,
    /// Tokens per block (vLLM's default is 16).
    pub block_tokens: u64,
    /// Prefill time per token not cached.
    pub prefill_per_token: Duration,
    /// Decode time per output token of one sequence.
    pub decode_per_token: Duration,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            capacity_tokens: 16_384,
            block_tokens: 16,
            prefill_per_token: Duration::from_micros(100),
            decode_per_token: Duration::from_millis(2),
        }
    }
}

/// The least recently used blocks, by chained hash.
#[derive(Debug, Default)]
struct Lru {
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, block: u64, cap: usize) {
        self.tick += 1;
        if let Some(old) = self.stamp_of.insert(block, self.tick) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.tick, block);
        while self.stamp_of.len() > cap {
            let Some((_, b)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamp_of.remove(&b);
        }
    }
}

/// One replica's KV cache and prefill lane.
#[derive(Debug)]
pub struct KvCache {
    pub config: KvConfig,
    lru: Mutex<Lru>,
    /// Prefill takes turns.
    lane: tokio::sync::Mutex<()>,
    /// Prompt tokens prefilled or found, and of them found in the cache.
    pub queried: AtomicU64,
    pub hits: AtomicU64,
    /// Tokens of the sequences running now (prompt and answer).
    in_use: AtomicU64,
}

/// A running sequence's hold on the cache, released when it finishes.
#[derive(Debug)]
pub struct InUse {
    kv: std::sync::Arc<KvCache>,
    tokens: u64,
}

impl InUse {
    pub fn new(kv: std::sync::Arc<KvCache>, tokens: u64) -> Self {
        kv.in_use.fetch_add(tokens, Ordering::Relaxed);
        Self { kv, tokens }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.kv.in_use.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// A request's tokens, cut into chained block hashes (full blocks only), and how many
/// tokens it has.
pub fn blocks(req: &Value, block_tokens: u64) -> (Vec<u64>, u64) {
    let mut tokens: Vec<&str> = Vec::new();
    fn words<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        if let Some(s) = v.as_str() {
            out.extend(s.split_whitespace());
        }
    }
    match req.get("messages").and_then(Value::as_array) {
        Some(msgs) => {
            for m in msgs {
                tokens.push(m["role"].as_str().unwrap_or("?"));
                words(&m["content"], &mut tokens);
            }
        }
        None => words(&req["prompt"], &mut tokens),
    }
    let mut h = DefaultHasher::new();
    req.get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .hash(&mut h);
    let chained = tokens
        .chunks_exact(block_tokens.max(1) as usize)
        .map(|block| {
            block.hash(&mut h);
            h.finish()
        })
        .collect();
    (chained, tokens.len() as u64)
}

impl KvCache {
    pub fn new(config: KvConfig) -> Self {
        Self {
            config,
            lru: Mutex::default(),
            lane: tokio::sync::Mutex::new(()),
            queried: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            in_use: AtomicU64::new(0),
        }
    }

    fn cap_blocks(&self) -> usize {
        (self.config.capacity_tokens / self.config.block_tokens.max(1)).max(1) as usize
    }

    /// Leading tokens of `blocks` the cache holds now (changes nothing).
    pub fn cached_tokens(&self, blocks: &[u64]) -> u64 {
        let lru = self.lru.lock().expect("lock");
        blocks
            .iter()
            .take_while(|b| lru.stamp_of.contains_key(b))
            .count() as u64
            * self.config.block_tokens
    }

    /// Share of the cache in use, 0 to 1, as vLLM reports it: the blocks of the
    /// sequences running now; blocks only kept for prefix reuse are free to evict and
    /// count as free.
    pub fn usage(&self) -> f64 {
        let blocks = self
            .in_use
            .load(Ordering::Relaxed)
            .div_ceil(self.config.block_tokens.max(1));
        (blocks as f64 / self.cap_blocks() as f64).min(1.0)
    }

    /// Share of the cache holding blocks (running or kept for reuse), 0 to 1.
    pub fn occupancy(&self) -> f64 {
        self.lru.lock().expect("lock").stamp_of.len() as f64 / self.cap_blocks() as f64
    }

    /// Prefills a prompt of `prompt_tokens` tokens cut into `blocks`: waits for the
    /// lane, then for the tokens not cached; fills the cache. Returns the tokens found
    /// cached.
    pub async fn prefill(&self, blocks: &[u64], prompt_tokens: u64) -> u64 {
        let _turn = self.lane.lock().await;
        let cached = self.cached_tokens(blocks).min(prompt_tokens);
        let work = self.config.prefill_per_token * (prompt_tokens - cached) as u32;
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        let cap = self.cap_blocks();
        let mut lru = self.lru.lock().expect("lock");
        for &b in blocks {
            lru.touch(b, cap);
        }
        drop(lru);
        self.queried.fetch_add(prompt_tokens, Ordering::Relaxed);
        self.hits.fetch_add(cached, Ordering::Relaxed);
        cached
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(system: &str, user: &str) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]})
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_prefix_is_cheap_the_second_time_and_evicted_past_capacity() {
        let kv = KvCache::new(KvConfig {
            capacity_tokens: 64,
            block_tokens: 4,
            prefill_per_token: Duration::from_millis(1),
            decode_per_token: Duration::ZERO,
        });
        // "system", 39 words, "user", 3 words: 44 tokens, 11 blocks; the first 10 are
        // the system message.
        let system = "w ".repeat(39);
        let (a, n) = blocks(&chat(&system, "one two three"), 4);
        assert_eq!((a.len(), n), (11, 44));
        let (b, _) = blocks(&chat(&system, "four five six"), 4);
        assert_eq!(a[..10], b[..10]);
        let t = tokio::time::Instant::now();
        assert_eq!(kv.prefill(&a, 44).await, 0);
        assert_eq!(t.elapsed(), Duration::from_millis(44));
        assert_eq!(kv.cached_tokens(&b), 40);
        let t = tokio::time::Instant::now();
        assert_eq!(kv.prefill(&b, 44).await, 40);
        assert_eq!(t.elapsed(), Duration::from_millis(4));
        assert_eq!(kv.hits.load(Ordering::Relaxed), 40);
        // Another model's prompt shares nothing; a stream of other prompts evicts it.
        let mut other = chat(&system, "x");
        other["model"] = json!("m2");
        assert_eq!(kv.cached_tokens(&blocks(&other, 4).0), 0);
        for i in 0..20 {
            let (p, _) = blocks(&chat(&format!("other {i} ").repeat(10), ""), 4);
            kv.prefill(&p, 20).await;
        }
        assert_eq!(kv.cached_tokens(&a), 0);
        assert!(kv.occupancy() <= 1.0);
    }

    /// Usage is what running sequences hold (as vLLM reports it); blocks kept for reuse
    /// after their sequence ended are not in use.
    #[test]
    fn usage_counts_running_sequences_only() {
        let kv = std::sync::Arc::new(KvCache::new(KvConfig {
            capacity_tokens: 1000,
            block_tokens: 10,
            ..KvConfig::default()
        }));
        assert_eq!(kv.usage(), 0.0);
        let a = InUse::new(kv.clone(), 295);
        let b = InUse::new(kv.clone(), 400);
        assert!((kv.usage() - 0.70).abs() < 1e-9, "{}", kv.usage());
        drop(a);
        assert!((kv.usage() - 0.40).abs() < 1e-9, "{}", kv.usage());
        let c = InUse::new(kv.clone(), 5000);
        assert_eq!(kv.usage(), 1.0, "at most full");
        drop((b, c));
        assert_eq!(kv.usage(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn prefill_takes_turns() {
        let kv = std::sync::Arc::new(KvCache::new(KvConfig {
            prefill_per_token: Duration::from_millis(1),
            ..KvConfig::default()
        }));
        let t = tokio::time::Instant::now();
        let runs: Vec<_> = (0..3)
            .map(|i| {
                let kv = kv.clone();
                tokio::spawn(async move {
                    let (b, _) = blocks(&chat(&format!("prompt {i}"), ""), 16);
                    kv.prefill(&b, 100).await;
                    t.elapsed()
                })
            })
            .collect();
        let mut done = Vec::new();
        for r in runs {
            done.push(r.await.expect("task"));
        }
        done.sort();
        assert_eq!(
            done,
            [100, 200, 300].map(Duration::from_millis).to_vec(),
            "one lane"
        );
    }
}
