//! Serve benchmark: the real `relayminer serve` process between a gateway-like client and
//! engine-sim, against calling engine-sim directly in the same run (2 cores, loopback).
//!
//! Run: `cargo bench -p lode-relayminer --bench serve --profile dev`. Reports the latency
//! serve adds (p50/p99 at half of the measured saturation, 1 KB non-streamed responses),
//! relays/s per CPU-second of the serve process (ring verification with a ring of 2,
//! signing, hashing, shipping to a real store), the delay serve adds to a stream's first
//! chunk, and the memory each open slow stream costs the serve process.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_engine_sim::{EngineSim, SimConfig};
use lode_testkit::{cpu_seconds, free_addr};
use support::*;
/// About 1 KB of response JSON.
const BODY: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"benchmark"}],"max_tokens":120}"#;

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
    for (path, l) in [("direct", &direct), ("through serve", &through)] {
        let failed = l.iter().filter(|ms| !ms.is_finite()).count();
        assert_eq!(failed, 0, "{failed} of {n} relays {path} not answered 200");
    }
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rig = Rig::start("").await;
    let (http, relay_addr, sim_addr) = (rig.http.clone(), rig.relay_addr, rig.sim_addr);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sign = |body: &str, i: usize| rig.sign(body, i);
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
    let cpu0 = cpu_seconds(&format!("/proc/{}/stat", rig.serve.id()));
    let secs = 4.0;
    let done = saturate(Duration::from_secs_f64(secs), 64, to_serve.clone(), &http).await;
    let cpu = cpu_seconds(&format!("/proc/{}/stat", rig.serve.id())) - cpu0;
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
    let slow_config = rig.dir.path().join("serve-slow.yaml");
    let text = std::fs::read_to_string(&rig.config)
        .expect("config")
        .replace(&relay_addr.to_string(), &slow_relay.to_string())
        .replace(&rig.admin_addr.to_string(), &slow_admin.to_string())
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
    let mut serve = rig.serve;
    let _ = serve.kill();
    let _ = serve.wait();
}
