//! SMST benchmark: the streaming and in-memory forms against the SHA-256 lower bound
//! measured in this process, and against the Go figures for smt v0.14.1 measured on this
//! machine class (spec `smst.md` §11).
//!
//! Run: `cargo bench -p lode-kernels --bench smst` (add `-- --quick` for 100k only).
//! Workload as in the Go measurement: keys = SHA-256 of an 8-byte index, 200-byte values,
//! weights 1–100, 1,000 random target paths, 7 rounds per proof operation (median, min).
//!
//! Heap is measured with a counting allocator, so "peak" means live heap bytes of the
//! measured phase, not RSS.

#![allow(unsafe_code)] // the counting global allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lode_kernels::smst::{
    self, MemTrie, Path, ProofOptions, SessionTrie, SortedBuilder, SparseCompactMerkleClosestProof,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes allocated at peak while `f` ran, above what was live when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn path(&mut self) -> Path {
        std::array::from_fn(|_| self.next() as u8)
    }
}

fn key(i: u64) -> [u8; 32] {
    smst::sha256(&i.to_be_bytes())
}

/// 200 distinct bytes for leaf `i`: a window of a random pool, stamped with the index.
fn value(i: u64, out: &mut [u8; 200]) {
    static POOL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        (0..1 << 16).map(|_| r.next() as u8).collect()
    });
    let at = (i as usize).wrapping_mul(2654435761) % (pool.len() - 200);
    out.copy_from_slice(&pool[at..at + 200]);
    out[..8].copy_from_slice(&i.to_be_bytes());
}

fn weight(i: u64) -> u64 {
    1 + i % 100
}

fn per(total: std::time::Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e9 / n as f64
}

/// Median and minimum ns/op over 7 rounds of `op` applied to every target.
fn rounds(targets: &[Path], mut op: impl FnMut(&Path)) -> (f64, f64) {
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            targets.iter().for_each(&mut op);
            per(t.elapsed(), targets.len())
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[3], v[0])
}

/// SHA-256 cost: ns per 64-byte compression (long message) and per 113-byte inner hash.
fn sha_baseline() -> (f64, f64) {
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for _ in 0..64 {
        black_box(smst::sha256(black_box(&buf)));
    }
    let block = per(t.elapsed(), 64 * (buf.len() / 64));
    let (a, b) = ([1u8; 48], [2u8; 48]);
    let n = 2_000_000;
    let t = Instant::now();
    let mut d = a;
    for _ in 0..n {
        d = smst::inner_digest(black_box(&d), &b);
    }
    black_box(d);
    (block, per(t.elapsed(), n))
}

/// Inner hashes the compact trie over these sorted paths needs: one per branching, plus
/// one per level that a subtree is lifted through (extension chains).
fn inner_hashes(sorted: &[Path]) -> usize {
    fn go(p: &[Path], top: usize) -> usize {
        if p.len() < 2 {
            return 0;
        }
        let split = (0..256)
            .find(|&i| smst::bit(&p[0], i) != smst::bit(&p[p.len() - 1], i))
            .expect("distinct");
        let mid = p.partition_point(|x| smst::bit(x, split) == 0);
        (split - top) + 1 + go(&p[..mid], split + 1) + go(&p[mid..], split + 1)
    }
    go(sorted, 0)
}

/// SHA-256 blocks to hash `len` bytes (with padding).
fn blocks(len: usize) -> usize {
    (len + 9).div_ceil(64)
}

