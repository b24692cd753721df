//! Server-side printing (`Accept: …;as=Table`): what `kubectl get` shows. CRDs print
//! their `additionalPrinterColumns`; the built-in kinds lode uses print the columns
//! kubectl users know; other kinds print NAME and AGE.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// `HumanDuration` of apimachinery: `45s`, `3m12s`, `2h5m`, `4d`.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// The age of a timestamp, for a table cell.
pub fn age(ts: &Value) -> String {
    let Some(s) = ts.as_str() else {
        return "<unknown>".into();
    };
    match s.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<invalid>".into(),
    }
}

/// Follows a simple JSONPath (`.status.lastClaim.outcome`, `.spec.ports[0].port`).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> &'a Value {
    let mut v = obj;
    for part in path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            v = &v[name];
        }
        if let Some(i) = index {
            v = &v[i];
        }
    }
    v
}

fn cell(v: &Value) -> Value {
    match v {
        Value::Null => json!("<none>"),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => v.clone(),
        other => json!(other.to_string()),
    }
}

fn column(name: &str, kind: &str, priority: i64) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": "", "priority": priority})
}

fn pod_cells(p: &Value) -> Vec<Value> {
    let statuses = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = p["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let inits = p["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let restarts: i64 = statuses
        .iter()
        .chain(&inits)
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut status = p["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string();
    // The first init container not yet succeeded decides, as kubectl prints it:
    // `Init:<reason>` when it failed or waits for a reason, else `Init:<done>/<all>`.
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let term = &c["state"]["terminated"];
        if term["exitCode"] == 0 {
            continue;
        }
        initializing = true;
        let waiting = c["state"]["waiting"]["reason"].as_str();
        status = if !term.is_null() {
            format!("Init:{}", term["reason"].as_str().unwrap_or("Error"))
        } else if let Some(r) = waiting.filter(|r| *r != "PodInitializing") {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{}", inits.len())
        };
        break;
    }
    for c in statuses.iter().filter(|_| !initializing) {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            status = r.into();
        } else if let Some(r) = c["state"]["terminated"]["reason"].as_str()
            && status != "Pending"
        {
            status = r.into();
        }
    }
    if let Some(r) = p["status"]["reason"].as_str() {
        status = r.into();
    }
    if !p["metadata"]["deletionTimestamp"].is_null() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(&p["metadata"]["creationTimestamp"])),
        cell(&p["status"]["podIP"]),
        cell(&p["spec"]["nodeName"]),
    ]
}

/// Column definitions and per-object cells for `def`.
#[allow(clippy::type_complexity)]
fn layout(def: &ResourceDef) -> (Vec<Value>, Box<dyn Fn(&Value) -> Vec<Value>>) {
    let name = column("Name", "string", 0);
    let age_col = column("Age", "string", 0);
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => (
            vec![
                name,
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "integer", 0),
                age_col,
                column("IP", "string", 1),
                column("Node", "string", 1),
            ],
            Box::new(pod_cells),
        ),
        ("apps", "deployments") => (
            vec![
                name,
                column("Ready", "string", 0),
                column("Up-to-date", "integer", 0),
                column("Available", "integer", 0),
                age_col,
            ],
            Box::new(|d: &Value| {
                let st = &d["status"];
                vec![
                    json!(format!(
                        "{}/{}",
                        st["readyReplicas"].as_i64().unwrap_or(0),
                        d["spec"]["replicas"].as_i64().unwrap_or(1)
                    )),
                    json!(st["updatedReplicas"].as_i64().unwrap_or(0)),
                    json!(st["availableReplicas"].as_i64().unwrap_or(0)),
                    json!(age(&d["metadata"]["creationTimestamp"])),
                ]
            }),
        ),
        ("apps", "statefulsets") => (
            vec![name, column("Ready", "string", 0), age_col],
            Box::new(|d: &Value| {
                vec![
                    json!(format!(
                        "{}/{}",
                        d["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        d["spec"]["replicas"].as_i64().unwrap_or(1)
                    )),
                    json!(age(&d["metadata"]["creationTimestamp"])),
                ]
            }),
        ),
        ("batch", "jobs") => (
            vec![
                name,
                column("Status", "string", 0),
                column("Completions", "string", 0),
                age_col,
            ],
            Box::new(|j: &Value| {
                let st = &j["status"];
                let status = st["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["status"] == "True")
                    .find_map(|c| match c["type"].as_str() {
                        Some("Complete") => Some("Complete"),
                        Some("Failed") => Some("Failed"),
                        _ => None,
                    })
                    .unwrap_or("Running");
                vec![
                    json!(status),
                    json!(format!("{}/1", st["succeeded"].as_i64().unwrap_or(0))),
                    json!(age(&j["metadata"]["creationTimestamp"])),
                ]
            }),
        ),
        ("", "events") => (
            vec![
                column("Last Seen", "string", 0),
                column("Type", "string", 0),
                column("Reason", "string", 0),
                column("Object", "string", 0),
                column("Message", "string", 0),
            ],
            Box::new(|e: &Value| {
                let o = &e["involvedObject"];
                vec![
                    cell(&e["type"]),
                    cell(&e["reason"]),
                    json!(format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or("").to_lowercase(),
                        o["name"].as_str().unwrap_or("")
                    )),
                    cell(&e["message"]),
                ]
            }),
        ),
        ("", "services") => (
            vec![
                name,
                column("Type", "string", 0),
                column("Cluster-IP", "string", 0),
                column("Port(s)", "string", 0),
                age_col,
            ],
            Box::new(|s: &Value| {
                let ports: Vec<String> = s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| match p["nodePort"].as_i64() {
                        Some(n) => format!("{}:{n}/TCP", p["port"]),
                        None => format!("{}/TCP", p["port"]),
                    })
                    .collect();
                vec![
                    cell(&s["spec"]["type"]),
                    cell(&s["spec"]["clusterIP"]),
                    json!(ports.join(",")),
                    json!(age(&s["metadata"]["creationTimestamp"])),
                ]
            }),
        ),
        _ if !def.columns.is_empty() => {
            let mut cols = vec![name];
            for c in &def.columns {
                let kind = if c.kind == "date" { "string" } else { &c.kind };
                cols.push(column(&c.name, kind, c.priority));
            }
            let defs = def.columns.clone();
            (
                cols,
                Box::new(move |o: &Value| {
                    defs.iter()
                        .map(|c| {
                            let v = json_path(o, &c.json_path);
                            if c.kind == "date" {
                                if v.is_null() {
                                    json!("<none>")
                                } else {
                                    json!(age(v))
                                }
                            } else {
                                cell(v)
                            }
                        })
                        .collect()
                }),
            )
        }
        _ => (
            vec![name, age_col],
            Box::new(|o: &Value| vec![json!(age(&o["metadata"]["creationTimestamp"]))]),
        ),
    }
}

/// A `meta.k8s.io/v1` Table of `objects`.
pub fn table(def: &ResourceDef, objects: &[Value], resource_version: u64) -> Value {
    let (columns, cells) = layout(def);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut c = if def.group.is_empty() && def.plural == "events" {
                vec![json!(age(&o["lastTimestamp"]))]
            } else {
                vec![cell(&o["metadata"]["name"])]
            };
            c.extend(cells(o));
            json!({"cells": c, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            }})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(5 * 3600 + 60), "5h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
        let o = json!({"status": {"lastClaim": {"outcome": "claimed"}}, "spec": {"p": [{"x": 1}]}});
        assert_eq!(json_path(&o, ".status.lastClaim.outcome"), "claimed");
        assert_eq!(json_path(&o, ".spec.p[0].x"), 1);
    }
}
