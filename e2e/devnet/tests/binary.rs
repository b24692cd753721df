//! The `devnet` binary: starts on free ports, prints its accounts, produces blocks on its
//! timer and on demand, and stops cleanly on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lode_chain::{CometRpc, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_binary_serves_produces_blocks_and_stops_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devnet"))
        .args([
            "--rpc-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--block-time",
            "200ms",
            "--seed",
            "42",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn devnet");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut text = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let end = line == "}";
        text.push_str(&line);
        if end {
            break;
        }
    }
    let summary: serde_json::Value = serde_json::from_str(&text).expect("summary JSON");
    assert_eq!(summary["chain_id"], "pocket-devnet");
    assert_eq!(summary["suppliers"].as_array().expect("suppliers").len(), 2);
    assert!(
        summary["applications"][0]["address"]
            .as_str()
            .expect("address")
            .starts_with("pokt1")
    );
    assert_eq!(
        summary["applications"][0]["key_hex"]
            .as_str()
            .expect("key")
            .len(),
        64
    );
    let rpc_url = summary["rpc_url"].as_str().expect("rpc url").to_string();
    let rpc = CometRpc::new(
        &rpc_url,
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
        },
    );
    let first = rpc.status().await.expect("status");
    assert_eq!(first.chain_id, "pocket-devnet");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = rpc.status().await.expect("status");
    assert!(
        later.latest_height > first.latest_height,
        "the timer produces blocks"
    );
    // On demand, over HTTP.
    let v: serde_json::Value =
        serde_json::from_str(&post(&rpc_url, "/devnet/advance?blocks=5").await).expect("JSON");
    assert!(v["height"].as_i64().expect("height") >= later.latest_height + 5);
    let block = rpc.block(2).await.expect("block 2");
    assert_eq!(block.height, 2);
    // bash's builtin kill: no procps needed on a fresh machine.
    let status = Command::new("bash")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "clean exit on SIGINT: {exit:?}");
}

/// A bodyless HTTP/1.1 POST over a raw socket; returns the body.
async fn post(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.strip_prefix("http://").expect("http");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").expect("headers").1.to_string()
}
