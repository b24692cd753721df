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

/// Splits a streamed response back into its batches. The delimiter can also occur inside
/// a batch's payload; a split point is accepted only where the bytes before it decode as a
/// whole `RelayResponse` (a cut inside a field never does, and no field key of a
/// `RelayResponse` starts with the delimiter's first byte).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Where the next delimiter search starts.
    scan: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes; returns every batch completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<RelayResponse> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = find(&self.buf[self.scan..], STREAM_DELIMITER).map(|p| p + self.scan)
        {
            match RelayResponse::decode(&self.buf[..pos]) {
                Ok(batch) => {
                    out.push(batch);
                    self.buf.drain(..pos + STREAM_DELIMITER.len());
                    self.scan = 0;
                }
                // The delimiter is inside a payload: keep looking after it.
                Err(_) => self.scan = pos + 1,
            }
        }
        out
    }

    /// The last batch, at the end of the stream (none if nothing is pending).
    pub fn finish(self) -> Result<Option<RelayResponse>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        RelayResponse::decode(&self.buf).map(Some)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete streamed response into its batches.
pub fn decode_stream(bytes: &[u8]) -> Result<Vec<RelayResponse>, ProtoError> {
    let mut d = StreamDecoder::new();
    let mut out = d.push(bytes);
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
