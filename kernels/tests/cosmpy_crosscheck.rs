//! lode's Cosmos transactions against an independent implementation: the `cosmpy`
//! package (PyPI; `scripts/setup.sh` installs it) builds and signs the same transaction
//! and must produce identical bytes, and verifies lode's signature itself.

use std::io::Write;
use std::process::{Command, Stdio};

use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::cosmos::{self, Any, Coin, TxParams};
use lode_kernels::proto::{Message, MsgCreateClaim, MsgSubmitProof, SessionHeader};
use serde_json::{Value, json};

fn cosmpy(spec: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cosmpy_crosscheck.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("write spec");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "the cosmpy cross-check failed (is cosmpy installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

#[test]
fn transactions_match_cosmpy_byte_for_byte() {
    let key = SecretKey::from_secret(b"supplier operator");
    let header = SessionHeader {
        application_address: "pokt1hd5k97zp0uvl3d2w7pmqkv665sdjpmyp0mwu42".into(),
        service_id: "llm".into(),
        session_id: "d2e02f9b191c8029161f5e223a2143cb4e22df0e1992f6016be74589b03bf755".into(),
        session_start_block_height: 11,
        session_end_block_height: 20,
    };
    let supplier = key.public_key().address().to_bech32("pokt");
    let claim = MsgCreateClaim {
        supplier_operator_address: supplier.clone(),
        session_header: Some(header.clone()),
        root_hash: vec![0xab; 48],
    };
    let proof = MsgSubmitProof {
        supplier_operator_address: supplier,
        session_header: Some(header),
        proof: vec![1, 2, 3],
    };
    let cases = [
        (
            vec![Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &claim)],
            "",
            0u64,
            7u64,
            200_000u64,
        ),
        (
            vec![
                Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &claim),
                Any::pack(cosmos::MSG_SUBMIT_PROOF_TYPE_URL, &proof),
            ],
            "lode claim batch",
            12_345,
            0,
            1,
        ),
    ];
    for (i, (messages, memo, timeout_height, sequence, gas_limit)) in cases.into_iter().enumerate()
    {
        let params = TxParams {
            chain_id: "pocket".into(),
            account_number: 42,
            sequence,
            fee: vec![Coin {
                denom: "upokt".into(),
                amount: "2000".into(),
            }],
            gas_limit,
            memo: memo.into(),
            timeout_height,
        };
        let tx = cosmos::sign_tx(messages.clone(), &params, &key);
        let tx_bytes = tx.encode();
        assert!(cosmos::verify_tx(&tx, &key.public_key(), "pocket", 42));
        assert!(
            !cosmos::verify_tx(&tx, &key.public_key(), "pocket-beta", 42),
            "the chain id is signed"
        );
        assert!(
            !cosmos::verify_tx(&tx, &key.public_key(), "pocket", 43),
            "the account number is signed"
        );
        let spec = json!({
            "private_key_hex": hex::encode(key.to_bytes()),
            "chain_id": params.chain_id,
            "account_number": params.account_number,
            "sequence": sequence,
            "gas_limit": gas_limit,
            "memo": memo,
            "timeout_height": timeout_height,
            "fee": [["upokt", "2000"]],
            "messages": messages.iter().map(|m| json!([m.type_url, hex::encode(&m.value)])).collect::<Vec<_>>(),
            "lode_tx_hex": hex::encode(&tx_bytes),
        });
        let got = cosmpy(&spec);
        assert_eq!(
            got["cosmpy_tx_hex"].as_str(),
            Some(hex::encode(&tx_bytes).as_str()),
            "case {i}: bytes differ from cosmpy"
        );
        assert_eq!(got["equal"], json!(true));
        assert_eq!(
            got["lode_signature_verifies"],
            json!(true),
            "case {i}: cosmpy rejects lode's signature"
        );
        assert_eq!(got["decoded_memo"], json!(memo));
        assert_eq!(got["decoded_timeout_height"].as_u64(), Some(timeout_height));
        assert_eq!(
            got["decoded_type_urls"].as_array().map(Vec::len),
            Some(messages.len())
        );
        // Our decoder reads back what we wrote.
        assert_eq!(cosmos::TxRaw::decode(&tx_bytes).expect("decodes"), tx);
    }
    println!(
        "cosmpy cross-check: 2 transactions identical byte for byte, signatures verified by cosmpy"
    );
}
