//! Admission: everything a relay must pass before the engine sees it, in order — a body
//! within the limit, a `RelayRequest` with a session header and a signature, one of our
//! suppliers and services, the session on chain, a `POKTHTTPRequest` payload naming a
//! route the service forwards, the application's ring signature (for a busy session and
//! a side-effect-free route, checked in its own task while the engine starts; see
//! [`super::proxy::Ctx::after_verdict`]), the application's budget and a place in the
//! store queue. Each check returns the refusal that ends the relay; [`admit`] strings
//! them together with `?`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::StatusCode;
use bytes::BytesMut;
use http_body_util::BodyExt;
use lode_kernels::crypto::ring::RingError;
use lode_kernels::proto::{Message, PoktHttpRequest, RelayRequest};
use lode_kernels::relay::{request_signable_hash, verify_request};
use tokio::sync::OwnedSemaphorePermit;

use super::failure::{Refused, RelayFailure, codes, fail};
use super::relay::{RelayState, Service};
use super::session::{SessionEntry, SessionError};
use super::signer::Signer;
use lode_contracts::serve::Route;

/// A relay that passed admission, on its way to the engine.
#[derive(Debug)]
pub struct Admitted<'a> {
    pub req: RelayRequest,
    pub http_req: PoktHttpRequest,
    pub session: Arc<SessionEntry>,
    pub supplier: String,
    pub key: Arc<Signer>,
    pub service: &'a Service,
    /// The relay's place in the store queue.
    pub slot: OwnedSemaphorePermit,
    /// The ring-signature check still running in its own task, if any.
    pub gate: Option<Gate>,
    /// Whether the relay was charged to the session's budget.
    pub charged: bool,
}

/// Runs every check; the admitted relay, or the refusal to answer with.
pub async fn admit(state: &RelayState, body: Body) -> Result<Admitted<'_>, Refused> {
    let bytes = read_body(body, state.max_body)
        .await
        .map_err(Refused::bare)?;
    let req = RelayRequest::decode(&bytes).map_err(|e| {
        Refused::bare(fail(
            StatusCode::BAD_REQUEST,
            codes::UNMARSHAL,
            format!("relay request is not a RelayRequest: {e}"),
        ))
    })?;
    let header = req.meta.session_header.clone().ok_or_else(|| {
        Refused::bare(fail(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            "relay request has no session header",
        ))
    })?;
    // Not checked yet: the span shows at most a bounded prefix of each.
    let span = tracing::Span::current();
    span.record("session", bounded(&header.session_id));
    span.record("service", bounded(&header.service_id));
    span.record("supplier", bounded(&req.meta.supplier_operator_address));
    let unsigned = |f| Refused::unsigned(f, &header);
    if req.meta.signature.is_empty() {
        return Err(unsigned(fail(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            "relay request is not signed",
        )));
    }
    // Ours: the supplier and the service.
    let supplier = req.meta.supplier_operator_address.clone();
    let key = state.keys.get(&supplier).ok_or_else(|| {
        unsigned(fail(
            StatusCode::FORBIDDEN,
            codes::SUPPLIER_NOT_HANDLED,
            format!("supplier {supplier:?} is not served by this relayminer"),
        ))
    })?;
    let signed = |f| Refused::signed(f, &header, key);
    let service = state.services.get(&header.service_id).ok_or_else(|| {
        signed(fail(
            StatusCode::NOT_FOUND,
            codes::SERVICE_NOT_HANDLED,
            format!(
                "service {:?} is not served by this relayminer",
                header.service_id
            ),
        ))
    })?;
    if bytes.len() > service.config.max_body_bytes {
        return Err(signed(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::MAX_BODY,
            format!(
                "relay request body exceeds {} bytes",
                service.config.max_body_bytes
            ),
        )));
    }
    let session = state
        .sessions
        .validate(&header, &supplier)
        .await
        .map_err(|e| signed(session_refusal(e)))?;
    if session.placeholder_ring && state.config.refuse_placeholder_ring {
        return Err(signed(fail(
            StatusCode::FORBIDDEN,
            codes::INVALID_REQUEST,
            format!(
                "application {} has no delegated gateway, so anyone can sign its relays with the public placeholder key; this supplier refuses them (refuse_placeholder_ring)",
                session.header.application_address
            ),
        )));
    }
    let http_req = match PoktHttpRequest::decode(&req.payload) {
        Ok(h) => h,
        Err(e) => {
            // A payload tampered with after signing is a bad signature first.
            signature_verdict(state, &session, Ok(verify_request(&req, &session.ring)))
                .map_err(signed)?;
            return Err(signed(fail(
                StatusCode::BAD_REQUEST,
                codes::UNMARSHAL,
                format!("relay payload is not a POKTHTTPRequest: {e}"),
            )));
        }
    };
    let route = route_of(service, &http_req).map_err(signed)?;
    let gate =
        check_signature(state, service, &session, &req, bytes.len(), route).map_err(signed)?;
    // Over-servicing (refunded if a signature checked meanwhile fails).
    let charged = session.charge();
    if !charged && !state.config.enable_over_servicing {
        return Err(signed(fail(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMITED,
            "the application's stake for this session is spent",
        )));
    }
    // A place in the store queue, reserved before any work is done.
    let slot = state.shipper.reserve().ok_or_else(|| {
        signed(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::INTERNAL,
            "the session store is not keeping up; try again",
        ))
    })?;
    Ok(Admitted {
        req,
        http_req,
        session,
        supplier,
        key: key.clone(),
        service,
        slot,
        gate,
        charged,
    })
}

