//! serve finds its engine replicas in the engine Service's EndpointSlices (an API
//! server on loopback stands in for Kubernetes): ready replicas take relays, one that
//! turns terminating takes nothing new, and an API server that fails, lies, floods or
//! stalls changes nothing (the last set stays, the failures are counted). With a hold,
//! a service with no engine yet (a model at zero) holds its relays, bounded, until one
//! is found, and answers the late ones 503 with `Retry-After`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use lode_kernels::proto::Message;
use serde_json::{Value, json};

use common::*;

/// What the stand-in API server answers.
#[derive(Clone)]
enum Answer {
    Slices(Value),
    Status(u16, &'static str),
    Huge,
    Stall,
}

#[derive(Clone)]
struct Api {
    answer: Arc<Mutex<Answer>>,
    asked: Arc<AtomicUsize>,
}

async fn endpoint_slices(
    State(api): State<Api>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    assert_eq!(
        q.get("labelSelector").map(String::as_str),
        Some("kubernetes.io/service-name=llm-engines"),
        "serve asks for its engine Service's slices"
    );
    api.asked.fetch_add(1, Ordering::Relaxed);
    let answer = api.answer.lock().expect("lock").clone();
    match answer {
        Answer::Slices(v) => axum::Json(v).into_response(),
        Answer::Status(code, text) => (
            axum::http::StatusCode::from_u16(code).expect("status"),
            text,
        )
            .into_response(),
        // 5 MiB of a valid-looking list: more than serve reads.
        Answer::Huge => {
            let pad = "x".repeat(5 << 20);
            format!("{{\"items\": [], \"pad\": \"{pad}\"}}").into_response()
        }
        Answer::Stall => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            axum::Json(json!({"items": []})).into_response()
        }
    }
}

impl Api {
    fn answering(slices: Value) -> Self {
        Self {
            answer: Arc::new(Mutex::new(Answer::Slices(slices))),
            asked: Arc::default(),
        }
    }
}

/// The stand-in API server on a free loopback port: its address and its task.
async fn serve_api(api: &Api) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let app = axum::Router::new()
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/lode/endpointslices",
            axum::routing::get(endpoint_slices),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    )
}

fn slices(ready: &[(SocketAddr, bool)]) -> Value {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(a, r)| {
            json!({"addresses": [a.ip().to_string()],
                   "conditions": {"ready": r, "serving": true, "terminating": !r}})
        })
        .collect();
    // One slice per port number (engine-sim listens on a free port each).
    let items: Vec<Value> = ready
        .iter()
        .zip(endpoints)
        .map(|((a, _), e)| {
            json!({"addressType": "IPv4", "endpoints": [e],
                   "ports": [{"name": "engine", "port": a.port(), "protocol": "TCP"}]})
        })
        .collect();
    json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "items": items})
}

