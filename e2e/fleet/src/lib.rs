//! The local fleet: devnet (the chain) + kubesim (API server, controllers, process
//! kubelet, service proxy) running lode's images as the workspace's binaries
//! ([`images`]) + the real `lode-operator` binary, with sample resources for one supplier
//! serving one model behind one gateway. Everything binds loopback. The system tests in
//! `tests/` (the fleet, chaos, autoscaling, the chart, the claim/prove lifecycle and the
//! gateway end to end) run on it or on the same parts.

pub mod hub;
pub mod images;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lode_devnet::{Devnet, DevnetConfig, HRP, Running};
use serde_json::{Value, json};

use lode_kubesim::kubelet::KubeletConfig;
use lode_kubesim::resources::Res;
use lode_kubesim::store::FieldValidation;
use lode_kubesim::{KubeSim, KubeSimOptions, read_objects};

use crate::images::LodeImages;

/// The CRDs, as committed under `crds/`.
pub const CRDS: [&str; 3] = [
    include_str!("../../../crds/suppliers.yaml"),
    include_str!("../../../crds/servicemodels.yaml"),
    include_str!("../../../crds/gatewaypools.yaml"),
];

/// The namespace the samples live in.
pub const NAMESPACE: &str = "lode";
/// The OpenAI model name the sample serves.
pub const MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";
/// The OpenAI model name of the llama.cpp sample (a tiny generated model).
pub const TINY_MODEL: &str = "lode/tiny-llama";
/// The tiny model's file in its PersistentVolumeClaim.
pub const TINY_MODEL_FILE: &str = "tiny-llama.gguf";
/// The script that writes the tiny model (the `gguf` package, seeded random weights).
pub const TINY_GGUF_SCRIPT: &str = include_str!("../../../scripts/tiny-gguf.py");

/// The engine the sample ServiceModel runs on.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum FleetEngine {
    /// `engine-sim` standing in for vLLM, one (simulated) GPU per pod.
    #[default]
    Sim,
    /// llama.cpp's own server (`llama-server` at this path) on CPUs, serving a tiny
    /// model the fleet generates into the ServiceModel's weights volume.
    Llamacpp(PathBuf),
}

/// The OpenAI API key of the fleet's gateway (in Secret `gateway-api-keys`).
pub const DEVNET_API_KEY: &str = "sk-lode-devnet";

/// What to start.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Kubeconfig, manifests, pod directories, logs, volumes.
    pub root: PathBuf,
    /// Directory of the built binaries.
    pub bin_dir: PathBuf,
    pub api: SocketAddr,
    pub rpc: SocketAddr,
    pub grpc: SocketAddr,
    pub block_time: Duration,
    pub gpus: i64,
    /// The gateway's NodePort on 127.0.0.1 (the OpenAI endpoint).
    pub gateway_port: u16,
    /// The relay NodePort on 127.0.0.1 (the supplier's staked endpoint).
    pub relay_port: u16,
    /// Apply the sample manifests at start (otherwise only write them).
    pub apply_samples: bool,
    /// Extra `engine-sim` arguments for every engine pod.
    pub engine_args: Vec<String>,
    /// The Supplier's `spec.store.relayPolicy` (`queue` or `hold`); unset: the default.
    pub relay_policy: Option<String>,
    /// The engine of the sample ServiceModel.
    pub engine: FleetEngine,
    /// The model hub the sample's weights are fetched from.
    pub hub: SocketAddr,
    /// How often the operator's autoscaler reads the demand, seconds.
    pub autoscale_seconds: u64,
    /// GPU nodes that join when engine pods wait for GPUs (a node autoscaler).
    pub gpu_nodes: Option<lode_kubesim::kubelet::GpuNodePool>,
}

