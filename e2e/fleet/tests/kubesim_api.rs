//! kubesim's API semantics through kube-rs, the client the operator uses: validation,
//! server-side apply, watches with bookmarks, status and scale subresources, optimistic
//! concurrency, finalizers, garbage collection, and both Event APIs.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Client, ResourceExt};
use lode_crds::{ServiceModel, Supplier};
use lode_kubesim::{KubeSim, KubeSimOptions};
use serde_json::json;

async fn start() -> (KubeSim, Client, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let crds = ["suppliers.yaml", "servicemodels.yaml", "gatewaypools.yaml"].map(|f| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crds")
            .join(f)
    });
    let sim = KubeSim::start(KubeSimOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        root: root.path().to_path_buf(),
        kubelet: None,
        crds: crds.to_vec(),
        networks: lode_kubesim::networks(),
    })
    .await
    .expect("kubesim");
    let config = kube::Config::new(format!("http://{}", sim.addr).parse().expect("uri"));
    let client = Client::try_from(config).expect("client");
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lode"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    (sim, client, root)
}

fn model(name: &str, min: i32, max: i32) -> ServiceModel {
    serde_json::from_value(json!({
        "apiVersion": "lode.pokt.network/v1alpha1", "kind": "ServiceModel",
        "metadata": {"name": name, "namespace": "lode"},
        "spec": {"serviceId": "llm", "modelName": "m", "model": {"uri": "hf://m"},
            "engine": {"kind": "vllm"}, "minReplicas": min, "maxReplicas": max},
    }))
    .expect("model")
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn custom_resources_are_defaulted_validated_and_versioned() {
    let (sim, client, _root) = start().await;
    let models: Api<ServiceModel> = Api::namespaced(client.clone(), "lode");
    let created = models
        .create(&PostParams::default(), &model("qwen", 1, 4))
        .await
        .expect("valid model");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.spec.gpus.count, 1, "schema default filled in");
    let (code, msg) = api_code(
        models
            .create(&PostParams::default(), &model("bad", 3, 2))
            .await
            .expect_err("CEL rule"),
    );
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "ServiceModel.lode.pokt.network \"bad\" is invalid: spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"
    );
    let (code, _) = api_code(
        models
            .create(&PostParams::default(), &model("qwen", 1, 4))
            .await
            .expect_err("exists"),
    );
    assert_eq!(code, 409);

    // Status writes leave the spec and generation alone; spec writes leave the status.
    let st = models
        .patch_status(
            "qwen",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3}, "spec": {"maxReplicas": 9}})),
        )
        .await
        .expect("status");
    assert_eq!((st.spec.max_replicas, st.metadata.generation), (4, Some(1)));
    assert_eq!(st.status.as_ref().and_then(|s| s.replicas), Some(3));
    let sp = models
        .patch(
            "qwen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxReplicas": 6}, "status": {"replicas": 0}})),
        )
        .await
        .expect("spec");
    assert_eq!((sp.spec.max_replicas, sp.metadata.generation), (6, Some(2)));
    assert_eq!(
        sp.status.as_ref().and_then(|s| s.replicas),
        Some(3),
        "status kept"
    );

    // The scale subresource reads and writes spec.replicas.
    models
        .patch_scale(
            "qwen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale");
    let scale = models.get_scale("qwen").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(
        models.get("qwen").await.expect("get").spec.replicas,
        Some(2)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_replace_is_optimistic() {
    let (sim, client, _root) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "lode");
    let pp = PatchParams::apply("lode-operator").force();
    let cm = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    cms.patch("c", &pp, &Patch::Apply(cm(json!({"a": "1", "b": "2"}))))
        .await
        .expect("apply creates");
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mine": "x"}})),
    )
    .await
    .expect("another writer");
    let out = cms
        .patch("c", &pp, &Patch::Apply(cm(json!({"a": "3"}))))
        .await
        .expect("apply updates");
    let data = out.data.unwrap_or_default();
    assert_eq!(data.get("a").map(String::as_str), Some("3"));
    assert!(!data.contains_key("b"), "dropped by its manager");
    assert_eq!(
        data.get("mine").map(String::as_str),
        Some("x"),
        "another's field kept"
    );
    assert!(out.metadata.managed_fields.is_some_and(|m| {
        m.iter()
            .any(|f| f.manager.as_deref() == Some("lode-operator"))
    }));

    // The status subresource the same way: a field its manager stops sending goes
    // (the operator drops status.modelDigest when the pods stop agreeing on one),
    // another manager's field stays.
    let models: Api<ServiceModel> = Api::namespaced(client.clone(), "lode");
    models
        .create(&PostParams::default(), &model("m", 1, 2))
        .await
        .expect("create");
    let status = |s: serde_json::Value| {
        Patch::Apply(
            json!({"apiVersion": "lode.pokt.network/v1alpha1", "kind": "ServiceModel", "status": s}),
        )
    };
    let digest = format!("blake3:{}", "ab".repeat(32));
    models
        .patch_status(
            "m",
            &pp,
            &status(json!({"replicas": 1, "modelDigest": digest})),
        )
        .await
        .expect("status");
    models
        .patch_status(
            "m",
            &PatchParams::apply("lode-operator-autoscaler").force(),
            &status(json!({"observedDemand": 3})),
        )
        .await
        .expect("another manager's status");
    let out = models
        .patch_status("m", &pp, &status(json!({"replicas": 2})))
        .await
        .expect("status");
    let st = out.status.expect("status");
    assert_eq!(st.replicas, Some(2));
    assert_eq!(st.model_digest, None, "dropped by its manager");
    assert_eq!(st.observed_demand, Some(3), "another's field kept");

    // Leases: replace with a stale resourceVersion conflicts (leader election relies on it).
    let leases: Api<Lease> = Api::namespaced(client.clone(), "lode");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}))
            .expect("lease");
    let first = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let mut mine = first.clone();
    mine.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("l", &PostParams::default(), &mine)
        .await
        .expect("fresh replace");
    let (code, _) = api_code(
        leases
            .replace("l", &PostParams::default(), &first)
            .await
            .expect_err("stale replace"),
    );
    assert_eq!(code, 409);
    sim.shutdown().await;
}

