//! `relayminer`: everything a POKT supplier runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lode_contracts::serve::StoreConfig;
use lode_contracts::stake::{RevShare, ServiceStake, StakeSpec};
use lode_relayminer::lifecycle::{Lifecycle, LifecycleConfig};
use lode_store::{Durability, ServerConfig};

#[derive(Parser, Debug)]
#[command(name = "relayminer", version, about = "lode's relayminer: serve relays, keep session tries, claim and prove", long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LODE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the session store: the per-supplier SMST database served over gRPC.
    ///
    /// One store per supplier identity; it is the only writer of its sessions. Serve pods
    /// ship mined relays to it in batches (acknowledged once durable); claim and prove jobs
    /// freeze sessions, read roots and closest proofs, and delete settled sessions.
    Store(StoreArgs),
    /// Serve relays: the proxy in front of an LLM engine (the sidecar of every GPU pod).
    ///
    /// Accepts RelayRequests on the relay port (HTTP/1.1 and HTTP/2), checks the session
    /// on chain, the supplier, the ring signature and the application's budget, proxies
    /// to the engine (OpenAI HTTP, or Triton's KServe v2 gRPC; SSE streams are answered
    /// as signed batches separated by ||POKT_STREAM||), signs the response, mines the
    /// relay and ships it to the store. Reads lode's serve YAML or poktroll's relayminer YAML (with --keys-dir).
    /// SIGTERM/Ctrl-C: stop accepting, finish in-flight relays and streams, flush mined
    /// relays, exit.
    Serve(ServeArgs),
    /// Claim the sessions whose claim window is open (a Kubernetes Job at claim-window
    /// open).
    ///
    /// Freezes each session's trie in the store, drops sessions worth less than claiming
    /// and (maybe) proving them costs, sends one MsgCreateClaim transaction per supplier
    /// (most valuable first, valid until the window closes), waits for inclusion and
    /// records the tx hash in the store. Idempotent: claims already on chain are recorded,
    /// not sent again. Sessions whose window has not opened are left alone; a window that
    /// closed unclaimed is reported as missed.
    ///
    /// Prints a JSON report (per session: relays, compute units, root, estimated
    /// reward, tx hash, outcome) and exits 0 when every session in its window is done, 1
    /// otherwise.
    Claim(JobArgs),
    /// Prove the claimed sessions whose proof window is open (a Kubernetes Job at
    /// proof-window open).
    ///
    /// Reads the seed block (exactly proof-window-open − 1), decides per claim whether the
    /// chain requires a proof (threshold, or sampled from the claim and seed hashes),
    /// builds each compact closest proof from the store and checks it against the claimed
    /// root, sends the certain proofs of a supplier in one transaction and each doubtful
    /// one alone, waits for the chain's verdict, and deletes finished sessions from the
    /// store. Same report and exit status as `claim`.
    Prove(JobArgs),
    /// Stake the supplier (or update its stake, services and endpoints) unless the chain
    /// already has exactly that.
    ///
    /// Compares the on-chain supplier (stake, owner, each service's endpoint and revenue
    /// shares) with the flags and sends one MsgStakeSupplier only when they differ, then
    /// waits for inclusion. Prints a JSON report (`unchanged` or `staked` with the tx
    /// hash). The operator runs it as a Job once the serve pods are ready, so the chain
    /// never advertises an endpoint that is not serving.
    Stake(StakeArgs),
    /// Start unbonding the supplier (a no-op when it is not staked or already unbonding).
    ///
    /// The operator runs it as a Job when a Supplier with `unstakeOnDelete: true` is
    /// deleted. Prints a JSON report (`unstaking` with the tx hash, or `unchanged`).
    Unstake(UnstakeArgs),
    /// Everything on one host: the store, serve, and a scheduler that runs the claim and
    /// prove passes as blocks arrive.
    ///
    /// For suppliers without Kubernetes and for the devnet. Takes serve's configuration
    /// (its `store` section is optional: run owns the store, on loopback, with a token it
    /// creates in the data directory). Claim and proof counters join serve's /metrics.
    Run(RunArgs),
    /// Digest model weights with BLAKE3: one line per file, then the model's digest.
    ///
    /// Prints `<blake3>  <size>  <path>` for every regular file under DIR, sorted by path
    /// (the manifest), then `model blake3:<digest of the manifest>`. With --expect, exits
    /// 1 unless the model's digest is that one: a pod's init step refuses to start an
    /// engine on weights that are not the ones its ServiceModel pins. Large files are
    /// memory-mapped and hashed on every core.
    Digest(DigestArgs),
    /// Fetch model weights once into a weight cache (a volume that outlives pods).
    ///
    /// Files land in <CACHE>/weights: every file of an hf://<org>/<name>[@<revision>]
    /// repository (or the --file ones), or the file at an https:// URL (or the --file
    /// ones under it). A file already there, as recorded in <CACHE>/fetch/state.json, is
    /// not fetched again, so a restarted pod needs no network; an interrupted download
    /// resumes with a Range request. Sizes are checked against what the server declares
    /// and against --max-gib before anything is written. A serving pod runs this before
    /// `relayminer digest`.
    Fetch(FetchArgs),
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// hf://<org>/<name>[@<revision>] (revision `main` by default) or an https:// URL.
    uri: String,
    /// The weight cache; the files land in <CACHE>/weights.
    #[arg(long)]
    cache: PathBuf,
    /// A file to fetch, relative to the repository or URL (repeat); default: every file
    /// of the repository.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<String>,
    /// The hub, or a mirror in its URL layout (`/api/models/<repo>/revision/<rev>`,
    /// `/<repo>/resolve/<rev>/<file>`).
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    hub: String,
    /// A hub token for gated or private repositories (sent to the hub only).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The most the weights may take, in GiB.
    #[arg(long, default_value_t = 2048)]
    max_gib: u64,
    /// Give up on (and resume) a response that sends nothing for this long.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
    /// Attempts per file.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    /// Names this fetcher's partial-download folder, so pods sharing the cache never
    /// write the same file (the pod's name).
    #[arg(long, env = "POD_NAME", default_value = "local")]
    worker: String,
}

