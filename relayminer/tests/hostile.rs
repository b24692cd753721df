//! Hostile traffic against `relayminer serve` (issue 23): each attack a real client on
//! loopback could make without credentials, and what serve does about it. Each test
//! failed before its fix.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::RelayRequest;

use common::*;

/// Serve's relay port with 20 MiB bodies allowed (the default).
fn large_bodies(yaml: &mut String) {
    *yaml = yaml.replace("max_body_bytes: 65536", "max_body_bytes: 20971520");
}

/// Relays until the session's ring has its point tables (a busy session, whose
/// signatures are checked while the engine starts).
async fn make_busy(f: &Fleet) {
    for _ in 0..20 {
        assert_eq!(f.send(&f.relay(CHAT)).await.0, 200);
    }
    for _ in 0..500 {
        if f.serve().state.ring_tables() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the session's ring never got its tables");
}

/// A relay for `method url`, signed by the application's gateway.
fn relay_to(f: &Fleet, method: &str, url: &str) -> RelayRequest {
    lode_testkit::gateway_relay_to(
        f.devnet.keys(),
        &f.header,
        &address(&f.supplier),
        (method, url),
        "{}",
    )
}

fn forge(mut req: RelayRequest) -> RelayRequest {
    let n = req.meta.signature.len();
    req.meta.signature[n - 40] ^= 1;
    req
}

/// Issue 23 §1: a signature listing the application's own key 300,000 times (19.5 MB)
/// cost serve 33–50 s of CPU before its 401. Now such a relay is refused from the length
/// of its metadata, before the rest of its body is read; a smaller one (within the
/// metadata bound) from its signature's member count, before anything is hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_signature_bomb_is_refused_from_its_size_fields() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fleet(large_bodies).await;
    let honest = f.relay(CHAT);
    let app = f.devnet.keys().applications[0].public_key().to_compressed();
    let bomb = |members| {
        let mut r = honest.clone();
        r.meta.signature = lode_testkit::ring_bomb(&honest.meta.signature, &app, members);
        lode_kernels::proto::Message::encode(&r)
    };
    // 19.5 MB: the first 64 KiB are sent, and the answer comes without the rest.
    let big = bomb(300_000);
    assert!(big.len() > 19_000_000);
    let mut s = tokio::net::TcpStream::connect(f.serve().relay_addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /relay HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(&big[..64 << 10]).await.expect("write");
    let mut out = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out))
        .await
        .expect("answered before the rest of the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&out[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("relay request metadata is 19"), "{answer}");
    // 900 members (58 KB) pass the metadata bound and are refused from the count.
    let cpu = || lode_testkit::cpu_seconds("/proc/self/stat");
    let before = cpu();
    let small: RelayRequest =
        lode_kernels::proto::Message::decode(&bomb(900)).expect("a relay request");
    let (bombed, served) = tokio::join!(f.send(&small), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.send(&honest).await
    });
    let used = cpu() - before;
    assert_eq!(
        (bombed.0, error_code(&bombed.1)),
        (401, 2),
        "{:?}",
        bombed.1.relay_miner_error
    );
    let message = bombed.1.relay_miner_error.expect("an error").message;
    assert!(
        message.contains("lists 900 members; the application's ring has 2"),
        "{message}"
    );
    assert_eq!(served.0, 200, "an honest relay beside it is served");
    assert!(used < 2.0, "the bomb cost {used:.1} s of CPU");
    assert_eq!(f.mined(), 1);
}

/// Issue 23 §4: in a busy session the engine call started before the signature
/// verdict and any path was forwarded, so a forged relay to vLLM's admin routes took
/// effect though the client got 401. Now only the service's routes are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_services_routes_reach_the_engine() {
    let f = fleet(|_| {}).await;
    make_busy(&f).await;
    let attacks = [
        ("POST", "/reset_prefix_cache"),
        ("POST", "/sleep"),
        ("POST", "/start_profile"),
        ("POST", "/update_weights_from_disk"),
        ("GET", "/metrics"),
        ("POST", "/v1/chat/completions/../../sleep"),
        ("POST", "/v1//chat/completions"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
    ];
    for (method, path) in attacks {
        let url = format!("https://gateway.local{path}");
        // Forged and signed alike: refused before the engine sees anything.
        let forged = forge(relay_to(&f, method, &url));
        let says = format!("{method} {}", path.split("..").next().unwrap_or(path));
        f.refused(&forged, (404, 3), &says).await;
        f.refused(&relay_to(&f, method, &url), (404, 3), "is not a route")
            .await;
    }
    assert_eq!(f.sim.admin_calls(), 0, "no admin route was reached");
    // Inference and the model list still are.
    assert_eq!(f.send(&f.relay(CHAT)).await.0, 200);
    let (status, res) = f
        .send(&relay_to(&f, "GET", "https://gateway.local/v1/models"))
        .await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
}

