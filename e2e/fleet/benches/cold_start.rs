//! Scale from zero: the time from a model's first relay, with no engine running, to its
//! first token, split into
//!
//! - **decision**: the relay is held by the relay tier and counted as demand; the
//!   autoscaler reads it and writes `spec.replicas: 1`;
//! - **pod start**: the engine pod scheduled, its weights checked, its engine started;
//! - **engine load**: the engine loading its model until its readiness probe passes;
//! - **serve**: the relay tier finding the ready engine (EndpointSlices), the held
//!   relay proxied, its first token back through the gateway.
//!
//! Each configuration runs the local fleet (kubesim, the real operator, relay tier and
//! gateway) and wakes its model three times, at evenly spread phases of the autoscaler's
//! period. The baseline is KubeAI's design point, in the same command: the request is
//! held the same way, but the autoscaler reads the metrics every 10 s (KubeAI's default
//! interval) instead of every second.
//!
//! `cargo bench -p lode-fleet --bench cold_start --profile dev` (about 4 minutes; the
//! llama.cpp run needs `LODE_LLAMA_SERVER`, which `scripts/setup.sh` exports).

use std::time::{Duration, Instant};

use lode_fleet::{Fleet, FleetEngine, FleetOptions};
use lode_kubesim::resources::Res;
use serde_json::Value;

const WAKES: usize = 3;

/// One wake-up, each part in seconds.
#[derive(Clone, Copy, Debug, Default)]
struct Split {
    decision: f64,
    pod_start: f64,
    engine_load: f64,
    serve: f64,
}

impl Split {
    fn total(&self) -> f64 {
        self.decision + self.pod_start + self.engine_load + self.serve
    }
}

fn model(fleet: &Fleet) -> Value {
    fleet.service_model()
}

