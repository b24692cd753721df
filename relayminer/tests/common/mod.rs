//! The serve test fleet: the devnet chain, engine-sim, a real store process and serve on
//! loopback, and the helpers that send relays to it. Shared by `serve.rs`, `hostile.rs`,
//! `route.rs` and `discover.rs`; each uses part of it.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::{Message, RelayRequest, RelayResponse, SessionHeader};
use lode_relayminer::serve::{self, ServeHandle};
use lode_testkit::StoreProcess;
use std::net::SocketAddr;
use std::time::Duration;

pub const SERVICE: &str = "llm";

/// Another engine-sim replica (as fast as the fleet's), on a free loopback port.
pub async fn another_engine() -> (EngineSim, SocketAddr) {
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(5),
        tokens_per_second: 2000.0,
        ..SimConfig::default()
    });
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (addr, _) = sim
        .serve(any, std::future::pending())
        .await
        .expect("engine-sim");
    (sim, addr)
}

pub fn address(k: &SecretKey) -> String {
    k.public_key().address().to_bech32(HRP)
}

pub struct Fleet {
    pub devnet: Devnet,
    pub _chain: Running,
    pub sim: EngineSim,
    pub sim_stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub store: StoreProcess,
    pub store_dir: tempfile::TempDir,
    pub serve: Option<ServeHandle>,
    pub supplier: SecretKey,
    pub header: SessionHeader,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

/// Starts everything; `tune` adjusts serve's config (policy, limits, timeouts).
pub async fn fleet(tune: impl FnOnce(&mut String)) -> Fleet {
    fleet_with(DevnetConfig::new(11), tune).await
}

pub async fn fleet_with(chain_config: DevnetConfig, tune: impl FnOnce(&mut String)) -> Fleet {
    let (devnet, chain, supplier, header) =
        lode_testkit::staked_devnet(&chain_config, SERVICE).await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");

    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(5),
        tokens_per_second: 2000.0,
        ..SimConfig::default()
    });
    let (sim_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (triton_addr, _) = sim
        .serve_triton(any, std::future::pending())
        .await
        .expect("triton");
    let (sim_addr, _) = sim
        .serve(any, async {
            let _ = stop_rx.await;
        })
        .await
        .expect("engine-sim");

    let store_dir = tempfile::tempdir().expect("tempdir");
    let data = store_dir.path().join("store");
    let store = StoreProcess::start(&data, &[]);
    store.client().await;
    let key_file = store_dir.path().join("supplier.key");
    std::fs::write(&key_file, lode_kernels::hex::encode(&supplier.to_bytes())).expect("key");
    // A second key the relayminer holds but that is not staked in the session.
    let other_file = store_dir.path().join("other.key");
    std::fs::write(
        &other_file,
        lode_kernels::hex::encode(&devnet.keys().suppliers[1].to_bytes()),
    )
    .expect("key");
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
         chain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
         store: {{url: 'http://{}', token_file: '{}', policy: hold}}\n\
         signing_key_files: ['{}', '{}']\n\
         stream_batch_ms: 5\n\
         services:\n  - service_id: {SERVICE}\n    backend_url: http://{sim_addr}\n    triton_model: sim-model\n    max_body_bytes: 65536\n    request_timeout_seconds: 2\n",
        chain.grpc_url,
        chain.rpc_url,
        store.grpc,
        StoreProcess::token_file(&data).display(),
        key_file.display(),
        other_file.display(),
    );
    tune(&mut yaml);
    let yaml = yaml.replace("{triton}", &triton_addr.to_string());
    let config = serve::config::parse(&yaml, None).expect("config");
    let handle = serve::start(config).await.expect("serve");
    // Ready once the first block arrived.
    for _ in 0..200 {
        if handle.state.sessions.height() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        handle.state.sessions.height() > 0,
        "serve follows the chain"
    );
    Fleet {
        devnet,
        _chain: chain,
        sim,
        sim_stop: Some(sim_stop),
        store,
        store_dir,
        serve: Some(handle),
        supplier,
        header,
        // A fresh connection per request: a pooled one that serve closed after an
        // answer (a refused body it did not read) could be picked for the next request
        // and fail it with `IncompleteMessage` (seen once in a clean CI run).
        http: Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http(),
    }
}

