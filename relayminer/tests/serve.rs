//! `relayminer serve` end to end: the devnet chain, engine-sim, a real store process and
//! serve on loopback; a gateway's relays served, signed, streamed and mined; every kind
//! of bad relay refused with its reason; nothing acknowledged lost.

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::DevnetConfig;
use lode_engine_sim::Mode;
use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::{Message, PoktHttpResponse, RelayResponse};
use lode_kernels::relay::{decode_stream, join_stream_payloads, verify_response};
use lode_testkit::StoreProcess;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_served_signed_streamed_and_mined() {
    let f = fleet(|_| {}).await;
    let supplier_key = f.supplier.public_key();

    // Non-streaming: a signed response carrying the engine's answer.
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    assert!(
        verify_response(&res, &supplier_key),
        "signed by the supplier"
    );
    assert_eq!(res.meta.session_header.as_ref(), Some(&f.header));
    let http = PoktHttpResponse::decode(&res.payload).expect("payload");
    assert_eq!(http.status_code, 200);
    let body: serde_json::Value = serde_json::from_slice(&http.body_bz).expect("json");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    // Streaming: signed batches separated by ||POKT_STREAM||, the SSE intact once joined.
    let (status, ct, raw) = f.post(f.relay(CHAT_STREAM).encode()).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let batches = decode_stream(&raw).expect("batches");
    assert!(
        batches.len() >= 2,
        "the first chunk is sent alone: {} batches",
        batches.len()
    );
    assert!(
        batches.iter().all(|b| verify_response(b, &supplier_key)),
        "every batch is signed"
    );
    let joined = join_stream_payloads(batches.iter().map(|b| b.payload.as_slice())).expect("join");
    let text = String::from_utf8(joined.body_bz).expect("utf8");
    assert_eq!(
        text.matches("data: ").count(),
        12 + 3,
        "12 tokens, finish, usage, [DONE]"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Over HTTP/2 (cleartext, prior knowledge) as well.
    let h2: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = hyper::Request::post(format!("http://{}/", f.serve().relay_addr))
        .body(Full::new(Bytes::from(f.relay(CHAT).encode())))
        .expect("req");
    let res = h2.request(req).await.expect("h2");
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    let res = RelayResponse::decode(&res.into_body().collect().await.expect("body").to_bytes())
        .expect("decode");
    assert!(verify_response(&res, &supplier_key));

    // Mined and acknowledged by the store (policy hold: before each answer).
    assert_eq!(f.mined(), 3);
    assert_eq!(f.leaves().await, 3, "every mined relay is in the store");
    let m = f.serve().state.metrics.service(SERVICE);
    assert_eq!(
        m.completion_tokens
            .load(std::sync::atomic::Ordering::Relaxed),
        36,
        "usage of all three"
    );

    // The admin port.
    let admin = f.serve().admin_addr;
    let get = |path: &'static str| {
        let http = f.http.clone();
        async move {
            let res = http
                .get(format!("http://{admin}{path}").parse().expect("uri"))
                .await
                .expect("admin");
            (
                res.status().as_u16(),
                String::from_utf8(
                    res.into_body()
                        .collect()
                        .await
                        .expect("b")
                        .to_bytes()
                        .to_vec(),
                )
                .expect("utf8"),
            )
        }
    };
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("lode_serve_mined_total{service=\"llm\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lode_serve_store_acknowledged_total 3"),
        "{metrics}"
    );
    let (_, demand) = get("/demand").await;
    let demand: serde_json::Value = serde_json::from_str(&demand).expect("json");
    assert_eq!(demand["services"][0]["service_id"], SERVICE);
    assert_eq!(demand["services"][0]["in_flight"], 0);
    assert_eq!(get("/healthz").await.0, 200);
    f.serve
        .expect("running")
        .shutdown()
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_relays_get_the_right_errors() {
    let mut f = fleet(|_| {}).await;
    let me = address(&f.supplier);

    // Malformed protobuf.
    let (status, _, body) = f.post(b"\xff\xff not a relay".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_code(&RelayResponse::decode(&body).expect("decodes")),
        14
    );
    // Oversize body (the service allows 64 KiB).
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100_000)
    );
    let (status, res) = f.send(&f.relay(&big)).await;
    assert_eq!((status, error_code(&res)), (413, 11));
    // Bad ring signature.
    f.refused_forged().await;
    // Tampered after signing: the signature no longer covers the payload.
    let mut req = f.relay(CHAT);
    req.payload.push(b' ');
    assert_eq!(f.send(&req).await.0, 401);
    // Wrong session ids: refused, and none of them takes a place in the session cache
    // (which holds the real session only).
    assert_eq!(f.serve().state.sessions.cached_sessions(), 1);
    for fill in ["00", "ab", "ff"] {
        let mut h = f.header.clone();
        h.session_id = fill.repeat(32);
        f.refused(&f.relay_for(&h, &me, CHAT), (400, 1), "does not match")
            .await;
    }
    assert_eq!(f.serve().state.sessions.cached_sessions(), 1);
    // A supplier this relayminer does not hold.
    let stranger = address(&SecretKey::from_secret(b"stranger"));
    let (status, res) = f.send(&f.relay_for(&f.header, &stranger, CHAT)).await;
    assert_eq!((status, error_code(&res)), (403, 4));
    // A supplier it holds that is not in the session.
    let other = address(&f.devnet.keys().suppliers[1]);
    f.refused(
        &f.relay_for(&f.header, &other, CHAT),
        (400, 1),
        "not in this session",
    )
    .await;
    // Unknown service.
    let mut h = f.header.clone();
    h.service_id = "other-model".into();
    let (status, res) = f.send(&f.relay_for(&h, &me, CHAT)).await;
    assert_eq!((status, error_code(&res)), (404, 3));
    assert_eq!(f.mined(), 0, "nothing refused was mined");

    // Engine 5xx: served (signed, status inside), not mined.
    f.sim.set_mode(Mode::Error500);
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200);
    assert!(verify_response(&res, &f.supplier.public_key()));
    assert_eq!(
        PoktHttpResponse::decode(&res.payload)
            .expect("payload")
            .status_code,
        500
    );
    assert_eq!(f.mined(), 0);
    // Engine 4xx (it refused the request: here, a body that is not JSON): served and
    // signed with the engine's own error inside, not mined (the application is not
    // charged for a request the engine refused).
    f.sim.set_mode(Mode::Ok);
    let (status, res) = f.send(&f.relay("{not json")).await;
    assert_eq!(status, 200);
    assert!(verify_response(&res, &f.supplier.public_key()));
    let inner = PoktHttpResponse::decode(&res.payload).expect("payload");
    assert_eq!(inner.status_code, 400);
    assert!(String::from_utf8_lossy(&inner.body_bz).contains("invalid JSON"));
    assert_eq!(f.mined(), 0);
    // Engine hangs: the request timeout (2 s) answers 504.
    f.sim.set_mode(Mode::Hang);
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!((status, error_code(&res)), (504, 10));
    f.sim.set_mode(Mode::Ok);

    // The gateway walks away mid-stream: no panic, not mined, serve keeps serving.
    let slow = r#"{"messages":[{"role":"user","content":"long"}],"max_tokens":400,"stream":true}"#;
    let uri = format!("http://{}/", f.serve().relay_addr);
    let res = f
        .http
        .request(
            hyper::Request::post(uri)
                .body(Full::new(Bytes::from(f.relay(slow).encode())))
                .expect("req"),
        )
        .await
        .expect("stream");
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("ok");
    assert!(first.is_data());
    drop(body);
    let m = f.serve().state.metrics.service(SERVICE);
    for _ in 0..200 {
        if m.aborted.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        m.aborted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the abandoned stream is counted"
    );
    let (status, _) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200);
    assert_eq!(f.mined(), 1);

    // Engine down.
    let _ = f.sim_stop.take().expect("running").send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(
        (status, error_code(&res)),
        (502, 9),
        "{:?}",
        res.relay_miner_error
    );

    // Expired: past the session's grace period.
    let grace_end = f.header.session_end_block_height
        + f.devnet.chain().shared().grace_period_end_offset_blocks;
    f.devnet.advance((grace_end + 1 - f.devnet.height()) as u32);
    for _ in 0..200 {
        if f.serve().state.sessions.height() > grace_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.refused(&f.relay(CHAT), (400, 1), "expired").await;
    assert_eq!(f.leaves().await, 1, "the one mined relay is in the store");
    f.serve
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_checks_signatures_while_the_engine_starts() {
    use std::sync::atomic::Ordering::Relaxed;
    let f = fleet(|_| {}).await;
    let state = &f.serve().state;
    // Busy: enough verified relays for the ring to get its point tables.
    for _ in 0..20 {
        assert_eq!(f.send(&f.relay(CHAT)).await.0, 200);
    }
    for _ in 0..500 {
        if state.ring_tables() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        state.ring_tables(),
        5,
        "the application's and the gateway's keys and hash-to-curve points, the gateway's key image"
    );
    let concurrent = || state.metrics.concurrent_checks.load(Relaxed);
    let before = concurrent();
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    assert!(verify_response(&res, &f.supplier.public_key()));
    assert_eq!(concurrent(), before + 1, "checked while the engine started");

    // A forged relay in the busy session gets the refusal it gets when checked first;
    // the engine's request is cancelled, the charge given back, nothing mined, and the
    // session's later relays are checked before the engine sees them.
    let session = state
        .sessions
        .validate(&f.header, &address(&f.supplier))
        .await
        .expect("session");
    let (budget, served, leaves) = (
        session.budget_left.load(Relaxed),
        f.sim.successes(),
        f.leaves().await,
    );
    f.refused_forged().await;
    assert_eq!(concurrent(), before + 2);
    assert!(session.refused_signature.load(Relaxed));
    assert_eq!(session.budget_left.load(Relaxed), budget, "refunded");
    // engine-sim answers after 5 ms; give a request that was not cancelled time to end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        f.sim.successes(),
        served,
        "the engine's request was cancelled"
    );
    assert_eq!(f.leaves().await, leaves, "nothing mined");
    let (status, _) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200);
    assert_eq!(concurrent(), before + 2, "checked first from now on");
    assert_eq!(f.leaves().await, leaves + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ring_tables_without_memory_for_them() {
    use std::sync::atomic::Ordering::Relaxed;
    let f = fleet(|y| y.push_str("ring_table_mib: 0\n")).await;
    let state = &f.serve().state;
    for _ in 0..20 {
        assert_eq!(f.send(&f.relay(CHAT)).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    assert_eq!(state.ring_tables(), 0);
    assert_eq!(
        state.metrics.concurrent_checks.load(Relaxed),
        0,
        "every signature checked first"
    );
    f.refused_forged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sessions_first_relays_share_one_chain_fetch() {
    let f = fleet(|_| {}).await;
    let sessions = &f.serve().state.sessions;
    assert_eq!(sessions.cached_sessions(), 0);
    // A slow node: the first relays of the session all arrive while it is asked.
    f.devnet.chain().session_query_delay = Duration::from_millis(300);
    let before = f.devnet.chain().session_queries;
    let answers =
        futures_util::future::join_all((0..8).map(|_| async { f.send(&f.relay(CHAT)).await }))
            .await;
    for (status, res) in &answers {
        assert_eq!(*status, 200, "{:?}", res.relay_miner_error);
    }
    assert_eq!(
        f.devnet.chain().session_queries - before,
        1,
        "eight relays, one session query"
    );
    assert_eq!(sessions.cached_sessions(), 1);
    assert_eq!(sessions.fetches_in_flight(), 0, "finished fetches leave");

    // Made-up session ids of the session already here cost no node query (issue 23 §9:
    // each cost one), and leave nothing behind.
    let mut forged = f.header.clone();
    forged.session_id = "ab".repeat(32);
    let me = address(&f.supplier);
    let before = f.devnet.chain().session_queries;
    let answers = futures_util::future::join_all(
        (0..4).map(|_| async { f.send(&f.relay_for(&forged, &me, CHAT)).await }),
    )
    .await;
    for (status, res) in &answers {
        assert_eq!((*status, error_code(res)), (400, 1));
    }
    for fill in ["cd", "ef"] {
        forged.session_id = fill.repeat(32);
        let (status, res) = f.send(&f.relay_for(&forged, &me, CHAT)).await;
        assert_eq!((status, error_code(&res)), (400, 1));
    }
    assert_eq!(f.devnet.chain().session_queries - before, 0);
    assert_eq!(sessions.cached_sessions(), 1);
    assert_eq!(sessions.fetches_in_flight(), 0);

    // A header the chain refuses (an application with no session) is asked once per
    // block, however its id varies; the refusal is shared by the relays that asked
    // together.
    let mut stranger = f.header.clone();
    stranger.application_address = address(&SecretKey::from_secret(b"no such app"));
    let before = f.devnet.chain().session_queries;
    let (f, me) = (&f, &me);
    let answers = futures_util::future::join_all((0..4).map(|i| {
        let mut h = stranger.clone();
        h.session_id = format!("{i:064}");
        async move { f.send(&f.relay_for(&h, me, CHAT)).await }
    }))
    .await;
    for (status, res) in &answers {
        assert_eq!(*status, 400, "{:?}", res.relay_miner_error);
    }
    let asked = f.devnet.chain().session_queries - before;
    assert!((1..=4).contains(&asked), "{asked}");
    assert_eq!(sessions.remembered_refusals(), 1);
    for i in 10..20 {
        stranger.session_id = format!("{i:064}");
        assert_eq!(f.send(&f.relay_for(&stranger, me, CHAT)).await.0, 400);
    }
    assert_eq!(
        f.devnet.chain().session_queries - before,
        asked,
        "remembered until the next block"
    );
    assert_eq!(sessions.cached_sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_header_cannot_spoil_the_real_sessions_entry() {
    let f = fleet(|_| {}).await;
    let sessions = &f.serve().state.sessions;
    let me = address(&f.supplier);
    let grace = f.devnet.chain().shared().grace_period_end_offset_blocks;
    let real_grace_end = f.header.session_end_block_height + grace;
    // The real session id with a later end, then with the previous session's end, each
    // asked before any real relay: refused, and the entry the fetch leaves is the
    // session's own (its real end and grace period), under its own id.
    let mut later = f.header.clone();
    later.session_end_block_height += 40;
    let mut earlier = f.header.clone();
    earlier.session_end_block_height = f.header.session_start_block_height - 1;
    for forged in [later, earlier] {
        let (status, res) = f.send(&f.relay_for(&forged, &me, CHAT)).await;
        assert_eq!((status, error_code(&res)), (400, 1), "{forged:?}");
        if let Some(e) = sessions.cached(&f.header.session_id) {
            assert_eq!(e.grace_end, real_grace_end);
            assert_eq!(e.header, f.header);
        }
    }
    let e = sessions
        .cached(&f.header.session_id)
        .expect("the later one fetched it");
    assert_eq!(e.grace_end, real_grace_end);
    for _ in 0..3 {
        let (status, res) = f.send(&f.relay(CHAT)).await;
        assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    }
    assert_eq!(f.mined(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_loses_nothing() {
    let mut f =
        fleet(|y| *y = y.replace("policy: hold", "policy: queue, queue_capacity: 50")).await;
    let grpc = f.store.grpc;
    let admin = f.store.admin;
    f.store.kill();
    // Served while the store is down: queued, not acknowledged.
    for _ in 0..10 {
        let (status, res) = f.send(&f.relay(CHAT)).await;
        assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    }
    assert_eq!(f.mined(), 10);
    assert_eq!(f.serve().state.shipper.queued(), 10);
    // The store comes back on the same address with the same data: the queue drains.
    let data = f.store_dir.path().join("store");
    f.store = StoreProcess::start_on(&data, grpc, admin, &[]);
    f.store.client().await;
    for _ in 0..300 {
        if f.serve().state.shipper.queued() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.serve().state.shipper.queued(), 0, "the queue drained");
    assert_eq!(f.leaves().await, 10, "every mined relay reached the store");
    // A full queue refuses new relays instead of dropping mined ones.
    f.store.kill();
    let mut refused = 0;
    for _ in 0..60 {
        let (status, res) = f.send(&f.relay(CHAT)).await;
        if status == 503 {
            assert_eq!(error_code(&res), 5);
            refused += 1;
        }
    }
    assert_eq!(refused, 10, "50 queued, the rest refused");
    assert_eq!(f.mined(), 60);
    let handle = f.serve.take().expect("running");
    f.store = StoreProcess::start_on(&data, grpc, admin, &[]);
    handle.shutdown().await.expect("shutdown flushes the queue");
    assert_eq!(f.leaves().await, 60, "flushed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_backends_answer_openai_requests() {
    let f = fleet(|y| {
        let http = y
            .split("backend_url: ")
            .nth(1)
            .expect("url")
            .split('\n')
            .next()
            .expect("line")
            .to_string();
        *y = y.replace(
            &format!("backend_url: {http}"),
            "backend_url: http://{triton}\n    backend: triton",
        );
    })
    .await;
    let key = f.supplier.public_key();
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    assert!(verify_response(&res, &key));
    let http = PoktHttpResponse::decode(&res.payload).expect("payload");
    let body: serde_json::Value = serde_json::from_slice(&http.body_bz).expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 12, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .split_whitespace()
            .count(),
        12
    );

    let (status, ct, raw) = f.post(f.relay(CHAT_STREAM).encode()).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"));
    let batches = decode_stream(&raw).expect("batches");
    assert!(batches.iter().all(|b| verify_response(b, &key)));
    let joined = join_stream_payloads(batches.iter().map(|b| b.payload.as_slice())).expect("join");
    let text = String::from_utf8(joined.body_bz).expect("utf8");
    assert_eq!(text.matches("data: ").count(), 12 + 3, "{text}");
    assert!(text.contains("\"usage\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(f.mined(), 2);
    assert_eq!(f.leaves().await, 2);

    // Triton failing: served (signed, HTTP 500 inside), not mined.
    f.sim.set_mode(Mode::Error500);
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(status, 200);
    assert_eq!(
        PoktHttpResponse::decode(&res.payload)
            .expect("payload")
            .status_code,
        500
    );
    assert_eq!(f.mined(), 2);
    f.sim.set_mode(Mode::Ok);
    let (status, res) = f.send(&f.relay("not json")).await;
    assert_eq!((status, error_code(&res)), (400, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_servicing_is_refused_unless_enabled() {
    // 100,000 uPOKT of stake: 3,333 per supplier and session, one relay costs 4,200.
    let mut poor = DevnetConfig::new(11);
    poor.application_stake = 100_000;
    let f = fleet_with(poor.clone(), |_| {}).await;
    let (status, res) = f.send(&f.relay(CHAT)).await;
    assert_eq!(
        (status, error_code(&res)),
        (429, 7),
        "{:?}",
        res.relay_miner_error
    );
    assert_eq!(f.mined(), 0);
    let g = fleet_with(poor, |y| y.push_str("enable_over_servicing: true\n")).await;
    let (status, res) = g.send(&g.relay(CHAT)).await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_streams_in_flight_and_flushes_them() {
    let mut f = fleet(|_| {}).await;
    // Ready: blocks arrive, the engine answers, the store has nothing pending.
    let admin = f.serve().admin_addr;
    let mut ready = 0;
    for _ in 0..100 {
        let res = f
            .http
            .get(format!("http://{admin}/readyz").parse().expect("uri"))
            .await
            .expect("readyz");
        ready = res.status().as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    // A stream of 200 tokens at 2,000 tokens/s is under way when shutdown starts.
    let long = r#"{"messages":[{"role":"user","content":"long"}],"max_tokens":200,"stream":true}"#;
    let uri = format!("http://{}/", f.serve().relay_addr);
    let req = hyper::Request::post(uri)
        .body(Full::new(Bytes::from(f.relay(long).encode())))
        .expect("req");
    let res = f.http.request(req).await.expect("stream");
    let mut body = res.into_body();
    let mut raw = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data")
        .to_vec();
    let handle = f.serve.take().expect("running");
    let stopping = tokio::spawn(handle.shutdown());
    while let Some(frame) = body.frame().await {
        raw.extend_from_slice(&frame.expect("ok").into_data().unwrap_or_default());
    }
    stopping.await.expect("task").expect("clean shutdown");
    let batches = decode_stream(&raw).expect("batches");
    let joined = join_stream_payloads(batches.iter().map(|b| b.payload.as_slice())).expect("join");
    let text = String::from_utf8(joined.body_bz).expect("utf8");
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream finished");
    assert_eq!(f.leaves().await, 1, "and was mined and flushed before exit");
}
