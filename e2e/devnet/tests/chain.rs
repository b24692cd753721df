//! The chain client (`lode-chain`) and the devnet over real loopback sockets: stake a
//! supplier, read its session, claim and prove relays built with the kernels, see the
//! reward settle; and each way a claim or proof goes wrong, rejected with its reason.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lode_chain::pocket::PocketQuery;
use lode_chain::{ChainGrpc, CometRpc, RetryPolicy};
use lode_chain_tx::{SendConfig, SendError, TxSender};
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use lode_kernels::crypto::SecretKey;
use lode_kernels::mining::claimed_upokt;
use lode_kernels::proto::cosmos::{
    Any, MSG_CREATE_CLAIM_TYPE_URL, MSG_SUBMIT_PROOF_TYPE_URL, MSG_UNSTAKE_SUPPLIER_TYPE_URL,
    MsgUnstakeSupplier,
};
use lode_kernels::proto::{
    Message, MsgCreateClaim, MsgSubmitProof, PoktHttpRequest, PoktHttpResponse, Relay,
    RelayRequest, RelayResponse, SessionHeader,
};
use lode_kernels::relay::{
    BASE_TARGET, mined_relay_bytes, relay_hash, sign_request, sign_response,
};
use lode_kernels::session::proof_path;
use lode_kernels::smst::{self, MemTrie, ProofOptions, compact_closest_proof};
use serde_json::Value;

const SERVICE: &str = "llm";
const CUPR: u64 = 100;

struct Net {
    devnet: Devnet,
    running: Running,
    rpc: CometRpc,
    query: PocketQuery,
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
    }
}

async fn start(config: DevnetConfig) -> Net {
    let devnet = Devnet::new(&config);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let running = devnet.serve(any, any, None).await.expect("serve");
    let rpc = CometRpc::new(&running.rpc_url, retry());
    let query = PocketQuery::new(ChainGrpc::new(&running.grpc_url, retry()).expect("grpc"));
    Net {
        devnet,
        running,
        rpc,
        query,
    }
}

/// Always-required proofs (threshold 1 uPOKT), sessions of 4 blocks.
fn config() -> DevnetConfig {
    let mut c = DevnetConfig::new(7);
    c.shared.num_blocks_per_session = 4;
    c.proof.proof_requirement_threshold = 1;
    c
}

fn address(k: &SecretKey) -> String {
    k.public_key().address().to_bech32(HRP)
}

impl Net {
    fn sender(&self, key: &SecretKey) -> TxSender {
        let mut cfg = SendConfig::pocket("pocket-devnet");
        cfg.poll = Duration::from_millis(20);
        TxSender::new(
            self.rpc.clone(),
            self.query.cosmos().clone(),
            key.clone(),
            cfg,
        )
    }

    /// Runs `send` while producing a block as soon as the transaction reaches the
    /// mempool, so it lands in exactly the next block.
    async fn include<T>(&self, send: impl Future<Output = T>) -> T {
        let producer = self.devnet.produce_on_demand();
        let out = tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .expect("the transaction finished");
        producer.abort();
        out
    }

    /// Produces blocks until the chain is at `height`.
    fn advance_to(&self, height: i64) {
        let now = self.devnet.height();
        assert!(now <= height, "already at {now}, past {height}");
        self.devnet.advance((height - now) as u32);
    }

    async fn block_results(&self, height: i64) -> Value {
        let url = format!("{}/block_results?height={height}", self.running.rpc_url);
        let body = get(&url).await;
        serde_json::from_str::<Value>(&body).expect("json")["result"].clone()
    }
}

/// A minimal HTTP GET over a raw socket (the tests need nothing more).
async fn get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let body = out.split_once("\r\n\r\n").expect("headers").1.to_string();
    if out
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // De-chunk.
        let mut plain = String::new();
        let mut rest = body.as_str();
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).expect("chunk length");
            if n == 0 {
                break;
            }
            plain.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return plain;
    }
    body
}

fn stake_msg(key: &SecretKey, amount: u128) -> Any {
    lode_devnet::stake_supplier_msg(key, amount, SERVICE, "http://relayminer.local:8545")
}

