//! Every case of `session/*.json` and `gorand/*.json` (produced by poktroll's Go code and
//! Go's `math/rand`).

mod common;

use std::collections::HashMap;

use common::{Checker, hex, load};
use lode_kernels::gorand::{self, GoRand};
use lode_kernels::session::{self, SharedParams};
use serde_json::Value;

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("integer expected, got {v}"))
    })
}

fn u64_of(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("decimal u64 string expected, got {v}"))
}

fn float_bits(v: &Value) -> u64 {
    u64::from_str_radix(v["bits_hex"].as_str().expect("bits_hex"), 16).expect("hex")
}

fn count(file: &Value, list: &[Value]) {
    assert_eq!(
        list.len() as u64,
        file["count"].as_u64().expect("count"),
        "every vector visited"
    );
}

fn param_sets(file: &Value) -> HashMap<String, (SharedParams, &Value)> {
    file["param_sets"]
        .as_array()
        .expect("param_sets")
        .iter()
        .map(|p| {
            let params = SharedParams {
                num_blocks_per_session: int(&p["num_blocks_per_session"]),
                grace_period_end_offset_blocks: int(&p["grace_period_end_offset_blocks"]),
                claim_window_open_offset_blocks: int(&p["claim_window_open_offset_blocks"]),
                claim_window_close_offset_blocks: int(&p["claim_window_close_offset_blocks"]),
                proof_window_open_offset_blocks: int(&p["proof_window_open_offset_blocks"]),
                proof_window_close_offset_blocks: int(&p["proof_window_close_offset_blocks"]),
                session_grid_anchor_height: int(&p["session_grid_anchor_height"]),
                session_number_at_anchor: int(&p["session_number_at_anchor"]),
            };
            (p["name"].as_str().expect("name").to_string(), (params, p))
        })
        .collect()
}

#[test]
fn session_windows() {
    let mut c = Checker::default();
    let file = load("session/session_windows.json");
    let sets = param_sets(&file);
    for (name, (p, raw)) in &sets {
        c.eq(
            || format!("{name}: pending sessions"),
            p.num_pending_sessions(),
            int(&raw["num_pending_sessions"]),
        );
        c.eq(
            || format!("{name}: end to proof close"),
            p.session_end_to_proof_window_close_blocks(),
            int(&raw["session_end_to_proof_window_close_blocks"]),
        );
    }
    let rows = file["rows"].as_array().expect("rows");
    for r in rows {
        let (p, _) = &sets[r["param_set"].as_str().expect("param_set")];
        let h = int(&r["query_height"]);
        let w = p.windows(h);
        let what = format!("{} h={h}", r["param_set"]);
        let fields = [
            ("session_start_height", w.session_start_height),
            ("session_end_height", w.session_end_height),
            ("session_number", w.session_number),
            ("grace_period_end_height", w.grace_period_end_height),
            ("claim_window_open_height", w.claim_window_open_height),
            ("claim_window_close_height", w.claim_window_close_height),
            ("proof_window_open_height", w.proof_window_open_height),
            ("proof_window_close_height", w.proof_window_close_height),
            (
                "earliest_supplier_claim_commit_height",
                w.earliest_supplier_claim_commit_height,
            ),
            (
                "earliest_supplier_proof_commit_height",
                w.earliest_supplier_proof_commit_height,
            ),
            ("next_session_start_height", w.next_session_start_height),
            (
                "settlement_session_end_height",
                w.settlement_session_end_height,
            ),
        ];
        for (field, got) in fields {
            c.eq(|| format!("{what}: {field}"), got, int(&r[field]));
        }
        c.eq(
            || format!("{what}: is start"),
            p.is_session_start_height(h),
            r["is_session_start_height"].as_bool().expect("bool"),
        );
        c.eq(
            || format!("{what}: is end"),
            p.is_session_end_height(h),
            r["is_session_end_height"].as_bool().expect("bool"),
        );
    }
    println!(
        "session windows: {} param sets, {} rows",
        sets.len(),
        rows.len()
    );
    assert_eq!(
        rows.len() as u64,
        file["row_count"].as_u64().expect("row_count")
    );
    c.finish("session windows");
}

