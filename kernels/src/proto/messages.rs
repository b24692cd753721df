//! The relay protocol's messages (spec `poktroll.md` §2.1, §2.2, §6.1), encoded exactly as
//! gogoproto does: fields in ascending number order (declare them so), proto3 defaults
//! omitted, non-nullable sub-messages always written, unknown fields skipped.
//!
//! Strings must be UTF-8 on the wire; gogo does not check this, but every string here is
//! an address, an id or HTTP text, so invalid bytes are refused with an error instead of
//! being carried along.

use std::collections::BTreeMap;

use super::wire::{
    Message, WireType, bytes_len, key_len, message_len, opt_message_len, put_bytes, put_key,
    put_message, put_opt_message, put_varint, varint_len,
};

proto_message! {
    /// Identifies a session: who, which service, and when.
    SessionHeader = "SessionHeader" {
        1 application_address: string<String>,
        2 service_id: string<String>,
        3 session_id: string<String>,
        4 session_start_block_height: int64<i64>,
        5 session_end_block_height: int64<i64>,
    }
}

proto_message! {
    /// What the application (or its gateway) says about a request.
    RelayRequestMetadata = "RelayRequestMetadata" {
        1 session_header: optional<Option<SessionHeader>>,
        /// Serialized ring signature.
        2 signature: bytes<Vec<u8>>,
        3 supplier_operator_address: string<String>,
    }
}

