//! The HTTP face of the API server: discovery, OpenAPI v3, CRUD, list/watch (with
//! bookmarks and `410 Gone`), patches, status/scale subresources, pod logs, Tables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::patch::{self, PatchKind};
use crate::resources::{Res, ResourceDef};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, ChangeKind, FieldValidation, Propagation, Store, Written};
use crate::table;

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct Api {
    pub store: Arc<Store>,
    /// Where the kubelet keeps pod directories (for `pods/log`).
    pub pods_dir: Option<PathBuf>,
}

type Params = HashMap<String, String>;

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut r = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    for w in warnings {
        if let Ok(h) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            r.headers_mut().append("warning", h);
        }
    }
    r
}

fn error(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
        &[],
    )
}

/// Starts the API server on `listen`; returns its address.
pub async fn serve(
    api: Api,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(handle).with_state(api);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok((addr, task))
}

/// A parsed resource URL.
#[derive(Debug)]
struct Target {
    def: ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn handle(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let reg = || api.store.registry();
    let ok = |v: Value| json_response(StatusCode::OK, &v, &[]);
    match segs.as_slice() {
        ["version"] => {
            return ok(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kubesim",
            "gitCommit": "kubesim", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => return "ok".into_response(),
        ["api"] => return ok(crate::resources::Registry::core_versions()),
        ["apis"] => return ok(reg().group_list()),
        ["openapi", "v3"] => return ok(reg().openapi_root()),
        ["openapi", "v3", rest @ ..] => {
            return match reg().openapi_gv(&rest.join("/")) {
                Some(v) => ok(v),
                None => error(&ApiError::new(404, "NotFound", "no such group-version")),
            };
        }
        ["api", "v1"] => return ok(reg().resource_list("", "v1").unwrap_or_default()),
        ["apis", g] => {
            return match reg().group(g) {
                Some(v) => ok(v),
                None => error(&ApiError::new(
                    404,
                    "NotFound",
                    format!("group {g} not found"),
                )),
            };
        }
        ["apis", g, v] => {
            return match reg().resource_list(g, v) {
                Some(v) => ok(v),
                None => error(&ApiError::new(
                    404,
                    "NotFound",
                    format!("{g}/{v} is not served"),
                )),
            };
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return error(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let (ns, plural, tail): (Option<&str>, &str, &[&str]) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(*ns), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return error(&ApiError::bad_request("no resource in the path")),
    };
    let Some(def) = reg().lookup(group, version, plural).cloned() else {
        return error(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({plural}.{group})"),
        ));
    };
    if !def.namespaced && ns.is_some() {
        return error(&ApiError::bad_request(format!(
            "{plural} is not namespaced"
        )));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    if ct.contains("protobuf") || ct.contains("cbor") {
        // kubectl's imperative generators (`kubectl create namespace …`) send
        // protobuf; manifests (`apply -f`, `create -f`) are JSON.
        return error(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "kubesim reads JSON and YAML bodies, not {ct}: write the object as a manifest and use `kubectl apply -f` (or `kubectl create -f`)"
            ),
        ));
    }
    let target = Target {
        def,
        ns: ns.map(String::from),
        name: tail.first().map(|s| s.to_string()),
        sub: tail.get(1).map(|s| s.to_string()),
    };
    let res = match dispatch(&api, &method, &target, &params, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error(&e),
    };
    tracing::debug!(%method, %uri, status = res.status().as_u16(), "request");
    res
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn dispatch(
    api: &Api,
    method: &Method,
    t: &Target,
    params: &Params,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let store = &api.store;
    let res = t.def.res();
    let ns = t.ns.clone().unwrap_or_default();
    let fv = FieldValidation::parse(params.get("fieldValidation").map(String::as_str));
    let dry_run = params.get("dryRun").is_some_and(|d| d == "All");
    let written = |w: Written, code: StatusCode| json_response(code, &w.object, &w.warnings);
    match (method.clone(), &t.name, t.sub.as_deref()) {
        (Method::GET, None, _) => {
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return Ok(watch(api, t, params, wants_table(headers)));
            }
            let mut items = filtered(store, &res, t.ns.as_deref(), params)?;
            if res == Res::new("", "events") {
                // One event store behind both APIs, as in Kubernetes.
                let newer = filtered(
                    store,
                    &Res::new("events.k8s.io", "events"),
                    t.ns.as_deref(),
                    params,
                )?;
                items.extend(newer.iter().map(core_event));
            }
            let rv = store.resource_version();
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&t.def, &items, rv),
                    &[],
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                &[],
            ))
        }
        (Method::POST, None, _) => {
            let obj: Value = parse_json(body)?;
            if dry_run {
                return Ok(json_response(StatusCode::CREATED, &obj, &[]));
            }
            Ok(written(
                store.create(&res, t.ns.as_deref(), obj, fv)?,
                StatusCode::CREATED,
            ))
        }
        (Method::DELETE, None, _) => {
            let items = filtered(store, &res, t.ns.as_deref(), params)?;
            for o in &items {
                let (ons, oname) = crate::store::ns_name(o);
                store.delete(&res, &ons, &oname, Propagation::Background, None)?;
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(),
                    "metadata": {}, "items": items}),
                &[],
            ))
        }
        (Method::GET, Some(name), None) => {
            let obj = store
                .get(&res, &ns, name)
                .ok_or_else(|| ApiError::not_found(&t.def, name))?;
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&t.def, &[obj], store.resource_version()),
                    &[],
                ));
            }
            Ok(json_response(StatusCode::OK, &obj, &[]))
        }
        (Method::GET, Some(name), Some("status")) => {
            let obj = store
                .get(&res, &ns, name)
                .ok_or_else(|| ApiError::not_found(&t.def, name))?;
            Ok(json_response(StatusCode::OK, &obj, &[]))
        }
        (Method::GET, Some(name), Some("log")) if res == Res::new("", "pods") => {
            pod_log(api, &ns, name, params)
        }
        (m, Some(name), Some("scale")) => scale(store, t, &m, &ns, name, body, headers),
        (Method::PUT, Some(name), sub) => {
            let obj = parse_json(body)?;
            if dry_run {
                return Ok(json_response(StatusCode::OK, &obj, &[]));
            }
            Ok(written(
                store.update(&res, &ns, name, obj, sub == Some("status"), fv)?,
                StatusCode::OK,
            ))
        }
        (Method::PATCH, Some(name), sub) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format ({ct})"),
                )
            })?;
            let p = patch::parse_body(kind, body)?;
            let manager = params
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            if kind == PatchKind::Apply && manager == "unknown" {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let existing = store.get(&res, &ns, name);
            if existing.is_none() && kind != PatchKind::Apply {
                return Err(ApiError::not_found(&t.def, name));
            }
            let mut out = patch::patch(kind, existing.as_ref(), &p, &manager, sub)?;
            if dry_run {
                return Ok(json_response(StatusCode::OK, &out, &[]));
            }
            match existing {
                None => {
                    if sub.is_some() {
                        return Err(ApiError::not_found(&t.def, name));
                    }
                    out["metadata"]["name"] = json!(name);
                    Ok(written(
                        store.create(&res, t.ns.as_deref(), out, fv)?,
                        StatusCode::CREATED,
                    ))
                }
                Some(old) => {
                    // A patch works on what it read: carry that version so a racing
                    // writer makes this one retry rather than lose an update.
                    if p["metadata"]["resourceVersion"].is_null() {
                        out["metadata"]["resourceVersion"] =
                            old["metadata"]["resourceVersion"].clone();
                    }
                    let status_only = sub == Some("status");
                    Ok(written(
                        store.update(&res, &ns, name, out, status_only, fv)?,
                        StatusCode::OK,
                    ))
                }
            }
        }
        (Method::DELETE, Some(name), None) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
            };
            let policy = params
                .get("propagationPolicy")
                .cloned()
                .or_else(|| opts["propagationPolicy"].as_str().map(String::from));
            let grace = params
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| opts["gracePeriodSeconds"].as_i64());
            let propagation = if policy.as_deref() == Some("Orphan") {
                Propagation::Orphan
            } else {
                Propagation::Background
            };
            let obj = store.delete(&res, &ns, name, propagation, grace)?;
            Ok(json_response(StatusCode::OK, &obj, &[]))
        }
        (m, _, sub) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{m} is not supported on {}{}",
                t.def.plural,
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ),
        )),
    }
}

