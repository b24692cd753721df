//! The whole fleet through the real kubectl: devnet + kubesim + the operator binary +
//! pods running relayminer, engine-sim and the gateway as processes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lode_fleet::Fleet;

mod common;
use common::fleet_options;
use lode_testkit::kubectl;

async fn wait_for<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_apply_of_the_samples_serves_relays_and_gets_the_supplier_paid() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.apply_samples = false;
    let fleet = Fleet::start(o).await.expect("fleet starts");
    let kc = fleet.sim.kubeconfig.clone();
    // What to show when something does not come up: the operator's log and the tail
    // of every container's.
    let logs = || {
        let tail = |p: &Path| {
            let t = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let mut s = format!(
            "== operator.log\n{}\n",
            tail(&root.path().join("operator.log"))
        );
        for pod in std::fs::read_dir(root.path().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.path().extension().is_some_and(|e| e == "log") {
                    s += &format!("== {}\n{}\n", f.path().display(), tail(&f.path()));
                }
            }
        }
        s
    };

    // The samples, through the real kubectl.
    let manifests = fleet.manifests.display().to_string();
    let (ok, out) = kubectl(&kc, &["apply", "-f", &manifests]);
    assert!(ok, "kubectl apply: {out}");
    for created in [
        "namespace/lode created",
        "secret/supplier-key created",
        "servicemodel.lode.pokt.network/qwen-7b created",
        "supplier.lode.pokt.network/supplier-1 created",
        "gatewaypool.lode.pokt.network/gateway created",
        "service/relay-public created",
    ] {
        assert!(out.contains(created), "{created:?} in {out}");
    }
    let (ok, out) = kubectl(&kc, &["apply", "-f", &manifests]);
    assert!(
        ok && out.contains("supplier.lode.pokt.network/supplier-1 unchanged"),
        "{out}"
    );

    // Pods come up, the operator stakes the supplier, the gateway relays.
    let first = fleet
        .first_relay(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("no relay served: {e}\n{}", logs()));
    println!(
        "first relay served {:.1} s after the fleet started",
        first.as_secs_f64()
    );
    let (_, pods) = kubectl(&kc, &["get", "pods"]);
    for p in ["qwen-7b-", "supplier-1-store-0", "gateway-"] {
        assert!(
            pods.lines()
                .any(|l| l.starts_with(p) && l.contains("Running")),
            "{p} running in\n{pods}"
        );
    }
    // Two tiers: two engine replicas (no sidecar) and two relay pods in front of them.
    let running = |prefix: &str| {
        pods.lines()
            .filter(|l| l.starts_with(prefix) && l.contains("1/1") && l.contains("Running"))
            .count()
    };
    assert_eq!(running("qwen-7b-relay-"), 2, "{pods}");
    assert_eq!(running("qwen-7b-") - running("qwen-7b-relay-"), 2, "{pods}");
    let (_, model) = kubectl(&kc, &["get", "servicemodels"]);
    assert!(
        model.lines().next().unwrap_or("").contains("RELAYS"),
        "{model}"
    );

    // The operator's gateway reads its API keys from the Secret: no key or a wrong
    // one is refused before anything is relayed.
    let port = fleet.options.gateway_port;
    for key in [None, Some("sk-wrong")] {
        let err = lode_fleet::chat_as(port, key, "who pays?", false)
            .await
            .expect_err("refused");
        assert!(
            err.starts_with("HTTP/1.0 401") && err.contains("invalid_api_key"),
            "{key:?}: {err}"
        );
    }

    // Traffic: enough relays in one session that the chain asks for a proof (threshold
    // 20,000 uPOKT = 5 relays of 4,200).
    for i in 0..12 {
        fleet
            .chat(&format!("q{i}"))
            .await
            .expect("relay through the gateway");
    }
    let summary = fleet.summary().await;
    assert!(summary.relays >= 13, "{summary}");
    assert_eq!(
        summary.mined, summary.relays,
        "every relay mined (difficulty is the base one)"
    );

    // Claims and proofs land on devnet; every mined relay is paid for.
    let settled = wait_for(
        "every mined relay settled",
        Duration::from_secs(150),
        async || {
            let s = fleet.devnet.settlements();
            let relays: u64 = s.iter().map(|x| x.num_relays).sum();
            (relays >= summary.mined).then_some(s)
        },
    )
    .await;
    let relays: u64 = settled.iter().map(|x| x.num_relays).sum();
    assert_eq!(
        relays, summary.mined,
        "relays in settled claims = relays mined"
    );
    assert!(
        settled
            .iter()
            .any(|s| s.outcome == "settled: proof validated"),
        "a proof was required and validated: {settled:?}"
    );
    assert!(
        settled
            .iter()
            .all(|s| s.outcome.starts_with("settled") && s.reward > 0),
        "{settled:?}"
    );
    let reward: u128 = settled.iter().map(|s| s.reward).sum();
    assert_eq!(reward, u128::from(relays) * 4_200, "4,200 uPOKT a relay");

    // kubectl shows the outcome.
    let table = wait_for(
        "the claim outcome in kubectl get suppliers",
        Duration::from_secs(30),
        async || {
            let (_, t) = kubectl(&kc, &["get", "suppliers"]);
            t.contains("claimed").then_some(t)
        },
    )
    .await;
    println!("{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ADDRESS",
            "STAKED",
            "SERVICES",
            "READY",
            "LAST CLAIM",
            "AGE"
        ]
    );
    assert!(
        table.contains("supplier-1") && table.contains("100000000"),
        "{table}"
    );
    let (_, proof) = kubectl(
        &kc,
        &[
            "get",
            "supplier",
            "supplier-1",
            "-o",
            "jsonpath={.status.lastProof.outcome}",
        ],
    );
    assert!(
        ["proven", "proof_not_required"].contains(&proof.trim()),
        "last proof: {proof}"
    );

    // kill -9 of the store's process: the kubelet restarts it (restartCount 1, Ready
    // again) and relays keep being served and mined.
    let pid_of = |pod: &str| {
        let (_, id) = kubectl(
            &kc,
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.containerStatuses[0].containerID}",
            ],
        );
        id.trim().strip_prefix("process://").map(String::from)
    };
    let pid = pid_of("supplier-1-store-0").expect("the store runs as a process");
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_for("the store restarted and ready", Duration::from_secs(30), async || {
        let (_, t) = kubectl(
            &kc,
            &["get", "pod", "supplier-1-store-0", "-o",
              "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}"],
        );
        (t.trim() == "1 true").then_some(())
    })
    .await;
    assert_ne!(pid_of("supplier-1-store-0"), Some(pid), "a new process");
    let before = fleet.summary().await;
    fleet
        .chat("after the store restart")
        .await
        .expect("relay after the restart");
    let after = wait_for("the relay mined", Duration::from_secs(20), async || {
        let s = fleet.summary().await;
        (s.mined > before.mined).then_some(s)
    })
    .await;
    assert_eq!(after.mined, after.relays, "{after}");
    // That relay's session is in the store, unsettled: the Supplier's status says so
    // (the operator reads the store's `/sessions`).
    let in_flight = wait_for(
        "status.sessionsInFlight counting the new session",
        Duration::from_secs(60),
        async || {
            let (_, n) = kubectl(
                &kc,
                &[
                    "get",
                    "supplier",
                    "supplier-1",
                    "-o",
                    "jsonpath={.status.sessionsInFlight}",
                ],
            );
            n.trim().parse::<i64>().ok().filter(|n| *n >= 1)
        },
    )
    .await;
    println!("sessions in flight: {in_flight}");
    // The relay tier routes between the two engines by prefix: the autoscaler reads its
    // counters into the ServiceModel's hit rate.
    let hit = wait_for(
        "status.prefixHitPercent",
        Duration::from_secs(30),
        async || {
            let (_, n) = kubectl(
                &kc,
                &[
                    "get",
                    "servicemodel",
                    "qwen-7b",
                    "-o",
                    "jsonpath={.status.prefixHitPercent}",
                ],
            );
            n.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=100).contains(n))
        },
    )
    .await;
    println!("prefix hit rate: {hit} %");

    // An invalid resource is refused with the schema's message.
    let bad = root.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: lode.pokt.network/v1alpha1\nkind: ServiceModel\nmetadata: {name: bad, namespace: lode}\n\
         spec: {serviceId: llm, modelName: m, model: {uri: 'hf://m'}, engine: {kind: vllm}, minReplicas: 3, maxReplicas: 2}\n",
    )
    .expect("write");
    let (ok, out) = kubectl(&kc, &["apply", "-f", &bad.display().to_string()]);
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("The ServiceModel \"bad\" is invalid: spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"),
        "{out}"
    );
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad)
            .expect("read")
            .replace("kind: vllm", "kind: tgi")
            .replace("minReplicas: 3", "minReplicas: 1"),
    )
    .expect("write");
    let (ok, out) = kubectl(&kc, &["apply", "-f", &bad.display().to_string()]);
    assert!(
        !ok && out.contains("spec.engine.kind: Unsupported value: \"tgi\""),
        "{out}"
    );

    // Deleting the ServiceModel removes its serving pods (owner references).
    let (ok, out) = kubectl(&kc, &["delete", "servicemodel", "qwen-7b"]);
    assert!(ok, "{out}");
    wait_for(
        "the serving pods gone",
        Duration::from_secs(60),
        async || {
            let (_, t) = kubectl(
                &kc,
                &["get", "pods", "-l", "app.kubernetes.io/instance=qwen-7b"],
            );
            t.contains("No resources found").then_some(())
        },
    )
    .await;
    let (_, deploys) = kubectl(&kc, &["get", "deployments"]);
    assert!(!deploys.contains("qwen-7b"), "{deploys}");
    let final_summary = fleet.summary().await;
    assert_eq!(final_summary.serve_replicas, 0, "{final_summary}");
    fleet.shutdown().await;
}
