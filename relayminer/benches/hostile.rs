//! Hostile benchmark (issue 23): honest relays at half of serve's measured saturation,
//! first alone and then while a mix of the attacks of the hostile-traffic suite runs
//! against serve and the gateway, in one run on this 2-core machine (the attackers share
//! it).
//!
//! Run: `cargo bench -p lode-relayminer --bench hostile --profile dev`. Reports honest
//! relays served under attack (target ≥ 99 %), the honest p99 under attack against the
//! unattacked p99 of the same run (target ≤ 3×), peak resident memory of serve and the
//! gateway against the limits the operator gives their containers (2 GiB and 1 GiB),
//! and acknowledged relays lost (answered 200 but missing from the store; target 0).
//!
//! The attack mix, all at once: ring-signature bombs (19.5 MB relays listing 300,000
//! members, two senders back to back, each sending until answered); 40 connections each declaring a 19 MiB body,
//! sending 4 MiB and stalling (reconnecting when cut); 200 connections sending half
//! their headers (same); forged relays to an engine admin route; relays for made-up
//! sessions; and 20 stalled 19 MiB bodies against the gateway's API.
//! `HOSTILE_ONLY=bombs,bodies,headers,forged,madeup,gateway` (any of them) runs only
//! those, to see which attack costs the honest relays what.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lode_devnet::HRP;
use lode_kernels::proto::{Message, PoktHttpRequest};
use lode_testkit::free_addr;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"benchmark"}],"max_tokens":120}"#;
/// The memory limits the operator sets (operator/src/build: serve 2Gi, gateway 1Gi).
const SERVE_LIMIT_KB: u64 = 2 << 20;
const GATEWAY_LIMIT_KB: u64 = 1 << 20;
/// Seconds of honest load under attack: longer than the header (10 s) and body (30 s)
/// deadlines, so attackers are cut and come back while it runs. The unattacked phase is
/// as long, so that both p99s weigh the same rare events (a compaction, a session
/// rollover).
const ATTACKED_SECONDS: f64 = 35.0;
const CALM_SECONDS: f64 = ATTACKED_SECONDS;

/// What the attackers did.
#[derive(Default)]
struct Tally {
    bombs: AtomicU64,
    bodies_cut: AtomicU64,
    headers_cut: AtomicU64,
    forged: AtomicU64,
    made_up: AtomicU64,
    gateway_bodies_cut: AtomicU64,
}

/// The attackers' own runtime: one thread at the lowest priority (nice 19). On this
/// 2-core machine the attackers stand in for machines elsewhere, so they run on the CPU
/// that serve, the store, the engine and the honest clients leave; the attack counts
/// printed show the traffic that reached serve.
fn attacker_runtime() -> tokio::runtime::Runtime {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| {
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
            )
            .expect("the attackers' thread at nice 19");
        })
        .build()
        .expect("attackers' runtime")
}