impl FleetOptions {
    /// Defaults under `root`, with binaries from `bin_dir`.
    pub fn new(root: PathBuf, bin_dir: PathBuf) -> Self {
        Self {
            root,
            bin_dir,
            api: "127.0.0.1:16443".parse().expect("address"),
            rpc: "127.0.0.1:36657".parse().expect("address"),
            grpc: "127.0.0.1:39090".parse().expect("address"),
            block_time: Duration::from_secs(1),
            gpus: 8,
            gateway_port: 30080,
            relay_port: 30545,
            apply_samples: true,
            engine_args: Vec::new(),
            relay_policy: None,
            engine: FleetEngine::Sim,
            hub: "127.0.0.1:0".parse().expect("address"),
            autoscale_seconds: 1,
            gpu_nodes: None,
        }
    }

    /// The OpenAI model name the sample serves.
    pub fn model(&self) -> &'static str {
        match self.engine {
            FleetEngine::Sim => MODEL,
            FleetEngine::Llamacpp(_) => TINY_MODEL,
        }
    }

    /// The sample ServiceModel's name (and its Service's: kubesim maps Service names
    /// standing alone in a pod's configuration to their IPs, so it differs from
    /// anything else there, the model name included).
    pub fn service_model(&self) -> &'static str {
        match self.engine {
            FleetEngine::Sim => "qwen-7b",
            FleetEngine::Llamacpp(_) => "llamacpp-tiny",
        }
    }
}

/// Where the sample's weights come from: the fleet's model hub (on loopback, in the
/// Hugging Face hub's layout), and the digest the llama.cpp sample pins.
#[derive(Clone, Debug)]
pub struct SampleWeights {
    pub hub: SocketAddr,
    pub digest: Option<String>,
}

/// The hub repository of the llama.cpp sample's tiny model.
pub const TINY_MODEL_REPO: &str = "lode/tiny-llama";

/// The sample ServiceModel for the fleet's engine. Its weights are fetched from the
/// fleet's hub into the model's weight cache (a PersistentVolumeClaim the operator
/// creates) and digested before the engine starts.
fn service_model_manifest(o: &FleetOptions, w: &SampleWeights) -> String {
    let ns = NAMESPACE;
    let hub = w.hub;
    match &o.engine {
        FleetEngine::Sim => format!(
            "# {MODEL} on vLLM (engine-sim stands in for it here), one GPU per pod. Its weights\n\
             # (here a config file alone) come from the fleet's model hub, once, into a cache.\n\
             apiVersion: lode.pokt.network/v1alpha1\nkind: ServiceModel\nmetadata:\n  name: qwen-7b\n  namespace: {ns}\n\
             spec:\n  serviceId: llm\n  modelName: {MODEL}\n\
             \x20 model:\n    uri: \"hf://{MODEL}\"\n    cache: {{size: 1Gi, hubUrl: \"http://{hub}\"}}\n\
             \x20 engine:\n    kind: vllm\n  gpus: {{count: 1}}\n  minReplicas: 2\n  maxReplicas: 4\n"
        ),
        FleetEngine::Llamacpp(_) => format!(
            "# A tiny llama (2 layers, random weights, written by scripts/tiny-gguf.py) on\n\
             # llama.cpp's own server, on CPUs. Its one file comes from the fleet's model hub,\n\
             # once, into a cache; the pods check it against the pinned digest before the\n\
             # engine starts.\n\
             apiVersion: lode.pokt.network/v1alpha1\nkind: ServiceModel\nmetadata:\n  name: llamacpp-tiny\n  namespace: {ns}\n\
             spec:\n  serviceId: llm\n  modelName: {TINY_MODEL}\n\
             \x20 model:\n    uri: \"hf://{TINY_MODEL_REPO}\"\n    file: {TINY_MODEL_FILE}\n{pin}\
             \x20   cache: {{size: 1Gi, hubUrl: \"http://{hub}\"}}\n\
             \x20 engine:\n    kind: llamacpp\n    args: [--parallel, \"2\", --threads, \"1\"]\n\
             \x20 gpus: {{count: 0}}\n  minReplicas: 1\n  maxReplicas: 2\n",
            pin = w
                .digest
                .as_ref()
                .map(|d| format!("    digest: \"{d}\"\n"))
                .unwrap_or_default(),
        ),
    }
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    pub devnet: Devnet,
    pub sim: KubeSim,
    pub manifests: PathBuf,
    pub options: FleetOptions,
    /// What the model hub served (the sample's weights, fetched once).
    pub hub: Arc<hub::HubCounters>,
    running: Running,
    operator: tokio::process::Child,
    started: Instant,
    load: Arc<LoadCounters>,
}

