//! Every case of `ring/*.json` and `supplier_sig/*.json` (produced by ring-go, go-dleq,
//! decred secp256k1 and the Cosmos SDK signing code in Go).

mod common;

use common::{Checker, hex, load};
use lode_kernels::crypto::ring::{self, AppRing, BaseTables, RingSignature};
use lode_kernels::crypto::{PublicKey, SecretKey, supplier};
use serde_json::Value;

fn arr32(v: &Value) -> [u8; 32] {
    hex(v).try_into().expect("32 bytes")
}

fn arr33(v: &Value) -> [u8; 33] {
    hex(v).try_into().expect("33 bytes")
}

fn list<'a>(v: &'a Value, field: &str) -> &'a Vec<Value> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("`{field}` is a list"))
}

#[test]
fn ring_keys_and_placeholder() {
    let mut c = Checker::default();
    let keys = load("ring/keys.json");
    for k in list(&keys, "keys") {
        let sk = SecretKey::from_secret(k["secret"].as_str().expect("secret").as_bytes());
        let id = &k["id"];
        c.eq(
            || format!("key {id}: private"),
            sk.to_bytes().to_vec(),
            hex(&k["private_key_hex"]),
        );
        let pk = sk.public_key();
        c.eq(
            || format!("key {id}: public"),
            pk.to_compressed().to_vec(),
            hex(&k["public_key_hex"]),
        );
        let hp = ring::hash_to_curve(&pk.to_compressed())
            .map(|p| PublicKey::from_affine(p).to_compressed().to_vec());
        c.eq(
            || format!("key {id}: H_p"),
            hp.ok(),
            Some(hex(&k["hash_to_curve_hex"])),
        );
        c.eq(
            || format!("key {id}: bech32"),
            pk.address().to_bech32("pokt"),
            k["bech32_address"].as_str().expect("addr").to_string(),
        );
    }
    let p = load("ring/placeholder_key.json");
    let pk = ring::placeholder_key();
    let sk = SecretKey::from_secret(p["secret_ascii"].as_str().expect("secret").as_bytes());
    c.eq(
        || "placeholder private".into(),
        sk.to_bytes().to_vec(),
        hex(&p["private_key_hex"]),
    );
    c.eq(
        || "placeholder public".into(),
        pk.to_compressed().to_vec(),
        hex(&p["public_key_compressed_hex"]),
    );
    c.eq(
        || "placeholder address".into(),
        pk.address().0.to_vec(),
        hex(&p["address_bytes_hex"]),
    );
    c.eq(
        || "placeholder ring address".into(),
        ring::placeholder_address(),
        p["placeholder_ring_address_string"]
            .as_str()
            .expect("s")
            .to_string(),
    );
    c.eq(
        || "placeholder bech32".into(),
        pk.address().to_bech32("pokt"),
        p["bech32_pokt_address_informational"]
            .as_str()
            .expect("s")
            .to_string(),
    );
    let hp = ring::hash_to_curve(&pk.to_compressed())
        .map(|p| PublicKey::from_affine(p).to_compressed().to_vec());
    c.eq(
        || "placeholder H_p".into(),
        hp.ok(),
        Some(hex(&p["hash_to_curve_hex"])),
    );
    println!(
        "ring keys: {} keys + placeholder",
        list(&keys, "keys").len()
    );
    assert_eq!(list(&keys, "keys").len(), 65);
    c.finish("ring keys");
}

#[test]
fn ring_hash_functions() {
    let mut c = Checker::default();
    let h2c = load("ring/hash_to_curve.json");
    for (i, v) in list(&h2c, "vectors").iter().enumerate() {
        let got = ring::hash_to_curve(&arr33(&v["point_hex"]))
            .map(|p| PublicKey::from_affine(p).to_compressed().to_vec());
        c.eq(
            || format!("hash_to_curve[{i}] {}", v["source"]),
            got.ok(),
            Some(hex(&v["hp_hex"])),
        );
    }
    let h2s = load("ring/hash_to_scalar.json");
    let mut quirks = 0;
    for (i, v) in list(&h2s, "vectors").iter().enumerate() {
        let got = ring::hash_to_scalar(&hex(&v["input_hex"])).map(|s| s.to_bytes().to_vec());
        c.eq(
            || format!("hash_to_scalar[{i}] {}", v["kind"]),
            got.ok(),
            Some(hex(&v["scalar_hex"])),
        );
        quirks += v["quirk"].as_bool().expect("quirk") as usize;
    }
    let (n1, n2) = (list(&h2c, "vectors").len(), list(&h2s, "vectors").len());
    println!("ring hashes: {n1} hash-to-curve, {n2} hash-to-scalar ({quirks} quirk cases)");
    assert_eq!(
        (n1, n2),
        (
            h2c["count"].as_u64().expect("count") as usize,
            h2s["count"].as_u64().expect("count") as usize
        )
    );
    assert!(quirks > 0);
    c.finish("ring hashes");
}

