//! The store's RPCs on arbitrary request bytes, against a model.
//!
//! The input is a sequence of calls, each `[rpc byte][length byte][request protobuf]`,
//! decoded the way tonic decodes them and made on one fresh store (in-memory backend,
//! the same engine and service code as production). Every call must return without a
//! panic, and:
//! - a refusal is a client error (invalid argument, not found, failed precondition,
//!   permission denied), never `internal` or `unknown`: the in-memory backend cannot fail,
//!   so an internal error is a bug;
//! - appends agree with a model (a `MemTrie` per session): accepted and duplicate counts,
//!   leaves in the session, the store's durable count of acknowledged relays; a refused
//!   append changes nothing;
//! - a frozen session's root is the model trie's root, and every proof the store returns
//!   passes the chain's verification against that root;
//! - delete reports the session's leaf count and forgets the session.
//!
//! One call kind fills in `relay_hash = SHA-256(relay_bytes)` where it is empty, so that
//! the fuzzer reaches accepted appends (it cannot find SHA-256 preimages).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lode_kernels::smst::{self, MemTrie};
use lode_store::service::StoreService;
use lode_store::{MemoryBackend, Store, metrics::Metrics};
use lode_store_api::{
    AppendRelaysRequest, ListSessionsRequest, MarkSessionRequest, ProveClosestRequest,
    SessionKey, SessionStore,
};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// What the model knows of one session.
#[derive(Default)]
struct Session {
    trie: MemTrie,
    hashes: HashSet<Vec<u8>>,
}

#[derive(Default)]
struct Model {
    sessions: HashMap<(String, String), Session>,
    acknowledged: u64,
}

fn check_refusal(rpc: &str, s: &Status) {
    assert!(
        matches!(
            s.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
        ),
        "{rpc} failed with {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(!s.message().is_empty(), "{rpc}: a refusal without a message");
}

async fn append(
    store: &Store<MemoryBackend>,
    svc: &StoreService<MemoryBackend>,
    model: &mut Model,
    req: AppendRelaysRequest,
) {
    let key = (
        req.supplier_operator_address.clone(),
        req.session_header
            .as_ref()
            .map(|h| h.session_id.clone())
            .unwrap_or_default(),
    );
    let relays: Vec<Vec<u8>> = req.relays.iter().map(|r| r.relay_hash.clone()).collect();
    let leaves: Vec<(Vec<u8>, Vec<u8>, u64)> = req
        .relays
        .iter()
        .map(|r| (r.relay_hash.clone(), r.relay_bytes.clone(), r.compute_units))
        .collect();
    match svc.append_relays(Request::new(req)).await {
        Ok(resp) => {
            let r = resp.into_inner();
            let session = model.sessions.entry(key).or_default();
            let (mut accepted, mut duplicates) = (0, 0);
            for (hash, bytes, weight) in leaves {
                if session.hashes.insert(hash.clone()) {
                    session.trie.update(&hash, &bytes, weight);
                    accepted += 1;
                } else {
                    duplicates += 1;
                }
            }
            assert_eq!((r.accepted, r.duplicates), (accepted, duplicates));
            assert_eq!(r.session_leaves, session.hashes.len() as u64);
            assert_eq!(accepted + duplicates, relays.len() as u64);
            model.acknowledged += accepted;
        }
        Err(s) => check_refusal("AppendRelays", &s),
    }
    assert_eq!(store.metrics().relays_acknowledged.get(), model.acknowledged);
}

async fn run(data: &[u8]) {
    let store = Store::open(MemoryBackend::default(), Arc::new(Metrics::default()))
        .expect("the in-memory store opens");
    let store = Arc::new(store);
    let svc = StoreService::new(store.clone(), Vec::new());
    let mut model = Model::default();
    let mut rest = data;
    while rest.len() >= 2 {
        let (rpc, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match rpc % 9 {
            0 => {
                if let Ok(req) = AppendRelaysRequest::decode(body) {
                    append(&store, &svc, &mut model, req).await;
                }
            }
            1 => {
                if let Ok(mut req) = AppendRelaysRequest::decode(body) {
                    for r in &mut req.relays {
                        if r.relay_hash.is_empty() {
                            r.relay_hash = Sha256::digest(&r.relay_bytes).to_vec();
                        }
                    }
                    append(&store, &svc, &mut model, req).await;
                }
            }
            2 => {
                let Ok(k) = SessionKey::decode(body) else { continue };
                let key = (k.supplier_operator_address.clone(), k.session_id.clone());
                match svc.freeze_session(Request::new(k)).await {
                    Ok(info) => {
                        let info = info.into_inner();
                        let session = model.sessions.get_mut(&key).expect("a frozen session was appended to");
                        assert_eq!(info.root, session.trie.root().as_bytes().to_vec());
                        assert_eq!(info.leaves, session.hashes.len() as u64);
                    }
                    Err(s) => check_refusal("FreezeSession", &s),
                }
            }
            3 => {
                let Ok(req) = ProveClosestRequest::decode(body) else { continue };
                match svc.prove_closest(Request::new(req)).await {
                    Ok(resp) => {
                        let r = resp.into_inner();
                        assert_eq!(
                            smst::verify_chain_proof(&r.proof, &r.root).ok(),
                            Some(true),
                            "a proof from the store fails the chain's verification"
                        );
                    }
                    Err(s) => check_refusal("ProveClosest", &s),
                }
            }
            4 => {
                let Ok(k) = SessionKey::decode(body) else { continue };
                let key = (k.supplier_operator_address.clone(), k.session_id.clone());
                match svc.get_session(Request::new(k)).await {
                    Ok(info) => {
                        let session = model.sessions.get(&key).expect("a known session");
                        assert_eq!(info.into_inner().leaves, session.hashes.len() as u64);
                    }
                    Err(s) => check_refusal("GetSession", &s),
                }
            }
            5 => {
                let Ok(req) = ListSessionsRequest::decode(body) else { continue };
                let supplier = req.supplier_operator_address.clone();
                let listed = svc
                    .list_sessions(Request::new(req))
                    .await
                    .expect("listing never fails")
                    .into_inner();
                // An empty supplier lists every session.
                let known = model
                    .sessions
                    .keys()
                    .filter(|(s, _)| supplier.is_empty() || *s == supplier)
                    .count();
                assert_eq!(listed.sessions.len(), known);
            }
            6 => {
                let Ok(req) = MarkSessionRequest::decode(body) else { continue };
                if let Err(s) = svc.mark_session(Request::new(req)).await {
                    check_refusal("MarkSession", &s);
                }
            }
            7 => {
                let Ok(k) = SessionKey::decode(body) else { continue };
                let key = (k.supplier_operator_address.clone(), k.session_id.clone());
                match svc.delete_session(Request::new(k)).await {
                    Ok(resp) => {
                        let session = model.sessions.remove(&key).expect("a known session");
                        assert_eq!(resp.into_inner().leaves_deleted, session.hashes.len() as u64);
                    }
                    Err(s) => check_refusal("DeleteSession", &s),
                }
            }
            _ => {
                // The whole remaining input as one append: batches longer than 255 bytes.
                if let Ok(req) = AppendRelaysRequest::decode(rest) {
                    append(&store, &svc, &mut model, req).await;
                }
                rest = &[];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});
