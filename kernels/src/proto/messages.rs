//! The relay protocol's messages (spec `poktroll.md` §2.1, §2.2, §6.1), encoded exactly as
//! gogoproto does.
//!
//! Strings must be UTF-8 on the wire; gogo does not check this, but every string here is
//! an address, an id or HTTP text, so invalid bytes are refused with an error instead of
//! being carried along.

use std::collections::BTreeMap;

use super::wire::{
    Message, ProtoError, Reader, WireType, always_bytes_len, bytes_len, expect, key_len,
    merge_message, message_len, opt_message_len, put_always_bytes, put_bytes, put_key, put_message,
    put_opt_message, put_varint, put_varint_field, read_string, varint_field_len, varint_len,
};

use WireType::{Len, Varint};

/// Identifies a session: who, which service, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionHeader {
    pub application_address: String,
    pub service_id: String,
    pub session_id: String,
    pub session_start_block_height: i64,
    pub session_end_block_height: i64,
}

impl Message for SessionHeader {
    const NAME: &'static str = "SessionHeader";

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.application_address.as_bytes())
            + bytes_len(2, self.service_id.as_bytes())
            + bytes_len(3, self.session_id.as_bytes())
            + varint_field_len(4, self.session_start_block_height as u64)
            + varint_field_len(5, self.session_end_block_height as u64)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, self.application_address.as_bytes());
        put_bytes(out, 2, self.service_id.as_bytes());
        put_bytes(out, 3, self.session_id.as_bytes());
        put_varint_field(out, 4, self.session_start_block_height as u64);
        put_varint_field(out, 5, self.session_end_block_height as u64);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                self.application_address = read_string(n, 1, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.service_id = read_string(n, 2, r)?;
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.session_id = read_string(n, 3, r)?;
            }
            4 => {
                expect(n, 4, wt, Varint)?;
                self.session_start_block_height = r.varint()? as i64;
            }
            5 => {
                expect(n, 5, wt, Varint)?;
                self.session_end_block_height = r.varint()? as i64;
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// What the application (or its gateway) says about a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayRequestMetadata {
    pub session_header: Option<SessionHeader>,
    /// Serialized ring signature.
    pub signature: Vec<u8>,
    pub supplier_operator_address: String,
}

impl Message for RelayRequestMetadata {
    const NAME: &'static str = "RelayRequestMetadata";

