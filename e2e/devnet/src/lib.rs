//! An in-process POKT chain for tests and the local fleet: the gRPC query services and
//! CometBFT RPC/websocket of a real node on loopback, blocks on a timer or on demand,
//! and claim/proof transactions verified and settled with poktroll's rules.
//!
//! Deterministic: the same seed gives the same keys, addresses, block hashes and
//! sessions. What is simplified is listed in the README next to this crate.

pub mod chain;
pub mod grpc;
pub mod rpc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lode_kernels::claim::ProofParams;
use lode_kernels::crypto::SecretKey;
use lode_kernels::mining::Pricing;
use lode_kernels::session::SharedParams;
use tokio::sync::{broadcast, oneshot};

pub use chain::{Chain, Genesis, HRP, ServiceDef, Settlement, TxError};

/// Genesis start time: 2026-01-01T00:00:00Z; block `h` is stamped `h` block times later.
const GENESIS_UNIX_MS: u64 = 1_767_225_600_000;

/// What to build the chain with. [`DevnetConfig::new`] gives poktroll's code defaults
/// (sessions of 10 blocks) with one service, one application delegating to one gateway,
/// and `suppliers` funded (not yet staked) operator accounts.
#[derive(Clone, Debug)]
pub struct DevnetConfig {
    pub seed: u64,
    pub chain_id: String,
    pub shared: SharedParams,
    pub pricing: Pricing,
    pub proof: ProofParams,
    pub proof_missing_penalty: u128,
    pub proof_submission_fee: u128,
    pub num_suppliers_per_session: u64,
    pub services: Vec<ServiceDef>,
    pub applications: usize,
    /// The last this many applications delegate to no gateway: their rings hold the
    /// public placeholder key instead.
    pub undelegated_applications: usize,
    pub application_stake: u128,
    pub gateways: usize,
    pub suppliers: usize,
    pub supplier_balance: u128,
    /// Blocks are produced every `block_time` when set; otherwise only on demand.
    pub block_time: Option<Duration>,
}

impl DevnetConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            chain_id: "pocket-devnet".into(),
            shared: SharedParams::default(),
            pricing: Pricing {
                compute_units_to_tokens_multiplier: 42_000_000,
                compute_unit_cost_granularity: 1_000_000,
            },
            proof: ProofParams {
                proof_request_probability: 0.25,
                proof_requirement_threshold: 20_000_000,
            },
            proof_missing_penalty: 320_000_000,
            proof_submission_fee: 1_000_000,
            num_suppliers_per_session: 15,
            services: vec![ServiceDef {
                id: "llm".into(),
                name: "OpenAI-compatible LLM inference".into(),
                compute_units_per_relay: 100,
                target_num_relays: 10_000,
                owner: String::new(),
            }],
            applications: 1,
            undelegated_applications: 0,
            application_stake: 100_000_000_000,
            gateways: 1,
            suppliers: 2,
            supplier_balance: 10_000_000_000,
            block_time: None,
        }
    }
}

impl DevnetConfig {
    /// For tests of getting paid: proofs required above 20,000 uPOKT (5 relays of 4,200)
    /// and never sampled, a 10 uPOKT proof submission fee, and claim and proof windows 13
    /// blocks wide so a loaded machine cannot miss them.
    pub fn payment_tests(seed: u64) -> Self {
        let mut c = Self::new(seed);
        c.proof.proof_requirement_threshold = 20_000;
        c.proof.proof_request_probability = 0.0;
        c.proof_submission_fee = 10;
        c.shared.claim_window_close_offset_blocks = 12;
        c.shared.proof_window_close_offset_blocks = 12;
        c
    }
}

/// A role's deterministic key: `SHA-256(seed ‖ role ‖ index)` as a Cosmos secret.
pub fn devnet_key(seed: u64, role: &str, index: usize) -> SecretKey {
    SecretKey::from_secret(format!("lode-devnet/{seed}/{role}/{index}").as_bytes())
}

/// The keys the devnet created, by role.
#[derive(Clone, Debug)]
pub struct DevnetKeys {
    pub applications: Vec<SecretKey>,
    pub gateways: Vec<SecretKey>,
    /// Funded supplier operator accounts (owner = operator: custodial staking).
    pub suppliers: Vec<SecretKey>,
}

/// A running (or ready to run) devnet. Cheap to clone: every clone is the same chain.
#[derive(Clone, Debug)]
pub struct Devnet {
    chain: Arc<Mutex<Chain>>,
    events: broadcast::Sender<Option<i64>>,
    keys: DevnetKeys,
    block_time: Duration,
}

