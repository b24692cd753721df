//! The process kubelet: binds pods to the one node (GPU capacity counted), and runs each
//! pod's containers as local processes, the programs a [`Runtime`] names for their
//! images. Every pod gets its own loopback IP (127.2.x.y), so pods listen on the
//! same ports side by side. Volumes become directories; the text the process sees (args,
//! env, mounted ConfigMap/Secret files) has mount paths mapped to those directories,
//! `0.0.0.0` and `localhost:<own port>` mapped to the pod IP, and Service names mapped
//! to their cluster IPs (the stand-in for cluster DNS). Probes, restarts with back-off,
//! termination messages and graceful deletion behave as the kubelet's do.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::resources::Res;
use crate::runtime::Runtime;
use crate::store::{Store, now};

/// The node's name.
pub const NODE: &str = "kubesim";

/// What the kubelet runs images as, and where it keeps pod directories.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// What each image runs as.
    pub runtime: Arc<dyn Runtime>,
    /// Pod directories, logs, and persistent volumes live here.
    pub root: PathBuf,
    /// GPUs the node offers (`nvidia.com/gpu` and MIG resources together).
    pub gpus: i64,
    /// Pod IPs are 127.<pod_net>.x.y.
    pub pod_net: u8,
    /// A node autoscaler: GPU nodes that join when pods wait for GPUs; none: the node's
    /// GPUs are all there is.
    pub gpu_nodes: Option<GpuNodePool>,
}

/// What a node autoscaler (Cluster Autoscaler, Karpenter) does for pods that no node
/// can take: after a pod has been unschedulable for `delay` (the cloud's node start),
/// a node with `gpus` GPUs joins (`kubesim-gpu-<n>`), up to `max` nodes. Its pods run
/// as the first node's do, as local processes.
#[derive(Clone, Copy, Debug)]
pub struct GpuNodePool {
    pub delay: Duration,
    pub gpus: i64,
    pub max: usize,
}

#[derive(Debug, Default, Clone)]
struct ContainerState {
    running_since: Option<String>,
    pid: Option<u32>,
    ready: bool,
    started: bool,
    restarts: i64,
    waiting: Option<(String, String)>,
    terminated: Option<Value>,
    last_terminated: Option<Value>,
    /// Exited and will not run again.
    done: bool,
}

#[derive(Debug)]
struct PodHandle {
    stop: watch::Sender<bool>,
}

/// The kubelet.
#[derive(Debug)]
pub struct Kubelet {
    store: Arc<Store>,
    config: KubeletConfig,
    pods: Mutex<HashMap<(String, String), PodHandle>>,
    next_ip: Mutex<u32>,
    /// The API server's URL, given to every container as `LODE_KUBE_API` (the stand-in
    /// for `KUBERNETES_SERVICE_HOST`: kubesim's API has no TLS).
    api_url: std::sync::OnceLock<String>,
    /// The nodes and their GPUs: the first node, then any the GPU node pool added.
    nodes: Mutex<Vec<(String, i64)>>,
    /// Pods waiting for GPUs, since when.
    waiting: Mutex<HashMap<(String, String), Instant>>,
}

/// A Node object with `gpus` GPUs.
fn node_object(name: &str, gpus: i64) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {"capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubesim process kubelet"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}]}})
}

fn pods_res() -> Res {
    Res::new("", "pods")
}

/// The GPUs a pod asks for (any `…/gpu` or MIG resource in its limits).
fn gpu_request(pod: &Value) -> i64 {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["resources"]["limits"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|(k, _)| k.ends_with("/gpu") || k.contains("/mig-"))
        .map(|(_, v)| match v {
            Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_i64().unwrap_or(0),
        })
        .sum()
}

impl Kubelet {
    /// Where pods reach the API server (set once it listens).
    pub fn set_api_url(&self, url: String) {
        let _ = self.api_url.set(url);
    }

