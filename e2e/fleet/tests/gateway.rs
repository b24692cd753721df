//! The gateway end to end on the devnet: the official `openai` Python SDK → gateway →
//! `relayminer run` (serve + store + claim/prove scheduler) → engine-sim; and failover
//! away from a supplier whose answers are not properly signed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::{Message, PoktHttpResponse, RelayResponse};
use lode_relayminer::lifecycle::Outcome;
use lode_relayminer::run::{RunHandle, RunOptions};

const SERVICE: &str = "llm";
const MODEL: &str = "sim-model";

fn address(k: &SecretKey) -> String {
    k.public_key().address().to_bech32(HRP)
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn write_key(dir: &Path, name: &str, key: &SecretKey) -> std::path::PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, lode_kernels::hex::encode(&key.to_bytes())).expect("key file");
    f
}

/// `relayminer run` for devnet supplier `index` in front of a fresh engine-sim.
async fn supplier_run(devnet: &Devnet, chain: &Running, index: usize, dir: &Path) -> RunHandle {
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(2),
        tokens_per_second: 5000.0,
        ..SimConfig::default()
    });
    let (engine, _) = sim
        .serve(any(), std::future::pending())
        .await
        .expect("engine-sim");
    let key = write_key(
        dir,
        &format!("supplier{index}.key"),
        &devnet.keys().suppliers[index],
    );
    let config = dir.join(format!("serve{index}.yaml"));
    std::fs::write(
        &config,
        lode_relayminer::serve::config::minimal_yaml(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &chain.node(),
            &[key],
            SERVICE,
            &format!("http://{engine}"),
        ),
    )
    .expect("config");
    let mut options = RunOptions::loopback(config, dir.join(format!("data{index}")));
    options.lifecycle.poll = Duration::from_millis(25);
    lode_relayminer::run::start(options)
        .await
        .expect("relayminer run")
}

async fn gateway(devnet: &Devnet, chain: &Running, dir: &Path) -> lode_gateway::GatewayHandle {
    gateway_timing_out(devnet, chain, dir, 10).await
}

async fn gateway_timing_out(
    devnet: &Devnet,
    chain: &Running,
    dir: &Path,
    timeout_seconds: u64,
) -> lode_gateway::GatewayHandle {
    let key = write_key(dir, "gateway.key", &devnet.keys().gateways[0]);
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
         chain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
         signing_key_file: '{}'\n\
         applications: [{{address: {}, api_keys: [sk-test]}}]\n\
         models: {{{MODEL}: {SERVICE}}}\n\
         request_timeout_seconds: {timeout_seconds}\n",
        chain.grpc_url,
        chain.rpc_url,
        key.display(),
        address(&devnet.keys().applications[0]),
    );
    let g = lode_gateway::start(lode_gateway::GatewayConfig::from_yaml(&yaml).expect("config"))
        .await
        .expect("gateway");
    wait_for(
        "the gateway to follow the chain",
        Duration::from_secs(10),
        || g.state.sessions.height() > 0,
    )
    .await;
    g
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces a block every `period` until dropped.
struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    fn start(devnet: &Devnet, period: Duration) -> Self {
        let d = devnet.clone();
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                d.advance(1);
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const SDK_SCRIPT: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0, timeout=20)
out = {}
r = client.chat.completions.create(
    model="sim-model", messages=[{"role": "user", "content": "say something nice"}], max_tokens=8)
out["chat"] = {"content": r.choices[0].message.content, "completion_tokens": r.usage.completion_tokens}
stream = client.chat.completions.create(
    model="sim-model", messages=[{"role": "user", "content": "stream please"}], max_tokens=12,
    stream=True, stream_options={"include_usage": True})
text, chunks, usage = "", 0, None
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.completion_tokens
out["stream"] = {"text": text, "chunks": chunks, "completion_tokens": usage}
c = client.completions.create(model="sim-model", prompt="once upon a time", max_tokens=5)
out["completion"] = {"text": c.choices[0].text, "completion_tokens": c.usage.completion_tokens}
out["models"] = [m.id for m in client.models.list().data]
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    out["unknown_model"] = "accepted"
except openai.NotFoundError as e:
    out["unknown_model"] = e.status_code