/// Requests the fleet's own load generator sent through the gateway.
#[derive(Debug, Default)]
pub struct LoadCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// The sample manifests for the running chain.
pub fn manifests(
    devnet: &Devnet,
    config: &DevnetConfig,
    running: &Running,
    o: &FleetOptions,
    weights: &SampleWeights,
) -> Vec<(String, String)> {
    let model = o.model();
    let service_model = o.service_model();
    let keys = devnet.keys();
    let addr = |k: &lode_kernels::crypto::SecretKey| k.public_key().address().to_bech32(HRP);
    let hex = |k: &lode_kernels::crypto::SecretKey| lode_kernels::hex::encode(&k.to_bytes());
    let (supplier, gateway, app) = (&keys.suppliers[0], &keys.gateways[0], &keys.applications[0]);
    let ns = NAMESPACE;
    let chain = format!(
        "  chain:\n    grpcUrl: {}\n    rpcUrl: {}\n    chainId: {}\n",
        running.grpc_url, running.rpc_url, config.chain_id
    );
    vec![
        (
            "00-namespace.yaml".into(),
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
        ),
        (
            "10-keys.yaml".into(),
            format!(
                "# Devnet test keys (seed {seed}): supplier 0's operator key and gateway 0's key.\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: supplier-key\n  namespace: {ns}\n\
                 stringData:\n  operator.key: \"{sk}\"\n---\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: gateway-key\n  namespace: {ns}\n\
                 stringData:\n  gateway.key: \"{gk}\"\n---\n\
                 # OpenAI API keys of the gateway: one entry per application, keys one per line.\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: gateway-api-keys\n  namespace: {ns}\n\
                 stringData:\n  {aa}: \"{DEVNET_API_KEY}\\n\"\n",
                seed = config.seed,
                sk = hex(supplier),
                gk = hex(gateway),
                aa = addr(app),
            ),
        ),
        (
            "20-servicemodel.yaml".into(),
            service_model_manifest(o, weights),
        ),
        (
            "30-supplier.yaml".into(),
            format!(
                "# Supplier 0 of the devnet, staked at the relay NodePort below.\n\
                 apiVersion: lode.pokt.network/v1alpha1\nkind: Supplier\nmetadata:\n  name: supplier-1\n  namespace: {ns}\n\
                 spec:\n  operatorAddress: {sa}\n  keySecretRef: {{name: supplier-key, key: operator.key}}\n\
                 \x20 stakeUpokt: \"100000000\"\n  services:\n    - serviceId: llm\n      serviceModel: {service_model}\n\
                 \x20 publicEndpoint: http://127.0.0.1:{rp}\n{chain}  store:\n    size: 1Gi\n{policy}---\n\
                 # The supplier's public relay endpoint: a NodePort in front of its serving pods.\n\
                 apiVersion: v1\nkind: Service\nmetadata:\n  name: relay-public\n  namespace: {ns}\n\
                 spec:\n  type: NodePort\n  selector:\n    app.kubernetes.io/component: serve\n    lode.pokt.network/supplier: supplier-1\n\
                 \x20 ports:\n    - name: relay\n      port: 8545\n      targetPort: relay\n      nodePort: {rp}\n",
                sa = addr(supplier),
                rp = o.relay_port,
                policy = o
                    .relay_policy
                    .as_ref()
                    .map(|p| format!("    relayPolicy: {p}\n"))
                    .unwrap_or_default(),
            ),
        ),
        (
            "40-gatewaypool.yaml".into(),
            format!(
                "# Gateway 0 of the devnet serving application 0; OpenAI clients use the NodePort below.\n\
                 apiVersion: lode.pokt.network/v1alpha1\nkind: GatewayPool\nmetadata:\n  name: gateway\n  namespace: {ns}\n\
                 spec:\n  gatewayAddress: {ga}\n  keySecretRef: {{name: gateway-key, key: gateway.key}}\n\
                 \x20 applications: [{aa}]\n  apiKeysSecretRef: {{name: gateway-api-keys}}\n\
                 \x20 services: {{\"{model}\": llm}}\n  minReplicas: 1\n  maxReplicas: 2\n{chain}---\n\
                 apiVersion: v1\nkind: Service\nmetadata:\n  name: gateway-public\n  namespace: {ns}\n\
                 spec:\n  type: NodePort\n  selector:\n    app.kubernetes.io/component: gateway\n    app.kubernetes.io/instance: gateway\n\
                 \x20 ports:\n    - name: http\n      port: 8080\n      targetPort: http\n      nodePort: {gp}\n",
                ga = addr(gateway),
                aa = addr(app),
                gp = o.gateway_port,
            ),
        ),
    ]
}