/// At most the first 96 bytes of `s` (cut at a character boundary): what a log may
/// carry of a value the relay names before it is checked (a session id is 64 bytes, an
/// address 43, a service id at most 42).
fn bounded(s: &str) -> &str {
    if s.len() <= 96 {
        return s;
    }
    let mut end = 96;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The largest `RelayRequestMetadata` serve reads: a session header (a few hundred
/// bytes), a supplier address and a ring signature of up to ~1,000 members (65 bytes
/// each; poktroll's rings are an application and its delegated gateways, 8 by default).
pub const MAX_META_BYTES: u64 = 64 << 10;

/// The body, within the largest configured limit; a body declared larger is refused
/// before it is read, and one whose relay metadata is larger than [`MAX_META_BYTES`] (a
/// ring-signature bomb) as soon as the metadata's length has arrived.
async fn read_body(mut body: Body, max: usize) -> Result<Bytes, RelayFailure> {
    let too_large = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::MAX_BODY,
            format!("relay request body exceeds {max} bytes"),
        )
    };
    let declared = body.size_hint().lower();
    if declared > max as u64 {
        return Err(too_large());
    }
    // The body budget holds the declared bytes already; one allocation of that size
    // (its pages resident only as bytes arrive) saves copying the body as it grows.
    let mut buf = BytesMut::with_capacity(declared as usize);
    let mut walk = MetaWalk::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if lode_net::server::is_body_timeout(&e) {
                fail(
                    StatusCode::REQUEST_TIMEOUT,
                    codes::TIMEOUT,
                    format!("reading the request body: {e}"),
                )
            } else {
                fail(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    format!("reading the request body: {e}"),
                )
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
        walk.check(&buf).map_err(|len| {
            fail(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                format!(
                    "relay request metadata is {len} bytes; a session header and a ring signature never exceed {MAX_META_BYTES}"
                ),
            )
        })?;
    }
    Ok(buf.freeze())
}

/// Walks a `RelayRequest`'s top-level fields as its bytes arrive and checks the length
/// of each metadata field (field 1) from its header: work in proportion to the fields,
/// not the bytes, so it runs after every frame.
#[derive(Debug, Default)]
struct MetaWalk {
    /// Where the next field's key starts.
    next: usize,
    /// A wire type no `RelayRequest` has: decoding will say why.
    done: bool,
}

