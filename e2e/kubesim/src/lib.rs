//! `kubesim`: a Kubernetes API emulator on loopback that kubectl and kube-rs clients use
//! through an ordinary kubeconfig, with a process kubelet that runs pods as local
//! processes (what an image runs as is a [`runtime::Runtime`]'s answer). It knows nothing
//! of lode: lode's fleet (`e2e/fleet`) brings the runtime for lode's images. What is
//! simplified is listed in `e2e/kubesim/README.md`.

pub mod api;
pub mod cel;
pub mod controllers;
pub mod kubelet;
pub mod patch;
pub mod proxy;
pub mod resources;
pub mod runtime;
pub mod schema;
pub mod select;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::kubelet::{Kubelet, KubeletConfig};
use crate::resources::Res;
use crate::store::{FieldValidation, Store};

/// What to start.
#[derive(Clone, Debug)]
pub struct KubeSimOptions {
    pub listen: SocketAddr,
    /// Pod directories, volumes and the kubeconfig go here.
    pub root: PathBuf,
    /// Run pods (None: API server and controllers only).
    pub kubelet: Option<KubeletConfig>,
    /// CRD files installed at start.
    pub crds: Vec<PathBuf>,
    /// Second octets of pod IPs and cluster IPs (see `networks`).
    pub networks: (u8, u8),
}

/// Loopback networks for pod IPs and cluster IPs (`127.<p>.x.y`, `127.<s>.x.y`), different
/// for each process so two kubesims on one machine do not collide.
pub fn networks() -> (u8, u8) {
    let p = 2 + 2 * (std::process::id() % 120) as u8;
    (p, p + 1)
}

/// A running kubesim.
#[derive(Debug)]
pub struct KubeSim {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub kubeconfig: PathBuf,
    kubelet: Option<Arc<Kubelet>>,
    tasks: Vec<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The directory of the running binary (where cargo puts the other binaries too).
pub fn default_bin_dir() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default())
}

/// Logs to stderr, `RUST_LOG` or `default` filtering.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Writes a kubeconfig for `addr` (context `kubesim`, namespace `ns`).
pub fn write_kubeconfig(path: &Path, addr: SocketAddr, ns: &str) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: kubesim\n  user:\n    token: kubesim\n\
         contexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: {ns}\n\
         current-context: kubesim\n"
    );
    std::fs::write(path, text)
}

/// Parses a multi-document YAML file into objects.
pub fn read_objects(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
        {
            continue;
        }
        let v: serde_json::Value = serde_saphyr::from_str(doc)
            .with_context(|| format!("parsing a document of {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

impl KubeSim {
    pub async fn start(opts: KubeSimOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.root)
            .with_context(|| format!("creating {}", opts.root.display()))?;
        let store = Arc::new(Store::new(opts.kubelet.is_some(), opts.networks.1));
        for f in &opts.crds {
            for crd in read_objects(f)? {
                store
                    .create(
                        &Res::new("apiextensions.k8s.io", "customresourcedefinitions"),
                        None,
                        crd,
                        FieldValidation::Strict,
                    )
                    .map_err(|e| anyhow::anyhow!("installing {}: {e}", f.display()))?;
            }
        }
        let kubelet = opts.kubelet.clone().map(|mut k| {
            k.pod_net = opts.networks.0;
            Kubelet::new(store.clone(), k)
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = api::Api {
            store: store.clone(),
            pods_dir: kubelet.as_ref().map(|k| k.pods_dir()),
        };
        let (addr, server) = api::serve(api, opts.listen, async {
            let _ = stop_rx.await;
        })
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
        if let Some(k) = &kubelet {
            let host = if addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            k.set_api_url(format!("http://{host}"));
        }
        let kubeconfig = opts.root.join("kubeconfig");
        write_kubeconfig(&kubeconfig, addr, "default")?;
        let mut tasks = vec![server];
        let controllers = Arc::new(controllers::Controllers::new(store.clone()));
        tasks.push(tokio::spawn(controllers.run(Duration::from_millis(200))));
        if let Some(k) = &kubelet {
            tasks.push(tokio::spawn(k.clone().run(Duration::from_millis(200))));
            tasks.push(tokio::spawn(
                proxy::Proxy::new(store.clone()).run(Duration::from_millis(250)),
            ));
        }
        Ok(Self {
            addr,
            store,
            kubeconfig,
            kubelet,
            tasks,
            stop: Some(stop_tx),
        })
    }

    /// Stops the pods (gracefully), then the server and controllers.
    pub async fn shutdown(mut self) {
        for t in self.tasks.iter().skip(1) {
            t.abort();
        }
        if let Some(k) = &self.kubelet {
            k.shutdown().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}