/// What the fleet is doing, for the live summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub height: i64,
    pub pods_ready: usize,
    pub pods: usize,
    pub serve_replicas: usize,
    pub relays: u64,
    pub mined: u64,
    pub claims_open: usize,
    pub proofs_open: usize,
    pub settled: usize,
    pub proven: usize,
    pub rewards_upokt: u128,
    pub staked: bool,
    pub requests_ok: u64,
    pub requests_failed: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "height {} | pods {}/{} ready, serving replicas {} | requests {} ok, {} failed | relays {} (mined {}) | claims open {}, proofs open {} | settled {} (proven {}) | rewards {} uPOKT | staked: {}",
            self.height,
            self.pods_ready,
            self.pods,
            self.serve_replicas,
            self.requests_ok,
            self.requests_failed,
            self.relays,
            self.mined,
            self.claims_open,
            self.proofs_open,
            self.settled,
            self.proven,
            self.rewards_upokt,
            if self.staked { "yes" } else { "not yet" },
        )
    }
}

/// Sums a Prometheus counter over its label sets.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A plain HTTP/1.0 GET on loopback (metrics scrapes).
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Sends one chat completion through the gateway; the response body on success.
pub async fn chat(gateway_port: u16, prompt: &str) -> Result<String, String> {
    chat_with(gateway_port, prompt, false).await
}

/// A chat completion through the gateway, streamed (SSE, complete only with its
/// `data: [DONE]`) or not; the response body on success.
pub async fn chat_with(gateway_port: u16, prompt: &str, stream: bool) -> Result<String, String> {
    chat_as(gateway_port, Some(DEVNET_API_KEY), prompt, stream).await
}

/// [`chat_with`] with the API key `key` (or none); an error starts with the status line.
pub async fn chat_as(
    gateway_port: u16,
    key: Option<&str>,
    prompt: &str,
    stream: bool,
) -> Result<String, String> {
    chat_model(gateway_port, key, MODEL, prompt, stream).await
}

/// [`chat_as`] for `model`.
pub async fn chat_model(
    gateway_port: u16,
    key: Option<&str>,
    model: &str,
    prompt: &str,
    stream: bool,
) -> Result<String, String> {
    let (status, head, body) = post_chat(
        gateway_port,
        key,
        model,
        prompt,
        stream,
        Duration::from_secs(10),
    )
    .await?;
    if status == 200 {
        if stream && !body.contains("data: [DONE]") {
            return Err(format!("the stream ended before [DONE]: {body}"));
        }
        Ok(body)
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
    }
}

