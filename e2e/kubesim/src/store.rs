//! The object store: every object as JSON, one resourceVersion counter, the change log
//! watches replay from, and the API semantics that live below HTTP — admission
//! (defaults, schema, Secrets' `stringData`, Services' cluster IPs), optimistic
//! concurrency, generations, status subresources, finalizers, graceful pod deletion and
//! owner-reference garbage collection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resources::{Registry, Res, ResourceDef};
use crate::schema;

/// How many changes the log keeps for watches that resume from a resourceVersion; older
/// resumptions get `410 Gone` and list again, as with a real API server.
const LOG_LEN: usize = 20_000;

/// An API error, rendered as a `Status` object.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res_label(def)),
        )
        .with_details(def, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn with_details(mut self, def: &ResourceDef, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
        self
    }

    /// `422 Invalid` with one cause per failed field, worded like the API server.
    pub fn invalid(def: &ResourceDef, name: &str, causes: &[schema::Violation]) -> Self {
        let list: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        let message = format!(
            "{}.{} \"{name}\" is invalid: {}",
            def.kind,
            def.group,
            if list.len() == 1 {
                list[0].clone()
            } else {
                format!("[{}]", list.join(", "))
            }
        );
        Self {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(json!({
                "name": name, "group": def.group, "kind": def.kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message_without_field(), "field": c.field,
                })).collect::<Vec<_>>(),
            })),
        }
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn res_label(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.clone()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

/// A watch asked to resume from a resourceVersion the log no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired;

/// What a watch sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change of one object, at resourceVersion `rv`.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: Res,
    pub ns: String,
    pub kind: ChangeKind,
    pub object: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    res: Res,
    ns: String,
    name: String,
}

#[derive(Debug, Default)]
struct Objects {
    rv: u64,
    map: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Change>>,
    next_service_ip: u32,
    next_node_port: u16,
    next_uid: u64,
}

/// How a write treats fields the schema does not declare (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and tell the client in a `Warning` header.
    #[default]
    Warn,
    /// Refuse the write.
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Ignore,
            _ => Self::Warn,
        }
    }
}

/// A write's result: the object and the warnings for the client.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// The whole cluster state.
#[derive(Debug)]
pub struct Store {
    objects: Mutex<Objects>,
    registry: RwLock<Registry>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Pods are deleted gracefully (a kubelet finishes them) when true.
    pub graceful_pods: bool,
    /// Cluster IPs are 127.<service_net>.x.y.
    pub service_net: u8,
}