#[derive(clap::Args, Debug)]
struct DigestArgs {
    /// The model directory (a PVC, an image's /model, a download).
    dir: PathBuf,
    /// The digest the weights must have (`blake3:<64 hex digits>`, or the hex alone).
    #[arg(long, value_name = "DIGEST")]
    expect: Option<String>,
    /// Also write the outcome as one line to FILE (repeat for several): `blake3:<digest>`,
    /// or why the weights were refused. A pod's init step writes it to its termination
    /// message (/dev/termination-log), where the operator reads it into the
    /// ServiceModel's status, and to a file serve shows on /metrics.
    #[arg(long, value_name = "FILE")]
    report: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct JobArgs {
    /// serve's configuration file (lode or poktroll YAML): the chain endpoints, store and
    /// keys are read from it; the flags below override it.
    #[arg(long, env = "LODE_SERVE_CONFIG")]
    config: Option<PathBuf>,
    /// With a poktroll config: directory holding one key file per signing key name.
    #[arg(long, env = "LODE_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Cosmos/poktroll gRPC of a node, e.g. http://node:9090.
    #[arg(long, env = "LODE_CHAIN_GRPC")]
    chain_grpc: Option<String>,
    /// CometBFT RPC of a node, e.g. http://node:26657.
    #[arg(long, env = "LODE_CHAIN_RPC")]
    chain_rpc: Option<String>,
    /// Refuse to sign unless the node is on this chain (e.g. pocket).
    #[arg(long, env = "LODE_CHAIN_ID")]
    chain_id: Option<String>,
    /// The store's gRPC URL, e.g. http://supplier-store:7070.
    #[arg(long, env = "LODE_STORE_URL")]
    store: Option<String>,
    /// File holding the store's token (a mounted Secret).
    #[arg(long, env = "LODE_STORE_TOKEN_FILE")]
    store_token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the store's TLS certificate (the store URL is then
    /// https://).
    #[arg(long, env = "LODE_STORE_CA_FILE")]
    store_ca_file: Option<PathBuf>,
    /// The name the store's certificate carries [default: store.lode.internal].
    #[arg(long, env = "LODE_STORE_TLS_NAME")]
    store_tls_name: Option<String>,
    /// Supplier operator key file (hex, or `pocketd keys export` armor with
    /// LODE_KEY_PASSPHRASE); repeat for several suppliers.
    #[arg(long = "key-file", env = "LODE_KEY_FILES", value_delimiter = ',')]
    key_files: Vec<PathBuf>,
    #[command(flatten)]
    tx: TxArgs,
    /// Also write the pass's summary (JSON, under 4 KiB: the latest session acted on,
    /// counts by outcome, the first errors) to this file, e.g. /dev/termination-log, where
    /// Kubernetes keeps it in the pod's status for the operator.
    #[arg(long, env = "LODE_REPORT_FILE")]
    report_file: Option<PathBuf>,
}

/// The node and key of `stake` and `unstake`.
#[derive(clap::Args, Debug)]
struct SignerArgs {
    /// Cosmos/poktroll gRPC of a node.
    #[arg(long, env = "LODE_CHAIN_GRPC")]
    chain_grpc: String,
    /// CometBFT RPC of a node.
    #[arg(long, env = "LODE_CHAIN_RPC")]
    chain_rpc: String,
    /// Refuse to sign unless the node is on this chain.
    #[arg(long, env = "LODE_CHAIN_ID")]
    chain_id: Option<String>,
    /// The operator's key file (hex or `pocketd keys export` armor with
    /// LODE_KEY_PASSPHRASE).
    #[arg(long, env = "LODE_KEY_FILE")]
    key_file: PathBuf,
}

impl SignerArgs {
    fn key(&self) -> anyhow::Result<lode_kernels::crypto::SecretKey> {
        let passphrase = std::env::var("LODE_KEY_PASSPHRASE").ok();
        Ok(lode_chain_tx::keys::load_key(
            &self.key_file,
            passphrase.as_deref(),
        )?)
    }

