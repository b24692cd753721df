//! Serve benchmark: the real `relayminer serve` process between a gateway-like client and
//! engine-sim, against calling engine-sim directly in the same run (2 cores, loopback).
//!
//! Run: `cargo bench -p lode-relayminer --bench serve --profile dev`. Reports the latency
//! serve adds (p50/p99 at half of the measured saturation, 1 KB non-streamed responses),
//! relays/s per CPU-second of the serve process (ring verification with a ring of 2,
//! signing, hashing, shipping to a real store), the delay serve adds to a stream's first
//! chunk, and the memory each open slow stream costs the serve process.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig, HRP};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::proto::{Message, PoktHttpRequest, RelayRequest};
use lode_kernels::relay::sign_request;
use lode_testkit::{StoreProcess, cpu_seconds, free_addr};

const SERVICE: &str = "llm";
/// About 1 KB of response JSON.
const BODY: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"benchmark"}],"max_tokens":120}"#;

type Http = Client<HttpConnector, Full<Bytes>>;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// How an open loop spaces its requests.
#[derive(Clone, Copy, PartialEq)]
enum Pacing {
    /// One every `1/rate` seconds.
    Steady,
    /// The requests of each millisecond together, at its end (what pacing with tokio's
    /// timer, which works in 1 ms ticks, gives).
    MillisecondBursts,
}

