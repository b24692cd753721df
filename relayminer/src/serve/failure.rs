//! How serve refuses a relay: poktroll's `RelayMinerError` codes, a meaningful HTTP
//! status, and a `RelayResponse` carrying the error (signed once the supplier is known).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use lode_kernels::proto::{Message, RelayMinerError, RelayResponse, SessionHeader};

use super::metrics::Metrics;
use super::signer::Signer;

/// poktroll's `relayer_proxy` codespace and the codes lode answers with (1, 3, 5, 7, 9,
/// 10, 11 and 14 are poktroll's; 2, 4 and 20 are lode's own).
pub mod codes {
    pub const CODESPACE: &str = "relayer_proxy";
    pub const INVALID_SESSION: u32 = 1;
    pub const INVALID_REQUEST: u32 = 2;
    pub const SERVICE_NOT_HANDLED: u32 = 3;
    pub const SUPPLIER_NOT_HANDLED: u32 = 4;
    pub const INTERNAL: u32 = 5;
    pub const RATE_LIMITED: u32 = 7;
    pub const BACKEND_UNREACHABLE: u32 = 9;
    pub const TIMEOUT: u32 = 10;
    pub const MAX_BODY: u32 = 11;
    pub const UNMARSHAL: u32 = 14;
    /// The service's engines are at zero and waking up: try another supplier now, this
    /// one after the answer's `Retry-After` (lode's own).
    pub const SERVICE_WAKING: u32 = lode_contracts::serve::SERVICE_WAKING;
}

/// A refused or failed relay: HTTP status, poktroll code, message.
#[derive(Debug)]
pub struct RelayFailure {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
    /// Seconds after which the same relay may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

pub fn fail(status: StatusCode, code: u32, message: impl Into<String>) -> RelayFailure {
    RelayFailure {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

fn describe(code: u32) -> &'static str {
    match code {
        codes::INVALID_SESSION => "invalid session",
        codes::INVALID_REQUEST => "invalid relay request",
        codes::SERVICE_NOT_HANDLED => "service endpoint not handled by relayer proxy",
        codes::SUPPLIER_NOT_HANDLED => "supplier not handled by this relayminer",
        codes::RATE_LIMITED => "offchain rate limit exceeded by relay",
        codes::BACKEND_UNREACHABLE => "supplier service not reachable",
        codes::TIMEOUT => "relay request timed out",
        codes::MAX_BODY => "max body size exceeded",
        codes::UNMARSHAL => "failed to unmarshal relay request",
        codes::SERVICE_WAKING => "service waking up: no engine replica is ready yet",
        _ => "internal error",
    }
}

/// An error reply: an unsigned (or, once the supplier is known, signed) `RelayResponse`
/// carrying `RelayMinerError`, with a meaningful HTTP status.
fn error_reply(f: &RelayFailure, header: Option<&SessionHeader>, key: Option<&Signer>) -> Response {
    let mut res = RelayResponse {
        payload: f.message.clone().into_bytes(),
        relay_miner_error: Some(RelayMinerError {
            codespace: codes::CODESPACE.into(),
            code: f.code,
            description: describe(f.code).into(),
            message: f.message.clone(),
        }),
        ..Default::default()
    };
    res.meta.session_header = header.cloned();
    if let Some(k) = key {
        k.sign(&mut res);
    }
    let mut reply = (
        f.status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        res.encode(),
    )
        .into_response();
    if let Some(s) = f.retry_after {
        reply
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    reply
}

/// The answer to a request refused before it was read (the body budget was full): an
/// unsigned `RelayResponse` carrying the error, as for any refusal before the session is
/// known.
pub fn bare_refusal(status: StatusCode, message: String) -> Response {
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        codes::INTERNAL
    } else {
        codes::INVALID_REQUEST
    };
    error_reply(&fail(status, code, message), None, None)
}

/// Counts and logs a refusal, and answers it.
pub fn refuse(
    m: &Metrics,
    f: RelayFailure,
    header: Option<&SessionHeader>,
    key: Option<&Signer>,
) -> Response {
    m.refused(f.code);
    tracing::debug!(code = f.code, message = %f.message, "relay refused");
    error_reply(&f, header, key)
}

/// A relay refused before it reached the engine, with what its answer can carry: the
/// session header once the request named one, the supplier's signer once it is ours.
#[derive(Debug)]
pub struct Refused {
    pub failure: RelayFailure,
    header: Option<SessionHeader>,
    key: Option<std::sync::Arc<Signer>>,
}

impl Refused {
    /// Refused before the request named a session.
    pub fn bare(failure: RelayFailure) -> Self {
        Self {
            failure,
            header: None,
            key: None,
        }
    }

    /// Refused for a session, before the supplier was found to be ours (unsigned).
    pub fn unsigned(failure: RelayFailure, header: &SessionHeader) -> Self {
        Self {
            failure,
            header: Some(header.clone()),
            key: None,
        }
    }

    /// Refused for a session of one of our suppliers (signed).
    pub fn signed(
        failure: RelayFailure,
        header: &SessionHeader,
        key: &std::sync::Arc<Signer>,
    ) -> Self {
        Self {
            failure,
            header: Some(header.clone()),
            key: Some(key.clone()),
        }
    }

    /// The answer, counted and logged.
    pub fn respond(self, m: &Metrics) -> Response {
        refuse(m, self.failure, self.header.as_ref(), self.key.as_deref())
    }
}