    fn config(&self, fees: &FeeArgs) -> lode_relayminer::stake::StakeConfig {
        lode_relayminer::stake::StakeConfig {
            grpc_url: self.chain_grpc.clone(),
            rpc_url: self.chain_rpc.clone(),
            chain_id: self.chain_id.clone(),
            gas_adjustment: fees.gas_adjustment,
            gas_price: fees.gas_price,
            max_fee_upokt: fees.max_fee_upokt,
            poll: Duration::from_millis(500),
        }
    }
}

#[derive(clap::Args, Debug)]
struct StakeArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// The wanted state as one JSON document (what the operator's stake Job passes):
    /// {"operator","owner","stake_upokt":"<uPOKT>","services":[{"service_id","url",
    /// "rev_share":[{"address","percent"}]}]}. Instead of the flags below.
    #[arg(long, env = "LODE_STAKE_SPEC", conflicts_with_all = ["owner", "stake_upokt", "services", "rev_shares"])]
    spec: Option<String>,
    /// The owner address (default: the operator, custodial staking).
    #[arg(long, env = "LODE_OWNER")]
    owner: Option<String>,
    /// Stake in uPOKT.
    #[arg(long, env = "LODE_STAKE_UPOKT", required_unless_present = "spec")]
    stake_upokt: Option<u128>,
    /// A service and its public endpoint, `SERVICE_ID=URL`; repeat for several.
    #[arg(
        long = "service",
        env = "LODE_SERVICES",
        value_delimiter = ',',
        required_unless_present = "spec"
    )]
    services: Vec<String>,
    /// A revenue share, `SERVICE_ID:ADDRESS=PERCENT`; repeat for several.
    #[arg(long = "rev-share", env = "LODE_REV_SHARES", value_delimiter = ',')]
    rev_shares: Vec<String>,
    #[command(flatten)]
    fees: FeeArgs,
}