/// The current time as the API writes it.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// The object's namespace and name.
pub fn ns_name(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

impl Store {
    pub fn new(graceful_pods: bool, service_net: u8) -> Self {
        let (changes, _) = broadcast::channel(8192);
        let store = Self {
            objects: Mutex::new(Objects {
                next_service_ip: 1,
                next_node_port: 30000,
                ..Objects::default()
            }),
            registry: RwLock::new(Registry::default()),
            changes,
            graceful_pods,
            service_net,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let _ = store.create(
                &Res::new("", "namespaces"),
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                FieldValidation::Ignore,
            );
        }
        store
    }

    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn def(&self, res: &Res) -> Result<ResourceDef, ApiError> {
        self.registry().get(res).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({res})"),
            )
        })
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.objects().rv
    }

    pub fn get(&self, res: &Res, ns: &str, name: &str) -> Option<Value> {
        self.objects()
            .map
            .get(&Key {
                res: res.clone(),
                ns: ns.into(),
                name: name.into(),
            })
            .cloned()
    }

    /// Objects of `res`, in `ns` when given, in name order.
    pub fn list(&self, res: &Res, ns: Option<&str>) -> Vec<Value> {
        self.objects()
            .map
            .iter()
            .filter(|(k, _)| &k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object whose owner references include `uid`.
    fn dependents(objects: &Objects, uid: &str) -> Vec<Key> {
        objects
            .map
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The changes after `rv` for `res` (in `ns`), and a receiver for the ones to come;
    /// `Err(Expired)` when `rv` is older than the log keeps.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        res: &Res,
        ns: Option<&str>,
        rv: u64,
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>), Expired> {
        let objects = self.objects();
        let rx = self.changes.subscribe();
        if let Some(first) = objects.log.front()
            && first.rv > rv + 1
            && rv < objects.rv
        {
            return Err(Expired);
        }
        let past = objects
            .log
            .iter()
            .filter(|c| c.rv > rv && &c.res == res && ns.is_none_or(|n| c.ns == n))
            .cloned()
            .collect();
        Ok((past, rx))
    }

    fn record(&self, objects: &mut Objects, res: &Res, kind: ChangeKind, object: Value) {
        let change = Arc::new(Change {
            rv: objects.rv,
            res: res.clone(),
            ns: meta_str(&object, "namespace").to_string(),
            kind,
            object,
        });
        objects.log.push_back(change.clone());
        if objects.log.len() > LOG_LEN {
            objects.log.pop_front();
        }
        let _ = self.changes.send(change);
    }

    /// Checks and completes a custom resource against its schema.
    fn admit_custom(
        def: &ResourceDef,
        name: &str,
        obj: &mut Value,
        fv: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        let Some(s) = &def.schema else {
            return Ok(Vec::new());
        };
        let out = schema::check(s, obj);
        if !out.violations.is_empty() {
            return Err(ApiError::invalid(def, name, &out.violations));
        }
        if !out.unknown.is_empty() && fv == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                def.kind,
                def.version,
                def.kind,
                out.unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(if fv == FieldValidation::Warn {
            out.unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect()
        } else {
            Vec::new()
        })
    }

    /// Kind-specific completion done by admission and the API server's strategies.
    fn complete(
        objects: &mut Objects,
        service_net: u8,
        def: &ResourceDef,
        obj: &mut Value,
        old: Option<&Value>,
    ) {
        match (def.group.as_str(), def.plural.as_str()) {
            ("", "secrets") => {
                if let Some(sd) = obj.get("stringData").cloned() {
                    use base64::Engine;
                    let data = obj["data"].as_object().cloned().unwrap_or_default();
                    let mut data = data;
                    for (k, v) in sd.as_object().into_iter().flatten() {
                        let s = v.as_str().unwrap_or("");
                        data.insert(
                            k.clone(),
                            json!(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                    obj["data"] = Value::Object(data);
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("stringData");
                    }
                }
                if obj.get("type").is_none() {
                    obj["type"] = json!("Opaque");
                }
            }
            ("", "services") => {
                let old_ip = old.and_then(|o| o["spec"]["clusterIP"].as_str().map(String::from));
                let spec = &mut obj["spec"];
                if spec["type"].is_null() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
                    let ip = old_ip.unwrap_or_else(|| {
                        let n = objects.next_service_ip;
                        objects.next_service_ip += 1;
                        format!("127.{service_net}.{}.{}", n / 250, n % 250 + 1)
                    });
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                let node_ports = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
                for p in spec["ports"].as_array_mut().into_iter().flatten() {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                    if p["targetPort"].is_null() {
                        p["targetPort"] = p["port"].clone();
                    }
                    if node_ports && p["nodePort"].is_null() {
                        p["nodePort"] = json!(objects.next_node_port);
                        objects.next_node_port += 1;
                    }
                }
            }
            ("", "pods") => {
                if obj["status"]["phase"].is_null() {
                    obj["status"] = json!({"phase": "Pending"});
                }
                let spec = &mut obj["spec"];
                if spec["restartPolicy"].is_null() {
                    spec["restartPolicy"] = json!("Always");
                }
            }
            ("", "namespaces") if obj["status"]["phase"].is_null() => {
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "persistentvolumeclaims") => {
                obj["status"] = json!({"phase": "Bound"});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                obj["status"] = json!({
                    "acceptedNames": obj["spec"]["names"].clone(),
                    "storedVersions": [obj["spec"]["versions"][0]["name"].clone()],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
                    ],
                });
            }
            _ => {}
        }
    }

    /// Creates `obj` (namespace from the URL when given).
    pub fn create(
        &self,
        res: &Res,
        ns: Option<&str>,
        mut obj: Value,
        fv: FieldValidation,
    ) -> Result<Written, ApiError> {
        let def = self.def(res)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        }
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        if def.namespaced {
            let ns = ns
                .map(String::from)
                .or_else(|| obj["metadata"]["namespace"].as_str().map(String::from))
                .unwrap_or_else(|| "default".into());
            if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
                && body_ns != ns
            {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            if self.get(&Res::new("", "namespaces"), "", &ns).is_none() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let mut objects = self.objects();
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &def,
                    "",
                    &[schema::Violation::required("metadata.name")],
                ));
            }
            objects.next_uid += 1;
            let n = objects.next_uid;
            obj["metadata"]["name"] = json!(format!("{prefix}{}", suffix(n)));
        }
        let (ns, name) = ns_name(&obj);
        if let Err(v) = schema::check_name(&name) {
            return Err(ApiError::invalid(&def, &name, &[v]));
        }
        let warnings = Self::admit_custom(&def, &name, &mut obj, fv)?;
        let key = Key {
            res: res.clone(),
            ns: ns.clone(),
            name: name.clone(),
        };
        if objects.map.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res_label(&def)),
            )
            .with_details(&def, &name));
        }
        if res.plural == "customresourcedefinitions" {
            let crd = ResourceDef::from_crd(&obj).map_err(|e| {
                ApiError::invalid(&def, &name, &[schema::Violation::invalid("spec", &e)])
            })?;
            self.registry
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(crd);
        }
        Self::complete(&mut objects, self.service_net, &def, &mut obj, None);
        objects.rv += 1;
        objects.next_uid += 1;
        let uid = format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            objects.next_uid,
            objects.rv & 0xffff,
            objects.next_uid
        );
        let m = &mut obj["metadata"];
        m["uid"] = json!(uid);
        m["resourceVersion"] = json!(objects.rv.to_string());
        m["creationTimestamp"] = json!(now());
        m["generation"] = json!(1);
        if let Some(mm) = m.as_object_mut() {
            mm.remove("deletionTimestamp");
        }
        objects.map.insert(key, obj.clone());
        self.record(&mut objects, res, ChangeKind::Added, obj.clone());
        Ok(Written {
            object: obj,
            warnings,
        })
    }

    /// Replaces an object. `status_only`: the status subresource (only `status` changes);
    /// otherwise `status` is kept when the kind has a status subresource. A
    /// `metadata.resourceVersion` in `obj` must match the stored one.
    pub fn update(
        &self,
        res: &Res,
        ns: &str,
        name: &str,
        mut obj: Value,
        status_only: bool,
        fv: FieldValidation,
    ) -> Result<Written, ApiError> {
        let def = self.def(res)?;
        let mut objects = self.objects();
        let key = Key {
            res: res.clone(),
            ns: ns.into(),
            name: name.into(),
        };
        let Some(old) = objects.map.get(&key).cloned() else {
            return Err(ApiError::not_found(&def, name));
        };
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res_label(&def)
                ),
            )
            .with_details(&def, name));
        }
        if status_only {
            // The status and who owns which of its fields (a server-side apply of the
            // status records its manager; the next one prunes what it stopped sending).
            let status = obj.get("status").cloned().unwrap_or(Value::Null);
            let managed = obj["metadata"].get("managedFields").cloned();
            obj = old.clone();
            obj["status"] = status;
            if let Some(m) = managed {
                obj["metadata"]["managedFields"] = m;
            }
        } else if def.status {
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // Identity and system fields stay the server's.
        for f in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(f) {
                Some(v) => obj["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        let warnings = Self::admit_custom(&def, name, &mut obj, fv)?;
        let mut generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        if spec_part(&obj) != spec_part(&old) {
            generation += 1;
        }
        obj["metadata"]["generation"] = json!(generation);
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        Self::complete(&mut objects, self.service_net, &def, &mut obj, Some(&old));
        if obj == old {
            // Nothing changed: no new resourceVersion, no watch event.
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        if res.plural == "customresourcedefinitions"
            && let Ok(crd) = ResourceDef::from_crd(&obj)
        {
            self.registry
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(crd);
        }
        objects.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
        let finished = !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && !(res.plural == "pods" && res.group.is_empty() && self.graceful_pods);
        if finished {
            objects.map.remove(&key);
            self.record(&mut objects, res, ChangeKind::Deleted, obj.clone());
            self.collect_garbage(&mut objects, &obj, Propagation::Background);
        } else {
            objects.map.insert(key, obj.clone());
            self.record(&mut objects, res, ChangeKind::Modified, obj.clone());
        }
        Ok(Written {
            object: obj,
            warnings,
        })
    }

    /// Reads, changes and writes an object under one lock (controllers and the kubelet).
    pub fn mutate(
        &self,
        res: &Res,
        ns: &str,
        name: &str,
        status_only: bool,
        mut f: impl FnMut(&mut Value),
    ) -> Result<Value, ApiError> {
        loop {
            let Some(mut obj) = self.get(res, ns, name) else {
                return Err(ApiError::not_found(&self.def(res)?, name));
            };
            f(&mut obj);
            match self.update(res, ns, name, obj, status_only, FieldValidation::Ignore) {
                Err(e) if e.code == 409 => continue,
                other => return other.map(|w| w.object),
            }
        }
    }

    /// Deletes an object: at once, or — with finalizers, or a pod a kubelet must stop
    /// first — by setting `deletionTimestamp`. Returns the object as it was last seen.
    pub fn delete(
        &self,
        res: &Res,
        ns: &str,
        name: &str,
        propagation: Propagation,
        grace_seconds: Option<i64>,
    ) -> Result<Value, ApiError> {
        let def = self.def(res)?;
        let mut objects = self.objects();
        let key = Key {
            res: res.clone(),
            ns: ns.into(),
            name: name.into(),
        };
        let Some(mut obj) = objects.map.get(&key).cloned() else {
            return Err(ApiError::not_found(&def, name));
        };
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let graceful_pod = self.graceful_pods
            && res.group.is_empty()
            && res.plural == "pods"
            && !obj["spec"]["nodeName"].is_null();
        if has_finalizers || graceful_pod {
            if obj["metadata"]["deletionTimestamp"].is_null() || grace_seconds == Some(0) {
                objects.rv += 1;
                let m = &mut obj["metadata"];
                if m["deletionTimestamp"].is_null() {
                    m["deletionTimestamp"] = json!(now());
                }
                let grace = grace_seconds
                    .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30);
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                obj["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
                objects.map.insert(key, obj.clone());
                self.record(&mut objects, res, ChangeKind::Modified, obj.clone());
            }
            return Ok(obj);
        }
        objects.map.remove(&key);
        objects.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
        self.record(&mut objects, res, ChangeKind::Deleted, obj.clone());
        if res.plural == "customresourcedefinitions"
            && let Ok(crd) = ResourceDef::from_crd(&obj)
        {
            let gone = crd.res();
            self.registry
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&gone);
            let keys: Vec<Key> = objects
                .map
                .keys()
                .filter(|k| k.res == gone)
                .cloned()
                .collect();
            for k in keys {
                if let Some(o) = objects.map.remove(&k) {
                    objects.rv += 1;
                    self.record(&mut objects, &gone, ChangeKind::Deleted, o);
                }
            }
        }
        if res.plural == "namespaces" && res.group.is_empty() {
            let keys: Vec<Key> = objects
                .map
                .keys()
                .filter(|k| k.ns == name)
                .cloned()
                .collect();
            for k in keys {
                if let Some(o) = objects.map.remove(&k) {
                    objects.rv += 1;
                    self.record(&mut objects, &k.res, ChangeKind::Deleted, o);
                }
            }
        }
        self.collect_garbage(&mut objects, &obj, propagation);
        Ok(obj)
    }

    /// Removes a pod the kubelet has finished stopping.
    pub fn remove_pod(&self, ns: &str, name: &str) {
        let res = Res::new("", "pods");
        let mut objects = self.objects();
        let key = Key {
            res: res.clone(),
            ns: ns.into(),
            name: name.into(),
        };
        if let Some(mut obj) = objects.map.remove(&key) {
            objects.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
            self.record(&mut objects, &res, ChangeKind::Deleted, obj);
        }
    }

    /// Owner-reference garbage collection after `gone` was removed: dependents whose
    /// every owner is gone are deleted (background), or lose the reference (orphan).
    fn collect_garbage(&self, objects: &mut Objects, gone: &Value, propagation: Propagation) {
        let uid = meta_str(gone, "uid").to_string();
        if uid.is_empty() {
            return;
        }
        let mut queue: Vec<Key> = Self::dependents(objects, &uid);
        while let Some(k) = queue.pop() {
            let Some(mut dep) = objects.map.get(&k).cloned() else {
                continue;
            };
            let refs: Vec<Value> = dep["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let rest: Vec<Value> = refs.into_iter().filter(|r| r["uid"] != uid).collect();
            let owners_left = rest.iter().any(|r| {
                let u = r["uid"].as_str().unwrap_or("");
                objects.map.values().any(|o| meta_str(o, "uid") == u)
            });
            objects.rv += 1;
            if propagation == Propagation::Orphan || owners_left {
                dep["metadata"]["ownerReferences"] = json!(rest);
                dep["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
                objects.map.insert(k.clone(), dep.clone());
                self.record(objects, &k.res, ChangeKind::Modified, dep);
                continue;
            }
            let has_finalizers = dep["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            let graceful_pod = self.graceful_pods
                && k.res.group.is_empty()
                && k.res.plural == "pods"
                && !dep["spec"]["nodeName"].is_null();
            if has_finalizers || graceful_pod {
                if dep["metadata"]["deletionTimestamp"].is_null() {
                    dep["metadata"]["deletionTimestamp"] = json!(now());
                    dep["metadata"]["deletionGracePeriodSeconds"] = json!(
                        dep["spec"]["terminationGracePeriodSeconds"]
                            .as_i64()
                            .unwrap_or(30)
                    );
                    dep["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
                    objects.map.insert(k.clone(), dep.clone());
                    self.record(objects, &k.res, ChangeKind::Modified, dep);
                }
                continue;
            }
            objects.map.remove(&k);
            dep["metadata"]["resourceVersion"] = json!(objects.rv.to_string());
            let dep_uid = meta_str(&dep, "uid").to_string();
            self.record(objects, &k.res, ChangeKind::Deleted, dep);
            queue.extend(Self::dependents(objects, &dep_uid));
        }
    }
}

/// `propagationPolicy` of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Orphan,
}

/// Five lowercase alphanumerics from `n` (generateName suffixes, pod names).
pub fn suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
