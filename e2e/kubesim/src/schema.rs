//! Structural-schema checks of custom resources, as the API server does them before
//! storing: defaults, pruning of undeclared fields, types, enums, ranges, lengths,
//! patterns, required fields, and `x-kubernetes-validations` CEL rules (through the
//! small evaluator in `cel`). Messages follow the API server's wording.

use serde_json::{Map, Value, json};

use crate::cel;

/// One failed check of one field.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub field: String,
    pub reason: &'static str,
    /// The API server's text after the field path.
    pub body: String,
}

impl Violation {
    pub fn required(field: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            body: "Required value".into(),
        }
    }

    pub fn invalid(field: &str, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {detail}"),
        }
    }

    fn invalid_value(field: &str, value: &Value, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {}: {detail}", render(value)),
        }
    }

    pub fn message_without_field(&self) -> String {
        self.body.clone()
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// What checking an object found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<Violation>,
    /// Undeclared fields (already pruned).
    pub unknown: Vec<String>,
}

/// Defaults, prunes and checks `obj` against a CRD's `openAPIV3Schema`.
pub fn check(schema: &Value, obj: &mut Value) -> Outcome {
    let mut out = Outcome::default();
    let Some(props) = schema["properties"].as_object() else {
        return out;
    };
    let Some(map) = obj.as_object_mut() else {
        out.violations
            .push(Violation::invalid("", "the object is not a JSON object"));
        return out;
    };
    for (k, v) in map.iter_mut() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.get(k) {
            Some(s) => walk(s, v, k, &mut out),
            None => out.unknown.push(k.clone()),
        }
    }
    let unknown_top: Vec<String> = map
        .keys()
        .filter(|k| {
            !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") && !props.contains_key(*k)
        })
        .cloned()
        .collect();
    for k in unknown_top {
        map.remove(&k);
    }
    for (k, s) in props {
        if !map.contains_key(k)
            && let Some(d) = s.get("default")
        {
            map.insert(k.clone(), d.clone());
        }
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str()
            && !map.contains_key(r)
        {
            out.violations.push(Violation::required(r));
        }
    }
    out
}

