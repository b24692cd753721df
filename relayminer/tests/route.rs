//! serve in front of several engine replicas: a conversation stays on the replica that
//! holds its prefix, other prompts spread, a prompt that cannot be keyed is still
//! served, and a replica that refuses connections loses no relay.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use lode_kernels::proto::{Message, PoktHttpResponse};

use common::*;

fn chat(system: &str, turns: &[&str]) -> String {
    let mut m = vec![serde_json::json!({"role": "system", "content": system})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        m.push(serde_json::json!({"role": role, "content": t}));
    }
    serde_json::json!({"model": "sim-model", "messages": m, "max_tokens": 4}).to_string()
}

/// Adds engine replicas (and a routing mode) to the fleet's one service.
fn with_engines(engines: &[SocketAddr]) -> impl FnOnce(&mut String) {
    let list: Vec<String> = engines.iter().map(|a| format!("'http://{a}'")).collect();
    let extra = format!(
        "    engines: [{}]\n    routing: {{mode: prefix}}\n",
        list.join(", ")
    );
    move |yaml: &mut String| yaml.push_str(&extra)
}

async fn metrics(f: &Fleet) -> String {
    let admin = f.serve().admin_addr;
    let res = f
        .http
        .get(format!("http://{admin}/metrics").parse().expect("uri"))
        .await
        .expect("metrics");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_stay_where_their_prefix_is() {
    let (other, other_addr) = another_engine().await;
    let f = fleet(with_engines(&[other_addr])).await;
    let served = |f: &Fleet| (f.sim.successes(), other.successes());
    let groups: Vec<String> = (0..2)
        .map(|g| format!("You answer for team {g}. ").repeat(300))
        .collect();

    // Two conversations of two groups, turn by turn, interleaved.
    let mut homes = [None, None];
    let mut turns: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for round in 0..4 {
        for g in 0..2 {
            turns[g].push(format!("question {round} of group {g}"));
            let refs: Vec<&str> = turns[g].iter().map(String::as_str).collect();
            let before = served(&f);
            let (status, res) = f.send(&f.relay(&chat(&groups[g], &refs))).await;
            assert_eq!(status, 200, "{:?}", res.relay_miner_error);
            let http = PoktHttpResponse::decode(&res.payload).expect("payload");
            assert_eq!(http.status_code, 200);
            let after = served(&f);
            let went = if after.0 > before.0 { 0 } else { 1 };
            assert_eq!(
                after.0 + after.1,
                before.0 + before.1 + 1,
                "served exactly once"
            );
            match homes[g] {
                None => homes[g] = Some(went),
                Some(h) => assert_eq!(went, h, "group {g}, turn {round}: stays home"),
            }
            turns[g].push(format!("answer {round}"));
        }
    }
    assert_ne!(homes[0], homes[1], "the two conversations spread");
    let m = f.serve().state.metrics.service(SERVICE);
    assert_eq!(m.route.prefix_hits.load(Ordering::Relaxed), 6);
    assert_eq!(m.route.prefix_misses.load(Ordering::Relaxed), 2);

    // A prompt the router cannot key is still served (the engine says what is wrong).
    let (status, res) = f.send(&f.relay("{\"messages\": not json")).await;
    assert_eq!(status, 200);
    let http = PoktHttpResponse::decode(&res.payload).expect("payload");
    assert_eq!(http.status_code, 400, "engine-sim refuses bad JSON");
    let text = metrics(&f).await;
    assert!(
        text.contains("lode_serve_routed_total{service=\"llm\",how=\"unkeyed_not_json\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lode_serve_routed_total{service=\"llm\",how=\"prefix_hit\"} 6"),
        "{text}"
    );
    // No prompt text on /metrics.
    assert!(!text.contains("team"), "{text}");
    assert_eq!(
        f.mined(),
        8,
        "every served answer mined, the refused one not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_refuses_connections_loses_no_relay() {
    // A replica that is gone: its port refuses connections.
    let gone = lode_testkit::free_addr();
    let f = fleet(with_engines(&[gone])).await;
    for i in 0..6 {
        let body = chat(&format!("prompt {i} "), &["hello"]);
        let (status, res) = f.send(&f.relay(&body)).await;
        assert_eq!(status, 200, "relay {i}: {:?}", res.relay_miner_error);
    }
    assert_eq!(f.sim.successes(), 6, "all on the live replica");
    let m = f.serve().state.metrics.service(SERVICE);
    assert!(
        m.route.retried.load(Ordering::Relaxed) >= 1,
        "some went to the gone one first"
    );
    assert_eq!(f.mined(), 6);
}