#[tokio::test]
async fn watches_resume_with_bookmarks_and_deletion_honours_finalizers_and_owners() {
    let (sim, client, _root) = start().await;
    let suppliers: Api<Supplier> = Api::namespaced(client.clone(), "lode");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "lode");
    let list = suppliers.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let mut events = suppliers
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();

    let supplier: Supplier = serde_json::from_value(json!({
        "apiVersion": "lode.pokt.network/v1alpha1", "kind": "Supplier",
        "metadata": {"name": "s", "namespace": "lode", "finalizers": ["lode.pokt.network/unstake"]},
        "spec": {"operatorAddress": "pokt1tl94jr503nq9qzq86q4auznu8gvefwajxh59gp",
            "keySecretRef": {"name": "k", "key": "k"}, "stakeUpokt": "1",
            "services": [{"serviceId": "llm", "serviceModel": "m"}],
            "publicEndpoint": "http://x", "chain": {"grpcUrl": "http://g", "rpcUrl": "http://r"}},
    }))
    .expect("supplier");
    let s = suppliers
        .create(&PostParams::default(), &supplier)
        .await
        .expect("create");
    let owned: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owned",
        "labels": {"app": "x"},
        "ownerReferences": [{"apiVersion": "lode.pokt.network/v1alpha1", "kind": "Supplier",
            "name": "s", "uid": s.uid().expect("uid"), "controller": true}]}}))
    .expect("cm");
    cms.create(&PostParams::default(), &owned)
        .await
        .expect("owned cm");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "free", "labels": {"app": "y"}}}))
            .expect("cm"),
    )
    .await
    .expect("free cm");
    let selected = cms
        .list(&ListParams::default().labels("app in (x)"))
        .await
        .expect("list");
    assert_eq!(
        selected
            .items
            .iter()
            .map(|c| c.name_any())
            .collect::<Vec<_>>(),
        ["owned"]
    );

    // Delete: held by the finalizer, then gone with its dependents once released.
    suppliers
        .delete("s", &DeleteParams::default())
        .await
        .expect("delete");
    let held = suppliers.get("s").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get_opt("owned").await.expect("get").is_some(),
        "owner not gone yet"
    );
    suppliers
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
    assert!(suppliers.get_opt("s").await.expect("get").is_none());
    assert!(
        cms.get_opt("owned").await.expect("get").is_none(),
        "garbage collected"
    );
    assert!(cms.get_opt("free").await.expect("get").is_some());

    // The watch saw it all, in order, and gets bookmarks while idle.
    let mut seen = Vec::new();
    let mut bookmark = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while (seen.len() < 3 || !bookmark) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(8), events.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(_)))) => seen.push("added"),
            Ok(Ok(Some(WatchEvent::Modified(_)))) => seen.push("modified"),
            Ok(Ok(Some(WatchEvent::Deleted(_)))) => seen.push("deleted"),
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => bookmark = true,
            other => panic!("watch: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["added", "modified", "deleted"],
        "create, deletionTimestamp set, removed when the finalizer went"
    );
    assert!(bookmark, "a bookmark within 12 s");
    sim.shutdown().await;
}

