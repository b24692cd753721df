//! The fleet on llama.cpp's real server (issue 24): the operator's `llamacpp` engine kind
//! run by kubesim as the real `llama-server` on a tiny model with random weights that
//! the fleet writes (scripts/tiny-gguf.py). The official `openai` SDK through the
//! gateway gets real generated tokens, plain and streamed, with the engine's own usage;
//! the relays are mined, claimed and proven on devnet; `kubectl get servicemodels` shows
//! the weights' digest. Then the real engine's faults: a prompt over its context window,
//! the engine killed mid-stream, a slow restart held by the startup probe, and weights
//! that do not match the pinned digest.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lode_fleet::{DEVNET_API_KEY, Fleet, FleetEngine, TINY_MODEL};
use tokio::io::{AsyncBufReadExt, BufReader};

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

/// llama.cpp's server behind a script that starts it 8 s late while `<dir>/slow`
/// exists: a model that is slow to load, for the startup probe.
fn slow_when_told(dir: &Path) -> PathBuf {
    let script = dir.join("llama-server");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e '{slow}' ] && sleep 8\nexec '{server}' \"$@\"\n",
            slow = dir.join("slow").display(),
            server = lode_testkit::llama_server().display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    script
}

/// The openai SDK: a chat completion, a streamed one with usage, and a prompt longer
/// than the engine's context window; one JSON line.
const SDK_CALLS: &str = r#"
import json, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=30)
model = sys.argv[3]
ask = [{"role": "system", "content": "You are a tiny model."}, {"role": "user", "content": "Say something."}]
# ignore_eos (llama.cpp's): random weights would otherwise end an answer any time.
always16 = {"ignore_eos": True}
r = client.chat.completions.create(model=model, messages=ask, max_tokens=16, extra_body=always16)
out = {"chat": {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "model": r.model, "usage": r.usage.model_dump(exclude_none=True)}}
parts, usage, chunks = [], None, 0
for ch in client.chat.completions.create(model=model, messages=ask, max_tokens=16, stream=True,
                                         stream_options={"include_usage": True}, extra_body=always16):
    chunks += 1
    if ch.choices:
        parts.append(ch.choices[0].delta.content or "")
    if ch.usage:
        usage = ch.usage.model_dump(exclude_none=True)
out["stream"] = {"content": "".join(parts), "chunks": chunks, "usage": usage}
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * 3000}], max_tokens=4)
    out["over"] = "answered"
except openai.APIStatusError as e:
    out["over"] = {"status": e.status_code, "message": str(e)}
print(json.dumps(out))
"#;

/// The openai SDK streaming a long answer: prints `first` after the first chunk, then one
/// JSON line saying how the stream ended.
const SDK_LONG_STREAM: &str = r#"
import json, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=60)
n, finish = 0, None
try:
    # ignore_eos (llama.cpp's): random weights would otherwise end the answer any time.
    for ch in client.chat.completions.create(model=sys.argv[3], max_tokens=1900, stream=True,
                                             extra_body={"ignore_eos": True},
                                             messages=[{"role": "user", "content": "Tell me everything."}]):
        n += 1
        if n == 1:
            print("first", flush=True)
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    print(json.dumps({"outcome": "complete", "chunks": n, "finish": finish}))
except Exception as e:
    print(json.dumps({"outcome": "broken", "chunks": n, "error": type(e).__name__, "message": str(e)[:300]}))
"#;