    pub fn new(store: Arc<Store>, config: KubeletConfig) -> Arc<Self> {
        let _ = store.create(
            &Res::new("", "nodes"),
            None,
            node_object(NODE, config.gpus),
            crate::store::FieldValidation::Ignore,
        );
        Arc::new(Self {
            store,
            nodes: Mutex::new(vec![(NODE.to_string(), config.gpus)]),
            config,
            pods: Mutex::new(HashMap::new()),
            next_ip: Mutex::new(1),
            api_url: std::sync::OnceLock::new(),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.config.root.join("pods")
    }

    /// Runs until dropped: binds pending pods, starts and stops pod workers.
    pub async fn run(self: Arc<Self>, period: Duration) {
        loop {
            self.pass();
            tokio::time::sleep(period).await;
        }
    }

    /// Stops every pod (SIGTERM, then SIGKILL after the grace period) and waits.
    pub async fn shutdown(&self) {
        let handles: Vec<PodHandle> = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in &handles {
            let _ = h.stop.send(true);
        }
        for h in handles {
            let mut rx = h.stop.subscribe();
            // The worker drops its receiver when it has stopped everything.
            let _ = tokio::time::timeout(Duration::from_secs(35), async {
                while h.stop.receiver_count() > 1 {
                    let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
                }
            })
            .await;
        }
    }

    /// Whether `node` is one of this kubelet's nodes.
    fn is_ours(&self, node: &Value) -> bool {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        node.as_str()
            .is_some_and(|n| nodes.iter().any(|(name, _)| name == n))
    }

    /// A GPU node joins when a pod has waited the pool's delay for GPUs (and one would
    /// hold it); returns whether one did.
    fn grow(&self, want: i64, waited: Duration) -> bool {
        let Some(pool) = self.config.gpu_nodes else {
            return false;
        };
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if waited < pool.delay || want > pool.gpus || nodes.len() > pool.max {
            return false;
        }
        let name = format!("{NODE}-gpu-{}", nodes.len());
        let _ = self.store.create(
            &Res::new("", "nodes"),
            None,
            node_object(&name, pool.gpus),
            crate::store::FieldValidation::Ignore,
        );
        tracing::info!(node = %name, gpus = pool.gpus, "a GPU node joined for pods waiting for GPUs");
        nodes.push((name, pool.gpus));
        true
    }

    fn pass(self: &Arc<Self>) {
        let pods = self.store.list(&pods_res(), None);
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut used: HashMap<String, i64> = HashMap::new();
        for p in &pods {
            if let Some(n) = p["spec"]["nodeName"].as_str()
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            {
                *used.entry(n.to_string()).or_default() += gpu_request(p);
            }
        }
        let capacity: i64 = nodes.iter().map(|(_, g)| g).sum();
        let mut live = std::collections::HashSet::new();
        for p in &pods {
            let (ns, name) = crate::store::ns_name(p);
            live.insert((ns.clone(), name.clone()));
            if p["spec"]["nodeName"].is_null() {
                let want = gpu_request(p);
                let fits = nodes
                    .iter()
                    .find(|(n, gpus)| used.get(n).copied().unwrap_or(0) + want <= *gpus);
                if let Some((node, _)) = fits {
                    *used.entry(node.clone()).or_default() += want;
                    self.waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(ns.clone(), name.clone()));
                    let _ = self.store.mutate(&pods_res(), &ns, &name, false, |o| {
                        o["spec"]["nodeName"] = json!(node);
                    });
                    let _ = self.store.mutate(&pods_res(), &ns, &name, true, |o| {
                        o["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
                    });
                    continue;
                }
                let since = *self
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((ns.clone(), name.clone()))
                    .or_insert_with(Instant::now);
                if self.grow(want, since.elapsed()) {
                    // Bound on the next pass, to the new node.
                    continue;
                }
                if p["status"]["conditions"][0]["reason"] != "Unschedulable" {
                    let free = capacity - used.values().sum::<i64>();
                    let msg = format!(
                        "0/{} nodes are available: {} Insufficient nvidia.com/gpu (wants {want}, {free} of {capacity} free).",
                        nodes.len(),
                        nodes.len()
                    );
                    let _ = self.store.mutate(&pods_res(), &ns, &name, true, |o| {
                        o["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastTransitionTime": now()}]);
                    });
                }
                continue;
            }
            if !self.is_ours(&p["spec"]["nodeName"]) {
                continue;
            }
            let mut map = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            let key = (ns.clone(), name.clone());
            let terminating = !p["metadata"]["deletionTimestamp"].is_null();
            match map.get(&key) {
                Some(h) if terminating => {
                    let _ = h.stop.send(true);
                }
                Some(_) => {}
                None if terminating => {
                    // Nothing runs for it (finished, or never started): remove it now.
                    drop(map);
                    self.store.remove_pod(&ns, &name);
                }
                None => {
                    if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                        continue;
                    }
                    let (tx, rx) = watch::channel(false);
                    map.insert(key.clone(), PodHandle { stop: tx });
                    let ip = {
                        let mut n = self.next_ip.lock().unwrap_or_else(|e| e.into_inner());
                        let ip =
                            format!("127.{}.{}.{}", self.config.pod_net, *n / 250, *n % 250 + 1);
                        *n += 1;
                        ip
                    };
                    let me = self.clone();
                    let pod = p.clone();
                    tokio::spawn(async move {
                        me.clone().run_pod(pod, ip, rx).await;
                        me.pods
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                    });
                }
            }
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
        // Workers of pods removed from the store behind our back.
        let map = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for (k, h) in map.iter() {
            if !live.contains(k) {
                let _ = h.stop.send(true);
            }
        }
    }

