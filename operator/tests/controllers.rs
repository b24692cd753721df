//! The controllers against a mocked API server (tower-test): every request's method,
//! path and body is checked, in order, and answered as the API server would.

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use lode_crds::{ServiceModel, Supplier};
use lode_operator::build::Images;
use lode_operator::controller::{Context, reconcile_model, reconcile_supplier};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn sample<K: serde::de::DeserializeOwned>(file: &str, uid: &str) -> K {
    let path = format!("{}/../crds/samples/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("sample")).expect("yaml");
    v["metadata"]["namespace"] = json!("lode");
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["generation"] = json!(2);
    serde_json::from_value(v).expect("resource")
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "lode");
    (Context::new(client, Images::default()), handle)
}

/// The next request: its method, path (with query) and JSON body.
async fn next(
    handle: &mut Handle,
) -> (
    String,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) = handle.next_request().await.expect("a request");
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (method, path, body, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response"),
    );
}

/// Expects a server-side apply of `kind/name` under `path_prefix` and answers with the
/// object plus `status`.
async fn expect_apply(handle: &mut Handle, path_prefix: &str, name: &str, status: Value) -> Value {
    let (method, path, mut body, send) = next(handle).await;
    assert_eq!(method, "PATCH", "{path}");
    assert!(
        path.starts_with(&format!("{path_prefix}/{name}?")),
        "expected {path_prefix}/{name}, got {path}"
    );
    assert!(
        path.contains("fieldManager=lode-operator") && path.contains("force=true"),
        "server-side apply as lode-operator: {path}"
    );
    assert_eq!(body["metadata"]["name"], name);
    let sent = body.clone();
    if !status.is_null() {
        body["status"] = status;
    }
    reply(send, 200, body);
    sent
}

/// The termination message of a claim Job that claimed session 20 in tx AB12.
fn claim_summary() -> String {
    use lode_contracts::report::{JobKind, JobReport, Outcome, SessionReport};
    let mut r = JobReport::new(JobKind::Claim);
    r.height = 22;
    r.sessions = vec![SessionReport {
        supplier: "pokt1s".into(),
        session_id: "s20".into(),
        service_id: "llm".into(),
        application: "pokt1a".into(),
        session_end_height: 20,
        relays: 3,
        compute_units: 3,
        root: String::new(),
        estimated_reward_upokt: None,
        proof: None,
        tx_hash: Some("AB12".into()),
        outcome: Outcome::Claimed,
        detail: String::new(),
    }];
    lode_contracts::to_json(&r.status_summary())
}

fn supplier_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "lode.pokt.network/v1alpha1", "kind": "SupplierList", "metadata": {}, "items": items})
}

