//! Chaos on the fleet: under sustained load through the gateway, one of each fault at a
//! random moment (the seed is printed; `LODE_CHAOS_SEED=<n>` replays an order and
//! timing) — kill -9 of the serving relayminer, of the store, of the operator and of a
//! claim/prove Job's pod; a chain node outage; a stalled engine (SIGSTOP) and a killed
//! one; and a disk that refuses the store's writes.
//!
//! The Supplier runs with `relayPolicy: hold`, so a client's success means the store
//! acknowledged that relay. Then, once every session has settled:
//! - relays acknowledged by the store (its durable count, which survives its restarts)
//!   equal the relays in claims on chain, exactly;
//! - every request a client saw succeed is among them;
//! - every claim settled with its proof validated or not required: no window missed.

use std::time::{Duration, Instant};

use lode_fleet::{Fleet, NAMESPACE, http_get, metric_sum};
use lode_kubesim::resources::Res;
use lode_testkit::Rng;
use serde_json::Value;

mod common;
use common::fleet_options;

/// The faults, one of each per run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillServe,
    KillStore,
    KillOperator,
    KillJobPod,
    ChainOutage,
    StallEngine,
    KillEngine,
    DiskFull,
}

const FAULTS: [Fault; 8] = [
    Fault::KillServe,
    Fault::KillStore,
    Fault::KillOperator,
    Fault::KillJobPod,
    Fault::ChainOutage,
    Fault::StallEngine,
    Fault::KillEngine,
    Fault::DiskFull,
];

/// Sends `sig` to `pid`; false when the process had already exited.
fn try_signal(pid: i32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill")
        .success()
}

fn signal(pid: i32, sig: &str) {
    assert!(try_signal(pid, sig), "kill {sig} {pid}");
}

/// The store pod's (IP, status of its container).
fn store_pod(fleet: &Fleet) -> Option<(String, Value)> {
    fleet
        .sim
        .store
        .list(&Res::new("", "pods"), Some(NAMESPACE))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "store")
        .and_then(|p| {
            Some((
                p["status"]["podIP"].as_str()?.to_string(),
                p["status"]["containerStatuses"][0].clone(),
            ))
        })
}

/// The store's durable count of relays it acknowledged.
async fn acknowledged(fleet: &Fleet) -> Option<u64> {
    let (ip, _) = store_pod(fleet)?;
    let m = http_get(&format!("{ip}:9090"), "/metrics").await?;
    m.contains("lode_store_relays_acknowledged_total")
        .then(|| metric_sum(&m, "lode_store_relays_acknowledged_total"))
}

