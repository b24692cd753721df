//! engine-sim over loopback: completions with predictable usage, SSE streaming, metrics,
//! failure modes.

use std::time::{Duration, Instant};

use lode_engine_sim::{EngineSim, Mode, SimConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with `Connection: close`; returns status and de-chunked body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf8");
    let (head, rest) = text.split_once("\r\n\r\n").expect("head");
    let status = head[9..12].parse().expect("status");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, rest.to_string());
    }
    let (mut out, mut rest) = (String::new(), rest);
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (status, out)
}

#[tokio::test]
async fn completions_stream_report_usage_and_fail_on_demand() {
    let sim = EngineSim::new(SimConfig {
        ttft: Duration::from_millis(30),
        tokens_per_second: 500.0,
        ..SimConfig::default()
    });
    let (addr, _task) = sim
        .serve("127.0.0.1:0".parse().expect("addr"), std::future::pending())
        .await
        .expect("serve");

    let started = Instant::now();
    let (status, body) = http(addr, "POST", "/v1/chat/completions",
        r#"{"model":"sim-model","messages":[{"role":"user","content":"three little words"}],"max_tokens":10}"#).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(30 + 9 * 2),
        "ttft + 9 token gaps"
    );
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .split_whitespace()
            .count(),
        10
    );

    let (status, body) = http(
        addr,
        "POST",
        "/v1/completions",
        r#"{"prompt":"a b","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4 + 1 + 1 + 1, "tokens, finish, usage, [DONE]");
    assert_eq!(*events.last().expect("done"), "data: [DONE]");
    let usage: Value =
        serde_json::from_str(events[5].trim_start_matches("data: ")).expect("usage chunk");
    assert_eq!(usage["usage"]["total_tokens"], 6);

    let (_, metrics) = http(addr, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("vllm:generation_tokens_total{model_name=\"sim-model\"} 14"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm:prompt_tokens_total{model_name=\"sim-model\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm:num_requests_running{model_name=\"sim-model\"} 0"),
        "{metrics}"
    );

    let (status, _) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"other","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(addr, "POST", "/v1/chat/completions", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(
        http(addr, "POST", "/sim/mode?mode=error500", "").await.0,
        204
    );
    assert_eq!(
        http(addr, "POST", "/v1/chat/completions", r#"{"messages":[]}"#)
            .await
            .0,
        500
    );
    sim.set_mode(Mode::Ok);
    assert_eq!(
        http(addr, "POST", "/v1/chat/completions", r#"{"messages":[]}"#)
            .await
            .0,
        200
    );
    assert_eq!(http(addr, "POST", "/sim/mode?mode=bogus", "").await.0, 400);
    assert_eq!(http(addr, "GET", "/health", "").await.0, 200);
    let (_, models) = http(addr, "GET", "/v1/models", "").await;
    assert!(models.contains("sim-model"));
}