try:
    openai.OpenAI(base_url=sys.argv[1], api_key="wrong", max_retries=0).models.list()
    bad = openai.OpenAI(base_url=sys.argv[1], api_key="wrong", max_retries=0)
    bad.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "x"}])
    out["bad_key"] = "accepted"
except openai.AuthenticationError as e:
    out["bad_key"] = e.status_code
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_answers_and_the_relays_are_mined_and_claimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::payment_tests(61));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let run = supplier_run(&devnet, &chain, 0, dir.path()).await;
    let session = devnet
        .stake_into_next_session_at(
            &chain,
            0,
            SERVICE,
            &format!("http://{}", run.serve.relay_addr),
        )
        .await
        .expect("staked")
        .header;
    let g = gateway(&devnet, &chain, dir.path()).await;
    wait_for("serve to see the session", Duration::from_secs(10), || {
        run.serve.state.sessions.height() >= session.session_start_block_height
            && g.state.sessions.height() >= session.session_start_block_height
    })
    .await;

    let script = dir.path().join("sdk.py");
    std::fs::write(&script, SDK_SCRIPT).expect("script");
    let base = format!("http://{}/v1", g.addr);
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&base)
        .output()
        .await
        .expect("python3 runs (the openai SDK is installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "the SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(r["chat"]["completion_tokens"], 8, "{r}");
    assert_eq!(
        r["chat"]["content"]
            .as_str()
            .map(|t| t.split_whitespace().count()),
        Some(8)
    );
    assert_eq!(r["stream"]["completion_tokens"], 12, "{r}");
    assert_eq!(
        r["stream"]["text"]
            .as_str()
            .map(|t| t.split_whitespace().count()),
        Some(12)
    );
    assert!(r["stream"]["chunks"].as_u64() >= Some(13), "{r}");
    assert_eq!(r["completion"]["completion_tokens"], 5);
    assert_eq!(r["models"], serde_json::json!([MODEL]));
    assert_eq!(r["unknown_model"], 404);
    assert_eq!(r["bad_key"], 401);

    // Three relays served and mined (the refused requests never reached a supplier).
    let supplier = address(&devnet.keys().suppliers[0]);
    assert_eq!(g.state.metrics.relays_of(&supplier), 3);
    let served = run.serve.state.metrics.service(SERVICE);
    assert_eq!(served.mined.load(Ordering::Relaxed), 3, "mined by serve");
    let metrics = g.state.metrics.render(0);
    assert!(
        metrics.contains(&format!(
            "lode_gateway_tokens_total{{service=\"llm\",supplier=\"{supplier}\",kind=\"completion\"}} 25"
        )),
        "8 + 12 + 5 completion tokens:\n{metrics}"
    );

    // And claimed by the relayminer's scheduler once the claim window opens.
    let _ticker = Ticker::start(&devnet, Duration::from_millis(100));
    let lc = run.lifecycle.clone();
    wait_for("the session's claim", Duration::from_secs(30), || {
        lc.metrics().outcomes("claim", Outcome::Claimed) >= 1
    })
    .await;
    let claim = devnet
        .chain()
        .m
        .claims
        .get(&(session.session_id.clone(), supplier.clone()))
        .map(|c| lode_kernels::smst::count_of(&c.claim.root_hash));
    assert_eq!(claim, Some(3), "the claim on chain holds the 3 relays");
    g.shutdown().await;
    run.shutdown().await.expect("run stops");
    chain.shutdown().await;
}

/// An answer with status 200 and `http_body` to the relay in `relay`, for its session,
/// signed by `key`.
fn signed_answer(relay: &[u8], key: &SecretKey, http_body: &[u8]) -> RelayResponse {
    let req = lode_kernels::proto::RelayRequest::decode(relay).unwrap_or_default();
    let mut res = RelayResponse {
        payload: PoktHttpResponse {
            status_code: 200,
            body_bz: http_body.to_vec(),
            ..Default::default()
        }
        .encode(),
        ..Default::default()
    };
    res.meta.session_header = req.meta.session_header;
    lode_kernels::relay::sign_response(&mut res, key);
    res
}