    fn encoded_len(&self) -> usize {
        opt_message_len(1, &self.session_header)
            + bytes_len(2, &self.signature)
            + bytes_len(3, self.supplier_operator_address.as_bytes())
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_opt_message(out, 1, &self.session_header);
        put_bytes(out, 2, &self.signature);
        put_bytes(out, 3, self.supplier_operator_address.as_bytes());
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                merge_message(self.session_header.get_or_insert_with(Default::default), r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.signature = r.bytes()?.to_vec();
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.supplier_operator_address = read_string(n, 3, r)?;
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// A relay request as gateways send it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayRequest {
    /// Non-nullable: always on the wire, even when empty.
    pub meta: RelayRequestMetadata,
    /// For HTTP services a serialized [`PoktHttpRequest`].
    pub payload: Vec<u8>,
}

impl Message for RelayRequest {
    const NAME: &'static str = "RelayRequest";

    fn encoded_len(&self) -> usize {
        message_len(1, &self.meta) + bytes_len(2, &self.payload)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_message(out, 1, &self.meta);
        put_bytes(out, 2, &self.payload);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                merge_message(&mut self.meta, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.payload = r.bytes()?.to_vec();
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// What the supplier says about a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayResponseMetadata {
    pub session_header: Option<SessionHeader>,
    /// 64-byte `r ‖ s`.
    pub supplier_operator_signature: Vec<u8>,
}

impl Message for RelayResponseMetadata {
    const NAME: &'static str = "RelayResponseMetadata";

    fn encoded_len(&self) -> usize {
        opt_message_len(1, &self.session_header) + bytes_len(2, &self.supplier_operator_signature)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_opt_message(out, 1, &self.session_header);
        put_bytes(out, 2, &self.supplier_operator_signature);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                merge_message(self.session_header.get_or_insert_with(Default::default), r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.supplier_operator_signature = r.bytes()?.to_vec();
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// An error the relayminer reports instead of a backend response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayMinerError {
    pub codespace: String,
    pub code: u32,
    pub description: String,
    pub message: String,
}

impl Message for RelayMinerError {
    const NAME: &'static str = "RelayMinerError";

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.codespace.as_bytes())
            + varint_field_len(2, self.code as u64)
            + bytes_len(3, self.description.as_bytes())
            + bytes_len(4, self.message.as_bytes())
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, self.codespace.as_bytes());
        put_varint_field(out, 2, self.code as u64);
        put_bytes(out, 3, self.description.as_bytes());
        put_bytes(out, 4, self.message.as_bytes());
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                self.codespace = read_string(n, 1, r)?;
            }
            // gogo truncates wider varints into the uint32 silently.
            2 => {
                expect(n, 2, wt, Varint)?;
                self.code = r.varint()? as u32;
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.description = read_string(n, 3, r)?;
            }
            4 => {
                expect(n, 4, wt, Len)?;
                self.message = read_string(n, 4, r)?;
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// A relay response as suppliers send it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayResponse {
    /// Non-nullable: always on the wire, even when empty.
    pub meta: RelayResponseMetadata,
    /// For HTTP services a serialized [`PoktHttpResponse`]; cleared before mining.
    pub payload: Vec<u8>,
    pub relay_miner_error: Option<RelayMinerError>,
    /// SHA-256 of `payload`; the signature covers it instead of the payload.
    pub payload_hash: Vec<u8>,
}

impl Message for RelayResponse {
    const NAME: &'static str = "RelayResponse";

    fn encoded_len(&self) -> usize {
        message_len(1, &self.meta)
            + bytes_len(2, &self.payload)
            + opt_message_len(3, &self.relay_miner_error)
            + bytes_len(4, &self.payload_hash)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        // Ascending field numbers, although the .proto declares 4 before 3.
        put_message(out, 1, &self.meta);
        put_bytes(out, 2, &self.payload);
        put_opt_message(out, 3, &self.relay_miner_error);
        put_bytes(out, 4, &self.payload_hash);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                merge_message(&mut self.meta, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.payload = r.bytes()?.to_vec();
            }
            3 => {
                expect(n, 3, wt, Len)?;
                merge_message(
                    self.relay_miner_error.get_or_insert_with(Default::default),
                    r,
                )?;
            }
            4 => {
                expect(n, 4, wt, Len)?;
                self.payload_hash = r.bytes()?.to_vec();
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// A served relay: the SMST leaf value (with the response payload cleared).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relay {
    pub req: Option<RelayRequest>,
    pub res: Option<RelayResponse>,
}

impl Message for Relay {
    const NAME: &'static str = "Relay";

    fn encoded_len(&self) -> usize {
        opt_message_len(1, &self.req) + opt_message_len(2, &self.res)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_opt_message(out, 1, &self.req);
        put_opt_message(out, 2, &self.res);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                merge_message(self.req.get_or_insert_with(Default::default), r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                merge_message(self.res.get_or_insert_with(Default::default), r)?;
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// One HTTP header with all its values (shannon-sdk `Header`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub values: Vec<String>,
}

impl Message for Header {
    const NAME: &'static str = "Header";

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.key.as_bytes())
            + self
                .values
                .iter()
                .map(|v| always_bytes_len(2, v.as_bytes()))
                .sum::<usize>()
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, self.key.as_bytes());
        self.values
            .iter()
            .for_each(|v| put_always_bytes(out, 2, v.as_bytes()));
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                self.key = read_string(n, 1, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                self.values.push(read_string(n, 2, r)?);
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// `map<string, Header>` as Go's deterministic marshaling writes it: entries sorted by
/// key, and each entry's key and value always present.
type HeaderMap = BTreeMap<String, Header>;

fn entry_body_len(key: &str, value: &Header) -> usize {
    always_bytes_len(1, key.as_bytes()) + message_len(2, value)
}

fn header_map_len(field: u32, m: &HeaderMap) -> usize {
    m.iter()
        .map(|(k, v)| {
            let n = entry_body_len(k, v);
            key_len(field) + varint_len(n as u64) + n
        })
        .sum()
}

fn put_header_map(out: &mut Vec<u8>, field: u32, m: &HeaderMap) {
    for (k, v) in m {
        put_key(out, field, Len);
        put_varint(out, entry_body_len(k, v) as u64);
        put_always_bytes(out, 1, k.as_bytes());
        put_message(out, 2, v);
    }
}

/// Reads one map entry; a missing key or value is the default, a repeated key wins.
fn merge_header_entry(
    message: &'static str,
    field: u32,
    m: &mut HeaderMap,
    r: &mut Reader<'_>,
) -> Result<(), ProtoError> {
    let mut entry = r.sub()?;
    let (mut key, mut value) = (String::new(), Header::default());
    while entry.remaining() > 0 {
        let (f, wt) = entry.read_key()?;
        match f {
            1 => {
                expect(message, field, wt, Len)?;
                key = read_string(message, field, &mut entry)?;
            }
            2 => {
                expect(message, field, wt, Len)?;
                merge_message(&mut value, &mut entry)?;
            }
            _ => entry.skip(wt)?,
        }
    }
    m.insert(key, value);
    Ok(())
}

/// The HTTP request carried in a relay request's payload (shannon-sdk `POKTHTTPRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoktHttpRequest {
    pub method: String,
    pub header: HeaderMap,
    pub url: String,
    pub body_bz: Vec<u8>,
}

impl Message for PoktHttpRequest {
    const NAME: &'static str = "POKTHTTPRequest";

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.method.as_bytes())
            + header_map_len(2, &self.header)
            + bytes_len(3, self.url.as_bytes())
            + bytes_len(4, &self.body_bz)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, self.method.as_bytes());
        put_header_map(out, 2, &self.header);
        put_bytes(out, 3, self.url.as_bytes());
        put_bytes(out, 4, &self.body_bz);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                self.method = read_string(n, 1, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                merge_header_entry(n, 2, &mut self.header, r)?;
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.url = read_string(n, 3, r)?;
            }
            4 => {
                expect(n, 4, wt, Len)?;
                self.body_bz = r.bytes()?.to_vec();
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// The HTTP response carried in a relay response's payload (shannon-sdk
/// `POKTHTTPResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoktHttpResponse {
    pub status_code: u32,
    pub header: HeaderMap,
    pub body_bz: Vec<u8>,
}

impl Message for PoktHttpResponse {
    const NAME: &'static str = "POKTHTTPResponse";

    fn encoded_len(&self) -> usize {
        varint_field_len(1, self.status_code as u64)
            + header_map_len(2, &self.header)
            + bytes_len(3, &self.body_bz)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_varint_field(out, 1, self.status_code as u64);
        put_header_map(out, 2, &self.header);
        put_bytes(out, 3, &self.body_bz);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Varint)?;
                self.status_code = r.varint()? as u32;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                merge_header_entry(n, 2, &mut self.header, r)?;
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.body_bz = r.bytes()?.to_vec();
            }
            _ => r.skip(wt)?,
        }
        Ok(())
    }
}

/// Shared body of the three supplier/session/bytes messages of the proof module.
macro_rules! supplier_header_bytes_message {
    ($(#[$doc:meta])* $name:ident, $proto:literal, $bytes:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            pub supplier_operator_address: String,
            pub session_header: Option<SessionHeader>,
            pub $bytes: Vec<u8>,
        }

        impl Message for $name {
            const NAME: &'static str = $proto;

            fn encoded_len(&self) -> usize {
                bytes_len(1, self.supplier_operator_address.as_bytes())
                    + opt_message_len(2, &self.session_header)
                    + bytes_len(3, &self.$bytes)
            }

            fn encode_to(&self, out: &mut Vec<u8>) {
                put_bytes(out, 1, self.supplier_operator_address.as_bytes());
                put_opt_message(out, 2, &self.session_header);
                put_bytes(out, 3, &self.$bytes);
            }

            fn merge_field(&mut self, field: u32, wt: WireType, r: &mut Reader<'_>) -> Result<(), ProtoError> {
                let n = Self::NAME;
                match field {
                    1 => {
                expect(n, 1, wt, Len)?;
                self.supplier_operator_address = read_string(n, 1, r)?;
            }
                    2 => {
                expect(n, 2, wt, Len)?;
                merge_message(self.session_header.get_or_insert_with(Default::default), r)?;
            }
                    3 => {
                expect(n, 3, wt, Len)?;
                self.$bytes = r.bytes()?.to_vec();
            }
                    _ => r.skip(wt)?,
                }
                Ok(())
            }
        }
    };
}

supplier_header_bytes_message!(
    /// `pocket.proof.MsgCreateClaim`: the 48-byte root of a session's trie.
    MsgCreateClaim,
    "MsgCreateClaim",
    root_hash
);
supplier_header_bytes_message!(
    /// `pocket.proof.MsgSubmitProof`: the gob-encoded compact closest proof.
    MsgSubmitProof,
    "MsgSubmitProof",
    proof
);

/// A claim as the chain stores it (and hashes it for the proof requirement).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub supplier_operator_address: String,
    pub session_header: Option<SessionHeader>,
    pub root_hash: Vec<u8>,
    /// 0 pending validation, 1 validated, 2 invalid.
    pub proof_validation_status: i32,
}

impl Message for Claim {
    const NAME: &'static str = "Claim";

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.supplier_operator_address.as_bytes())
            + opt_message_len(2, &self.session_header)
            + bytes_len(3, &self.root_hash)
            + varint_field_len(4, self.proof_validation_status as i64 as u64)
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, self.supplier_operator_address.as_bytes());
        put_opt_message(out, 2, &self.session_header);
        put_bytes(out, 3, &self.root_hash);
        // Negative enum values are sign-extended to ten bytes, as in Go.
        put_varint_field(out, 4, self.proof_validation_status as i64 as u64);
    }

    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        let n = Self::NAME;
        match field {
            1 => {
                expect(n, 1, wt, Len)?;
                self.supplier_operator_address = read_string(n, 1, r)?;
            }
            2 => {
                expect(n, 2, wt, Len)?;
                merge_message(self.session_header.get_or_insert_with(Default::default), r)?;
            }
            3 => {
                expect(n, 3, wt, Len)?;
                self.root_hash = r.bytes()?.to_vec();
            }
            4 => {
                expect(n, 4, wt, Varint)?;
                self.proof_validation_status = r.varint()? as i32;
            }
            _ => r.skip(wt)?,
        }
        Ok(())
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
        put_key(&mut out, 1, Len);
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
        put_key(out, 1, Len);
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
        put_key(&mut out, 2, Len);
        put_varint(&mut out, res_len as u64);
        res.encode_without(&mut out, false, true);
        out
    }
}
