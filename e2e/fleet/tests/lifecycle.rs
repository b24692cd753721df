//! Getting paid, end to end on the devnet: relays served and mined by `serve`, claimed and
//! proven by the claim/prove passes (in `relayminer run`'s scheduler, the library passes
//! and the `relayminer claim`/`prove` jobs), settled by the chain with the rewards the
//! kernels' arithmetic predicts; and the faults a window must survive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::crypto::SecretKey;
use lode_kernels::mining::claimed_upokt;
use lode_kernels::proto::{Message, RelayResponse, SessionHeader};
use lode_relayminer::lifecycle::{Lifecycle, LifecycleConfig, Outcome};
use lode_relayminer::run::RunOptions;
use lode_store_api::SessionState;
use lode_testkit::{StoreProcess, gateway_relay};

const SERVICE: &str = "llm";
const CHAT: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
const CHAT_STREAM: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"hello"}],"max_tokens":4,"stream":true}"#;

fn address(k: &SecretKey) -> String {
    k.public_key().address().to_bech32(HRP)
}

/// Produces a block every `period` unless paused.
struct Ticker {
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    fn start(devnet: &Devnet, period: Duration) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let (d, p) = (devnet.clone(), paused.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if !p.load(Ordering::SeqCst) {
                    d.advance(1);
                }
            }
        });
        Self { paused, task }
    }

    fn pause(&self, yes: bool) {
        self.paused.store(yes, Ordering::SeqCst);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The session of the devnet's application at the current height.
fn current_session(devnet: &Devnet) -> SessionHeader {
    let app = address(&devnet.keys().applications[0]);
    let h = devnet.height();
    devnet
        .chain()
        .session(&app, SERVICE, h)
        .expect("session")
        .header
}

/// Sends `n` relays for `header` (every third one streamed) and checks each was served.
async fn send_relays(
    http: &Client<HttpConnector, Full<Bytes>>,
    relay_addr: SocketAddr,
    devnet: &Devnet,
    header: &SessionHeader,
    supplier: &str,
    n: usize,
) {
    for i in 0..n {
        let body = if i % 3 == 2 { CHAT_STREAM } else { CHAT };
        let req = gateway_relay(devnet.keys(), header, supplier, body);
        let res = http
            .request(
                hyper::Request::post(format!("http://{relay_addr}/relay"))
                    .body(Full::new(Bytes::from(req.encode())))
                    .expect("request"),
            )
            .await
            .expect("serve answers");
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        if body.windows(13).any(|w| w == b"||POKT_STREAM") {
            continue;
        }
        let r = RelayResponse::decode(&body).expect("a RelayResponse");
        assert!(r.relay_miner_error.is_none(), "{:?}", r.relay_miner_error);
    }
}

/// What the chain pays for `relays` relays of the service in a session starting at
/// `start`, by the kernels' arithmetic with the chain's own parameters.
fn predicted_reward(devnet: &Devnet, start: i64, relays: u64) -> u128 {
    let chain = devnet.chain();
    let cupr = chain.services[SERVICE].compute_units_per_relay;
    let target = chain.difficulty_at(SERVICE, start).target;
    claimed_upokt(relays * cupr, &target, chain.genesis.pricing).expect("priced")
}

async fn start_engine() -> SocketAddr {
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(2),
        tokens_per_second: 5000.0,
        ..SimConfig::default()
    });
    let (addr, _) = sim
        .serve("127.0.0.1:0".parse().expect("addr"), std::future::pending())
        .await
        .expect("engine-sim");
    addr
}

fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayminer_run_gets_the_supplier_paid_what_the_kernels_predict() {
    let (devnet, chain, supplier, first) =
        lode_testkit::staked_devnet(&DevnetConfig::payment_tests(31), SERVICE).await;
    let supplier_addr = address(&supplier);
    let engine = start_engine().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("supplier.key");
    std::fs::write(&key_file, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
    // No `store` section: run owns the store.
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        lode_relayminer::serve::config::minimal_yaml(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &chain.node(),
            &[key_file],
            SERVICE,
            &format!("http://{engine}"),
        ),
    )
    .expect("config");
    let mut options = RunOptions::loopback(config, dir.path().join("data"));
    options.store_durability = lode_store::Durability::Fsync;
    options.lifecycle.poll = Duration::from_millis(25);
    let run = lode_relayminer::run::start(options)
        .await
        .expect("run starts");
    let relay_addr = run.serve.relay_addr;
    let http = http();
    let app_stake_before =
        devnet.chain().m.applications[&address(&devnet.keys().applications[0])].stake;

    // Three sessions: 6 relays (proof required: 25,200 uPOKT ≥ 20,000), 2 relays (not
    // required), 5 relays (required). Blocks stop while a session's relays are sent.
    let ticker = Ticker::start(&devnet, Duration::from_millis(150));
    let plan = [6u64, 2, 5];
    let mut sessions = Vec::new();
    let mut header = first;
    for (i, n) in plan.iter().enumerate() {
        if i > 0 {
            let next = header.session_end_block_height + 1;
            wait_for("the next session", Duration::from_secs(30), || {
                devnet.height() >= next
            })
            .await;
        }
        ticker.pause(true);
        header = current_session(&devnet);
        // serve answers once it has seen the block the session is current at.
        let at = devnet.height();
        wait_for(
            "serve to catch up with the chain",
            Duration::from_secs(10),
            || run.serve.state.sessions.height() >= at,
        )
        .await;
        send_relays(
            &http,
            relay_addr,
            &devnet,
            &header,
            &supplier_addr,
            *n as usize,
        )
        .await;
        ticker.pause(false);
        sessions.push((header.clone(), *n));
    }

    // Everything settles at proof-window close + 1 of the last session.
    let ids: Vec<String> = sessions.iter().map(|(h, _)| h.session_id.clone()).collect();
    wait_for("three settlements", Duration::from_secs(60), || {
        devnet
            .settlements()
            .iter()
            .filter(|s| ids.contains(&s.session_id))
            .count()
            == 3
    })
    .await;
    drop(ticker);

    let settlements = devnet.settlements();
    let mut paid = 0;
    for (h, n) in &sessions {
        let s = settlements
            .iter()
            .find(|s| s.session_id == h.session_id)
            .expect("settled");
        assert_eq!(s.supplier, supplier_addr);
        assert_eq!(s.num_relays, *n, "every relay served was claimed");
        let predicted = predicted_reward(&devnet, h.session_start_block_height, *n);
        assert_eq!(s.reward, predicted, "session of {n} relays");
        assert_eq!(s.slashed, 0);
        let expected = if *n >= 5 {
            "settled: proof validated"
        } else {
            "settled: proof not required"
        };
        assert_eq!(s.outcome, expected, "session of {n} relays");
        paid += predicted;
    }
    assert_eq!(paid, 13 * 4_200, "13 relays at 100 CU × 42 uPOKT");
    let app_stake_after =
        devnet.chain().m.applications[&address(&devnet.keys().applications[0])].stake;
    assert_eq!(
        app_stake_before - app_stake_after,
        paid,
        "the application paid it"
    );

    // The store forgot every finished session.
    let mut store =
        lode_store_api::connect(&format!("http://{}", run.store_addr), &run.store_token)
            .await
            .expect("store");
    let left = store
        .list_sessions(lode_store_api::ListSessionsRequest {
            supplier_operator_address: supplier_addr.clone(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert!(left.is_empty(), "sessions left in the store: {left:?}");

    // Claim and proof counters on serve's /metrics.
    let res = http
        .get(
            format!("http://{}/metrics", run.serve.admin_addr)
                .parse()
                .expect("uri"),
        )
        .await
        .expect("metrics");
    let text = String::from_utf8(
        res.into_body()
            .collect()
            .await
            .expect("b")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    for line in [
        "lode_lifecycle_sessions_total{job=\"claim\",outcome=\"claimed\"} 3",
        "lode_lifecycle_sessions_total{job=\"prove\",outcome=\"proven\"} 2",
        "lode_lifecycle_sessions_total{job=\"prove\",outcome=\"proof_not_required\"} 1",
        "lode_claimed_upokt_total 54600",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    run.shutdown().await.expect("clean shutdown");
    chain.shutdown().await;
}

/// Serve with a real store process, and the passes as the jobs run them.
struct Jobs {
    devnet: Devnet,
    chain: Option<Running>,
    rpc_addr: SocketAddr,
    grpc_addr: SocketAddr,
    store: StoreProcess,
    store_data: std::path::PathBuf,
    _dir: tempfile::TempDir,
    serve: lode_relayminer::serve::ServeHandle,
    supplier: SecretKey,
    key_file: std::path::PathBuf,
    first: SessionHeader,
    http: Client<HttpConnector, Full<Bytes>>,
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().expect("address")
}

impl Jobs {
    async fn start(config: DevnetConfig) -> Self {
        let (devnet, chain, supplier, first) = lode_testkit::staked_devnet(&config, SERVICE).await;
        let engine = start_engine().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store_data = dir.path().join("store");
        let store = StoreProcess::start(&store_data, &[]);
        store.client().await;
        let key_file = dir.path().join("supplier.key");
        std::fs::write(&key_file, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
             chain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
             store: {{url: 'http://{}', token_file: '{}', policy: hold}}\n\
             signing_key_files: ['{}']\n\
             services:\n  - service_id: {SERVICE}\n    backend_url: http://{engine}\n",
            chain.grpc_url,
            chain.rpc_url,
            store.grpc,
            StoreProcess::token_file(&store_data).display(),
            key_file.display(),
        );
        let serve = lode_relayminer::serve::start(
            lode_relayminer::serve::config::parse(&yaml, None).expect("config"),
        )
        .await
        .expect("serve");
        wait_for("serve to follow the chain", Duration::from_secs(10), || {
            serve.state.sessions.height() > 0
        })
        .await;
        Self {
            rpc_addr: addr_of(&chain.rpc_url),
            grpc_addr: addr_of(&chain.grpc_url),
            devnet,
            chain: Some(chain),
            store,
            store_data,
            _dir: dir,
            serve,
            supplier,
            key_file,
            first,
            http: http(),
        }
    }

    fn config(&self) -> LifecycleConfig {
        let mut c = LifecycleConfig::new(
            &format!("http://{}", self.grpc_addr),
            &format!("http://{}", self.rpc_addr),
            &format!("http://{}", self.store.grpc),
            lode_testkit::TOKEN,
        );
        c.keys = vec![self.supplier.clone()];
        c.poll = Duration::from_millis(25);
        c.outage_budget = Duration::from_secs(30);
        c
    }

    fn supplier_addr(&self) -> String {
        address(&self.supplier)
    }

    async fn relays(&self, header: &SessionHeader, n: usize) {
        let at = self.devnet.height();
        wait_for(
            "serve to catch up with the chain",
            Duration::from_secs(10),
            || self.serve.state.sessions.height() >= at,
        )
        .await;
        send_relays(
            &self.http,
            self.serve.relay_addr,
            &self.devnet,
            header,
            &self.supplier_addr(),
            n,
        )
        .await;
    }

    async fn session(&self, id: &str) -> Option<lode_store_api::SessionInfo> {
        match self
            .store
            .client()
            .await
            .get_session(lode_store_api::SessionKey {
                supplier_operator_address: self.supplier_addr(),
                session_id: id.to_string(),
            })
            .await
        {
            Ok(r) => Some(r.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("store: {s}"),
        }
    }

    fn windows(&self, h: &SessionHeader) -> lode_kernels::session::SessionWindows {
        self.devnet
            .chain()
            .shared()
            .windows(h.session_end_block_height)
    }

    fn sequence(&self) -> u64 {
        self.devnet.chain().m.accounts[&self.supplier_addr()].sequence
    }

    /// Runs the real `relayminer claim`/`prove` binary; its exit status and JSON report.
    fn job(&self, which: &str) -> (bool, serde_json::Value, String) {
        let out = std::process::Command::new(lode_testkit::bin("relayminer"))
            .arg(which)
            .args(["--chain-grpc", &format!("http://{}", self.grpc_addr)])
            .args(["--chain-rpc", &format!("http://{}", self.rpc_addr)])
            .args(["--store", &format!("http://{}", self.store.grpc)])
            .arg("--store-token-file")
            .arg(StoreProcess::token_file(&self.store_data))
            .arg("--key-file")
            .arg(&self.key_file)
            .args([
                "--chain-id",
                "pocket-devnet",
                "--outage-budget-seconds",
                "10",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the job");
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{which} printed no JSON report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            out.status.success(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn outcome_of(report: &lode_relayminer::lifecycle::JobReport, id: &str) -> Outcome {
    report
        .sessions
        .iter()
        .find(|s| s.session_id == id)
        .unwrap_or_else(|| panic!("session {id} not in {report:?}"))
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_proofs_survive_outages_restarts_rejections_and_reruns() {
    let mut f = Jobs::start(DevnetConfig::payment_tests(41)).await;
    let lifecycle = Lifecycle::new(f.config()).expect("lifecycle");
    let s1 = f.first.clone();
    f.relays(&s1, 6).await;
    let w1 = f.windows(&s1);
    let ticker = Ticker::start(&f.devnet, Duration::from_millis(200));

    // Session 2: two relays; its claim will be sent "by a job that crashed before it
    // recorded the transaction".
    wait_for("session 2", Duration::from_secs(30), || {
        f.devnet.height() > s1.session_end_block_height
    })
    .await;
    ticker.pause(true);
    let s2 = current_session(&f.devnet);
    f.relays(&s2, 2).await;
    ticker.pause(false);

    // Session 1's claim window: the chain node goes away for a while and the first
    // transaction is refused; the pass retries until both are over, inside the window.
    wait_for("session 1's claim window", Duration::from_secs(30), || {
        f.devnet.height() >= w1.claim_window_open_height
    })
    .await;
    let sequence = f.sequence();
    f.devnet.refuse_next_txs(1);
    f.chain.take().expect("running").shutdown().await;
    let claim = tokio::spawn({
        let lc = Arc::new(lifecycle);
        let lc2 = lc.clone();
        async move { (lc2.claim().await, lc) }
    });
    // Three or four blocks of the window pass while the node is away.
    tokio::time::sleep(Duration::from_millis(700)).await;
    f.chain = Some(
        f.devnet
            .serve(f.rpc_addr, f.grpc_addr, None)
            .await
            .expect("the node is back"),
    );
    let (report, lifecycle) = claim.await.expect("claim pass");
    assert!(!report.failed(), "{report:?}");
    assert_eq!(
        f.devnet.chain().refuse_next_txs,
        0,
        "the refused transaction was followed by another"
    );
    assert_eq!(outcome_of(&report, &s1.session_id), Outcome::Claimed);
    assert_eq!(
        outcome_of(&report, &s2.session_id),
        Outcome::NotYet,
        "session 2's window is not open: left alone"
    );
    let tx = report
        .sessions
        .iter()
        .find(|r| r.session_id == s1.session_id)
        .and_then(|r| r.tx_hash.clone())
        .expect("tx hash");
    assert_eq!(f.sequence(), sequence + 1, "one claim transaction");
    let info = f.session(&s1.session_id).await.expect("kept");
    assert_eq!(info.state(), SessionState::Claimed);
    assert_eq!(info.claim_tx_hash, tx, "the store records the tx hash");

    // The job runs again (the real binary): nothing to do, nothing sent.
    let (ok, json, stderr) = f.job("claim");
    assert!(ok, "{stderr}");
    assert_eq!(f.sequence(), sequence + 1, "no second claim");
    assert!(
        json["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .all(|s| s["session_id"] != s1.session_id.as_str()),
        "{json}"
    );

    // The store restarts between claim and proof (same data, same port).
    f.store.kill();
    f.store = StoreProcess::start_on(&f.store_data, f.store.grpc, f.store.admin, &[]);

    // Session 2 claimed behind the store's back, as a crashed job would leave it.
    let w2 = f.windows(&s2);
    wait_for("session 2's claim window", Duration::from_secs(30), || {
        f.devnet.height() >= w2.claim_window_open_height
    })
    .await;
    let mut store = f.store.client().await;
    let frozen = store
        .freeze_session(lode_store_api::SessionKey {
            supplier_operator_address: f.supplier_addr(),
            session_id: s2.session_id.clone(),
        })
        .await
        .expect("freeze")
        .into_inner();
    let crashed = lode_chain_tx::TxSender::new(
        lode_chain::CometRpc::new(&format!("http://{}", f.rpc_addr), Default::default()),
        lode_chain::ChainGrpc::new(&format!("http://{}", f.grpc_addr), Default::default())
            .expect("grpc"),
        f.supplier.clone(),
        lode_chain_tx::SendConfig {
            poll: Duration::from_millis(25),
            ..lode_chain_tx::SendConfig::pocket("pocket-devnet")
        },
    );
    let msg = lode_kernels::proto::MsgCreateClaim {
        supplier_operator_address: f.supplier_addr(),
        session_header: Some(s2.clone()),
        root_hash: frozen.root.clone(),
    };
    crashed
        .send(
            vec![lode_kernels::proto::cosmos::Any::pack(
                lode_kernels::proto::cosmos::MSG_CREATE_CLAIM_TYPE_URL,
                &msg,
            )],
            "",
            w2.claim_window_close_height as u64,
        )
        .await
        .expect("claim sent outside lode's bookkeeping");
    let sequence = f.sequence();
    let report = lifecycle.claim().await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(outcome_of(&report, &s2.session_id), Outcome::AlreadyClaimed);
    assert_eq!(f.sequence(), sequence, "found on chain, not claimed twice");

    // Proofs: session 1 needs one (25,200 uPOKT ≥ 20,000), session 2 does not.
    wait_for("session 2's proof window", Duration::from_secs(30), || {
        f.devnet.height() >= w2.proof_window_open_height
    })
    .await;
    let (ok, json, stderr) = f.job("prove");
    assert!(ok, "{stderr}\n{json}");
    let sessions = json["sessions"].as_array().expect("sessions").clone();
    let by_id = |id: &str| {
        sessions
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {json}"))
            .clone()
    };
    assert_eq!(by_id(&s1.session_id)["outcome"], "proven", "{json}");
    assert_eq!(by_id(&s1.session_id)["proof"], "threshold");
    assert_eq!(by_id(&s2.session_id)["outcome"], "proof_not_required");
    assert!(
        f.session(&s1.session_id).await.is_none(),
        "proven sessions are deleted"
    );
    assert!(f.session(&s2.session_id).await.is_none());
    // And again: nothing left to do.
    let (ok, json, _) = f.job("prove");
    assert!(ok);
    assert_eq!(json["sessions"].as_array().map(Vec::len), Some(0), "{json}");

    // A session whose claim window passes unclaimed is reported as missed, and the job
    // fails so the operator sees it.
    wait_for("session 3", Duration::from_secs(30), || {
        f.devnet.height() > s2.session_end_block_height
    })
    .await;
    ticker.pause(true);
    let s3 = current_session(&f.devnet);
    f.relays(&s3, 1).await;
    ticker.pause(false);
    let w3 = f.windows(&s3);
    wait_for(
        "session 3's claim window to close",
        Duration::from_secs(30),
        || f.devnet.height() > w3.claim_window_close_height,
    )
    .await;
    let (ok, json, stderr) = f.job("claim");
    assert!(!ok, "a missed window fails the job");
    let missed = json["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["session_id"] == s3.session_id.as_str()))
        .cloned()
        .expect("session 3 reported");
    assert_eq!(missed["outcome"], "missed");
    assert!(
        missed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("closed") && d.contains("cannot be paid")),
        "{missed}"
    );
    assert!(stderr.contains("1 missed"), "{stderr}");
    drop(ticker);

    // Settlement: both claims paid, session 1 with a validated proof (the right seed).
    let settled = |id: &str| {
        f.devnet
            .settlements()
            .into_iter()
            .find(|s| s.session_id == id)
    };
    f.devnet.advance(30);
    let one = settled(&s1.session_id).expect("session 1 settled");
    assert_eq!(one.outcome, "settled: proof validated");
    assert_eq!(
        one.reward,
        predicted_reward(&f.devnet, s1.session_start_block_height, 6)
    );
    let two = settled(&s2.session_id).expect("session 2 settled");
    assert_eq!(two.outcome, "settled: proof not required");
    assert!(
        settled(&s3.session_id).is_none(),
        "never claimed, never paid"
    );
    if let Some(c) = f.chain.take() {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_worth_less_than_their_fees_are_dropped_and_windows_are_respected() {
    // The default devnet: a proof costs 1 POKT to submit and is sampled a quarter of the
    // time, so a one-relay session (4,200 uPOKT) is not worth claiming.
    let mut config = DevnetConfig::new(51);
    config.shared.claim_window_close_offset_blocks = 8;
    let f = Jobs::start(config).await;
    let lifecycle = Lifecycle::new(f.config()).expect("lifecycle");
    let s = f.first.clone();
    f.relays(&s, 1).await;

    // Before the window: nothing done, nothing sent, the job succeeds.
    let sequence = f.sequence();
    let report = lifecycle.claim().await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(outcome_of(&report, &s.session_id), Outcome::NotYet);
    let report = lifecycle.prove().await;
    assert!(
        report.sessions.is_empty(),
        "prove leaves unclaimed sessions to claim: {report:?}"
    );
    assert_eq!(
        f.session(&s.session_id).await.map(|i| i.state()),
        Some(SessionState::Open),
        "still open: relays keep coming"
    );

    let w = f.windows(&s);
    let h = f.devnet.height();
    f.devnet.advance((w.claim_window_open_height - h) as u32);
    let report = lifecycle.claim().await;
    assert!(!report.failed(), "{report:?}");
    let line = &report.sessions[0];
    assert_eq!(line.outcome, Outcome::Unprofitable, "{line:?}");
    assert_eq!(line.estimated_reward_upokt, Some(4_200));
    assert!(line.detail.contains("expected to cost"), "{}", line.detail);
    assert_eq!(f.sequence(), sequence, "no transaction");
    assert!(
        f.session(&s.session_id).await.is_none(),
        "dropped from the store"
    );
    let m = lifecycle.metrics().render();
    assert!(
        m.contains("lode_lifecycle_sessions_total{job=\"claim\",outcome=\"unprofitable\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayminer_stake_and_unstake_act_once_and_then_find_the_chain_as_wanted() {
    let devnet = Devnet::new(&DevnetConfig::new(91));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    let producer = devnet.produce_on_demand();
    let key = devnet.keys().suppliers[1].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("operator.key");
    std::fs::write(&key_file, lode_kernels::hex::encode(&key.to_bytes())).expect("key");
    let run = |extra: &[&str]| {
        std::process::Command::new(lode_testkit::bin("relayminer"))
            .arg("stake")
            .args([
                "--chain-grpc",
                &chain.grpc_url,
                "--chain-rpc",
                &chain.rpc_url,
            ])
            .args(["--chain-id", "pocket-devnet", "--stake-upokt", "100000000"])
            .arg("--key-file")
            .arg(&key_file)
            .args(["--service", "llm=https://relay.example.com"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .expect("relayminer stake")
    };
    let sequence = |d: &Devnet| d.chain().m.accounts[&address(&key)].sequence;
    let before = sequence(&devnet);
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("report");
    assert_eq!(report["outcome"], "staked");
    assert_eq!(sequence(&devnet), before + 1);
    let staked = devnet.chain().m.suppliers[&address(&key)].stake;
    assert_eq!(staked, 100_000_000);
    // Again: the chain already matches; nothing is sent.
    let second = run(&[]);
    assert!(second.status.success());
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).expect("report");
    assert_eq!(report["outcome"], "unchanged");
    assert_eq!(sequence(&devnet), before + 1, "no second transaction");
    // Unstaking: once, then nothing more to do.
    let unstake = || {
        std::process::Command::new(lode_testkit::bin("relayminer"))
            .arg("unstake")
            .args([
                "--chain-grpc",
                &chain.grpc_url,
                "--chain-rpc",
                &chain.rpc_url,
            ])
            .arg("--key-file")
            .arg(&key_file)
            .env("RUST_LOG", "warn")
            .output()
            .expect("relayminer unstake")
    };
    let out = unstake();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["outcome"], "unstaking");
    assert_ne!(
        devnet.chain().m.suppliers[&address(&key)].unstake_session_end_height,
        0,
        "unbonding"
    );
    let out = unstake();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["outcome"], "unchanged");
    assert_eq!(sequence(&devnet), before + 2, "one stake, one unstake");
    // Bad flags are explained before anything is sent.
    let bad = run(&["--rev-share", "llm:pokt1x=60"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("add up to 60%"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    producer.abort();
    chain.shutdown().await;
}
