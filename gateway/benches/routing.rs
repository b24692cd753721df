//! Routing benchmark: a multi-turn chat workload through the gateway, one relay-tier
//! replica (`relayminer run`) and 4 engine-sim replicas with a KV-cache model, routed
//! four ways in one run: round robin, least-loaded, prefix affinity (lode's default)
//! and an oracle that knows every replica's true cache.
//!
//! `cargo bench -p lode-gateway --bench routing --profile dev` (`--quick`: shorter runs)
//!
//! **The workload** (seeded; the same for every router): 16 groups, each with its own
//! system prompt of 2,000 words; conversations of 3 to 6 turns, each turn a new user
//! message of 40 to 120 words after the assistant's last answer, one conversation in
//! a random group. Tokens are words (engine-sim's rule).
//!
//! **The engines**: 4 replicas, each with a KV cache of 16,000 tokens (the 16 system
//! prompts alone are 32,000: a replica holds a quarter of them, not all), prefill 200 µs per token not cached on one lane, decode
//! 4 ms per output token, 32 sequences at once; 16 output tokens per answer.
//!
//! **Loads**: the saturation rate of round robin is measured first (closed loop, 32
//! conversations back to back); then each router runs an open loop of conversations
//! at 80 % of that rate (think time 100–400 ms between turns), and the same closed
//! loop (saturation). Reported: time to first token (p50/p90/p99, at the client, through
//! the gateway), output tokens/s, the engines' prefix-cache hit rate (tokens), and the
//! busiest replica's load over the mean (requests running and waiting, averaged over
//! the run).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig};
use lode_engine_sim::{EngineSim, KvConfig, SimConfig};
use lode_relayminer::run::RunOptions;
use lode_relayminer::serve::config::{Routing, RoutingConfig, routed_yaml};
use lode_testkit::{Rng, free_addr};

type Http = Client<HttpConnector, Full<Bytes>>;

const REPLICAS: usize = 4;
const GROUPS: usize = 16;
const SYSTEM_WORDS: usize = 2000;
const MAX_TOKENS: u64 = 16;
const CONCURRENCY: usize = 32;

/// The workload's only randomness (seeded).
trait Words {
    fn words(&mut self, n: usize) -> String;
}

impl Words for Rng {
    fn words(&mut self, n: usize) -> String {
        const SYLLABLES: [&str; 16] = [
            "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "an", "el", "or", "ux", "pe", "di",
            "go", "ba",
        ];
        let mut out = String::new();
        for i in 0..n {
            if i > 0 {
                out.push(' ');
            }
            for _ in 0..2 + self.below(2) {
                out.push_str(SYLLABLES[self.below(16) as usize]);
            }
        }
        out
    }
}

/// One conversation: its group and the user messages of its turns.
#[derive(Clone)]
struct Conversation {
    group: usize,
    turns: Vec<String>,
    /// Think time before each turn after the first, ms.
    think_ms: Vec<u64>,
}

struct Workload {
    systems: Vec<String>,
    conversations: Vec<Conversation>,
    /// Arrival gaps between conversations, as fractions of the mean (exponential).
    gaps: Vec<f64>,
}

impl Workload {
    fn new(seed: u64, n: usize) -> Self {
        let mut rng = Rng(seed);
        let systems = (0..GROUPS)
            .map(|g| format!("You are assistant {g}. {}", rng.words(SYSTEM_WORDS - 3)))
            .collect();
        let conversations = (0..n)
            .map(|_| {
                let turns = 3 + rng.below(4) as usize;
                Conversation {
                    group: rng.below(GROUPS as u64) as usize,
                    turns: (0..turns)
                        .map(|_| {
                            let len = 40 + rng.below(81) as usize;
                            rng.words(len)
                        })
                        .collect(),
                    think_ms: (0..turns).map(|_| 100 + rng.below(301)).collect(),
                }
            })
            .collect();
        let gaps = (0..n)
            .map(|_| -((rng.below(1 << 30) as f64 + 0.5) / f64::from(1 << 30)).ln())
            .collect();
        Self {
            systems,
            conversations,
            gaps,
        }
    }
}