impl MetaWalk {
    /// `Err(length)` for metadata longer than [`MAX_META_BYTES`]; otherwise walks as far
    /// as `buf` goes.
    fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        while !self.done {
            let Some(rest) = buf.get(self.next..) else {
                return Ok(());
            };
            let Some((key, k)) = varint(rest) else {
                return Ok(());
            };
            let body = match key & 7 {
                0 => match varint(&rest[k..]) {
                    Some((_, n)) => n,
                    None => return Ok(()),
                },
                1 => 8,
                5 => 4,
                2 => {
                    let Some((len, n)) = varint(&rest[k..]) else {
                        return Ok(());
                    };
                    if key >> 3 == 1 && len > MAX_META_BYTES {
                        return Err(len);
                    }
                    n.saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                }
                _ => {
                    self.done = true;
                    return Ok(());
                }
            };
            self.next = self.next.saturating_add(k).saturating_add(body);
        }
        Ok(())
    }
}

/// The varint at the start of `b` and its length; `None` while it has not all arrived.
/// One longer than ten bytes reads as `u64::MAX` (decoding refuses it).
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    (b.len() >= 10).then_some((u64::MAX, 10))
}

/// The configured route a relay's method and path name, or its refusal (404: the
/// engine never sees a route the service does not forward, signed or not).
fn route_of<'s>(
    service: &'s Service,
    http_req: &PoktHttpRequest,
) -> Result<&'s Route, RelayFailure> {
    let method = if http_req.method.is_empty() {
        "POST"
    } else {
        http_req.method.as_str()
    };
    let path = relay_path(&http_req.url).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            format!("relay URL {:?} is not a URL", bounded(&http_req.url)),
        )
    })?;
    service
        .config
        .routes
        .iter()
        .find(|r| r.matches(method, &path))
        .ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                codes::SERVICE_NOT_HANDLED,
                format!(
                    "{} {} is not a route service {:?} forwards to its engine",
                    bounded(method),
                    bounded(&path),
                    service.config.service_id
                ),
            )
        })
}

/// The path of a relay's URL (absolute, or a path with an optional query).
fn relay_path(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("/".into());
    }
    let uri: axum::http::Uri = url.parse().ok()?;
    Some(uri.path().to_string())
}

/// A session the chain does not confirm: 400, or 503 while the chain cannot be asked.
fn session_refusal(e: SessionError) -> RelayFailure {
    if let SessionError::Chain(ref q) = e {
        tracing::warn!(error = %q, "session validation needs the chain");
    }
    if e.is_unavailable() {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::INTERNAL,
            e.to_string(),
        )
    } else {
        fail(
            StatusCode::BAD_REQUEST,
            codes::INVALID_SESSION,
            e.to_string(),
        )
    }
}

/// The application's (or its gateway's) ring signature. A busy session that has never
/// seen a bad one has it checked in a task of its own while the engine starts (nothing
/// reaches the client, and nothing is mined or kept charged, before it passes); any
/// other relay is checked here, first.
fn check_signature(
    state: &RelayState,
    service: &Service,
    session: &Arc<SessionEntry>,
    req: &RelayRequest,
    body_len: usize,
    route: &Route,
) -> Result<Option<Gate>, RelayFailure> {
    let speculate = !service.is_triton()
        && route.side_effect_free
        && body_len <= SPECULATE_MAX_BODY
        && session.ring.is_accelerated()
        && !session.refused_signature.load(Ordering::Relaxed);
    if !speculate {
        signature_verdict(state, session, Ok(verify_request(req, &session.ring)))?;
        return Ok(None);
    }
    state
        .metrics
        .concurrent_checks
        .fetch_add(1, Ordering::Relaxed);
    let (session, hash) = (session.clone(), request_signable_hash(req));
    let signature = req.meta.signature.clone();
    // A task of its own on the runtime, not the blocking pool: the check is short
    // (~80 µs), and a pool thread per check in flight had the OS switching between as
    // many threads (twice the context switches per relay at 2,500 relays/s).
    Ok(Some(tokio::spawn(async move {
        let ring = &session.ring;
        ring.parse(&signature)
            .and_then(|sig| ring.verify(&sig, &hash))
    })))
}

/// A ring-signature check running in a task of its own.
pub type Gate = tokio::task::JoinHandle<Result<bool, RingError>>;