#[test]
fn ring_signatures() {
    let mut c = Checker::default();
    let mut total = 0;
    let tables = BaseTables::new(64 << 20);
    for n in [2, 3, 5, 8] {
        let file = load(&format!("ring/ring_signatures_n{n}.json"));
        let vectors = list(&file, "vectors");
        let mut quirks = 0;
        for v in vectors {
            total += 1;
            let id = v["id"].as_str().expect("id");
            let msg = arr32(&v["message_hex"]);
            let sig_bytes = hex(&v["signature_hex"]);
            let ring_keys: Vec<PublicKey> = list(v, "public_keys_hex")
                .iter()
                .map(|k| PublicKey::from_sec1(&hex(k)).expect("valid key"))
                .collect();
            let signer =
                SecretKey::from_bytes(&hex(&v["signer_private_key_hex"])).expect("valid key");

            // Signing with the recorded nonces reproduces Go's bytes.
            let mut draws = list(v, "nonce_draws_hex").iter().map(arr32);
            let ours = ring::sign_with_nonces(&msg, &ring_keys, &signer, || {
                draws.next().expect("enough draws")
            });
            c.eq(
                || format!("{id}: signature bytes"),
                ours.map(|s| s.to_bytes()).ok(),
                Some(sig_bytes.clone()),
            );

            let sig = RingSignature::from_bytes(&sig_bytes).expect("vector signatures parse");
            c.eq(|| format!("{id}: c0"), sig.c0().to_vec(), hex(&v["c0_hex"]));
            c.eq(
                || format!("{id}: key image"),
                sig.key_image().to_vec(),
                hex(&v["key_image_hex"]),
            );
            let s: Vec<Vec<u8>> = sig.s_values().map(|s| s.to_vec()).collect();
            c.eq(
                || format!("{id}: s"),
                s,
                list(v, "s_hex").iter().map(hex).collect(),
            );
            let ch: Option<Vec<Vec<u8>>> = sig
                .challenges(&msg)
                .ok()
                .map(|v| v.iter().map(|c| c.to_vec()).collect());
            c.eq(
                || format!("{id}: challenge chain"),
                ch,
                Some(list(v, "challenges_hex").iter().map(hex).collect()),
            );
            c.eq(
                || format!("{id}: verify"),
                sig.verify(&msg),
                Ok(v["go_verify"].as_bool().expect("bool")),
            );
            let app_ring = AppRing::new(&ring_keys).expect("ring");
            c.eq(
                || format!("{id}: verify against the app ring"),
                app_ring.verify(&sig, &msg),
                Ok(true),
            );
            let mut wrong = msg;
            wrong[0] ^= 1;
            c.eq(
                || format!("{id}: wrong message"),
                sig.verify(&wrong),
                Ok(false),
            );
            // With tables for every member and the key image (what serve uses once a
            // ring is busy), parsing against the ring's known points.
            app_ring.accelerate(&tables);
            let fast = app_ring.parse(&sig_bytes).expect("vector signatures parse");
            c.eq(|| format!("{id}: parse with known points"), &fast, &sig);
            c.eq(
                || format!("{id}: verify with tables"),
                app_ring.verify(&fast, &msg),
                Ok(true),
            );
            c.eq(
                || format!("{id}: wrong message with tables"),
                app_ring.verify(&fast, &wrong),
                Ok(false),
            );
            quirks += v["quirk"].as_bool().expect("quirk") as usize;
        }
        println!(
            "ring n={n}: {} signatures ({quirks} hit the quirk)",
            vectors.len()
        );
        assert_eq!(
            vectors.len(),
            file["count"].as_u64().expect("count") as usize
        );
        assert_eq!(
            quirks,
            file["quirk_count"].as_u64().expect("quirk_count") as usize
        );
    }
    assert!(total > 0);
    c.finish("ring signatures");
}