/// Connects to `addr` again and again while `stop` is unset: sends `head`, then
/// `body_bytes` of body, and waits for the server to answer or close; counts each
/// connection the server ended.
async fn hold_open(
    addr: SocketAddr,
    head: &'static [u8],
    body_bytes: usize,
    stop: Arc<AtomicBool>,
    cut: fn(&Tally) -> &AtomicU64,
    tally: Arc<Tally>,
) {
    let chunk = vec![b'{'; 64 << 10];
    while !stop.load(Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if s.write_all(head).await.is_err() {
            continue;
        }
        let mut sent = 0;
        while sent < body_bytes {
            let n = chunk.len().min(body_bytes - sent);
            if s.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => {
                    if r.map(|n| n == 0).unwrap_or(true) {
                        cut(&tally).fetch_add(1, Relaxed);
                        break;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stop.load(Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

/// Posts `make()` to `uri` back to back while `stop` is unset, counting answers.
async fn flood(
    http: Http,
    uri: String,
    make: impl Fn() -> Bytes,
    pause: Duration,
    stop: Arc<AtomicBool>,
    count: impl Fn(),
) {
    while !stop.load(Relaxed) {
        let req = hyper::Request::post(&uri)
            .body(Full::new(make()))
            .expect("request");
        if let Ok(res) = http.request(req).await {
            let _ = res.into_body().collect().await;
            count();
        }
        tokio::time::sleep(pause).await;
    }
}

/// Sends `bomb` again and again while `stop` is unset, 64 KiB at a time, each until
/// serve answers or cuts the connection (sending the rest of a refused relay costs the
/// attacker's bandwidth and nothing of serve's); counts the answers.
async fn bombard(addr: SocketAddr, bomb: Bytes, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        bomb.len()
    );
    while !stop.load(Relaxed) {
        let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (mut r, mut w) = s.into_split();
        let send = async {
            w.write_all(head.as_bytes()).await?;
            for chunk in bomb.chunks(64 << 10) {
                w.write_all(chunk).await?;
            }
            std::future::pending::<std::io::Result<()>>().await
        };
        let mut answer = [0u8; 64];
        tokio::select! {
            _ = send => {}
            n = r.read(&mut answer) => {
                if matches!(n, Ok(n) if n > 0) {
                    tally.bombs.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// Waits until the store's leaf count has not moved for two seconds; returns it.
async fn settled_leaves(rig: &Rig) -> u64 {
    let mut last = rig.leaves().await;
    let mut still = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rig.leaves().await;
        if now != last {
            (last, still) = (now, Instant::now());
        } else if still.elapsed() > Duration::from_secs(2) {
            return now;
        }
    }
}

/// The p99 of each `per_second` latencies in turn (one second of the open loop).
fn timeline(latencies: &[f64], per_second: usize) -> String {
    let seconds: Vec<String> = latencies
        .chunks(per_second)
        .map(|c| format!("{:.0}", percentile(&mut c.to_vec(), 0.99)))
        .collect();
    seconds.join(" ")
}

fn summary(label: &str, latencies: &mut [f64]) -> (usize, f64) {
    let served = latencies.iter().filter(|ms| ms.is_finite()).count();
    let p50 = percentile(latencies, 0.5);
    let p99 = percentile(latencies, 0.99);
    println!(
        "{label}: {served} of {} served ({:.2} %), p50 {p50:.3} ms, p99 {p99:.3} ms",
        latencies.len(),
        100.0 * served as f64 / latencies.len() as f64
    );
    (served, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // serve with the product's defaults (20 MiB bodies, 256 MiB body budget, timeouts).
    let rig = Rig::start("").await;
    let http = rig.http.clone();
    let relay_addr = rig.relay_addr;

    // The gateway, as a process, for the application, in front of serve.
    let (gw_addr, gw_admin) = (free_addr(), free_addr());
    let gw_key = rig.dir.path().join("gateway.key");
    std::fs::write(&gw_key, lode_kernels::hex::encode(&rig.gateway.to_bytes())).expect("key");
    let gw_config = rig.dir.path().join("gateway.yaml");
    std::fs::write(
        &gw_config,
        format!(
            "listen: {gw_addr}\nadmin: {gw_admin}\nchain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
             signing_key_file: '{}'\napplications: [{{address: {}, api_keys: [sk-bench]}}]\n\
             models: {{sim-model: {SERVICE}}}\nrequests_per_second: 100000\n",
            rig.chain.grpc_url,
            rig.chain.rpc_url,
            gw_key.display(),
            rig.app.public_key().address().to_bech32(HRP),
        ),
    )
    .expect("config");
    let mut gateway = Command::new(lode_testkit::bin("lode-gateway"))
        .arg("--config")
        .arg(&gw_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the gateway");
    let to_gateway = move || {
        hyper::Request::post(format!("http://{gw_addr}/v1/chat/completions"))
            .header("authorization", "Bearer sk-bench")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .expect("request")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.request(to_gateway()).await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Saturation (warm pool of 2,000 relays), then the honest rate: half of it.
    let pool: Arc<Vec<Bytes>> = Arc::new((0..2000).map(|i| rig.sign(BODY, i)).collect());
    let to_serve: MakeRequest = {
        let pool = pool.clone();
        Arc::new(move |i| {
            hyper::Request::post(format!("http://{relay_addr}/"))
                .body(Full::new(pool[i % pool.len()].clone()))
                .expect("req")
        })
    };
    saturate(Duration::from_secs(1), 8, to_serve.clone(), &http).await;
    let secs = 3.0;
    let done = saturate(Duration::from_secs_f64(secs), 64, to_serve, &http).await;
    let rate = done as f64 / secs / 2.0;
    let (n_calm, n_attacked) = (
        (rate * CALM_SECONDS) as usize,
        (rate * ATTACKED_SECONDS) as usize,
    );
    println!(
        "saturation through serve: {:.0} relays/s; honest load: {rate:.0} relays/s, {n_calm} unattacked, {n_attacked} under attack",
        done as f64 / secs
    );
    // Distinct relays for the two phases, so each one served is one leaf in the store;
    // signed on both cores.
    let honest = |from: usize, n: usize| -> MakeRequest {
        let half = n / 2;
        let relays: Vec<Bytes> = std::thread::scope(|s| {
            let rig = &rig;
            let first = s.spawn(move || {
                (0..half)
                    .map(|i| rig.sign(BODY, from + i))
                    .collect::<Vec<Bytes>>()
            });
            let second: Vec<Bytes> = (half..n).map(|i| rig.sign(BODY, from + i)).collect();
            let mut all = first.join().expect("signer");
            all.extend(second);
            all
        });
        let relays = Arc::new(relays);
        Arc::new(move |i| {
            hyper::Request::post(format!("http://{relay_addr}/"))
                .body(Full::new(relays[i].clone()))
                .expect("req")
        })
    };
    let (quiet, attacked) = (honest(1_000_000, n_calm), honest(2_000_000, n_attacked));
    let gateway_served = Arc::new(AtomicU64::new(0));
    let before = settled_leaves(&rig).await;

    // Unattacked.
    let serve_cpu = || lode_testkit::cpu_seconds(&format!("/proc/{}/stat", rig.serve.id()));
    let (cpu_at, started) = (serve_cpu(), Instant::now());
    let mut calm = open_loop(n_calm, rate, Pacing::Steady, quiet, &http).await;
    let calm_cpu = (serve_cpu() - cpu_at) / started.elapsed().as_secs_f64();
    let calm_timeline = timeline(&calm, rate.round().max(1.0) as usize);
    let (calm_served, calm_p99) = summary("honest, unattacked", &mut calm);

    // Attacked: the mix starts, takes hold for a second, honest load runs through it.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut attackers = Vec::new();
    let attack = attacker_runtime();
    let attack_http = client();
    let bomb = {
        let mut r = rig.relay(BODY, 1);
        let app = rig.app.public_key().to_compressed();
        r.meta.signature = lode_testkit::ring_bomb(&r.meta.signature, &app, 300_000);
        Bytes::from(r.encode())
    };
    println!("ring bomb: {:.1} MB", bomb.len() as f64 / 1e6);
    let on = |a: &str| std::env::var("HOSTILE_ONLY").map_or(true, |v| v.split(',').any(|x| x == a));
    for _ in 0..if on("bombs") { 2 } else { 0 } {
        attackers.push(attack.spawn(bombard(
            relay_addr,
            bomb.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..if on("bodies") { 40 } else { 0 } {
        attackers.push(attack.spawn(hold_open(
            relay_addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 19922944\r\n\r\n",
            4 << 20,
            stop.clone(),
            |t| &t.bodies_cut,
            tally.clone(),
        )));
    }
    for _ in 0..if on("headers") { 200 } else { 0 } {
        attackers.push(attack.spawn(hold_open(
            relay_addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-",
            0,
            stop.clone(),
            |t| &t.headers_cut,
            tally.clone(),
        )));
    }
    if on("forged") {
        let mut admin = rig.relay(BODY, 2);
        admin.payload = PoktHttpRequest {
            method: "POST".into(),
            url: "/sleep?level=2".into(),
            ..Default::default()
        }
        .encode();
        let n = admin.meta.signature.len();
        admin.meta.signature[n - 40] ^= 1;
        let forged = Bytes::from(admin.encode());
        let t = tally.clone();
        attackers.push(attack.spawn(flood(
            attack_http.clone(),
            format!("http://{relay_addr}/"),
            move || forged.clone(),
            Duration::from_millis(2),
            stop.clone(),
            move || {
                t.forged.fetch_add(1, Relaxed);
            },
        )));
    }
    if on("madeup") {
        let template = rig.relay(BODY, 3);
        let counter = AtomicU64::new(0);
        let t = tally.clone();
        attackers.push(attack.spawn(flood(
            attack_http.clone(),
            format!("http://{relay_addr}/"),
            move || {
                let mut r = template.clone();
                let i = counter.fetch_add(1, Relaxed);
                if let Some(h) = r.meta.session_header.as_mut() {
                    h.session_id = format!("{:064x}", 0xbad_5e55_u64 + i);
                }
                Bytes::from(r.encode())
            },
            Duration::from_millis(2),
            stop.clone(),
            move || {
                t.made_up.fetch_add(1, Relaxed);
            },
        )));
    }
    for _ in 0..if on("gateway") { 20 } else { 0 } {
        attackers.push(attack.spawn(hold_open(
            gw_addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bench\r\nContent-Length: 19922944\r\n\r\n",
            4 << 20,
            stop.clone(),
            |t| &t.gateway_bodies_cut,
            tally.clone(),
        )));
    }
    // Honest requests through the gateway meanwhile, 20 a second.
    let (gw_ok, gw_sent) = (gateway_served.clone(), Arc::new(AtomicU64::new(0)));
    let gw_client = {
        let (http, stop, sent) = (http.clone(), stop.clone(), gw_sent.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                sent.fetch_add(1, Relaxed);
                if let Ok(r) = http.request(to_gateway()).await
                    && r.status() == 200
                    && r.into_body().collect().await.is_ok()
                {
                    gw_ok.fetch_add(1, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_at, started) = (serve_cpu(), Instant::now());
    let mut hostile = open_loop(n_attacked, rate, Pacing::Steady, attacked, &http).await;
    let hostile_cpu = (serve_cpu() - cpu_at) / started.elapsed().as_secs_f64();
    println!(
        "serve's CPU: {:.0} % of a core unattacked, {:.0} % under attack",
        100.0 * calm_cpu,
        100.0 * hostile_cpu
    );
    // Per second of each phase: where the slow relays are.
    println!("honest p99 per second, unattacked (ms): {calm_timeline}");
    println!(
        "honest p99 per second, under attack (ms): {}",
        timeline(&hostile, rate.round().max(1.0) as usize)
    );
    let (hostile_served, hostile_p99) = summary("honest, under attack", &mut hostile);
    stop.store(true, Relaxed);
    let _ = gw_client.await;
    for a in attackers {
        a.abort();
    }
    attack.shutdown_background();

    let serve_peak = peak_rss_kb(rig.serve.id());
    let gateway_peak = peak_rss_kb(gateway.id());
    println!(
        "attacks answered: {} ring bombs, {} forged admin-route relays, {} made-up sessions; connections cut: {} stalled bodies, {} half-sent headers (serve), {} stalled bodies (gateway)",
        tally.bombs.load(Relaxed),
        tally.forged.load(Relaxed),
        tally.made_up.load(Relaxed),
        tally.bodies_cut.load(Relaxed),
        tally.headers_cut.load(Relaxed),
        tally.gateway_bodies_cut.load(Relaxed),
    );
    println!(
        "gateway under attack: {} of {} honest requests served",
        gateway_served.load(Relaxed),
        gw_sent.load(Relaxed)
    );
    let share = hostile_served as f64 / n_attacked as f64;
    println!(
        "honest relays served under attack: {:.2} % (target ≥ 99 %)",
        100.0 * share
    );
    println!(
        "honest p99 under attack: {hostile_p99:.3} ms = {:.2}× the unattacked {calm_p99:.3} ms (target ≤ 3×)",
        hostile_p99 / calm_p99
    );
    println!(
        "peak RSS: serve {:.0} MB of its 2,048 MB limit, gateway {:.0} MB of its 1,024 MB limit",
        serve_peak as f64 / 1024.0,
        gateway_peak as f64 / 1024.0
    );
    assert!(serve_peak < SERVE_LIMIT_KB && gateway_peak < GATEWAY_LIMIT_KB);

    // Every relay answered 200 is in the store (the gateway's included).
    let after = settled_leaves(&rig).await;
    let acknowledged = (calm_served + hostile_served) as u64 + gateway_served.load(Relaxed);
    let stored = after - before;
    println!(
        "acknowledged relays lost: {} ({acknowledged} answered 200, {stored} new leaves in the store)",
        acknowledged.saturating_sub(stored)
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
    let mut serve = rig.serve;
    let _ = serve.kill();
    let _ = serve.wait();
}