#[tokio::test]
async fn a_listed_service_model_gets_its_serving_objects_and_a_ready_status() {
    let (ctx, mut h) = context();
    let sm: ServiceModel = sample("servicemodel.yaml", "sm-uid");
    let sm_json = serde_json::to_value(&sm).expect("json");
    let supplier: Value =
        serde_json::to_value(sample::<Supplier>("supplier.yaml", "s-uid")).expect("json");
    let server = tokio::spawn(async move {
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(method, "GET");
        assert!(
            path.starts_with("/apis/lode.pokt.network/v1alpha1/namespaces/lode/suppliers"),
            "{path}"
        );
        reply(send, 200, supplier_list(vec![supplier]));
        // hf:// weights: their cache first, owned by the ServiceModel.
        let cache = expect_apply(
            &mut h,
            "/api/v1/namespaces/lode/persistentvolumeclaims",
            "qwen-7b-weights",
            Value::Null,
        )
        .await;
        assert_eq!(cache["metadata"]["ownerReferences"][0]["uid"], "sm-uid");
        assert_eq!(cache["spec"]["resources"]["requests"]["storage"], "100Gi");
        // The engines: the engine alone, behind the engine Service, reachable only
        // from the relay tier.
        let d = expect_apply(
            &mut h,
            "/apis/apps/v1/namespaces/lode/deployments",
            "qwen-7b",
            json!({"replicas": 1, "readyReplicas": 1}),
        )
        .await;
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "engine");
        for (path, name) in [
            ("/api/v1/namespaces/lode/services", "qwen-7b-engines"),
            (
                "/apis/policy/v1/namespaces/lode/poddisruptionbudgets",
                "qwen-7b",
            ),
        ] {
            expect_apply(&mut h, path, name, Value::Null).await;
        }
        let np = expect_apply(
            &mut h,
            "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies",
            "qwen-7b-engines",
            Value::Null,
        )
        .await;
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8000);
        // The relay tier: its ServiceAccount and the Role to read EndpointSlices.
        for (path, name) in [
            ("/api/v1/namespaces/lode/serviceaccounts", "qwen-7b-relay"),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/lode/roles",
                "qwen-7b-relay",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/lode/rolebindings",
                "qwen-7b-relay",
            ),
        ] {
            expect_apply(&mut h, path, name, Value::Null).await;
        }
        let cm = expect_apply(
            &mut h,
            "/api/v1/namespaces/lode/configmaps",
            "qwen-7b-serve",
            Value::Null,
        )
        .await;
        let yaml = cm["data"]["serve.yaml"].as_str().expect("yaml");
        assert!(yaml.contains("https://supplier-1-store:7070"), "{yaml}");
        assert!(yaml.contains("service: qwen-7b-engines"), "{yaml}");
        assert_eq!(
            cm["metadata"]["ownerReferences"][0]["uid"], "sm-uid",
            "owned by the ServiceModel"
        );
        let d = expect_apply(
            &mut h,
            "/apis/apps/v1/namespaces/lode/deployments",
            "qwen-7b-relay",
            json!({"replicas": 2, "readyReplicas": 2}),
        )
        .await;
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["name"],
            "relayminer"
        );
        for (path, name) in [
            ("/api/v1/namespaces/lode/services", "qwen-7b"),
            (
                "/apis/policy/v1/namespaces/lode/poddisruptionbudgets",
                "qwen-7b-relay",
            ),
        ] {
            expect_apply(&mut h, path, name, Value::Null).await;
        }
        let np = expect_apply(
            &mut h,
            "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies",
            "qwen-7b",
            Value::Null,
        )
        .await;
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8545);
        // Its serving pods, for what their weights-digest steps reported: one, whose
        // step found the pinned-less weights' digest.
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(method, "GET");
        assert!(
            path.starts_with("/api/v1/namespaces/lode/pods?")
                && path.contains("app.kubernetes.io%2Finstance%3Dqwen-7b"),
            "{path}"
        );
        let digest = format!("blake3:{}", "5a".repeat(32));
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
                "metadata": {"name": "qwen-7b-x", "labels": {"app.kubernetes.io/instance": "qwen-7b"}},
                "status": {"initContainerStatuses": [{"name": "weights-digest", "image": "i", "imageID": "",
                    "ready": true, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": format!("{digest}\n")}}}]}}]}),
        );
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert!(
            path.starts_with(
                "/apis/lode.pokt.network/v1alpha1/namespaces/lode/servicemodels/qwen-7b/status"
            ),
            "{path}"
        );
        // The typed status, server-side applied by the serving controller: its fields
        // only (the autoscaler owns pendingReplicas, observedDemand and decisions).
        assert!(
            path.contains("fieldManager=lode-operator&")
                || path.ends_with("fieldManager=lode-operator"),
            "{path}"
        );
        assert_eq!(body["kind"], "ServiceModel");
        let status = &body["status"];
        for theirs in ["pendingReplicas", "observedDemand", "decisions"] {
            assert_eq!(status[theirs], Value::Null, "{theirs} is not sent");
        }
        assert_eq!(status["readyReplicas"], 1);
        assert_eq!(status["observedGeneration"], 2);
        let ready = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .expect("Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("True"), Some("Serving"))
        );
        assert_eq!(
            status["selector"],
            "app.kubernetes.io/component=engine,app.kubernetes.io/instance=qwen-7b"
        );
        assert_eq!(status["relayReadyReplicas"], 2);
        assert_eq!(status["modelDigest"], digest.as_str());
        reply(send, 200, sm_json);
    });
    let action = reconcile_model(Arc::new(sm), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
    server.await.expect("every request as expected");
}