impl Devnet {
    pub fn new(config: &DevnetConfig) -> Self {
        let key = |role: &str, i| devnet_key(config.seed, role, i);
        let keys = DevnetKeys {
            applications: (0..config.applications)
                .map(|i| key("application", i))
                .collect(),
            gateways: (0..config.gateways).map(|i| key("gateway", i)).collect(),
            suppliers: (0..config.suppliers).map(|i| key("supplier", i)).collect(),
        };
        let addr = |k: &SecretKey| k.public_key().address().to_bech32(HRP);
        let gateway_addresses: Vec<String> = keys.gateways.iter().map(addr).collect();
        let first_service = config
            .services
            .first()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let genesis = Genesis {
            chain_id: config.chain_id.clone(),
            seed: config.seed,
            shared: config.shared,
            pricing: config.pricing,
            proof: config.proof,
            proof_missing_penalty: config.proof_missing_penalty,
            proof_submission_fee: config.proof_submission_fee,
            num_suppliers_per_session: config.num_suppliers_per_session,
            supplier_min_stake: 1_000_000,
            supplier_unbonding_period_sessions: 1,
            services: config.services.clone(),
            applications: keys
                .applications
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let delegated = i + config.undelegated_applications < config.applications;
                    (
                        k.clone(),
                        config.application_stake,
                        first_service.clone(),
                        if delegated {
                            gateway_addresses.clone()
                        } else {
                            Vec::new()
                        },
                    )
                })
                .collect(),
            gateways: keys
                .gateways
                .iter()
                .map(|k| (k.clone(), 1_000_000_000))
                .collect(),
            accounts: keys
                .suppliers
                .iter()
                .map(|k| (k.clone(), config.supplier_balance))
                .collect(),
        };
        let mut chain = Chain::new(genesis);
        let block_time = config.block_time.unwrap_or(Duration::from_secs(1));
        // The genesis block carries the genesis time.
        if let Some(b) = chain.blocks.first_mut() {
            b.time_unix_ms = GENESIS_UNIX_MS;
        }
        let (events, _) = broadcast::channel(1024);
        Self {
            chain: Arc::new(Mutex::new(chain)),
            events,
            keys,
            block_time,
        }
    }

    pub fn keys(&self) -> &DevnetKeys {
        &self.keys
    }

    /// The chain's state (held briefly: the servers need it too).
    pub fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().expect("chain lock")
    }

    pub fn height(&self) -> i64 {
        self.chain().height()
    }

    /// Produces `n` blocks now and announces each; returns the new height.
    pub fn advance(&self, n: u32) -> i64 {
        let mut height = 0;
        for _ in 0..n {
            height = {
                let mut c = self.chain();
                let h = c.height() + 1;
                c.produce_block(
                    GENESIS_UNIX_MS + (h as u64 - 1) * self.block_time.as_millis() as u64,
                )
            };
            let _ = self.events.send(Some(height));
        }
        if n == 0 { self.height() } else { height }
    }

    /// Forgets every pending transaction, as a node that restarts loses its mempool.
    /// Returns how many were dropped.
    pub fn drop_mempool(&self) -> usize {
        let mut c = self.chain();
        let n = c.mempool.len();
        c.mempool.clear();
        c.forget_pending();
        n
    }

    /// Fault injection: the next `n` broadcast transactions are refused by CheckTx
    /// (code 20, mempool full).
    pub fn refuse_next_txs(&self, n: u32) {
        self.chain().refuse_next_txs = n;
    }

    /// Produces a block whenever a transaction waits in the mempool (so each lands in
    /// the very next block), until the task is aborted.
    pub fn produce_on_demand(&self) -> tokio::task::JoinHandle<()> {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if !d.chain().mempool.is_empty() {
                    d.advance(1);
                }
            }
        })
    }

    /// Stakes supplier `index` (custodial, 100 POKT) for `service_id` through a real
    /// `TxSender` against `running`, then produces blocks into the next session, where it
    /// serves; returns that session's header for the first application.
    pub async fn stake_into_next_session(
        &self,
        running: &Running,
        index: usize,
        service_id: &str,
    ) -> Result<chain::HydratedSession, String> {
        self.stake_into_next_session_at(running, index, service_id, "http://127.0.0.1:8545")
            .await
    }

    /// [`Devnet::stake_into_next_session`] with the endpoint gateways reach it at.
    pub async fn stake_into_next_session_at(
        &self,
        running: &Running,
        index: usize,
        service_id: &str,
        url: &str,
    ) -> Result<chain::HydratedSession, String> {
        let retry = lode_chain::RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        };
        let key = self
            .keys
            .suppliers
            .get(index)
            .ok_or("no such supplier")?
            .clone();
        let mut cfg = lode_chain_tx::SendConfig::pocket(&self.chain().genesis.chain_id);
        cfg.poll = Duration::from_millis(20);
        let grpc =
            lode_chain::ChainGrpc::new(&running.grpc_url, retry).map_err(|e| e.to_string())?;
        let sender = lode_chain_tx::TxSender::new(
            lode_chain::CometRpc::new(&running.rpc_url, retry),
            grpc,
            key.clone(),
            cfg,
        );
        let producer = self.produce_on_demand();
        let msg = stake_supplier_msg(&key, 100_000_000, service_id, url);
        let sent = sender.send(vec![msg], "stake", 0).await;
        producer.abort();
        sent.map_err(|e| e.to_string())?;
        let h = self.height();
        let next = self.chain().shared().session_end_height(h) + 1;
        self.advance((next - h) as u32);
        let app = self.keys.applications.first().ok_or("no application")?;
        self.chain()
            .session(&app.public_key().address().to_bech32(HRP), service_id, next)
    }

    /// Every claim settled or expired so far.
    pub fn settlements(&self) -> Vec<Settlement> {
        self.chain().settlements.clone()
    }

    /// Serves gRPC and CometBFT RPC on the given addresses (port 0 picks a free one) and,
    /// with a block time, produces blocks on a timer. Stops when the handle is dropped or
    /// [`Running::shutdown`] is called.
    pub async fn serve(
        &self,
        rpc_addr: SocketAddr,
        grpc_addr: SocketAddr,
        block_time: Option<Duration>,
    ) -> std::io::Result<Running> {
        let rpc_listener = tokio::net::TcpListener::bind(rpc_addr).await?;
        let grpc_listener = tokio::net::TcpListener::bind(grpc_addr).await?;
        let (rpc_addr, grpc_addr) = (rpc_listener.local_addr()?, grpc_listener.local_addr()?);
        let endpoints = self.endpoints(rpc_listener, grpc_listener);
        let blocks = block_time.map(|every| {
            let d = self.clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = tick.tick() => { d.advance(1); }
                        _ = &mut stopped => return,
                    }
                }
            });
            (stop, task)
        });
        Ok(Running {
            rpc_url: format!("http://{rpc_addr}"),
            grpc_url: format!("http://{grpc_addr}"),
            devnet: self.clone(),
            addrs: (rpc_addr, grpc_addr),
            endpoints: Some(endpoints),
            blocks,
        })
    }

    /// The RPC and gRPC servers on their listeners.
    fn endpoints(
        &self,
        rpc_listener: tokio::net::TcpListener,
        grpc_listener: tokio::net::TcpListener,
    ) -> Endpoints {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = futures_util::future::FutureExt::shared(async move {
            let _ = stop_rx.await;
        });
        let app = rpc::router(self.clone());
        let s = stop.clone();
        let rpc = tokio::spawn(async move {
            let _ = axum::serve(rpc_listener, app)
                .with_graceful_shutdown(s)
                .await;
        });
        let node = grpc::Node {
            chain: self.chain.clone(),
        };
        let grpc = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let _ = grpc::router(node)
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
        });
        Endpoints {
            stop: stop_tx,
            tasks: vec![rpc, grpc],
        }
    }
}

