//! `kubesim`: a Kubernetes API server on loopback, with a process kubelet.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use lode_kubesim::kubelet::KubeletConfig;
use lode_kubesim::{KubeSim, KubeSimOptions};

/// Serves enough of the Kubernetes API for kubectl and the lode operator to work
/// unchanged (discovery, CRDs with schema and CEL validation, CRUD, list/watch,
/// server-side apply and patches, status and scale subresources, owner-reference garbage
/// collection, finalizers, Events, Leases), and runs pods as local processes of lode's
/// binaries. It writes a kubeconfig to <root>/kubeconfig:
///
///     export KUBECONFIG=<root>/kubeconfig; kubectl get pods -A
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// API server address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for the kubeconfig, pod directories, logs and volumes.
    #[arg(long, default_value = "target/kubesim")]
    root: PathBuf,
    /// Directory with the built `relayminer`, `lode-gateway`, `lode-operator` and
    /// `engine-sim` binaries (default: the directory of this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// GPUs the simulated node offers; pods asking for more stay Pending.
    #[arg(long, default_value_t = 8)]
    gpus: i64,
    /// Serve the API only: no process kubelet, no service proxy.
    #[arg(long)]
    no_kubelet: bool,
    /// CRD files to install at start (e.g. crds/*.yaml).
    #[arg(long = "crd")]
    crds: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lode_kubesim::init_tracing("info");
    let a = Args::parse();
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => lode_kubesim::default_bin_dir()?,
    };
    let root = std::path::absolute(&a.root)?;
    let sim = KubeSim::start(KubeSimOptions {
        listen: a.listen,
        root: root.clone(),
        kubelet: (!a.no_kubelet).then(|| KubeletConfig {
            bin_dir,
            root: root.clone(),
            gpus: a.gpus,
            engine_args: Vec::new(),
            pod_net: 0,
        }),
        crds: a.crds,
        networks: lode_kubesim::networks(),
    })
    .await?;
    eprintln!(
        "kubesim API on http://{}; export KUBECONFIG={}",
        sim.addr,
        sim.kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping pods");
    sim.shutdown().await;
    Ok(())
}