impl Tally {
    fn new() -> Self {
        Self {
            warm: std::sync::OnceLock::new(),
            ttft_ms: std::sync::Mutex::default(),
            output_tokens: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

struct Tally {
    /// Turns sent before this are warm-up: the engines' caches fill, nothing is counted.
    warm: std::sync::OnceLock<Instant>,
    ttft_ms: std::sync::Mutex<Vec<f64>>,
    output_tokens: AtomicU64,
    failed: AtomicU64,
}

/// Sends one streamed turn through the gateway; returns the answer's text.
async fn turn(http: &Http, url: &str, messages: &[serde_json::Value], tally: &Tally) -> String {
    let body = serde_json::json!({
        "model": "sim-model", "messages": messages, "max_tokens": MAX_TOKENS, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let req = Request::post(url)
        .header("authorization", "Bearer sk-bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let started = Instant::now();
    let counted = tally.warm.get().is_some_and(|w| started >= *w);
    let res = match http.request(req).await {
        Ok(r) if r.status() == 200 => r,
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return String::new();
        }
    };
    let mut body = res.into_body();
    let (mut text, mut buf, mut first) = (String::new(), String::new(), None);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return text;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(json) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                first.get_or_insert_with(|| started.elapsed());
                text.push_str(t);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64()
                && counted
            {
                tally.output_tokens.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    match first {
        Some(_) if !counted => {}
        Some(t) => tally
            .ttft_ms
            .lock()
            .expect("lock")
            .push(t.as_secs_f64() * 1e3),
        None => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    text
}

/// Runs one conversation's turns, thinking between them when `think`.
async fn converse(
    http: Http,
    url: Arc<str>,
    system: String,
    c: Conversation,
    think: bool,
    tally: Arc<Tally>,
    stop: Instant,
) {
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    for (i, user) in c.turns.iter().enumerate() {
        if Instant::now() >= stop {
            return;
        }
        if think && i > 0 {
            tokio::time::sleep(Duration::from_millis(c.think_ms[i])).await;
        }
        messages.push(serde_json::json!({"role": "user", "content": user}));
        let answer = turn(&http, &url, &messages, &tally).await;
        messages.push(serde_json::json!({"role": "assistant", "content": answer}));
    }
}

/// What one router did under one load.
struct Outcome {
    requests: usize,
    ttft: [f64; 3],
    tokens_per_s: f64,
    hit_rate: f64,
    max_over_mean: f64,
    failed: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sims() -> Vec<EngineSim> {
    (0..REPLICAS)
        .map(|_| {
            EngineSim::new(SimConfig {
                max_num_seqs: 32,
                kv: Some(KvConfig {
                    capacity_tokens: 16_000,
                    block_tokens: 16,
                    prefill_per_token: Duration::from_micros(200),
                    decode_per_token: Duration::from_millis(4),
                }),
                ..SimConfig::default()
            })
        })
        .collect()
}

/// The oracle: a forwarder in front of the replicas that sends each request to the one
/// whose KV cache truly holds the longest prefix of it, within the same load bound as
/// lode's router.
#[derive(Clone)]
struct Oracle {
    sims: Arc<Vec<(EngineSim, SocketAddr)>>,
    in_flight: Arc<Vec<AtomicU64>>,
    http: Http,
}

struct Release(Arc<Vec<AtomicU64>>, usize);

impl Drop for Release {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

async fn oracle_forward(State(o): State<Oracle>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 20 << 20)
        .await
        .unwrap_or_default();
    let loads: Vec<u64> = o
        .in_flight
        .iter()
        .map(|l| l.load(Ordering::Relaxed))
        .collect();
    let bound = ((1.25 * (loads.iter().sum::<u64>() + 1) as f64 / loads.len() as f64).ceil()
        as u64)
        .max(lode_relayminer::serve::route::MIN_LOAD_BOUND);
    let pick = (0..o.sims.len())
        .filter(|&i| loads[i] < bound)
        .max_by_key(|&i| {
            (
                o.sims[i].0.cached_prefix_tokens(&body),
                std::cmp::Reverse(loads[i]),
            )
        })
        .unwrap_or(0);
    o.in_flight[pick].fetch_add(1, Ordering::Relaxed);
    let release = Release(o.in_flight.clone(), pick);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = Request::post(format!("http://{}{path}", o.sims[pick].1));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            forward = forward.header(k, v);
        }
    }
    let res = o
        .http
        .request(forward.body(Full::new(body)).expect("request"))
        .await
        .expect("engine answers");
    let (parts, incoming) = res.into_parts();
    let stream =
        futures_util::StreamExt::map(http_body_util::BodyDataStream::new(incoming), move |f| {
            let _held = &release;
            f
        });
    Response::from_parts(parts, Body::from_stream(stream))
}

struct Bench {
    devnet: Devnet,
    chain: lode_devnet::Running,
    dir: tempfile::TempDir,
    relay_addr: SocketAddr,
    key: std::path::PathBuf,
    gateway_url: Arc<str>,
    http: Http,
    quick: bool,
}

impl Bench {
    /// Starts fresh replicas and a relay tier routing over them by `mode`; runs `f`;
    /// returns, from `warm` on, the engines' cache hit rate, the seconds, and each
    /// replica's summed load samples.
    async fn with_router<F, Fut>(
        &self,
        name: &str,
        mode: Option<Routing>,
        warm: Duration,
        tally: &Tally,
        f: F,
    ) -> (f64, f64, Vec<f64>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut replicas = Vec::new();
        for sim in sims() {
            let (addr, _) = sim
                .serve(any, std::future::pending())
                .await
                .expect("engine-sim");
            replicas.push((sim, addr));
        }
        let engines: Vec<String> = match mode {
            Some(_) => replicas
                .iter()
                .map(|(_, a)| format!("http://{a}"))
                .collect(),
            None => {
                // The oracle forwards; the relay tier sees one engine.
                let oracle = Oracle {
                    sims: Arc::new(replicas.clone()),
                    in_flight: Arc::new((0..REPLICAS).map(|_| AtomicU64::new(0)).collect()),
                    http: self.http.clone(),
                };
                let app = axum::Router::new()
                    .fallback(oracle_forward)
                    .with_state(oracle);
                let listener = tokio::net::TcpListener::bind(any).await.expect("oracle");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                vec![format!("http://{addr}")]
            }
        };
        let config = self.dir.path().join(format!("serve-{name}.yaml"));
        std::fs::write(
            &config,
            routed_yaml(
                &self.relay_addr.to_string(),
                "127.0.0.1:0",
                &self.chain.node(),
                std::slice::from_ref(&self.key),
                "llm",
                &engines,
                RoutingConfig {
                    mode: mode.unwrap_or(Routing::RoundRobin),
                    ..RoutingConfig::default()
                },
            ),
        )
        .expect("config");
        let run = lode_relayminer::run::start(RunOptions::loopback(
            config,
            self.dir.path().join(format!("data-{name}")),
        ))
        .await
        .expect("run");
        while run.serve.state.sessions.height() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Each replica's requests running and waiting, sampled every 5 ms.
        let sims: Vec<EngineSim> = replicas.iter().map(|(s, _)| s.clone()).collect();
        let sums: Arc<Vec<AtomicU64>> = Arc::new(sims.iter().map(|_| AtomicU64::new(0)).collect());
        let warm_at = Instant::now() + warm;
        tally.warm.set(warm_at).expect("a fresh tally");
        let sampler = {
            let (sims, sums) = (sims.clone(), sums.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(warm_at.into()).await;
                loop {
                    for (sum, s) in sums.iter().zip(&sims) {
                        sum.fetch_add(s.load(), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        // The engines' cache counters when the warm-up ends.
        let at_warm = {
            let sims = sims.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(warm_at.into()).await;
                kv_totals(&sims)
            })
        };
        f().await;
        let secs = warm_at.elapsed().as_secs_f64();
        sampler.abort();
        let (q0, h0) = at_warm.await.expect("snapshot");
        let (q1, h1) = kv_totals(&sims);
        let hit_rate = (h1 - h0) as f64 / (q1 - q0).max(1) as f64;
        let _ = run.shutdown().await;
        let load: Vec<f64> = sums
            .iter()
            .map(|s| s.load(Ordering::Relaxed) as f64)
            .collect();
        (hit_rate, secs, load)
    }

    /// Conversations back to back, `CONCURRENCY` at a time, for `secs`.
    async fn closed_loop(&self, w: &Workload, secs: f64, tally: Arc<Tally>) {
        let stop = Instant::now() + Duration::from_secs_f64(secs);
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (http, url, tally, next) = (
                    self.http.clone(),
                    self.gateway_url.clone(),
                    tally.clone(),
                    next.clone(),
                );
                let convs = w.conversations.clone();
                let systems = w.systems.clone();
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize % convs.len();
                        let c = convs[i].clone();
                        let system = systems[c.group].clone();
                        converse(
                            http.clone(),
                            url.clone(),
                            system,
                            c,
                            false,
                            tally.clone(),
                            stop,
                        )
                        .await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("worker");
        }
    }

    /// Conversations arriving at `per_s` requests per second on average, for `secs`.
    async fn open_loop(&self, w: &Workload, per_s: f64, secs: f64, tally: Arc<Tally>) {
        let mean_turns = w
            .conversations
            .iter()
            .map(|c| c.turns.len() as f64)
            .sum::<f64>()
            / w.conversations.len() as f64;
        let conv_gap = mean_turns / per_s;
        let started = Instant::now();
        let stop = started + Duration::from_secs_f64(secs);
        let mut at = 0.0;
        let mut tasks = Vec::new();
        for (c, gap) in w.conversations.iter().zip(&w.gaps) {
            at += gap * conv_gap;
            if at >= secs {
                break;
            }
            tokio::time::sleep_until((started + Duration::from_secs_f64(at)).into()).await;
            tasks.push(tokio::spawn(converse(
                self.http.clone(),
                self.gateway_url.clone(),
                w.systems[c.group].clone(),
                c.clone(),
                true,
                tally.clone(),
                stop,
            )));
        }
        for t in tasks {
            t.await.expect("conversation");
        }
    }
}

/// Prompt tokens the engines were asked for, and found cached, so far.
fn kv_totals(sims: &[EngineSim]) -> (u64, u64) {
    sims.iter()
        .filter_map(EngineSim::kv)
        .fold((0, 0), |(q, h), kv| {
            (
                q + kv.queried.load(Ordering::Relaxed),
                h + kv.hits.load(Ordering::Relaxed),
            )
        })
}

fn outcome(tally: &Tally, hit_rate: f64, secs: f64, load: &[f64]) -> Outcome {
    let mut ttft = tally.ttft_ms.lock().expect("lock").clone();
    ttft.sort_by(f64::total_cmp);
    // Load: requests running and waiting, averaged over the run.
    let mean = load.iter().sum::<f64>() / load.len() as f64;
    let max = load.iter().copied().fold(0.0, f64::max);
    Outcome {
        requests: ttft.len(),
        ttft: [0.5, 0.9, 0.99].map(|p| percentile(&ttft, p)),
        tokens_per_s: tally.output_tokens.load(Ordering::Relaxed) as f64 / secs,
        hit_rate,
        max_over_mean: if mean > 0.0 { max / mean } else { f64::NAN },
        failed: tally.failed.load(Ordering::Relaxed),
    }
}

fn row(name: &str, o: &Outcome) {
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} % | {:.2} | {} |",
        o.requests,
        o.ttft[0],
        o.ttft[1],
        o.ttft[2],
        o.tokens_per_s,
        o.hit_rate * 100.0,
        o.max_over_mean,
        o.failed
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::new(83));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    let supplier = devnet.keys().suppliers[0].clone();
    let key = dir.path().join("supplier.key");
    std::fs::write(&key, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
    let relay_addr = free_addr();
    let session = devnet
        .stake_into_next_session_at(&chain, 0, "llm", &format!("http://{relay_addr}"))
        .await
        .expect("staked")
        .header;
    let g = support::start_gateway(&devnet, &chain, dir.path()).await;
    while g.state.sessions.height() < session.session_start_block_height {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let bench = Bench {
        gateway_url: format!("http://{}/v1/chat/completions", g.addr).into(),
        devnet,
        chain,
        dir,
        relay_addr,
        key,
        http,
        quick,
    };
    // Each run: a warm-up (the caches fill; nothing counted), then the measured part.
    let secs = if bench.quick { 8.0 } else { 25.0 };
    let warm = Duration::from_secs_f64(secs / 3.0);
    let total = secs + warm.as_secs_f64();
    let workload = Workload::new(0x5EED_2026, 4000);
    let routers: [(&str, Option<Routing>); 4] = [
        ("round robin", Some(Routing::RoundRobin)),
        ("least-loaded", Some(Routing::LeastLoaded)),
        ("prefix (lode)", Some(Routing::Prefix)),
        ("oracle", None),
    ];

    // Saturation: the same closed loop for every router.
    let mut saturation = Vec::new();
    for (name, mode) in routers {
        let tally = Arc::new(Tally::new());
        let t = tally.clone();
        let (hits, took, load) = bench
            .with_router(&format!("sat-{name}"), mode, warm, &tally, || {
                bench.closed_loop(&workload, total, t)
            })
            .await;
        saturation.push((name, outcome(&tally, hits, took, &load), took));
    }
    let rr_rate = saturation[0].1.requests as f64 / saturation[0].2;
    let rate = 0.8 * rr_rate;
    let mut open = Vec::new();
    for (name, mode) in routers {
        let tally = Arc::new(Tally::new());
        let t = tally.clone();
        let (hits, took, load) = bench
            .with_router(&format!("open-{name}"), mode, warm, &tally, || {
                bench.open_loop(&workload, rate, total, t)
            })
            .await;
        open.push((name, outcome(&tally, hits, took, &load)));
    }

    println!(
        "routing: {REPLICAS} engine-sim replicas (KV cache 16,000 tokens, prefill 200 µs/token, decode 4 ms/token), gateway → relay tier → engines, 2 cores, loopback; each run {:.0} s of warm-up, then {secs:.0} s measured",
        warm.as_secs_f64()
    );
    let header = "| router | requests | TTFT p50 ms | p90 ms | p99 ms | output tokens/s | cache hit | max/mean load | failed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |";
    println!();
    println!("open loop at 80 % of round robin's saturation ({rate:.1} requests/s):");
    println!("{header}");
    for (name, o) in &open {
        row(name, o);
    }
    println!();
    println!(
        "saturation (closed loop, {CONCURRENCY} conversations back to back; round robin: {rr_rate:.1} requests/s):"
    );
    println!("{header}");
    for (name, o, _) in &saturation {
        row(name, o);
    }
    let (rr, prefix, oracle) = (&open[0].1, &open[2].1, &open[3].1);
    println!();
    println!(
        "prefix vs round robin at 80 %: p90 TTFT {:.1}× lower (target ≥ 10×); vs the oracle: {:.2}× (target ≤ 1.25×)",
        rr.ttft[1] / prefix.ttft[1],
        prefix.ttft[1] / oracle.ttft[1]
    );
    println!(
        "prefix vs round robin at saturation: output tokens/s {:.2}× (target ≥ 1.5×); max/mean replica load {:.2} at 80 %, {:.2} at saturation (target ≤ 1.3)",
        saturation[2].1.tokens_per_s / saturation[0].1.tokens_per_s,
        prefix.max_over_mean,
        saturation[2].1.max_over_mean
    );
    g.shutdown().await;
    bench.chain.shutdown().await;
    drop(bench.devnet);
}
