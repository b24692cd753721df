//! Protobuf codecs, relay signing and hashing, mining and the streaming convention.

use std::collections::BTreeMap;

use lode_kernels::crypto::ring::{self, AppRing};
use lode_kernels::crypto::{PublicKey, SecretKey};
use lode_kernels::proto::{
    Claim, Header, Message, MsgCreateClaim, MsgSubmitProof, PoktHttpRequest, PoktHttpResponse,
    ProtoError, Relay, RelayMinerError, RelayRequest, RelayRequestMetadata, RelayResponse,
    RelayResponseMetadata, SessionHeader,
};
use lode_kernels::relay;
use proptest::prelude::*;

fn header() -> impl Strategy<Value = SessionHeader> {
    (
        "[a-z0-9]{0,12}",
        "[a-zA-Z0-9_-]{0,8}",
        "[0-9a-f]{0,16}",
        any::<i64>(),
        any::<i64>(),
    )
        .prop_map(|(a, s, id, start, end)| SessionHeader {
            application_address: a,
            service_id: s,
            session_id: id,
            session_start_block_height: start,
            session_end_block_height: end,
        })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn request() -> impl Strategy<Value = RelayRequest> {
    (
        prop::option::of(header()),
        bytes(80),
        "[a-z0-9]{0,10}",
        bytes(300),
    )
        .prop_map(|(h, sig, sup, payload)| RelayRequest {
            meta: RelayRequestMetadata {
                session_header: h,
                signature: sig,
                supplier_operator_address: sup,
            },
            payload,
        })
}

fn response() -> impl Strategy<Value = RelayResponse> {
    (
        prop::option::of(header()),
        bytes(64),
        bytes(300),
        prop::option::of(("[a-z_]{0,8}", any::<u32>(), ".{0,10}", ".{0,10}")),
        bytes(32),
    )
        .prop_map(|(h, sig, payload, err, ph)| RelayResponse {
            meta: RelayResponseMetadata {
                session_header: h,
                supplier_operator_signature: sig,
            },
            payload,
            relay_miner_error: err.map(|(codespace, code, description, message)| RelayMinerError {
                codespace,
                code,
                description,
                message,
            }),
            payload_hash: ph,
        })
}

fn headers() -> impl Strategy<Value = BTreeMap<String, Header>> {
    prop::collection::btree_map(
        "[A-Za-z-]{0,8}",
        prop::collection::vec(".{0,6}", 0..3),
        0..4,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, values)| (k.clone(), Header { key: k, values }))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(req in request(), res in response(), h in header(), hdrs in headers(), body in bytes(100), status in any::<u32>(), root in bytes(48), status_enum in any::<i32>()) {
        fn rt<M: Message + PartialEq + std::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
            let b = m.encode();
            prop_assert_eq!(b.len(), m.encoded_len());
            prop_assert_eq!(&M::decode(&b).expect("own encoding decodes"), m);
            Ok(())
        }
        rt(&req)?;
        rt(&res)?;
        rt(&h)?;
        rt(&Relay { req: Some(req.clone()), res: Some(res.clone()) })?;
        rt(&PoktHttpRequest { method: "POST".into(), header: hdrs.clone(), url: "http://x/v1/chat/completions".into(), body_bz: body.clone() })?;
        rt(&PoktHttpResponse { status_code: status, header: hdrs, body_bz: body })?;
        rt(&MsgCreateClaim { supplier_operator_address: "pokt1s".into(), session_header: Some(h.clone()), root_hash: root.clone() })?;
        rt(&MsgSubmitProof { supplier_operator_address: "pokt1s".into(), session_header: Some(h.clone()), proof: root.clone() })?;
        rt(&Claim { supplier_operator_address: "pokt1s".into(), session_header: Some(h), root_hash: root, proof_validation_status: status_enum })?;
    }

    #[test]
    fn unknown_fields_are_skipped(req in request(), extra_field in 6u32..1000, extra in bytes(20)) {
        let mut b = req.encode();
        // An unknown length-delimited field and an unknown varint field, appended.
        lode_kernels::proto::wire::put_bytes(&mut b, extra_field, &extra);
        lode_kernels::proto::wire::put_varint_field(&mut b, extra_field + 1, 42);
        prop_assert_eq!(RelayRequest::decode(&b).expect("decodes"), req);
    }

    #[test]
    fn hostile_bytes_never_panic(b in bytes(400)) {
        let _ = RelayRequest::decode(&b);
        let _ = RelayResponse::decode(&b);
        let _ = Relay::decode(&b);
        let _ = PoktHttpRequest::decode(&b);
        let _ = PoktHttpResponse::decode(&b);
        let _ = Claim::decode(&b);
        let _ = MsgSubmitProof::decode(&b);
        let _ = relay::decode_stream(&b);
    }

    #[test]
    fn streams_split_back_into_their_batches(payloads in prop::collection::vec(bytes(120), 1..6), poison in any::<bool>()) {
        let key = SecretKey::from_secret(b"supplier");
        let batches: Vec<RelayResponse> = payloads.into_iter().map(|mut p| {
            if poison {
                // The delimiter inside a payload must not split the batch.
                p.extend_from_slice(relay::STREAM_DELIMITER);
                p.extend_from_slice(b"tail");
            }
            let mut r = RelayResponse { payload: p, ..Default::default() };
            relay::sign_response(&mut r, &key);
            r
        }).collect();
        let wire = relay::encode_stream(&batches);
        prop_assert_eq!(&relay::decode_stream(&wire).expect("decodes"), &batches);
        // Fed in small pieces, the incremental decoder gives the same batches.
        let mut d = relay::StreamDecoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            got.extend(d.push(chunk).expect("a batch"));
        }
        got.extend(d.finish().expect("last batch"));
        prop_assert_eq!(&got, &batches);
        for b in &got {
            prop_assert!(relay::verify_response(b, &key.public_key()));
        }
    }
}