/// Stakes `key` as a supplier and moves to the session where it serves; returns the
/// session header.
async fn staked_session(net: &Net, key: &SecretKey) -> SessionHeader {
    let sender = net.sender(key);
    let sent = net
        .include(sender.send(vec![stake_msg(key, 100_000_000)], "stake", 0))
        .await
        .expect("stake included");
    let supplier = net
        .query
        .supplier(&address(key))
        .await
        .expect("query")
        .expect("staked");
    assert_eq!(supplier.stake.expect("stake").amount, "100000000");
    let activation = supplier.service_config_history[0].activation_height;
    assert!(
        activation > sent.height,
        "services activate at the next session"
    );
    net.advance_to(activation);
    let app = address(&net.devnet.keys().applications[0]);
    let session = net
        .query
        .session(&app, SERVICE, activation)
        .await
        .expect("session");
    assert!(
        session
            .suppliers
            .iter()
            .any(|s| s.operator_address == address(key)),
        "the staked supplier is in the session"
    );
    session.header.expect("header")
}

/// `n` relays of the session, ring-signed by the gateway and signed by the supplier.
fn relays(net: &Net, header: &SessionHeader, supplier: &SecretKey, n: usize) -> Vec<Vec<u8>> {
    let keys = net.devnet.keys();
    let (app, gateway) = (&keys.applications[0], &keys.gateways[0]);
    let ring = [app.public_key(), gateway.public_key()];
    (0..n)
        .map(|i| {
            let mut req = RelayRequest {
                payload: PoktHttpRequest {
                    method: "POST".into(),
                    url: "/v1/chat/completions".into(),
                    body_bz: format!(
                        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"hello {i}\"}}]}}"
                    )
                    .into_bytes(),
                    ..Default::default()
                }
                .encode(),
                ..Default::default()
            };
            req.meta.session_header = Some(header.clone());
            req.meta.supplier_operator_address = address(supplier);
            sign_request(&mut req, &ring, gateway, &mut rand_core::OsRng).expect("ring sign");
            let mut res = RelayResponse {
                payload: PoktHttpResponse {
                    status_code: 200,
                    body_bz: format!("{{\"choices\":[{{\"text\":\"hi {i}\"}}]}}").into_bytes(),
                    ..Default::default()
                }
                .encode(),
                ..Default::default()
            };
            res.meta.session_header = Some(header.clone());
            sign_response(&mut res, supplier);
            mined_relay_bytes(&req, &res)
        })
        .collect()
}

fn trie_of(relays: &[Vec<u8>]) -> MemTrie {
    let mut t = MemTrie::new();
    for r in relays {
        t.update(&relay_hash(r), r, CUPR);
    }
    t
}

fn claim_msg(supplier: &str, header: &SessionHeader, root: &[u8]) -> Any {
    Any::pack(
        MSG_CREATE_CLAIM_TYPE_URL,
        &MsgCreateClaim {
            supplier_operator_address: supplier.into(),
            session_header: Some(header.clone()),
            root_hash: root.to_vec(),
        },
    )
}

fn proof_msg(supplier: &str, header: &SessionHeader, proof: Vec<u8>) -> Any {
    Any::pack(
        MSG_SUBMIT_PROOF_TYPE_URL,
        &MsgSubmitProof {
            supplier_operator_address: supplier.into(),
            session_header: Some(header.clone()),
            proof,
        },
    )
}

/// The compact closest proof for `path`, gob-encoded as the chain reads it.
fn proof_for(trie: &mut MemTrie, path: &[u8; 32]) -> Vec<u8> {
    let p = trie
        .prove_closest(path, ProofOptions::default())
        .expect("prove");
    compact_closest_proof(&p).expect("compact").to_gob()
}

/// A staked supplier in its first session, with `n` relays served into a trie.
struct Served {
    me: String,
    header: SessionHeader,
    trie: MemTrie,
    w: lode_kernels::session::SessionWindows,
    sender: TxSender,
}

