//! SIGKILL during sustained ingest loses nothing acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lode_kernels::smst::SortedBuilder;
use lode_store_api::{AppendRelaysRequest, MinedRelay, SessionHeader, SessionKey};
use lode_testkit::{StoreProcess, relay};

const CLIENTS: u64 = 4;
const BATCHES_PER_CLIENT: u64 = 400;
const BATCH: u64 = 100;

fn header() -> SessionHeader {
    SessionHeader {
        application_address: "pokt1app".into(),
        service_id: "llm".into(),
        session_id: "crash".into(),
        session_start_block_height: 1,
        session_end_block_height: 10,
    }
}

fn batch(client: u64, b: u64) -> Vec<MinedRelay> {
    (0..BATCH).map(|i| relay(client, b * BATCH + i)).collect()
}

fn request(relays: Vec<MinedRelay>) -> AppendRelaysRequest {
    AppendRelaysRequest {
        supplier_operator_address: "pokt1sup".into(),
        session_header: Some(header()),
        relays,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    let mut store = StoreProcess::start(&data, &[]);
    let client = store.client().await;

    // Clients append until the store dies; each records how many batches were acked.
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = client.clone();
        let acked_total = acked_total.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            for b in 0..BATCHES_PER_CLIENT {
                match client.append_relays(request(batch(c, b))).await {
                    Ok(r) => {
                        assert_eq!(r.into_inner().accepted, BATCH);
                        acked += 1;
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Kill in the middle of sustained ingest.
    while acked_total.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.kill();
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.expect("client task"));
    }
    let acked_sum: u64 = acked.iter().sum();
    assert!(
        (300..CLIENTS * BATCHES_PER_CLIENT).contains(&acked_sum),
        "the kill happened mid-ingest ({acked_sum} batches acked)"
    );

    let store = StoreProcess::start(&data, &[]);
    let mut client = store.client().await;
    let key = SessionKey {
        supplier_operator_address: "pokt1sup".into(),
        session_id: "crash".into(),
    };
    let after = client
        .get_session(key.clone())
        .await
        .expect("session survived")
        .into_inner();
    assert!(
        after.leaves >= acked_sum * BATCH,
        "{} leaves < {} acknowledged relays",
        after.leaves,
        acked_sum * BATCH
    );

    // Every acknowledged relay is present: sending those batches again adds nothing.
    for (c, &n) in acked.iter().enumerate() {
        for b in 0..n {
            let r = client
                .append_relays(request(batch(c as u64, b)))
                .await
                .expect("resend")
                .into_inner();
            assert_eq!(
                (r.accepted, r.duplicates),
                (0, BATCH),
                "client {c} batch {b} was acknowledged but is missing"
            );
        }
    }
    // The batch each client had in flight, retried as serve would.
    for (c, &n) in acked.iter().enumerate() {
        if n < BATCHES_PER_CLIENT {
            client
                .append_relays(request(batch(c as u64, n)))
                .await
                .expect("retry in-flight batch");
        }
    }
    let frozen = client
        .freeze_session(key)
        .await
        .expect("freeze")
        .into_inner();

    // The root equals the root of exactly the acknowledged (and retried) relays.
    let mut all: Vec<MinedRelay> = Vec::new();
    for (c, &n) in acked.iter().enumerate() {
        let upto = (n + 1).min(BATCHES_PER_CLIENT);
        for b in 0..upto {
            all.extend(batch(c as u64, b));
        }
    }
    let mut leaves: Vec<([u8; 32], &MinedRelay)> = all
        .iter()
        .map(|r| (lode_kernels::smst::path_of(&r.relay_hash), r))
        .collect();
    leaves.sort_by_key(|l| l.0);
    let mut b = SortedBuilder::new();
    for (p, r) in &leaves {
        b.push(p, &r.relay_bytes, r.compute_units)
            .expect("distinct relays");
    }
    assert_eq!(frozen.root, b.finish().as_bytes().to_vec());
    assert_eq!(frozen.leaves, all.len() as u64);
    println!(
        "crash test: {acked_sum} batches ({} relays) acknowledged before SIGKILL, all present after restart; root matches",
        acked_sum * BATCH
    );
}
