//! Store benchmark: the real `relayminer store` process over loopback gRPC.
//!
//! Run: `cargo bench -p lode-relayminer --bench store --profile dev` (the dev profile
//! reuses the test build of RocksDB). Measures durable ingest (250-byte relays, batches of
//! 100, fsync on), the root and a cold closest proof of a 1M-leaf session, the store's
//! peak RSS, and 1,000 sessions × 1,000 leaves listed, frozen, deleted and compacted.
//! Baseline from the same machine class: Go smt holding 1M leaves in memory, 21–23 µs per
//! insert+commit (~22 s) and 2.9 GB.

use std::time::Instant;

use lode_kernels::smst::{self, SortedBuilder};
use lode_store_api::{
    AppendRelaysRequest, ListSessionsRequest, MinedRelay, ProveClosestRequest, SessionHeader,
    SessionKey,
};
use lode_testkit::{Client, StoreProcess, relay};

fn header(id: &str) -> SessionHeader {
    SessionHeader {
        application_address: "pokt1app".into(),
        service_id: "llm".into(),
        session_id: id.into(),
        session_start_block_height: 1,
        session_end_block_height: 10,
    }
}

fn key(id: &str) -> SessionKey {
    SessionKey {
        supplier_operator_address: "pokt1sup".into(),
        session_id: id.into(),
    }
}

/// Sends `batches` over `concurrency` streams; returns seconds taken.
async fn ingest(
    client: &Client,
    session: &str,
    batches: Vec<Vec<MinedRelay>>,
    concurrency: usize,
) -> f64 {
    let t = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut client, queue, session) = (client.clone(), queue.clone(), session.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some(relays) = next else { break };
                let req = AppendRelaysRequest {
                    supplier_operator_address: "pokt1sup".into(),
                    session_header: Some(header(&session)),
                    relays,
                };
                client.append_relays(req).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("ingest task");
    }
    t.elapsed().as_secs_f64()
}

