//! The demand autoscaler on the fleet: a load step grows the serving Deployment within
//! seconds, the load drop shrinks it after the stabilization window, and no relay fails
//! or goes missing on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lode_fleet::{Fleet, http_get, metric_sum};
use lode_kubesim::resources::Res;
use serde_json::Value;

mod common;
use common::fleet_options;

fn model(fleet: &Fleet) -> Value {
    fleet
        .sim
        .store
        .get(
            &Res::new("lode.pokt.network", "servicemodels"),
            "lode",
            "qwen-7b",
        )
        .expect("the ServiceModel")
}

fn replicas(fleet: &Fleet) -> i64 {
    model(fleet)["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// Engine pods: (ready, all not terminating).
fn serving(fleet: &Fleet) -> (usize, usize) {
    let pods: Vec<Value> = fleet
        .sim
        .store
        .list(&Res::new("", "pods"), Some("lode"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "engine")
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ready = pods
        .iter()
        .filter(|p| lode_kubesim::controllers::pod_ready(p))
        .count();
    (ready, pods.len())
}

/// One fleet at a time: two at once on a 2-core machine start too slowly for the
/// timings these tests check.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fleet with the sample ServiceModel from one engine replica (the sample runs
/// two) and `autoscaling`, once it serves.
async fn serving_from_one_engine(o: lode_fleet::FleetOptions, autoscaling: &str) -> Fleet {
    let fleet = Fleet::start(o).await.expect("fleet");
    let sm_file = fleet.manifests.join("20-servicemodel.yaml");
    let text = std::fs::read_to_string(&sm_file)
        .expect("sample")
        .replace("minReplicas: 2", "minReplicas: 1");
    std::fs::write(&sm_file, format!("{text}  autoscaling: {autoscaling}\n")).expect("write");
    fleet.apply_manifests().expect("apply");
    fleet
        .first_relay(Duration::from_secs(90))
        .await
        .expect("the fleet serves");
    fleet
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_step_scales_up_within_seconds_and_the_drop_scales_down_losing_nothing() {
    let _one = ONE_FLEET.lock().await;
    let root = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.apply_samples = false;
    // Three GPUs: the fourth serving pod waits for a GPU node, as on a real cluster.
    o.gpus = 3;
    // Each request stays in flight ~0.7 s (time to first token, then 8 tokens).
    o.engine_args = ["--ttft-ms", "500", "--tokens-per-second", "40"]
        .map(String::from)
        .to_vec();
    let fleet = serving_from_one_engine(
        o,
        "{targetInFlightPerReplica: 2, scaleDownStabilizationSeconds: 8}",
    )
    .await;
    assert_eq!(replicas(&fleet), 1, "idle: one replica");

    // The step: 8 clients back to back, ~8 relays in flight against a target of 2.
    // Client 0 goes on through the drop: the engines are scaled down under its load.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_trickle = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = fleet.options.gateway_port;
    let mut clients = Vec::new();
    for c in 0..8 {
        let stop = if c == 0 {
            stop_trickle.clone()
        } else {
            stop.clone()
        };
        let (ok, failed) = (ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match lode_fleet::chat(port, &format!("client {c} request {i}")).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("client {c} request {i}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let to_write = until("the scale-up write", Duration::from_secs(10), || {
        replicas(&fleet) > 1
    })
    .await;
    println!("load step → scale write: {:.2} s", to_write.as_secs_f64());
    assert!(to_write <= Duration::from_secs(3), "{to_write:?}");
    until("4 replicas", Duration::from_secs(10), || {
        replicas(&fleet) == 4
    })
    .await;
    until("3 serving pods ready", Duration::from_secs(30), || {
        serving(&fleet).0 == 3
    })
    .await;
    until(
        "the pod without a GPU shown as pending",
        Duration::from_secs(10),
        || model(&fleet)["status"]["pendingReplicas"] == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&fleet), 4, "steady under steady load (max is 4)");
    assert_eq!(serving(&fleet), (3, 4));

    // The drop to one client: less demand for the window, then down to one engine,
    // under that client's relays: the three engines leaving drain (the relay tier sends
    // them nothing new once their EndpointSlice says terminating) and lose nothing.
    stop.store(true, Ordering::Relaxed);
    let trickle = clients.remove(0);
    for c in clients {
        c.await.expect("client");
    }
    let dropped = Instant::now();
    until("the scale-down write", Duration::from_secs(30), || {
        replicas(&fleet) == 1
    })
    .await;
    let waited = dropped.elapsed();
    println!(
        "load drop → scale-down write: {:.1} s (window 8 s)",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_secs(7),
        "scaled down before the window: {waited:?}"
    );
    until("one engine pod left", Duration::from_secs(60), || {
        serving(&fleet) == (1, 1)
    })
    .await;
    let during = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_trickle.store(true, Ordering::Relaxed);
    trickle.await.expect("client");
    assert!(
        ok.load(Ordering::Relaxed) > during,
        "relays served on the engine left"
    );

    // No relay failed, none was lost: the store acknowledged every relay served.
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} relays served under load, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 50, "{ok}");
    let store_ip = fleet
        .sim
        .store
        .get(&Res::new("", "pods"), "lode", "supplier-1-store-0")
        .and_then(|p| p["status"]["podIP"].as_str().map(String::from))
        .expect("store pod IP");
    let mut ingested = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        let m = http_get(&format!("{store_ip}:9090"), "/metrics")
            .await
            .unwrap_or_default();
        ingested = metric_sum(&m, "lode_store_relays_ingested_total");
        if ingested > ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ingested,
        ok + 1,
        "every relay served (and the first one) is in the store"
    );

    // Each decision is in status (with its signals) and an Event.
    let decisions = model(&fleet)["status"]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let summary: Vec<(i64, i64)> = decisions
        .iter()
        .map(|d| {
            (
                d["from"].as_i64().unwrap_or(0),
                d["to"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let (ups, down) = summary.split_at(summary.len().saturating_sub(1));
    assert_eq!(
        ups.first(),
        Some(&(1, 2)),
        "first step doubles: {summary:?}"
    );
    assert!(
        ups.windows(2).all(|w| w[0].1 == w[1].0 && w[1].1 > w[0].1),
        "{summary:?}"
    );
    assert_eq!(ups.last().map(|u| u.1), Some(4), "{summary:?}");
    assert_eq!(down, [(4, 1)], "one move down: {summary:?}");
    assert!(
        decisions[0]["inFlight"].as_i64().unwrap_or(0) >= 3,
        "{decisions:?}"
    );
    let last = &decisions[decisions.len() - 1];
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("scale down"),
        "{last}"
    );
    let events = fleet
        .sim
        .store
        .list(&Res::new("events.k8s.io", "events"), Some("lode"));
    // The recorder folds repeats of one reason into an Event series.
    let count = |reason: &str| -> u64 {
        events
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .sum()
    };
    assert_eq!(count("ScaledUp"), ups.len() as u64, "{events:?}");
    assert_eq!(count("ScaledDown"), 1, "{events:?}");
    fleet.shutdown().await;
}

/// A KV-cache-bound load: long prompts, one relay in flight at a time, against a
/// relays target no load here reaches. The engines' own signal (vLLM's
/// `kv_cache_usage_perc`, read from each engine pod) scales them up, and the decision
/// says that signal decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kv_cache_bound_load_with_few_relays_in_flight_scales_up() {
    let _one = ONE_FLEET.lock().await;
    let root = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.apply_samples = false;
    // A cache of 4,000 tokens per engine; a 3,000-word prompt holds three quarters of
    // it for about a second (prefill 0.3 s, 8 tokens of 0.1 s).
    o.engine_args = [
        "--kv-capacity-tokens",
        "4000",
        "--kv-block-tokens",
        "16",
        "--prefill-us-per-token",
        "100",
        "--decode-ms-per-token",
        "100",
    ]
    .map(String::from)
    .to_vec();
    let fleet = serving_from_one_engine(
        o,
        "{targetInFlightPerReplica: 100, targetKVCacheUsage: 50, scaleDownStabilizationSeconds: 300}",
    )
    .await;
    assert_eq!(replicas(&fleet), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let port = fleet.options.gateway_port;
    let client = {
        let (stop, failed) = (stop.clone(), failed.clone());
        tokio::spawn(async move {
            let long = "context ".repeat(3000);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if let Err(e) = lode_fleet::chat(port, &format!("{long} question {i}")).await {
                    eprintln!("request {i}: {e}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    until(
        "a scale-up on the KV cache",
        Duration::from_secs(30),
        || replicas(&fleet) > 1,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.expect("client");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let decisions = model(&fleet)["status"]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let up = decisions.first().expect("a decision");
    println!("{up}");
    assert_eq!((up["from"].as_i64(), up["to"].as_i64()), (Some(1), Some(2)));
    assert!(
        up["inFlight"].as_i64().unwrap_or(9) <= 1,
        "few relays in flight: {up}"
    );
    let reason = up["reason"].as_str().unwrap_or("");
    assert!(reason.contains("KV-cache use decided"), "{reason}");
    fleet.shutdown().await;
}