#[test]
fn session_ids_weights_and_proof_paths() {
    let mut c = Checker::default();
    let windows = load("session/session_windows.json");
    let sets = param_sets(&windows);
    let file = load("session/session_ids.json");
    let vectors = file["vectors"].as_array().expect("vectors");
    let mut weighted = 0;
    for (i, v) in vectors.iter().enumerate() {
        let (p, _) = &sets[v["param_set"].as_str().expect("param_set")];
        let start = p.session_start_height(int(&v["query_height"]));
        c.eq(
            || format!("session_ids[{i}]: start"),
            start,
            int(&v["session_start_height"]),
        );
        let (service, app) = (
            v["service_id"].as_str().expect("s"),
            v["application_address"].as_str().expect("s"),
        );
        let block_hash = hex(&v["block_hash_hex"]);
        let preimage = session::session_id_preimage(&block_hash, service, app, start);
        c.eq(
            || format!("session_ids[{i}]: preimage"),
            preimage.clone(),
            hex(&v["session_id_preimage_hex"]),
        );
        c.eq(
            || format!("session_ids[{i}]: id"),
            session::session_id(&block_hash, service, app, start),
            v["session_id"].as_str().expect("s").to_string(),
        );
        if let Some(ws) = v.get("supplier_weights").and_then(Value::as_array) {
            weighted += 1;
            for w in ws {
                let addr = w["operator_address"].as_str().expect("s");
                c.eq(
                    || format!("session_ids[{i}]: weight of {addr}"),
                    session::supplier_weight(&preimage, addr),
                    int(&w["weight_int64"]),
                );
            }
            let sorted = session::suppliers_by_weight(
                &preimage,
                ws.iter()
                    .map(|w| w["operator_address"].as_str().expect("s")),
            );
            let want: Vec<&str> = v["suppliers_sorted_by_weight"]
                .as_array()
                .expect("sorted")
                .iter()
                .map(|a| a.as_str().expect("s"))
                .collect();
            c.eq(
                || format!("session_ids[{i}]: selection order"),
                sorted,
                want,
            );
        }
    }
    count(&file, vectors);
    assert!(weighted > 0);

    let paths = load("session/proof_paths.json");
    let pv = paths["vectors"].as_array().expect("vectors");
    for (i, v) in pv.iter().enumerate() {
        let got = session::proof_path(
            &hex(&v["seed_block_hash_hex"]),
            v["session_id"].as_str().expect("s"),
        );
        c.eq(
            || format!("proof_paths[{i}]"),
            got.to_vec(),
            hex(&v["path_hex"]),
        );
    }
    count(&paths, pv);
    println!(
        "session ids: {} ids ({weighted} with supplier weights), {} proof paths",
        vectors.len(),
        pv.len()
    );
    c.finish("session ids and proof paths");
}

#[test]
fn go_math_rand() {
    let mut c = Checker::default();
    let cooked = load("gorand/rng_cooked.json");
    let values = cooked["values"].as_array().expect("values");
    // The table compiled into the crate is the file's, value for value.
    assert_eq!(values.len(), 607);
    for (i, v) in values.iter().enumerate() {
        c.eq(
            || format!("rngCooked[{i}]"),
            gorand::rng_cooked()[i],
            v.as_i64().expect("int64"),
        );
    }

    let file = load("gorand/math_rand_sources.json");
    let vectors = file["vectors"].as_array().expect("vectors");
    for v in vectors {
        let seed = int(&v["seed"]);
        let mut r = GoRand::new(seed);
        let int63: Vec<i64> = (0..10).map(|_| r.int63()).collect();
        c.eq(
            || format!("seed {seed}: int63"),
            int63,
            v["int63"]
                .as_array()
                .expect("int63")
                .iter()
                .map(int)
                .collect(),
        );
        let mut r = GoRand::new(seed);
        let f: Vec<u64> = (0..10).map(|_| r.float64().to_bits()).collect();
        c.eq(
            || format!("seed {seed}: float64"),
            f,
            v["float64"]
                .as_array()
                .expect("float64")
                .iter()
                .map(float_bits)
                .collect(),
        );
        let mut r = GoRand::new(seed);
        let u: Vec<u64> = (0..10).map(|_| r.uint64()).collect();
        c.eq(
            || format!("seed {seed}: uint64"),
            u,
            v["uint64"]
                .as_array()
                .expect("uint64")
                .iter()
                .map(u64_of)
                .collect(),
        );
    }
    count(&file, vectors);

    let seeded = load("gorand/seeded_float64.json");
    let sv = seeded["vectors"].as_array().expect("vectors");
    for (i, v) in sv.iter().enumerate() {
        let parts: Vec<Vec<u8>> = v["seed_parts_hex"]
            .as_array()
            .expect("parts")
            .iter()
            .map(hex)
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let what = format!("seeded_float64[{i}] {}", v["kind"]);
        let digest = hex(&v["sha256_hex"]);
        c.eq(
            || format!("{what}: varint"),
            gorand::go_varint(&digest),
            (int(&v["varint_seed"]), int(&v["varint_n"]) as i32),
        );
        c.eq(
            || format!("{what}: seed"),
            gorand::seed_of(&refs),
            int(&v["varint_seed"]),
        );
        c.eq(
            || format!("{what}: float64"),
            gorand::seeded_float64(&refs).to_bits(),
            float_bits(&v["seeded_float64"]),
        );
        c.eq(
            || format!("{what}: int63"),
            gorand::seeded_int63(&refs),
            int(&v["seeded_int63"]),
        );
    }
    count(&seeded, sv);
    println!(
        "go math/rand: {} seeds × 30 outputs, {} seeded values",
        vectors.len(),
        sv.len()
    );
    c.finish("go math/rand");
}