#[tokio::test]
async fn an_unlisted_or_invalid_service_model_gets_a_condition_not_a_hot_loop() {
    // No Supplier lists it: Ready=False NoSupplier, then wait for a change.
    let (ctx, mut h) = context();
    let sm: ServiceModel = sample("servicemodel.yaml", "sm-uid");
    let sm_json = serde_json::to_value(&sm).expect("json");
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut h).await;
        reply(send, 200, supplier_list(vec![]));
        // Its serving objects (left from when a Supplier listed it) are deleted.
        for (path, exists) in [
            (
                "/apis/apps/v1/namespaces/lode/deployments/qwen-7b-relay",
                true,
            ),
            ("/apis/apps/v1/namespaces/lode/deployments/qwen-7b", true),
            ("/api/v1/namespaces/lode/services/qwen-7b", true),
            ("/api/v1/namespaces/lode/services/qwen-7b-engines", false),
            (
                "/apis/policy/v1/namespaces/lode/poddisruptionbudgets/qwen-7b",
                false,
            ),
            (
                "/apis/policy/v1/namespaces/lode/poddisruptionbudgets/qwen-7b-relay",
                false,
            ),
            (
                "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies/qwen-7b",
                false,
            ),
            (
                "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies/qwen-7b-engines",
                false,
            ),
            ("/api/v1/namespaces/lode/configmaps/qwen-7b-serve", true),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/lode/rolebindings/qwen-7b-relay",
                false,
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/lode/roles/qwen-7b-relay",
                false,
            ),
            (
                "/api/v1/namespaces/lode/serviceaccounts/qwen-7b-relay",
                false,
            ),
        ] {
            let (method, got, _, send) = next(&mut h).await;
            assert_eq!(method, "DELETE");
            assert!(got.starts_with(path), "{got}");
            if exists {
                reply(
                    send,
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                );
            } else {
                reply(
                    send,
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                );
            }
        }
        let (method, _, body, send) = next(&mut h).await;
        assert_eq!(method, "POST", "an Event");
        assert!(
            body["note"]
                .as_str()
                .expect("note")
                .contains("removed 4 serving objects")
        );
        reply(send, 201, body);
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert!(path.contains("/servicemodels/qwen-7b/status"), "{path}");
        assert_eq!(body["status"]["conditions"][0]["reason"], "NoSupplier");
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        reply(send, 200, sm_json);
    });
    let action = reconcile_model(Arc::new(sm), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::await_change());
    server.await.expect("requests");

    // An invalid toleration: an Event and a condition, nothing applied.
    let (ctx, mut h) = context();
    let mut sm: ServiceModel = sample("servicemodel.yaml", "sm-uid");
    sm.spec.gpus.tolerations = vec!["gpu:Sometimes".into()];
    let sm_json = serde_json::to_value(&sm).expect("json");
    let supplier: Value =
        serde_json::to_value(sample::<Supplier>("supplier.yaml", "s-uid")).expect("json");
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut h).await;
        reply(send, 200, supplier_list(vec![supplier]));
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/apis/events.k8s.io/v1/namespaces/lode/events"),
            "{path}"
        );
        assert_eq!(body["reason"], "InvalidToleration");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["regarding"]["name"], "qwen-7b");
        reply(send, 201, body);
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert!(path.contains("/servicemodels/qwen-7b/status"), "{path}");
        let c = &body["status"]["conditions"][0];
        assert_eq!(c["reason"], "InvalidToleration");
        assert!(
            c["message"]
                .as_str()
                .expect("message")
                .contains("gpu:Sometimes")
        );
        reply(send, 200, sm_json);
    });
    let action = reconcile_model(Arc::new(sm), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::await_change());
    server.await.expect("requests");
}