#[test]
fn encodings_follow_gogoproto_rules() {
    // Empty request: `meta` is still on the wire (tag 1, length 0).
    assert_eq!(RelayRequest::default().encode(), vec![0x0a, 0x00]);
    assert_eq!(RelayResponse::default().encode(), vec![0x0a, 0x00]);
    // Relay with empty req and res: both present because they are set.
    assert_eq!(
        Relay {
            req: Some(Default::default()),
            res: Some(Default::default())
        }
        .encode(),
        vec![0x0a, 0x02, 0x0a, 0x00, 0x12, 0x02, 0x0a, 0x00]
    );
    // Field order is by number: payload_hash (4) after relay_miner_error (3).
    let res = RelayResponse {
        payload_hash: vec![0xaa],
        relay_miner_error: Some(RelayMinerError {
            code: 7,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        res.encode(),
        vec![0x0a, 0x00, 0x1a, 0x02, 0x10, 0x07, 0x22, 0x01, 0xaa]
    );
    // Negative heights are ten-byte varints.
    let h = SessionHeader {
        session_start_block_height: -1,
        ..Default::default()
    };
    assert_eq!(h.encode(), [&[0x20][..], &[0xff; 9], &[0x01]].concat());
    // Map entries are sorted by key and carry both key and value even when empty.
    let mut hdr = BTreeMap::new();
    hdr.insert("b".to_string(), Header::default());
    hdr.insert(
        "a".to_string(),
        Header {
            key: "a".into(),
            values: vec![String::new()],
        },
    );
    let r = PoktHttpResponse {
        header: hdr,
        ..Default::default()
    };
    assert_eq!(
        r.encode(),
        vec![
            0x12, 0x0a, 0x0a, 0x01, b'a', 0x12, 0x05, 0x0a, 0x01, b'a', 0x12, 0x00, 0x12, 0x05,
            0x0a, 0x01, b'b', 0x12, 0x00
        ]
    );
}

#[test]
fn malformed_messages_get_errors() {
    assert_eq!(RelayRequest::decode(&[0x00]), Err(ProtoError::ZeroTag));
    assert!(matches!(
        RelayRequest::decode(&[0x08, 0x01]),
        Err(ProtoError::WrongWireType { .. })
    ));
    assert_eq!(
        RelayRequest::decode(&[0x12, 0x05, 0x01]),
        Err(ProtoError::UnexpectedEof)
    );
    assert!(matches!(
        SessionHeader::decode(&[0x0a, 0x01, 0xff]),
        Err(ProtoError::InvalidUtf8 { .. })
    ));
    assert_eq!(
        RelayRequest::decode(&[0x0f]),
        Err(ProtoError::BadWireType(7))
    );
    assert!(matches!(
        RelayRequest::decode_limited(&[0x12, 0x01, 0x00], 2),
        Err(ProtoError::TooLarge { .. })
    ));
    assert!(matches!(
        RelayRequest::decode(&[0x0c]),
        Err(ProtoError::WrongWireType { .. })
    ));
    assert_eq!(
        RelayRequest::decode(&[0x3c]),
        Err(ProtoError::UnexpectedEndOfGroup)
    );
    // Group nesting is bounded.
    assert_eq!(RelayRequest::decode(&[0x1b; 40]), Err(ProtoError::TooDeep));
}

#[test]
fn request_and_response_signatures() {
    let app = SecretKey::from_secret(b"app");
    let gateway = SecretKey::from_secret(b"gateway");
    let supplier = SecretKey::from_secret(b"supplier");
    let ring_keys = vec![app.public_key(), gateway.public_key()];
    let app_ring = AppRing::new(&ring_keys).expect("ring");
    let mut rng = rand_core::OsRng;

    let mut req = RelayRequest {
        meta: RelayRequestMetadata {
            session_header: Some(SessionHeader {
                application_address: "pokt1app".into(),
                service_id: "llm".into(),
                session_id: "s".into(),
                session_start_block_height: 1,
                session_end_block_height: 10,
            }),
            signature: Vec::new(),
            supplier_operator_address: "pokt1sup".into(),
        },
        payload: PoktHttpRequest {
            method: "POST".into(),
            url: "http://x/v1/chat/completions".into(),
            body_bz: b"{}".to_vec(),
            ..Default::default()
        }
        .encode(),
    };
    relay::sign_request(&mut req, &ring_keys, &gateway, &mut rng).expect("gateway is in the ring");
    assert_eq!(relay::verify_request(&req, &app_ring), Ok(true));
    // The signature covers the payload.
    let mut tampered = req.clone();
    tampered.payload.push(0);
    assert_eq!(relay::verify_request(&tampered, &app_ring), Ok(false));
    // A ring member unknown to the application is refused before verification.
    let other = AppRing::new(&[app.public_key(), ring::placeholder_key()]).expect("ring");
    assert!(relay::verify_request(&req, &other).is_err());

    let mut res = RelayResponse {
        meta: RelayResponseMetadata {
            session_header: req.meta.session_header.clone(),
            supplier_operator_signature: Vec::new(),
        },
        payload: PoktHttpResponse {
            status_code: 200,
            body_bz: b"{\"ok\":true}".to_vec(),
            ..Default::default()
        }
        .encode(),
        ..Default::default()
    };
    relay::sign_response(&mut res, &supplier);
    assert_eq!(res.payload_hash.len(), 32);
    assert!(relay::verify_response(&res, &supplier.public_key()));
    assert!(!relay::verify_response(&res, &app.public_key()));
    let mut bad = res.clone();
    bad.payload.push(1);
    assert!(
        !relay::verify_response(&bad, &supplier.public_key()),
        "payload no longer matches its hash"
    );
    // The signature does not cover the payload itself once payload_hash is set.
    assert_eq!(
        relay::response_signable_hash(&res),
        relay::response_signable_hash(&RelayResponse {
            payload: Vec::new(),
            ..res.clone()
        })
    );

    // Mining: the payload is cleared, its hash kept; every relay beats the base target.
    let mined =
        relay::mine(&req, &res, &relay::BASE_TARGET, 7).expect("base target mines everything");
    let decoded = Relay::decode(&mined.bytes).expect("relay bytes decode");
    assert!(decoded.res.as_ref().expect("res").payload.is_empty());
    // Inside a proof only the signature over the hash can be checked (the chain's view).
    let mined_res = decoded.res.as_ref().expect("res");
    assert!(relay::verify_mined_response(
        mined_res,
        &supplier.public_key()
    ));
    assert!(!relay::verify_mined_response(mined_res, &app.public_key()));
    assert!(
        !relay::verify_response(mined_res, &supplier.public_key()),
        "no payload to match its hash"
    );
    assert_eq!(
        decoded.res.as_ref().expect("res").payload_hash,
        res.payload_hash
    );
    assert_eq!(mined.hash, relay::relay_hash(&mined.bytes));
    assert_eq!(mined.compute_units, 7);
    assert!(
        relay::mine(&req, &res, &[0; 32], 7).is_none(),
        "nothing is below a zero target"
    );
    // Strict comparison: a hash equal to the target is not mined.
    assert!(!relay::is_mined(&mined.hash, &mined.hash));
}

#[test]
fn stream_payloads_join_into_the_full_response() {
    let parts: Vec<Vec<u8>> = ["data: a\n\n", "data: b\n\n", "data: [DONE]\n\n"]
        .iter()
        .enumerate()
        .map(|(i, body)| {
            PoktHttpResponse {
                status_code: if i == 0 { 200 } else { 0 },
                body_bz: body.as_bytes().to_vec(),
                ..Default::default()
            }
            .encode()
        })
        .collect();
    let full =
        relay::join_stream_payloads(parts.iter().map(Vec::as_slice)).expect("valid payloads");
    assert_eq!(full.status_code, 200);
    assert_eq!(full.body_bz, b"data: a\n\ndata: b\n\ndata: [DONE]\n\n");
}

#[test]
fn placeholder_rings_are_built_as_poktroll_does() {
    let p = ring::placeholder_address();
    assert_eq!(
        ring::ring_addresses("pokt1app", [], [], 10),
        vec![p.clone(), "pokt1app".to_string()]
    );
    let r = ring::ring_addresses(
        "pokt1app",
        ["pokt1gw2", "pokt1gw1"],
        [(10, "pokt1old"), (9, "pokt1gone"), (11, "pokt1gw1")],
        10,
    );
    assert_eq!(r, vec!["pokt1app", "pokt1gw1", "pokt1gw2", "pokt1old"]);
    let k: PublicKey = ring::placeholder_key();
    assert_eq!(k.address().to_upper_hex(), p);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The copy-free encodings equal encoding a modified copy.
    #[test]
    fn hashed_encodings_equal_encoding_a_modified_copy(req in request(), res in response()) {
        let mut unsigned = req.clone();
        unsigned.meta.signature.clear();
        prop_assert_eq!(req.encode_unsigned(), unsigned.encode());

        let mut signable = res.clone();
        signable.meta.supplier_operator_signature.clear();
        if !res.payload_hash.is_empty() {
            signable.payload.clear();
        }
        prop_assert_eq!(res.encode_signable(), signable.encode());

        let mined = Relay { req: Some(req.clone()), res: Some(RelayResponse { payload: Vec::new(), ..res.clone() }) };
        prop_assert_eq!(Relay::encode_mined(&req, &res), mined.encode());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Ring signatures from the network: arbitrary bytes and mutations of a valid
    /// signature parse or fail with an error, and never panic in parsing or verifying.
    #[test]
    fn hostile_ring_signatures_never_panic(noise in bytes(300), at in any::<prop::sample::Index>(), flip in 1u8.., cut in any::<prop::sample::Index>()) {
        let _ = ring::RingSignature::from_bytes(&noise).map(|s| s.verify(&[0; 32]));
        let key = SecretKey::from_secret(b"app");
        let ring_keys = [key.public_key(), ring::placeholder_key()];
        let mut draws = (0u8..).map(|i| [i + 1; 32]);
        let sig = ring::sign_with_nonces(&[9; 32], &ring_keys, &key, || draws.next().expect("endless")).expect("member").to_bytes();
        let mut bad = sig.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        if let Ok(s) = ring::RingSignature::from_bytes(&bad) {
            let _ = s.verify(&[9; 32]);
        }
        let _ = ring::RingSignature::from_bytes(&sig[..cut.index(sig.len())]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A signature completed from a presigned half (what the gateway's pool does) is the
    /// same signature the one-step path makes from the same nonces, and verifies.
    #[test]
    fn presigned_halves_complete_to_valid_signatures(n in 2usize..5, me in any::<prop::sample::Index>(), msg in any::<[u8; 32]>(), seed in any::<u8>()) {
        let keys: Vec<SecretKey> = (0..n).map(|i| SecretKey::from_secret(format!("member {i}").as_bytes())).collect();
        let ring_keys: Vec<_> = keys.iter().map(SecretKey::public_key).collect();
        let signer_key = &keys[me.index(n)];
        let signer = ring::RingSigner::new(&ring_keys, signer_key).expect("member");
        let draws = || (0u8..).map(move |i| [i.wrapping_add(seed) | 1; 32]);
        let mut a = draws();
        let mut b = draws();
        let one_step = signer.sign_with_nonces(&msg, || a.next().expect("endless")).expect("signs");
        let two_step = signer.sign_presigned(&msg, signer.presign_with_nonces(|| b.next().expect("endless"))).expect("signs");
        prop_assert_eq!(one_step.to_bytes(), two_step.to_bytes());
        let random = signer.sign_presigned(&msg, signer.presign(&mut rand_core::OsRng)).expect("signs");
        prop_assert!(random.verify(&msg).expect("verifies"));
        prop_assert!(!random.verify(&[msg[0] ^ 1; 32]).expect("verifies"), "bound to its message");
        // A half made for a ring of another size is refused, not misused.
        let other: Vec<_> = ring_keys.iter().cloned().chain([ring::placeholder_key()]).collect();
        let bigger = ring::RingSigner::new(&other, signer_key).expect("member");
        prop_assert!(signer.sign_presigned(&msg, bigger.presign(&mut rand_core::OsRng)).is_err());
    }
}
