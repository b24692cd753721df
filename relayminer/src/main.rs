//! `relayminer`: everything a POKT supplier runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fsync {
    Always,
    Os,
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the store token from {}", args.token_file.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        args.token_file.display()
    );
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
    };
    lode_store::run(config, grpc, admin, shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = lode_relayminer::serve::ServeConfig::load(&args.config, args.keys_dir.as_deref())?;
    if args.check {
        // Secrets stay out of the printout.
        let mut shown = config.clone();
        if shown.key_passphrase.is_some() {
            shown.key_passphrase = Some("<redacted>".into());
        }
        for s in &mut shown.services {
            if let Some(a) = &mut s.basic_auth {
                a.password = "<redacted>".into();
            }
        }
        println!("{shown:#?}");
        return Ok(());
    }
    let handle = lode_relayminer::serve::start(config).await?;
    tracing::info!(relay = %handle.relay_addr, admin = %handle.admin_addr, "serving relays");
    shutdown_signal().await;
    handle.shutdown().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Store(args) => store(args).await,
        Command::Serve(args) => serve(args).await,
    }
}