/// Sends `n` requests at `rate` per second (open loop); returns latencies in ms. A thread
/// of its own paces the requests (see [`Pacing`]).
async fn open_loop(
    n: usize,
    rate: f64,
    pacing: Pacing,
    make: MakeRequest,
    http: &Http,
) -> Vec<f64> {
    let (runtime, http) = (tokio::runtime::Handle::current(), http.clone());
    let pacer = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        (0..n)
            .map(|i| {
                let mut at = gap * i as u32;
                if pacing == Pacing::MillisecondBursts {
                    at = Duration::from_millis(at.as_micros().div_ceil(1000) as u64);
                }
                let at = start + at;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (http, req) = (http.clone(), make(i));
                runtime.spawn(async move {
                    let t = Instant::now();
                    let res = http.request(req).await.expect("answer");
                    assert_eq!(res.status(), 200);
                    res.into_body().collect().await.expect("body");
                    t.elapsed().as_secs_f64() * 1e3
                })
            })
            .collect::<Vec<_>>()
    });
    let tasks = tokio::task::spawn_blocking(move || pacer.join().expect("pacer"))
        .await
        .expect("pacer");
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// Closed loop with `concurrency` workers for `dur`; returns requests completed.
async fn saturate(dur: Duration, concurrency: usize, make: MakeRequest, http: &Http) -> usize {
    let deadline = Instant::now() + dur;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, make, counter) = (http.clone(), make.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let res = http.request(make(i)).await.expect("answer");
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

type MakeRequest = Arc<dyn Fn(usize) -> hyper::Request<Full<Bytes>> + Send + Sync>;

/// `n` requests at `rate` per second straight to the engine, then as many through serve;
/// prints both and returns what serve adds at p50 and p99 (ms).
async fn latencies(
    rate: f64,
    n: usize,
    pacing: Pacing,
    to_engine: &MakeRequest,
    to_serve: &MakeRequest,
    http: &Http,
) -> (f64, f64) {
    let mut direct = open_loop(n, rate, pacing, to_engine.clone(), http).await;
    let mut through = open_loop(n, rate, pacing, to_serve.clone(), http).await;
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    let (s50, s99) = (
        percentile(&mut through, 0.5),
        percentile(&mut through, 0.99),
    );
    println!(
        "latency at {rate:.0} relays/s ({n} each): direct p50 {d50:.3} ms p99 {d99:.3} ms; through serve p50 {s50:.3} ms p99 {s99:.3} ms"
    );
    (s50 - d50, s99 - d99)
}

async fn sim_in_flight(http: &Http, admin: SocketAddr) -> u64 {
    let r = http
        .get(format!("http://{admin}/demand").parse().expect("uri"))
        .await
        .expect("demand");
    let b = r.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    v["services"][0]["in_flight"].as_u64().unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The chain, a staked supplier, its session.
    let devnet = Devnet::new(&DevnetConfig::new(5));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    let supplier = devnet.keys().suppliers[0].clone();
    let header = devnet
        .stake_into_next_session(&chain, 0, SERVICE)
        .await
        .expect("staked")
        .header;
    let app = devnet.keys().applications[0].clone();
    let gateway = devnet.keys().gateways[0].clone();

    // engine-sim answering at once (the engine's own time is not what is measured).
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::ZERO,
        tokens_per_second: 0.0,
        max_num_seqs: 100_000,
        ..SimConfig::default()
    });
    let (sim_addr, _) = sim
        .serve(any, std::future::pending())
        .await
        .expect("engine-sim");

    // A real store and a real serve process.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("store");
    let store = StoreProcess::start(&data, &["--fsync", "os"]);
    store.client().await;
    let key_file = dir.path().join("supplier.key");
    std::fs::write(&key_file, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
    let (relay_addr, admin_addr) = (free_addr(), free_addr());
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {relay_addr}\nadmin: {admin_addr}\nchain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
             store: {{url: 'http://{}', token_file: '{}', policy: queue, queue_capacity: 100000}}\n\
             signing_key_files: ['{}']\nenable_over_servicing: true\nstream_batch_ms: 20\n\
             services:\n  - service_id: {SERVICE}\n    backend_url: http://{sim_addr}\n",
            chain.grpc_url,
            chain.rpc_url,
            store.grpc,
            StoreProcess::token_file(&data).display(),
            key_file.display()
        ),
    )
    .expect("config");
    let mut serve: Child = Command::new(env!("CARGO_BIN_EXE_relayminer"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    // The gateway side without Nagle, as a latency-minded gateway runs.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(20_000)
        .build(connector);
    for _ in 0..500 {
        if let Ok(r) = http
            .get(format!("http://{admin_addr}/demand").parse().expect("uri"))
            .await
            && r.status() == 200
        {
            let b = r.into_body().collect().await.expect("body").to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
            if v["height"].as_i64().unwrap_or(0) > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pre-signed relays (ring signing is the gateway's cost, not serve's).
    let ring = [app.public_key(), gateway.public_key()];
    let sign = |body: &str, i: usize| -> Bytes {
        let mut req = RelayRequest {
            payload: PoktHttpRequest {
                method: "POST".into(),
                url: format!("/v1/chat/completions?n={i}"),
                body_bz: body.as_bytes().to_vec(),
                ..Default::default()
            }
            .encode(),
            ..Default::default()
        };
        req.meta.session_header = Some(header.clone());
        req.meta.supplier_operator_address = supplier.public_key().address().to_bech32(HRP);
        sign_request(&mut req, &ring, &gateway, &mut rand_core::OsRng).expect("sign");
        Bytes::from(req.encode())
    };
    let relays: Arc<Vec<Bytes>> = Arc::new((0..2000).map(|i| sign(BODY, i)).collect());
    let to_serve: MakeRequest = {
        let relays = relays.clone();
        Arc::new(move |i| {
            hyper::Request::post(format!("http://{relay_addr}/"))
                .body(Full::new(relays[i % relays.len()].clone()))
                .expect("req")
        })
    };
    let to_engine: MakeRequest = Arc::new(move |_| {
        hyper::Request::post(format!("http://{sim_addr}/v1/chat/completions"))
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .expect("req")
    });
    // Warm up both paths (sessions cached, connections pooled).
    saturate(Duration::from_secs(1), 8, to_serve.clone(), &http).await;
    saturate(Duration::from_millis(300), 8, to_engine.clone(), &http).await;

    // Saturation through serve, and serve's CPU per relay.
    let cpu0 = cpu_seconds(&format!("/proc/{}/stat", serve.id()));
    let secs = 4.0;
    let done = saturate(Duration::from_secs_f64(secs), 64, to_serve.clone(), &http).await;
    let cpu = cpu_seconds(&format!("/proc/{}/stat", serve.id())) - cpu0;
    let saturated = done as f64 / secs;
    let per_core = done as f64 / cpu.max(1e-9);
    println!(
        "throughput through serve (64 concurrent, 2 cores shared by client, engine, store and serve): {saturated:.0} relays/s"
    );
    println!(
        "serve CPU: {cpu:.2} s for {done} relays = {per_core:.0} relays per CPU-second (target ≥ 2,500)"
    );

    // Latency at half of saturation, serve vs direct, one after the other in the same run.
    let rate = saturated / 2.0;
    let n = (rate * 3.0) as usize;
    let (added50, added99) = latencies(rate, n, Pacing::Steady, &to_engine, &to_serve, &http).await;
    println!(
        "added by serve: p50 {added50:.3} ms (target ≤ 0.5), p99 {added99:.3} ms (target ≤ 2)"
    );
    // The same rate, arriving in bursts once a millisecond (relays queue behind the
    // others of their burst).
    let (added50, added99) = latencies(
        rate,
        n,
        Pacing::MillisecondBursts,
        &to_engine,
        &to_serve,
        &http,
    )
    .await;
    println!("added by serve in 1 ms bursts: p50 {added50:.3} ms, p99 {added99:.3} ms");
    // The same at a light load, where queueing behind other relays is rare: what one
    // relay's own path costs.
    let (added50, added99) =
        latencies(200.0, 600, Pacing::Steady, &to_engine, &to_serve, &http).await;
    println!("added by serve at a light load: p50 {added50:.3} ms, p99 {added99:.3} ms");

    // First chunk: time to the first byte of a stream, direct vs through serve.
    let stream_body =
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":20,"stream":true}"#;
    let stream_relays: Vec<Bytes> = (0..200).map(|i| sign(stream_body, 10_000 + i)).collect();
    let (mut fd, mut fs) = (Vec::new(), Vec::new());
    for r in &stream_relays {
        let t = Instant::now();
        let res = http
            .request(
                hyper::Request::post(format!("http://{sim_addr}/v1/chat/completions"))
                    .body(Full::new(Bytes::from_static(stream_body.as_bytes())))
                    .expect("req"),
            )
            .await
            .expect("direct");
        let mut b = res.into_body();
        b.frame().await.expect("frame").expect("ok");
        fd.push(t.elapsed().as_secs_f64() * 1e3);
        while b.frame().await.is_some() {}
        let t = Instant::now();
        let res = http
            .request(
                hyper::Request::post(format!("http://{relay_addr}/"))
                    .body(Full::new(r.clone()))
                    .expect("req"),
            )
            .await
            .expect("serve");
        let mut b = res.into_body();
        b.frame().await.expect("frame").expect("ok");
        fs.push(t.elapsed().as_secs_f64() * 1e3);
        while b.frame().await.is_some() {}
    }
    let (fd50, fs50) = (percentile(&mut fd, 0.5), percentile(&mut fs, 0.5));
    let (fd99, fs99) = (percentile(&mut fd, 0.99), percentile(&mut fs, 0.99));
    println!(
        "first chunk: direct p50 {fd50:.3} ms p99 {fd99:.3} ms; through serve p50 {fs50:.3} ms p99 {fs99:.3} ms; added p50 {:.3} ms (target ≤ 2)",
        fs50 - fd50
    );

    // Many open slow streams: memory per stream in a serve process whose engine emits
    // one token per second.
    let open: usize = std::env::var("SERVE_BENCH_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let slow_sim = EngineSim::new(SimConfig {
        ttft: Duration::ZERO,
        tokens_per_second: 1.0,
        max_num_seqs: 1_000_000,
        ..SimConfig::default()
    });
    let (slow_addr, _) = slow_sim
        .serve(any, std::future::pending())
        .await
        .expect("slow engine");
    let (slow_relay, slow_admin) = (free_addr(), free_addr());
    let slow_config = dir.path().join("serve-slow.yaml");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&relay_addr.to_string(), &slow_relay.to_string())
        .replace(&admin_addr.to_string(), &slow_admin.to_string())
        .replace(&sim_addr.to_string(), &slow_addr.to_string());
    std::fs::write(&slow_config, text).expect("config");
    let mut slow_serve = Command::new(env!("CARGO_BIN_EXE_relayminer"))
        .args(["serve", "--config"])
        .arg(&slow_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One relay to fill the caches, then the baseline.
    let warm = http
        .request(
            hyper::Request::post(format!("http://{slow_relay}/"))
                .body(Full::new(sign(
                    r#"{"messages":[],"max_tokens":1,"stream":true}"#,
                    19_999,
                )))
                .expect("req"),
        )
        .await
        .expect("warm");
    warm.into_body().collect().await.expect("body");
    let idle = rss_kb(slow_serve.id());
    let slow_body =
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":100000,"stream":true}"#;
    let relays: Vec<Bytes> = (0..open).map(|i| sign(slow_body, 20_000 + i)).collect();
    // Over HTTP/2 as a gateway multiplexes them, 100 streams per connection (one client,
    // so one connection, each): serve then holds one engine connection per stream and
    // this process one engine-side socket per stream, within the machine's 20,000
    // descriptors per process.
    let h2: Vec<Http> = (0..open.div_ceil(100))
        .map(|_| {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build(c)
        })
        .collect();
    let mut held = Vec::with_capacity(open);
    for (i, r) in relays.into_iter().enumerate() {
        let res = h2[i / 100]
            .request(
                hyper::Request::post(format!("http://{slow_relay}/"))
                    .body(Full::new(r))
                    .expect("req"),
            )
            .await
            .expect("stream");
        held.push(res.into_body());
    }
    // Every stream has delivered its first batch and keeps going.
    for b in held.iter_mut().take(100) {
        b.frame().await.expect("frame").expect("ok");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = rss_kb(slow_serve.id());
    let in_flight = sim_in_flight(&http, slow_admin).await;
    println!(
        "{open} open slow streams over HTTP/2 ({in_flight} in flight in serve): serve RSS {idle} kB → {busy} kB = {:.1} kB per stream (target ≤ 64)",
        busy.saturating_sub(idle) as f64 / open as f64
    );
    drop(held);
    let _ = slow_serve.kill();
    let _ = slow_serve.wait();
    let _ = serve.kill();
    let _ = serve.wait();
}
