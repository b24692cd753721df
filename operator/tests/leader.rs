//! Leader election against a mocked API server: create, respect a fresh holder, take over
//! an expired Lease with its resourceVersion, and lose a race cleanly.

use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use lode_operator::leader::LeaseLock;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn new_lock() -> (LeaseLock, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "lode");
    (
        LeaseLock::new(
            client,
            "lode",
            "lode-operator",
            "me",
            Duration::from_secs(15),
        ),
        handle,
    )
}

async fn expect(h: &mut Handle, method: &str, path: &str, status: u16, reply: Value) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method().as_str(), method);
    assert!(req.uri().to_string().starts_with(path), "{}", req.uri());
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json")
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).expect("json")))
            .expect("response"),
    );
    body
}

fn lease(holder: &str, renewed: Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lode-operator", "namespace": "lode", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed.to_string(), "acquireTime": renewed.to_string(),
                 "leaseTransitions": 2}
    })
}

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/lode/leases";

#[tokio::test]
async fn the_first_candidate_creates_the_lease() {
    let (lock, mut h) = new_lock();
    let server = tokio::spawn(async move {
        expect(&mut h, "GET", &format!("{PATH}/lode-operator"), 404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})).await;
        let body = expect(&mut h, "POST", PATH, 201, lease("me", Timestamp::now())).await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    });
    assert!(lock.try_acquire(Timestamp::now()).await.expect("ok"));
    server.await.expect("requests");
}

#[tokio::test]
async fn a_fresh_holder_is_respected_and_an_expired_one_replaced() {
    let now = Timestamp::now();
    // Renewed 2 s ago by another replica: not ours.
    let (lock, mut h) = new_lock();
    let fresh = lease("other", now - SignedDuration::from_secs(2));
    let server = tokio::spawn(async move {
        expect(&mut h, "GET", &format!("{PATH}/lode-operator"), 200, fresh).await;
    });
    assert!(!lock.try_acquire(now).await.expect("ok"));
    server.await.expect("requests");

    // Not renewed for 60 s: taken over, with the resourceVersion read (compare-and-swap).
    let (lock, mut h) = new_lock();
    let stale = lease("other", now - SignedDuration::from_secs(60));
    let server = tokio::spawn(async move {
        let reply = stale.clone();
        expect(&mut h, "GET", &format!("{PATH}/lode-operator"), 200, stale).await;
        let body = expect(&mut h, "PUT", &format!("{PATH}/lode-operator"), 200, reply).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
    });
    assert!(lock.try_acquire(now).await.expect("ok"));
    server.await.expect("requests");

    // Another candidate wrote first: the replace conflicts and this one does not lead.
    let (lock, mut h) = new_lock();
    let stale = lease("other", now - SignedDuration::from_secs(60));
    let server = tokio::spawn(async move {
        expect(&mut h, "GET", &format!("{PATH}/lode-operator"), 200, stale).await;
        expect(&mut h, "PUT", &format!("{PATH}/lode-operator"), 409, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})).await;
    });
    assert!(!lock.try_acquire(now).await.expect("ok"));
    server.await.expect("requests");
}