    /// Materializes the pod's volumes; `Err` names what is missing.
    fn volumes(&self, pod: &Value, dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let mut out = BTreeMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("vol").to_string();
            let vdir = dir.join("volumes").join(&name);
            let files: Option<(Value, bool, &Value)> = if let Some(cm) = v.get("configMap") {
                let cname = cm["name"].as_str().unwrap_or("");
                let obj = self
                    .store
                    .get(&Res::new("", "configmaps"), ns, cname)
                    .ok_or_else(|| format!("configmap \"{cname}\" not found"))?;
                Some((obj["data"].clone(), false, &cm["items"]))
            } else if let Some(sec) = v.get("secret") {
                let sname = sec["secretName"].as_str().unwrap_or("");
                let obj = self
                    .store
                    .get(&Res::new("", "secrets"), ns, sname)
                    .ok_or_else(|| format!("secret \"{sname}\" not found"))?;
                Some((obj["data"].clone(), true, &sec["items"]))
            } else {
                None
            };
            let path = if let Some(pvc) = v.get("persistentVolumeClaim") {
                let claim = pvc["claimName"].as_str().unwrap_or("claim");
                self.config.root.join("volumes").join(ns).join(claim)
            } else {
                vdir
            };
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some((data, b64, items)) = files {
                let mut wanted: Vec<(String, String)> = items
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        (
                            i["key"].as_str().unwrap_or("").to_string(),
                            i["path"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                if wanted.is_empty() {
                    wanted = data
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| (k.clone(), k.clone()))
                        .collect();
                }
                for (key, rel) in wanted {
                    let raw = data[&key]
                        .as_str()
                        .ok_or_else(|| format!("volume {name}: key {key:?} not found"))?;
                    let bytes = if b64 {
                        base64::engine::general_purpose::STANDARD
                            .decode(raw)
                            .map_err(|e| format!("volume {name}: key {key}: {e}"))?
                    } else {
                        raw.as_bytes().to_vec()
                    };
                    let f = path.join(&rel);
                    if let Some(parent) = f.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    std::fs::write(&f, bytes).map_err(|e| format!("{}: {e}", f.display()))?;
                }
            }
            out.insert(name, path);
        }
        Ok(out)
    }

