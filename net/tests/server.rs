//! The public-port server against clients that try to hold it: half-sent headers, idle
//! HTTP/1.1 and HTTP/2 connections, half-sent bodies, more body bytes than the budget;
//! and shutdown finishing a request in flight.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use lode_net::server::{BodyBudget, Timeouts, is_body_timeout, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUTS: Timeouts = Timeouts {
    header_read: Duration::from_millis(500),
    idle: Duration::from_millis(800),
    max_streams: 8,
};

fn refuse(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// Echoes the body's length; 408 when it did not arrive in time.
async fn echo(body: Body) -> Response {
    match http_body_util::Limited::new(body, 8 << 20).collect().await {
        Ok(c) => c.to_bytes().len().to_string().into_response(),
        Err(e) if is_body_timeout(&*e) => {
            (StatusCode::REQUEST_TIMEOUT, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Serves the echo router with a budget of `budget` bytes; returns the address and the
/// shutdown trigger.
async fn start(
    budget: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (listener, addr) = lode_net::bind("test", "127.0.0.1:0").await.expect("bind");
    let budget = BodyBudget::new(budget, 2 << 20, Duration::from_millis(700), refuse);
    let app = Router::new()
        .route("/echo", post(echo))
        .route(
            "/hold",
            post(|body: Body| async move {
                let n = echo(body).await;
                tokio::time::sleep(Duration::from_millis(2000)).await;
                n
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            budget,
            BodyBudget::guard,
        ));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = lode_net::CappedListener::new(listener, 64);
    let task = tokio::spawn(serve(listener, app, TIMEOUTS, async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn half_sent_headers_are_closed_after_the_header_timeout() {
    let (addr, _stop, _task) = start(64 << 20).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    assert!(
        read_to_close(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "the connection is still open after 10 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed() {
    let (addr, _stop, _task) = start(64 << 20).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("write");
    let answer = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("closed once idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n3"), "{answer}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let (addr, _stop, _task) = start(64 << 20).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    // A request that takes longer than nothing, then three in a row spanning more than
    // the idle timeout: the connection stays while it works.
    for _ in 0..4 {
        let req = hyper::Request::post(format!("http://{addr}/slow"))
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request");
        let res = send.send_request(req).await.expect("answered");
        assert_eq!(res.status(), 200);
    }
    // Then idle: the server closes it.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle connection was closed")
        .expect("joined")
        .expect("closed cleanly (GOAWAY)");
}

#[tokio::test]
async fn a_half_sent_body_times_out_and_the_budget_refuses_what_it_cannot_hold() {
    // 4 MiB of budget: 2 MiB for large bodies.
    let (addr, _stop, _task) = start(4 << 20).await;
    // A large body that never finishes: 408 after its deadline.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .expect("write");
    slow.write_all(&[b'x'; 100_000]).await.expect("write");
    let first = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(first.starts_with("HTTP/1.1 408"), "{first}");
    assert!(first.contains("did not arrive within"), "{first}");

    // A large body held by its handler for 2 s, then another large one: no room for it
    // in the large half within its deadline (503). A small request is served meanwhile.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let post = |path: &str, body: Vec<u8>| {
        client.request(
            hyper::Request::post(format!("http://{addr}{path}"))
                .body(http_body_util::Full::new(Bytes::from(body)))
                .expect("request"),
        )
    };
    let held = tokio::spawn(post("/hold", vec![b'x'; 1_500_000]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = post("/echo", vec![b'y'; 1_500_000])
        .await
        .expect("answered");
    assert_eq!(refused.status(), 503);
    let text = refused
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("too many request bodies in flight"),
        "{text:?}"
    );
    let small = post("/echo", b"hello".to_vec()).await.expect("answered");
    assert_eq!(small.status(), 200);
    assert_eq!(
        small.into_body().collect().await.expect("body").to_bytes(),
        "5"
    );
    let held = held.await.expect("joined").expect("answered");
    assert_eq!(
        held.into_body().collect().await.expect("body").to_bytes(),
        "1500000"
    );
    // Its room is back.
    let again = post("/echo", vec![b'z'; 1_500_000])
        .await
        .expect("answered");
    assert_eq!(
        again.into_body().collect().await.expect("body").to_bytes(),
        "1500000"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let (addr, stop, task) = start(64 << 20).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let req = hyper::Request::post(format!("http://{addr}/slow"))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let pending = tokio::spawn(client.request(req));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    let res = pending.await.expect("joined").expect("answered");
    assert_eq!(res.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stopped")
        .expect("joined");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
