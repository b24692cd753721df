//! The store's behaviour on both backends, and its gRPC face with token checks.

use std::sync::Arc;

use lode_kernels::proto::{Message as _, Relay, RelayRequest, RelayResponse};
use lode_kernels::smst::{self, MemTrie};
use lode_store::metrics::Metrics;
use lode_store::{
    Backend, Durability, MemoryBackend, RocksBackend, ServerConfig, Store, StoreError,
};
use lode_store_api::{
    AppendRelaysRequest, BearerToken, ListSessionsRequest, MinedRelay, ProveClosestRequest,
    SessionHeader, SessionKey, SessionState, SessionStoreClient,
};
use sha2::{Digest, Sha256};

fn header(id: &str) -> SessionHeader {
    SessionHeader {
        application_address: "pokt1app".into(),
        service_id: "llm".into(),
        session_id: id.into(),
        session_start_block_height: 1,
        session_end_block_height: 10,
    }
}

fn relay(i: u64) -> MinedRelay {
    let payload: Vec<u8> = (0..230u64)
        .map(|j| (i.wrapping_mul(31).wrapping_add(j * 7)) as u8)
        .chain(i.to_be_bytes())
        .collect();
    let bytes = Relay {
        req: Some(RelayRequest {
            payload,
            ..Default::default()
        }),
        res: Some(RelayResponse::default()),
    }
    .encode();
    MinedRelay {
        relay_hash: Sha256::digest(&bytes).to_vec(),
        relay_bytes: bytes,
        compute_units: 1 + i % 5,
    }
}

fn expected_root(relays: &[MinedRelay]) -> smst::Root {
    let mut t = MemTrie::new();
    for r in relays {
        t.update(&r.relay_hash, &r.relay_bytes, r.compute_units);
    }
    t.root()
}

async fn lifecycle<B: Backend>(store: Arc<Store<B>>) {
    let relays: Vec<MinedRelay> = (0..300).map(relay).collect();
    let (a, d, n) = store
        .append("pokt1sup", header("s1"), relays[..200].to_vec())
        .await
        .expect("append");
    assert_eq!((a, d, n), (200, 0, 200));
    // Idempotent: the same relays again, and duplicates inside one batch, add nothing.
    let mut again = relays[150..300].to_vec();
    again.push(relays[299].clone());
    let (a, d, n) = store
        .append("pokt1sup", header("s1"), again)
        .await
        .expect("append");
    assert_eq!((a, d, n), (100, 51, 300));

    let info = store.freeze("pokt1sup", "s1").await.expect("freeze");
    let root = expected_root(&relays);
    assert_eq!(info.root, root.as_bytes().to_vec());
    assert_eq!((info.leaves, info.state()), (300, SessionState::Frozen));
    assert_eq!(info.compute_units, root.sum());
    // Frozen: the root never changes, and appends are refused.
    assert_eq!(
        store.freeze("pokt1sup", "s1").await.expect("again").root,
        info.root
    );
    assert!(matches!(
        store
            .append("pokt1sup", header("s1"), vec![relay(999)])
            .await,
        Err(StoreError::NotOpen(..))
    ));

    let path = smst::sha256(b"seed block || session id");
    let (proof, proof_root) = store
        .prove("pokt1sup", "s1", path.to_vec(), false)
        .await
        .expect("prove");
    assert_eq!(proof_root, info.root);
    assert_eq!(smst::verify_chain_proof(&proof, &info.root), Ok(true));

    assert!(matches!(
        store.prove("pokt1sup", "nope", path.to_vec(), false).await,
        Err(StoreError::UnknownSession { .. })
    ));
    store
        .append("pokt1sup", header("s2"), vec![relay(1)])
        .await
        .expect("append");
    assert!(matches!(
        store.prove("pokt1sup", "s2", path.to_vec(), false).await,
        Err(StoreError::NotFrozen(_))
    ));
    assert!(matches!(
        store
            .mark("pokt1sup", "s2", SessionState::Claimed, "tx".into())
            .await,
        Err(StoreError::Invalid(_))
    ));

    let claimed = store
        .mark("pokt1sup", "s1", SessionState::Claimed, "CLAIMTX".into())
        .await
        .expect("mark");
    assert_eq!(
        (claimed.state(), claimed.claim_tx_hash.as_str()),
        (SessionState::Claimed, "CLAIMTX")
    );
    let listed = store.list("pokt1sup");
    assert_eq!(listed.len(), 2);
    assert_eq!(store.list("pokt1other").len(), 0);

    assert_eq!(store.delete("pokt1sup", "s1").await.expect("delete"), 300);
    assert!(matches!(
        store.get("pokt1sup", "s1"),
        Err(StoreError::UnknownSession { .. })
    ));
    // The range is empty: a new session with that id starts from nothing.
    let (a, _, n) = store
        .append("pokt1sup", header("s1"), vec![relay(5)])
        .await
        .expect("append");
    assert_eq!((a, n), (1, 1));

    // A batch whose header disagrees with the session's is refused.
    let mut other_app = header("s2");
    other_app.application_address = "pokt1someoneelse".into();
    assert!(
        matches!(store.append("pokt1sup", other_app, vec![relay(8)]).await, Err(StoreError::Invalid(m)) if m.contains("differs"))
    );

    // Malformed relays are refused with a reason.
    let mut bad = relay(7);
    bad.relay_hash[0] ^= 1;
    assert!(matches!(
        store.append("pokt1sup", header("s3"), vec![bad]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append("", header("s3"), vec![relay(7)]).await,
        Err(StoreError::Invalid(_))
    ));
    let garbage = b"not a relay".to_vec();
    let not_a_relay = MinedRelay {
        relay_hash: Sha256::digest(&garbage).to_vec(),
        relay_bytes: garbage,
        compute_units: 1,
    };
    assert!(
        matches!(store.append("pokt1sup", header("s3"), vec![not_a_relay]).await, Err(StoreError::Invalid(m)) if m.contains("not a serialized Relay"))
    );
}

#[tokio::test]
async fn lifecycle_in_memory() {
    lifecycle(Arc::new(
        Store::open(MemoryBackend::default(), Arc::new(Metrics::default())).expect("open"),
    ))
    .await;
}

/// A backend whose disk is full from a chosen moment: every write fails.
#[derive(Clone, Default)]
struct FullDisk {
    inner: MemoryBackend,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend for FullDisk {
    fn leaves_exist(&self, keys: &[&[u8]]) -> Result<Vec<bool>, lode_store::backend::BackendError> {
        self.inner.leaves_exist(keys)
    }
    fn write(
        &self,
        ws: lode_store::backend::WriteSet,
    ) -> Result<(), lode_store::backend::BackendError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(lode_store::backend::BackendError(
                "IO error: No space left on device".into(),
            ));
        }
        self.inner.write(ws)
    }
    fn scan_leaves(
        &self,
        prefix: &[u8],
        f: &mut lode_store::backend::LeafVisitor<'_>,
    ) -> Result<(), lode_store::backend::BackendError> {
        self.inner.scan_leaves(prefix, f)
    }
    fn sessions(&self) -> Result<lode_store::backend::Records, lode_store::backend::BackendError> {
        self.inner.sessions()
    }
    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), lode_store::backend::BackendError> {
        self.inner.delete_prefix(prefix)
    }
    fn compact_range(&self, start: &[u8], end: &[u8]) {
        self.inner.compact_range(start, end)
    }
    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }
    fn stats(&self) -> Vec<(&'static str, u64)> {
        self.inner.stats()
    }
}