async fn serve(net: &Net, key: &SecretKey, n: usize) -> Served {
    let header = staked_session(net, key).await;
    let relays = relays(net, &header, key, n);
    Served {
        me: address(key),
        trie: trie_of(&relays),
        w: windows(&header),
        sender: net.sender(key),
        header,
    }
}

impl Served {
    fn claim(&mut self) -> Any {
        claim_msg(&self.me, &self.header, self.trie.root().as_bytes())
    }

    /// Moves to the first block of the claim window and claims the trie's root there.
    async fn claim_in_window(&mut self, net: &Net) -> Result<lode_chain_tx::Sent, SendError> {
        net.advance_to(self.w.earliest_supplier_claim_commit_height - 1);
        let msg = self.claim();
        let close = self.w.claim_window_close_height as u64;
        net.include(self.sender.send(vec![msg], "claim", close))
            .await
    }

    /// Moves to just before the proof window; returns the hash of the seed block
    /// (proof-window-open − 1), read over CometBFT RPC.
    async fn seed(&self, net: &Net) -> Vec<u8> {
        net.advance_to(self.w.earliest_supplier_proof_commit_height - 1);
        let b = net.rpc.block(self.w.proof_window_open_height - 1).await;
        b.expect("seed block").hash
    }

    /// The proof whose path comes from `seed`.
    fn proof(&mut self, seed: &[u8]) -> Vec<u8> {
        proof_for(&mut self.trie, &proof_path(seed, &self.header.session_id))
    }

    async fn submit(&self, net: &Net, proof: Vec<u8>) -> Result<lode_chain_tx::Sent, SendError> {
        let msg = proof_msg(&self.me, &self.header, proof);
        let close = self.w.proof_window_close_height as u64;
        net.include(self.sender.send(vec![msg], "proof", close))
            .await
    }

    async fn balance(&self, net: &Net) -> u128 {
        net.query
            .cosmos()
            .balance(&self.me, "upokt")
            .await
            .expect("balance")
    }
}

fn windows(header: &SessionHeader) -> lode_kernels::session::SessionWindows {
    config().shared.windows(header.session_end_block_height)
}

