//! Which engine replica serves a relay.
//!
//! A service may have several engine replicas (its ServiceModel's engine pods). The
//! router picks one per relay:
//!
//! - `prefix` (the default): the replica that most recently served the longest prefix
//!   of this prompt ([`lode_kernels::prefix`]), among the replicas whose load stays
//!   within the bound; the least-loaded one when none matches;
//! - `leastLoaded`: the replica with the fewest relays in flight;
//! - `roundRobin`: each in turn.
//!
//! **The load bound.** No replica takes a relay that would put it above
//! `ceil((1 + ε) × mean)` relays in flight (the mean counted with this relay, and the
//! bound at least [`MIN_LOAD_BOUND`], so that at light load a relay waits behind a
//! couple of others where its prefix is rather than prefill all of it elsewhere); a
//! hot prefix spills over to the next-best replica instead of queueing on one.
//!
//! **The memory.** Per replica, the keys it was sent, least recently used first, at
//! most `keys_per_engine` of them (the engine's KV capacity is the hint: a key it
//! evicted long ago is worth nothing); a flood of unique prompts churns it and never
//! grows it. Keys are 8-byte hashes and never leave the process.
//!
//! **Engines come and go.** [`Router::set_engines`] takes the current set (discovery
//! calls it): a new one is used at once; one that left takes no new relay and is
//! forgotten once its last relay in flight finishes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::Uri;
use lode_contracts::serve::{Routing, RoutingConfig};
use lode_kernels::prefix::{KeyBudget, PrefixKeys, Unkeyed, prefix_keys};

use super::metrics::ServiceMetrics;

/// One engine replica.
#[derive(Debug)]
pub struct Engine {
    /// The engine's base URL.
    pub url: Uri,
    id: u32,
    in_flight: AtomicU64,
    /// [`READY`] or [`DRAINING`].
    state: AtomicU8,
    /// Relays sent to it.
    pub sent: AtomicU64,
}

const READY: u8 = 0;
const DRAINING: u8 = 1;

impl Engine {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DRAINING
    }
}

/// A relay's engine, counted in flight there until dropped.
#[derive(Debug)]
pub struct Pick {
    pub engine: Arc<Engine>,
    /// Prompt bytes the engine already saw (the prefix match), and the prompt's keyed
    /// bytes.
    pub matched: u32,
    pub prompt: u32,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.engine.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The keys each engine was sent, least recently used first.
#[derive(Debug, Default)]
struct Memory {
    /// Key → the engines holding it, with the stamp of their last use.
    index: HashMap<u64, Vec<(u32, u64)>>,
    /// Per engine: (key, stamp) in order of use; an entry whose stamp is older than the
    /// index's is stale and skipped.
    order: HashMap<u32, VecDeque<(u64, u64)>>,
    /// Per engine: live keys.
    live: HashMap<u32, usize>,
    tick: u64,
}

impl Memory {
    fn touch(&mut self, engine: u32, key: u64, cap: usize) {
        self.tick += 1;
        let stamp = self.tick;
        let holders = self.index.entry(key).or_default();
        match holders.iter_mut().find(|h| h.0 == engine) {
            Some(h) => h.1 = stamp,
            None => {
                holders.push((engine, stamp));
                *self.live.entry(engine).or_default() += 1;
            }
        }
        self.order
            .entry(engine)
            .or_default()
            .push_back((key, stamp));
        // Evict the least recently used keys past the cap.
        while self.live.get(&engine).copied().unwrap_or(0) > cap {
            let Some((old, s)) = self.order.get_mut(&engine).and_then(VecDeque::pop_front) else {
                break;
            };
            self.drop_if_current(engine, old, s);
        }
        // Stale entries (keys touched again later) are compacted away before the
        // queue outgrows twice the cap.
        let index = &self.index;
        let order = self.order.entry(engine).or_default();
        if order.len() > 2 * cap.max(16) {
            order.retain(|(k, s)| {
                index
                    .get(k)
                    .is_some_and(|h| h.iter().any(|&(e, hs)| e == engine && hs == *s))
            });
        }
    }