#[tokio::test]
async fn a_full_disk_refuses_appends_and_the_acknowledged_count_survives_reopening() {
    let backend = FullDisk::default();
    let store = Arc::new(Store::open(backend.clone(), Arc::new(Metrics::default())).expect("open"));
    let failure = store.storage_failure();
    assert!(failure.borrow().is_none());
    let (a, _, _) = store
        .append("sup", header("s1"), vec![relay(1)])
        .await
        .expect("append");
    assert_eq!(a, 1);
    backend
        .full
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = store
        .append("sup", header("s1"), vec![relay(2)])
        .await
        .expect_err("a full disk refuses the append");
    assert!(matches!(e, StoreError::Backend(_)), "{e}");
    // Not acknowledged, so not counted: the session still has the one relay.
    assert_eq!(store.get("sup", "s1").expect("session").leaves, 1);
    assert_eq!(
        failure.borrow().as_deref(),
        Some("IO error: No space left on device")
    );
    assert_eq!(store.metrics().write_errors.get(), 1);
    assert_eq!(store.metrics().relays_acknowledged.get(), 1);
    drop(store);

    // The acknowledged count is durable: a reopened store starts from it.
    backend
        .full
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let store = Arc::new(Store::open(backend, Arc::new(Metrics::default())).expect("reopen"));
    assert_eq!(store.metrics().relays_acknowledged.get(), 1);
    let (a, d, _) = store
        .append("sup", header("s1"), vec![relay(1), relay(2), relay(3)])
        .await
        .expect("append");
    assert_eq!((a, d), (2, 1));
    assert_eq!(store.metrics().relays_acknowledged.get(), 3);
    assert_eq!(
        store.list("").len(),
        1,
        "the count is not listed as a session"
    );
}