/// A supplier endpoint that answers every relay with a response signed by the wrong key.
async fn forger() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let wrong = SecretKey::from_secret(b"not the supplier");
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let wrong = wrong.clone();
        async move {
            let res = signed_answer(
                &body,
                &wrong,
                br#"{"choices":[{"message":{"content":"forged"}}]}"#,
            );
            (
                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                res.encode(),
            )
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_from_a_forging_supplier_whose_score_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::payment_tests(71));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let bad = address(&devnet.keys().suppliers[0]);
    let good = address(&devnet.keys().suppliers[1]);
    let forged = forger().await;
    devnet
        .stake_into_next_session_at(&chain, 0, SERVICE, &format!("http://{forged}"))
        .await
        .expect("bad supplier staked");
    let run = supplier_run(&devnet, &chain, 1, dir.path()).await;
    let session = devnet
        .stake_into_next_session_at(
            &chain,
            1,
            SERVICE,
            &format!("http://{}", run.serve.relay_addr),
        )
        .await
        .expect("good supplier staked");
    assert!(session.suppliers.contains(&bad) && session.suppliers.contains(&good));
    let g = gateway(&devnet, &chain, dir.path()).await;
    wait_for("serve to see the session", Duration::from_secs(10), || {
        run.serve.state.sessions.height() >= session.header.session_start_block_height
    })
    .await;

    let http = reqwest_like_client();
    for i in 0..8 {
        let stream = i % 2 == 1;
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "stream": stream,
        });
        let res = chat(&http, g.addr, body.to_string()).await;
        assert_eq!(
            res.status(),
            200,
            "request {i} succeeds through the good supplier"
        );
        let text = http_body_util::BodyExt::collect(res.into_body())
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains("forged"),
            "a forged answer never reaches the client"
        );
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "plain SSE: {text}");
            assert!(!text.contains("POKT_STREAM"), "un-framed");
        }
    }
    let (bad_score, good_score) = (g.state.scores.get(&bad), g.state.scores.get(&good));
    assert_eq!(good_score.successes, 8);
    assert!(
        bad_score.failures >= 1,
        "the forger was tried: {bad_score:?}"
    );
    assert_eq!(bad_score.successes, 0);
    assert!(
        bad_score.value() > good_score.value(),
        "the forger's score is worse: {bad_score:?} vs {good_score:?}"
    );
    assert!(
        g.state.metrics.render(0).contains(&format!(
            "lode_gateway_relay_failures_total{{service=\"llm\",supplier=\"{bad}\",kind=\"bad_signature\"}}"
        )),
        "failures are counted by kind"
    );
    // Once its score dropped, the forger is no longer tried first.
    let before = bad_score.failures;
    for _ in 0..3 {
        let res = chat(
            &http,
            g.addr,
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"x"}}],"max_tokens":2}}"#
            ),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(g.state.scores.get(&bad).failures, before, "not tried again");
    g.shutdown().await;
    run.shutdown().await.expect("run stops");
    chain.shutdown().await;
}

/// Posts a chat completion to the gateway as the application's client.
async fn chat(
    http: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    gateway: SocketAddr,
    body: String,
) -> hyper::Response<hyper::body::Incoming> {
    http.request(
        hyper::Request::post(format!("http://{gateway}/v1/chat/completions"))
            .header("authorization", "Bearer sk-test")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("request"),
    )
    .await
    .expect("gateway answers")
}