    fn drop_if_current(&mut self, engine: u32, key: u64, stamp: u64) {
        let Some(holders) = self.index.get_mut(&key) else {
            return;
        };
        let before = holders.len();
        holders.retain(|&(e, s)| !(e == engine && s == stamp));
        if holders.len() < before {
            *self.live.entry(engine).or_default() -= 1;
        }
        if holders.is_empty() {
            self.index.remove(&key);
        }
    }

    fn forget(&mut self, engine: u32) {
        if let Some(order) = self.order.remove(&engine) {
            for (k, s) in order {
                self.drop_if_current(engine, k, s);
            }
        }
        self.live.remove(&engine);
    }

    /// Keys held, all engines together.
    fn len(&self) -> usize {
        self.live.values().sum()
    }
}

/// The router of one service.
#[derive(Debug)]
pub struct Router {
    config: RoutingConfig,
    engines: RwLock<Vec<Arc<Engine>>>,
    memory: Mutex<Memory>,
    next: AtomicUsize,
    ids: AtomicU64,
    /// The service's counters; the router's are `metrics.route`.
    metrics: Arc<ServiceMetrics>,
    /// Engine replicas ready, announced to relays held for one.
    ready_tx: tokio::sync::watch::Sender<usize>,
}

impl Router {
    pub fn new(config: RoutingConfig, urls: &[Uri], metrics: Arc<ServiceMetrics>) -> Self {
        let r = Self {
            config,
            engines: RwLock::default(),
            memory: Mutex::default(),
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            metrics,
            ready_tx: tokio::sync::watch::Sender::new(0),
        };
        r.set_engines(urls);
        r
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The engines known now (draining ones included while relays are in flight).
    pub fn engines(&self) -> Vec<Arc<Engine>> {
        self.engines.read().expect("lock").clone()
    }

    /// Keys remembered, all engines together.
    pub fn remembered(&self) -> usize {
        self.memory.lock().expect("lock").len()
    }

    /// The engines now serving: new ones join, ones that left drain (no new relay) and
    /// are forgotten when idle; one that comes back is ready again.
    pub fn set_engines(&self, urls: &[Uri]) {
        let mut engines = self.engines.write().expect("lock");
        for e in engines.iter() {
            let listed = urls.contains(&e.url);
            e.state
                .store(if listed { READY } else { DRAINING }, Ordering::Relaxed);
        }
        for u in urls {
            if !engines.iter().any(|e| &e.url == u) {
                engines.push(Arc::new(Engine {
                    url: u.clone(),
                    id: self.ids.fetch_add(1, Ordering::Relaxed) as u32,
                    in_flight: AtomicU64::new(0),
                    state: AtomicU8::new(READY),
                    sent: AtomicU64::new(0),
                }));
            }
        }
        self.sweep(&mut engines);
        let ready = engines.iter().filter(|e| !e.is_draining()).count();
        self.metrics
            .route
            .engines_ready
            .store(ready as u64, Ordering::Relaxed);
        self.ready_tx.send_replace(ready);
    }

    /// Follows the number of engine replicas ready (a held relay waits on it).
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<usize> {
        self.ready_tx.subscribe()
    }

    /// Engines taking relays now.
    pub fn ready(&self) -> usize {
        let engines = self.engines.read().expect("lock");
        engines.iter().filter(|e| !e.is_draining()).count()
    }

    /// Drops drained engines with nothing in flight, and their keys.
    fn sweep(&self, engines: &mut Vec<Arc<Engine>>) {
        let gone: Vec<u32> = engines
            .iter()
            .filter(|e| e.is_draining() && e.in_flight() == 0)
            .map(|e| e.id)
            .collect();
        if gone.is_empty() {
            return;
        }
        engines.retain(|e| !gone.contains(&e.id));
        let mut memory = self.memory.lock().expect("lock");
        for id in gone {
            memory.forget(id);
        }
    }

    /// The engine for a relay whose request body is `body`; `None` when no engine is
    /// ready.
    pub fn pick(&self, body: &[u8]) -> Option<Pick> {
        self.pick_except(body, None)
    }

    /// [`Router::pick`] among the engines other than `failed` (one that refused the
    /// relay's connection: the relay never reached it and goes elsewhere).
    pub fn pick_except(&self, body: &[u8], failed: Option<&Uri>) -> Option<Pick> {
        let engines = {
            let mut engines = self.engines.write().expect("lock");
            self.sweep(&mut engines);
            engines.clone()
        };
        let ready: Vec<&Arc<Engine>> = engines
            .iter()
            .filter(|e| !e.is_draining() && Some(&e.url) != failed)
            .collect();
        if ready.is_empty() {
            return None;
        }
        // With one engine there is nothing to choose: no keys are made.
        let keys = match self.config.mode {
            Routing::Prefix if engines.len() > 1 => self.keys(body),
            _ => None,
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (chosen, matched) = match (self.config.mode, &keys) {
            (Routing::RoundRobin, _) => (ready[turn % ready.len()], 0),
            (Routing::Prefix, Some(keys)) => self.by_prefix(&ready, keys, turn),
            _ => (least_loaded(&ready, turn), 0),
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        chosen.sent.fetch_add(1, Ordering::Relaxed);
        let prompt = keys.as_ref().map_or(0, |k| k.bytes(k.len()));
        if let Some(keys) = &keys {
            let m = &self.metrics.route;
            m.prompt_bytes.fetch_add(prompt.into(), Ordering::Relaxed);
            m.matched_bytes.fetch_add(matched.into(), Ordering::Relaxed);
            if matched > 0 {
                &m.prefix_hits
            } else {
                &m.prefix_misses
            }
            .fetch_add(1, Ordering::Relaxed);
            let cap = self.config.keys_per_engine.max(1);
            let mut memory = self.memory.lock().expect("lock");
            for &k in &keys.keys {
                memory.touch(chosen.id, k, cap);
            }
        }
        Some(Pick {
            engine: chosen.clone(),
            matched,
            prompt,
        })
    }

    fn keys(&self, body: &[u8]) -> Option<PrefixKeys> {
        let budget = KeyBudget {
            block_bytes: self.config.block_bytes,
            max_bytes: self.config.max_key_bytes,
        };
        match prefix_keys(body, budget) {
            Ok(k) => Some(k),
            Err(why) => {
                let m = &self.metrics.route;
                match why {
                    Unkeyed::NotJson => &m.unkeyed_not_json,
                    Unkeyed::NoPrompt => &m.unkeyed_no_prompt,
                    Unkeyed::TooLarge => &m.unkeyed_too_large,
                }
                .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The longest match within the load bound; least-loaded without one.
    fn by_prefix<'a>(
        &self,
        ready: &[&'a Arc<Engine>],
        keys: &PrefixKeys,
        turn: usize,
    ) -> (&'a Arc<Engine>, u32) {
        let total: u64 = ready.iter().map(|e| e.in_flight()).sum();
        let bound = load_bound(total, ready.len(), self.config.load_epsilon);
        let matched: Vec<u32> = {
            let memory = self.memory.lock().expect("lock");
            let mut best = vec![0u32; ready.len()];
            // Longest first: an engine's match is its longest key.
            for i in (0..keys.len()).rev() {
                let Some(holders) = memory.index.get(&keys.keys[i]) else {
                    continue;
                };
                for &(id, _) in holders {
                    if let Some(j) = ready.iter().position(|e| e.id == id)
                        && best[j] == 0
                    {
                        best[j] = keys.ends[i];
                    }
                }
            }
            best
        };
        let top = matched.iter().copied().max().unwrap_or(0);
        let n = ready.len();
        let mut choice: Option<usize> = None;
        for k in 0..n {
            let j = (turn + k) % n;
            if ready[j].in_flight() + 1 > bound {
                continue;
            }
            choice = match choice {
                None => Some(j),
                Some(c)
                    if (matched[j], std::cmp::Reverse(ready[j].in_flight()))
                        > (matched[c], std::cmp::Reverse(ready[c].in_flight())) =>
                {
                    Some(j)
                }
                keep => keep,
            };
        }
        let Some(c) = choice else {
            return (least_loaded(ready, turn), 0);
        };
        if matched[c] < top {
            self.metrics.route.spilled.fetch_add(1, Ordering::Relaxed);
        }
        (ready[c], matched[c])
    }
}

/// The load bound never falls below this: at light load a relay may wait behind a
/// couple of others on the engine that has its prefix rather than prefill all of it
/// elsewhere. (In the routing benchmark at 80 % load, a floor of 2 left p90 time to
/// first token at 226 ms, 3 at 47 ms, 4 at 39 ms with the busiest replica at 1.36× the
/// mean load.)
pub const MIN_LOAD_BOUND: u64 = 3;

/// Most relays in flight an engine may have after taking one more.
fn load_bound(total: u64, engines: usize, epsilon: f64) -> u64 {
    let mean = (total + 1) as f64 / engines.max(1) as f64;
    (((1.0 + epsilon.max(0.0)) * mean).ceil() as u64).max(MIN_LOAD_BOUND)
}

/// The engine with the fewest relays in flight; ties go round the engines in turn.
fn least_loaded<'a>(ready: &[&'a Arc<Engine>], turn: usize) -> &'a Arc<Engine> {
    let n = ready.len();
    (0..n)
        .map(|k| ready[(turn + k) % n])
        .min_by_key(|e| e.in_flight())
        .expect("at least one engine")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<Uri> {
        (0..n)
            .map(|i| format!("http://10.0.0.{i}:8000").parse().expect("uri"))
            .collect()
    }

    fn config(mode: Routing) -> RoutingConfig {
        RoutingConfig {
            mode,
            ..RoutingConfig::default()
        }
    }

    fn chat(system: &str, turns: &[&str]) -> Vec<u8> {
        let mut m = vec![format!(r#"{{"role":"system","content":"{system}"}}"#)];
        for (i, t) in turns.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            m.push(format!(r#"{{"role":"{role}","content":"{t}"}}"#));
        }
        format!(r#"{{"model":"m","messages":[{}]}}"#, m.join(",")).into_bytes()
    }

    #[test]
    fn a_conversation_stays_on_its_engine_and_groups_spread() {
        let r = Router::new(config(Routing::Prefix), &urls(4), Arc::default());
        let systems: Vec<String> = (0..4)
            .map(|g| format!("group {g} system prompt. ").repeat(200))
            .collect();
        // Turn 1 of four groups' first conversations: nothing matches, so each goes
        // least-loaded (all held in flight: four engines, one each).
        let first: Vec<Pick> = systems
            .iter()
            .map(|s| r.pick(&chat(s, &["hello"])).expect("engine"))
            .collect();
        let mut used: Vec<String> = first.iter().map(|p| p.engine.url.to_string()).collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 4, "spread by load");
        assert!(first.iter().all(|p| p.matched == 0));
        let home = first[2].engine.url.clone();
        drop(first);
        // Turn 2 of group 2's conversation goes where turn 1 went, matching all of it.
        let t1 = chat(&systems[2], &["hello"]);
        let t2 = r
            .pick(&chat(&systems[2], &["hello", "hi!", "more please"]))
            .expect("engine");
        assert_eq!(t2.engine.url, home);
        let t1_keys = prefix_keys(&t1, KeyBudget::default()).expect("keys");
        assert_eq!(t2.matched, t1_keys.bytes(t1_keys.len()));
        // (While turn 2 is in flight its engine is at the load bound of 1.)
        drop(t2);
        // Another user of group 2 matches the system prompt on the same engine.
        let other = r.pick(&chat(&systems[2], &["bonjour"])).expect("engine");
        assert_eq!(other.engine.url, home);
        assert!(other.matched > 4000 && other.matched < t1_keys.bytes(t1_keys.len()));
        assert_eq!(r.metrics.route.prefix_hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_hot_prefix_spills_over_at_the_load_bound() {
        let r = Router::new(config(Routing::Prefix), &urls(4), Arc::default());
        let system = "the one system prompt everyone uses. ".repeat(200);
        let mut held = Vec::new();
        for i in 0..40 {
            held.push(
                r.pick(&chat(&system, &[&format!("user {i}")]))
                    .expect("engine"),
            );
            let loads: Vec<u64> = r.engines().iter().map(|e| e.in_flight()).collect();
            let total: u64 = loads.iter().sum();
            let max = *loads.iter().max().expect("engines");
            // Never above ceil(1.25 × mean), or the floor.
            assert!(
                max <= ((1.25 * total as f64 / 4.0).ceil() as u64).max(MIN_LOAD_BOUND),
                "loads {loads:?} after {} relays",
                i + 1
            );
        }
        assert!(r.metrics.route.spilled.load(Ordering::Relaxed) > 0);
        // Everything that could, matched (the prompt reached every engine).
        assert!(r.metrics.route.prefix_hits.load(Ordering::Relaxed) >= 36);
    }

    #[test]
    fn unkeyable_prompts_go_least_loaded_and_round_robin_rotates() {
        let r = Router::new(config(Routing::Prefix), &urls(3), Arc::default());
        let busy = r.pick(b"not json").expect("engine");
        let next = r.pick(b"{\"input\":\"embeddings\"}").expect("engine");
        assert_ne!(busy.engine.url, next.engine.url, "least-loaded");
        let big = vec![b'x'; RoutingConfig::default().max_key_bytes + 1];
        let third = r.pick(&big).expect("engine");
        assert_ne!(third.engine.url, busy.engine.url);
        assert_ne!(third.engine.url, next.engine.url);
        let m = &r.metrics.route;
        assert_eq!(m.unkeyed_not_json.load(Ordering::Relaxed), 1);
        assert_eq!(m.unkeyed_no_prompt.load(Ordering::Relaxed), 1);
        assert_eq!(m.unkeyed_too_large.load(Ordering::Relaxed), 1);
        assert_eq!(r.remembered(), 0);

        let rr = Router::new(config(Routing::RoundRobin), &urls(3), Arc::default());
        let seen: Vec<String> = (0..6)
            .map(|_| rr.pick(b"{}").expect("engine").engine.url.to_string())
            .collect();
        assert_eq!(seen[..3], seen[3..]);
        assert_ne!(seen[0], seen[1]);
    }

    #[test]
    fn a_flood_of_unique_prompts_stays_within_the_memory_bound() {
        let cfg = RoutingConfig {
            keys_per_engine: 1000,
            ..config(Routing::Prefix)
        };
        let r = Router::new(cfg, &urls(4), Arc::default());
        for i in 0..20_000 {
            r.pick(&chat(&format!("unique {i}"), &["x"]))
                .expect("engine");
            assert!(r.remembered() <= 4 * 1000);
        }
        assert_eq!(r.remembered(), 4000);
        let memory = r.memory.lock().expect("lock");
        assert!(memory.index.len() <= 4000);
        assert!(memory.order.values().all(|q| q.len() <= 2 * 1000 + 1));
    }

    #[test]
    fn a_departing_engine_drains_and_is_forgotten() {
        let r = Router::new(config(Routing::LeastLoaded), &urls(2), Arc::default());
        let a = r.pick(b"{}").expect("engine");
        let gone = a.engine.url.clone();
        let kept: Vec<Uri> = urls(2).into_iter().filter(|u| *u != gone).collect();
        r.set_engines(&kept);
        // The departing engine takes nothing new, though it is the less loaded one
        // after `a`... and while `a` is in flight it is still known.
        for _ in 0..5 {
            assert_ne!(r.pick(b"{}").expect("engine").engine.url, gone);
        }
        assert_eq!(r.engines().len(), 2);
        assert!(r.engines().iter().any(|e| e.url == gone && e.is_draining()));
        drop(a);
        r.pick(b"{}").expect("engine");
        assert_eq!(r.engines().len(), 1);
        // Another engine than one that failed; none when it was the only one.
        let (a, b) = (urls(2)[0].clone(), urls(2)[1].clone());
        r.set_engines(&urls(2));
        for _ in 0..4 {
            assert_eq!(
                r.pick_except(b"{}", Some(&a)).expect("engine").engine.url,
                b
            );
        }
        r.set_engines(std::slice::from_ref(&a));
        assert!(r.pick_except(b"{}", Some(&a)).is_none());
        // No engine at all: no pick.
        r.set_engines(&[]);
        assert!(r.pick(b"{}").is_none());
        // It comes back: ready again.
        r.set_engines(&urls(2));
        assert!(r.pick(b"{}").is_some());
    }
}