#[tokio::test]
async fn a_new_supplier_gets_a_token_once_and_its_store() {
    let (ctx, mut h) = context();
    let mut s: Supplier = sample("supplier.yaml", "s-uid");
    // A chain node that refuses connections.
    s.spec.chain.grpc_url = "http://127.0.0.1:1".into();
    s.spec.chain.rpc_url = "http://127.0.0.1:1".into();
    let s_json = serde_json::to_value(&s).expect("json");
    let server = tokio::spawn(async move {
        // Facts first: what serves, what the chain and the Jobs say, the store's sessions.
        // The serving Deployment of its ServiceModel: two pods ready.
        // Its relay tier has a ready pod, so its ready engines count.
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/apis/apps/v1/namespaces/lode/deployments/qwen-7b-relay"
            )
        );
        reply(
            send,
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "qwen-7b-relay", "namespace": "lode"}, "status": {"readyReplicas": 1}}),
        );
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/apis/apps/v1/namespaces/lode/deployments/qwen-7b")
        );
        reply(
            send,
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "qwen-7b", "namespace": "lode"}, "status": {"readyReplicas": 2}}),
        );
        // Its claim Job finished: the outcome comes from the pod's termination message.
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(method, "GET");
        assert!(
            path.starts_with("/apis/batch/v1/namespaces/lode/jobs?"),
            "{path}"
        );
        reply(
            send,
            200,
            json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [{
                "metadata": {"name": "supplier-1-claim-22", "labels": {"app.kubernetes.io/component": "claim"},
                    "annotations": {"lode.pokt.network/window-open-height": "22"}},
                "status": {"conditions": [{"type": "Complete", "status": "True"}]}}]}),
        );
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(method, "GET");
        assert!(path.starts_with("/api/v1/namespaces/lode/pods?"), "{path}");
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
                "metadata": {"name": "supplier-1-claim-22-x", "labels": {"job-name": "supplier-1-claim-22"}},
                "status": {"containerStatuses": [{"name": "claim", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-01-01T00:00:00Z",
                        "message": claim_summary()}}}]}}]}),
        );
        // The store's pod: none running yet, so its sessions are not known.
        expect_empty_list(&mut h, "/api/v1/namespaces/lode/pods?", "store", "PodList").await;
        // No token Secret yet: one is created (create-only: an existing token is kept).
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/api/v1/namespaces/lode/secrets"),
            "{path}"
        );
        let token = body["stringData"]["token"]
            .as_str()
            .expect("token")
            .to_string();
        assert_eq!(token.len(), 64);
        reply(send, 201, body);
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/apis/events.k8s.io/v1/namespaces/lode/events"),
            "{path}"
        );
        assert_eq!(body["reason"], "StoreTokenCreated");
        reply(send, 201, body);
        // And the store's TLS Secret: its certificate, key, and the CA that signed it.
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/api/v1/namespaces/lode/secrets"),
            "{path}"
        );
        assert_eq!(body["metadata"]["name"], "supplier-1-store-tls");
        assert_eq!(body["type"], "kubernetes.io/tls");
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            assert!(body["stringData"][key].as_str().is_some(), "{key}");
        }
        reply(send, 201, body);
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/apis/events.k8s.io/v1/namespaces/lode/events"),
            "{path}"
        );
        assert_eq!(body["reason"], "StoreCertificateIssued");
        reply(send, 201, body);
        let sts = expect_apply(
            &mut h,
            "/apis/apps/v1/namespaces/lode/statefulsets",
            "supplier-1-store",
            json!({"replicas": 1, "readyReplicas": 1}),
        )
        .await;
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["args"][0],
            "store"
        );
        expect_apply(
            &mut h,
            "/api/v1/namespaces/lode/services",
            "supplier-1-store",
            Value::Null,
        )
        .await;
        expect_apply(
            &mut h,
            "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies",
            "supplier-1-store",
            Value::Null,
        )
        .await;
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert!(path.contains("/suppliers/supplier-1/status"), "{path}");
        assert_eq!(
            body["status"]["lastClaim"],
            json!({"sessionEndHeight": 20, "outcome": "claimed", "txHash": "AB12"})
        );
        assert_eq!(body["status"]["lastProof"], Value::Null);
        assert_eq!(
            body["status"]["sessionsInFlight"],
            Value::Null,
            "no store pod to ask"
        );
        assert_eq!(body["status"]["readyReplicas"], 2);
        assert_eq!(body["status"]["services"], "llm");
        let conds = body["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .clone();
        let get = |t: &str| {
            conds
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .expect("condition")
        };
        assert_eq!(get("StoreReady")["status"], "True");
        assert_eq!(get("Ready")["status"], "True");
        assert_eq!(get("Staked")["status"], "False");
        assert_eq!(get("Staked")["reason"], "ChainUnreachable");
        assert_eq!(get("ClaimsHealthy")["status"], "True");
        reply(send, 200, s_json);
    });
    reconcile_supplier(Arc::new(s), ctx)
        .await
        .expect("reconciles");
    server.await.expect("every request as expected");
}

