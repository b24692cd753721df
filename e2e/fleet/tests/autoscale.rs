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
    fleet.service_model()
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

/// A chat completion that waits as a patient client would (30 s), with its status, head
/// and body.
async fn patient_chat(fleet: &Fleet, prompt: &str) -> (u16, String, String) {
    lode_fleet::post_chat(
        fleet.options.gateway_port,
        Some(lode_fleet::DEVNET_API_KEY),
        fleet.options.model(),
        prompt,
        false,
        Duration::from_secs(30),
    )
    .await
    .expect("the gateway answers")
}

fn decisions(fleet: &Fleet) -> Vec<Value> {
    model(fleet)["status"]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Issue 26 on the fleet: a model with `minReplicas: 0` and no engine; its first relay
/// is held by the relay tier, wakes the engines (cold start: no GPU until a node
/// autoscaler adds a node 2 s later, the pod, weights, a 2 s engine load) and is served,
/// mined once; idle, the model goes back to zero after its idle
/// window; a burst while it wakes is held and served, each relay mined once; and with a
/// hold shorter than the cold start, the client gets 503 + Retry-After from the gateway
/// and is served when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_at_zero_wakes_on_its_first_relay_and_sleeps_when_idle() {
    let _one = ONE_FLEET.lock().await;
    let root = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.apply_samples = false;
    o.engine_args = ["--load-ms", "2000"].map(String::from).to_vec();
    // No GPU at first: the engine pod waits for a GPU node, which a node autoscaler adds
    // after 2 s.
    o.gpus = 0;
    o.gpu_nodes = Some(lode_kubesim::kubelet::GpuNodePool {
        delay: Duration::from_secs(2),
        gpus: 1,
        max: 1,
    });
    let fleet = Fleet::start(o).await.expect("fleet");
    let sm_file = fleet.manifests.join("20-servicemodel.yaml");
    let sample = std::fs::read_to_string(&sm_file)
        .expect("sample")
        .replace("minReplicas: 2", "minReplicas: 0");
    let at_zero = |hold: u32| {
        format!(
            "{sample}  autoscaling: {{targetInFlightPerReplica: 8, scaleDownStabilizationSeconds: 2, scaleToZeroIdleSeconds: 6}}\n  relay: {{holdSeconds: {hold}}}\n"
        )
    };
    std::fs::write(&sm_file, at_zero(25)).expect("write");
    fleet.apply_manifests().expect("apply");

    // Staked and ready at zero: the relay tier up, no engine pod.
    until("the model ready at zero", Duration::from_secs(120), || {
        let m = model(&fleet);
        m["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["reason"] == "ScaledToZero")
        }) && m["status"]["relayReadyReplicas"].as_i64() == Some(2)
    })
    .await;
    let staked = Instant::now();
    while !fleet.summary().await.staked {
        assert!(staked.elapsed() < Duration::from_secs(60), "never staked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(serving(&fleet), (0, 0), "no engine pod at zero");
    // The gateway may not see the session yet: until it does, it answers no_session
    // itself, and nothing reaches a relay pod.
    let t0 = Instant::now();
    let served = AtomicBool::new(false);
    let mut saw_pending = false;
    let first = async {
        let first = loop {
            let (status, _, body) = patient_chat(&fleet, "wake up").await;
            if status == 503 && body.contains("no_session") {
                assert!(t0.elapsed() < Duration::from_secs(60), "no session: {body}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(status, 200, "the first relay is held and served: {body}");
            break t0.elapsed();
        };
        served.store(true, Ordering::Relaxed);
        first
    };
    let watch = async {
        while !served.load(Ordering::Relaxed) {
            saw_pending |= model(&fleet)["status"]["pendingReplicas"].as_i64() == Some(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (first, ()) = tokio::join!(first, watch);
    assert!(
        saw_pending,
        "the engine pod waited for a GPU node, shown in status"
    );
    let nodes = fleet.sim.store.list(&Res::new("", "nodes"), None);
    assert_eq!(nodes.len(), 2, "a GPU node joined");
    let m = model(&fleet);
    let cold = m["status"]["coldStartMilliseconds"].as_i64();
    let woke = &decisions(&fleet)[0];
    assert_eq!(
        (woke["from"].as_i64(), woke["to"].as_i64()),
        (Some(0), Some(1)),
        "{woke}"
    );
    eprintln!(
        "first relay at zero served in {first:?}; cold start in status: {cold:?} ms; decision: {}",
        woke["reason"]
    );
    until("the cold start in status", Duration::from_secs(10), || {
        model(&fleet)["status"]["coldStartMilliseconds"]
            .as_i64()
            .is_some_and(|ms| ms >= 4000)
    })
    .await;
    assert_eq!(fleet.serve_metric("lode_serve_held_total").await, 1);
    assert!(
        fleet
            .serve_metric("lode_serve_last_wake_milliseconds")
            .await
            >= 4000
    );
    assert_eq!(
        fleet.serve_metric("lode_serve_mined_total").await,
        1,
        "mined once"
    );

    // Idle: back to zero after the idle window (6 s), not after the 2 s window.
    let idle = Instant::now();
    until("back at zero", Duration::from_secs(30), || {
        replicas(&fleet) == 0
    })
    .await;
    let slept = idle.elapsed();
    eprintln!("back at zero {slept:?} after the last relay");
    assert!(
        slept >= Duration::from_secs(5),
        "after the idle window: {slept:?}"
    );
    let last = decisions(&fleet).last().cloned().expect("a decision");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("scale to zero")),
        "{last}"
    );
    until("the engine pod gone", Duration::from_secs(30), || {
        serving(&fleet).1 == 0
    })
    .await;
    // The relay pods drop it from their EndpointSlice (it serves out its preStop pause).
    fleet
        .until_no_engine_routed(Duration::from_secs(15))
        .await
        .expect("routes");

    // A burst while waking: every relay held, then served; each mined once.
    let burst = (0..6).map(|i| {
        let f = &fleet;
        async move { patient_chat(f, &format!("burst {i}")).await.0 }
    });
    let statuses = futures_util::future::join_all(burst).await;
    assert_eq!(statuses, vec![200; 6], "the burst is held and served");
    assert_eq!(fleet.serve_metric("lode_serve_held_total").await, 7);
    assert_eq!(fleet.serve_metric("lode_serve_mined_total").await, 7);

    // A hold shorter than the cold start: the client is told to come back.
    std::fs::write(&sm_file, at_zero(1)).expect("write");
    fleet.apply_manifests().expect("apply");
    let t = Instant::now();
    while !(replicas(&fleet) == 0 && serving(&fleet).1 == 0) {
        if t.elapsed() > Duration::from_secs(40) {
            let m = model(&fleet);
            let pods: Vec<String> = fleet
                .sim
                .store
                .list(&Res::new("", "pods"), Some("lode"))
                .iter()
                .map(|p| {
                    format!(
                        "{} {} ready={} deleting={}",
                        p["metadata"]["name"],
                        p["status"]["phase"],
                        lode_kubesim::controllers::pod_ready(p),
                        !p["metadata"]["deletionTimestamp"].is_null()
                    )
                })
                .collect();
            panic!(
                "not asleep again: spec {} status {}\npods {pods:#?}",
                m["spec"], m["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .until_no_engine_routed(Duration::from_secs(15))
        .await
        .expect("routes");
    until(
        "the relay tier rolled to the 1 s hold",
        Duration::from_secs(60),
        || {
            let pods = fleet.sim.store.list(&Res::new("", "pods"), Some("lode"));
            let relay: Vec<&Value> = pods
                .iter()
                .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "serve")
                .collect();
            relay.len() == 2
                && relay.iter().all(|p| {
                    lode_kubesim::controllers::pod_ready(p)
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                && model(&fleet)["status"]["relayReadyReplicas"].as_i64() == Some(2)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, head, body) = patient_chat(&fleet, "too early").await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("model_waking"), "{body}");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    // The client comes back after Retry-After, as the OpenAI SDK does, until served.
    let t = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let (status, _, body) = patient_chat(&fleet, "too early").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never served: {body}"
        );
    }
    fleet.shutdown().await;
}