/// The servers of a running devnet node.
#[derive(Debug)]
struct Endpoints {
    stop: oneshot::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Endpoints {
    async fn stop(self, devnet: &Devnet) {
        // Websocket subscriptions end on `None`; then the servers stop.
        let _ = devnet.events.send(None);
        let _ = self.stop.send(());
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A running devnet: its node's servers and the block timer.
#[derive(Debug)]
pub struct Running {
    pub rpc_url: String,
    pub grpc_url: String,
    devnet: Devnet,
    addrs: (SocketAddr, SocketAddr),
    endpoints: Option<Endpoints>,
    blocks: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// The node's endpoints as lode's configuration files name them.
    pub fn node(&self) -> lode_contracts::NodeConfig {
        lode_contracts::NodeConfig {
            grpc_url: self.grpc_url.clone(),
            rpc_url: self.rpc_url.clone(),
        }
    }

    /// A node outage: the RPC and gRPC servers stop (connections refused, websockets
    /// closed) while the chain goes on producing blocks. Ends with [`Running::recover`].
    pub async fn outage(&mut self) {
        if let Some(e) = self.endpoints.take() {
            e.stop(&self.devnet).await;
        }
    }

    /// Ends an outage: the servers listen again on the same addresses.
    pub async fn recover(&mut self) -> std::io::Result<()> {
        if self.endpoints.is_none() {
            let rpc = tokio::net::TcpListener::bind(self.addrs.0).await?;
            let grpc = tokio::net::TcpListener::bind(self.addrs.1).await?;
            self.endpoints = Some(self.devnet.endpoints(rpc, grpc));
        }
        Ok(())
    }

    /// Closes websockets, stops the servers and the block timer, and waits for them.
    pub async fn shutdown(mut self) {
        self.outage().await;
        if let Some((stop, task)) = self.blocks.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.devnet.events.send(None);
        if let Some(e) = self.endpoints.take() {
            let _ = e.stop.send(());
        }
        if let Some((stop, _)) = self.blocks.take() {
            let _ = stop.send(());
        }
    }
}

/// A `MsgStakeSupplier` for a custodial supplier (owner = operator = `key`) of one
/// service with one endpoint.
pub fn stake_supplier_msg(
    key: &SecretKey,
    upokt: u128,
    service_id: &str,
    url: &str,
) -> lode_kernels::proto::cosmos::Any {
    let a = key.public_key().address().to_bech32(HRP);
    lode_chain_tx::stake::stake_message(&lode_contracts::stake::StakeSpec {
        operator: a.clone(),
        owner: a,
        stake_upokt: upokt,
        services: vec![lode_contracts::stake::ServiceStake {
            service_id: service_id.into(),
            url: url.into(),
            rev_share: Vec::new(),
        }],
    })
}