#[tokio::test]
async fn events_written_to_either_api_list_as_core_events() {
    let (sim, client, _root) = start().await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "lode");
    let e: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reason": "StakeJobStarted", "note": "started", "type": "Normal", "action": "Reconcile",
        "reportingController": "lode-operator", "reportingInstance": "x",
        "regarding": {"kind": "Supplier", "name": "s", "namespace": "lode"},
    }))
    .expect("event");
    events
        .create(&PostParams::default(), &e)
        .await
        .expect("create");
    let core: Api<CoreEvent> = Api::namespaced(client, "lode");
    let listed = core.list(&ListParams::default()).await.expect("list");
    let ev = listed.items.first().expect("one event");
    assert_eq!(ev.reason.as_deref(), Some("StakeJobStarted"));
    assert_eq!(ev.message.as_deref(), Some("started"));
    assert_eq!(ev.involved_object.name.as_deref(), Some("s"));
    sim.shutdown().await;
}

/// kubesim with a kubelet whose images are the executables of `dir`.
async fn start_with_kubelet(dir: &std::path::Path) -> KubeSim {
    let sim = KubeSim::start(KubeSimOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        root: dir.to_path_buf(),
        kubelet: Some(lode_kubesim::kubelet::KubeletConfig {
            runtime: std::sync::Arc::new(lode_kubesim::runtime::BinDir {
                dir: dir.join("bin"),
                aliases: Default::default(),
            }),
            root: dir.to_path_buf(),
            gpus: 0,
            pod_net: 9,
            gpu_nodes: None,
        }),
        crds: Vec::new(),
        networks: lode_kubesim::networks(),
    })
    .await
    .expect("kubesim");
    lode_kubesim::write_kubeconfig(&sim.kubeconfig, sim.addr, "default").expect("kubeconfig");
    sim
}

// kubectl blocks its thread: the API server needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_the_app_and_a_failing_one_holds_it() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("bin")).expect("bin");
    std::os::unix::fs::symlink("/bin/sh", root.path().join("bin/sh")).expect("sh");
    let sim = start_with_kubelet(root.path()).await;
    let kc = sim.kubeconfig.clone();
    let pod = |name: &str, check: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [
                    {"name": "first", "image": "sh", "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                     "args": ["-c", "echo one > /work/order && echo blake3:ab > /dev/termination-log"]},
                    {"name": "check", "image": "sh", "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                     "terminationMessagePolicy": "FallbackToLogsOnError",
                     "args": ["-c", check]}],
                "containers": [{"name": "app", "image": "sh", "volumeMounts": [
                        {"name": "work", "mountPath": "/work"},
                        {"name": "work", "mountPath": "/part", "subPath": "sub/dir"}],
                    "args": ["-c", "echo app >> /work/order; echo in-sub > /part/file; exec sleep 600"]}]}})
    };
    let file = root.path().join("pods.yaml");
    let docs = [
        pod("good", "grep -q one /work/order && echo two >> /work/order"),
        pod("bad", "echo 'weights differ' >&2; exit 1"),
    ]
    .map(|p| serde_json::to_string(&p).expect("json"))
    .join("\n---\n");
    std::fs::write(&file, docs).expect("write");
    let (ok, out) = lode_testkit::kubectl(&kc, &["apply", "-f", &file.display().to_string()]);
    assert!(ok, "{out}");

    let get = |jsonpath: &str, pod: &str| {
        lode_testkit::kubectl(
            &kc,
            &["get", "pod", pod, "-o", &format!("jsonpath={jsonpath}")],
        )
        .1
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = get("{.status.containerStatuses[0].ready}", "good");
        let restarts = get("{.status.initContainerStatuses[1].restartCount}", "bad");
        if ready == "true" && restarts.parse::<i64>().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "good ready: {ready}, bad restarts: {restarts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // In order, each after the one before succeeded, and the app after both.
    let pod_dir = root.path().join("pods/default_good/volumes/work/order");
    assert_eq!(
        std::fs::read_to_string(&pod_dir).expect("order"),
        "one\ntwo\napp\n"
    );
    // A subPath mount is that folder of the volume.
    assert_eq!(
        std::fs::read_to_string(
            root.path()
                .join("pods/default_good/volumes/work/sub/dir/file")
        )
        .expect("subPath file"),
        "in-sub\n"
    );
    assert_eq!(
        get(
            "{.status.initContainerStatuses[0].state.terminated.message}",
            "good"
        )
        .trim(),
        "blake3:ab"
    );
    assert_eq!(
        get(
            "{.status.conditions[?(@.type==\"Initialized\")].status}",
            "good"
        ),
        "True"
    );
    // The failing init container is restarted with back-off; its message is its log
    // (FallbackToLogsOnError); the app never starts; kubectl shows why.
    assert!(
        get(
            "{.status.initContainerStatuses[1].lastState.terminated.message}",
            "bad"
        )
        .contains("weights differ")
    );
    assert_eq!(
        get("{.status.containerStatuses[0].state.waiting.reason}", "bad"),
        "PodInitializing"
    );
    assert_eq!(get("{.status.phase}", "bad"), "Pending");
    assert_eq!(
        get(
            "{.status.conditions[?(@.type==\"Initialized\")].status}",
            "bad"
        ),
        "False"
    );
    let (_, table) = lode_testkit::kubectl(&kc, &["get", "pods"]);
    let bad = table.lines().find(|l| l.starts_with("bad")).unwrap_or("");
    assert!(
        bad.contains("Init:Error") || bad.contains("Init:CrashLoopBackOff"),
        "{table}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("pods/default_bad/volumes/work/order"))
            .expect("order"),
        "one\n",
        "the first init container ran, the app did not"
    );
    sim.shutdown().await;
}

