//! Prefix routing on real engines: serve in front of two llama.cpp replicas, a
//! conversation workload with long shared system prompts, time to the first token with
//! `routing: prefix` against `roundRobin`, in one run (2 cores, loopback).
//!
//! Run: `cargo bench -p lode-relayminer --bench llamacpp_routing --profile dev` (needs
//! `LODE_LLAMA_SERVER`). The model is the tests' tiny one (2 layers, byte-level tokens:
//! a prompt's bytes are its tokens). Each replica has 2 slots of 1,536 tokens and no
//! host-memory prompt cache (`--cache-ram 0`), so it keeps the KV of 2 prompts, as a GPU
//! keeps what fits in its memory. The workload: 4 groups, each a system prompt of
//! ~600 bytes and a conversation growing by one turn per round; each round visits the
//! groups in a seeded random order, one request at a time. A request asks for one
//! token, so its latency is its time to the first token. Both routers see the same
//! workload shape, with different prompts (no cache carried over).
//! `LLAMA_ROUTING_ROUNDS` sets the rounds (default 8).

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use lode_kernels::proto::{Message, PoktHttpResponse, RelayResponse};
use support::*;

const GROUPS: usize = 4;

/// A system prompt of ~600 bytes for `group`, different per `run`.
fn system(run: &str, group: usize, rng: &mut lode_testkit::Rng) -> String {
    let words = [
        "answer", "briefly", "politely", "with", "care", "and", "cite", "the", "ledger", "for",
        "every", "claim", "about", "supply", "relay", "session",
    ];
    let mut s = format!("{run} group {group}: you are assistant {group}.");
    while s.len() < 600 {
        s.push(' ');
        s.push_str(words[rng.below(words.len() as u64) as usize]);
    }
    s
}

fn chat(system: &str, turns: &[String]) -> String {
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": t}));
    }
    serde_json::json!({"model": "tiny", "messages": messages, "max_tokens": 1, "ignore_eos": true})
        .to_string()
}

/// One run of the workload through serve at `relay`: each request's ms, and the prompt
/// tokens the engines reported cached over those they were sent.
async fn run(rig: &Rig, name: &str, rounds: usize, seed: u64) -> (Vec<f64>, u64, u64) {
    let mut rng = lode_testkit::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let systems: Vec<String> = (0..GROUPS).map(|g| system(name, g, &mut rng)).collect();
    let mut turns: Vec<Vec<String>> = vec![Vec::new(); GROUPS];
    let (mut times, mut cached, mut prompt) = (Vec::new(), 0, 0);
    let mut i = 0;
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..GROUPS).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, rng.below(k as u64 + 1) as usize);
        }
        for g in order {
            turns[g].push(format!("round {round}: what changed for group {g}?"));
            let relay = rig.sign(&chat(&systems[g], &turns[g]), seed as usize * 10_000 + i);
            i += 1;
            let t = Instant::now();
            let res = rig
                .http
                .request(
                    hyper::Request::post(format!("http://{}/", rig.relay_addr))
                        .body(Full::new(relay))
                        .expect("req"),
                )
                .await
                .expect("serve answers");
            assert_eq!(res.status(), 200);
            let body = res.into_body().collect().await.expect("body").to_bytes();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let answer = RelayResponse::decode(body.as_ref()).expect("a relay response");
            let http = PoktHttpResponse::decode(answer.payload.as_slice()).expect("payload");
            assert_eq!(
                http.status_code,
                200,
                "{}",
                String::from_utf8_lossy(&http.body_bz)
            );
            let usage: serde_json::Value =
                serde_json::from_slice(&http.body_bz).expect("the engine's JSON");
            prompt += usage["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            cached += usage["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            turns[g].push(format!("In round {round} the ledger of group {g} grew."));
        }
    }
    (times, cached, prompt)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("LLAMA_ROUTING_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    let args = [
        "--parallel",
        "2",
        "--ctx-size",
        "3072",
        "--threads",
        "1",
        "--cache-ram",
        "0",
    ];
    let (a, a_addr) = llama_server(&model, &args).await;
    let (b, b_addr) = llama_server(&model, &args).await;
    // Stopped however the run ends (a failed assertion included).
    let _servers = KillOnDrop(vec![a, b]);
    let engines = |mode: &str, second: SocketAddr| {
        format!("    engines: ['http://{second}']\n    routing: {{mode: {mode}}}\n")
    };
    println!(
        "two llama-server replicas (tiny model, 2 slots of 1536 tokens, 1 thread, no host cache), \
         {GROUPS} conversations × {rounds} rounds, one request at a time"
    );
    let mut rows = Vec::new();
    for (mode, seed) in [
        ("roundRobin", 1u64),
        ("prefix", 2),
        ("roundRobin", 3),
        ("prefix", 4),
    ] {
        let rig = Rig::start_with_service("", Some(a_addr), &engines(mode, b_addr)).await;
        let (mut times, cached, prompt) = run(&rig, mode, rounds, seed).await;
        let (p50, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
        println!(
            "{mode:>10}: TTFT p50 {p50:.1} ms p90 {p90:.1} ms; cached prompt tokens {cached} of {prompt} ({:.1} %)",
            100.0 * cached as f64 / prompt.max(1) as f64
        );
        rows.push((mode, p50));
        let mut serve = rig.serve;
        let _ = serve.kill();
        let _ = serve.wait();
    }
    let p50 = |m: &str| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == m).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "TTFT p50, mean of the two runs each: round robin {:.1} ms, prefix {:.1} ms: {:.2}× lower with prefix routing",
        p50("roundRobin"),
        p50("prefix"),
        p50("roundRobin") / p50("prefix")
    );
}

struct KillOnDrop(Vec<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
