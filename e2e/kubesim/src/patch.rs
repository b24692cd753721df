//! The four PATCH flavours: JSON patch (RFC 6902), JSON merge patch (RFC 7386),
//! strategic merge patch (merge patch where lists of objects with a `name` merge by name,
//! with `$patch: delete|replace` honoured), and server-side apply (fields the same manager
//! applied before but no longer sends are removed; everything sent is set; ownership is
//! recorded in `managedFields`; conflicts are always forced — see the README).

use serde_json::{Map, Value, json};

use crate::store::{ApiError, now};

/// Which patch a request carries (from its `Content-Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        Some(match ct {
            "application/json-patch+json" => Self::Json,
            "application/merge-patch+json" => Self::Merge,
            "application/strategic-merge-patch+json" => Self::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Self::Apply,
            _ => return None,
        })
    }
}

/// Parses a patch body: JSON, or YAML for apply patches.
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    if kind == PatchKind::Apply {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
        return serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    Err(ApiError::bad_request("the patch body is not valid JSON"))
}

/// Applies a patch of `kind` to `target` (`None`: no such object yet, which only apply
/// may create). `manager` is the field manager of an apply, and `subresource` the part
/// it applies to (`status`, or `None` for the object): like the API server, a manager's
/// fields are tracked apart for the object and each subresource.
pub fn patch(
    kind: PatchKind,
    target: Option<&Value>,
    body: &Value,
    manager: &str,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Json => {
            let mut doc = target.cloned().unwrap_or(Value::Null);
            let p: json_patch::Patch = serde_json::from_value(body.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
            })?;
            Ok(doc)
        }
        PatchKind::Merge => {
            let mut doc = target.cloned().unwrap_or(Value::Null);
            json_patch::merge(&mut doc, body);
            Ok(doc)
        }
        PatchKind::Strategic => {
            let mut doc = target.cloned().unwrap_or(Value::Null);
            strategic(&mut doc, body);
            Ok(doc)
        }
        PatchKind::Apply => Ok(apply(target, body, manager, subresource)),
    }
}

fn strategic(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *doc = Value::Object(p);
        return;
    }
    if !doc.is_object() {
        *doc = json!({});
    }
    let Value::Object(d) = doc else { return };
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k.starts_with("$retainKeys") || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (d.get_mut(field), v) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                d.remove(k);
            }
            Value::Array(items) if items.iter().all(|i| i.get("name").is_some()) => {
                let existing = d.entry(k.clone()).or_insert_with(|| json!([]));
                let Value::Array(list) = existing else {
                    *existing = v.clone();
                    continue;
                };
                for item in items {
                    let name = &item["name"];
                    let pos = list.iter().position(|x| &x["name"] == name);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (Some(i), false) => strategic(&mut list[i], item),
                        (None, false) => {
                            let mut fresh = Value::Null;
                            strategic(&mut fresh, item);
                            list.push(fresh);
                        }
                        (None, true) => {}
                    }
                }
            }
            Value::Object(_) => strategic(d.entry(k.clone()).or_insert(Value::Null), v),
            other => {
                d.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The field set of an applied configuration, in `managedFields`' `FieldsV1` shape
/// (lists are owned whole).
fn field_set(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                out.insert(format!("f:{k}"), field_set(v));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// Removes from `doc` the fields in `old` but not in `new` (both field sets).
fn prune(doc: &mut Value, old: &Value, new: &Value) {
    let (Some(old), Some(d)) = (old.as_object(), doc.as_object_mut()) else {
        return;
    };
    for (fk, sub) in old {
        let Some(k) = fk.strip_prefix("f:") else {
            continue;
        };
        match new.get(fk.as_str()) {
            None => {
                d.remove(k);
            }
            Some(new_sub) => {
                if let Some(child) = d.get_mut(k) {
                    prune(child, sub, new_sub);
                }
            }
        }
    }
}

fn deep_merge(doc: &mut Value, config: &Value) {
    match (doc.as_object_mut(), config) {
        (Some(d), Value::Object(c)) => {
            for (k, v) in c {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *doc = config.clone(),
    }
}

fn apply(
    target: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: Option<&str>,
) -> Value {
    let mut doc = target.cloned().unwrap_or_else(|| json!({}));
    let mut managed: Vec<Value> = doc["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_set = field_set(config);
    let mine = managed.iter().position(|m| {
        m["manager"] == manager
            && m["operation"] == "Apply"
            && m["subresource"].as_str() == subresource
    });
    if let Some(i) = mine {
        let old_set = managed[i]["fieldsV1"].clone();
        prune(&mut doc, &old_set, &new_set);
        managed.remove(i);
    }
    let mut cfg = config.clone();
    if let Some(m) = cfg["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    deep_merge(&mut doc, &cfg);
    let mut entry = json!({
        "manager": manager, "operation": "Apply",
        "apiVersion": config["apiVersion"], "time": now(),
        "fieldsType": "FieldsV1", "fieldsV1": new_set,
    });
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    managed.push(entry);
    doc["metadata"]["managedFields"] = json!(managed);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_removes_what_the_manager_stopped_sending_and_keeps_others_fields() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v", "old": "o"}});
        let created = patch(PatchKind::Apply, None, &first, "op", None).expect("apply");
        let mut edited = created.clone();
        edited["metadata"]["labels"]["z"] = json!("kubectl");
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v2"}});
        let out = patch(PatchKind::Apply, Some(&edited), &second, "op", None).expect("apply");
        assert_eq!(out["data"], json!({"k": "v2"}));
        assert_eq!(out["metadata"]["labels"], json!({"x": "1", "z": "kubectl"}));
        assert_eq!(
            out["metadata"]["managedFields"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn a_manager_owns_its_object_fields_and_its_status_fields_apart() {
        let obj =
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"n": 1}});
        let created = patch(PatchKind::Apply, None, &obj, "op", None).expect("apply");
        let st = json!({"apiVersion": "v1", "kind": "X", "status": {"ready": 1, "old": true}});
        let with_status =
            patch(PatchKind::Apply, Some(&created), &st, "op", Some("status")).expect("status");
        let st2 = json!({"apiVersion": "v1", "kind": "X", "status": {"ready": 2}});
        let out = patch(
            PatchKind::Apply,
            Some(&with_status),
            &st2,
            "op",
            Some("status"),
        )
        .expect("status");
        assert_eq!(
            out["status"],
            json!({"ready": 2}),
            "the status field it stopped sending is gone"
        );
        assert_eq!(
            out["spec"],
            json!({"n": 1}),
            "its object fields are not touched"
        );
        let entries = out["metadata"]["managedFields"]
            .as_array()
            .expect("managed");
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().any(|e| e["subresource"] == "status"));
    }

    #[test]
    fn strategic_merge_merges_named_lists_and_honours_delete() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        strategic(
            &mut doc,
            &json!({"spec": {"containers": [{"name": "a", "image": "3"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "4"}]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [{"name": "a", "image": "3"}, {"name": "c", "image": "4"}]}})
        );
        let merged = patch(
            PatchKind::Merge,
            Some(&json!({"a": 1, "b": {"c": 2}})),
            &json!({"b": {"c": null, "d": 3}}),
            "",
            None,
        )
        .expect("merge");
        assert_eq!(merged, json!({"a": 1, "b": {"d": 3}}));
        let jp = patch(
            PatchKind::Json,
            Some(&json!({"a": [1]})),
            &json!([{"op": "add", "path": "/a/-", "value": 2}]),
            "",
            None,
        )
        .expect("json patch");
        assert_eq!(jp, json!({"a": [1, 2]}));
    }
}