/// An `events.k8s.io/v1` Event as the `v1` Event kubectl lists.
fn core_event(e: &Value) -> Value {
    let time = e["eventTime"].as_str().map(|t| {
        t.split('.')
            .next()
            .unwrap_or(t)
            .trim_end_matches('Z')
            .to_string()
            + "Z"
    });
    json!({
        "apiVersion": "v1", "kind": "Event", "metadata": e["metadata"],
        "involvedObject": e["regarding"], "reason": e["reason"], "message": e["note"],
        "type": e["type"], "action": e["action"],
        "source": {"component": e["reportingController"]},
        "reportingComponent": e["reportingController"], "reportingInstance": e["reportingInstance"],
        "firstTimestamp": time, "lastTimestamp": e["series"]["lastObservedTime"].as_str().map(String::from).or(time.clone()),
        "count": e["series"]["count"].as_i64().unwrap_or(1),
    })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| {
            std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_saphyr::from_str::<Value>(s).map_err(|e| e.to_string()))
        })
        .map_err(|e| ApiError::bad_request(format!("the body is not a valid object: {e}")))
}

fn filtered(
    store: &Store,
    res: &Res,
    ns: Option<&str>,
    params: &Params,
) -> Result<Vec<Value>, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str));
    Ok(store
        .list(res, ns)
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect())
}