impl Fleet {
    pub fn serve(&self) -> &ServeHandle {
        self.serve.as_ref().expect("running")
    }

    /// A relay as a gateway builds it: the OpenAI request inside a POKTHTTPRequest,
    /// ring-signed with the gateway's key for the application.
    pub fn relay(&self, body: &str) -> RelayRequest {
        self.relay_for(&self.header, &address(&self.supplier), body)
    }

    pub fn relay_for(&self, header: &SessionHeader, supplier: &str, body: &str) -> RelayRequest {
        lode_testkit::gateway_relay(self.devnet.keys(), header, supplier, body)
    }

    pub async fn post(&self, bytes: Vec<u8>) -> (u16, String, Bytes) {
        let (status, headers, body) = self.post_headers(bytes).await;
        let ct = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        (status, ct, body)
    }

    /// [`Fleet::post`] with every response header.
    pub async fn post_headers(&self, bytes: Vec<u8>) -> (u16, hyper::HeaderMap, Bytes) {
        let uri = format!("http://{}/relay", self.serve().relay_addr);
        let req = hyper::Request::post(uri)
            .header("Rpc-Type", "4")
            .body(Full::new(Bytes::from(bytes)))
            .expect("request");
        let res = self.http.request(req).await.expect("serve answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (
            status,
            headers,
            res.into_body().collect().await.expect("body").to_bytes(),
        )
    }

    /// Posts a relay and decodes the (single) RelayResponse.
    pub async fn send(&self, req: &RelayRequest) -> (u16, RelayResponse) {
        let (status, _, body) = self.post(req.encode()).await;
        (
            status,
            RelayResponse::decode(&body).expect("a RelayResponse"),
        )
    }

    pub async fn leaves(&self) -> u64 {
        let mut c = self.store.client().await;
        match c
            .get_session(lode_store_api::SessionKey {
                supplier_operator_address: address(&self.supplier),
                session_id: self.header.session_id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().leaves,
            Err(s) if s.code() == tonic::Code::NotFound => 0,
            Err(s) => panic!("store: {s}"),
        }
    }

    /// Sends `req` and checks that it is refused with this HTTP status and error code,
    /// and a message that says `says`.
    pub async fn refused(&self, req: &RelayRequest, (status, code): (u16, u32), says: &str) {
        let (got, res) = self.send(req).await;
        assert_eq!(
            (got, error_code(&res)),
            (status, code),
            "{:?}",
            res.relay_miner_error
        );
        let message = res.relay_miner_error.expect("an error").message;
        assert!(message.contains(says), "{message:?} does not say {says:?}");
    }

    /// Sends a relay whose ring signature has one byte of an `s` flipped: refused 401/2.
    pub async fn refused_forged(&self) {
        let mut req = self.relay(CHAT);
        let n = req.meta.signature.len();
        req.meta.signature[n - 40] ^= 1;
        let (status, res) = self.send(&req).await;
        assert_eq!(
            (status, error_code(&res)),
            (401, 2),
            "{:?}",
            res.relay_miner_error
        );
    }

    pub fn mined(&self) -> u64 {
        let m = self.serve().state.metrics.service(SERVICE);
        m.mined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub fn error_code(res: &RelayResponse) -> u32 {
    res.relay_miner_error.as_ref().map_or(0, |e| e.code)
}

pub const CHAT: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"say something nice"}],"max_tokens":12}"#;
pub const CHAT_STREAM: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"say something nice"}],"max_tokens":12,"stream":true,"stream_options":{"include_usage":true}}"#;