proto_message! {
    /// A relay request as gateways send it.
    RelayRequest = "RelayRequest" {
        /// Non-nullable: always on the wire, even when empty.
        1 meta: message<RelayRequestMetadata>,
        /// For HTTP services a serialized [`PoktHttpRequest`].
        2 payload: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// What the supplier says about a response.
    RelayResponseMetadata = "RelayResponseMetadata" {
        1 session_header: optional<Option<SessionHeader>>,
        /// 64-byte `r ‖ s`.
        2 supplier_operator_signature: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// An error the relayminer reports instead of a backend response.
    RelayMinerError = "RelayMinerError" {
        1 codespace: string<String>,
        2 code: uint32<u32>,
        3 description: string<String>,
        4 message: string<String>,
    }
}

proto_message! {
    /// A relay response as suppliers send it. (The .proto declares `payload_hash` before
    /// `relay_miner_error`; the wire order is by number.)
    RelayResponse = "RelayResponse" {
        /// Non-nullable: always on the wire, even when empty.
        1 meta: message<RelayResponseMetadata>,
        /// For HTTP services a serialized [`PoktHttpResponse`]; cleared before mining.
        2 payload: bytes<Vec<u8>>,
        3 relay_miner_error: optional<Option<RelayMinerError>>,
        /// SHA-256 of `payload`; the signature covers it instead of the payload.
        4 payload_hash: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// A served relay: the SMST leaf value (with the response payload cleared).
    Relay = "Relay" {
        1 req: optional<Option<RelayRequest>>,
        2 res: optional<Option<RelayResponse>>,
    }
}

proto_message! {
    /// One HTTP header with all its values (shannon-sdk `Header`).
    Header = "Header" {
        1 key: string<String>,
        2 values: strings<Vec<String>>,
    }
}

proto_message! {
    /// The HTTP request carried in a relay request's payload (shannon-sdk
    /// `POKTHTTPRequest`).
    PoktHttpRequest = "POKTHTTPRequest" {
        1 method: string<String>,
        2 header: map<BTreeMap<String, Header>>,
        3 url: string<String>,
        4 body_bz: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// The HTTP response carried in a relay response's payload (shannon-sdk
    /// `POKTHTTPResponse`).
    PoktHttpResponse = "POKTHTTPResponse" {
        1 status_code: uint32<u32>,
        2 header: map<BTreeMap<String, Header>>,
        3 body_bz: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// `pocket.proof.MsgCreateClaim`: the 48-byte root of a session's trie.
    MsgCreateClaim = "MsgCreateClaim" {
        1 supplier_operator_address: string<String>,
        2 session_header: optional<Option<SessionHeader>>,
        3 root_hash: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// `pocket.proof.MsgSubmitProof`: the gob-encoded compact closest proof.
    MsgSubmitProof = "MsgSubmitProof" {
        1 supplier_operator_address: string<String>,
        2 session_header: optional<Option<SessionHeader>>,
        3 proof: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// A claim as the chain stores it (and hashes it for the proof requirement).
    Claim = "Claim" {
        1 supplier_operator_address: string<String>,
        2 session_header: optional<Option<SessionHeader>>,
        3 root_hash: bytes<Vec<u8>>,
        /// 0 pending validation, 1 validated, 2 invalid.
        4 proof_validation_status: int32<i32>,
    }
}

// Encodings of parts of messages that the protocol hashes, written straight from the
// borrowed message (relay payloads can be megabytes; cloning them just to clear a field
// would double the work).

impl RelayRequest {
    /// The encoding with `meta.signature` cleared: what the ring signature signs.
    pub fn encode_unsigned(&self) -> Vec<u8> {
        let meta_len = self.meta.encoded_len() - bytes_len(2, &self.meta.signature);
        let mut out = Vec::with_capacity(
            key_len(1) + varint_len(meta_len as u64) + meta_len + bytes_len(2, &self.payload),
        );
        put_key(&mut out, 1, WireType::Len);
        put_varint(&mut out, meta_len as u64);
        put_opt_message(&mut out, 1, &self.meta.session_header);
        put_bytes(&mut out, 3, self.meta.supplier_operator_address.as_bytes());
        put_bytes(&mut out, 2, &self.payload);
        out
    }
}

impl RelayResponse {
    fn encoded_len_without(&self, payload: bool, signature: bool) -> usize {
        let meta_len = self.meta.encoded_len()
            - if signature {
                0
            } else {
                bytes_len(2, &self.meta.supplier_operator_signature)
            };
        key_len(1)
            + varint_len(meta_len as u64)
            + meta_len
            + if payload {
                bytes_len(2, &self.payload)
            } else {
                0
            }
            + opt_message_len(3, &self.relay_miner_error)
            + bytes_len(4, &self.payload_hash)
    }

    fn encode_without(&self, out: &mut Vec<u8>, payload: bool, signature: bool) {
        let meta_len = self.meta.encoded_len()
            - if signature {
                0
            } else {
                bytes_len(2, &self.meta.supplier_operator_signature)
            };
        put_key(out, 1, WireType::Len);
        put_varint(out, meta_len as u64);
        put_opt_message(out, 1, &self.meta.session_header);
        if signature {
            put_bytes(out, 2, &self.meta.supplier_operator_signature);
        }
        if payload {
            put_bytes(out, 2, &self.payload);
        }
        put_opt_message(out, 3, &self.relay_miner_error);
        put_bytes(out, 4, &self.payload_hash);
    }

    /// The encoding the supplier signs: signature cleared, and the payload cleared when
    /// `payload_hash` stands for it.
    pub fn encode_signable(&self) -> Vec<u8> {
        let payload = self.payload_hash.is_empty();
        let mut out = Vec::with_capacity(self.encoded_len_without(payload, false));
        self.encode_without(&mut out, payload, false);
        out
    }
}

impl Relay {
    /// The encoding of `Relay{req, res}` with the response payload cleared — the bytes
    /// that are hashed and stored in the trie — without copying either message.
    pub fn encode_mined(req: &RelayRequest, res: &RelayResponse) -> Vec<u8> {
        let res_len = res.encoded_len_without(false, true);
        let mut out = Vec::with_capacity(
            message_len(1, req) + key_len(2) + varint_len(res_len as u64) + res_len,
        );
        put_message(&mut out, 1, req);
        put_key(&mut out, 2, WireType::Len);
        put_varint(&mut out, res_len as u64);
        res.encode_without(&mut out, false, true);
        out
    }
}