fn scale(
    store: &Store,
    t: &Target,
    method: &Method,
    ns: &str,
    name: &str,
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let res = t.def.res();
    let paths = t.def.scale.clone().ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!("{} has no scale subresource", t.def.plural),
        )
    })?;
    let obj = store
        .get(&res, ns, name)
        .ok_or_else(|| ApiError::not_found(&t.def, name))?;
    let as_scale = |o: &Value| -> Value {
        let selector = match &paths.label_selector {
            Some(p) => table::json_path(o, p).as_str().unwrap_or("").to_string(),
            None => LabelSelector::from_object(&o["spec"]["selector"]).to_string_form(),
        };
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns, "uid": o["metadata"]["uid"],
                "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
            "spec": {"replicas": table::json_path(o, &paths.spec_replicas).as_i64().unwrap_or(0)},
            "status": {"replicas": table::json_path(o, &paths.status_replicas).as_i64().unwrap_or(0), "selector": selector},
        })
    };
    if *method == Method::GET {
        return Ok(json_response(StatusCode::OK, &as_scale(&obj), &[]));
    }
    let current = as_scale(&obj);
    let new_scale = if *method == Method::PUT {
        parse_json(body)?
    } else {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .unwrap_or("");
        let kind = PatchKind::from_content_type(ct)
            .ok_or_else(|| ApiError::new(415, "UnsupportedMediaType", "unknown patch type"))?;
        patch::patch(
            kind,
            Some(&current),
            &patch::parse_body(kind, body)?,
            "scale",
            Some("scale"),
        )?
    };
    let replicas = new_scale["spec"]["replicas"]
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
    if replicas < 0 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            ),
        ));
    }
    let mut updated = obj.clone();
    let mut slot = &mut updated;
    for part in paths.spec_replicas.trim_start_matches('.').split('.') {
        slot = &mut slot[part];
    }
    *slot = json!(replicas);
    if let Some(rv) = new_scale["metadata"]["resourceVersion"].as_str() {
        updated["metadata"]["resourceVersion"] = json!(rv);
    }
    let w = store.update(&res, ns, name, updated, false, FieldValidation::Ignore)?;
    Ok(json_response(StatusCode::OK, &as_scale(&w.object), &[]))
}

