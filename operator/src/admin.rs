//! The operator's admin port: `/metrics`, `/healthz`, `/readyz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the operator has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    /// Reconciles by (kind, outcome: `ok` or an error category).
    reconciles: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub jobs_created: AtomicU64,
    pub scale_decisions: AtomicU64,
    pub leader: AtomicBool,
    /// Per Supplier (namespace, name): its conditions and failed window Jobs.
    suppliers: Mutex<BTreeMap<(String, String), SupplierGauges>>,
}

#[derive(Debug, Default, Clone)]
struct SupplierGauges {
    conditions: Vec<(String, bool)>,
    failed_window_jobs: u64,
}

impl OperatorMetrics {
    pub fn reconciled(&self, kind: &'static str, outcome: &'static str) {
        *self
            .reconciles
            .lock()
            .expect("metrics lock")
            .entry((kind, outcome))
            .or_default() += 1;
    }

    /// Records a Supplier's conditions and failed claim/prove Jobs (alerts read them).
    pub fn supplier(
        &self,
        ns: &str,
        name: &str,
        conditions: Vec<(String, bool)>,
        failed_window_jobs: u64,
    ) {
        self.suppliers.lock().expect("metrics lock").insert(
            (ns.to_string(), name.to_string()),
            SupplierGauges {
                conditions,
                failed_window_jobs,
            },
        );
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP lode_operator_reconciles_total Reconciles by kind and outcome (ok, or the error category).\n# TYPE lode_operator_reconciles_total counter\n",
        );
        for ((kind, outcome), n) in self.reconciles.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "lode_operator_reconciles_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lode_operator_jobs_created_total stake, claim and prove Jobs started.\n# TYPE lode_operator_jobs_created_total counter\nlode_operator_jobs_created_total {}",
            self.jobs_created.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP lode_operator_scale_decisions_total Replica changes the demand autoscaler wrote.\n# TYPE lode_operator_scale_decisions_total counter\nlode_operator_scale_decisions_total {}",
            self.scale_decisions.load(Ordering::Relaxed)
        );
        let suppliers = self.suppliers.lock().expect("metrics lock").clone();
        let _ = writeln!(
            out,
            "# HELP lode_operator_supplier_condition A Supplier's status conditions (1 True, 0 False).\n# TYPE lode_operator_supplier_condition gauge"
        );
        for ((ns, name), g) in &suppliers {
            for (t, ok) in &g.conditions {
                let _ = writeln!(
                    out,
                    "lode_operator_supplier_condition{{namespace=\"{ns}\",supplier=\"{name}\",type=\"{t}\"}} {}",
                    u8::from(*ok)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lode_operator_failed_window_jobs Failed claim/prove Jobs of a Supplier still present (a window may be at risk).\n# TYPE lode_operator_failed_window_jobs gauge"
        );
        for ((ns, name), g) in &suppliers {
            let _ = writeln!(
                out,
                "lode_operator_failed_window_jobs{{namespace=\"{ns}\",supplier=\"{name}\"}} {}",
                g.failed_window_jobs
            );
        }
        let _ = writeln!(
            out,
            "# HELP lode_operator_leader 1 while this replica holds the leader Lease.\n# TYPE lode_operator_leader gauge\nlode_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<OperatorMetrics>,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        // A standby replica is healthy and ready: it takes over when the leader goes.
        .route("/readyz", get(|| async { "ready" }));
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_reconciles_jobs_and_leadership() {
        let m = OperatorMetrics::default();
        m.reconciled("ServiceModel", "ok");
        m.reconciled("ServiceModel", "ok");
        m.reconciled("Supplier", "ApiError");
        m.jobs_created.fetch_add(3, Ordering::Relaxed);
        m.leader.store(true, Ordering::Relaxed);
        m.scale_decisions.fetch_add(2, Ordering::Relaxed);
        m.supplier(
            "pokt",
            "s1",
            vec![("StoreReady".into(), true), ("ClaimsHealthy".into(), false)],
            1,
        );
        let t = m.render();
        for line in [
            "lode_operator_reconciles_total{kind=\"ServiceModel\",outcome=\"ok\"} 2",
            "lode_operator_reconciles_total{kind=\"Supplier\",outcome=\"ApiError\"} 1",
            "lode_operator_jobs_created_total 3",
            "lode_operator_scale_decisions_total 2",
            "lode_operator_supplier_condition{namespace=\"pokt\",supplier=\"s1\",type=\"StoreReady\"} 1",
            "lode_operator_supplier_condition{namespace=\"pokt\",supplier=\"s1\",type=\"ClaimsHealthy\"} 0",
            "lode_operator_failed_window_jobs{namespace=\"pokt\",supplier=\"s1\"} 1",
            "lode_operator_leader 1",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
    }
}
