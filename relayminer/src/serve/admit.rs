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

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::{BodyExt, Limited};
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

/// The body, within the largest configured limit.
async fn read_body(body: Body, max: usize) -> Result<Bytes, RelayFailure> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::MAX_BODY,
            format!("relay request body exceeds {max} bytes"),
        )),
        Err(e) if lode_net::server::is_body_timeout(&*e) => Err(fail(
            StatusCode::REQUEST_TIMEOUT,
            codes::TIMEOUT,
            format!("reading the request body: {e}"),
        )),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            format!("reading the request body: {e}"),
        )),
    }
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
    use super::bounded;

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