fn pod_log(api: &Api, ns: &str, name: &str, params: &Params) -> Result<Response, ApiError> {
    let pod = api
        .store
        .get(&Res::new("", "pods"), ns, name)
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("pods \"{name}\" not found")))?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match params.get("container") {
        Some(c) => c.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let dir = api
        .pods_dir
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("no kubelet runs pods here"))?;
    let file = dir
        .join(format!("{ns}_{name}"))
        .join(format!("{container}.log"));
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let text = match params
        .get("tailLines")
        .and_then(|t| t.parse::<usize>().ok())
    {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let mut s = lines[from..].join("\n");
            s.push('\n');
            s
        }
        None => text,
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

fn watch(api: &Api, t: &Target, params: &Params, as_table: bool) -> Response {
    let store = api.store.clone();
    let res = t.def.res();
    let def = t.def.clone();
    let ns = t.ns.clone();
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .unwrap_or_default();
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str));
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let initial_events = params.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let from: Option<u64> = params
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r != 0);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if as_table && kind != "BOOKMARK" {
                table::table(&def, std::slice::from_ref(obj), 0)
            } else {
                obj.clone()
            };
            let mut line = json!({"type": kind, "object": object}).to_string();
            line.push('\n');
            Bytes::from(line)
        };
        let matches = |o: &Value| labels.matches(o) && fields.matches(o);
        let mut last_rv;
        let mut rx_changes;
        let mut initial: Vec<(String, Value)> = Vec::new();
        match from {
            Some(rv) if !initial_events => match store.watch_from(&res, ns.as_deref(), rv) {
                Ok((past, rx)) => {
                    rx_changes = rx;
                    last_rv = rv;
                    for c in past {
                        last_rv = c.rv;
                        initial.push((c.kind.as_str().into(), c.object.clone()));
                    }
                }
                Err(crate::store::Expired) => {
                    let gone =
                        ApiError::new(410, "Expired", format!("too old resource version: {rv}"));
                    let _ = tx.send(Ok(encode("ERROR", &gone.status()))).await;
                    return;
                }
            },
            _ => {
                let now = store.resource_version();
                let Ok((_, rx)) = store.watch_from(&res, ns.as_deref(), now) else {
                    return;
                };
                rx_changes = rx;
                last_rv = now;
                for o in store.list(&res, ns.as_deref()) {
                    initial.push(("ADDED".into(), o));
                }
            }
        }
        for (kind, o) in &initial {
            if matches(o) && tx.send(Ok(encode(kind, o))).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta})
        };
        if initial_events
            && tx
                .send(Ok(encode("BOOKMARK", &bookmark(last_rv, true))))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick() => {
                    if bookmarks && tx.send(Ok(encode("BOOKMARK", &bookmark(last_rv, false)))).await.is_err() {
                        return;
                    }
                }
                c = rx_changes.recv() => {
                    let c = match c {
                        Ok(c) => c,
                        // Fell behind: end the watch; the client resumes from its last version.
                        Err(_) => return,
                    };
                    if c.rv <= last_rv || c.res != res || ns.as_deref().is_some_and(|n| n != c.ns) {
                        continue;
                    }
                    last_rv = c.rv;
                    if !matches(&c.object) {
                        continue;
                    }
                    let kind = match c.kind {
                        ChangeKind::Added => "ADDED",
                        ChangeKind::Modified => "MODIFIED",
                        ChangeKind::Deleted => "DELETED",
                    };
                    if tx.send(Ok(encode(kind, &c.object))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