    async fn run_pod(self: Arc<Self>, pod: Value, ip: String, mut stop: watch::Receiver<bool>) {
        let (ns, name) = crate::store::ns_name(&pod);
        let dir = self.pods_dir().join(format!("{ns}_{name}"));
        let _ = std::fs::create_dir_all(&dir);
        let started = now();
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let states: Arc<Mutex<Vec<ContainerState>>> = Arc::new(Mutex::new(vec![
                ContainerState::default();
                containers.len()
            ]));
        let inits: Vec<Value> = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init_states: Arc<Mutex<Vec<ContainerState>>> =
            Arc::new(Mutex::new(vec![ContainerState::default(); inits.len()]));
        let pod_view = PodView {
            pod: &pod,
            ip: &ip,
            containers: &containers,
            states: &states,
            inits: &inits,
            init_states: &init_states,
        };
        let _ = self.store.mutate(&pods_res(), &ns, &name, true, |o| {
            o["status"]["phase"] = json!("Pending");
            o["status"]["podIP"] = json!(ip);
            o["status"]["podIPs"] = json!([{"ip": ip}]);
            o["status"]["hostIP"] = json!("127.0.0.1");
            o["status"]["startTime"] = json!(started);
        });
        // Volumes (waiting for missing ConfigMaps/Secrets, as the kubelet does).
        let mounts = loop {
            match self.volumes(&pod, &dir) {
                Ok(m) => break m,
                Err(e) => {
                    {
                        let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
                        for s in st.iter_mut() {
                            s.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                        }
                    }
                    self.write_status(&pod_view);
                    if tokio::time::timeout(Duration::from_secs(1), stop.changed())
                        .await
                        .is_ok()
                        || *stop.borrow()
                    {
                        self.store.remove_pod(&ns, &name);
                        return;
                    }
                }
            }
        };
        let restart_policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let grace = pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        // Init containers, one after the other, each until it succeeds (restarted with
        // back-off on failure, as the kubelet does unless restartPolicy is Never); the
        // app containers wait for all of them.
        for (i, c) in inits.iter().enumerate() {
            let spec = match self.command(&pod, c, &ip, &mounts, &dir) {
                Ok(s) => s,
                Err(e) => {
                    update(&init_states, i, |s| {
                        s.waiting = Some(("CreateContainerError".into(), e));
                    });
                    self.write_status(&pod_view);
                    let _ = stop.wait_for(|s| *s).await;
                    self.store.remove_pod(&ns, &name);
                    return;
                }
            };
            let policy = if restart_policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let mut run = tokio::spawn(run_container(
                spec,
                i,
                init_states.clone(),
                stop.clone(),
                policy.into(),
                Probes::default(),
                grace,
            ));
            loop {
                self.write_status(&pod_view);
                tokio::select! {
                    _ = &mut run => break,
                    () = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
            self.write_status(&pod_view);
            let succeeded = init_states.lock().unwrap_or_else(|e| e.into_inner())[i]
                .terminated
                .as_ref()
                .is_some_and(|t| t["exitCode"] == 0);
            if *stop.borrow() {
                self.store.remove_pod(&ns, &name);
                return;
            }
            if !succeeded {
                // restartPolicy Never: the pod has failed; it stays until deleted.
                let _ = stop.wait_for(|s| *s).await;
                self.store.remove_pod(&ns, &name);
                return;
            }
        }
        let mut workers = Vec::new();
        for (i, c) in containers.iter().enumerate() {
            let spec = match self.command(&pod, c, &ip, &mounts, &dir) {
                Ok(s) => s,
                Err(e) => {
                    let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
                    st[i].waiting = Some(("CreateContainerError".into(), e));
                    continue;
                }
            };
            let states = states.clone();
            let stop = stop.clone();
            let policy = restart_policy.clone();
            let probes = Probes::of(c, &ip);
            workers.push(tokio::spawn(run_container(
                spec, i, states, stop, policy, probes, grace,
            )));
        }
        // Status until every container is done or the pod is deleted.
        loop {
            self.write_status(&pod_view);
            let all_done = states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .all(|s| s.done);
            if all_done || *stop.borrow() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(300), stop.changed()).await;
        }
        for w in workers {
            let _ = w.await;
        }
        self.write_status(&pod_view);
        if *stop.borrow() {
            self.store.remove_pod(&ns, &name);
        }
    }

    fn write_status(&self, v: &PodView<'_>) {
        let (pod, ip) = (v.pod, v.ip);
        let (ns, name) = crate::store::ns_name(pod);
        let st = v.states.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let init_st = v
            .init_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let succeeded =
            |s: &ContainerState| s.terminated.as_ref().is_some_and(|t| t["exitCode"] == 0);
        let initialized = init_st.iter().all(succeeded);
        let init_failed = init_st.iter().any(|s| s.done && !succeeded(s));
        let container_status = |c: &Value, s: &ContainerState, waiting: &str| {
            let state = if let Some(since) = &s.running_since {
                json!({"running": {"startedAt": since}})
            } else if let Some(t) = &s.terminated {
                json!({"terminated": t})
            } else {
                let (reason, message) =
                    s.waiting.clone().unwrap_or((waiting.into(), String::new()));
                json!({"waiting": {"reason": reason, "message": message}})
            };
            let mut v = json!({
                "name": c["name"], "image": c["image"], "imageID": format!("kubesim://{}", c["image"].as_str().unwrap_or("")),
                "containerID": s.pid.map(|p| format!("process://{p}")),
                "ready": s.ready, "started": s.started, "restartCount": s.restarts, "state": state,
            });
            if let Some(l) = &s.last_terminated {
                v["lastState"] = json!({"terminated": l});
            }
            v
        };
        let waiting = if initialized {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let statuses: Vec<Value> = v
            .containers
            .iter()
            .zip(&st)
            .map(|(c, s)| container_status(c, s, waiting))
            .collect();
        let init_statuses: Vec<Value> = v
            .inits
            .iter()
            .zip(&init_st)
            .map(|(c, s)| {
                let mut v = container_status(c, s, "PodInitializing");
                // An init container that finished is ready (what the kubelet reports).
                v["ready"] = json!(succeeded(s));
                v
            })
            .collect();
        let all_ready = !st.is_empty() && st.iter().all(|s| s.ready);
        let all_done = !st.is_empty() && st.iter().all(|s| s.done);
        let phase = if init_failed {
            "Failed"
        } else if !initialized {
            "Pending"
        } else if all_done {
            let ok = st
                .iter()
                .all(|s| s.terminated.as_ref().is_some_and(|t| t["exitCode"] == 0));
            if ok { "Succeeded" } else { "Failed" }
        } else if st
            .iter()
            .any(|s| s.running_since.is_some() || s.restarts > 0)
        {
            "Running"
        } else {
            "Pending"
        };
        let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok {"True"} else {"False"}});
        let conditions = json!([
            cond("PodScheduled", true),
            cond("Initialized", initialized),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ]);
        let _ = self.store.mutate(&pods_res(), &ns, &name, true, |o| {
            let s = &mut o["status"];
            s["phase"] = json!(phase);
            s["podIP"] = json!(ip);
            s["podIPs"] = json!([{"ip": ip}]);
            s["containerStatuses"] = json!(statuses);
            if init_statuses.is_empty() {
                if let Some(m) = s.as_object_mut() {
                    m.remove("initContainerStatuses");
                }
            } else {
                s["initContainerStatuses"] = json!(init_statuses);
            }
            // Keep transition times stable: only statuses that changed get a new time.
            let old = s["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds = conditions.as_array().cloned().unwrap_or_default();
            for c in &mut conds {
                let prev = old.iter().find(|o| o["type"] == c["type"]);
                c["lastTransitionTime"] = match prev {
                    Some(p) if p["status"] == c["status"] => p["lastTransitionTime"].clone(),
                    _ => json!(now()),
                };
            }
            s["conditions"] = json!(conds);
        });
    }

    /// The process a container runs as.
    fn command(
        &self,
        pod: &Value,
        c: &Value,
        ip: &str,
        mounts: &BTreeMap<String, PathBuf>,
        dir: &Path,
    ) -> Result<ProcSpec, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let cname = c["name"].as_str().unwrap_or("c").to_string();
        let image = c["image"].as_str().unwrap_or("");
        let mut rw = Rewriter {
            paths: Vec::new(),
            ip: ip.to_string(),
            ports: pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p["containerPort"].as_i64())
                .collect(),
            services: self
                .store
                .list(&Res::new("", "services"), None)
                .iter()
                .filter_map(|s| {
                    Some((
                        s["metadata"]["namespace"].as_str()?.to_string(),
                        s["metadata"]["name"].as_str()?.to_string(),
                        s["spec"]["clusterIP"].as_str()?.to_string(),
                    ))
                })
                .collect(),
            ns: ns.to_string(),
        };
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (Some(path), Some(vol)) = (m["mountPath"].as_str(), m["name"].as_str()) else {
                continue;
            };
            let mut local = mounts
                .get(vol)
                .ok_or_else(|| format!("volume {vol:?} is not declared"))?
                .clone();
            // A subPath mounts a folder of the volume (made when missing, as the
            // kubelet does); one that leaves the volume is refused.
            if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                    return Err(format!("subPath {sub:?} must stay inside volume {vol:?}"));
                }
                local = local.join(sub);
                std::fs::create_dir_all(&local).map_err(|e| format!("{}: {e}", local.display()))?;
            }
            rw.paths
                .push((path.to_string(), local.display().to_string()));
        }
        let term_path = c["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log");
        let term_file = dir.join(format!("{cname}.termination-log"));
        let _ = std::fs::remove_file(&term_file);
        rw.paths
            .push((term_path.to_string(), term_file.display().to_string()));
        rw.paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        // Mounted files see the same mapping (each pod has its own copy).
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let Some(local) = m["name"].as_str().and_then(|v| mounts.get(v))
                && local.starts_with(dir)
            {
                rewrite_files(local, &rw);
            }
        }
        let mut env: Vec<(String, String)> = Vec::new();
        if let Some(url) = self.api_url.get() {
            env.push(("LODE_KUBE_API".into(), url.clone()));
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let s = self
                    .store
                    .get(
                        &Res::new("", "secrets"),
                        ns,
                        r["name"].as_str().unwrap_or(""),
                    )
                    .ok_or_else(|| format!("secret {:?} not found", r["name"]))?;
                let raw = s["data"][r["key"].as_str().unwrap_or("")]
                    .as_str()
                    .unwrap_or("");
                String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .unwrap_or_default(),
                )
                .into_owned()
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                let m = self
                    .store
                    .get(
                        &Res::new("", "configmaps"),
                        ns,
                        r["name"].as_str().unwrap_or(""),
                    )
                    .ok_or_else(|| format!("configmap {:?} not found", r["name"]))?;
                m["data"][r["key"].as_str().unwrap_or("")]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match f {
                    "metadata.name" => pod["metadata"]["name"].as_str().unwrap_or("").into(),
                    "metadata.namespace" => ns.into(),
                    "status.podIP" => ip.into(),
                    "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or(NODE).into(),
                    _ => String::new(),
                }
            } else {
                String::new()
            };
            env.push((name, rw.apply(&value)));
        }
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .map(|a| rw.apply(a))
            .collect();
        let (program, args) = self.config.runtime.program(image, args, ip)?;
        Ok(ProcSpec {
            name: cname.clone(),
            program,
            args,
            env,
            cwd: dir.to_path_buf(),
            log: dir.join(format!("{cname}.log")),
            term_file,
            fallback_to_logs: c["terminationMessagePolicy"] == "FallbackToLogsOnError",
            pre_stop_sleep: Duration::from_secs(
                c["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_u64()
                    .unwrap_or(0),
            ),
        })
    }
}