#[test]
fn ring_tampered() {
    let mut c = Checker::default();
    let file = load("ring/ring_tampered.json");
    let vectors = list(&file, "vectors");
    let mut must_fail = 0;
    for v in vectors {
        let id = v["id"].as_str().expect("id");
        let msg = arr32(&v["message_hex"]);
        let parsed = RingSignature::from_bytes(&hex(&v["signature_hex"]));
        let go_parse = v["go_deserialize"].as_str().expect("go_deserialize");
        c.eq(
            || format!("{id} ({}): parses", v["tamper"]),
            parsed.is_ok(),
            go_parse == "ok",
        );
        let verdict = parsed.as_ref().ok().map(|s| s.verify(&msg));
        let accepted = matches!(verdict, Some(Ok(true)));
        match v["go_verify"].as_str().expect("go_verify") {
            "true" => c.ok(|| format!("{id}: Go accepts, we got {verdict:?}"), accepted),
            "false" => c.eq(|| format!("{id}: verify"), verdict, Some(Ok(false))),
            "panic" => c.ok(
                || format!("{id}: Go panics in Verify, we must error: {verdict:?}"),
                matches!(verdict, Some(Err(_))),
            ),
            "not_run" => c.ok(|| format!("{id}: not verified"), parsed.is_err()),
            other => panic!("unknown go_verify {other}"),
        }
        let fails = v["must_fail"].as_bool().expect("must_fail");
        c.eq(|| format!("{id}: must_fail"), !accepted, fails);
        must_fail += fails as usize;
    }
    println!(
        "ring tampered: {} cases, {must_fail} must fail",
        vectors.len()
    );
    assert_eq!(
        vectors.len(),
        file["count"].as_u64().expect("count") as usize
    );
    assert_eq!(
        must_fail,
        file["must_fail_count"].as_u64().expect("must_fail_count") as usize
    );
    c.finish("ring tampered");
}

#[test]
fn supplier_signatures() {
    let mut c = Checker::default();
    let file = load("supplier_sig/signatures.json");
    let vectors = list(&file, "vectors");
    for v in vectors {
        let id = v["id"].as_str().expect("id");
        let sk = SecretKey::from_secret(v["key_secret"].as_str().expect("secret").as_bytes());
        c.eq(
            || format!("{id}: private key"),
            sk.to_bytes().to_vec(),
            hex(&v["private_key_hex"]),
        );
        let pk = hex(&v["public_key_compressed_hex"]);
        c.eq(
            || format!("{id}: public key"),
            sk.public_key().to_compressed().to_vec(),
            pk.clone(),
        );
        let msg = hex(&v["message_hex"]);
        let sig = supplier::sign(&sk, &msg);
        c.eq(
            || format!("{id}: signature"),
            sig.to_vec(),
            hex(&v["signature_hex"]),
        );
        c.eq(
            || format!("{id}: verify"),
            supplier::verify(&pk, &msg, &sig),
            v["cosmos_verify"].as_bool().expect("bool"),
        );
    }
    let tampered = load("supplier_sig/tampered.json");
    let tv = list(&tampered, "vectors");
    let mut must_fail = 0;
    for v in tv {
        let id = v["id"].as_str().expect("id");
        let got = supplier::verify(
            &hex(&v["public_key_compressed_hex"]),
            &hex(&v["message_hex"]),
            &hex(&v["signature_hex"]),
        );
        c.eq(
            || format!("{id} ({}): verify", v["tamper"]),
            got,
            v["cosmos_verify"].as_bool().expect("bool"),
        );
        must_fail += v["must_fail"].as_bool().expect("must_fail") as usize;
        c.eq(
            || format!("{id}: must_fail"),
            !got,
            v["must_fail"].as_bool().expect("must_fail"),
        );
    }
    println!(
        "supplier signatures: {} signatures, {} tampered ({must_fail} must fail)",
        vectors.len(),
        tv.len()
    );
    assert_eq!(
        vectors.len(),
        file["count"].as_u64().expect("count") as usize
    );
    assert_eq!(
        (tv.len(), must_fail),
        (
            tampered["count"].as_u64().expect("n") as usize,
            tampered["must_fail_count"].as_u64().expect("n") as usize
        )
    );
    c.finish("supplier signatures");
}
