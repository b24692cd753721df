//! Relay-path benchmark: signatures and hashing, each as a ratio to a baseline measured
//! in the same run (one secp256k1 ECDSA verification; raw SHA-256 throughput).
//!
//! Run: `cargo bench -p lode-kernels --bench relay` (`-- prefix`: the prefix keys alone).

use std::hint::black_box;
use std::time::{Duration, Instant};

use lode_kernels::crypto::fixed::FixedBase;
use lode_kernels::crypto::ring::{self, AppRing, BaseTables, RingSignature};
use lode_kernels::crypto::{SecretKey, supplier};
use lode_kernels::proto::{
    Message, PoktHttpRequest, PoktHttpResponse, RelayRequest, RelayRequestMetadata, RelayResponse,
    SessionHeader,
};
use lode_kernels::relay;
use sha2::{Digest, Sha256};

/// Calls per round so that a round takes about 100 ms.
fn calls_per_round(f: &mut impl FnMut()) -> u64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(20) {
        f();
        n += 1;
    }
    (n * 5).max(1)
}

fn round(f: &mut impl FnMut(), calls: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / calls as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median ns per call over 7 rounds.
fn time(mut f: impl FnMut()) -> f64 {
    let calls = calls_per_round(&mut f);
    median((0..7).map(|_| round(&mut f, calls)).collect())
}

/// `f`'s median ns per call, and the median over 9 rounds of its time divided by the
/// baseline's time in the round right before. Interleaving keeps the ratio honest on a
/// machine whose speed drifts.
fn time_vs(mut baseline: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
    let (bc, fc) = (calls_per_round(&mut baseline), calls_per_round(&mut f));
    let (mut ts, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let b = round(&mut baseline, bc);
        let t = round(&mut f, fc);
        ts.push(t);
        ratios.push(t / b);
    }
    (median(ts), median(ratios))
}

fn main() {
    prefix_keys();
    if std::env::args().skip(1).any(|a| a == "prefix") {
        return;
    }
    let msg: [u8; 32] = Sha256::digest(b"relay").into();
    let signer = SecretKey::from_secret(b"app");
    let supplier_key = SecretKey::from_secret(b"supplier");
    let sig = supplier::sign(&supplier_key, &msg);
    let supplier_pub = supplier_key.public_key();

    let ecdsa_verify = || assert!(supplier::verify_key(black_box(&supplier_pub), &msg, &sig));
    let ecdsa = time(ecdsa_verify);
    let (supplier_sign, sign_ratio) = time_vs(ecdsa_verify, || {
        black_box(supplier::sign(&supplier_key, black_box(&msg)));
    });
    // serve's path: the nonce made ahead by an idle thread, the signature completed
    // with it (the nonce's own cost is measured apart).
    let mut rng = rand_core::OsRng;
    let (nonce_ns, _) = time_vs(ecdsa_verify, || {
        black_box(supplier::Nonce::random(&mut rng));
    });
    // As serve's idle thread makes them: 32 at a time.
    let (batch_ns, _) = time_vs(ecdsa_verify, || {
        black_box(supplier::Nonce::batch(&mut rng, 32));
    });
    let batched_ns = batch_ns / 32.0;
    // Nonces are single-use: each round signs with 2,000 made before it.
    let with_nonce = median(
        (0..7)
            .map(|_| {
                let nonces: Vec<supplier::Nonce> = (0..2000 / 32)
                    .flat_map(|_| supplier::Nonce::batch(&mut rng, 32))
                    .collect();
                let nonces_len = nonces.len();
                let t = Instant::now();
                for n in nonces {
                    black_box(supplier::sign_with_nonce(&supplier_key, black_box(&msg), n));
                }
                t.elapsed().as_secs_f64() * 1e9 / nonces_len as f64
            })
            .collect(),
    );
    println!("baseline: one secp256k1 ECDSA verification (Cosmos rules) = {ecdsa:.0} ns");
    println!(
        "supplier sign (RFC 6979, low-S):           {supplier_sign:>9.0} ns  ({sign_ratio:.2}× ECDSA verify)"
    );
    println!(
        "supplier sign, nonce made ahead:           {with_nonce:>9.0} ns  (making the nonce, by an idle thread: {nonce_ns:.0} ns alone, {batched_ns:.0} ns in a batch of 32)"
    );
    println!();
    println!(
        "ratios: median over 9 rounds of (operation / ECDSA verify measured in the round just before)"
    );
    let t = Instant::now();
    let table = FixedBase::new(&supplier_pub_point(&supplier_key));
    println!(
        "one point's table for accelerated verification: {:.2} ms to build, {} KiB",
        t.elapsed().as_secs_f64() * 1e3,
        table.memory_bytes() / 1024
    );
    println!(
        "{:<8} {:>14} {:>10} {:>18} {:>10} {:>16} {:>10} {:>12} {:>10} {:>16} {:>10} {:>14} {:>14}",
        "ring n",
        "verify ns",
        "× ECDSA",
        "verify cached ns",
        "× ECDSA",
        "verify tables ns",
        "× ECDSA",
        "sign ns",
        "× ECDSA",
        "sign prepared ns",
        "× ECDSA",
        "presign ns",
        "complete ns"
    );
    let mut rng = rand_core::OsRng;
    for n in [2usize, 3, 5, 8] {
        let mut keys = vec![signer.public_key()];
        keys.extend(
            (1..n).map(|i| SecretKey::from_secret(format!("gw-{i}").as_bytes()).public_key()),
        );
        let s = ring::sign(&msg, &keys, &signer, &mut rng).expect("member");
        let bytes = s.to_bytes();
        let app_ring = AppRing::new(&keys).expect("ring");
        // As a relayminer sees it: parse the bytes, then verify.
        let (verify, verify_ratio) = time_vs(ecdsa_verify, || {
            let s = RingSignature::from_bytes(black_box(&bytes)).expect("parses");
            assert_eq!(s.verify(&msg), Ok(true));
        });
        let (cached, cached_ratio) = time_vs(ecdsa_verify, || {
            let s = RingSignature::from_bytes(black_box(&bytes)).expect("parses");
            assert_eq!(app_ring.verify(&s, &msg), Ok(true));
        });
        // Accelerated, as serve verifies a ring in steady use: parse against the ring's
        // known points, verify with the tables of every point.
        let fast_ring = AppRing::new(&keys).expect("ring");
        for _ in 0..16 {
            assert_eq!(fast_ring.verify(&s, &msg), Ok(true));
        }
        assert!(fast_ring.wants_acceleration());
        fast_ring.accelerate(&BaseTables::new(64 << 20));
        assert!(fast_ring.is_accelerated() && !fast_ring.wants_acceleration());
        let (tables, tables_ratio) = time_vs(ecdsa_verify, || {
            let s = fast_ring.parse(black_box(&bytes)).expect("parses");
            assert_eq!(fast_ring.verify(&s, &msg), Ok(true));
        });
        let (sign, sign_ratio) = time_vs(ecdsa_verify, || {
            black_box(ring::sign(&msg, &keys, &signer, &mut rng).expect("member"));
        });
        // As a gateway signs: the ring's points and the key image prepared per session.
        let prepared = ring::RingSigner::new(&keys, &signer).expect("member");
        let (signp, signp_ratio) = time_vs(ecdsa_verify, || {
            black_box(prepared.sign(&msg, &mut rng).expect("signs"));
        });
        // A gateway's pool: the message-independent half made ahead, off the request
        // path; the request path only completes it (sign prepared − presign).
        let (presign, _) = time_vs(ecdsa_verify, || {
            black_box(prepared.presign(&mut rng));
        });
        let complete = signp - presign;
        println!(
            "{n:<8} {verify:>14.0} {verify_ratio:>9.2}× {cached:>18.0} {cached_ratio:>9.2}× {tables:>16.0} {tables_ratio:>9.2}× {sign:>12.0} {sign_ratio:>9.2}× {signp:>16.0} {signp_ratio:>9.2}× {presign:>14.0} {complete:>14.0}"
        );
    }
    println!("  (target for n = 2: verification ≤ 5× one ECDSA verification)");
    println!();

    let header = SessionHeader {
        application_address: "pokt1hd5k97zp0uvl3d2w7pmqkv665sdjpmyp0mwu42".into(),
        service_id: "llm".into(),
        session_id: "d2e02f9b191c8029161f5e223a2143cb4e22df0e1992f6016be74589b03bf755".into(),
        session_start_block_height: 11,
        session_end_block_height: 20,
    };
    println!(
        "{:<10} {:>18} {:>18} {:>10}",
        "body", "hash+check ns", "raw SHA-256 ns", "ratio"
    );
    for size in [1024usize, 64 * 1024] {
        let body = vec![b'x'; size];
        let req = RelayRequest {
            meta: RelayRequestMetadata {
                session_header: Some(header.clone()),
                signature: vec![7; 199],
                supplier_operator_address: "pokt1sup".into(),
            },
            payload: PoktHttpRequest {
                method: "POST".into(),
                url: "/v1/chat/completions".into(),
                body_bz: body.clone(),
                ..Default::default()
            }
            .encode(),
        };
        let mut res = RelayResponse {
            payload: PoktHttpResponse {
                status_code: 200,
                body_bz: body,
                ..Default::default()
            }
            .encode(),
            ..Default::default()
        };
        res.meta.session_header = Some(header.clone());
        relay::sign_response(&mut res, &supplier_key);
        let mined_len = relay::mined_relay_bytes(&req, &res).len();
        let pipeline = time(|| {
            black_box(relay::mine(black_box(&req), &res, &relay::BASE_TARGET, 1));
        });
        let raw_input = vec![0u8; mined_len];
        let raw = time(|| {
            black_box(Sha256::digest(black_box(&raw_input)));
        });
        println!(
            "{:<10} {pipeline:>18.0} {raw:>18.0} {:>9.2}×   ({mined_len} relay bytes)",
            format!("{} KiB", size / 1024),
            pipeline / raw
        );
    }
    println!(
        "  (hash+check: build the dehydrated relay, encode, SHA-256, compare with the target;"
    );
    println!("   raw: SHA-256 alone over the same number of bytes)");
}

/// The relay tier's per-relay routing cost: a request's BLAKE3 prefix keys, for 16 KiB
/// prompts of three shapes, against one BLAKE3 call over the same 16 KiB.
fn prefix_keys() {
    use lode_kernels::prefix::{KeyBudget, prefix_keys};
    let msg = |role: &str, text: &str| format!(r#"{{"role":"{role}","content":"{text}"}}"#);
    let words = |n: usize, seed: usize| -> String {
        (0..n)
            .map(|i| ["alpha ", "beta ", "gamma ", "delta "][(i * 7 + seed) % 4])
            .collect::<String>()
    };
    let one = format!(
        r#"{{"model":"m","messages":[{}]}}"#,
        msg("user", &words(2700, 0))
    );
    let mut turns = vec![msg("system", &words(680, 1))];
    for t in 0..12 {
        let role = if t % 2 == 0 { "user" } else { "assistant" };
        turns.push(msg(role, &words(170, t)));
    }
    let conversation = format!(r#"{{"model":"m","messages":[{}]}}"#, turns.join(","));
    let completion = format!(r#"{{"model":"m","prompt":"{}"}}"#, words(2730, 2));
    let raw = vec![7u8; 16 << 10];
    let baseline = || {
        black_box(blake3::hash(black_box(&raw)));
    };
    println!("prefix keys of a 16 KiB prompt, against one BLAKE3 call over 16 KiB:");
    println!(
        "{:<40} {:>8} {:>6} {:>10} {:>10}",
        "prompt", "bytes", "keys", "ns", "× BLAKE3"
    );
    for block_bytes in [4096usize, 8192] {
        let budget = KeyBudget {
            block_bytes,
            ..KeyBudget::default()
        };
        for (name, body) in [
            ("one message", &one),
            ("system 4 KiB + 12 turns of 1 KiB", &conversation),
            ("completions prompt", &completion),
        ] {
            let n = prefix_keys(body.as_bytes(), budget).expect("keyed").len();
            let (ns, ratio) = time_vs(baseline, || {
                black_box(prefix_keys(black_box(body.as_bytes()), budget).expect("keyed"));
            });
            println!(
                "{:<40} {:>8} {n:>6} {ns:>10.0} {ratio:>9.2}×",
                format!("{name}, blocks ≤ {} KiB", block_bytes / 1024),
                body.len()
            );
        }
    }
    println!("  (target: ≤ 5 µs for a 16 KiB prompt)");
    // The largest body keyed by default (512 KiB, 128 keys at 4 KiB and the message
    // boundaries): the cost grows with the prompt, not faster.
    let mut turns = vec![msg("system", &words(4000, 1))];
    for t in 0..300 {
        let role = if t % 2 == 0 { "user" } else { "assistant" };
        turns.push(msg(role, &words(250, t)));
    }
    let mut big = format!(r#"{{"model":"m","messages":[{}]}}"#, turns.join(","));
    while big.len() > KeyBudget::default().max_bytes {
        turns.pop();
        big = format!(r#"{{"model":"m","messages":[{}]}}"#, turns.join(","));
    }
    let raw_big = vec![7u8; big.len()];
    let n = prefix_keys(big.as_bytes(), KeyBudget::default())
        .expect("keyed")
        .len();
    let (ns, ratio) = time_vs(
        || {
            black_box(blake3::hash(black_box(&raw_big)));
        },
        || {
            black_box(prefix_keys(black_box(big.as_bytes()), KeyBudget::default()).expect("keyed"));
        },
    );
    println!(
        "the largest keyed body: {} bytes, {n} keys, {ns:.0} ns ({ratio:.2}× one BLAKE3 call over as many bytes)",
        big.len()
    );
    println!();
}

fn supplier_pub_point(key: &SecretKey) -> k256::AffinePoint {
    let enc = key.public_key().to_compressed();
    k256::PublicKey::from_sec1_bytes(&enc)
        .expect("valid key")
        .as_affine()
        .to_owned()
}