fn reqwest_like_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// A supplier that answers every relay with a properly signed first stream batch, then
/// trickles one byte of the next batch every 100 ms, forever.
async fn trickler(key: SecretKey) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let key = key.clone();
        async move {
            let first = signed_answer(
                &body,
                &key,
                b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            );
            let mut head = first.encode();
            head.extend_from_slice(lode_kernels::relay::STREAM_DELIMITER);
            // The next batch: a payload field declared 1000 bytes long, sent a byte at
            // a time.
            head.extend_from_slice(&[0x12, 0xe8, 0x07]);
            let stream = futures_util::stream::unfold(Some(head), |head| async move {
                let chunk = match head {
                    Some(h) => h,
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        vec![b'x']
                    }
                };
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), None))
            });
            (
                [(http::header::CONTENT_TYPE, "text/event-stream")],
                axum::body::Body::from_stream(stream),
            )
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Issue 23 §5: the gateway's stream timeout applied per frame, so a supplier sending a
/// byte every so often held a request (and the client) forever. Now the request timeout
/// bounds the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_supplier_cannot_hold_a_stream_past_the_request_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::payment_tests(73));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let slow = trickler(devnet.keys().suppliers[0].clone()).await;
    devnet
        .stake_into_next_session_at(&chain, 0, SERVICE, &format!("http://{slow}"))
        .await
        .expect("staked");
    let g = gateway_timing_out(&devnet, &chain, dir.path(), 2).await;
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": true,
    });
    let started = Instant::now();
    let res = chat(&reqwest_like_client(), g.addr, body.to_string()).await;
    assert_eq!(res.status(), 200, "the first batch is passed on");
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        http_body_util::BodyExt::collect(res.into_body()),
    )
    .await
    .expect("the stream ended");
    assert!(
        read.is_err(),
        "it ends with an error, not as a complete stream"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    g.shutdown().await;
    chain.shutdown().await;
}