/// One chat completion posted to the gateway, waiting at most `within`: the HTTP
/// status, the response head (status line and headers) and the body.
pub async fn post_chat(
    gateway_port: u16,
    key: Option<&str>,
    model: &str,
    prompt: &str,
    stream: bool,
    within: Duration,
) -> Result<(u16, String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8, "stream": stream})
    .to_string();
    let addr = format!("127.0.0.1:{gateway_port}");
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no HTTP status")?;
        Ok((status, head.to_string(), body.to_string()))
    };
    tokio::time::timeout(within, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The real `lode-operator run` against kubesim, its output appended to
/// `<root>/operator.log`.
fn spawn_operator(
    options: &FleetOptions,
    root: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    let bin_dir = &options.bin_dir;
    let operator_bin = bin_dir.join("lode-operator");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("operator.log"))?;
    tokio::process::Command::new(&operator_bin)
        .arg("run")
        .args(["--admin", "127.0.0.1:0", "--lease-namespace", "default"])
        .env("KUBECONFIG", kubeconfig)
        .env("LODE_SCHEDULER_SECONDS", "1")
        .env(
            "LODE_AUTOSCALE_SECONDS",
            options.autoscale_seconds.max(1).to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", operator_bin.display()))
}

/// Writes the sample's weights into the hub's folder: for engine-sim a config file
/// standing for the model's repository; for llama.cpp the tiny model, with its digest
/// as `relayminer digest` computes it.
fn sample_weights(
    hub_dir: &std::path::Path,
    engine: &FleetEngine,
    bin_dir: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    if *engine == FleetEngine::Sim {
        let dir = hub_dir.join(MODEL);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("config.json"),
            "{\"model_type\": \"qwen2\", \"note\": \"engine-sim stands in for the model\"}\n",
        )?;
        return Ok(None);
    }
    let dir = hub_dir.join(TINY_MODEL_REPO);
    std::fs::create_dir_all(&dir)?;
    let script = hub_dir.join("tiny-gguf.py");
    std::fs::write(&script, TINY_GGUF_SCRIPT)?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir.join(TINY_MODEL_FILE))
        .output()
        .context("running python3 (the tiny model is written with the gguf package)")?;
    std::fs::remove_file(&script)?;
    anyhow::ensure!(
        out.status.success(),
        "writing the tiny model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin_dir.join("relayminer"))
        .arg("digest")
        .arg(&dir)
        .output()
        .context("running relayminer digest")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("model "))
        .map(|d| Some(d.to_string()))
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "relayminer digest {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