/// A route configured without `side_effect_free` is reached by signed relays only, and
/// never before the signature verdict, even in a busy session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_side_effects_starts_only_after_the_verdict() {
    let f = fleet(|y| {
        y.push_str(
            "    routes: [{method: POST, path: /v1/chat/completions, side_effect_free: true}, {method: POST, path: /sleep}]\n",
        )
    })
    .await;
    make_busy(&f).await;
    let checks = || f.serve().state.metrics.concurrent_checks.load(Relaxed);
    let before = checks();
    let (status, _) = f
        .send(&forge(relay_to(&f, "POST", "https://gateway.local/sleep")))
        .await;
    assert_eq!(status, 401);
    assert_eq!(checks(), before, "checked before the engine was called");
    assert_eq!(f.sim.admin_calls(), 0);
    let (status, res) = f
        .send(&relay_to(&f, "POST", "https://gateway.local/sleep"))
        .await;
    assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    assert_eq!(f.sim.admin_calls(), 1, "a signed relay reaches it");
}

/// A mined relay of `size` payload bytes (`tag` makes it distinct).
fn big_relay(size: usize, tag: u8) -> lode_kernels::relay::MinedRelay {
    use lode_kernels::proto::{Message, Relay, RelayResponse};
    use sha2::Digest;
    let bytes = Relay {
        req: Some(RelayRequest {
            payload: vec![tag; size],
            ..Default::default()
        }),
        res: Some(RelayResponse::default()),
    }
    .encode();
    lode_kernels::relay::MinedRelay {
        hash: sha2::Sha256::digest(&bytes).into(),
        bytes,
        compute_units: 1,
    }
}

/// Issue 23 §2: batches were capped by count only; an append over the store's 64 MiB
/// message limit was refused (`OutOfRange`) and retried forever, so no relay shipped
/// again. Now batches are cut by bytes, and a refusal for good releases only the relays
/// the store refuses, one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_relays_ship_and_one_bad_relay_holds_nothing() {
    use lode_relayminer::serve::ship::{QueueLimits, Shipment, Shipper};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = lode_testkit::StoreProcess::start(&dir.path().join("store"), &[]);
    let (shipper, _task) = Shipper::start(
        store.client().await,
        QueueLimits {
            relays: 100,
            bytes: 1 << 30,
        },
    );
    let header = lode_kernels::proto::SessionHeader {
        application_address: "pokt1app".into(),
        service_id: "llm".into(),
        session_id: "big".into(),
        session_start_block_height: 1,
        session_end_block_height: 10,
    };
    // Four relays of 20 MiB (80 MiB together) and, among them, one the store refuses.
    let mut relays: Vec<_> = (0..4).map(|i| big_relay(20 << 20, i)).collect();
    let mut bad = big_relay(1000, 9);
    bad.hash[0] ^= 1;
    relays.insert(2, bad);
    let mut acks = Vec::new();
    for relay in relays {
        let (tx, rx) = tokio::sync::oneshot::channel();
        shipper.send(Shipment {
            supplier: "pokt1supplier".into(),
            header: header.clone(),
            relay,
            ack: Some(tx),
            slot: shipper.reserve().expect("room"),
        });
        acks.push(rx);
    }
    let mut acknowledged = Vec::new();
    for rx in acks {
        let got = tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .expect("every relay is settled: acknowledged or refused");
        acknowledged.push(got.is_ok());
    }
    assert_eq!(acknowledged, [true, true, false, true, true]);
    let stats = &shipper.stats;
    assert_eq!(stats.acknowledged.load(Relaxed), 4);
    assert_eq!(stats.append_failures.load(Relaxed), 1);
    assert_eq!(shipper.queued(), 0);
    assert_eq!(stats.queued_bytes.load(Relaxed), 0);
    assert_eq!(stats.stuck(), None, "shipping progresses");
}