/// The EndpointSlice controller: a Service's running pods, each with its IP and the
/// conditions a real one reports, at the pods' port; a terminating pod is listed not
/// ready and terminating. Pods reach the API server through `LODE_KUBE_API`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_a_services_pods_and_their_termination() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("bin")).expect("bin");
    std::os::unix::fs::symlink("/bin/sh", root.path().join("bin/sh")).expect("sh");
    let sim = start_with_kubelet(root.path()).await;
    let kc = sim.kubeconfig.clone();
    // The app ignores SIGTERM, so a deleted pod stays terminating for its grace period.
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "e"}},
            "spec": {"terminationGracePeriodSeconds": 5, "volumes": [{"name": "work", "emptyDir": {}}],
                "containers": [{"name": "engine", "image": "sh",
                    "ports": [{"name": "engine", "containerPort": 8000}],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    "args": ["-c", "echo \"$LODE_KUBE_API\" > /work/api; trap '' TERM; exec sleep 600"]}]}})
    };
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "e"},
        "spec": {"clusterIP": "None", "selector": {"app": "e"},
                 "ports": [{"name": "engine", "port": 80, "targetPort": "engine"}]}});
    let file = root.path().join("objects.yaml");
    let docs = [pod("e1"), pod("e2"), svc]
        .map(|p| serde_json::to_string(&p).expect("json"))
        .join("\n---\n");
    std::fs::write(&file, docs).expect("write");
    let (ok, out) = lode_testkit::kubectl(&kc, &["apply", "-f", &file.display().to_string()]);
    assert!(ok, "{out}");

    let slices = || -> serde_json::Value {
        let (ok, out) = lode_testkit::kubectl(
            &kc,
            &[
                "get",
                "endpointslices.discovery.k8s.io",
                "-l",
                "kubernetes.io/service-name=e",
                "-o",
                "json",
            ],
        );
        assert!(ok, "{out}");
        serde_json::from_str(&out).expect("json")
    };
    // (address, ready, terminating) of every endpoint, sorted.
    let endpoints = |list: &serde_json::Value| -> Vec<(String, bool, bool)> {
        let mut v: Vec<_> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["addresses"][0].as_str().unwrap_or("").to_string(),
                    e["conditions"]["ready"] == true,
                    e["conditions"]["terminating"] == true,
                )
            })
            .collect();
        v.sort();
        v
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = slices();
        let e = endpoints(&list);
        if e.len() == 2 && e.iter().all(|(_, ready, _)| *ready) {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let slice = &list["items"][0];
    assert_eq!(slice["ports"][0]["name"], "engine");
    assert_eq!(
        slice["ports"][0]["port"], 8000,
        "the pods' port, not the Service's"
    );
    assert_eq!(
        slice["metadata"]["ownerReferences"][0]["kind"], "Service",
        "{slice}"
    );
    let ip_of = |pod: &str| {
        lode_testkit::kubectl(&kc, &["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]).1
    };
    let (ip1, ip2) = (ip_of("e1"), ip_of("e2"));
    assert!(endpoints(&list).iter().any(|(a, _, _)| *a == ip1));
    let api = std::fs::read_to_string(root.path().join("pods/default_e1/volumes/work/api"))
        .expect("the pod wrote its env");
    assert_eq!(api.trim(), format!("http://{}", sim.addr));

    // e2 deleted: terminating (it ignores SIGTERM) and no longer ready.
    let (ok, out) = lode_testkit::kubectl(&kc, &["delete", "pod", "e2", "--wait=false"]);
    assert!(ok, "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = endpoints(&slices());
        if e.contains(&(ip2.clone(), false, true)) {
            assert!(e.contains(&(ip1.clone(), true, false)), "{e:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.shutdown().await;
}
