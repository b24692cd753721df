//! Relays: what is signed, what is hashed, and what is mined (spec `poktroll.md` §2.4,
//! §2.5, §3, and the streaming convention of §8.2).

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::crypto::ring::{self, AppRing, RingError};
use crate::crypto::{PublicKey, SecretKey, supplier};
use crate::proto::{Message, PoktHttpResponse, ProtoError, Relay, RelayRequest, RelayResponse};

/// The 32 bytes the application's ring signature signs:
/// SHA-256 of the request encoded with `meta.signature` cleared.
pub fn request_signable_hash(req: &RelayRequest) -> [u8; 32] {
    Sha256::digest(req.encode_unsigned()).into()
}

/// Ring-signs a request in place with an application or gateway key.
pub fn sign_request(
    req: &mut RelayRequest,
    ring: &[PublicKey],
    key: &SecretKey,
    rng: &mut impl CryptoRngCore,
) -> Result<(), RingError> {
    let sig = ring::sign(&request_signable_hash(req), ring, key, rng)?;
    req.meta.signature = sig.to_bytes();
    Ok(())
}

/// Ring-signs a request in place with a prepared signer (what a gateway keeps per
/// session: the same signature as [`sign_request`], without redoing the ring's setup).
pub fn sign_request_with(
    req: &mut RelayRequest,
    signer: &ring::RingSigner,
    rng: &mut impl CryptoRngCore,
) -> Result<(), RingError> {
    let sig = signer.sign(&request_signable_hash(req), rng)?;
    req.meta.signature = sig.to_bytes();
    Ok(())
}

/// Ring-signs a request in place from a presigned half (see [`ring::RingSigner::presign`]).
pub fn sign_request_presigned(
    req: &mut RelayRequest,
    signer: &ring::RingSigner,
    presigned: ring::Presigned,
) -> Result<(), RingError> {
    let sig = signer.sign_presigned(&request_signable_hash(req), presigned)?;
    req.meta.signature = sig.to_bytes();
    Ok(())
}

/// Verifies a request's ring signature against the application's expected ring.
pub fn verify_request(req: &RelayRequest, ring: &AppRing) -> Result<bool, RingError> {
    let sig = ring.parse(&req.meta.signature)?;
    ring.verify(&sig, &request_signable_hash(req))
}

/// SHA-256 of a response payload, as carried in `payload_hash`.
pub fn payload_hash(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// The 32 bytes the supplier signs: SHA-256 of the response encoded with the signature
/// cleared and — when `payload_hash` is set — the payload cleared too.
pub fn response_signable_hash(res: &RelayResponse) -> [u8; 32] {
    Sha256::digest(res.encode_signable()).into()
}

/// Sets `payload_hash` and the supplier signature of a response.
pub fn sign_response(res: &mut RelayResponse, key: &SecretKey) {
    res.payload_hash = payload_hash(&res.payload).to_vec();
    res.meta.supplier_operator_signature =
        supplier::sign(key, &response_signable_hash(res)).to_vec();
}

/// Verifies a response's supplier signature, and that `payload_hash` (when present)
/// matches the payload.
pub fn verify_response(res: &RelayResponse, supplier_key: &PublicKey) -> bool {
    if !res.payload_hash.is_empty() && res.payload_hash != payload_hash(&res.payload) {
        return false;
    }
    supplier::verify_key(
        supplier_key,
        &response_signable_hash(res),
        &res.meta.supplier_operator_signature,
    )
}

/// Verifies the supplier signature of a response inside a mined relay, whose payload was
/// cleared and only its hash kept: what the chain checks when it validates a proof.
pub fn verify_mined_response(res: &RelayResponse, supplier_key: &PublicKey) -> bool {
    supplier::verify_key(
        supplier_key,
        &response_signable_hash(res),
        &res.meta.supplier_operator_signature,
    )
}

/// The serialized relay stored in the trie: `Relay{req, res}` with the response payload
/// cleared (its hash stays).
pub fn mined_relay_bytes(req: &RelayRequest, res: &RelayResponse) -> Vec<u8> {
    Relay::encode_mined(req, res)
}

/// The relay's hash: SHA-256 of [`mined_relay_bytes`]. It is the trie key.
pub fn relay_hash(relay_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(relay_bytes).into()
}

/// The easiest target: every relay counts.
pub const BASE_TARGET: [u8; 32] = [0xff; 32];

/// Whether a relay is volume-applicable (mined): its hash is strictly below the target,
/// both read as big-endian numbers.
pub fn is_mined(relay_hash: &[u8; 32], target: &[u8; 32]) -> bool {
    relay_hash < target
}

/// A relay ready for the trie: key (relay hash), value (relay bytes), weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinedRelay {
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
    pub compute_units: u64,
}