/// Issue 23 §6: the store queue was bounded by count only (10,000 relays of up to
/// 20 MiB). Now new relays are refused once the relays waiting hold its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_queue_is_bounded_in_bytes() {
    use lode_relayminer::serve::ship::{QueueLimits, Shipment, Shipper};
    // A store that is down: nothing leaves the queue.
    let client = lode_store_api::connect_lazy(
        &format!("http://{}", lode_testkit::free_addr()),
        "token",
        Duration::from_millis(200),
        None,
    )
    .expect("client");
    let (shipper, task) = Shipper::start(
        client,
        QueueLimits {
            relays: 10_000,
            bytes: 3 << 20,
        },
    );
    let header = lode_kernels::proto::SessionHeader::default();
    let mut sent = 0;
    while let Some(slot) = shipper.reserve() {
        shipper.send(Shipment {
            supplier: "pokt1supplier".into(),
            header: header.clone(),
            relay: big_relay(1 << 20, sent),
            ack: None,
            slot,
        });
        sent += 1;
        assert!(sent < 100, "the queue never filled");
    }
    assert_eq!(sent, 3, "three 1 MiB relays fill a 3 MiB queue");
    assert_eq!(shipper.queued(), 3);
    assert_eq!(shipper.stats.stuck(), None, "an outage is not being stuck");
    // A shipper whose task is gone cannot progress: liveness says so.
    task.abort();
    let _ = task.await;
    assert_eq!(
        shipper.stats.stuck().as_deref(),
        Some("the shipping task is not running")
    );
}

/// Issue 23 §3: bodies were buffered with no read timeout and no bound across requests,
/// and headers had no read timeout, so half-sent requests held serve's memory and
/// connections for as long as the attacker liked. Now each body has a deadline, bodies in
/// flight share a byte budget (large ones half of it), and half-sent headers are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_and_honest_relays_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fleet(|y| {
        large_bodies(y);
        y.push_str(
            "limits: {header_read_timeout_seconds: 1, body_read_timeout_seconds: 1, idle_timeout_seconds: 2, in_flight_body_bytes: 48000000}\n",
        );
    })
    .await;
    let addr = f.serve().relay_addr;
    // Six attackers, each declaring a 19 MiB body and sending 4 MiB of it; one sends
    // half its headers.
    let mut attackers = Vec::new();
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // serve may answer and close before the attacker has sent it all (no room in
        // the budget): a failed write is an attacker already cut off.
        let sent = s
            .write_all(b"POST /relay HTTP/1.1\r\nHost: x\r\nContent-Length: 19922944\r\n\r\n")
            .await
            .is_ok()
            && s.write_all(&vec![0x0a; 4 << 20]).await.is_ok();
        attackers.push((s, sent));
    }
    let mut headers_only = tokio::net::TcpStream::connect(addr).await.expect("connect");
    headers_only
        .write_all(b"POST /relay HTTP/1.1\r\nHost: x\r\nContent-")
        .await
        .expect("write");
    // Honest relays are served meanwhile.
    for _ in 0..3 {
        let (status, res) = f.send(&f.relay(CHAT)).await;
        assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    }
    // Every attacker is answered and cut off: 408 (its body's deadline) or 503 (no room
    // in the budget within it; which one depends on when the room came back, and
    // `lode-net`'s tests show each).
    // (Closed with the attacker's bytes unread, the connection may be reset before the
    // answer is read: also cut off.)
    let mut statuses = Vec::new();
    for (mut s, sent) in attackers {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("the attacker's connection was closed");
        let text = String::from_utf8_lossy(&out);
        statuses.push(match (read, text.get(9..12)) {
            (_, Some(code)) => code.to_string(),
            (Err(e), None) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset".into(),
            (Ok(_), None) if !sent => "reset".into(),
            (r, None) => format!("{r:?} after sending all: {sent}"),
        });
    }
    statuses.sort();
    assert!(
        statuses
            .iter()
            .all(|s| s == "408" || s == "503" || s == "reset"),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s == "408" || s == "503"),
        "some attackers are answered: {statuses:?}"
    );
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), headers_only.read_to_end(&mut out))
        .await
        .expect("half-sent headers were cut off")
        .expect("read");
    assert_eq!(f.mined(), 3);
}