/// A pod and the state of its containers, for its status.
struct PodView<'a> {
    pod: &'a Value,
    ip: &'a str,
    containers: &'a [Value],
    states: &'a Mutex<Vec<ContainerState>>,
    inits: &'a [Value],
    init_states: &'a Mutex<Vec<ContainerState>>,
}

/// Maps what a container names to what exists on this machine.
#[derive(Debug, Clone)]
struct Rewriter {
    paths: Vec<(String, String)>,
    ip: String,
    ports: Vec<i64>,
    services: Vec<(String, String, String)>,
    ns: String,
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
}

impl Rewriter {
    fn apply(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (from, to) in &self.paths {
            out = replace_bounded(&out, from, to, |c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
            });
        }
        out = replace_bounded(&out, "0.0.0.0", &self.ip, |c| {
            c.is_ascii_digit() || c == '.'
        });
        for p in &self.ports {
            for host in ["127.0.0.1", "localhost"] {
                out = out.replace(&format!("{host}:{p}"), &format!("{}:{p}", self.ip));
            }
        }
        for (ns, name, ip) in &self.services {
            for form in [
                format!("{name}.{ns}.svc.cluster.local"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}"),
            ] {
                out = replace_host(&out, &form, ip);
            }
            // A bare name only where it is a URL's host (`//name`, `name:port`): the
            // same word elsewhere is a name, not an address (a serve config names the
            // engine Service whose EndpointSlices it reads).
            if *ns == self.ns {
                out = replace_url_host(&out, name, ip);
            }
        }
        out
    }
}