/// Largest relay whose signature may be checked while the engine starts; a larger one
/// is checked first (an engine that began on a forged relay stops when it is refused,
/// but reading a large body is work already done).
const SPECULATE_MAX_BODY: usize = 64 << 10;

/// What a ring-signature check means for the relay: `Ok` to go on, or the refusal. A
/// refusal marks the session so that its later relays are checked before the engine
/// sees them; a pass may start building the ring's tables.
pub fn signature_verdict(
    state: &RelayState,
    session: &Arc<SessionEntry>,
    checked: Result<Result<bool, RingError>, String>,
) -> Result<(), RelayFailure> {
    let failure = match checked {
        Ok(Ok(true)) => {
            // A busy ring gets point tables, built off the request path.
            if state.config.ring_table_mib > 0 && session.ring.wants_acceleration() {
                let (session, tables) = (session.clone(), state.tables.clone());
                tokio::task::spawn_blocking(move || session.ring.accelerate(&tables));
            }
            return Ok(());
        }
        Ok(Ok(false)) => fail(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_REQUEST,
            "invalid ring signature",
        ),
        Ok(Err(e)) => fail(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_REQUEST,
            format!("invalid ring signature: {e}"),
        ),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            format!("checking the ring signature: {e}"),
        ),
    };
    session.refused_signature.store(true, Ordering::Relaxed);
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::{MAX_META_BYTES, MetaWalk, bounded};
    use lode_kernels::proto::{Message, RelayRequest};

    /// Walks `bytes` fed `step` bytes at a time, as frames would bring them.
    fn walk_in_steps(bytes: &[u8], step: usize) -> Result<(), u64> {
        let mut walk = MetaWalk::default();
        let mut end = 0;
        while end < bytes.len() {
            end = (end + step).min(bytes.len());
            walk.check(&bytes[..end])?;
        }
        Ok(())
    }

    #[test]
    fn metadata_larger_than_any_ring_is_refused_from_its_first_bytes() {
        let mut req = RelayRequest::default();
        req.meta.signature = vec![7; 5_000];
        req.meta.supplier_operator_address = "pokt1supplier".into();
        req.payload = vec![1; 300_000];
        let honest = req.encode();
        for step in [1, 3, 1000, honest.len()] {
            assert_eq!(walk_in_steps(&honest, step), Ok(()), "step {step}");
        }
        // A bomb: its length is known from the first five bytes.
        req.meta.signature = vec![7; 20 << 20];
        let bomb = req.encode();
        let mut walk = MetaWalk::default();
        assert!(matches!(walk.check(&bomb[..6]), Err(n) if n > 20 << 20));
        // The payload first, the metadata after (field order is free in protobuf).
        let mut reordered = prost_field(2, &vec![1; 1000]);
        reordered.extend(prost_field(1, &vec![0; MAX_META_BYTES as usize + 1]));
        assert_eq!(
            walk_in_steps(&reordered, 7),
            Err(MAX_META_BYTES + 1),
            "metadata after the payload"
        );
        // Varint and fixed fields are stepped over; a wire type no message has stops
        // the walk, and decoding reports it.
        let mut odd = vec![
            0x18, 0xff, 0xff, 0x01, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0x2d, 0, 0, 0, 0,
        ];
        odd.extend(prost_field(1, &[0; 70_000]));
        assert_eq!(walk_in_steps(&odd, 1), Err(70_000));
        assert_eq!(walk_in_steps(&[0x0b, 0x0a, 0xff, 0xff, 0x7f], 1), Ok(()));
        // A varint longer than ten bytes reads as the largest length.
        assert_eq!(
            walk_in_steps(&[&[0x0a][..], &[0xff; 12]].concat(), 2),
            Err(u64::MAX)
        );
    }

    fn prost_field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2];
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn logged_names_are_cut_to_a_bounded_prefix() {
        assert_eq!(bounded("llm"), "llm");
        let id = "a".repeat(64);
        assert_eq!(bounded(&id), id, "a real session id is whole");
        let huge = "é".repeat(10_000);
        let cut = bounded(&huge);
        assert!(cut.len() <= 96 && huge.starts_with(cut) && !cut.is_empty());
    }
}