/// A bound as the API server prints it (`1`, not `1.0`).
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        _ => v.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(s: &Value, v: &mut Value, path: &str, out: &mut Outcome) {
    if v.is_null() {
        if s["nullable"].as_bool() == Some(true) {
            return;
        }
        // A null where a value is declared: the API server drops it (defaults apply).
        if let Some(d) = s.get("default") {
            *v = d.clone();
        } else {
            return;
        }
    }
    if s["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            out.violations.push(Violation::invalid_value(
                path,
                v,
                &format!("{path} in body must be of type integer or string"),
            ));
        }
        return;
    }
    if let Some(t) = s["type"].as_str() {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            out.violations.push(Violation::invalid_value(
                path,
                &json!(actual),
                &format!("{path} in body must be of type {t}: {:?}", actual),
            ));
            return;
        }
    }
    let errors_before = out.violations.len();
    match v {
        Value::Object(map) => walk_object(s, map, path, out),
        Value::Array(items) => {
            if let Some(min) = s["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                out.violations.push(Violation::invalid_value(
                    path,
                    &json!(items.len()),
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = s["maxItems"].as_u64()
                && (items.len() as u64) > max
            {
                out.violations.push(Violation {
                    field: path.into(),
                    reason: "FieldValueTooMany",
                    body: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(is, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
    match &*v {
        Value::String(st) => {
            if let Some(min) = s["minLength"].as_u64()
                && (st.chars().count() as u64) < min
            {
                out.violations.push(Violation::invalid_value(
                    path,
                    v,
                    &format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = s["maxLength"].as_u64()
                && (st.chars().count() as u64) > max
            {
                out.violations.push(Violation {
                    field: path.into(),
                    reason: "FieldValueTooLong",
                    body: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(p) = s["pattern"].as_str() {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => out.violations.push(Violation::invalid_value(
                        path,
                        v,
                        &format!("{path} in body should match '{p}'"),
                    )),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = s["minimum"].as_f64()
                && x < min
            {
                out.violations.push(Violation::invalid_value(
                    path,
                    v,
                    &format!(
                        "{path} in body should be greater than or equal to {}",
                        number(&s["minimum"])
                    ),
                ));
            }
            if let Some(max) = s["maximum"].as_f64()
                && x > max
            {
                out.violations.push(Violation::invalid_value(
                    path,
                    v,
                    &format!(
                        "{path} in body should be less than or equal to {}",
                        number(&s["maximum"])
                    ),
                ));
            }
        }
        _ => {}
    }
    if let Some(allowed) = s["enum"].as_array()
        && !allowed.contains(v)
    {
        out.violations.push(Violation {
            field: path.into(),
            reason: "FieldValueNotSupported",
            body: format!(
                "Unsupported value: {}: supported values: {}",
                render(v),
                allowed.iter().map(render).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    // CEL rules run only on values that passed the structural checks (as the API
    // server does), so a type error is reported once, not again as a rule failure.
    if out.violations.len() > errors_before {
        return;
    }
    for rule in s["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(expr) = rule["rule"].as_str() else {
            continue;
        };
        let message = rule["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("failed rule: {expr}"));
        match cel::eval_rule(expr, v) {
            Ok(true) => {}
            Ok(false) => out
                .violations
                .push(Violation::invalid_value(path, v, &message)),
            Err(e) => out.violations.push(Violation {
                field: path.into(),
                reason: "FieldValueInvalid",
                body: format!("Invalid value: {}: rule {expr:?}: {e}", render(v)),
            }),
        }
    }
}

fn walk_object(s: &Value, map: &mut Map<String, Value>, path: &str, out: &mut Outcome) {
    let preserve = s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let props = s["properties"].as_object();
    let additional = s.get("additionalProperties").filter(|a| a.is_object());
    if let Some(props) = props {
        for (k, ps) in props {
            if !map.contains_key(k)
                && let Some(d) = ps.get("default")
            {
                map.insert(k.clone(), d.clone());
            }
        }
    }
    let mut unknown = Vec::new();
    for (k, v) in map.iter_mut() {
        let child = format!("{path}.{k}");
        if let Some(ps) = props.and_then(|p| p.get(k)) {
            walk(ps, v, &child, out);
        } else if let Some(a) = additional {
            walk(a, v, &child, out);
        } else if !preserve && (props.is_some() || s["type"] == "object") {
            unknown.push(k.clone());
        }
    }
    for k in unknown {
        map.remove(&k);
        out.unknown.push(format!("{path}.{k}"));
    }
    for r in s["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str()
            && map.get(r).is_none_or(Value::is_null)
        {
            out.violations
                .push(Violation::required(&format!("{path}.{r}")));
        }
    }
}

/// `metadata.name` must be a DNS subdomain (RFC 1123).
pub fn check_name(name: &str) -> Result<(), Violation> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Violation::invalid_value(
            "metadata.name",
            &json!(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
            "type": "object", "required": ["serviceId"],
            "properties": {
                "serviceId": {"type": "string", "pattern": "^[a-z]+$"},
                "minReplicas": {"type": "integer", "minimum": 0, "default": 1},
                "maxReplicas": {"type": "integer", "minimum": 1, "default": 1},
                "kind": {"type": "string", "enum": ["vllm", "triton"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "x-kubernetes-validations": [{"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}],
        }}})
    }

    #[test]
    fn defaults_prunes_and_reports_like_the_api_server() {
        let mut ok = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"serviceId": "llm", "extra": 1, "labels": {"a": "b"}}});
        let out = check(&schema(), &mut ok);
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        assert_eq!(out.unknown, vec!["spec.extra"]);
        assert_eq!(ok["spec"]["minReplicas"], 1, "default applied");
        assert!(ok["spec"].get("extra").is_none(), "pruned");

        let mut bad = json!({"spec": {"serviceId": "LLM", "minReplicas": 3, "maxReplicas": 0, "kind": "foo"}});
        let out = check(&schema(), &mut bad);
        let text: Vec<String> = out.violations.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "spec.kind: Unsupported value: \"foo\": supported values: \"vllm\", \"triton\"",
                "spec.maxReplicas: Invalid value: 0: spec.maxReplicas in body should be greater than or equal to 1",
                "spec.serviceId: Invalid value: \"LLM\": spec.serviceId in body should match '^[a-z]+$'",
            ],
            "rules wait for a structurally valid value"
        );
        let mut crossed = json!({"spec": {"serviceId": "llm", "minReplicas": 3, "maxReplicas": 2}});
        let text: Vec<String> = check(&schema(), &mut crossed)
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            text,
            vec!["spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"]
        );
        let mut missing = json!({"spec": {"minReplicas": "x"}});
        let text: Vec<String> = check(&schema(), &mut missing)
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "spec.minReplicas: Invalid value: \"string\": spec.minReplicas in body must be of type integer: \"string\"",
                "spec.serviceId: Required value",
            ]
        );
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(check_name("qwen-7b").is_ok());
        assert!(check_name("Qwen").is_err());
        assert!(check_name("-a").is_err());
    }
}