/// Replaces `from` where the next character does not continue it.
fn replace_bounded(s: &str, from: &str, to: &str, continues: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let after = rest[i + from.len()..].chars().next();
        let before = rest[..i].chars().last();
        let bounded = after.is_none_or(|c| !continues(c) || c == '/')
            && before.is_none_or(|c| !c.is_ascii_alphanumeric());
        out.push_str(&rest[..i]);
        out.push_str(if bounded { to } else { from });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// Replaces a host name standing alone (between URL or address delimiters).
fn replace_host(s: &str, host: &str, ip: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(host) {
        let before = rest[..i].chars().last();
        let after = rest[i + host.len()..].chars().next();
        let ok = before.is_none_or(|c| !is_host_char(c)) && after.is_none_or(|c| !is_host_char(c));
        out.push_str(&rest[..i]);
        out.push_str(if ok { ip } else { host });
        rest = &rest[i + host.len()..];
    }
    out.push_str(rest);
    out
}

/// [`replace_host`] where `host` is preceded by `/` or `@`, or followed by `:`.
fn replace_url_host(s: &str, host: &str, ip: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(host) {
        let before = rest[..i].chars().last();
        let after = rest[i + host.len()..].chars().next();
        let bounded =
            before.is_none_or(|c| !is_host_char(c)) && after.is_none_or(|c| !is_host_char(c));
        let url = matches!(before, Some('/' | '@')) || after == Some(':');
        out.push_str(&rest[..i]);
        out.push_str(if bounded && url { ip } else { host });
        rest = &rest[i + host.len()..];
    }
    out.push_str(rest);
    out
}

fn rewrite_files(dir: &Path, rw: &Rewriter) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rewrite_files(&p, rw);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            let new = rw.apply(&text);
            if new != text {
                let _ = std::fs::write(&p, new);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ProcSpec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    term_file: PathBuf,
    fallback_to_logs: bool,
    /// `lifecycle.preStop.sleep.seconds`: how long a stopping container keeps running
    /// (not ready) before its SIGTERM, within the grace period.
    pre_stop_sleep: Duration,
}

#[derive(Debug, Clone)]
enum ProbeKind {
    Http { addr: String, path: String },
    Tcp { addr: String },
    Always,
}

#[derive(Debug, Clone)]
struct Probe {
    kind: ProbeKind,
    period: Duration,
    failures: u32,
    initial_delay: Duration,
}

#[derive(Debug, Clone, Default)]
struct Probes {
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    startup: Option<Probe>,
}

impl Probes {
    fn of(c: &Value, ip: &str) -> Self {
        let named: HashMap<String, i64> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    p["containerPort"].as_i64()?,
                ))
            })
            .collect();
        let port = |v: &Value| -> i64 {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|n| named.get(n).copied()))
                .unwrap_or(80)
        };
        let probe = |p: &Value, fast: bool| -> Option<Probe> {
            if p.is_null() {
                return None;
            }
            let kind = if let Some(h) = p.get("httpGet") {
                ProbeKind::Http {
                    addr: format!("{ip}:{}", port(&h["port"])),
                    path: h["path"].as_str().unwrap_or("/").into(),
                }
            } else if let Some(t) = p.get("tcpSocket").or_else(|| p.get("grpc")) {
                ProbeKind::Tcp {
                    addr: format!("{ip}:{}", port(&t["port"])),
                }
            } else {
                ProbeKind::Always
            };
            let period = Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10).max(1));
            Some(Probe {
                kind,
                // Readiness and startup are checked at least every half second, so pods
                // become ready as soon as they are; liveness keeps its own period.
                period: if fast {
                    period.min(Duration::from_millis(500))
                } else {
                    period
                },
                failures: p["failureThreshold"].as_u64().unwrap_or(3) as u32
                    * if fast {
                        (period.as_millis() / 500).max(1) as u32
                    } else {
                        1
                    },
                initial_delay: Duration::from_secs(p["initialDelaySeconds"].as_u64().unwrap_or(0)),
            })
        };
        Self {
            readiness: probe(&c["readinessProbe"], true),
            liveness: probe(&c["livenessProbe"], false),
            startup: probe(&c["startupProbe"], true),
        }
    }
}