/// Hashes a served relay and keeps it if it beats the difficulty target of its session
/// (read at the session start height).
pub fn mine(
    req: &RelayRequest,
    res: &RelayResponse,
    target: &[u8; 32],
    compute_units_per_relay: u64,
) -> Option<MinedRelay> {
    let bytes = mined_relay_bytes(req, res);
    let hash = relay_hash(&bytes);
    is_mined(&hash, target).then_some(MinedRelay {
        hash,
        bytes,
        compute_units: compute_units_per_relay,
    })
}

/// Separates signed batches of a streamed response.
pub const STREAM_DELIMITER: &[u8] = b"||POKT_STREAM||";

/// A streamed response on the wire: each batch a serialized, individually signed
/// `RelayResponse`, batches separated by [`STREAM_DELIMITER`].
pub fn encode_stream(batches: &[RelayResponse]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(STREAM_DELIMITER);
        }
        b.encode_to(&mut out);
    }
    out
}

/// Splits a streamed response back into its batches, in time linear in its bytes and
/// memory bounded by its largest batch. The decoder walks each batch's top-level protobuf
/// fields by their lengths (a payload is skipped, never searched), so a delimiter inside a
/// payload is never taken for a boundary; a batch ends where a field ends and the
/// delimiter follows (no field key of a `RelayResponse` starts with the delimiter's first
/// byte, `|` being wire type 4). A batch, or a field declared, larger than the limit is
/// refused as soon as it is seen; after an error every later call fails the same way.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// The end of the last whole top-level field of the batch being read (from the
    /// start of `buf`, where that batch starts).
    field_end: usize,
    max_batch: usize,
    failed: Option<StreamError>,
}

/// Why a stream could not be split into batches.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("a stream batch exceeds {0} bytes")]
    TooLarge(usize),
    #[error("a stream batch is malformed: {0}")]
    Malformed(#[from] ProtoError),
}

/// The largest batch [`StreamDecoder::new`] accepts.
pub const MAX_STREAM_BATCH: usize = 16 << 20;

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::with_max_batch(MAX_STREAM_BATCH)
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder refusing batches larger than `max_batch` bytes.
    pub fn with_max_batch(max_batch: usize) -> Self {
        Self {
            buf: Vec::new(),
            field_end: 0,
            max_batch,
            failed: None,
        }
    }

    /// Adds received bytes; returns every batch completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<RelayResponse>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(bytes);
        let out = self.split();
        if let Err(e) = &out {
            self.failed = Some(e.clone());
        }
        out
    }

    fn split(&mut self) -> Result<Vec<RelayResponse>, StreamError> {
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.buf[self.field_end..];
            if rest.starts_with(STREAM_DELIMITER) {
                out.push(RelayResponse::decode(&self.buf[start..self.field_end])?);
                start = self.field_end + STREAM_DELIMITER.len();
                self.field_end = start;
                continue;
            }
            if rest.len() < STREAM_DELIMITER.len() && STREAM_DELIMITER.starts_with(rest) {
                break; // Nothing, or the start of a delimiter.
            }
            match field_len(rest, self.max_batch)? {
                Some(n) => {
                    self.field_end += n;
                    if self.field_end - start > self.max_batch {
                        return Err(StreamError::TooLarge(self.max_batch));
                    }
                }
                None => break, // A field still arriving.
            }
        }
        if start > 0 {
            self.buf.drain(..start);
            self.field_end -= start;
        }
        Ok(out)
    }

    /// The last batch, at the end of the stream (none if nothing is pending).
    pub fn finish(self) -> Result<Option<RelayResponse>, StreamError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(RelayResponse::decode(&self.buf).map(Some)?)
    }
}