#[tokio::test]
async fn the_window_scheduler_starts_each_job_once_at_the_height_read_from_the_chain() {
    // A devnet at the height where session 10's claim window opens (code defaults:
    // claim window [12, 16]).
    let devnet = lode_devnet::Devnet::new(&lode_devnet::DevnetConfig::new(3));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    devnet.advance((12 - devnet.height()) as u32);
    let mut supplier: Value =
        serde_json::to_value(sample::<Supplier>("supplier.yaml", "s-uid")).expect("json");
    supplier["spec"]["chain"] =
        json!({"grpcUrl": chain.grpc_url, "rpcUrl": chain.rpc_url, "chainId": "pocket-devnet"});
    let (service, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "lode");
    let server = tokio::spawn(async move {
        for round in 0..2 {
            let (method, path, _, send) = next(&mut h).await;
            assert_eq!(method, "GET");
            assert!(
                path.starts_with("/apis/lode.pokt.network/v1alpha1/suppliers"),
                "{path}"
            );
            reply(send, 200, supplier_list(vec![supplier.clone()]));
            let (method, path, body, send) = next(&mut h).await;
            assert_eq!(method, "POST");
            assert!(
                path.starts_with("/apis/batch/v1/namespaces/lode/jobs"),
                "{path}"
            );
            assert_eq!(body["metadata"]["name"], "supplier-1-claim-12");
            assert_eq!(
                body["spec"]["template"]["spec"]["containers"][0]["args"][0],
                "claim"
            );
            if round == 0 {
                reply(send, 201, body);
            } else {
                reply(
                    send,
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
                );
            }
        }
    });
    let mut chains = std::collections::BTreeMap::new();
    let images = Images::default();
    let first = lode_operator::scheduler::pass(&client, &images, &mut chains)
        .await
        .expect("pass");
    let second = lode_operator::scheduler::pass(&client, &images, &mut chains)
        .await
        .expect("pass");
    assert_eq!(
        (first, second),
        (1, 0),
        "created once, found the second time"
    );
    server.await.expect("requests as expected");
    chain.shutdown().await;
}