/// Issue 23 §5: serve kept a stream's whole body to mine it with no bound. Now a stream
/// larger than the service's body limit is cut (the gateway sees the stream break) and
/// not mined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_larger_than_the_body_limit_is_cut_and_not_mined() {
    let f = fleet(|_| {}).await;
    // The service allows 64 KiB; 1,500 tokens of SSE are several times that.
    let long = r#"{"model":"sim-model","messages":[{"role":"user","content":"go on"}],"max_tokens":1500,"stream":true}"#;
    let uri = format!("http://{}/relay", f.serve().relay_addr);
    let req = hyper::Request::post(uri)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            lode_kernels::proto::Message::encode(&f.relay(long)),
        )))
        .expect("request");
    let res = f.http.request(req).await.expect("serve answers");
    assert_eq!(res.status(), 200, "the stream starts");
    let read = http_body_util::BodyExt::collect(res.into_body()).await;
    assert!(read.is_err(), "the stream breaks instead of completing");
    let m = f.serve().state.metrics.service(SERVICE);
    assert_eq!(m.aborted.load(Relaxed), 1);
    assert_eq!(f.mined(), 0, "nothing mined");
    // A stream within the limit is still served and mined.
    let (status, _, _) = f
        .post(lode_kernels::proto::Message::encode(&f.relay(CHAT_STREAM)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.mined(), 1);
}

/// Issue 23 §9: a header's `end + grace_period` overflowed on extreme heights (a panic in
/// the handler). Now such a relay is refused like any header the chain does not confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_session_heights_are_refused_not_overflowed() {
    let f = fleet(|_| {}).await;
    let me = address(&f.supplier);
    for (start, end) in [
        (1, i64::MAX),
        (i64::MAX - 1, i64::MAX),
        (i64::MIN, i64::MAX),
    ] {
        let mut h = f.header.clone();
        h.session_start_block_height = start;
        h.session_end_block_height = end;
        let (status, res) = f.send(&f.relay_for(&h, &me, CHAT)).await;
        assert_eq!(status, 400, "{:?}", res.relay_miner_error);
        assert_eq!(error_code(&res), 1);
    }
    assert_eq!(f.send(&f.relay(CHAT)).await.0, 200, "serve is still up");
}

/// An application with no delegated gateway has the public placeholder key in its ring,
/// so anyone can sign its relays with the placeholder's (public) secret. The chain
/// accepts them, so serve does too by default; `refuse_placeholder_ring` refuses them
/// while delegated applications are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_ring_relays_are_refused_when_the_policy_says_so() {
    use lode_kernels::crypto::ring::{PLACEHOLDER_SECRET, placeholder_key};
    let mut chain = lode_devnet::DevnetConfig::new(11);
    chain.applications = 2;
    chain.undelegated_applications = 1;
    for refuse in [false, true] {
        let f = fleet_with(chain.clone(), |y| {
            if refuse {
                y.push_str("refuse_placeholder_ring: true\n");
            }
        })
        .await;
        let app = f.devnet.keys().applications[1].clone();
        let session = f
            .devnet
            .chain()
            .session(&address(&app), SERVICE, f.header.session_start_block_height)
            .expect("the undelegated application's session");
        // Anyone: the ring [application, placeholder], signed with the placeholder key.
        let anyone = SecretKey::from_secret(PLACEHOLDER_SECRET.as_bytes());
        let mut forged = f.relay_for(&session.header, &address(&f.supplier), CHAT);
        lode_kernels::relay::sign_request(
            &mut forged,
            &[app.public_key(), placeholder_key()],
            &anyone,
            &mut rand_core::OsRng,
        )
        .expect("sign");
        if refuse {
            f.refused(&forged, (403, 2), "no delegated gateway").await;
        } else {
            let (status, res) = f.send(&forged).await;
            assert_eq!(status, 200, "the chain's rule: {:?}", res.relay_miner_error);
        }
        // The delegated application is served either way.
        let (status, res) = f.send(&f.relay(CHAT)).await;
        assert_eq!(status, 200, "{:?}", res.relay_miner_error);
    }
}
