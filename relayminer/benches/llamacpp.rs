//! serve in front of llama.cpp's real server: the latency serve adds to a chat completion
//! and to a stream's first chunk, against calling the same llama-server directly, in one
//! run (2 cores, loopback).
//!
//! Run: `cargo bench -p lode-relayminer --bench llamacpp --profile dev` (needs
//! `LODE_LLAMA_SERVER`, which scripts/setup.sh builds and exports). The model is the tiny
//! one the tests use (scripts/tiny-gguf.py: 2 layers, random weights), so the engine's
//! own time is small and what serve adds shows. Requests alternate between the two paths
//! one at a time, with the same prompt, so both meet the same engine state (its slot
//! holds the prompt: llama.cpp's prompt cache serves both alike). `LLAMA_BENCH_N` sets
//! the number of requests per path (default 300).

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;

/// 16 generated tokens every time (llama.cpp's `ignore_eos`: random weights would end
/// the answer whenever they happen to pick the end token).
const CHAT: &str = r#"{"model":"tiny","messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"Say sixteen tokens."}],"max_tokens":16,"ignore_eos":true}"#;
const STREAM: &str = r#"{"model":"tiny","messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"Stream sixteen tokens."}],"max_tokens":16,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#;

/// One request: (ms to the first body frame, ms to the end), or `None` unless a 200.
async fn timed(http: &Http, req: hyper::Request<Full<Bytes>>) -> Option<(f64, f64)> {
    let t = Instant::now();
    let res = http.request(req).await.ok()?;
    if res.status() != 200 {
        return None;
    }
    let mut body = res.into_body();
    let first = match body.frame().await {
        Some(Ok(_)) => t.elapsed().as_secs_f64() * 1e3,
        _ => return None,
    };
    while let Some(f) = body.frame().await {
        f.ok()?;
    }
    Some((first, t.elapsed().as_secs_f64() * 1e3))
}

struct Paths {
    direct: Vec<(f64, f64)>,
    serve: Vec<(f64, f64)>,
}

/// `n` requests each way, alternating; `body` for the engine, relays `base..` for serve.
async fn alternate(
    rig: &Rig,
    engine: SocketAddr,
    relay: SocketAddr,
    body: &'static str,
    n: usize,
    base: usize,
) -> Paths {
    let relays: Vec<Bytes> = (0..n).map(|i| rig.sign(body, base + i)).collect();
    let mut p = Paths {
        direct: Vec::with_capacity(n),
        serve: Vec::with_capacity(n),
    };
    let direct = || {
        hyper::Request::post(format!("http://{engine}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("req")
    };
    let through = |r: &Bytes| {
        hyper::Request::post(format!("http://{relay}/"))
            .body(Full::new(r.clone()))
            .expect("req")
    };
    for (i, r) in relays.iter().enumerate() {
        // Which goes first alternates too.
        let (a, b) = if i % 2 == 0 {
            let a = once_more(&rig.http, direct).await;
            (a, once_more(&rig.http, || through(r)).await)
        } else {
            let b = once_more(&rig.http, || through(r)).await;
            (once_more(&rig.http, direct).await, b)
        };
        p.direct.push(a.expect("llama-server answers 200"));
        p.serve.push(b.expect("serve answers 200"));
    }
    p
}

/// [`timed`], tried a second time when the first fails: llama.cpp closes a kept-alive
/// connection after 100 requests (`Keep-Alive: max=100`), and a request sent on it as it
/// closes fails before any answer.
async fn once_more(
    http: &Http,
    make: impl Fn() -> hyper::Request<Full<Bytes>>,
) -> Option<(f64, f64)> {
    match timed(http, make()).await {
        Some(t) => Some(t),
        None => timed(http, make()).await,
    }
}

fn report(what: &str, direct: &[f64], serve: &[f64]) {
    let (mut d, mut s) = (direct.to_vec(), serve.to_vec());
    let (d50, d99) = (percentile(&mut d, 0.5), percentile(&mut d, 0.99));
    let (s50, s99) = (percentile(&mut s, 0.5), percentile(&mut s, 0.99));
    println!(
        "{what}: llama-server direct p50 {d50:.3} ms p99 {d99:.3} ms; through serve p50 {s50:.3} ms p99 {s99:.3} ms; \
         added p50 {:.3} ms p99 {:.3} ms; ratio p50 {:.2}×",
        s50 - d50,
        s99 - d99,
        s50 / d50
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("LLAMA_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    let (mut llama, engine) = llama_server(&model, &["--parallel", "1", "--threads", "1"]).await;
    let rig = Rig::start_with_engine("", Some(engine)).await;
    println!(
        "llama-server {} on the tiny model (1 slot, 1 thread), serve with a real store; {n} requests each way, alternating",
        lode_testkit::llama_server().display()
    );
    // Warm both paths (sessions cached, connections pooled, the prompt in the slot).
    alternate(&rig, engine, rig.relay_addr, CHAT, 20, 0).await;
    alternate(&rig, engine, rig.relay_addr, STREAM, 20, 100).await;

    let chat = alternate(&rig, engine, rig.relay_addr, CHAT, n, 1_000).await;
    let whole = |v: &[(f64, f64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    report(
        "chat completion (16 tokens)",
        &whole(&chat.direct),
        &whole(&chat.serve),
    );
    let stream = alternate(&rig, engine, rig.relay_addr, STREAM, n, 100_000).await;
    let first = |v: &[(f64, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    report(
        "stream, first chunk",
        &first(&stream.direct),
        &first(&stream.serve),
    );
    report(
        "stream, whole (16 tokens)",
        &whole(&stream.direct),
        &whole(&stream.serve),
    );

    let _ = llama.kill();
    let _ = llama.wait();
    let mut serve = rig.serve;
    let _ = serve.kill();
    let _ = serve.wait();
}