impl Fleet {
    pub async fn start(options: FleetOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let root = std::path::absolute(&options.root)?;
        if root.join("pods").exists() {
            // A previous run's pods and volumes (the chain starts afresh each time).
            let _ = std::fs::remove_dir_all(root.join("pods"));
            let _ = std::fs::remove_dir_all(root.join("volumes"));
        }
        let manifests_dir = root.join("manifests");
        std::fs::create_dir_all(&manifests_dir)?;
        let crd_dir = root.join("crds");
        std::fs::create_dir_all(&crd_dir)?;
        let mut crd_files = Vec::new();
        for (i, c) in CRDS.iter().enumerate() {
            let f = crd_dir.join(format!("crd-{i}.yaml"));
            std::fs::write(&f, c)?;
            crd_files.push(f);
        }
        for (port, flag) in [
            (options.gateway_port, "--gateway-port"),
            (options.relay_port, "--relay-port"),
        ] {
            std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
                format!(
                    "127.0.0.1:{port} is taken (another fleet running?); choose another with {flag}"
                )
            })?;
        }
        let mut config = DevnetConfig::payment_tests(1);
        config.block_time = Some(options.block_time);
        let devnet = Devnet::new(&config);
        let running = devnet
            .serve(options.rpc, options.grpc, Some(options.block_time))
            .await
            .with_context(|| {
                format!(
                    "starting the devnet on {} and {} (is another fleet running?)",
                    options.rpc, options.grpc
                )
            })?;
        let sim = KubeSim::start(KubeSimOptions {
            listen: options.api,
            root: root.clone(),
            kubelet: Some(KubeletConfig {
                runtime: Arc::new(LodeImages {
                    bin_dir: options.bin_dir.clone(),
                    engine_args: options.engine_args.clone(),
                    llama_server: match &options.engine {
                        FleetEngine::Llamacpp(server) => Some(server.clone()),
                        FleetEngine::Sim => None,
                    },
                }),
                root: root.clone(),
                gpus: options.gpus,
                pod_net: 0,
                gpu_nodes: options.gpu_nodes,
            }),
            crds: crd_files,
            networks: lode_kubesim::networks(),
        })
        .await?;
        lode_kubesim::write_kubeconfig(&sim.kubeconfig, sim.addr, NAMESPACE)?;
        let hub_dir = root.join("hub");
        let _ = std::fs::remove_dir_all(&hub_dir);
        let digest = sample_weights(&hub_dir, &options.engine, &options.bin_dir)?;
        let (hub, hub_counters) = hub::serve(hub_dir, options.hub)
            .await
            .with_context(|| format!("starting the model hub on {}", options.hub))?;
        let weights = SampleWeights { hub, digest };
        for (name, text) in manifests(&devnet, &config, &running, &options, &weights) {
            std::fs::write(manifests_dir.join(name), text)?;
        }
        let operator = spawn_operator(&options, &root, &sim.kubeconfig)?;
        let fleet = Self {
            devnet,
            sim,
            manifests: manifests_dir,
            options: FleetOptions { root, ..options },
            hub: hub_counters,
            running,
            operator,
            started,
            load: Arc::new(LoadCounters::default()),
        };
        if fleet.options.apply_samples {
            fleet.apply_manifests()?;
        }
        Ok(fleet)
    }

    /// Seconds since `start` began.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.options.gateway_port)
    }

    pub fn chain_urls(&self) -> (String, String) {
        (self.running.rpc_url.clone(), self.running.grpc_url.clone())
    }

    /// Creates (or updates) every sample object, as `kubectl apply -f <manifests>` does.
    pub fn apply_manifests(&self) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.manifests)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            for obj in read_objects(&f)? {
                self.apply(obj)
                    .with_context(|| format!("applying {}", f.display()))?;
            }
        }
        Ok(())
    }

    fn apply(&self, obj: Value) -> anyhow::Result<()> {
        let store = &self.sim.store;
        let def = store
            .registry()
            .by_kind(
                obj["apiVersion"].as_str().unwrap_or(""),
                obj["kind"].as_str().unwrap_or(""),
            )
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("no such kind: {} {}", obj["apiVersion"], obj["kind"])
            })?;
        let (ns, name) = lode_kubesim::store::ns_name(&obj);
        let existing = store.get(&def.res(), &ns, &name);
        let result = match existing {
            None => store.create(
                &def.res(),
                (!ns.is_empty()).then_some(ns.as_str()),
                obj,
                FieldValidation::Strict,
            ),
            Some(_) => {
                let merged = lode_kubesim::patch::patch(
                    lode_kubesim::patch::PatchKind::Apply,
                    existing.as_ref(),
                    &obj,
                    "lode-fleet",
                    None,
                )?;
                store.update(
                    &def.res(),
                    &ns,
                    &name,
                    merged,
                    false,
                    FieldValidation::Strict,
                )
            }
        };
        result
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// The current state, from the chain, the API and the serve pods' metrics.
    pub async fn summary(&self) -> Summary {
        let store = &self.sim.store;
        let pods: Vec<Value> = store
            .list(&Res::new("", "pods"), Some(NAMESPACE))
            .into_iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .collect();
        let ready = pods
            .iter()
            .filter(|p| lode_kubesim::controllers::pod_ready(p))
            .count();
        let serve: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "serve")
            .collect();
        let mut relays = 0;
        let mut mined = 0;
        for p in &serve {
            if let Some(ip) = p["status"]["podIP"].as_str()
                && let Some(m) = http_get(&format!("{ip}:9091"), "/metrics").await
            {
                relays += metric_sum(&m, "lode_serve_relays_total");
                mined += metric_sum(&m, "lode_serve_mined_total");
            }
        }
        let supplier = store.get(
            &Res::new("lode.pokt.network", "suppliers"),
            NAMESPACE,
            "supplier-1",
        );
        let staked = supplier.as_ref().is_some_and(|s| {
            s["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Staked" && c["status"] == "True")
        });
        let settlements = self.devnet.settlements();
        let chain = self.devnet.chain();
        Summary {
            height: chain.height(),
            pods_ready: ready,
            pods: pods.len(),
            serve_replicas: serve
                .iter()
                .filter(|p| lode_kubesim::controllers::pod_ready(p))
                .count(),
            relays,
            mined,
            claims_open: chain.m.claims.len(),
            proofs_open: chain
                .m
                .claims
                .values()
                .filter(|c| c.proof.is_some())
                .count(),
            settled: settlements.len(),
            proven: settlements
                .iter()
                .filter(|s| s.outcome.contains("proof validated"))
                .count(),
            rewards_upokt: settlements.iter().map(|s| s.reward).sum(),
            staked,
            requests_ok: self.load.ok.load(Ordering::Relaxed),
            requests_failed: self.load.failed.load(Ordering::Relaxed),
        }
    }

    /// A counter of serve's `/metrics`, summed over the ready serving pods.
    pub async fn serve_metric(&self, name: &str) -> u64 {
        let mut sum = 0;
        for p in self.sim.store.list(&Res::new("", "pods"), Some(NAMESPACE)) {
            if p["metadata"]["labels"]["app.kubernetes.io/component"] != "serve"
                || !lode_kubesim::controllers::pod_ready(&p)
            {
                continue;
            }
            if let Some(ip) = p["status"]["podIP"].as_str()
                && let Some(m) = http_get(&format!("{ip}:9091"), "/metrics").await
            {
                sum += metric_sum(&m, name);
            }
        }
        sum
    }

    /// The sample ServiceModel as the API server holds it (`null` before it is applied).
    pub fn service_model(&self) -> Value {
        self.sim
            .store
            .get(
                &Res::new("lode.pokt.network", "servicemodels"),
                NAMESPACE,
                self.options.service_model(),
            )
            .unwrap_or_default()
    }

    /// Waits until no ready relay pod routes to an engine replica (after a scale to
    /// zero, the last engine serves out its preStop pause before its endpoint goes).
    pub async fn until_no_engine_routed(&self, within: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        while self.serve_metric("lode_serve_engines_ready").await > 0 {
            anyhow::ensure!(
                t0.elapsed() < within,
                "the relay tier still routes to an engine after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Sends `rps` chat completions a second through the gateway until the fleet stops,
    /// so sessions fill and claims and proofs follow.
    /// `stream_share` of them (0 to 1) stream.
    pub fn start_load(&self, rps: f64, stream_share: f64) -> tokio::task::JoinHandle<()> {
        let counters = self.load.clone();
        let port = self.options.gateway_port;
        let model = self.options.model();
        let period = Duration::from_secs_f64(1.0 / rps.max(0.01));
        let streamed_per_100 = (stream_share.clamp(0.0, 1.0) * 100.0).round() as u64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let counters = counters.clone();
                // Spread the streamed ones evenly over each hundred requests.
                let stream = (n * streamed_per_100) % 100 < streamed_per_100;
                tokio::spawn(async move {
                    let prompt = format!("request {n}");
                    match chat_model(port, Some(DEVNET_API_KEY), model, &prompt, stream).await {
                        Ok(_) => counters.ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    }

    /// Every `every`, the resident memory of each running container of the fleet's
    /// pods (from `/proc/<pid>/status`) and the request counters, as CSV lines
    /// `seconds,pod,container,rss_kib,requests_ok,requests_failed` appended to `path`.
    pub fn start_rss_log(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.sim.store.clone();
        let counters = self.load.clone();
        let t0 = Instant::now();
        tokio::spawn(async move {
            use std::io::Write;
            let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
                tracing::warn!(path = %path.display(), "cannot write the RSS log");
                return;
            };
            let _ = writeln!(
                f,
                "seconds,pod,container,rss_kib,requests_ok,requests_failed"
            );
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let secs = t0.elapsed().as_secs();
                let (ok, failed) = (
                    counters.ok.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                );
                for p in store.list(&Res::new("", "pods"), Some(NAMESPACE)) {
                    let pod = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                    for c in p["status"]["containerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let Some(pid) = c["containerID"]
                            .as_str()
                            .and_then(|id| id.strip_prefix("process://"))
                        else {
                            continue;
                        };
                        if c["state"]["running"].is_null() {
                            continue;
                        }
                        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .unwrap_or_default();
                        let Some(rss) = status
                            .lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next())
                        else {
                            continue;
                        };
                        let _ = writeln!(
                            f,
                            "{secs},{pod},{},{rss},{ok},{failed}",
                            c["name"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        })
    }

    /// Sends one chat completion through the gateway; the response body on success.
    pub async fn chat(&self, prompt: &str) -> Result<String, String> {
        let model = self.options.model();
        chat_model(
            self.options.gateway_port,
            Some(DEVNET_API_KEY),
            model,
            prompt,
            false,
        )
        .await
    }

    /// Waits until a chat completion goes through; how long since start that took.
    pub async fn first_relay(&self, within: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.chat("hello").await {
                Ok(_) => return Ok(self.uptime()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last)
    }

    /// How to use the fleet.
    pub fn instructions(&self) -> String {
        let root = &self.options.root;
        format!(
            "lode fleet is up (chain RPC {rpc}, gRPC {grpc}, Kubernetes API http://{api}).\n\n\
             Point kubectl at it:\n  export KUBECONFIG={kc}\n  kubectl get suppliers,servicemodels,gatewaypools,pods\n\
             \x20 kubectl logs deploy/{sm} -c relayminer      (or: ls {root}/pods)\n\n\
             Send an OpenAI request (API key {DEVNET_API_KEY}, from Secret gateway-api-keys):\n\
             \x20 curl -s {gw}/chat/completions -H 'Authorization: Bearer {DEVNET_API_KEY}' -H 'Content-Type: application/json' \\\n\
             \x20   -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n\
             \x20 python3 -c \"from openai import OpenAI; print(OpenAI(base_url='{gw}', api_key='{DEVNET_API_KEY}').chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'hi'}}]).choices[0].message.content)\"\n\n\
             Change the fleet: edit {man}/*.yaml and run kubectl apply -f {man}\n\
             Operator log: {root}/operator.log\n",
            rpc = self.running.rpc_url,
            grpc = self.running.grpc_url,
            api = self.sim.addr,
            kc = self.sim.kubeconfig.display(),
            root = root.display(),
            gw = self.gateway_url(),
            man = self.manifests.display(),
            sm = self.options.service_model(),
            model = self.options.model(),
        )
    }

    /// Kills the operator with SIGKILL (a crashed operator pod) and starts a new one, as
    /// its Deployment would; returns once the new process runs.
    pub async fn restart_operator_after_kill(&mut self, down: Duration) -> anyhow::Result<()> {
        self.operator.start_kill()?;
        self.operator.wait().await?;
        tokio::time::sleep(down).await;
        self.operator = spawn_operator(&self.options, &self.options.root, &self.sim.kubeconfig)?;
        Ok(())
    }

    /// A chain node outage of `down`: its RPC and gRPC endpoints refuse connections
    /// while blocks go on.
    pub async fn chain_outage(&mut self, down: Duration) -> anyhow::Result<()> {
        self.running.outage().await;
        tokio::time::sleep(down).await;
        self.running.recover().await?;
        Ok(())
    }

    /// The process id of a running container of a pod with `component` (the
    /// `app.kubernetes.io/component` label) in the samples' namespace.
    pub fn container_pid(&self, component: &str, container: &str) -> Option<i32> {
        self.sim
            .store
            .list(&Res::new("", "pods"), Some(NAMESPACE))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == component)
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .flat_map(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| c["name"] == container && !c["state"]["running"].is_null())
            .find_map(|c| {
                c["containerID"]
                    .as_str()?
                    .strip_prefix("process://")?
                    .parse()
                    .ok()
            })
    }

    /// The requests the load generator completed and failed so far.
    pub fn load_counts(&self) -> (u64, u64) {
        (
            self.load.ok.load(Ordering::Relaxed),
            self.load.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops the operator, the pods (gracefully), the API server and the chain.
    pub async fn shutdown(mut self) {
        if let Some(pid) = self.operator.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.operator.wait())
            .await
            .is_err()
        {
            let _ = self.operator.start_kill();
        }
        self.sim.shutdown().await;
        self.running.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_their_labels_only() {
        let text = "# HELP x a\nx 1\nx{service=\"llm\"} 2\nxy 5\nx_total 7\n";
        assert_eq!(metric_sum(text, "x"), 3);
    }
}
