//! The admin port: `/metrics`, `/healthz`, `/readyz`, and `/sessions` (the sessions by
//! state, JSON: what the operator shows as a Supplier's `sessionsInFlight`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::backend::Backend;
use crate::engine::Store;

/// Shared state of the admin handlers.
pub struct Admin<B: Backend> {
    pub registry: Registry,
    pub store: Arc<Store<B>>,
    pub ready: Arc<AtomicBool>,
}

impl<B: Backend> std::fmt::Debug for Admin<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

pub fn router<B: Backend>(admin: Arc<Admin<B>>) -> Router {
    let metrics = {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            async move {
                let m = admin.store.metrics();
                m.disk_bytes.set(admin.store.backend().disk_bytes() as i64);
                for (stat, v) in admin.store.backend().stats() {
                    m.backend
                        .get_or_create(&crate::metrics::StatLabel { stat })
                        .set(v as i64);
                }
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                    Ok(()) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        out,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }
    };
    let ready = {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            async move {
                if admin.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        }
    };
    let health = {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            async move {
                match admin.store.storage_failure().borrow().as_ref() {
                    None => (StatusCode::OK, "ok\n".to_string()),
                    Some(e) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("storage write failed: {e}\n"),
                    ),
                }
            }
        }
    };
    let sessions = {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            async move { axum::Json(admin.store.metrics().session_counts()) }
        }
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
}
