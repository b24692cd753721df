//! Weights digest benchmark (issue 24): `relayminer digest`'s BLAKE3 of a weight set
//! against reading the same files, in one run.
//!
//! Run: `cargo bench -p lode-relayminer --bench digest --profile dev` (`DIGEST_MIB`, default 2048: the
//! size of the weight set, written as four shards and a config beside the build). Cold:
//! each pass starts with the files' pages dropped from the page cache, so both read the
//! disk, as a pod digesting a freshly fetched or mounted weight set does; the target is a
//! digest bound by that read, not the hash, with every core in use. Warm: both from the
//! page cache, the fastest a read gets (memory bandwidth against the hash).

#![allow(unsafe_code)] // posix_fadvise, to drop the weight files from the page cache

use std::io::Read;
use std::time::Instant;

use lode_relayminer::weights;

fn main() {
    let mib: usize = std::env::var("DIGEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let shard = (mib << 20) / 4;
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    for s in 0..4 {
        let path = dir
            .path()
            .join(format!("model-{s:05}-of-00004.safetensors"));
        let mut f = std::fs::File::create(&path).expect("create");
        for _ in 0..shard >> 20 {
            std::io::Write::write_all(&mut f, &block).expect("write");
        }
    }
    std::fs::write(dir.path().join("config.json"), b"{\"architectures\":[]}").expect("config");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("weight set: {mib} MiB in 4 shards and a config; {cores} cores");

    let read_all = || {
        let mut buf = vec![0u8; 8 << 20];
        let mut total = 0usize;
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let mut f = std::fs::File::open(entry.expect("entry").path()).expect("open");
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                total += n;
            }
        }
        total
    };
    // Cold: every file's pages dropped from the page cache first (they are clean, so
    // `POSIX_FADV_DONTNEED` frees them), so both passes read the disk.
    let evict = || {
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let f = std::fs::File::open(entry.expect("entry").path()).expect("open");
            f.sync_all().expect("sync");
            // SAFETY: a valid descriptor, the whole file, and advice that only drops
            // clean cached pages.
            let rc = unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            assert_eq!(rc, 0, "posix_fadvise");
        }
    };
    let gb = (mib << 20) as f64 / 1e9;
    let mut cold = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        evict();
        let t = Instant::now();
        read_all();
        cold.0 = cold.0.min(t.elapsed().as_secs_f64());
        evict();
        let t = Instant::now();
        weights::digest_dir(dir.path()).expect("digest");
        cold.1 = cold.1.min(t.elapsed().as_secs_f64());
    }
    println!(
        "cold (from the disk): read {:.2} GB/s, digest {:.2} GB/s: digest / read time {:.2}× (target ≤ 1.1: bound by the read)",
        gb / cold.0,
        gb / cold.1,
        cold.1 / cold.0
    );
    read_all();
    let mut best = (f64::MAX, f64::MAX);
    let mut digest = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let bytes = read_all();
        best.0 = best.0.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let m = weights::digest_dir(dir.path()).expect("digest");
        best.1 = best.1.min(t.elapsed().as_secs_f64());
        assert_eq!(m.total_bytes() as usize, bytes);
        digest = weights::hex(&m.digest());
    }
    println!(
        "warm: read (page cache, one thread, 8 MiB reads): {:.2} GB/s ({:.3} s)",
        gb / best.0,
        best.0
    );
    println!(
        "warm: digest (BLAKE3, memory-mapped, {cores} cores): {:.2} GB/s ({:.3} s), model blake3:{digest}",
        gb / best.1,
        best.1
    );
    println!(
        "warm: digest / read time {:.2}× (memory bandwidth against the hash on these cores)",
        best.1 / best.0
    );
}