/// An API server standing in for Kubernetes: the EndpointSlices of the engine Service
/// are whatever `slices` holds (none at first: the model is at zero).
async fn endpoint_slices_api(slices: Arc<Mutex<serde_json::Value>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/apis/discovery.k8s.io/v1/namespaces/lode/endpointslices",
        axum::routing::get(move || {
            let v = slices.lock().expect("lock").clone();
            async move { axum::Json(v) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn one_engine_slice(engine: Option<SocketAddr>) -> serde_json::Value {
    let items: Vec<serde_json::Value> = engine
        .into_iter()
        .map(|a| {
            serde_json::json!({"addressType": "IPv4",
                "endpoints": [{"addresses": [a.ip().to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "engine", "port": a.port(), "protocol": "TCP"}]})
        })
        .collect();
    serde_json::json!({"kind": "EndpointSliceList", "items": items})
}

/// Issue 26: a supplier whose model is at zero holds the relay to its deadline and
/// answers 503 + `Retry-After` with the waking code; the gateway fails the request over
/// to the session's other supplier (the client sees a 200), remembers that the first is
/// waking (the next requests go elsewhere first, without waiting on it), and goes back
/// to it once its `Retry-After` has passed and its engine is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waking_supplier_is_failed_over_and_remembered_until_its_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::new(&DevnetConfig::payment_tests(79));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let slices = Arc::new(Mutex::new(one_engine_slice(None)));
    let api = endpoint_slices_api(slices.clone()).await;
    // Supplier 0: its engines found through discovery (none yet), relays held 1 s.
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(2),
        tokens_per_second: 5000.0,
        ..SimConfig::default()
    });
    let (engine, _) = sim
        .serve(any(), std::future::pending())
        .await
        .expect("engine-sim");
    let key = write_key(dir.path(), "waking.key", &devnet.keys().suppliers[0]);
    use lode_contracts::serve::{
        BackendKind, EngineDiscovery, HoldConfig, ServeConfig, ServiceConfig, StoreConfig,
    };
    let mut service = ServiceConfig::new(SERVICE, &format!("http://{engine}"), BackendKind::Openai);
    service.discovery = Some(EngineDiscovery {
        service: "engines".into(),
        namespace: "lode".into(),
        port: "engine".into(),
        period_ms: 100,
        api_url: Some(format!("http://{api}")),
    });
    service.hold = Some(HoldConfig {
        deadline_ms: 1000,
        ..HoldConfig::default()
    });
    let mut serve = ServeConfig::new(
        chain.node(),
        StoreConfig::new("http://127.0.0.1:7070", "store-token"),
        vec![key],
        vec![service],
    );
    serve.listen = "127.0.0.1:0".into();
    serve.admin = "127.0.0.1:0".into();
    let yaml = serve.to_yaml();
    let config = dir.path().join("waking.yaml");
    std::fs::write(&config, yaml).expect("config");
    let mut options = RunOptions::loopback(config, dir.path().join("data-waking"));
    options.lifecycle.poll = Duration::from_millis(25);
    let waking = lode_relayminer::run::start(options)
        .await
        .expect("relayminer run");
    devnet
        .stake_into_next_session_at(
            &chain,
            0,
            SERVICE,
            &format!("http://{}", waking.serve.relay_addr),
        )
        .await
        .expect("waking supplier staked");
    let awake = supplier_run(&devnet, &chain, 1, dir.path()).await;
    let session = devnet
        .stake_into_next_session_at(
            &chain,
            1,
            SERVICE,
            &format!("http://{}", awake.serve.relay_addr),
        )
        .await
        .expect("second supplier staked");
    let (s0, s1) = (
        address(&devnet.keys().suppliers[0]),
        address(&devnet.keys().suppliers[1]),
    );
    assert!(session.suppliers.contains(&s0) && session.suppliers.contains(&s1));
    let g = gateway(&devnet, &chain, dir.path()).await;
    wait_for(
        "both suppliers see the session",
        Duration::from_secs(10),
        || {
            let h = session.header.session_start_block_height;
            waking.serve.state.sessions.height() >= h && awake.serve.state.sessions.height() >= h
        },
    )
    .await;

    // A conversation whose first supplier is the waking one.
    let pair = vec![s0.clone(), s1.clone()];
    let body = (0..200)
        .map(|i| {
            serde_json::json!({"model": MODEL, "max_tokens": 4,
                "messages": [{"role": "user", "content": format!("wake up {i}")}]})
            .to_string()
        })
        .find(|b| {
            let key = lode_kernels::prefix::conversation_key(
                b.as_bytes(),
                lode_kernels::prefix::KeyBudget::default(),
            );
            g.state
                .scores
                .order_for(&pair, lode_gateway::config::Routing::Scored, key)[0]
                == s0
        })
        .expect("a conversation that goes to supplier 0 first");
    let held = waking.serve.state.metrics.service(SERVICE);
    let http = reqwest_like_client();

    // Held 1 s, refused as waking, failed over: the client gets its answer.
    let t = Instant::now();
    let res = chat(&http, g.addr, body.clone()).await;
    assert_eq!(res.status(), 200, "served by the other supplier");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "held first: {:?}",
        t.elapsed()
    );
    assert_eq!(held.hold_expired.load(Ordering::Relaxed), 1);
    assert_eq!(
        awake
            .serve
            .state
            .metrics
            .service(SERVICE)
            .mined
            .load(Ordering::Relaxed),
        1
    );
    assert!(
        g.state.scores.waking_for(&s0).is_some(),
        "remembered as waking"
    );
    assert_eq!(
        g.state.scores.get(&s0).failures,
        0,
        "waking is not a failure"
    );
    assert!(g.state.metrics.render(0).contains(&format!(
        "lode_gateway_relay_failures_total{{service=\"llm\",supplier=\"{s0}\",kind=\"waking\"}} 1"
    )));

    // Meanwhile the conversation goes to the other supplier first: no wait.
    let t = Instant::now();
    let res = chat(&http, g.addr, body.clone()).await;
    assert_eq!(res.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "not held again: {:?}",
        t.elapsed()
    );
    assert_eq!(held.held_total.load(Ordering::Relaxed), 1, "not tried");

    // The engine comes up; once the Retry-After has passed, supplier 0 serves again.
    *slices.lock().expect("lock") = one_engine_slice(Some(engine));
    wait_for("supplier 0's engine found", Duration::from_secs(5), || {
        waking.serve.state.services[SERVICE].router.ready() == 1
    })
    .await;
    wait_for("the Retry-After passed", Duration::from_secs(5), || {
        g.state.scores.waking_for(&s0).is_none()
    })
    .await;
    let res = chat(&http, g.addr, body.clone()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        sim.successes(),
        1,
        "supplier 0 serves its conversation again"
    );
    assert_eq!(g.state.scores.get(&s0).successes, 1);
    g.shutdown().await;
    waking.shutdown().await.expect("run stops");
    awake.shutdown().await.expect("run stops");
    chain.shutdown().await;
}