fn chat(i: usize) -> String {
    json!({"model": "sim-model", "max_tokens": 2,
           "messages": [{"role": "user", "content": format!("question {i}")}]})
    .to_string()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("waited 5 s for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_follow_the_endpoint_slices_and_a_bad_api_server_changes_nothing() {
    let ((a, a_addr), (b, b_addr)) = (another_engine().await, another_engine().await);
    let api = Api::answering(slices(&[(a_addr, true), (b_addr, true)]));
    let (api_addr, server) = serve_api(&api).await;
    let f = fleet(|yaml| {
        yaml.push_str(&format!(
            "    routing: {{mode: leastLoaded}}\n    discovery: {{service: llm-engines, namespace: lode, port: engine, period_ms: 100, api_url: 'http://{api_addr}'}}\n",
        ))
    })
    .await;
    let router = &f.serve().state.services[SERVICE].router;
    let metrics = f.serve().state.metrics.service(SERVICE);
    wait_for("both replicas found", || router.ready() == 2).await;
    assert_eq!(metrics.route.engines_ready.load(Ordering::Relaxed), 2);

    // Relays spread over both replicas, none on the configured backend_url.
    for i in 0..8 {
        let (status, res) = f.send(&f.relay(&chat(i))).await;
        assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    }
    assert_eq!(a.successes() + b.successes(), 8);
    assert!(a.successes() > 0 && b.successes() > 0, "both serve");
    assert_eq!(f.sim.successes(), 0, "backend_url is not an engine now");

    // b turns terminating: nothing new goes there.
    *api.answer.lock().expect("lock") = Answer::Slices(slices(&[(a_addr, true), (b_addr, false)]));
    wait_for("b drained", || router.ready() == 1).await;
    let on_b = b.successes();
    for i in 8..14 {
        let (status, _) = f.send(&f.relay(&chat(i))).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        b.successes(),
        on_b,
        "a terminating replica takes no new relay"
    );

    // A failing, lying, flooding or stalling API server changes nothing.
    for bad in [
        Answer::Status(403, "{\"kind\":\"Status\",\"reason\":\"Forbidden\"}"),
        Answer::Status(200, "<html>not json</html>"),
        Answer::Slices(json!({"kind": "Status"})),
        Answer::Huge,
        Answer::Stall,
    ] {
        let errors = metrics.route.discovery_errors.load(Ordering::Relaxed);
        *api.answer.lock().expect("lock") = bad;
        let wait = if matches!(*api.answer.lock().expect("lock"), Answer::Stall) {
            8000
        } else {
            2000
        };
        for _ in 0..wait / 25 {
            if metrics.route.discovery_errors.load(Ordering::Relaxed) > errors {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            metrics.route.discovery_errors.load(Ordering::Relaxed) > errors,
            "the failure is counted"
        );
        assert_eq!(router.ready(), 1, "the last set stays");
        let (status, _) = f.send(&f.relay(&chat(100))).await;
        assert_eq!(status, 200, "relays still served");
    }

    // Back, with b ready again: it takes relays again.
    *api.answer.lock().expect("lock") = Answer::Slices(slices(&[(a_addr, true), (b_addr, true)]));
    wait_for("b back", || router.ready() == 2).await;
    let on_b = b.successes();
    for i in 20..26 {
        let (status, _) = f.send(&f.relay(&chat(i))).await;
        assert_eq!(status, 200);
    }
    assert!(b.successes() > on_b, "b serves again");
    assert_eq!(
        f.mined(),
        8 + 6 + 5 + 6,
        "every relay served and mined once"
    );
    // At least one read per phase: found, drained, five failures, back.
    let asked = api.asked.load(Ordering::Relaxed);
    assert!(asked >= 8, "asked {asked}");
    server.abort();
}

/// GET on serve's admin port: status and body.
async fn admin(f: &Fleet, path: &str) -> (u16, String) {
    let uri = format!("http://{}{path}", f.serve().admin_addr);
    let req = hyper::Request::get(uri)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let res = f.http.request(req).await.expect("admin answers");
    let status = res.status().as_u16();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A model at zero: the relay tier is ready with no engine and holds relays. One held
/// past its deadline is answered 503 + `Retry-After` with the waking code and is not
/// mined; while the hold is full (in count, or in bytes), more are answered so at once;
/// the held ones count as demand and are served, and mined once each, when the first
/// engine is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_zero_holds_relays_until_its_first_engine_is_found() {
    let (a, a_addr) = another_engine().await;
    let api = Api::answering(slices(&[]));
    let (api_addr, server) = serve_api(&api).await;
    let f = fleet(|yaml| {
        yaml.push_str(&format!(
            "    discovery: {{service: llm-engines, namespace: lode, port: engine, period_ms: 3000, api_url: 'http://{api_addr}'}}\n    hold: {{max_relays: 3, max_bytes: 20000, deadline_ms: 1500}}\n",
        ))
    })
    .await;
    let metrics = f.serve().state.metrics.service(SERVICE);
    wait_for("the empty slice read", || {
        api.asked.load(Ordering::Relaxed) > 0
    })
    .await;
    for _ in 0..100 {
        if admin(&f, "/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ready, why) = admin(&f, "/readyz").await;
    assert_eq!(ready, 200, "ready with no engine, to hold relays: {why}");

    // Past its deadline: 503, Retry-After, the waking code; not mined.
    let t0 = std::time::Instant::now();
    let (status, headers, body) = f.post_headers(f.relay(&chat(0)).encode()).await;
    let waited = t0.elapsed();
    let res = lode_kernels::proto::RelayResponse::decode(&body[..]).expect("a RelayResponse");
    assert_eq!(
        (status, error_code(&res)),
        (503, 20),
        "{:?}",
        res.relay_miner_error
    );
    assert!(waited >= Duration::from_millis(1400), "held {waited:?}");
    let retry: u64 = headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(metrics.hold_expired.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.held.load(Ordering::Relaxed),
        0,
        "the seat is given back"
    );

    // A relay larger than the hold's bytes is answered at once.
    let big = json!({"model": "sim-model", "max_tokens": 2,
                     "messages": [{"role": "user", "content": "y".repeat(30_000)}]})
    .to_string();
    let t = std::time::Instant::now();
    let (status, res) = f.send(&f.relay(&big)).await;
    assert_eq!((status, error_code(&res)), (503, 20), "over the bytes held");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "answered at once"
    );
    assert_eq!(metrics.hold_full.load(Ordering::Relaxed), 1);

    // Three held at once; a fourth is answered at once while the hold is full; then
    // the engine is found.
    let (r1, r2, r3) = (f.relay(&chat(1)), f.relay(&chat(2)), f.relay(&chat(3)));
    let held = async { tokio::join!(f.send(&r1), f.send(&r2), f.send(&r3)) };
    let meanwhile = async {
        wait_for("three relays held", || {
            metrics.held.load(Ordering::Relaxed) == 3
        })
        .await;
        let (_, demand) = admin(&f, "/demand").await;
        let d: lode_contracts::demand::DemandReport =
            serde_json::from_str(&demand).expect("demand");
        let d = &d.services[0];
        assert_eq!(
            (d.in_flight, d.held),
            (3, 3),
            "held relays are demand at once"
        );
        let t = std::time::Instant::now();
        let (status, res) = f.send(&f.relay(&chat(4))).await;
        assert_eq!((status, error_code(&res)), (503, 20), "the hold is full");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "answered at once"
        );
        assert_eq!(metrics.hold_full.load(Ordering::Relaxed), 2);
        *api.answer.lock().expect("lock") = Answer::Slices(slices(&[(a_addr, true)]));
        std::time::Instant::now()
    };
    let (((s1, r1), (s2, r2), (s3, r3)), found) = tokio::join!(held, meanwhile);
    // Read every 3 s, but every 200 ms while relays are held: served well within 3 s.
    let waited = found.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "served {waited:?} after the engine appeared"
    );
    for (s, r) in [(s1, r1), (s2, r2), (s3, r3)] {
        assert_eq!(
            s, 200,
            "served once the engine is found: {:?}",
            r.relay_miner_error
        );
    }
    assert_eq!(a.successes(), 3);
    assert!(
        metrics.last_wake_ms.load(Ordering::Relaxed) > 0,
        "the wake-up is measured"
    );
    wait_for("the three mined", || f.mined() == 3).await;
    assert_eq!(metrics.hold_expired.load(Ordering::Relaxed), 1);

    // With an engine ready, nothing is held: a relay larger than the hold is served.
    let (status, _) = f.send(&f.relay(&big)).await;
    assert_eq!(status, 200);
    assert_eq!(metrics.held_total.load(Ordering::Relaxed), 4);
    wait_for("four mined", || f.mined() == 4).await;
    server.abort();
}
