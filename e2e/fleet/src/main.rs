//! `lode-fleet`: the whole lode fleet on one machine, no cluster and no chain needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lode_fleet::{Fleet, FleetOptions};

/// Starts a local POKT chain (devnet), a Kubernetes API (kubesim) whose pods run as local
/// processes, and the lode operator; applies a sample Supplier, ServiceModel and
/// GatewayPool (engine-sim standing in for vLLM); sends a first request through the
/// gateway; then prints a live summary (relays, mined, claims, proofs, rewards,
/// replicas) until Ctrl-C, which stops everything.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Working directory: kubeconfig, sample manifests, pod directories and logs.
    #[arg(long, default_value = "target/fleet")]
    root: PathBuf,
    /// Directory with the built binaries (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Kubernetes API address.
    #[arg(long, default_value = "127.0.0.1:16443")]
    api: SocketAddr,
    /// Chain CometBFT RPC address.
    #[arg(long, default_value = "127.0.0.1:36657")]
    rpc: SocketAddr,
    /// Chain gRPC address.
    #[arg(long, default_value = "127.0.0.1:39090")]
    grpc: SocketAddr,
    /// Seconds between blocks (sessions are 10 blocks).
    #[arg(long, default_value_t = 1.0)]
    block_seconds: f64,
    /// GPUs of the simulated node.
    #[arg(long, default_value_t = 8)]
    gpus: i64,
    /// OpenAI endpoint port on 127.0.0.1 (the gateway's NodePort).
    #[arg(long, default_value_t = 30080)]
    gateway_port: u16,
    /// Relay endpoint port on 127.0.0.1 (the supplier's staked NodePort).
    #[arg(long, default_value_t = 30545)]
    relay_port: u16,
    /// Write the sample manifests but do not apply them (apply them with kubectl).
    #[arg(long)]
    no_samples: bool,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5)]
    summary_seconds: u64,
    /// Chat completions per second the fleet sends itself through the gateway, so
    /// sessions fill and claims and proofs follow (0: none).
    #[arg(long, default_value_t = 2.0)]
    rps: f64,
    /// Share of those requests that stream (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    stream_share: f64,
    /// Append each container's resident memory and the request counters to this CSV
    /// every 10 s (for soak runs: `scripts/soak.sh`).
    #[arg(long)]
    rss_log: Option<PathBuf>,
    /// Extra `engine-sim` arguments for every engine pod (repeat), e.g.
    /// `--engine-arg=--ttft-ms=500` to make requests stay in flight longer.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    engine_args: Vec<String>,
    /// The engine of the sample ServiceModel: `sim` (engine-sim standing in for vLLM on a
    /// simulated GPU) or `llamacpp` (llama.cpp's real server on CPUs, serving a tiny
    /// model with random weights the fleet writes; needs --llama-server).
    #[arg(long, value_enum, default_value_t = Engine::Sim)]
    engine: Engine,
    /// llama.cpp's `llama-server` binary for `--engine llamacpp` (scripts/setup.sh
    /// builds one and exports its path).
    #[arg(long, env = "LODE_LLAMA_SERVER")]
    llama_server: Option<PathBuf>,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    exit_after: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Engine {
    Sim,
    Llamacpp,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lode_kubesim::init_tracing("warn");
    let a = Args::parse();
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => lode_kubesim::default_bin_dir()?,
    };
    anyhow::ensure!(a.block_seconds > 0.0, "--block-seconds must be positive");
    let mut o = FleetOptions::new(a.root, bin_dir);
    o.api = a.api;
    o.rpc = a.rpc;
    o.grpc = a.grpc;
    o.block_time = Duration::from_secs_f64(a.block_seconds);
    o.gpus = a.gpus;
    o.gateway_port = a.gateway_port;
    o.relay_port = a.relay_port;
    o.apply_samples = !a.no_samples;
    o.engine_args = a.engine_args;
    o.engine = match a.engine {
        Engine::Sim => lode_fleet::FleetEngine::Sim,
        Engine::Llamacpp => {
            let server = a.llama_server.ok_or_else(|| {
                anyhow::anyhow!(
                    "--engine llamacpp needs llama.cpp's server: --llama-server PATH or \
                     LODE_LLAMA_SERVER (source scripts/setup.sh to build one)"
                )
            })?;
            anyhow::ensure!(
                server.is_file(),
                "--llama-server {}: no such file",
                server.display()
            );
            lode_fleet::FleetEngine::Llamacpp(server)
        }
    };
    let fleet = Fleet::start(o).await?;
    println!("{}", fleet.instructions());
    let stop = async {
        if a.exit_after > 0 {
            tokio::time::sleep(Duration::from_secs(a.exit_after)).await;
        } else {
            // Ctrl-C or SIGTERM: either stops everything the same way.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::pin!(stop);
    if !a.no_samples {
        tokio::select! {
            r = fleet.first_relay(Duration::from_secs(120)) => match r {
                Ok(t) => println!("first relay served {:.1} s after start", t.as_secs_f64()),
                Err(e) => println!("no relay served within 120 s: {e} (see {}/operator.log and kubectl get pods)", fleet.options.root.display()),
            },
            _ = &mut stop => {
                println!("stopping");
                fleet.shutdown().await;
                return Ok(());
            }
        }
    }
    let load = (a.rps > 0.0 && !a.no_samples).then(|| fleet.start_load(a.rps, a.stream_share));
    let rss = a
        .rss_log
        .map(|p| fleet.start_rss_log(p, Duration::from_secs(10)));
    let mut tick = tokio::time::interval(Duration::from_secs(a.summary_seconds.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("{}", fleet.summary().await),
            _ = &mut stop => break,
        }
    }
    for task in load.iter().chain(rss.iter()) {
        task.abort();
    }
    println!("stopping: pods, operator, API, chain");
    fleet.shutdown().await;
    Ok(())
}
