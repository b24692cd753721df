//! `kubesim`: a Kubernetes API server on loopback, with a process kubelet.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use lode_kubesim::kubelet::{GpuNodePool, KubeletConfig};
use lode_kubesim::runtime::BinDir;
use lode_kubesim::{KubeSim, KubeSimOptions};

/// Serves enough of the Kubernetes API for kubectl and kube-rs controllers to work
/// unchanged (discovery, CRDs with schema and CEL validation, CRUD, list/watch,
/// server-side apply and patches, status and scale subresources, owner-reference garbage
/// collection, finalizers, Events, Leases), and runs pods as local processes: an image
/// `…/name:tag` runs the executable `name` from --bin-dir (rename with --image). It
/// writes a kubeconfig to <root>/kubeconfig:
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
    /// Directory of the executables images run as (default: the directory of this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// An image repository and the executable it runs as, `REPOSITORY=PROGRAM` (e.g.
    /// `gateway=lode-gateway`); repeat for several. Others run the executable of their
    /// own name.
    #[arg(long = "image", value_parser = parse_alias)]
    images: Vec<(String, String)>,
    /// GPUs the simulated node offers; pods asking for more stay Pending.
    #[arg(long, default_value_t = 8)]
    gpus: i64,
    /// Act as a node autoscaler: when a pod has waited this many seconds for GPUs, a
    /// GPU node joins (as Cluster Autoscaler or Karpenter would add one). Unset: never.
    #[arg(long)]
    gpu_node_delay_seconds: Option<u64>,
    /// GPUs of each node that joins.
    #[arg(long, default_value_t = 8)]
    gpu_node_gpus: i64,
    /// Nodes that may join, at most.
    #[arg(long = "gpu-nodes-max", default_value_t = 4)]
    gpu_nodes_max: usize,
    /// Serve the API only: no process kubelet, no service proxy.
    #[arg(long)]
    no_kubelet: bool,
    /// CRD files to install at start (e.g. crds/*.yaml).
    #[arg(long = "crd")]
    crds: Vec<PathBuf>,
}

fn parse_alias(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(r, p)| !r.is_empty() && !p.is_empty())
        .map(|(r, p)| (r.to_string(), p.to_string()))
        .ok_or_else(|| format!("{s:?} is not REPOSITORY=PROGRAM"))
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
            runtime: std::sync::Arc::new(BinDir {
                dir: bin_dir,
                aliases: a.images.into_iter().collect(),
            }),
            root: root.clone(),
            gpus: a.gpus,
            pod_net: 0,
            gpu_nodes: a.gpu_node_delay_seconds.map(|d| GpuNodePool {
                delay: std::time::Duration::from_secs(d),
                gpus: a.gpu_node_gpus,
                max: a.gpu_nodes_max,
            }),
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
