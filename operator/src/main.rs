//! `lode-operator`: runs the controllers, or prints the CRDs and the objects custom
//! resources stand for.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lode_operator::build::Images;

#[derive(Parser, Debug)]
#[command(
    name = "lode-operator",
    version,
    about = "lode's Kubernetes operator for POKT inference suppliers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig (or the
    /// in-cluster service account).
    ///
    /// Reconciles ServiceModels into serving pods, Suppliers into their session store,
    /// GatewayPools into gateways; reports status conditions and Events.
    Run {
        #[command(flatten)]
        images: ImageArgs,
        /// Log as JSON lines.
        #[arg(long, env = "LODE_LOG_JSON")]
        log_json: bool,
        /// How often the window scheduler checks each Supplier's chain height.
        #[arg(long, default_value_t = 5, env = "LODE_SCHEDULER_SECONDS")]
        scheduler_seconds: u64,
        /// Seconds between demand-autoscaler passes (each reads every serving pod's
        /// `/demand`).
        #[arg(long, default_value_t = 1, env = "LODE_AUTOSCALE_SECONDS")]
        autoscale_seconds: u64,
        /// Admin address: /metrics, /healthz, /readyz.
        #[arg(long, default_value = "0.0.0.0:9096", env = "LODE_OPERATOR_ADMIN")]
        admin: std::net::SocketAddr,
        /// Namespace of the leader-election Lease (the operator's own).
        #[arg(long, default_value = "default", env = "POD_NAMESPACE")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "lode-operator")]
        lease_name: String,
        /// This replica's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
    },
    /// Print the CustomResourceDefinitions (Supplier, ServiceModel, GatewayPool) as YAML,
    /// ready for `kubectl apply -f -`.
    Crds,
    /// Print the Kubernetes objects custom resources stand for, without a cluster.
    ///
    /// Reads Supplier, ServiceModel and GatewayPool documents (several per file, `---`
    /// separated) and prints what the operator would apply: the store StatefulSet,
    /// Service, token Secret and NetworkPolicy of each Supplier; the Deployment, Service,
    /// PodDisruptionBudget and serve ConfigMap of each ServiceModel a Supplier lists; the
    /// gateway Deployment, Service and ConfigMap of each GatewayPool.
    Render {
        /// Files with custom resources (`-` for standard input).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of resources that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Also print each Supplier's stake Job, and its claim and prove Jobs as the
        /// scheduler would start them for windows opening at this height.
        #[arg(long, value_name = "HEIGHT")]
        window_jobs_at: Option<i64>,
        #[command(flatten)]
        images: ImageArgs,
    },
}

#[derive(clap::Args, Debug)]
struct ImageArgs {
    /// Image of `relayminer` (serve sidecar, store, claim/prove Jobs).
    #[arg(long, env = "LODE_RELAYMINER_IMAGE")]
    relayminer_image: Option<String>,
    /// Image of `lode-gateway`.
    #[arg(long, env = "LODE_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
}

impl ImageArgs {
    fn images(&self) -> Images {
        let mut i = Images::default();
        if let Some(r) = &self.relayminer_image {
            i.relayminer = r.clone();
        }
        if let Some(g) = &self.gateway_image {
            i.gateway = g.clone();
        }
        i
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            images,
            log_json,
            scheduler_seconds,
            autoscale_seconds,
            admin,
            lease_namespace,
            lease_name,
            identity,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            // An unwritable log line is dropped, not reported with a panicking `eprintln!`.
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .log_internal_errors(false);
            if log_json {
                builder.json().init();
            } else {
                builder.init();
            }
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the cluster (kubeconfig or in-cluster)")?;
                let images = images.images();
                let ctx = lode_operator::controller::Context::new(client.clone(), images.clone());
                let listener = tokio::net::TcpListener::bind(admin)
                    .await
                    .with_context(|| format!("binding the admin port {admin}"))?;
                tokio::spawn(lode_operator::admin::serve(listener, ctx.metrics.clone()));
                let identity = identity.unwrap_or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_else(|_| format!("lode-operator-{}", std::process::id()))
                });
                let lock = lode_operator::leader::LeaseLock::new(
                    client.clone(),
                    &lease_namespace,
                    &lease_name,
                    &identity,
                    std::time::Duration::from_secs(15),
                );
                tracing::info!(%identity, lease = %lease_name, "waiting to lead");
                lock.acquire().await;
                ctx.metrics.leader.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(%identity, "leading: reconciling and scheduling");
                let scheduler = tokio::spawn(lode_operator::scheduler::run(
                    client,
                    images,
                    std::time::Duration::from_secs(scheduler_seconds.max(1)),
                    ctx.metrics.clone(),
                ));
                let autoscaler = tokio::spawn(lode_operator::autoscale::run(
                    ctx.clone(),
                    std::time::Duration::from_secs(autoscale_seconds.max(1)),
                ));
                tokio::select! {
                    _ = lode_operator::controller::run(ctx) => {}
                    _ = lock.hold() => {
                        // Another replica may lead now: stop at once rather than race it.
                        anyhow::bail!("lost the leader Lease {lease_name}; exiting so a fresh start waits its turn");
                    }
                }
                scheduler.abort();
                autoscaler.abort();
                anyhow::Ok(())
            })
        }
        Command::Crds => {
            let docs: Vec<String> = lode_crds::manifests().into_iter().map(|(_, y)| y).collect();
            print!("{}", docs.join("---\n"));
            Ok(())
        }
        Command::Render {
            files,
            namespace,
            window_jobs_at,
            images,
        } => {
            let mut text = String::new();
            for f in &files {
                let t = if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).context("reading standard input")?
                } else {
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?
                };
                text.push_str(&t);
                text.push_str("\n---\n");
            }
            let resources = lode_operator::render::parse(&text, &namespace)?;
            let images = images.images();
            let (mut objects, notes) = lode_operator::render::render(&resources, &images)?;
            if let Some(h) = window_jobs_at {
                objects.extend(lode_operator::render::window_jobs(&resources, h, &images)?);
            }
            for n in notes {
                eprintln!("note: {n}");
            }
            print!("{}", lode_operator::render::to_yaml(&objects));
            Ok(())
        }
    }
}
