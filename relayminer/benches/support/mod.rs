//! What the serve and hostile benchmarks share: the devnet with a staked supplier,
//! engine-sim answering at once, a real store, `relayminer serve` as a process, and the
//! open- and closed-loop clients that time relays.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::{Message, PoktHttpRequest, RelayRequest, SessionHeader};
use lode_kernels::relay::sign_request;
use lode_testkit::{StoreProcess, free_addr};

pub const SERVICE: &str = "llm";

/// Writes the tests' tiny GGUF model (scripts/tiny-gguf.py) into `dir`.
pub fn tiny_model(dir: &std::path::Path) -> PathBuf {
    let model = dir.join("tiny.gguf");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tiny-gguf.py");
    let made = Command::new("python3")
        .arg(&script)
        .arg(&model)
        .status()
        .expect("python3 runs (gguf is installed by scripts/setup.sh)");
    assert!(made.success(), "tiny-gguf.py failed");
    model
}

/// llama.cpp's server (`LODE_LLAMA_SERVER`) on `model`, served as `tiny` with `args`,
/// once it answers `/health`.
pub async fn llama_server(model: &std::path::Path, args: &[&str]) -> (Child, SocketAddr) {
    let server = lode_testkit::llama_server();
    let engine = free_addr();
    let child = Command::new(&server)
        .arg("--model")
        .arg(model)
        .args([
            "--host",
            &engine.ip().to_string(),
            "--port",
            &engine.port().to_string(),
            "--alias",
            "tiny",
            "--metrics",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("http://{engine}/health").parse().expect("uri"))
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "llama-server not healthy within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, engine)
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A client as a latency-minded gateway runs one: no Nagle, a large idle pool. Its
/// connections run on the runtime that first uses them.
pub fn client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(20_000)
        .build(connector)
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// How an open loop spaces its requests.
#[derive(Clone, Copy, PartialEq)]
pub enum Pacing {
    /// One every `1/rate` seconds.
    Steady,
    /// The requests of each millisecond together, at its end (what pacing with tokio's
    /// timer, which works in 1 ms ticks, gives).
    MillisecondBursts,
}

/// Sends `n` requests at `rate` per second (open loop); returns latencies in ms, a
/// request not answered 200 in full as infinity. A thread of its own paces the requests
/// (see [`Pacing`]).
pub async fn open_loop(
    n: usize,
    rate: f64,
    pacing: Pacing,
    make: MakeRequest,
    http: &Http,
) -> Vec<f64> {
    let (runtime, http) = (tokio::runtime::Handle::current(), http.clone());
    let pacer = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        (0..n)
            .map(|i| {
                let mut at = gap * i as u32;
                if pacing == Pacing::MillisecondBursts {
                    at = Duration::from_millis(at.as_micros().div_ceil(1000) as u64);
                }
                let at = start + at;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (http, req) = (http.clone(), make(i));
                runtime.spawn(async move {
                    let t = Instant::now();
                    match http.request(req).await {
                        Ok(res) if res.status() == 200 => match res.into_body().collect().await {
                            Ok(_) => t.elapsed().as_secs_f64() * 1e3,
                            Err(_) => f64::INFINITY,
                        },
                        _ => f64::INFINITY,
                    }
                })
            })
            .collect::<Vec<_>>()
    });
    let tasks = tokio::task::spawn_blocking(move || pacer.join().expect("pacer"))
        .await
        .expect("pacer");
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// Closed loop with `concurrency` workers for `dur`; returns requests completed.
pub async fn saturate(dur: Duration, concurrency: usize, make: MakeRequest, http: &Http) -> usize {
    let deadline = Instant::now() + dur;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, make, counter) = (http.clone(), make.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let res = http.request(make(i)).await.expect("answer");
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

pub type MakeRequest = Arc<dyn Fn(usize) -> hyper::Request<Full<Bytes>> + Send + Sync>;

pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// The most memory the process `pid` has had resident, kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The chain, engine, store and serve process of a benchmark.
pub struct Rig {
    pub devnet: Devnet,
    pub chain: Running,
    pub header: SessionHeader,
    pub supplier: SecretKey,
    pub app: SecretKey,
    pub gateway: SecretKey,
    pub sim: EngineSim,
    pub sim_addr: SocketAddr,
    pub store: StoreProcess,
    pub store_data: PathBuf,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub serve: Child,
    pub relay_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http: Http,
}

impl Rig {
    /// Everything up, serve following the chain; `extra` is appended to serve's YAML.
    pub async fn start(extra: &str) -> Self {
        Self::start_with_engine(extra, None).await
    }

    /// [`Rig::start`] with serve in front of the engine at `engine` (engine-sim still
    /// runs, unused) instead of engine-sim.
    pub async fn start_with_engine(extra: &str, engine: Option<SocketAddr>) -> Self {
        Self::start_with_service(extra, engine, "").await
    }

    /// [`Rig::start_with_engine`] with `service_extra` appended to the service's YAML
    /// (more engine replicas, routing).
    pub async fn start_with_service(
        extra: &str,
        engine: Option<SocketAddr>,
        service_extra: &str,
    ) -> Self {
        let devnet = Devnet::new(&DevnetConfig::new(5));
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let chain = devnet.serve(any, any, None).await.expect("devnet");
        let supplier = devnet.keys().suppliers[0].clone();
        let (relay_addr, admin_addr) = (free_addr(), free_addr());
        // Staked at serve's address, so a gateway can reach it.
        let header = devnet
            .stake_into_next_session_at(&chain, 0, SERVICE, &format!("http://{relay_addr}"))
            .await
            .expect("staked")
            .header;
        let app = devnet.keys().applications[0].clone();
        let gateway = devnet.keys().gateways[0].clone();

        // engine-sim answering at once (the engine's own time is not what is measured).
        let sim = EngineSim::new(SimConfig {
            ttft: Duration::ZERO,
            tokens_per_second: 0.0,
            max_num_seqs: 100_000,
            ..SimConfig::default()
        });
        let (sim_addr, _) = sim
            .serve(any, std::future::pending())
            .await
            .expect("engine-sim");

        // A real store and a real serve process.
        let dir = tempfile::tempdir().expect("tempdir");
        let store_data = dir.path().join("store");
        let store = StoreProcess::start(&store_data, &["--fsync", "os"]);
        store.client().await;
        let key_file = dir.path().join("supplier.key");
        std::fs::write(&key_file, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
        let config = dir.path().join("serve.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {relay_addr}\nadmin: {admin_addr}\nchain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
                 store: {{url: 'http://{}', token_file: '{}', policy: queue, queue_capacity: 100000}}\n\
                 signing_key_files: ['{}']\nenable_over_servicing: true\nstream_batch_ms: 20\n{extra}\
                 services:\n  - service_id: {SERVICE}\n    backend_url: http://{backend}\n{service_extra}",
                chain.grpc_url,
                chain.rpc_url,
                store.grpc,
                StoreProcess::token_file(&store_data).display(),
                key_file.display(),
                backend = engine.unwrap_or(sim_addr),
            ),
        )
        .expect("config");
        let serve: Child = Command::new(env!("CARGO_BIN_EXE_relayminer"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let http = client();
        for _ in 0..500 {
            if let Ok(r) = http
                .get(format!("http://{admin_addr}/demand").parse().expect("uri"))
                .await
                && r.status() == 200
            {
                let b = r.into_body().collect().await.expect("body").to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
                if v["height"].as_i64().unwrap_or(0) > 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            devnet,
            chain,
            header,
            supplier,
            app,
            gateway,
            sim,
            sim_addr,
            store,
            store_data,
            dir,
            config,
            serve,
            relay_addr,
            admin_addr,
            http,
        }
    }

    /// A relay carrying `body`, made distinct by `i`, ring-signed as the gateway does
    /// (signing is the gateway's cost, not serve's: benchmarks sign before they time).
    pub fn relay(&self, body: &str, i: usize) -> RelayRequest {
        let mut req = RelayRequest {
            payload: PoktHttpRequest {
                method: "POST".into(),
                url: format!("/v1/chat/completions?n={i}"),
                body_bz: body.as_bytes().to_vec(),
                ..Default::default()
            }
            .encode(),
            ..Default::default()
        };
        req.meta.session_header = Some(self.header.clone());
        req.meta.supplier_operator_address = self.supplier.public_key().address().to_bech32(HRP);
        let ring = [self.app.public_key(), self.gateway.public_key()];
        sign_request(&mut req, &ring, &self.gateway, &mut rand_core::OsRng).expect("sign");
        req
    }

    /// [`Rig::relay`], encoded.
    pub fn sign(&self, body: &str, i: usize) -> Bytes {
        Bytes::from(self.relay(body, i).encode())
    }

    /// The relays the store holds for the benchmark's session.
    pub async fn leaves(&self) -> u64 {
        let mut c = self.store.client().await;
        match c
            .get_session(lode_store_api::SessionKey {
                supplier_operator_address: self.supplier.public_key().address().to_bech32(HRP),
                session_id: self.header.session_id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().leaves,
            Err(s) if s.code() == tonic::Code::NotFound => 0,
            Err(s) => panic!("store: {s}"),
        }
    }
}