/// What a transaction may cost.
#[derive(clap::Args, Debug)]
struct FeeArgs {
    /// Simulated gas is multiplied by this.
    #[arg(long, default_value_t = 1.5, env = "LODE_GAS_ADJUSTMENT")]
    gas_adjustment: f64,
    /// Fee per unit of gas, in uPOKT.
    #[arg(long, default_value_t = 0.0001, env = "LODE_GAS_PRICE")]
    gas_price: f64,
    /// The largest fee signed, in uPOKT: a transaction whose simulated gas would cost
    /// more is refused before it is signed (a node lying in simulation cannot spend the
    /// key's balance).
    #[arg(long, default_value_t = lode_chain_tx::DEFAULT_MAX_FEE_UPOKT, env = "LODE_MAX_FEE_UPOKT")]
    max_fee_upokt: u128,
}

#[derive(clap::Args, Debug)]
struct UnstakeArgs {
    #[command(flatten)]
    signer: SignerArgs,
    #[command(flatten)]
    fees: FeeArgs,
}

async fn unstake(a: UnstakeArgs) -> anyhow::Result<()> {
    let config = a.signer.config(&a.fees);
    let report = lode_relayminer::stake::unstake(&config, a.signer.key()?).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The wanted on-chain state: `--spec`, or built from `relayminer stake`'s flags.
fn stake_spec(a: &StakeArgs, operator: &str) -> anyhow::Result<StakeSpec> {
    if let Some(json) = &a.spec {
        return StakeSpec::from_json(json).context("--spec");
    }
    let mut services = Vec::new();
    for s in &a.services {
        let (id, url) = s
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--service {s:?} is not SERVICE_ID=URL"))?;
        services.push(ServiceStake {
            service_id: id.to_string(),
            url: url.to_string(),
            rev_share: Vec::new(),
        });
    }
    for r in &a.rev_shares {
        let parsed = r
            .split_once(':')
            .and_then(|(id, rest)| rest.split_once('=').map(|(addr, pct)| (id, addr, pct)))
            .and_then(|(id, addr, pct)| pct.parse::<u64>().ok().map(|p| (id, addr, p)));
        let (id, addr, pct) = parsed.ok_or_else(|| {
            anyhow::anyhow!("--rev-share {r:?} is not SERVICE_ID:ADDRESS=PERCENT")
        })?;
        let svc = services
            .iter_mut()
            .find(|s| s.service_id == id)
            .ok_or_else(|| anyhow::anyhow!("--rev-share {r:?}: no --service {id}"))?;
        svc.rev_share.push(RevShare {
            address: addr.to_string(),
            percent: pct,
        });
    }
    let spec = StakeSpec {
        operator: operator.to_string(),
        owner: a.owner.clone().unwrap_or_else(|| operator.to_string()),
        stake_upokt: a.stake_upokt.unwrap_or_default(),
        services,
    };
    spec.validate()?;
    Ok(spec)
}

async fn stake(a: StakeArgs) -> anyhow::Result<()> {
    let key = a.signer.key()?;
    let operator = key.public_key().address().to_bech32("pokt");
    let spec = stake_spec(&a, &operator)?;
    let config = a.signer.config(&a.fees);
    let report = lode_relayminer::stake::stake(&config, key, &spec).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(clap::Args, Debug)]
struct TxArgs {
    #[command(flatten)]
    fees: FeeArgs,
    /// How long a pass keeps retrying while the chain node or the store is unreachable.
    #[arg(long, default_value_t = 300, env = "LODE_OUTAGE_BUDGET_SECONDS")]
    outage_budget_seconds: u64,
    /// Put SiblingData in proofs (bigger transactions; the chain accepts both).
    #[arg(long)]
    sibling_data: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// serve's configuration (lode or poktroll YAML); `store` may be left out.
    #[arg(long, env = "LODE_SERVE_CONFIG")]
    config: PathBuf,
    /// With a poktroll config: directory holding one key file per signing key name.
    #[arg(long, env = "LODE_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// The store's database and token.
    #[arg(long, env = "LODE_DATA_DIR", default_value = "/var/lib/lode")]
    data_dir: PathBuf,
    /// The store's gRPC address (loopback: only this process uses it).
    #[arg(long, default_value = "127.0.0.1:7070")]
    store_listen: SocketAddr,
    /// The store's admin address (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9092")]
    store_admin: SocketAddr,
    /// Refuse to sign unless the node is on this chain.
    #[arg(long, env = "LODE_CHAIN_ID")]
    chain_id: Option<String>,
    #[arg(long, value_enum, default_value_t = Fsync::Always, env = "LODE_STORE_FSYNC")]
    fsync: Fsync,
    #[command(flatten)]
    tx: TxArgs,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file: lode's serve YAML, or poktroll's relayminer config.yaml.
    #[arg(long, env = "LODE_SERVE_CONFIG")]
    config: PathBuf,
    /// With a poktroll config: directory holding one key file per signing key name
    /// (hex, or `pocketd keys export` armor with LODE_KEY_PASSPHRASE).
    #[arg(long, env = "LODE_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Print the configuration as lode understood it and exit.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// Directory of the RocksDB database (a PersistentVolume in Kubernetes).
    #[arg(
        long,
        env = "LODE_STORE_DATA_DIR",
        default_value = "/var/lib/lode/store"
    )]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, env = "LODE_STORE_LISTEN", default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(long, env = "LODE_STORE_ADMIN", default_value = "0.0.0.0:9090")]
    admin: SocketAddr,
    /// File holding the token callers must present (mounted from a Secret).
    #[arg(long, env = "LODE_STORE_TOKEN_FILE")]
    token_file: PathBuf,
    /// When an append is acknowledged: after an fsync of the write-ahead log (loses
    /// nothing acknowledged), or once in the OS page cache (survives a process crash,
    /// not a power cut).
    #[arg(long, value_enum, default_value_t = Fsync::Always, env = "LODE_STORE_FSYNC")]
    fsync: Fsync,
    /// Supplier operator address this store serves (repeat for several; none: any).
    /// Requests for other suppliers are refused.
    #[arg(long = "supplier", env = "LODE_STORE_SUPPLIERS", value_delimiter = ',')]
    suppliers: Vec<String>,
    /// Block cache size in MiB (bounds memory with many sessions).
    #[arg(long, default_value_t = 64, env = "LODE_STORE_CACHE_MIB")]
    cache_mib: usize,
    /// Serve gRPC over TLS with this certificate chain (PEM; with --tls-key). lode's
    /// operator issues one per Supplier, so the token never crosses the pod network in
    /// the clear.
    #[arg(long, env = "LODE_STORE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "LODE_STORE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fsync {
    Always,
    Os,
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A log line that cannot be written (a full disk under the log file) is dropped: by
    // default the subscriber would report it with `eprintln!`, which panics when stderr
    // fails, taking down whichever thread logged (the store's writer, say).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn store(args: StoreArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token_file)?;
    #[cfg(unix)]
    report_file_size_limit()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let grpc = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding gRPC {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding admin {}", args.admin))?;
    let config = ServerConfig {
        data_dir: args.data_dir,
        token,
        durability: match args.fsync {
            Fsync::Always => Durability::Fsync,
            Fsync::Os => Durability::OsBuffered,
        },
        cache_bytes: args.cache_mib << 20,
        suppliers: args.suppliers,
        tls: args.tls_cert.zip(args.tls_key),
    };
    lode_store::run(config, grpc, admin, shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

/// A write past the process's file-size limit (`RLIMIT_FSIZE`) raises SIGXFSZ, which by
/// default kills the process mid-write. Handling it turns such writes into the I/O errors
/// a full disk gives, which the store reports (`/healthz`) and recovers from by reopening.
#[cfg(unix)]
fn report_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ)).context("handling SIGXFSZ")?;
    tokio::spawn(async move {
        while xfsz.recv().await.is_some() {
            tracing::error!("a write exceeded the file-size limit (RLIMIT_FSIZE) and failed");
        }
    });
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = lode_relayminer::serve::config::load(&args.config, args.keys_dir.as_deref())?;
    if args.check {
        // Secrets stay out of the printout.
        let shown = config.redacted();
        println!("{shown:#?}");
        return Ok(());
    }
    let handle = lode_relayminer::serve::start(config).await?;
    tracing::info!(relay = %handle.relay_addr, admin = %handle.admin_addr, "serving relays");
    shutdown_signal().await;
    Ok(handle.shutdown().await?)
}