fn python(script: &str, fleet: &Fleet) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args([
        "-c",
        script,
        &fleet.gateway_url(),
        DEVNET_API_KEY,
        TINY_MODEL,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd
}

fn json_line(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_serves_mines_and_proves_on_the_real_llama_cpp_engine() {
    let root = tempfile::tempdir().expect("tempdir");
    let tools = tempfile::tempdir().expect("tempdir");
    let mut o = fleet_options(root.path());
    o.engine = FleetEngine::Llamacpp(slow_when_told(tools.path()));
    let fleet = Fleet::start(o).await.expect("fleet starts");
    let kc = fleet.sim.kubeconfig.clone();
    let logs = || {
        let mut s = std::fs::read_to_string(root.path().join("operator.log")).unwrap_or_default();
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
                    let t = std::fs::read_to_string(f.path()).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    s += &format!("== {}\n{}\n", f.path().display(), tail.join("\n"));
                }
            }
        }
        s
    };
    let first = fleet
        .first_relay(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("no relay served: {e}\n{}", logs()));
    println!(
        "first relay through llama.cpp {:.1} s after start",
        first.as_secs_f64()
    );

    // The engine pod is llama.cpp's server alone, loaded from the pinned volume; the
    // relay tier runs apart.
    let (_, pods) = kubectl(&kc, &["get", "pods"]);
    let running = |l: &&str| l.contains("1/1") && l.contains("Running");
    assert!(
        pods.lines()
            .filter(running)
            .any(|l| l.starts_with("llamacpp-tiny-") && !l.starts_with("llamacpp-tiny-relay-")),
        "{pods}"
    );
    assert!(
        pods.lines()
            .filter(running)
            .any(|l| l.starts_with("llamacpp-tiny-relay-")),
        "{pods}"
    );
    let engine_log = std::fs::read_dir(root.path().join("pods"))
        .expect("pods")
        .flatten()
        .find(|p| {
            let name = p.file_name().to_string_lossy().into_owned();
            name.starts_with("lode_llamacpp-tiny-")
                && !name.starts_with("lode_llamacpp-tiny-relay-")
        })
        .map(|p| std::fs::read_to_string(p.path().join("engine.log")).unwrap_or_default())
        .unwrap_or_default();
    assert!(engine_log.contains("model loaded"), "{engine_log}");

    // The digest the pods checked is the one of the files, and kubectl shows it.
    // Its weights came from the fleet's hub, once, into the weight cache the operator
    // made (kubesim keeps a claim's files under volumes/<namespace>/<claim>).
    assert_eq!(
        fleet.hub.downloads.load(Ordering::Relaxed),
        1,
        "fetched once"
    );
    let volume = root
        .path()
        .join("volumes/lode/llamacpp-tiny-weights/weights");
    assert!(volume.join(lode_fleet::TINY_MODEL_FILE).is_file());
    let (_, owner) = kubectl(
        &kc,
        &[
            "get",
            "pvc",
            "llamacpp-tiny-weights",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}",
        ],
    );
    assert_eq!(owner, "ServiceModel");
    let out = std::process::Command::new(lode_testkit::fleet_bins().join("relayminer"))
        .arg("digest")
        .arg(&volume)
        .output()
        .expect("relayminer digest");
    let digest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("model ").map(str::to_string))
        .expect("a digest");
    let table = wait_for(
        "the digest in kubectl get servicemodels",
        Duration::from_secs(30),
        async || {
            let (_, t) = kubectl(&kc, &["get", "servicemodels"]);
            t.contains(&digest).then_some(t)
        },
    )
    .await;
    println!("{table}");
    assert!(
        table.lines().next().unwrap_or("").contains("DIGEST"),
        "{table}"
    );
    // The relay tier found the engine replica in the engine Service's EndpointSlices.
    let relay_ip = fleet
        .sim
        .store
        .list(&lode_kubesim::resources::Res::new("", "pods"), Some("lode"))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "serve")
        .and_then(|p| p["status"]["podIP"].as_str().map(String::from))
        .expect("a relay pod");
    let metrics = lode_fleet::http_get(&format!("{relay_ip}:9091"), "/metrics")
        .await
        .expect("serve's metrics");
    assert!(
        metrics.contains("lode_serve_engines_ready{service=\"llm\"} 1"),
        "{metrics}"
    );
    let (_, verified) = kubectl(
        &kc,
        &[
            "get",
            "servicemodel",
            "llamacpp-tiny",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"WeightsVerified\")].reason}",
        ],
    );
    assert_eq!(verified, "Verified");

    // The official SDK: real tokens, the engine's usage, its context error.
    let (mined0, prompt0, completion0) = (
        fleet.serve_metric("lode_serve_mined_total").await,
        fleet.serve_metric("lode_serve_prompt_tokens_total").await,
        fleet
            .serve_metric("lode_serve_completion_tokens_total")
            .await,
    );
    let out = python(SDK_CALLS, &fleet)
        .output()
        .await
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let r = json_line(&text);
    println!("{r}");
    let chat = &r["chat"];
    assert_eq!(chat["model"], TINY_MODEL);
    assert_eq!(
        chat["finish"], "length",
        "16 tokens asked for, 16 generated"
    );
    assert!(!chat["content"].as_str().unwrap_or("").is_empty(), "{r}");
    assert_eq!(chat["usage"]["completion_tokens"], 16);
    let prompt_tokens = chat["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(
        prompt_tokens > 20,
        "ChatML-wrapped prompt, one token per character: {r}"
    );
    let stream = &r["stream"];
    assert!(stream["chunks"].as_u64().unwrap_or(0) >= 2, "{r}");
    assert!(!stream["content"].as_str().unwrap_or("").is_empty(), "{r}");
    assert_eq!(stream["usage"]["completion_tokens"], 16, "{r}");
    assert_eq!(stream["usage"]["prompt_tokens"], prompt_tokens, "{r}");
    // llama.cpp kept the first request's prompt in its slot: the second reused it.
    assert!(
        stream["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{r}"
    );
    assert_eq!(r["over"]["status"], 400, "{r}");
    assert!(
        r["over"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("exceeds the available context size"),
        "the engine's own error reaches the client: {r}"
    );
    // serve counted the engine's usage of the two answers, and mined them; not the
    // refused one.
    let mined = fleet.serve_metric("lode_serve_mined_total").await;
    assert_eq!(
        mined - mined0,
        2,
        "two answers mined, the context error not"
    );
    assert_eq!(
        fleet.serve_metric("lode_serve_prompt_tokens_total").await - prompt0,
        2 * prompt_tokens
    );
    assert_eq!(
        fleet
            .serve_metric("lode_serve_completion_tokens_total")
            .await
            - completion0,
        32
    );

    // Enough relays in one session for the chain to ask for a proof.
    for i in 0..12 {
        fleet
            .chat(&format!("q{i}"))
            .await
            .expect("relay through the gateway");
    }

    // Killed mid-stream: the SDK's stream breaks (it never looks complete), nothing is
    // mined, and the kubelet restarts the engine. The restart is slow (8 s before the
    // server even listens): the startup probe waits, the pod is not ready meanwhile.
    std::fs::write(tools.path().join("slow"), b"").expect("slow");
    let (mined0, aborted0) = (
        fleet.serve_metric("lode_serve_mined_total").await,
        fleet.serve_metric("lode_serve_aborted_streams_total").await,
    );
    let pid = fleet
        .container_pid("engine", "engine")
        .expect("the engine runs");
    let mut child = python(SDK_LONG_STREAM, &fleet)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a first chunk within 30 s")
        .expect("read");
    assert_eq!(first.as_deref(), Some("first"));
    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest += &l;
    }
    let _ = child.wait().await;
    let ended = json_line(&rest);
    println!("killed mid-stream: {ended}");
    assert_eq!(ended["outcome"], "broken", "{ended}");
    assert!(ended["chunks"].as_u64().unwrap_or(0) >= 1, "{ended}");
    let engine_status = |path: &str| {
        kubectl(
            &kc,
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=engine",
                "-o",
                &format!(
                    "jsonpath={{.items[0].status.containerStatuses[?(@.name==\"engine\")].{path}}}"
                ),
            ],
        )
        .1
    };
    wait_for(
        "the engine restarted",
        Duration::from_secs(20),
        async || (engine_status("restartCount") == "1").then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(engine_status("ready"), "false", "loading: not ready");
    assert_eq!(
        engine_status("started"),
        "false",
        "the startup probe still waits"
    );
    wait_for(
        "the engine ready again",
        Duration::from_secs(60),
        async || (engine_status("ready") == "true").then_some(()),
    )
    .await;
    let down = killed.elapsed();
    println!("engine back {:.1} s after the kill", down.as_secs_f64());
    assert!(down >= Duration::from_secs(8), "{down:?}");
    assert_eq!(
        engine_status("restartCount"),
        "1",
        "the startup probe did not kill it"
    );
    std::fs::remove_file(tools.path().join("slow")).expect("fast again");
    assert_eq!(
        fleet.serve_metric("lode_serve_mined_total").await,
        mined0,
        "nothing mined"
    );
    assert!(fleet.serve_metric("lode_serve_aborted_streams_total").await > aborted0);
    wait_for("relays served again", Duration::from_secs(30), async || {
        fleet.chat("back").await.ok()
    })
    .await;

    // Claims and proofs land on devnet; every mined relay is paid for.
    let mined = fleet.summary().await.mined;
    let settled = wait_for(
        "the mined relays settled",
        Duration::from_secs(150),
        async || {
            let s = fleet.devnet.settlements();
            (s.iter().map(|x| x.num_relays).sum::<u64>() >= mined && !s.is_empty()).then_some(s)
        },
    )
    .await;
    assert!(
        settled
            .iter()
            .any(|s| s.outcome == "settled: proof validated"),
        "a proof was required and validated: {settled:?}"
    );
    assert!(settled.iter().all(|s| s.reward > 0), "{settled:?}");

    // Other weights than the pinned ones: the new pod refuses to start its engine; the
    // condition and an Event say why; the pinned digest back, it serves again.
    let wrong = format!("blake3:{}", "00".repeat(32));
    let patch = |d: &str| {
        kubectl(
            &kc,
            &[
                "patch",
                "servicemodel",
                "llamacpp-tiny",
                "--type",
                "merge",
                "-p",
                &format!("{{\"spec\":{{\"model\":{{\"digest\":\"{d}\"}}}}}}"),
            ],
        )
    };
    let (ok, out) = patch(&wrong);
    assert!(ok, "{out}");
    let why = wait_for("the mismatch in the condition", Duration::from_secs(60), async || {
        let (_, c) = kubectl(
            &kc,
            &["get", "servicemodel", "llamacpp-tiny", "-o",
              "jsonpath={.status.conditions[?(@.type==\"WeightsVerified\")].reason}: {.status.conditions[?(@.type==\"WeightsVerified\")].message}"],
        );
        c.starts_with("DigestMismatch").then_some(c)
    })
    .await;
    assert!(
        why.contains(&digest) && why.contains(&wrong),
        "both digests named: {why}"
    );
    let (_, events) = kubectl(&kc, &["get", "events"]);
    assert!(events.contains("DigestMismatch"), "{events}");
    let (_, pods) = kubectl(
        &kc,
        &["get", "pods", "-l", "app.kubernetes.io/component=engine"],
    );
    assert!(
        pods.contains("Init:"),
        "the pod waits in its init step: {pods}"
    );
    let (_, no_digest) = kubectl(
        &kc,
        &[
            "get",
            "servicemodel",
            "llamacpp-tiny",
            "-o",
            "jsonpath={.status.modelDigest}",
        ],
    );
    assert_eq!(no_digest, "", "nothing verified is published");
    let (ok, out) = patch(&digest);
    assert!(ok, "{out}");
    wait_for(
        "serving again on the pinned weights",
        Duration::from_secs(90),
        async || fleet.chat("verified").await.ok(),
    )
    .await;
    // Three pods have started on the weight cache: the weights were fetched once.
    assert_eq!(
        fleet.hub.downloads.load(Ordering::Relaxed),
        1,
        "fetched once"
    );
    fleet.shutdown().await;
}
