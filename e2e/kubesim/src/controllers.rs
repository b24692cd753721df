//! The workload controllers of kube-controller-manager, simplified: Deployments own
//! their pods directly (no ReplicaSets), StatefulSets create ordinal pods in order with
//! their PersistentVolumeClaims, Jobs run pods until one succeeds or the backoff limit
//! is spent, and Job TTLs expire. Each pass reads the store and writes only what changed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::resources::Res;
use crate::select::LabelSelector;
use crate::store::{FieldValidation, Propagation, Store, now, suffix};

fn pods() -> Res {
    Res::new("", "pods")
}

/// Short stable hash of a pod template (`pod-template-hash`).
pub fn template_hash(template: &Value) -> String {
    let mut h = DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

fn owned_by<'a>(all: &'a [Value], owner: &Value) -> Vec<&'a Value> {
    let uid = &owner["metadata"]["uid"];
    all.iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| &r["uid"] == uid))
        })
        .collect()
}

fn terminating(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

/// A pod counts as ready when its `Ready` condition is true.
pub fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("Pending")
}

/// The controllers, run every `period` until dropped.
#[derive(Debug)]
pub struct Controllers {
    store: Arc<Store>,
    counter: AtomicU64,
}

impl Controllers {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            counter: AtomicU64::new(1),
        }
    }

    pub async fn run(self: Arc<Self>, period: Duration) {
        loop {
            self.pass();
            tokio::time::sleep(period).await;
        }
    }

    fn next_suffix(&self) -> String {
        suffix(self.counter.fetch_add(1, Ordering::Relaxed) + 7919)
    }

    /// One pass over every workload.
    pub fn pass(&self) {
        let all_pods = self.store.list(&pods(), None);
        for d in self.store.list(&Res::new("apps", "deployments"), None) {
            self.deployment(&d, &all_pods);
        }
        for s in self.store.list(&Res::new("apps", "statefulsets"), None) {
            self.stateful_set(&s, &all_pods);
        }
        for j in self.store.list(&Res::new("batch", "jobs"), None) {
            self.job(&j, &all_pods);
        }
        let all_pods = self.store.list(&pods(), None);
        for svc in self.store.list(&Res::new("", "services"), None) {
            self.endpoint_slice(&svc, &all_pods);
        }
    }

    /// The EndpointSlice controller: one slice per Service with a selector
    /// (`<service>-sim`), listing every running pod it selects with its IP and the
    /// conditions a real one reports (`ready`: Ready and not terminating; `serving`:
    /// Ready; `terminating`), and the Service's ports resolved to the pods' ports.
    fn endpoint_slice(&self, svc: &Value, all_pods: &[Value]) {
        let sel = LabelSelector::from_map(&svc["spec"]["selector"]);
        if sel.is_empty() || terminating(svc) {
            return;
        }
        let Some(ns) = svc["metadata"]["namespace"].as_str() else {
            return;
        };
        let selected: Vec<&Value> = all_pods
            .iter()
            .filter(|p| {
                p["metadata"]["namespace"].as_str() == Some(ns)
                    && sel.matches(p)
                    && p["status"]["podIP"].is_string()
                    && !matches!(phase(p), "Succeeded" | "Failed")
            })
            .collect();
        let endpoints: Vec<Value> = selected
            .iter()
            .map(|p| {
                let ready = pod_ready(p);
                json!({
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready && !terminating(p), "serving": ready, "terminating": terminating(p)},
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]},
                })
            })
            .collect();
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sp| {
                let target = if sp["targetPort"].is_null() {
                    sp["port"].clone()
                } else {
                    sp["targetPort"].clone()
                };
                let port = match selected.first() {
                    Some(p) => crate::proxy::target_port(p, &target)?,
                    None => target.as_i64()?,
                };
                Some(json!({"name": sp["name"].as_str().unwrap_or(""), "port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")}))
            })
            .collect();
        let svc_name = svc["metadata"]["name"].as_str().unwrap_or("");
        let name = format!("{svc_name}-sim");
        let res = Res::new("discovery.k8s.io", "endpointslices");
        match self.store.get(&res, ns, &name) {
            Some(old) if old["endpoints"] == json!(endpoints) && old["ports"] == json!(ports) => {}
            Some(_) => {
                let _ = self.store.mutate(&res, ns, &name, false, |o| {
                    o["endpoints"] = json!(endpoints);
                    o["ports"] = json!(ports);
                });
            }
            None => self.create(
                &res,
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {
                        "name": name, "namespace": ns,
                        "labels": {
                            "kubernetes.io/service-name": svc_name,
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                        },
                        "ownerReferences": [owner_ref(svc)],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                }),
            ),
        }
    }

    fn new_pod(&self, owner: &Value, name: String, extra_labels: &[(&str, String)]) -> Value {
        let tpl = &owner["spec"]["template"];
        let mut labels = tpl["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        for (k, v) in extra_labels {
            labels[*k] = json!(v);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": owner["metadata"]["namespace"],
                "labels": labels, "annotations": tpl["metadata"]["annotations"].clone(),
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": tpl["spec"].clone(),
        })
    }

    fn create(&self, res: &Res, obj: Value) {
        let ns = obj["metadata"]["namespace"].as_str().map(String::from);
        if let Err(e) = self
            .store
            .create(res, ns.as_deref(), obj, FieldValidation::Ignore)
            && e.code != 409
        {
            tracing::warn!(error = %e, "controller create failed");
        }
    }

    fn delete_pod(&self, p: &Value) {
        let (ns, name) = crate::store::ns_name(p);
        let _ = self
            .store
            .delete(&pods(), &ns, &name, Propagation::Background, None);
    }

    fn set_status(&self, res: &Res, obj: &Value, status: Value) {
        let (ns, name) = crate::store::ns_name(obj);
        let mut merged = obj["status"].clone();
        if !merged.is_object() {
            merged = json!({});
        }
        for (k, v) in status.as_object().into_iter().flatten() {
            merged[k] = v.clone();
        }
        if merged == obj["status"] {
            return;
        }
        let _ = self
            .store
            .mutate(res, &ns, &name, true, |o| o["status"] = merged.clone());
    }

    fn deployment(&self, d: &Value, all_pods: &[Value]) {
        if terminating(d) {
            return;
        }
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let hash = template_hash(&d["spec"]["template"]);
        let owned: Vec<&Value> = owned_by(all_pods, d)
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        let (current, old): (Vec<&Value>, Vec<&Value>) = owned
            .iter()
            .partition(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        let surge = d["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
            .as_i64()
            .unwrap_or(1)
            .max(0) as usize;
        let recreate = d["spec"]["strategy"]["type"] == "Recreate";
        if !old.is_empty()
            && (recreate
                || surge == 0
                || current.iter().filter(|p| pod_ready(p)).count() >= replicas.min(1))
        {
            // Roll: retire an old pod (the not-ready ones first).
            let victim = old.iter().find(|p| !pod_ready(p)).unwrap_or(&old[0]);
            self.delete_pod(victim);
        }
        let total = current.len() + old.len();
        if current.len() < replicas && (old.is_empty() || (!recreate && total < replicas + surge)) {
            let name = format!(
                "{}-{}-{}",
                d["metadata"]["name"].as_str().unwrap_or("d"),
                &hash[..10.min(hash.len())],
                self.next_suffix()
            );
            let pod = self.new_pod(d, name, &[("pod-template-hash", hash.clone())]);
            self.create(&pods(), pod);
        } else if current.len() > replicas {
            // Scale down: not-ready pods first, then the newest.
            let mut sorted = current.clone();
            sorted.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    ),
                )
            });
            for p in sorted.iter().take(current.len() - replicas) {
                self.delete_pod(p);
            }
        }
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let available = ready
            >= replicas
                .saturating_sub(1)
                .max(if replicas == 0 { 0 } else { 1 });
        let cond = |t: &str, ok: bool, reason: &str| {
            json!({"type": t, "status": if ok {"True"} else {"False"}, "reason": reason,
                "lastUpdateTime": now(), "lastTransitionTime": now()})
        };
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": owned.len(),
            "updatedReplicas": current.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": replicas.saturating_sub(ready),
        });
        let prev_available = d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Available")
            .map(|c| c["status"] == "True");
        if prev_available != Some(available) {
            status["conditions"] = json!([cond(
                "Available",
                available,
                if available {
                    "MinimumReplicasAvailable"
                } else {
                    "MinimumReplicasUnavailable"
                }
            )]);
        }
        self.set_status(&Res::new("apps", "deployments"), d, status);
    }

    fn stateful_set(&self, s: &Value, all_pods: &[Value]) {
        if terminating(s) {
            return;
        }
        let name = s["metadata"]["name"].as_str().unwrap_or("sts").to_string();
        let ns = s["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let replicas = s["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let hash = template_hash(&s["spec"]["template"]);
        let parallel = s["spec"]["podManagementPolicy"] == "Parallel";
        let owned = owned_by(all_pods, s);
        let by_ordinal = |i: usize| {
            let n = format!("{name}-{i}");
            owned
                .iter()
                .find(|p| p["metadata"]["name"] == n.as_str())
                .copied()
        };
        for i in 0..replicas {
            match by_ordinal(i) {
                Some(p) if terminating(p) => break,
                Some(p) => {
                    if p["metadata"]["labels"]["controller-revision-hash"] != hash.as_str()
                        && (0..replicas).all(|j| by_ordinal(j).is_some_and(pod_ready))
                    {
                        self.delete_pod(p);
                        break;
                    }
                    if !parallel && !pod_ready(p) {
                        break;
                    }
                }
                None => {
                    let pod_name = format!("{name}-{i}");
                    let mut pod = self.new_pod(
                        s,
                        pod_name.clone(),
                        &[
                            ("controller-revision-hash", hash.clone()),
                            ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                            ("apps.kubernetes.io/pod-index", i.to_string()),
                        ],
                    );
                    for t in s["spec"]["volumeClaimTemplates"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let tname = t["metadata"]["name"].as_str().unwrap_or("data");
                        let claim = format!("{tname}-{name}-{i}");
                        if self
                            .store
                            .get(&Res::new("", "persistentvolumeclaims"), &ns, &claim)
                            .is_none()
                        {
                            let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": {"name": claim, "namespace": ns, "labels": t["metadata"]["labels"].clone()},
                                "spec": t["spec"].clone()});
                            if pvc["metadata"]["labels"].is_null() {
                                pvc["metadata"]["labels"] = json!({});
                            }
                            self.create(&Res::new("", "persistentvolumeclaims"), pvc);
                        }
                        let vols = pod["spec"]["volumes"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let mut vols = vols;
                        vols.push(
                            json!({"name": tname, "persistentVolumeClaim": {"claimName": claim}}),
                        );
                        pod["spec"]["volumes"] = json!(vols);
                    }
                    pod["spec"]["hostname"] = json!(pod_name);
                    self.create(&pods(), pod);
                    if !parallel {
                        break;
                    }
                }
            }
        }
        // Scale down from the highest ordinal.
        for p in &owned {
            let ordinal = p["metadata"]["name"]
                .as_str()
                .and_then(|n| n.rsplit('-').next())
                .and_then(|o| o.parse::<usize>().ok())
                .unwrap_or(0);
            if ordinal >= replicas && !terminating(p) {
                self.delete_pod(p);
            }
        }
        let live: Vec<&&Value> = owned.iter().filter(|p| !terminating(p)).collect();
        let ready = live.iter().filter(|p| pod_ready(p)).count();
        let current = live
            .iter()
            .filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == hash.as_str())
            .count();
        self.set_status(
            &Res::new("apps", "statefulsets"),
            s,
            json!({
                "observedGeneration": s["metadata"]["generation"],
                "replicas": live.len(), "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": current, "updatedReplicas": current,
                "currentRevision": format!("{name}-{hash}"), "updateRevision": format!("{name}-{hash}"),
            }),
        );
    }

    fn job(&self, j: &Value, all_pods: &[Value]) {
        let res = Res::new("batch", "jobs");
        let (ns, name) = crate::store::ns_name(j);
        let owned = owned_by(all_pods, j);
        let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&&Value> = owned
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !terminating(p))
            .collect();
        let backoff = j["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let finished = j["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                matches!(c["type"].as_str(), Some("Complete" | "Failed")) && c["status"] == "True"
            })
            .cloned();
        if let Some(done) = &finished {
            if let (Some(ttl), Some(at)) = (
                j["spec"]["ttlSecondsAfterFinished"].as_i64(),
                done["lastTransitionTime"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
            ) && jiff::Timestamp::now().as_second() - at.as_second() >= ttl
            {
                let _ = self
                    .store
                    .delete(&res, &ns, &name, Propagation::Background, None);
            }
            return;
        }
        if terminating(j) {
            return;
        }
        let cond = |t: &str, reason: &str, message: &str| {
            json!({"type": t, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": now(), "lastTransitionTime": now()})
        };
        let mut status = json!({
            "active": active.len(), "succeeded": succeeded, "failed": failed,
            "startTime": j["status"]["startTime"].as_str().map(String::from).unwrap_or_else(now),
        });
        if succeeded >= 1 {
            status["conditions"] = json!([
                cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
            status["completionTime"] = json!(now());
            status["active"] = json!(0);
            for p in &active {
                self.delete_pod(p);
            }
        } else if failed > backoff {
            status["conditions"] = json!([
                cond(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
                cond(
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
            ]);
            status["active"] = json!(0);
        } else if active.is_empty() {
            let uid = j["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let pod = self.new_pod(
                j,
                format!("{name}-{}", self.next_suffix()),
                &[
                    ("job-name", name.clone()),
                    ("batch.kubernetes.io/job-name", name.clone()),
                    ("controller-uid", uid.clone()),
                    ("batch.kubernetes.io/controller-uid", uid),
                ],
            );
            self.create(&pods(), pod);
            status["active"] = json!(1);
        }
        self.set_status(&res, j, status);
    }
}

/// The pods a Service selects (empty selector: none, as for selector-less Services).
pub fn service_pods(store: &Store, svc: &Value) -> Vec<Value> {
    let sel = LabelSelector::from_map(&svc["spec"]["selector"]);
    if sel.is_empty() {
        return Vec::new();
    }
    let ns = svc["metadata"]["namespace"].as_str();
    store
        .list(&pods(), ns)
        .into_iter()
        .filter(|p| sel.matches(p) && pod_ready(p) && !terminating(p))
        .collect()
}