impl TxArgs {
    fn apply(&self, c: &mut LifecycleConfig) {
        c.gas_adjustment = self.fees.gas_adjustment;
        c.gas_price = self.fees.gas_price;
        c.max_fee_upokt = self.fees.max_fee_upokt;
        c.outage_budget = Duration::from_secs(self.outage_budget_seconds);
        c.sibling_data = self.sibling_data;
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the store token from {}", path.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(!t.is_empty(), "the token file {} is empty", path.display());
    Ok(t)
}

/// The jobs' configuration: flags over the serve config.
fn job_config(args: &JobArgs) -> anyhow::Result<LifecycleConfig> {
    let serve = args
        .config
        .as_deref()
        .map(|p| lode_relayminer::serve::config::load(p, args.keys_dir.as_deref()))
        .transpose()?;
    let need = |flag: &str| {
        anyhow::anyhow!("{flag} is required (or --config with a serve configuration that has it)")
    };
    let grpc = args
        .chain_grpc
        .clone()
        .or_else(|| serve.as_ref().map(|s| s.chain.grpc_url.clone()))
        .ok_or_else(|| need("--chain-grpc"))?;
    let rpc = args
        .chain_rpc
        .clone()
        .or_else(|| serve.as_ref().map(|s| s.chain.rpc_url.clone()))
        .ok_or_else(|| need("--chain-rpc"))?;
    let store = args
        .store
        .clone()
        .or_else(|| serve.as_ref().map(|s| s.store.url.clone()))
        .ok_or_else(|| need("--store"))?;
    let token_file = args
        .store_token_file
        .clone()
        .or_else(|| serve.as_ref().map(|s| s.store.token_file.clone()))
        .ok_or_else(|| need("--store-token-file"))?;
    let files = if args.key_files.is_empty() {
        serve
            .as_ref()
            .map(|s| s.signing_key_files.clone())
            .unwrap_or_default()
    } else {
        args.key_files.clone()
    };
    anyhow::ensure!(
        !files.is_empty(),
        "no supplier key: give --key-file (or --config with signing_key_files)"
    );
    let passphrase = std::env::var("LODE_KEY_PASSPHRASE")
        .ok()
        .or_else(|| serve.as_ref().and_then(|s| s.key_passphrase.clone()));
    let mut keys = Vec::new();
    for f in &files {
        keys.push(lode_chain_tx::keys::load_key(f, passphrase.as_deref())?);
    }
    let mut c = LifecycleConfig::new(&grpc, &rpc, &store, &read_token(&token_file)?);
    c.keys = keys;
    // The store's TLS: the flags, else serve's configuration.
    let mut store_config = serve
        .as_ref()
        .map(|s| s.store.clone())
        .unwrap_or_else(|| StoreConfig::new(&store, &token_file));
    if let Some(ca) = &args.store_ca_file {
        store_config.ca_file = Some(ca.clone());
    }
    if let Some(name) = &args.store_tls_name {
        store_config.tls_server_name = Some(name.clone());
    }
    c.store_tls = lode_relayminer::serve::config::store_tls(&store_config);
    c.chain_id = args.chain_id.clone();
    args.tx.apply(&mut c);
    Ok(c)
}

/// Runs one pass, prints its JSON report, and exits 0 or 1.
async fn job(args: JobArgs, claim: bool) -> anyhow::Result<()> {
    let lifecycle = Lifecycle::new(job_config(&args)?)?;
    let report = if claim {
        lifecycle.claim().await
    } else {
        lifecycle.prove().await
    };
    lode_relayminer::lifecycle::report::log(&report);
    println!("{}", lode_contracts::to_json(&report));
    if let Some(f) = &args.report_file {
        // The summary: a termination message keeps only 4096 bytes of a full report.
        let summary = lode_contracts::to_json(&report.status_summary());
        std::fs::write(f, summary).with_context(|| format!("writing {}", f.display()))?;
    }
    tracing::info!("{}", report.summary());
    if report.failed() {
        eprintln!("{}", report.summary());
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Endpoints, store and keys come from the serve config; these are the rest.
    let mut lifecycle = LifecycleConfig::new("", "", "", "");
    lifecycle.chain_id = args.chain_id.clone();
    args.tx.apply(&mut lifecycle);
    let handle = lode_relayminer::run::start(lode_relayminer::run::RunOptions {
        config: args.config,
        keys_dir: args.keys_dir,
        data_dir: args.data_dir,
        store_listen: args.store_listen,
        store_admin: args.store_admin,
        store_durability: match args.fsync {
            Fsync::Always => Durability::Fsync,
            Fsync::Os => Durability::OsBuffered,
        },
        lifecycle,
    })
    .await?;
    tracing::info!(relay = %handle.serve.relay_addr, admin = %handle.serve.admin_addr, store = %handle.store_addr, "running: serving relays, claiming and proving as blocks arrive");
    shutdown_signal().await;
    Ok(handle.shutdown().await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Store(args) => store(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Claim(args) => job(args, true).await,
        Command::Prove(args) => job(args, false).await,
        Command::Run(args) => run(args).await,
        Command::Stake(args) => stake(args).await,
        Command::Unstake(args) => unstake(args).await,
        Command::Digest(args) => digest(args),
        Command::Fetch(args) => fetch(args).await,
    }
}

async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    use lode_relayminer::fetch;
    anyhow::ensure!(
        !args.worker.is_empty()
            && args.worker.len() <= 253
            && args
                .worker
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--worker {:?}: letters, digits, '-', '_' and '.' only",
        args.worker
    );
    let source = fetch::Source::parse(&args.uri)?;
    let started = std::time::Instant::now();
    let report = fetch::fetch(
        &source,
        &fetch::Options {
            cache: args.cache.clone(),
            files: args.files,
            hub: args.hub,
            token: args.token.filter(|t| !t.is_empty()),
            max_bytes: args.max_gib.saturating_mul(1 << 30),
            stall: Duration::from_secs(args.stall_seconds.max(1)),
            attempts: args.attempts,
            worker: args.worker,
        },
    )
    .await
    .with_context(|| format!("fetching {}", args.uri))?;
    println!(
        "{} files in {}: {} fetched now ({} bytes, {:.1} s), {} already there",
        report.files,
        args.cache.join("weights").display(),
        report.downloaded,
        report.bytes,
        started.elapsed().as_secs_f64(),
        report.files - report.downloaded
    );
    Ok(())
}

fn digest(args: DigestArgs) -> anyhow::Result<()> {
    let outcome = digest_weights(&args);
    for report in &args.report {
        let line = match &outcome {
            Ok(digest) => format!("blake3:{digest}\n"),
            Err(e) => format!("{e:#}\n"),
        };
        std::fs::write(report, line)
            .with_context(|| format!("writing the report to {}", report.display()))?;
    }
    outcome.map(|_| ())
}

/// The weights' digest (hex), or why they are refused.
fn digest_weights(args: &DigestArgs) -> anyhow::Result<String> {
    use lode_relayminer::weights;
    let expect = match &args.expect {
        Some(e) => {
            let hex = e.strip_prefix("blake3:").unwrap_or(e).to_ascii_lowercase();
            anyhow::ensure!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "--expect {e:?} is not blake3:<64 hex digits>"
            );
            Some(hex)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let manifest = weights::digest_dir(&args.dir)?;
    let digest = weights::hex(&manifest.digest());
    print!("{}", manifest.text());
    println!("model blake3:{digest}");
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        files = manifest.files.len(),
        bytes = manifest.total_bytes(),
        seconds = secs,
        "digested the model's weights"
    );
    if let Some(want) = expect
        && want != digest
    {
        anyhow::bail!(
            "the weights in {} have digest blake3:{digest}, not the pinned blake3:{want}",
            args.dir.display()
        );
    }
    Ok(digest)
}