/// Bytes per kind of file: SST tables, write-ahead logs, RocksDB's own info logs, other.
fn dir_breakdown(dir: &std::path::Path) -> String {
    let mut kinds = [("sst", 0u64), ("wal", 0), ("info log", 0), ("other", 0)];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        let i = if name.ends_with(".sst") {
            0
        } else if name.ends_with(".log") {
            1
        } else if name.starts_with("LOG") {
            2
        } else {
            3
        };
        kinds[i].1 += len;
    }
    kinds
        .iter()
        .map(|(k, b)| format!("{k} {:.1} MB", *b as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.lines()
        .filter(|l| l.starts_with("lode_store_commit") || l.starts_with("lode_store_relays"))
        .map(|l| format!("    {l}\n"))
        .collect()
}

fn drop_page_cache() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::var("LODE_BENCH_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");

    // Relays are built before the clock starts: the store's work is measured, not the
    // generator's.
    let relays: Vec<MinedRelay> = (0..n).map(|i| relay(1, i)).collect();
    let batches: Vec<Vec<MinedRelay>> = relays.chunks(100).map(<[MinedRelay]>::to_vec).collect();

    // LODE_BENCH_FSYNC=os measures the same without fsync, to see what durability costs.
    let fsync = std::env::var("LODE_BENCH_FSYNC").unwrap_or_else(|_| "always".into());
    let store = StoreProcess::start(&data, &["--fsync", &fsync]);
    let mut client = store.client().await;
    let (server_cpu, client_cpu) = (
        store.cpu_seconds(),
        lode_testkit::cpu_seconds("/proc/self/stat"),
    );
    let secs = ingest(&client, "big", batches, 32).await;
    let (server_cpu, client_cpu) = (
        store.cpu_seconds() - server_cpu,
        lode_testkit::cpu_seconds("/proc/self/stat") - client_cpu,
    );
    println!(
        "ingest with --fsync {fsync}: {n} relays of 250 B in batches of 100 over 32 streams: {secs:.2} s = {:.0} relays/s (target ≥ 100,000)",
        n as f64 / secs
    );
    if std::env::var_os("LODE_BENCH_VERBOSE").is_some() {
        println!(
            "  store metrics after ingest:\n{}",
            metrics(store.admin).await
        );
    }
    println!(
        "  CPU per relay: store {:.1} µs, load generator (same 2 cores) {:.1} µs",
        server_cpu * 1e6 / n as f64,
        client_cpu * 1e6 / n as f64
    );

    let t = Instant::now();
    let frozen = client
        .freeze_session(key("big"))
        .await
        .expect("freeze")
        .into_inner();
    println!(
        "root of the {n}-leaf session: {:.2} s (target ≤ 3 s; Go insert+commit of 1M: ~22 s)",
        t.elapsed().as_secs_f64()
    );
    let mut expected: Vec<([u8; 32], &MinedRelay)> = relays
        .iter()
        .map(|r| (smst::path_of(&r.relay_hash), r))
        .collect();
    expected.sort_by_key(|e| e.0);
    let mut b = SortedBuilder::new();
    for (p, r) in &expected {
        b.push(p, &r.relay_bytes, r.compute_units)
            .expect("distinct");
    }
    assert_eq!(
        frozen.root,
        b.finish().as_bytes().to_vec(),
        "the store's root is the kernels' root"
    );
    let rss_first = store.peak_rss();
    drop(client);
    drop(store);

    // Cold proof: a fresh process (empty block cache) and, where allowed, an empty page cache.
    let dropped = drop_page_cache();
    let store = StoreProcess::start(&data, &[]);
    let mut client = store.client().await;
    let path = smst::sha256(b"seed block hash || session id");
    let t = Instant::now();
    let proof = client
        .prove_closest(ProveClosestRequest {
            key: Some(key("big")),
            path: path.to_vec(),
            sibling_data: false,
        })
        .await
        .expect("prove")
        .into_inner();
    println!(
        "closest proof of the {n}-leaf session, cold (new process{}): {:.2} s (target ≤ 3 s), {} B",
        if dropped {
            ", page cache dropped"
        } else {
            ", page cache warm: dropping it was not permitted"
        },
        t.elapsed().as_secs_f64(),
        proof.proof.len()
    );
    assert_eq!(
        smst::verify_chain_proof(&proof.proof, &frozen.root),
        Ok(true)
    );
    let rss = rss_first.max(store.peak_rss());
    println!(
        "store peak RSS: {:.0} MB (target ≤ 256 MB; Go smt with 1M leaves: 2.9 GB)",
        rss as f64 / 1e6
    );
    client.delete_session(key("big")).await.expect("delete");

    if std::env::var_os("LODE_BENCH_SKIP_MANY").is_some() {
        println!("  metrics after the run:\n{}", metrics(store.admin).await);
        return;
    }

    // 1,000 sessions × 1,000 leaves.
    let sessions = 1000u64;
    let mut all = Vec::new();
    for s in 0..sessions {
        let rs: Vec<MinedRelay> = (0..1000).map(|i| relay(1000 + s, i)).collect();
        all.push((format!("s{s:04}"), rs));
    }
    let t = Instant::now();
    for chunk in all.chunks(50) {
        let mut tasks = Vec::new();
        for (id, rs) in chunk {
            let batches: Vec<Vec<MinedRelay>> =
                rs.chunks(100).map(<[MinedRelay]>::to_vec).collect();
            let (client, id) = (client.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                ingest(&client, &id, batches, 1).await
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
    println!(
        "1,000 sessions × 1,000 leaves ingested in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let before = dir_bytes(&data);
    let t = Instant::now();
    let listed = client
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1000);
    assert!(listed.iter().all(|s| s.leaves == 1000));
    println!("  list: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    for (id, _) in &all {
        client.freeze_session(key(id)).await.expect("freeze");
    }
    println!("  freeze all: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    for (id, _) in &all {
        assert_eq!(
            client
                .delete_session(key(id))
                .await
                .expect("delete")
                .into_inner()
                .leaves_deleted,
            1000
        );
    }
    println!(
        "  delete all (range deletes): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Space comes back when the background compaction of the deleted ranges has run.
    let t = Instant::now();
    let mut after = dir_bytes(&data);
    while after > before / 4 && t.elapsed().as_secs() < 120 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        after = dir_bytes(&data);
    }
    println!("  left after deletion: {}", dir_breakdown(&data));
    println!(
        "  space returned by background compaction within {:.1} s of the last delete",
        t.elapsed().as_secs_f64()
    );
    println!("  metrics after the run:\n{}", metrics(store.admin).await);
    assert!(
        client
            .list_sessions(ListSessionsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .sessions
            .is_empty()
    );
    println!(
        "  database directory: {:.1} MB with the sessions, {:.1} MB after deleting them",
        before as f64 / 1e6,
        after as f64 / 1e6
    );
}
