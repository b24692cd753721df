//! Latency the gateway adds (ring signing, supplier-signature verification, proxying):
//! the same chat completions sent to `relayminer run`'s relay port directly (relays
//! signed before the clock starts) and through the gateway, interleaved, in one run.
//!
//! `cargo bench -p lode-gateway --bench gateway --profile dev` (`--quick`: fewer requests)

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig, HRP};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::proto::Message;
use lode_relayminer::run::RunOptions;

const CHAT: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}"#;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn post(
    http: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    body: Bytes,
    auth: bool,
) -> Duration {
    let mut req = hyper::Request::post(uri);
    if auth {
        req = req
            .header("authorization", "Bearer sk-bench")
            .header("content-type", "application/json");
    }
    let started = Instant::now();
    let res = http
        .request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("answer");
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.expect("body");
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 100 } else { 1000 };
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::new(81));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::ZERO,
        tokens_per_second: 1e9,
        ..SimConfig::default()
    });
    let (engine, _) = sim
        .serve(any(), std::future::pending())
        .await
        .expect("engine");
    let supplier = devnet.keys().suppliers[0].clone();
    let key = dir.path().join("supplier.key");
    std::fs::write(&key, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        lode_relayminer::serve::config::minimal_yaml(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &chain.node(),
            &[key],
            "llm",
            &format!("http://{engine}"),
        ),
    )
    .expect("config");
    let run = lode_relayminer::run::start(RunOptions::loopback(config, dir.path().join("data")))
        .await
        .expect("run");
    let relay_url = format!("http://{}", run.serve.relay_addr);
    let session = devnet
        .stake_into_next_session_at(&chain, 0, "llm", &relay_url)
        .await
        .expect("staked")
        .header;
    let app = &devnet.keys().applications[0];
    let g = support::start_gateway(&devnet, &chain, dir.path()).await;
    while g.state.sessions.height() < session.session_start_block_height
        || run.serve.state.sessions.height() < session.session_start_block_height
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Relays for the direct path, built and signed as the gateway does, before the
    // clock starts.
    let direct_session = lode_gateway::sessions::Session::new(
        session.clone(),
        Vec::new(),
        lode_kernels::crypto::ring::RingSigner::new(
            &[app.public_key(), devnet.keys().gateways[0].public_key()],
            &devnet.keys().gateways[0],
        )
        .expect("gateway in ring"),
    );
    let supplier_addr = supplier.public_key().address().to_bech32(HRP);
    let signed: Vec<Bytes> = (0..n)
        .map(|_| {
            let req = lode_gateway::relay::build_request(
                &direct_session,
                &supplier_addr,
                "/v1/chat/completions",
                "application/json",
                CHAT.as_bytes(),
            )
            .expect("signed");
            Bytes::from(req.encode())
        })
        .collect();

    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let gateway_url = format!("http://{}/v1/chat/completions", g.addr);
    // Warm both paths (connections, caches).
    for b in signed.iter().take(20) {
        post(&http, &relay_url, b.clone(), false).await;
        post(
            &http,
            &gateway_url,
            Bytes::from_static(CHAT.as_bytes()),
            true,
        )
        .await;
    }
    let (mut direct, mut through) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for b in &signed {
        direct.push(post(&http, &relay_url, b.clone(), false).await);
        through.push(
            post(
                &http,
                &gateway_url,
                Bytes::from_static(CHAT.as_bytes()),
                true,
            )
            .await,
        );
    }
    direct.sort();
    through.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "gateway added latency, {n} sequential 16-token chat completions each way, 2 cores, loopback"
    );
    println!("| measure | serve directly | through the gateway | added | target |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, p, target) in [("p50", 0.5, "≤ 1 ms"), ("p99", 0.99, "—")] {
        let (d, t) = (percentile(&direct, p), percentile(&through, p));
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {target} |",
            ms(d),
            ms(t),
            ms(t) - ms(d)
        );
    }
    g.shutdown().await;
    let _ = run.shutdown().await;
    chain.shutdown().await;
}