fn proof_validity(results: &Value) -> (String, String) {
    let ev = results["finalize_block_events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "pocket.proof.EventProofValidityChecked")
        .expect("a proof validity event");
    let attr = |k: &str| {
        ev["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].as_str().expect("str").to_string())
            .unwrap_or_default()
    };
    (attr("proof_status"), attr("failure_reason"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplier_stakes_claims_proves_and_is_paid() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let me = address(&key);
    let header = staked_session(&net, &key).await;

    // The queries a relayminer makes, answered over gRPC.
    let params = net
        .query
        .shared_params_at(header.session_start_block_height)
        .await
        .expect("params");
    assert_eq!(params.shared.num_blocks_per_session, 4);
    assert_eq!(
        params.pricing.compute_units_to_tokens_multiplier,
        42_000_000
    );
    let target = net
        .query
        .difficulty_at(SERVICE, header.session_start_block_height)
        .await
        .expect("difficulty");
    assert_eq!(target, BASE_TARGET);
    assert_eq!(
        net.query
            .compute_units_per_relay_at(SERVICE, header.session_start_block_height)
            .await
            .expect("cupr"),
        CUPR
    );
    assert_eq!(
        net.query
            .service(SERVICE)
            .await
            .expect("service")
            .expect("exists")
            .compute_units_per_relay,
        CUPR
    );
    assert!(net.query.service("nope").await.expect("query").is_none());
    assert_eq!(
        net.query.num_suppliers_per_session().await.expect("params"),
        15
    );
    let proof_params = net.query.proof_params().await.expect("proof params");
    assert_eq!(proof_params.requirement.proof_requirement_threshold, 1);
    let app_addr = address(&net.devnet.keys().applications[0]);
    let app_before = net
        .query
        .application(&app_addr)
        .await
        .expect("app")
        .expect("staked");
    assert_eq!(
        app_before.delegatee_gateway_addresses,
        vec![address(&net.devnet.keys().gateways[0])]
    );
    // Ring members' public keys come from their accounts.
    let gateway_account = net
        .query
        .cosmos()
        .account(&address(&net.devnet.keys().gateways[0]))
        .await
        .expect("account");
    assert_eq!(
        gateway_account.public_key,
        Some(net.devnet.keys().gateways[0].public_key())
    );
    assert!(
        net.query
            .claim(&header.session_id, &me)
            .await
            .expect("claim query")
            .is_none()
    );

    // 25 relays served, their root claimed in the first block of the claim window.
    let mut sv = Served {
        trie: trie_of(&relays(&net, &header, &key, 25)),
        me: me.clone(),
        w: windows(&header),
        sender: net.sender(&key),
        header: header.clone(),
    };
    let root = sv.trie.root();
    assert_eq!((root.count(), root.sum()), (25, 25 * CUPR));
    let claimed = sv.claim_in_window(&net).await.expect("claim included");
    assert_eq!(claimed.height, sv.w.earliest_supplier_claim_commit_height);
    let onchain = net
        .query
        .claim(&header.session_id, &me)
        .await
        .expect("query");
    assert_eq!(
        onchain.expect("claimed").root_hash,
        root.as_bytes().to_vec()
    );

    // Prove from the seed block at proof-window-open − 1.
    let seed = sv.seed(&net).await;
    let proof = sv.proof(&seed);
    let proved = sv.submit(&net, proof).await.expect("proof included");
    let (status, reason) = proof_validity(&net.block_results(proved.height).await);
    assert_eq!((status.as_str(), reason.as_str()), ("VALIDATED", ""));
    let onchain = net
        .query
        .claim(&header.session_id, &me)
        .await
        .expect("query");
    assert_eq!(onchain.expect("claim").proof_validation_status, 1);

    // Settlement after the proof window: the reward is the kernels' arithmetic.
    let before = sv.balance(&net).await;
    net.advance_to(sv.w.proof_window_close_height + 1);
    let after = sv.balance(&net).await;
    let expected = claimed_upokt(25 * CUPR, &BASE_TARGET, params.pricing).expect("priced");
    assert_eq!(expected, 105_000, "25 relays × 100 CU × 42 uPOKT/CU");
    assert_eq!(after - before, expected);
    let settlements = net.devnet.settlements();
    assert_eq!(settlements.len(), 1);
    assert_eq!(settlements[0].reward, expected);
    assert_eq!(settlements[0].outcome, "settled: proof validated");
    let app_after = net
        .query
        .application(&app_addr)
        .await
        .expect("app")
        .expect("staked");
    let stake = |a: &lode_chain::proto::pocket::application::Application| -> u128 {
        a.stake
            .as_ref()
            .expect("stake")
            .amount
            .parse()
            .expect("int")
    };
    assert_eq!(
        stake(&app_before) - stake(&app_after),
        expected,
        "the application paid it"
    );
    assert!(
        net.query
            .claim(&header.session_id, &me)
            .await
            .expect("q")
            .is_none(),
        "settled claims are pruned"
    );
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_outside_the_window_and_from_the_wrong_signer_are_refused() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let other = net.devnet.keys().suppliers[1].clone();
    let me = address(&key);
    let header = staked_session(&net, &key).await;
    let relays = relays(&net, &header, &key, 3);
    let root = trie_of(&relays).root();
    let w = windows(&header);
    let sender = net.sender(&key);
    let msg = claim_msg(&me, &header, root.as_bytes());

    // Too early: the session has not even ended.
    let err = net
        .include(sender.send(vec![msg.clone()], "early", 0))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("claim attempted outside of the session's claim window"),
        "{text}"
    );
    assert!(text.contains("code 1121"), "{text}");
    assert!(
        text.contains(&format!(
            "earliest claim commit height ({})",
            w.earliest_supplier_claim_commit_height
        )),
        "{text}"
    );

    // Another key signing a claim in this supplier's name.
    net.advance_to(w.earliest_supplier_claim_commit_height - 1);
    let err = net
        .include(net.sender(&other).send(vec![msg.clone()], "impostor", 0))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!("pubKey does not match signer address {me}")),
        "{text}"
    );

    // A root whose sum is not count × compute units per relay.
    let mut bad_root = root.as_bytes().to_vec();
    bad_root[40..48].copy_from_slice(&7u64.to_be_bytes());
    let err = net
        .include(sender.send(vec![claim_msg(&me, &header, &bad_root)], "bad root", 0))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("code 1126"), "{err}");

    // Too late.
    net.advance_to(w.claim_window_close_height);
    let err = net
        .include(sender.send(vec![msg], "late", 0))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "greater than session claim window close height ({})",
            w.claim_window_close_height
        )),
        "{text}"
    );
    assert!(
        net.query
            .claim(&header.session_id, &me)
            .await
            .expect("q")
            .is_none(),
        "nothing was claimed"
    );
    assert!(
        net.devnet.chain().simulate(b"\xff\x00garbage").is_err(),
        "garbage is refused, not panicked on"
    );
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proofs_are_invalidated_and_slashed() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let me = address(&key);
    let mut sv = serve(&net, &key, 8).await;
    sv.claim_in_window(&net).await.expect("claim included");
    let (header, w) = (sv.header.clone(), sv.w);
    let seed = sv.seed(&net).await;

    // Every rejected proof below is judged by the chain's own validation; the devnet
    // exposes the same function the end of block runs, so each is checked against the
    // stored claim before one of them is submitted for real.
    let wrong_seed = net.rpc.block(w.proof_window_open_height - 2).await;
    let wrong_seed = wrong_seed.expect("another block").hash;
    let claim = net
        .devnet
        .chain()
        .m
        .claims
        .values()
        .next()
        .expect("claim")
        .claim
        .clone();

    // 1. A proof for the path of the wrong seed block.
    let wrong = sv.proof(&wrong_seed);
    let err = net
        .devnet
        .chain()
        .validate_proof(&claim, &wrong)
        .expect_err("wrong seed");
    assert_eq!(err.code, 1108);
    assert!(
        err.log
            .contains("does not match one expected by the onchain protocol"),
        "{}",
        err.log
    );

    // 2. A relay tampered with inside an otherwise honest proof.
    let good = sv.proof(&seed);
    let mut compact = smst::SparseCompactMerkleClosestProof::from_gob(&good).expect("gob");
    let value = compact.closest_value_hash.as_mut().expect("leaf");
    let relay_len = value.len() - 16;
    let mut relay = Relay::decode(&value[..relay_len]).expect("relay");
    relay
        .req
        .as_mut()
        .expect("req")
        .payload
        .extend_from_slice(b" (edited)");
    let mut tampered_value = relay.encode();
    tampered_value.extend_from_slice(&value[relay_len..]);
    *value = tampered_value;
    let tampered = compact.to_gob();
    let err = net
        .devnet
        .chain()
        .validate_proof(&claim, &tampered)
        .expect_err("tampered");
    assert_eq!(err.code, 1110, "{}", err.log);
    assert!(err.log.contains("invalid ring signature"), "{}", err.log);

    // 3. Garbage bytes.
    let err = net
        .devnet
        .chain()
        .validate_proof(&claim, b"not gob")
        .expect_err("garbage");
    assert_eq!(err.code, 1108);

    // The honest proof passes the same check.
    assert_eq!(net.devnet.chain().validate_proof(&claim, &good), Ok(()));

    // Submit the wrong-seed proof: accepted into a block, found invalid at its end,
    // the claim expires at settlement and the supplier is slashed.
    let sent = sv.submit(&net, wrong).await.expect("proof included");
    let (status, reason) = proof_validity(&net.block_results(sent.height).await);
    assert_eq!(status, "INVALID");
    assert!(reason.contains("does not match one expected"), "{reason}");
    assert_eq!(
        net.query
            .claim(&header.session_id, &me)
            .await
            .expect("q")
            .expect("claim")
            .proof_validation_status,
        2
    );
    // A second proof for the same claim is refused.
    let err = sv
        .submit(&net, good)
        .await
        .expect_err("one proof per claim");
    assert!(
        err.to_string().contains("a proof was already submitted"),
        "{err}"
    );
    let before = sv.balance(&net).await;
    net.advance_to(w.proof_window_close_height + 1);
    let s = net.devnet.settlements();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].reward, s[0].outcome.as_str()),
        (0, "expired: invalid proof")
    );
    assert_eq!(
        s[0].slashed, 100_000_000,
        "the penalty (320 POKT) exceeds the 100 POKT stake: all of it is slashed"
    );
    assert_eq!(sv.balance(&net).await, before, "no reward");
    let stake = net
        .query
        .supplier(&me)
        .await
        .expect("q")
        .expect("still staked")
        .stake
        .expect("stake");
    assert_eq!(stake.amount, "0");
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_claim_replaces_the_first_and_is_paid_once() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let mut sv = serve(&net, &key, 5).await;
    let first = sv.claim_in_window(&net).await.expect("claim");
    let again = sv.claim();
    let second = net
        .include(sv.sender.send(vec![again], "claim again", 0))
        .await
        .expect("the chain upserts claims");
    let kinds = |v: Value| -> Vec<String> {
        v["txs_results"][0]["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["type"].as_str().expect("type").to_string())
            .collect()
    };
    assert!(
        kinds(net.block_results(first.height).await)
            .contains(&"pocket.proof.EventClaimCreated".to_string())
    );
    assert!(
        kinds(net.block_results(second.height).await)
            .contains(&"pocket.proof.EventClaimUpdated".to_string())
    );
    assert_eq!(
        net.devnet.chain().m.claims.len(),
        1,
        "one claim per session and supplier"
    );
    let seed = sv.seed(&net).await;
    let proof = sv.proof(&seed);
    sv.submit(&net, proof).await.expect("proof");
    net.advance_to(sv.w.proof_window_close_height + 1);
    let s = net.devnet.settlements();
    assert_eq!(s.len(), 1, "paid once");
    assert_eq!(s[0].reward, 5 * CUPR as u128 * 42);
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrequired_proofs_fail_and_unproven_claims_settle_when_not_required() {
    let mut cfg = config();
    cfg.proof.proof_requirement_threshold = u128::MAX;
    cfg.proof.proof_request_probability = 0.0;
    let net = start(cfg).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let mut sv = serve(&net, &key, 4).await;
    sv.claim_in_window(&net).await.expect("claim");
    let seed = sv.seed(&net).await;
    let proof = sv.proof(&seed);
    let err = sv.submit(&net, proof).await.expect_err("not required");
    assert!(
        matches!(err, SendError::Query(_)),
        "refused at simulation: {err}"
    );
    assert!(err.to_string().contains("proof not required"), "{err}");
    net.advance_to(sv.w.proof_window_close_height + 1);
    let s = net.devnet.settlements();
    assert_eq!(
        (s[0].reward, s[0].outcome.as_str()),
        (4 * CUPR as u128 * 42, "settled: proof not required")
    );
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstaking_returns_the_stake_after_unbonding() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[1].clone();
    let me = address(&key);
    staked_session(&net, &key).await;
    let before = net
        .query
        .cosmos()
        .balance(&me, "upokt")
        .await
        .expect("balance");
    let sender = net.sender(&key);
    let unstake = Any::pack(
        MSG_UNSTAKE_SUPPLIER_TYPE_URL,
        &MsgUnstakeSupplier {
            signer: me.clone(),
            operator_address: me.clone(),
        },
    );
    let sent = net
        .include(sender.send(vec![unstake], "unstake", 0))
        .await
        .expect("unstake");
    let s = net
        .query
        .supplier(&me)
        .await
        .expect("q")
        .expect("still unbonding");
    let end = config().shared.session_end_height(sent.height);
    assert_eq!(s.unstake_session_end_height, end as u64);
    net.advance_to(end + 4 + 1);
    assert!(
        net.query.supplier(&me).await.expect("q").is_none(),
        "unbonded"
    );
    let after = net
        .query
        .cosmos()
        .balance(&me, "upokt")
        .await
        .expect("balance");
    assert_eq!(
        after,
        before - sent.fee + 100_000_000,
        "stake returned, less the unstake fee"
    );
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_is_deterministic_per_seed() {
    let a = Devnet::new(&config());
    let b = Devnet::new(&config());
    a.advance(12);
    b.advance(12);
    for h in 1..=12 {
        assert_eq!(a.chain().block_hash(h), b.chain().block_hash(h));
    }
    let mut other = config();
    other.seed = 8;
    let c = Devnet::new(&other);
    c.advance(12);
    assert_ne!(a.chain().block_hash(12), c.chain().block_hash(12));
    assert_ne!(
        address(&a.keys().suppliers[0]),
        address(&c.keys().suppliers[0])
    );
    let app = address(&a.keys().applications[0]);
    let s1 = a.chain().session(&app, SERVICE, 9).expect("session");
    let s2 = b.chain().session(&app, SERVICE, 9).expect("session");
    assert_eq!(s1.header, s2.header);
    assert_eq!(s1.header.session_start_block_height, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lost_from_the_mempool_is_broadcast_again() {
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let sender = net.sender(&key);
    // The node loses the transaction as soon as it arrives, then keeps producing blocks
    // with whatever its mempool holds.
    let devnet = net.devnet.clone();
    let chaos = tokio::spawn(async move {
        let mut dropped = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if dropped == 0 && devnet.drop_mempool() > 0 {
                dropped += 1;
            }
            if dropped > 0 {
                devnet.advance(1);
            }
        }
    });
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send(vec![stake_msg(&key, 5_000_000)], "stake", 0),
    )
    .await
    .expect("finished")
    .expect("included after a re-broadcast");
    chaos.abort();
    // Broadcast at height 1 and lost; only the re-broadcast, once
    // REBROADCAST_AFTER_BLOCKS passed, can have put the same bytes in a block.
    assert!(
        sent.height > 1 + lode_chain_tx::send::REBROADCAST_AFTER_BLOCKS,
        "included at {} — before any re-broadcast?",
        sent.height
    );
    assert!(
        net.query
            .supplier(&address(&key))
            .await
            .expect("q")
            .is_some()
    );
    net.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_announces_blocks_and_a_senders_transactions() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let net = start(config()).await;
    let key = net.devnet.keys().suppliers[0].clone();
    let me = address(&key);
    let ws_url = format!(
        "{}/websocket",
        net.running.rpc_url.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("connect");
    for (id, query) in [
        (1, "tm.event='NewBlockHeader'".to_string()),
        (2, format!("tm.event='Tx' AND message.sender='{me}'")),
        (3, "tm.event='Vote'".to_string()),
    ] {
        let sub = serde_json::json!({"jsonrpc": "2.0", "method": "subscribe", "id": id, "params": {"query": query}});
        ws.send(Ws::Text(sub.to_string().into()))
            .await
            .expect("send");
        let ack: Value = match ws.next().await.expect("ack").expect("ws") {
            Ws::Text(t) => serde_json::from_str(&t).expect("json"),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(ack["id"], id);
        assert_eq!(ack.get("error").is_some(), id == 3, "{ack}");
    }
    let sent = net
        .include(
            net.sender(&key)
                .send(vec![stake_msg(&key, 2_000_000)], "stake", 0),
        )
        .await
        .expect("included");
    let (mut headers, mut txs) = (Vec::new(), Vec::new());
    while txs.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an event")
            .expect("open")
            .expect("ws");
        let Ws::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        match v["id"].as_i64() {
            Some(1) => headers.push(
                v["result"]["data"]["value"]["header"]["height"]
                    .as_str()
                    .expect("h")
                    .to_string(),
            ),
            Some(2) => txs.push(v),
            other => panic!("event for subscription {other:?}"),
        }
    }
    assert_eq!(
        headers.last().map(String::as_str),
        Some(sent.height.to_string().as_str())
    );
    let tx = &txs[0]["result"];
    assert_eq!(tx["events"]["tx.hash"][0], sent.hash.as_str());
    assert_eq!(tx["data"]["value"]["TxResult"]["result"]["code"], 0);
    net.running.shutdown().await;
}