async fn wait_for_pid(fleet: &Fleet, component: &str, container: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = fleet.container_pid(component, container) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no running {component}/{container} container"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn inject(fleet: &mut Fleet, fault: Fault) -> String {
    match fault {
        Fault::KillServe => {
            let pid = wait_for_pid(fleet, "serve", "relayminer").await;
            signal(pid, "-KILL");
            format!("kill -9 serve (pid {pid})")
        }
        Fault::KillStore => {
            let pid = wait_for_pid(fleet, "store", "store").await;
            signal(pid, "-KILL");
            format!("kill -9 store (pid {pid})")
        }
        Fault::KillOperator => {
            fleet
                .restart_operator_after_kill(Duration::from_secs(2))
                .await
                .expect("operator restarts");
            "kill -9 operator, restarted 2 s later".into()
        }
        Fault::KillJobPod => {
            // Claim and prove Jobs run at window heights; wait for one.
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let job = ["claim", "prove"]
                    .into_iter()
                    .find_map(|c| Some((c, fleet.container_pid(c, c)?)));
                // A Job's pod may finish between the lookup and the kill;
                // then wait for the next one.
                if let Some((kind, pid)) = job
                    && try_signal(pid, "-KILL")
                {
                    return format!("kill -9 {kind} job pod (pid {pid})");
                }
                assert!(
                    Instant::now() < deadline,
                    "no claim or prove Job ran within 40 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Fault::ChainOutage => {
            fleet
                .chain_outage(Duration::from_secs(5))
                .await
                .expect("chain recovers");
            "chain node down 5 s (blocks went on)".into()
        }
        Fault::StallEngine => {
            let pid = wait_for_pid(fleet, "engine", "engine").await;
            signal(pid, "-STOP");
            tokio::time::sleep(Duration::from_secs(3)).await;
            signal(pid, "-CONT");
            format!("engine stalled 3 s (SIGSTOP pid {pid})")
        }
        Fault::KillEngine => {
            let pid = wait_for_pid(fleet, "engine", "engine").await;
            signal(pid, "-KILL");
            format!("kill -9 engine (pid {pid})")
        }
        Fault::DiskFull => {
            let pid = wait_for_pid(fleet, "store", "store").await;
            let restarts = store_pod(fleet).map(|(_, c)| c["restartCount"].clone());
            // Every write that grows a file now fails (EFBIG), as on a full disk.
            let ok = std::process::Command::new("prlimit")
                .args(["--pid", &pid.to_string(), "--fsize=1"])
                .status()
                .expect("prlimit (util-linux)")
                .success();
            assert!(ok, "prlimit --fsize on the store");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let now = store_pod(fleet).map(|(_, c)| c);
                if let Some(c) = &now
                    && Some(c["restartCount"].clone()) != restarts
                {
                    let code = &c["lastState"]["terminated"]["exitCode"];
                    assert_eq!(
                        code, 1,
                        "the store exits with an error on a failed write: {c}"
                    );
                    return format!(
                        "store disk full (RLIMIT_FSIZE on pid {pid}): store exited 1, restarted"
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the store did not stop after its writes failed: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load_lose_no_acknowledged_relay_and_miss_no_window() {
    let seed = std::env::var("LODE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        })
        | 1;
    eprintln!("chaos seed {seed} (replay: LODE_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let root = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.relay_policy = Some("hold".into());
    let mut fleet = Fleet::start(o).await.expect("fleet starts");
    let logs = |root: &std::path::Path| {
        let op = std::fs::read_to_string(root.join("operator.log")).unwrap_or_default();
        let lines: Vec<&str> = op.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    if let Err(e) = fleet.first_relay(Duration::from_secs(90)).await {
        panic!("no first relay: {e}\n{}", logs(root.path()));
    }
    let load = fleet.start_load(4.0, 0.25);

    let mut order = FAULTS.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut report = Vec::new();
    for fault in order {
        tokio::time::sleep(Duration::from_millis(1500 + rng.below(3000))).await;
        let at = fleet.uptime().as_secs_f64();
        let what = inject(&mut fleet, fault).await;
        eprintln!("{at:6.1} s  {what}");
        report.push(what);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.abort();
    // Requests in flight finish or time out (10 s) before counting.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (ok, failed) = fleet.load_counts();
    let answered = ok + 1; // and the first relay

    // Every session ends, is claimed, proven where required, and settled.
    let deadline = Instant::now() + Duration::from_secs(150);
    let (acked, claimed, settlements) = loop {
        let acked = acknowledged(&fleet).await;
        let settlements = fleet.devnet.settlements();
        let claimed: u64 = settlements.iter().map(|s| s.num_relays).sum();
        let open_claims = fleet.devnet.chain().m.claims.len();
        if acked == Some(claimed) && open_claims == 0 {
            break (claimed, claimed, settlements);
        }
        if Instant::now() > deadline {
            let summary = fleet.summary().await;
            panic!(
                "not settled: acknowledged {acked:?}, in settled claims {claimed}, open claims {open_claims}\n\
                 {summary}\nsettlements: {settlements:#?}\n{}",
                logs(root.path())
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let proven = settlements
        .iter()
        .filter(|s| s.outcome == "settled: proof validated")
        .count();
    eprintln!(
        "faults: {}\nrequests: {ok} ok, {failed} failed | relays acknowledged by the store {acked} = in claims {claimed} | \
         claims settled {} ({proven} with a validated proof, {} without one required) | rewards {} uPOKT",
        report.join("; "),
        settlements.len(),
        settlements.len() - proven,
        settlements.iter().map(|s| s.reward).sum::<u128>()
    );
    assert_eq!(acked, claimed, "relays acknowledged = relays in claims");
    if answered > acked {
        let kept = root.keep();
        panic!(
            "every relay answered to a client ({answered}) was acknowledged and claimed ({acked}); logs kept in {}",
            kept.display()
        );
    }
    for s in &settlements {
        assert!(
            s.outcome.starts_with("settled:"),
            "claim {} of session {} was not settled: {}",
            s.num_relays,
            s.session_id,
            s.outcome
        );
    }
    assert!(proven >= 1, "some sessions needed and got proofs");
    assert!(ok > 100, "the load went on through the faults: {ok} ok");
    fleet.shutdown().await;
}