fn bench_size(n: usize, block_ns: f64, go: &GoFigures) {
    println!("\n== N = {n} leaves ==");
    let mut v = [0u8; 200];

    // --- Streaming form --------------------------------------------------------------
    // Full pipeline as a relayminer without a store would run it: key → path, sort, stream.
    let t = Instant::now();
    let (root_full, heap_full) = peak_during(|| {
        let mut paths: Vec<(Path, u64)> =
            (0..n as u64).map(|i| (smst::path_of(&key(i)), i)).collect();
        paths.sort_unstable_by_key(|p| p.0);
        let mut b = SortedBuilder::new();
        for (p, i) in &paths {
            value(*i, &mut v);
            b.push(p, &v, weight(*i)).expect("sorted");
        }
        b.finish()
    });
    let full_ns = per(t.elapsed(), n);

    // What the store does at claim time: leaves already sorted by path on disk.
    let mut sorted: Vec<(Path, u64)> = (0..n as u64).map(|i| (smst::path_of(&key(i)), i)).collect();
    sorted.sort_unstable_by_key(|p| p.0);
    let t = Instant::now();
    let (root_stream, heap_stream) = peak_during(|| {
        let mut b = SortedBuilder::new();
        for (p, i) in &sorted {
            value(*i, &mut v);
            b.push(p, &v, weight(*i)).expect("sorted");
        }
        b.finish()
    });
    let stream_ns = per(t.elapsed(), n);
    // The value generator's cost, to subtract it out of the streaming figure.
    let t = Instant::now();
    for (_, i) in &sorted {
        value(*i, &mut v);
        black_box(&v);
    }
    let gen_ns = per(t.elapsed(), n);

    // Streaming closest proof: one more pass with a target.
    let target = Rng(42).path();
    let t = Instant::now();
    let ((_, _proof), heap_proof) = peak_during(|| {
        let mut b = SortedBuilder::with_target(&target, ProofOptions::default()).expect("32 bytes");
        for (p, i) in &sorted {
            value(*i, &mut v);
            b.push(p, &v, weight(*i)).expect("sorted");
        }
        b.finish_with_proof()
    });
    let stream_proof_ms = t.elapsed().as_secs_f64() * 1e3;

    // --- Hashing lower bound ------------------------------------------------------------
    let paths: Vec<Path> = sorted.iter().map(|s| s.0).collect();
    let inner = inner_hashes(&paths);
    let leaf_blocks = blocks(1 + 32 + 200 + 16);
    let per_leaf_blocks = (leaf_blocks * n + blocks(113) * inner) as f64 / n as f64;
    let bound_stream = per_leaf_blocks * block_ns;
    let bound_full = (per_leaf_blocks + blocks(32) as f64) * block_ns;

    // --- In-memory trie ------------------------------------------------------------------
    let t = Instant::now();
    let (mut trie, heap_mem) = peak_during(|| {
        let mut trie = MemTrie::new();
        for i in 0..n as u64 {
            value(i, &mut v);
            trie.update(&key(i), &v, weight(i));
        }
        black_box(trie.root());
        trie
    });
    let mem_ns = per(t.elapsed(), n);
    let root_mem = trie.root();
    assert_eq!(root_mem, root_full, "forms agree");
    assert_eq!(root_mem, root_stream, "forms agree");

    // --- Proof operations on the in-memory trie (digests cached, as after Go's Commit) ---
    let mut rng = Rng(7);
    let targets: Vec<Path> = (0..1000).map(|_| rng.path()).collect();
    let opts = ProofOptions::default();
    let (prove_med, prove_min) = rounds(&targets, |t| {
        black_box(trie.prove_closest(t, opts).expect("32 bytes"));
    });
    let proofs: Vec<_> = targets
        .iter()
        .map(|t| trie.prove_closest(t, opts).expect("32 bytes"))
        .collect();
    let mut k = 0;
    let (cg_med, cg_min) = rounds(&targets, |_| {
        let p = &proofs[k % proofs.len()];
        k += 1;
        black_box(smst::compact_closest_proof(p).expect("valid").to_gob());
    });
    let (all_med, all_min) = rounds(&targets, |t| {
        black_box(trie.prove_closest_for_chain(t, opts).expect("32 bytes"));
    });
    let gobs: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| trie.prove_closest_for_chain(t, opts).expect("ok"))
        .collect();
    let small: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| {
            trie.prove_closest_for_chain(t, ProofOptions::SMALL)
                .expect("ok")
        })
        .collect();
    let mut k = 0;
    let (ver_med, ver_min) = rounds(&targets, |_| {
        let g = &gobs[k % gobs.len()];
        k += 1;
        assert_eq!(
            smst::verify_chain_proof(black_box(g), &root_mem.0),
            Ok(true)
        );
    });
    let decompacted: Vec<_> = gobs
        .iter()
        .map(|g| {
            smst::decompact_closest_proof(
                &SparseCompactMerkleClosestProof::from_gob(g).expect("ok"),
            )
            .expect("ok")
        })
        .collect();
    let mut k = 0;
    let (vo_med, vo_min) = rounds(&targets, |_| {
        let p = &decompacted[k % decompacted.len()];
        k += 1;
        black_box(smst::verify_closest_proof(p, &root_mem.0).expect("ok"));
    });
    let avg = |g: &[Vec<u8>]| g.iter().map(Vec::len).sum::<usize>() as f64 / g.len() as f64;

    println!(
        "SHA-256 lower bound: {per_leaf_blocks:.2} blocks/leaf ({leaf_blocks} leaf + {:.2} inner; {inner} inner hashes incl. extension levels) × {block_ns:.1} ns/block",
        (blocks(113) * inner) as f64 / n as f64
    );
    println!();
    println!(
        "{:<52} {:>12} {:>14} {:>10}",
        "root computation", "ns/leaf", "vs Go (best)", "vs bound"
    );
    let go_best = go.insert_commit.0;
    let row = |name: &str, ns: f64, bound: f64| {
        println!(
            "{name:<52} {ns:>12.0} {:>13.1}x {:>9.2}x",
            go_best / ns,
            ns / bound
        );
    };
    row(
        "streaming, store path (sorted leaves in)",
        stream_ns - gen_ns,
        bound_stream,
    );
    row(
        "streaming, full (key→path, sort, stream)",
        full_ns - gen_ns,
        bound_full,
    );
    row("in-memory trie, insert + root", mem_ns - gen_ns, bound_full);
    println!(
        "  Go insert+commit: {:.0}–{:.0} ns/leaf; target for the streaming form ≤ 1/5 of it ({:.0} ns)",
        go.insert_commit.0,
        go.insert_commit.1,
        go.insert_commit.0 / 5.0
    );
    println!("  (value generation, {gen_ns:.0} ns/leaf, is subtracted from every row)");
    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>14}",
        "proof operation (in-memory trie)", "median ns", "min ns", "Go median"
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>14}",
        "closest proof", prove_med, prove_min, go.prove
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>14}",
        "compact + gob", cg_med, cg_min, go.compact
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>14}",
        "closest proof + compact + gob (target ≤ 10,000)", all_med, all_min, ""
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>14}",
        "gob decode + decompact + verify (target ≤ 12,000)", ver_med, ver_min, go.chain
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>14}",
        "verify only", vo_med, vo_min, go.verify
    );
    println!(
        "  average on-chain proof size: {:.0} B with SiblingData, {:.0} B without (Go: {} B)",
        avg(&gobs),
        avg(&small),
        go.size
    );
    println!("  streaming closest proof (one full pass): {stream_proof_ms:.1} ms");
    println!();
    println!("heap at peak (counting allocator)");
    println!(
        "  streaming root, builder only:          {:>12} B",
        heap_stream
    );
    println!(
        "  streaming closest proof, builder only: {:>12} B",
        heap_proof
    );
    println!(
        "  streaming full (incl. path list+sort): {:>12} B",
        heap_full
    );
    println!(
        "  in-memory trie:                        {:>12} B  (Go peak RSS {})",
        heap_mem, go.rss
    );
}

struct GoFigures {
    insert_commit: (f64, f64),
    prove: &'static str,
    compact: &'static str,
    chain: &'static str,
    verify: &'static str,
    size: usize,
    rss: &'static str,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (block_ns, inner_ns) = sha_baseline();
    println!(
        "SHA-256 (this process): {block_ns:.1} ns per 64-byte block, {inner_ns:.1} ns per 113-byte inner-node digest"
    );
    bench_size(
        100_000,
        block_ns,
        &GoFigures {
            insert_commit: (11_800.0, 15_500.0),
            prove: "4,800–10,300",
            compact: "16,300–22,500",
            chain: "35,600–58,800",
            verify: "15,100–23,800",
            size: 1589,
            rss: "≈310 MB",
        },
    );
    if !quick {
        bench_size(
            1_000_000,
            block_ns,
            &GoFigures {
                insert_commit: (21_200.0, 23_300.0),
                prove: "8,400–12,700",
                compact: "15,900–29,400",
                chain: "35,800–44,600",
                verify: "18,600–36,200",
                size: 1749,
                rss: "≈2.9 GB",
            },
        );
    }
}
