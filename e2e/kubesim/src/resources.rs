//! The resource registry: built-in kinds, kinds added by CustomResourceDefinitions, and
//! the discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`, `/openapi/v3`)
//! kubectl and kube-rs read to map kinds to URLs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A resource type, keyed by API group and plural name (`""` is the core group).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Res {
    pub group: String,
    pub plural: String,
}

impl Res {
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.into(),
            plural: plural.into(),
        }
    }
}

impl std::fmt::Display for Res {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.plural)
        } else {
            write!(f, "{}.{}", self.plural, self.group)
        }
    }
}

/// Where a scale subresource reads and writes replicas (dotted JSON paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One printer column of a CRD (`additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: String,
    pub json_path: String,
    pub priority: i64,
}

/// Everything the server knows about a resource type.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// The CRD's `openAPIV3Schema` (built-in kinds are not schema-checked).
    pub schema: Option<Value>,
    pub columns: Vec<Column>,
    pub categories: Vec<String>,
}

impl ResourceDef {
    pub fn res(&self) -> Res {
        Res::new(&self.group, &self.plural)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URL path of the group-version (`api/v1` or `apis/<g>/<v>`).
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }

    /// A built-in kind from its table row (see `BUILTIN`).
    fn builtin(gv: &str, plural: &str, kind: &str, flags: &str) -> Self {
        let (group, version) = gv.rsplit_once('/').unwrap_or(("", gv));
        let flag = |f: &str| flags.split_whitespace().any(|x| x == f);
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced: !flag("cluster"),
            short_names: flags
                .split_whitespace()
                .filter_map(|x| x.strip_prefix("short="))
                .flat_map(|x| x.split(','))
                .map(String::from)
                .collect(),
            status: flag("status"),
            scale: flag("scale").then(|| ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            }),
            schema: None,
            columns: Vec::new(),
            categories: Vec::new(),
        }
    }

    /// The definition a CustomResourceDefinition object declares (its first served
    /// version), or why it cannot be served.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().ok_or("spec.group: Required value")?;
        let names = &spec["names"];
        let plural = names["plural"]
            .as_str()
            .ok_or("spec.names.plural: Required value")?;
        let kind = names["kind"]
            .as_str()
            .ok_or("spec.names.kind: Required value")?;
        let versions = spec["versions"]
            .as_array()
            .ok_or("spec.versions: Required value")?;
        let v = versions
            .iter()
            .find(|v| v["served"].as_bool().unwrap_or(false))
            .ok_or("spec.versions: no served version")?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let sub = &v["subresources"];
        let scale = sub.get("scale").map(|s| ScalePaths {
            spec_replicas: s["specReplicasPath"]
                .as_str()
                .unwrap_or(".spec.replicas")
                .into(),
            status_replicas: s["statusReplicasPath"]
                .as_str()
                .unwrap_or(".status.replicas")
                .into(),
            label_selector: s["labelSelectorPath"].as_str().map(String::from),
        });
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| Column {
                        name: c["name"].as_str().unwrap_or("").into(),
                        kind: c["type"].as_str().unwrap_or("string").into(),
                        json_path: c["jsonPath"].as_str().unwrap_or("").into(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            group: group.into(),
            version: v["name"].as_str().unwrap_or("v1").into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase()),
            kind: kind.into(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            status: sub.get("status").is_some(),
            scale,
            schema: v["schema"].get("openAPIV3Schema").cloned(),
            columns,
            categories: strings(&names["categories"]),
        })
    }
}

/// The kinds this server offers.
#[derive(Clone, Debug)]
pub struct Registry {
    defs: BTreeMap<Res, ResourceDef>,
}

/// The built-in kinds: group/version, plural, kind, and flags (`cluster`-scoped,
/// `status` and `scale` subresources, `short=` names).
const BUILTIN: &[(&str, &str, &str, &str)] = &[
    ("v1", "namespaces", "Namespace", "cluster status short=ns"),
    ("v1", "nodes", "Node", "cluster status short=no"),
    ("v1", "pods", "Pod", "status short=po"),
    ("v1", "services", "Service", "status short=svc"),
    ("v1", "configmaps", "ConfigMap", "short=cm"),
    ("v1", "secrets", "Secret", ""),
    ("v1", "serviceaccounts", "ServiceAccount", "short=sa"),
    (
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        "status short=pvc",
    ),
    ("v1", "events", "Event", "short=ev"),
    (
        "apps/v1",
        "deployments",
        "Deployment",
        "status scale short=deploy",
    ),
    (
        "apps/v1",
        "statefulsets",
        "StatefulSet",
        "status scale short=sts",
    ),
    ("batch/v1", "jobs", "Job", "status"),
    (
        "policy/v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        "status short=pdb",
    ),
    (
        "networking.k8s.io/v1",
        "networkpolicies",
        "NetworkPolicy",
        "short=netpol",
    ),
    ("coordination.k8s.io/v1", "leases", "Lease", ""),
    ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", ""),
    ("events.k8s.io/v1", "events", "Event", "short=ev"),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", ""),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "RoleBinding",
        "",
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "ClusterRole",
        "cluster",
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        "cluster",
    ),
    (
        "autoscaling/v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "status short=hpa",
    ),
    (
        "monitoring.coreos.com/v1",
        "servicemonitors",
        "ServiceMonitor",
        "",
    ),
    (
        "monitoring.coreos.com/v1",
        "prometheusrules",
        "PrometheusRule",
        "",
    ),
    ("monitoring.coreos.com/v1", "podmonitors", "PodMonitor", ""),
    (
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        "cluster status short=crd,crds",
    ),
];