async fn check(kind: &ProbeKind) -> bool {
    let attempt = async {
        match kind {
            ProbeKind::Always => true,
            ProbeKind::Tcp { addr } => tokio::net::TcpStream::connect(addr).await.is_ok(),
            ProbeKind::Http { addr, path } => {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return false;
                };
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut buf = [0u8; 64];
                let Ok(n) = s.read(&mut buf).await else {
                    return false;
                };
                let line = String::from_utf8_lossy(&buf[..n]);
                line.split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .is_some_and(|c| (200..400).contains(&c))
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .unwrap_or(false)
}

fn update(states: &Mutex<Vec<ContainerState>>, i: usize, f: impl FnOnce(&mut ContainerState)) {
    let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut st[i]);
}

async fn terminate(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// Runs one container: start, probe, restart per policy, stop on request.
async fn run_container(
    spec: ProcSpec,
    i: usize,
    states: Arc<Mutex<Vec<ContainerState>>>,
    mut stop: watch::Receiver<bool>,
    policy: String,
    probes: Probes,
    grace_secs: i64,
) {
    let grace = Duration::from_secs(grace_secs.clamp(0, 30) as u64);
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            break;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in kubesim's terminal reaches kubesim,
            // which stops pods the kubelet's way, not every process at once.
            .process_group(0);
        if let Ok(l) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", l);
        }
        let started_at = now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                update(&states, i, |s| {
                    s.waiting = Some((
                        "RunContainerError".into(),
                        format!("{}: {e}", spec.program.display()),
                    ));
                });
                if tokio::time::timeout(backoff, stop.changed()).await.is_ok() {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        update(&states, i, |s| {
            s.running_since = Some(started_at.clone());
            s.pid = child.id();
            s.waiting = None;
            s.terminated = None;
            s.started = probes.startup.is_none();
            s.ready = probes.readiness.is_none() && probes.startup.is_none();
        });
        let t0 = Instant::now();
        let mut started = probes.startup.is_none();
        let mut ready_fail = 0u32;
        let mut live_fail = 0u32;
        let mut startup_fail = 0u32;
        let mut last_live = Instant::now();
        let mut restart_reason = None;
        let tick = probes
            .readiness
            .iter()
            .chain(probes.startup.iter())
            .map(|p| p.period)
            .min()
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
        let status = loop {
            tokio::select! {
                s = child.wait() => break s.ok(),
                _ = stop.changed() => {
                    if *stop.borrow() {
                        update(&states, i, |s| s.ready = false);
                        // The preStop sleep, then SIGTERM with what is left of the grace.
                        let pre_stop = spec.pre_stop_sleep.min(grace);
                        let t0 = Instant::now();
                        let exited = tokio::select! {
                            s = child.wait() => Some(s.ok()),
                            _ = tokio::time::sleep(pre_stop) => None,
                        };
                        match exited {
                            Some(s) => break s,
                            None => break terminate(&mut child, grace.saturating_sub(t0.elapsed())).await,
                        }
                    }
                }
                _ = tokio::time::sleep(tick) => {
                    if !started {
                        let p = probes.startup.as_ref().map(|p| (p.kind.clone(), p.failures, p.initial_delay));
                        if let Some((kind, failures, delay)) = p && t0.elapsed() >= delay {
                            if check(&kind).await {
                                started = true;
                                update(&states, i, |s| s.started = true);
                            } else {
                                startup_fail += 1;
                                if startup_fail >= failures {
                                    restart_reason = Some("startup probe failed");
                                    break terminate(&mut child, grace).await;
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(p) = &probes.readiness && t0.elapsed() >= p.initial_delay {
                        let ok = check(&p.kind).await;
                        ready_fail = if ok { 0 } else { ready_fail + 1 };
                        let ready = ok || (ready_fail < p.failures && states.lock().unwrap_or_else(|e| e.into_inner())[i].ready);
                        update(&states, i, |s| s.ready = ready);
                    } else if probes.readiness.is_none() {
                        update(&states, i, |s| s.ready = true);
                    }
                    if let Some(p) = &probes.liveness && t0.elapsed() >= p.initial_delay && last_live.elapsed() >= p.period {
                        last_live = Instant::now();
                        if check(&p.kind).await {
                            live_fail = 0;
                        } else {
                            live_fail += 1;
                            if live_fail >= p.failures {
                                restart_reason = Some("liveness probe failed");
                                break terminate(&mut child, grace).await;
                            }
                        }
                    }
                }
            }
        };
        let code = status.and_then(|s| s.code()).unwrap_or(137);
        let mut message = std::fs::read(&spec.term_file)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        if message.is_empty() && spec.fallback_to_logs && code != 0 {
            let log = std::fs::read_to_string(&spec.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            message = lines[lines.len().saturating_sub(80)..].join("\n");
            if message.len() > 2048 {
                message = message[message.len() - 2048..].to_string();
            }
        }
        let reason = match (code, restart_reason) {
            (_, Some(r)) => r.to_string(),
            (0, _) => "Completed".into(),
            (137, _) => "OOMKilled or Killed".into(),
            _ => "Error".into(),
        };
        let terminated = json!({"exitCode": code, "reason": reason, "message": message,
            "startedAt": started_at, "finishedAt": now(), "containerID": format!("process://{}", child.id().unwrap_or(0))});
        let stopping = *stop.borrow();
        let again = !stopping
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        tracing::info!(container = %spec.name, code, again, "container exited");
        update(&states, i, |s| {
            s.running_since = None;
            s.ready = false;
            s.pid = None;
            if again {
                s.restarts += 1;
                s.last_terminated = Some(terminated.clone());
                s.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container",
                        backoff.as_secs()
                    ),
                ));
            } else {
                s.terminated = Some(terminated.clone());
                s.done = true;
            }
        });
        if !again {
            return;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        if tokio::time::timeout(backoff, stop.changed()).await.is_ok() && *stop.borrow() {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    update(&states, i, |s| {
        s.done = true;
        if s.terminated.is_none() {
            s.terminated = Some(json!({"exitCode": 0, "reason": "Completed", "finishedAt": now()}));
        }
        s.running_since = None;
        s.ready = false;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_container_names_maps_to_this_machine() {
        let rw = Rewriter {
            paths: vec![
                (
                    "/var/run/lode/store-token".into(),
                    "/tmp/p/volumes/store-token".into(),
                ),
                ("/etc/lode".into(), "/tmp/p/volumes/config".into()),
            ],
            ip: "127.2.0.5".into(),
            ports: vec![8000, 8545],
            services: vec![
                ("lode".into(), "supplier-1-store".into(), "127.1.0.2".into()),
                ("other".into(), "db".into(), "127.1.0.9".into()),
            ],
            ns: "lode".into(),
        };
        assert_eq!(
            rw.apply("store: {url: 'http://supplier-1-store:7070', token_file: '/var/run/lode/store-token/token'}"),
            "store: {url: 'http://127.1.0.2:7070', token_file: '/tmp/p/volumes/store-token/token'}"
        );
        assert_eq!(
            rw.apply("--config=/etc/lode/serve.yaml"),
            "--config=/tmp/p/volumes/config/serve.yaml"
        );
        assert_eq!(
            rw.apply("/etc/lodes"),
            "/etc/lodes",
            "only whole path segments"
        );
        assert_eq!(rw.apply("0.0.0.0:8545"), "127.2.0.5:8545");
        assert_eq!(
            rw.apply("http://127.0.0.1:8000"),
            "http://127.2.0.5:8000",
            "own port"
        );
        assert_eq!(
            rw.apply("http://127.0.0.1:26657"),
            "http://127.0.0.1:26657",
            "the host's"
        );
        assert_eq!(
            rw.apply("http://db.other.svc.cluster.local:5432"),
            "http://127.1.0.9:5432"
        );
        assert_eq!(
            rw.apply("http://db:5432"),
            "http://db:5432",
            "another namespace's short name"
        );
        assert_eq!(rw.apply("supplier-1-store-token"), "supplier-1-store-token");
        // A Service named, not addressed, stays a name.
        assert_eq!(
            rw.apply("discovery: {service: supplier-1-store, port: engine}"),
            "discovery: {service: supplier-1-store, port: engine}"
        );
        assert_eq!(rw.apply("http://supplier-1-store/x"), "http://127.1.0.2/x");
    }
}