/// Expects a list request under `prefix` (with `selecting` in its query) and answers it
/// with no items.
async fn expect_empty_list(h: &mut Handle, prefix: &str, selecting: &str, kind: &str) {
    let (method, path, _, send) = next(h).await;
    assert_eq!(method, "GET");
    assert!(
        path.starts_with(prefix) && path.contains(selecting),
        "{path}"
    );
    let api = if prefix.starts_with("/api/v1") {
        "v1"
    } else {
        "batch/v1"
    };
    reply(
        send,
        200,
        json!({"apiVersion": api, "kind": kind, "metadata": {}, "items": []}),
    );
}

/// Answers a Supplier reconcile's reads: its relay tier and its engines have one ready
/// pod each, its claim/prove Jobs (for `status.lastClaim`/`lastProof`) are none, its
/// store has no running pod yet (no session counts).
async fn serving_facts(h: &mut Handle) {
    let (_, path, _, send) = next(h).await;
    assert_eq!(
        path,
        "/apis/apps/v1/namespaces/lode/deployments/qwen-7b-relay"
    );
    reply(
        send,
        200,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "qwen-7b-relay", "namespace": "lode"}, "status": {"readyReplicas": 1}}),
    );
    let (_, path, _, send) = next(h).await;
    assert_eq!(path, "/apis/apps/v1/namespaces/lode/deployments/qwen-7b");
    reply(
        send,
        200,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "qwen-7b", "namespace": "lode"}, "status": {"readyReplicas": 1}}),
    );
    expect_empty_list(
        h,
        "/apis/batch/v1/namespaces/lode/jobs?",
        "labelSelector",
        "JobList",
    )
    .await;
    expect_empty_list(h, "/api/v1/namespaces/lode/pods?", "store", "PodList").await;
}

/// Answers the store's writes: the token and TLS Secrets exist (the creates answer 409
/// and both are kept), the store is applied and ready.
async fn store_applied(h: &mut Handle) {
    for secret in ["supplier-1-store-token", "supplier-1-store-tls"] {
        let (method, path, body, send) = next(h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/api/v1/namespaces/lode/secrets"),
            "{path}"
        );
        assert_eq!(body["metadata"]["name"], secret);
        reply(
            send,
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": format!("secrets \"{secret}\" already exists")}),
        );
    }
    expect_apply(
        h,
        "/apis/apps/v1/namespaces/lode/statefulsets",
        "supplier-1-store",
        json!({"readyReplicas": 1}),
    )
    .await;
    expect_apply(
        h,
        "/api/v1/namespaces/lode/services",
        "supplier-1-store",
        Value::Null,
    )
    .await;
    expect_apply(
        h,
        "/apis/networking.k8s.io/v1/namespaces/lode/networkpolicies",
        "supplier-1-store",
        Value::Null,
    )
    .await;
}

#[tokio::test]
async fn the_stake_job_starts_only_when_the_chain_differs_and_pods_serve() {
    // The sample's operator is the devnet's (seed 1) first supplier, not staked yet.
    let devnet = lode_devnet::Devnet::new(&lode_devnet::DevnetConfig::new(1));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    let mut s: Supplier = sample("supplier.yaml", "s-uid");
    s.spec.chain.grpc_url = chain.grpc_url.clone();
    s.spec.chain.rpc_url = chain.rpc_url.clone();
    let s_json = serde_json::to_value(&s).expect("json");

    let (ctx, mut h) = context();
    let reply_json = s_json.clone();
    let server = tokio::spawn(async move {
        serving_facts(&mut h).await;
        store_applied(&mut h).await;
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/apis/batch/v1/namespaces/lode/jobs"),
            "{path}"
        );
        assert!(
            body["metadata"]["name"]
                .as_str()
                .expect("name")
                .starts_with("supplier-1-stake-")
        );
        reply(send, 201, body);
        let (method, _, body, send) = next(&mut h).await;
        assert_eq!(method, "POST", "an Event");
        assert_eq!(body["reason"], "StakeJobStarted");
        reply(send, 201, body);
        let (_, path, body, send) = next(&mut h).await;
        assert!(path.contains("/suppliers/supplier-1/status"), "{path}");
        let staked = condition(&body, "Staked");
        assert_eq!(
            (staked["status"].as_str(), staked["reason"].as_str()),
            (Some("False"), Some("StakeJobStarted"))
        );
        reply(send, 200, reply_json);
    });
    reconcile_supplier(Arc::new(s.clone()), ctx)
        .await
        .expect("reconciles");
    server.await.expect("requests");

    // What the Job does: the chain now has the stake, services and endpoint.
    devnet
        .stake_into_next_session_at(&chain, 0, "llm", "https://relay.example.com")
        .await
        .expect("staked");
    let (ctx, mut h) = context();
    let server = tokio::spawn(async move {
        serving_facts(&mut h).await;
        store_applied(&mut h).await;
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH", "no Job this time: {path}");
        let staked = condition(&body, "Staked");
        assert_eq!(staked["status"], "True");
        assert_eq!(body["status"]["stakedUpokt"], "100000000");
        reply(send, 200, s_json);
    });
    reconcile_supplier(Arc::new(s), ctx)
        .await
        .expect("reconciles");
    server.await.expect("requests");
    chain.shutdown().await;
}