impl Default for Registry {
    fn default() -> Self {
        Self {
            defs: BUILTIN
                .iter()
                .map(|(gv, plural, kind, flags)| {
                    let d = ResourceDef::builtin(gv, plural, kind, flags);
                    (d.res(), d)
                })
                .collect(),
        }
    }
}

impl Registry {
    pub fn get(&self, res: &Res) -> Option<&ResourceDef> {
        self.defs.get(res)
    }

    /// The definition served at `group`/`version`/`plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.defs
            .get(&Res::new(group, plural))
            .filter(|d| d.version == version)
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceDef> {
        self.defs
            .values()
            .find(|d| d.kind == kind && d.api_version() == api_version)
    }

    pub fn insert(&mut self, def: ResourceDef) {
        self.defs.insert(def.res(), def);
    }

    pub fn remove(&mut self, res: &Res) {
        self.defs.remove(res);
    }

    fn group_versions(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.defs.values().filter(|d| !d.group.is_empty()) {
            let vs = out.entry(d.group.clone()).or_default();
            if !vs.contains(&d.version) {
                vs.push(d.version.clone());
            }
        }
        out
    }

    /// `GET /api`.
    pub fn core_versions() -> Value {
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .group_versions()
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/<group>` (one group's versions), if the group exists.
    pub fn group(&self, group: &str) -> Option<Value> {
        let vs = self.group_versions().remove(group)?;
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        Some(
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": versions[0]}),
        )
    }

    /// `GET /api/v1` or `/apis/<group>/<version>`, if served.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let defs: Vec<&ResourceDef> = self
            .defs
            .values()
            .filter(|d| d.group == group && d.version == version)
            .collect();
        if defs.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        for d in &defs {
            let mut r = json!({
                "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            });
            if !d.short_names.is_empty() {
                r["shortNames"] = json!(d.short_names);
            }
            if !d.categories.is_empty() {
                r["categories"] = json!(d.categories);
            }
            resources.push(r);
            if d.status {
                resources.push(json!({"name": format!("{}/status", d.plural), "singularName": "",
                    "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
            }
            if d.scale.is_some() {
                resources.push(
                    json!({"name": format!("{}/scale", d.plural), "singularName": "",
                    "namespaced": d.namespaced, "group": "autoscaling", "version": "v1",
                    "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                );
            }
            if d.plural == "pods" && d.group.is_empty() {
                resources.push(
                    json!({"name": "pods/log", "singularName": "", "namespaced": true,
                    "kind": "Pod", "verbs": ["get"]}),
                );
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }

    /// `GET /openapi/v3`: one document per group-version.
    pub fn openapi_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        let mut gvs: Vec<String> = self.defs.values().map(|d| d.gv_path()).collect();
        gvs.sort();
        gvs.dedup();
        for gv in gvs {
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={:08x}", self.defs.len())}),
            );
        }
        json!({"paths": paths})
    }

    /// `GET /openapi/v3/<gv>`: the operations of each resource with the parameters kubectl
    /// checks for (`fieldValidation`: validation happens here, on the server), and the
    /// CRD schemas.
    pub fn openapi_gv(&self, gv: &str) -> Option<Value> {
        let defs: Vec<&ResourceDef> = self.defs.values().filter(|d| d.gv_path() == gv).collect();
        if defs.is_empty() {
            return None;
        }
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        for d in defs {
            let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
            let op = json!({"x-kubernetes-group-version-kind": gvk, "parameters": [field_validation], "responses": {}});
            let base = if d.namespaced {
                format!("/{gv}/namespaces/{{namespace}}/{}", d.plural)
            } else {
                format!("/{gv}/{}", d.plural)
            };
            paths.insert(
                base.clone(),
                json!({"post": op, "parameters": [field_validation]}),
            );
            paths.insert(
                format!("{base}/{{name}}"),
                json!({"patch": op, "put": op, "parameters": [field_validation]}),
            );
            if let Some(s) = &d.schema {
                let name = format!(
                    "{}.{}.{}",
                    d.group.split('.').rev().collect::<Vec<_>>().join("."),
                    d.version,
                    d.kind
                );
                let mut s = s.clone();
                s["x-kubernetes-group-version-kind"] = json!([gvk]);
                schemas.insert(name, s);
            }
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "kubesim", "version": "v1"},
            "paths": paths,
            "components": {"schemas": schemas},
        }))
    }
}