#[tokio::test]
async fn lifecycle_on_rocksdb_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let backend = RocksBackend::open(dir.path(), Durability::Fsync, 8 << 20).expect("open");
        lifecycle(Arc::new(
            Store::open(backend, Arc::new(Metrics::default())).expect("store"),
        ))
        .await;
    }
    // Every session survives a reopen, the frozen root with it.
    let backend = RocksBackend::open(dir.path(), Durability::Fsync, 8 << 20).expect("reopen");
    let store = Arc::new(Store::open(backend, Arc::new(Metrics::default())).expect("store"));
    let sessions = store.list("");
    assert_eq!(sessions.len(), 2, "s1 (re-created) and s2");
    let s2 = store.get("pokt1sup", "s2").expect("s2");
    assert_eq!((s2.leaves, s2.state()), (1, SessionState::Open));
    let (_, d, _) = store
        .append("pokt1sup", header("s2"), vec![relay(1)])
        .await
        .expect("append");
    assert_eq!(d, 1, "the leaf written before the restart is still there");
}

#[tokio::test]
async fn grpc_requires_the_token_and_answers_bad_requests_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (grpc_addr, admin_addr) = (
        grpc.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        token: "s3cret".into(),
        durability: Durability::Fsync,
        cache_bytes: 8 << 20,
        suppliers: vec!["pokt1sup".into()],
        tls: None,
    };
    let server = tokio::spawn(lode_store::run(config, grpc, admin, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{grpc_addr}");
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };

    let mut anonymous = SessionStoreClient::new(channel.clone());
    let req = || AppendRelaysRequest {
        supplier_operator_address: "pokt1sup".into(),
        session_header: Some(header("g1")),
        relays: vec![relay(1), relay(2)],
    };
    assert_eq!(
        anonymous
            .append_relays(req())
            .await
            .expect_err("no token")
            .code(),
        tonic::Code::Unauthenticated
    );
    let mut wrong = SessionStoreClient::with_interceptor(
        channel.clone(),
        BearerToken::new("guess").expect("token"),
    );
    assert_eq!(
        wrong
            .append_relays(req())
            .await
            .expect_err("wrong token")
            .code(),
        tonic::Code::Unauthenticated
    );

    let mut client =
        SessionStoreClient::with_interceptor(channel, BearerToken::new("s3cret").expect("token"));
    let r = client
        .append_relays(req())
        .await
        .expect("append")
        .into_inner();
    assert_eq!((r.accepted, r.session_leaves), (2, 2));
    let other = AppendRelaysRequest {
        supplier_operator_address: "pokt1other".into(),
        ..req()
    };
    let e = client
        .append_relays(other)
        .await
        .expect_err("wrong supplier");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("pokt1other"), "{}", e.message());
    // Reads are the store's suppliers' only too (issue 23 §9: they skipped the check).
    let foreign = SessionKey {
        supplier_operator_address: "pokt1other".into(),
        session_id: "s".into(),
    };
    let e = client.get_session(foreign).await.expect_err("foreign read");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = client
        .list_sessions(ListSessionsRequest {
            supplier_operator_address: "pokt1other".into(),
        })
        .await
        .expect_err("foreign list");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let all = client
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert!(
        all.iter()
            .all(|s| s.supplier_operator_address == "pokt1sup"),
        "{all:?}"
    );
    let missing_header = AppendRelaysRequest {
        session_header: None,
        ..req()
    };
    let e = client
        .append_relays(missing_header)
        .await
        .expect_err("no header");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let key = |id: &str| SessionKey {
        supplier_operator_address: "pokt1sup".into(),
        session_id: id.into(),
    };
    let e = client
        .get_session(key("unknown"))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("unknown"), "{}", e.message());
    let e = client
        .prove_closest(ProveClosestRequest {
            key: Some(key("g1")),
            path: vec![0; 32],
            sibling_data: true,
        })
        .await
        .expect_err("not frozen");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let info = client
        .freeze_session(key("g1"))
        .await
        .expect("freeze")
        .into_inner();
    let bad_path = client
        .prove_closest(ProveClosestRequest {
            key: Some(key("g1")),
            path: vec![0; 31],
            sibling_data: true,
        })
        .await
        .expect_err("31 bytes");
    assert_eq!(bad_path.code(), tonic::Code::InvalidArgument);
    let proof = client
        .prove_closest(ProveClosestRequest {
            key: Some(key("g1")),
            path: vec![9; 32],
            sibling_data: true,
        })
        .await
        .expect("prove")
        .into_inner();
    assert_eq!(smst::verify_chain_proof(&proof.proof, &info.root), Ok(true));

    // The admin port answers.
    let body = http_get(admin_addr, "/metrics").await;
    assert!(
        body.contains("lode_store_relays_ingested_total 2"),
        "{body}"
    );
    assert!(http_get(admin_addr, "/readyz").await.contains("ready"));
    let _ = stop.send(());
    server.await.expect("join").expect("clean shutdown");
}

/// A minimal HTTP/1.1 GET on loopback.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