/// A condition of a status patch's body.
fn condition(body: &Value, type_: &str) -> Value {
    body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"))
}

#[tokio::test]
async fn unstake_on_delete_holds_a_finalizer_until_the_unstake_job_succeeded() {
    // Opted in, no finalizer yet: it is added (guarded by the resourceVersion), and the
    // reconcile waits for the resulting watch event.
    let (ctx, mut h) = context();
    let mut s: Supplier = sample("supplier.yaml", "s-uid");
    s.spec.unstake_on_delete = true;
    s.metadata.resource_version = Some("7".into());
    let s_json = serde_json::to_value(&s).expect("json");
    let reply_json = s_json.clone();
    let server = tokio::spawn(async move {
        let (method, path, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert!(
            path.starts_with(
                "/apis/lode.pokt.network/v1alpha1/namespaces/lode/suppliers/supplier-1?"
            ),
            "{path}"
        );
        assert_eq!(
            body["metadata"]["finalizers"],
            json!(["lode.pokt.network/unstake"])
        );
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        reply(send, 200, reply_json);
    });
    let action = reconcile_supplier(Arc::new(s.clone()), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::await_change());
    server.await.expect("requests");

    // Deleted: the unstake Job is started (no owner reference: its owner is going).
    s.metadata.finalizers = Some(vec!["lode.pokt.network/unstake".into()]);
    s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (ctx, mut h) = context();
    let server = tokio::spawn(async move {
        let (method, path, _, send) = next(&mut h).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/apis/batch/v1/namespaces/lode/jobs/supplier-1-unstake"
            )
        );
        reply(
            send,
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
        let (method, _, body, send) = next(&mut h).await;
        assert_eq!(method, "POST");
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["unstake"])
        );
        assert!(body["metadata"]["ownerReferences"].is_null());
        reply(send, 201, body);
        let (_, _, body, send) = next(&mut h).await;
        assert_eq!(body["reason"], "UnstakeJobStarted");
        reply(send, 201, body);
    });
    let action = reconcile_supplier(Arc::new(s.clone()), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(10)));
    server.await.expect("requests");

    // The Job succeeded: the finalizer is removed and the Supplier released.
    let (ctx, mut h) = context();
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut h).await;
        reply(
            send,
            200,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "supplier-1-unstake", "namespace": "lode"}, "status": {"succeeded": 1}}),
        );
        let (method, _, body, send) = next(&mut h).await;
        assert_eq!(method, "PATCH");
        assert_eq!(body["metadata"]["finalizers"], json!([]));
        reply(send, 200, s_json);
        let (_, _, body, send) = next(&mut h).await;
        assert_eq!(body["reason"], "Unstaked");
        reply(send, 201, body);
    });
    let action = reconcile_supplier(Arc::new(s), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::await_change());
    server.await.expect("requests");
}