fn engine_pods(fleet: &Fleet) -> Vec<Value> {
    fleet
        .sim
        .store
        .list(&Res::new("", "pods"), Some("lode"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "engine")
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// Posts a streamed chat completion and returns when its first token arrives.
async fn first_token(port: u16, model: &str, prompt: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({"model": model, "stream": true, "max_tokens": 4,
        "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: gateway\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        lode_fleet::DEVNET_API_KEY,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "ended before a token: {}",
                String::from_utf8_lossy(&seen)
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
            if text.contains("\r\n\r\n") {
                return Err(text.into_owned());
            }
            continue;
        }
        if text.contains("data: {") {
            return Ok(());
        }
    }
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the model is at zero and no relay pod routes to an engine.
async fn asleep(fleet: &Fleet) {
    until("the model at zero", Duration::from_secs(120), || {
        model(fleet)["spec"]["replicas"].as_i64() == Some(0) && engine_pods(fleet).is_empty()
    })
    .await;
    fleet
        .until_no_engine_routed(Duration::from_secs(30))
        .await
        .expect("routes");
}

/// Wake-up `i` of `WAKES` from the first relay, followed every 10 ms in the API server's
/// state. The relay leaves `(i + ½) / WAKES` of an autoscaler period after the model fell
/// asleep (which happens on an autoscaler pass), so the wake-ups sample the period's
/// phases evenly instead of all arriving just after a pass.
async fn wake(fleet: &Fleet, i: usize, prompt: &str) -> Result<Split, String> {
    asleep(fleet).await;
    let period = fleet.options.autoscale_seconds as f64;
    tokio::time::sleep(Duration::from_secs_f64(
        period * (i as f64 + 0.5) / WAKES as f64,
    ))
    .await;
    let port = fleet.options.gateway_port;
    let name = fleet.options.model();
    let t0 = Instant::now();
    let relay = tokio::spawn({
        let prompt = prompt.to_string();
        async move { first_token(port, name, &prompt).await }
    });
    let (mut decided, mut running, mut ready) = (None, None, None);
    while !relay.is_finished() {
        let now = t0.elapsed().as_secs_f64();
        if decided.is_none() && model(fleet)["spec"]["replicas"].as_i64().unwrap_or(0) > 0 {
            decided = Some(now);
        }
        let pods = engine_pods(fleet);
        if running.is_none() && pods.iter().any(|p| p["status"]["phase"] == "Running") {
            running = Some(now);
        }
        if ready.is_none() && pods.iter().any(lode_kubesim::controllers::pod_ready) {
            ready = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = t0.elapsed().as_secs_f64();
    relay
        .await
        .expect("the relay task")
        .map_err(|e| format!("the first relay at zero after {done:.2} s: {e}"))?;
    let decided = decided.ok_or("no decision was seen")?;
    let running = running.unwrap_or(decided);
    let ready = ready.unwrap_or(running);
    Ok(Split {
        decision: decided,
        pod_start: running - decided,
        engine_load: ready - running,
        serve: done - ready,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A fleet whose sample model scales to zero after 3 idle seconds, woken `WAKES` times.
async fn run(label: &str, engine: FleetEngine, autoscale_seconds: u64) -> Vec<Split> {
    let root = tempfile::tempdir().expect("tempdir");
    println!("{label}: fleet under {}", root.path().display());
    let mut o = FleetOptions::new(root.path().to_path_buf(), lode_testkit::fleet_bins());
    let any = "127.0.0.1:0".parse().expect("addr");
    (o.api, o.rpc, o.grpc) = (any, any, any);
    o.gateway_port = lode_testkit::free_port();
    o.relay_port = lode_testkit::free_port();
    o.apply_samples = false;
    o.engine = engine;
    o.autoscale_seconds = autoscale_seconds;
    // A cold start worth measuring for engine-sim: 2 s to "load" the model.
    o.engine_args = ["--load-ms", "2000"].map(String::from).to_vec();
    if matches!(o.engine, FleetEngine::Llamacpp(_)) {
        o.engine_args.clear();
    }
    let fleet = Fleet::start(o).await.expect("fleet");
    let sm_file = fleet.manifests.join("20-servicemodel.yaml");
    let text = std::fs::read_to_string(&sm_file)
        .expect("sample")
        .replace("minReplicas: 2", "minReplicas: 0")
        .replace("minReplicas: 1", "minReplicas: 0");
    std::fs::write(
        &sm_file,
        format!(
            "{text}  autoscaling: {{scaleDownStabilizationSeconds: 1, scaleToZeroIdleSeconds: 3}}\n  relay: {{holdSeconds: 60}}\n"
        ),
    )
    .expect("write");
    fleet.apply_manifests().expect("apply");
    let t0 = Instant::now();
    while !fleet.summary().await.staked {
        assert!(t0.elapsed() < Duration::from_secs(120), "never staked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gateway sees the session once a relay through it answers something other
    // than no_session; that first relay wakes the model, and is not measured.
    loop {
        let r = lode_fleet::post_chat(
            fleet.options.gateway_port,
            Some(lode_fleet::DEVNET_API_KEY),
            fleet.options.model(),
            "warm the session",
            false,
            Duration::from_secs(90),
        )
        .await
        .expect("gateway");
        if r.0 == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "never served: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Vec::new();
    for i in 0..WAKES {
        let s = match wake(&fleet, i, &format!("wake {i}")).await {
            Ok(s) => s,
            Err(e) => {
                // Keep the fleet's logs (operator.log, pods/*/…) to read.
                let kept = root.keep();
                panic!(
                    "{label}: {e}; the fleet's files are kept in {}",
                    kept.display()
                );
            }
        };
        println!(
            "{label:<44} wake {i}: decision {:>5.2} s  pod start {:>5.2} s  engine load {:>5.2} s  serve {:>5.2} s  = {:>5.2} s",
            s.decision,
            s.pod_start,
            s.engine_load,
            s.serve,
            s.total()
        );
        out.push(s);
    }
    fleet.shutdown().await;
    drop(root);
    out
}

fn summary(label: &str, runs: &[Split]) -> Split {
    let m = |f: fn(&Split) -> f64| median(runs.iter().map(f).collect());
    let s = Split {
        decision: m(|s| s.decision),
        pod_start: m(|s| s.pod_start),
        engine_load: m(|s| s.engine_load),
        serve: m(|s| s.serve),
    };
    println!(
        "{label:<44} median: decision {:>5.2} s  pod start {:>5.2} s  engine load {:>5.2} s  serve {:>5.2} s; first token {:>5.2} s",
        s.decision,
        s.pod_start,
        s.engine_load,
        s.serve,
        median(runs.iter().map(Split::total).collect())
    );
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    // `-- llama` runs the llama.cpp configuration alone.
    if std::env::args().any(|a| a == "llama") {
        let llama = run(
            "lode, llama.cpp (generated tiny model)",
            FleetEngine::Llamacpp(lode_testkit::llama_server()),
            1,
        )
        .await;
        summary("lode, llama.cpp", &llama);
        return;
    }
    println!("first relay at zero → first token ({WAKES} wake-ups each)");
    let lode = run(
        "lode (demand read every 1 s), engine-sim",
        FleetEngine::Sim,
        1,
    )
    .await;
    let kubeai = run(
        "KubeAI design point (every 10 s), engine-sim",
        FleetEngine::Sim,
        10,
    )
    .await;
    let llama = run(
        "lode, llama.cpp (generated tiny model)",
        FleetEngine::Llamacpp(lode_testkit::llama_server()),
        1,
    )
    .await;
    let a = summary("lode, engine-sim", &lode);
    let b = summary("KubeAI design point, engine-sim", &kubeai);
    summary("lode, llama.cpp", &llama);
    let total = |r: &[Split]| median(r.iter().map(Split::total).collect());
    println!(
        "decision {:.2} s vs {:.2} s ({:.1}x faster); first token {:.2} s vs {:.2} s ({:.2}x)",
        a.decision,
        b.decision,
        b.decision / a.decision.max(1e-3),
        total(&lode),
        total(&kubeai),
        total(&kubeai) / total(&lode).max(1e-3)
    );
}