/// A varint at the start of `b`: its value and length, `None` while incomplete.
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, ProtoError> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err(ProtoError::IntOverflow);
    }
    Ok(None)
}

/// The length of the whole protobuf field at the start of `b` (key included), `None`
/// while it is incomplete. A length-delimited field declared larger than `max` is refused
/// before its bytes arrive.
fn field_len(b: &[u8], max: usize) -> Result<Option<usize>, StreamError> {
    let Some((key, k)) = varint(b)? else {
        return Ok(None);
    };
    if key >> 3 == 0 {
        return Err(ProtoError::ZeroTag.into());
    }
    let body = match key & 7 {
        0 => match varint(&b[k..])? {
            Some((_, n)) => n,
            None => return Ok(None),
        },
        1 => 8,
        5 => 4,
        2 => match varint(&b[k..])? {
            Some((len, n)) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > max {
                    return Err(StreamError::TooLarge(max));
                }
                n + len
            }
            None => return Ok(None),
        },
        wt => return Err(ProtoError::BadWireType(wt as u8).into()),
    };
    Ok((b.len() >= k + body).then_some(k + body))
}

/// Decodes a complete streamed response into its batches.
pub fn decode_stream(bytes: &[u8]) -> Result<Vec<RelayResponse>, StreamError> {
    let mut d = StreamDecoder::with_max_batch(bytes.len());
    let mut out = d.push(bytes)?;
    out.extend(d.finish()?);
    Ok(out)
}

/// The HTTP response a stream amounts to: the first batch's status and headers with
/// every batch's body concatenated. This full response is what gets mined.
pub fn join_stream_payloads<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<PoktHttpResponse, ProtoError> {
    let mut full: Option<PoktHttpResponse> = None;
    for p in payloads {
        let part = PoktHttpResponse::decode(p)?;
        match &mut full {
            None => full = Some(part),
            Some(f) => f.body_bz.extend_from_slice(&part.body_bz),
        }
    }
    Ok(full.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload packed with delimiters, fed a byte at a time: the old decoder tried to
    /// decode the batch at every delimiter and rescanned from the batch start on every
    /// push (quadratic; this input did not finish). Now each batch is decoded once.
    #[test]
    fn delimiters_inside_payloads_cost_nothing_extra() {
        let payload = STREAM_DELIMITER.repeat(20_000);
        let batches = [
            RelayResponse {
                payload: payload.clone(),
                ..Default::default()
            },
            RelayResponse {
                payload: b"end".to_vec(),
                ..Default::default()
            },
        ];
        let wire = encode_stream(&batches);
        let mut d = StreamDecoder::new();
        let mut got = Vec::new();
        for b in wire.chunks(1) {
            got.extend(d.push(b).expect("batches"));
        }
        got.extend(d.finish().expect("last"));
        assert_eq!(got, batches);
    }

    #[test]
    fn a_batch_larger_than_the_limit_is_refused_as_soon_as_it_is_declared() {
        let mut d = StreamDecoder::with_max_batch(1 << 20);
        // Field 2 (payload), length-delimited, declared 1 GiB: refused from its header.
        let mut header = vec![0x12];
        let mut len = 1u64 << 30;
        while len >= 0x80 {
            header.push((len as u8) | 0x80);
            len >>= 7;
        }
        header.push(len as u8);
        assert_eq!(d.push(&header), Err(StreamError::TooLarge(1 << 20)));
        assert_eq!(
            d.push(b"more"),
            Err(StreamError::TooLarge(1 << 20)),
            "it sticks"
        );
        // Many small fields adding up past the limit.
        let mut d = StreamDecoder::with_max_batch(1000);
        let field = [0x12, 100]
            .into_iter()
            .chain([7u8; 100])
            .collect::<Vec<_>>();
        let mut result = Ok(Vec::new());
        for _ in 0..20 {
            result = d.push(&field);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(StreamError::TooLarge(1000)));
        // A group (wire type 3) is not a RelayResponse field.
        assert!(matches!(
            StreamDecoder::new().push(&[0x0b]),
            Err(StreamError::Malformed(_))
        ));
    }
}
