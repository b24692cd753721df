//! `relayminer serve`'s configuration (lode's YAML). The operator writes it into each
//! ServiceModel's ConfigMap; serve, `relayminer run` and the claim/prove jobs read it.
//! poktroll's relayminer YAML is translated into it by the relayminer itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::ConnectionLimits;
use crate::{Invalid, NodeConfig, is_http_url, is_service_id};

/// Relay port (HTTP/1.1 and HTTP/2 cleartext).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8545";
/// Admin port: `/metrics`, `/healthz`, `/readyz`, `/demand`.
pub const DEFAULT_ADMIN: &str = "0.0.0.0:9091";
/// Whole-request timeout toward an engine (streams included), seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 600;
/// Largest request and (non-streamed) response body, bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 20 << 20;
/// Mined relays waiting for the store's acknowledgement, at most.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Streams: later chunks are flushed this often…
pub const DEFAULT_STREAM_BATCH_MS: u64 = 20;
/// …or once this many bytes are pending.
pub const DEFAULT_STREAM_BATCH_BYTES: usize = 16 << 10;
/// Open connections on the relay port, at most (beyond: new ones wait in the backlog).
/// Each concurrent relay or stream needs one (HTTP/1.1) or shares one (HTTP/2).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Memory for ring-signature point tables, MiB.
pub const DEFAULT_RING_TABLE_MIB: usize = 128;
/// The Triton model serve calls (TensorRT-LLM's `ensemble`).
pub const DEFAULT_TRITON_MODEL: &str = "ensemble";
/// Bytes of mined relays waiting for the store's acknowledgement, at most.
pub const DEFAULT_QUEUE_BYTES: usize = 256 << 20;
/// Request body bytes the relay port holds at once across all relays being read.
pub const DEFAULT_IN_FLIGHT_BODY_BYTES: usize = 256 << 20;

/// The engine routes a relay may reach by default: OpenAI's inference API. Inference
/// changes nothing on an engine but its caches, so these may start while a busy
/// session's signature is still being checked. Everything else an engine serves
/// (vLLM's `/reset_prefix_cache`, `/sleep`, `/start_profile`, SGLang's
/// `/update_weights_from_disk`, metrics, health) is refused unless configured.
pub const DEFAULT_ROUTES: [(&str, &str); 5] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("POST", "/v1/responses"),
];

/// An engine route relays may reach.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `GET`, `POST`, … (a relay without a method is a `POST`).
    pub method: String,
    /// The path, exactly (no query; `/v1/chat/completions`).
    pub path: String,
    /// Whether calling it changes nothing on the engine (beyond its caches): only then
    /// may it start before a busy session's signature check has finished.
    #[serde(default)]
    pub side_effect_free: bool,
}

impl Route {
    pub fn new(method: &str, path: &str, side_effect_free: bool) -> Self {
        Self {
            method: method.to_string(),
            path: path.to_string(),
            side_effect_free,
        }
    }

    /// Whether a relay's method and path (without its query) are this route's.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// An upper-case method and an absolute path without `.`/`..` segments, empty
    /// segments, percent-escapes, a query or a fragment: a path an engine cannot read
    /// as another.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid(format!(
                "route method {:?} must be an upper-case HTTP method",
                self.method
            )));
        }
        if !is_plain_path(&self.path) {
            return Err(Invalid(format!(
                "route path {:?} must start with '/' and have no '.' or '..' segments, empty segments, '%', '\\', '?' or '#'",
                self.path
            )));
        }
        Ok(())
    }
}

/// An absolute path an engine cannot read as another: no `.`/`..` or empty segments,
/// no escapes, query, fragment or backslash, printable ASCII.
pub fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 256
        && path.bytes().all(|b| b.is_ascii_graphic())
        && !path.contains(['%', '\\', '?', '#'])
        && path[1..].split('/').enumerate().all(|(i, seg)| {
            (i == 0 && path == "/") || !(seg.is_empty() || seg == "." || seg == "..")
        })
}

/// [`DEFAULT_ROUTES`], all side-effect free.
pub fn default_routes() -> Vec<Route> {
    DEFAULT_ROUTES
        .iter()
        .map(|(m, p)| Route::new(m, p, true))
        .collect()
}

/// What to do with mined relays when the store is slow or down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StorePolicy {
    /// Answer the gateway only after the store acknowledged the relay.
    Hold,
    /// Answer at once and queue the relay for the store; new relays are refused (503)
    /// while the queue is full. Nothing is ever dropped silently.
    #[default]
    Queue,
}

/// The API the engine speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// OpenAI-compatible HTTP: vLLM, TensorRT-LLM `trtllm-serve`, SGLang, llama.cpp.
    #[default]
    Openai,
    /// Triton's KServe v2 gRPC (`ModelInfer`, `ModelStreamInfer`) with TensorRT-LLM's
    /// text tensors; gateways still send OpenAI requests, serve translates.
    Triton,
}

/// HTTP basic authentication toward the backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// One service this relayminer serves.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub service_id: String,
    /// The engine's base URL, e.g. `http://127.0.0.1:8000` (vLLM's OpenAI server), or
    /// Triton's gRPC port (`http://127.0.0.1:8001`) with `backend: triton`.
    pub backend_url: String,
    #[serde(default)]
    pub backend: BackendKind,
    /// The Triton model to call (TensorRT-LLM's `ensemble` by default).
    #[serde(default = "default_triton_model")]
    pub triton_model: String,
    /// Headers added to every backend request (overriding the gateway's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// HTTP basic authentication toward the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Add `Pocket-Supplier`, `Pocket-Service`, `Pocket-Session-Id`, … to backend requests.
    #[serde(default)]
    pub forward_pocket_headers: bool,
    /// Whole-request timeout toward the backend (streams included), seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_seconds: u64,
    /// Largest request body and response body (a stream's whole body too), bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The engine routes relays may reach; anything else is refused before the engine
    /// sees it. OpenAI's inference API by default ([`DEFAULT_ROUTES`]).
    #[serde(default = "default_routes")]
    pub routes: Vec<Route>,
    /// The engine replicas relays are routed between (base URLs); empty: `backend_url`
    /// alone. OpenAI-compatible engines only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<String>,
    /// How a relay's engine replica is chosen.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Where the engine replicas are found at run time (a Kubernetes Service's
    /// EndpointSlices); the replicas found replace `backend_url` and `engines`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<EngineDiscovery>,
    /// Relays held while no discovered engine replica is ready (a model scaled to zero,
    /// waking up); unset: such relays are refused at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldConfig>,
}

/// How relays wait for a service's first engine replica: each is held until one is
/// ready or its deadline passes (then answered 503, `Retry-After`, and lode's
/// `SERVICE_WAKING` code, so a gateway tries another supplier). Held relays count as
/// demand at once (the autoscaler wakes the engines on them); a relay is charged to its
/// session and mined only once it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HoldConfig {
    /// Relays held at once, at most; more are answered 503 at once.
    #[serde(default = "default_hold_relays")]
    pub max_relays: usize,
    /// Request bytes held at once, at most.
    #[serde(default = "default_hold_bytes")]
    pub max_bytes: usize,
    /// How long one relay is held, milliseconds: below the gateways' own timeout, so
    /// they have time to try another supplier.
    #[serde(default = "default_hold_deadline_ms")]
    pub deadline_ms: u64,
}

/// lode's `relayer_proxy` code for a relay whose service is waking up from zero engines:
/// answered with HTTP 503 and `Retry-After`; gateways try another supplier of the session
/// and come back to this one after that time.
pub const SERVICE_WAKING: u32 = 20;

/// Default `hold.max_relays`.
pub const DEFAULT_HOLD_RELAYS: usize = 256;
/// Default `hold.max_bytes`: 64 MiB.
pub const DEFAULT_HOLD_BYTES: usize = 64 << 20;
/// Default `hold.deadline_ms`: 30 s.
pub const DEFAULT_HOLD_DEADLINE_MS: u64 = 30_000;

fn default_hold_relays() -> usize {
    DEFAULT_HOLD_RELAYS
}
fn default_hold_bytes() -> usize {
    DEFAULT_HOLD_BYTES
}
fn default_hold_deadline_ms() -> u64 {
    DEFAULT_HOLD_DEADLINE_MS
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            max_relays: DEFAULT_HOLD_RELAYS,
            max_bytes: DEFAULT_HOLD_BYTES,
            deadline_ms: DEFAULT_HOLD_DEADLINE_MS,
        }
    }
}

impl HoldConfig {
    /// The deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_relays == 0 || self.max_relays > 100_000 {
            return Err(Invalid(format!(
                "hold.max_relays {} must be between 1 and 100000",
                self.max_relays
            )));
        }
        if self.max_bytes == 0 || self.max_bytes > 16 << 30 {
            return Err(Invalid(format!(
                "hold.max_bytes {} must be between 1 and 16 GiB",
                self.max_bytes
            )));
        }
        if !(100..=3_600_000).contains(&self.deadline_ms) {
            return Err(Invalid(format!(
                "hold.deadline_ms {} must be between 100 and 3600000",
                self.deadline_ms
            )));
        }
        Ok(())
    }
}

/// The engine replicas of a service, read from the EndpointSlices of a Kubernetes
/// Service (`GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices?
/// labelSelector=kubernetes.io/service-name=<service>`), the standard way to follow a
/// Service's ready pods. Ready endpoints get relays; a terminating one gets nothing new
/// and its relays in flight finish.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineDiscovery {
    /// The engine Service's name.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The Service port's name (EndpointSlice ports carry the Service port's name).
    pub port: String,
    /// How often the EndpointSlices are read, milliseconds.
    #[serde(default = "default_discovery_period_ms")]
    pub period_ms: u64,
    /// The API server's URL; unset: `LODE_KUBE_API` if set, else the pod's own
    /// (`KUBERNETES_SERVICE_HOST`, the service account's CA and token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// Default `discovery.period_ms`.
pub const DEFAULT_DISCOVERY_PERIOD_MS: u64 = 1000;

fn default_discovery_period_ms() -> u64 {
    DEFAULT_DISCOVERY_PERIOD_MS
}

impl EngineDiscovery {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (what, v) in [
            ("service", &self.service),
            ("namespace", &self.namespace),
            ("port", &self.port),
        ] {
            let dns_label = !v.is_empty()
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !dns_label {
                return Err(Invalid(format!(
                    "discovery.{what} {v:?} must be a DNS label (a-z, 0-9, '-', at most 63)"
                )));
            }
        }
        if let Some(u) = &self.api_url
            && !is_http_url(u)
        {
            return Err(Invalid(format!(
                "discovery.api_url {u:?} must be http:// or https://"
            )));
        }
        if !(100..=60_000).contains(&self.period_ms) {
            return Err(Invalid(format!(
                "discovery.period_ms {} must be between 100 and 60000",
                self.period_ms
            )));
        }
        Ok(())
    }
}

/// How the relay tier picks an engine replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Routing {
    /// The replica that recently served the longest prefix of the prompt, within the
    /// load bound; least-loaded when none did.
    #[default]
    Prefix,
    /// The replica with the fewest relays in flight.
    LeastLoaded,
    /// Each replica in turn.
    RoundRobin,
}

/// Default `load_epsilon`: no replica above 1.25 × the mean in flight.
pub const DEFAULT_LOAD_EPSILON: f64 = 0.25;
/// Default keys remembered per engine replica.
pub const DEFAULT_KEYS_PER_ENGINE: usize = 65_536;

/// The router's settings.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub mode: Routing,
    /// No replica takes a relay that would put it above `ceil((1 + ε) × mean)` in flight.
    #[serde(default = "default_load_epsilon")]
    pub load_epsilon: f64,
    /// Prefix keys remembered per replica, least recently used dropped first (size it
    /// like the engine's KV cache: its tokens × 4 bytes / `block_bytes`, at least).
    #[serde(default = "default_keys_per_engine")]
    pub keys_per_engine: usize,
    /// Distance between prefix keys inside a long message, bytes.
    #[serde(default = "default_block_bytes")]
    pub block_bytes: usize,
    /// A larger request body is not keyed (routed least-loaded).
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
}

impl RoutingConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.load_epsilon.is_finite() && self.load_epsilon >= 0.0) {
            return Err(Invalid(format!(
                "routing.load_epsilon {} must be a finite number ≥ 0",
                self.load_epsilon
            )));
        }
        if self.keys_per_engine == 0 {
            return Err(Invalid::new("routing.keys_per_engine must be positive"));
        }
        if self.block_bytes < 64 {
            return Err(Invalid::new("routing.block_bytes must be at least 64"));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 16 << 20 {
            return Err(Invalid::new(
                "routing.max_key_bytes must be between 1 and 16777216",
            ));
        }
        Ok(())
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            mode: Routing::default(),
            load_epsilon: DEFAULT_LOAD_EPSILON,
            keys_per_engine: DEFAULT_KEYS_PER_ENGINE,
            block_bytes: default_block_bytes(),
            max_key_bytes: default_max_key_bytes(),
        }
    }
}

fn default_load_epsilon() -> f64 {
    DEFAULT_LOAD_EPSILON
}

fn default_keys_per_engine() -> usize {
    DEFAULT_KEYS_PER_ENGINE
}

fn default_block_bytes() -> usize {
    4096
}

fn default_max_key_bytes() -> usize {
    512 << 10
}

impl ServiceConfig {
    /// A service in front of an engine at `backend_url` speaking `backend`, with the
    /// defaults for everything else.
    pub fn new(service_id: &str, backend_url: &str, backend: BackendKind) -> Self {
        Self {
            service_id: service_id.to_string(),
            backend_url: backend_url.to_string(),
            backend,
            triton_model: default_triton_model(),
            headers: BTreeMap::new(),
            basic_auth: None,
            forward_pocket_headers: false,
            request_timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            routes: default_routes(),
            engines: Vec::new(),
            discovery: None,
            hold: None,
            routing: RoutingConfig::default(),
        }
    }
}

/// Where mined relays go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The store's gRPC URL, e.g. `http://supplier-store:7070`.
    pub url: String,
    /// File holding the store's token (a mounted Secret).
    pub token_file: PathBuf,
    #[serde(default)]
    pub policy: StorePolicy,
    /// Mined relays waiting for the store's acknowledgement, at most.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// …and their bytes, at most (a relay is counted by its request and response).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
    /// The CA (PEM) that signed the store's TLS certificate: set, the URL is
    /// `https://…` and only that CA is trusted. (An `https://` URL without it trusts the
    /// system's roots.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The name the store's certificate must carry, whatever host the URL names
    /// (default `store.lode.internal`, the name in the certificates lode's operator
    /// issues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

impl StoreConfig {
    /// The store at `url` with its token in `token_file`; queue policy and size default.
    pub fn new(url: &str, token_file: impl Into<PathBuf>) -> Self {
        Self {
            url: url.to_string(),
            token_file: token_file.into(),
            policy: StorePolicy::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            ca_file: None,
            tls_server_name: None,
        }
    }

    /// The name a store certificate lode's operator issues carries.
    pub const OPERATOR_TLS_NAME: &str = "store.lode.internal";

    /// The store's CA file and certificate name, when it speaks TLS with a private CA.
    pub fn tls_parts(&self) -> Option<(PathBuf, String)> {
        let ca = self.ca_file.clone()?;
        Some((
            ca,
            self.tls_server_name
                .clone()
                .unwrap_or_else(|| Self::OPERATOR_TLS_NAME.to_string()),
        ))
    }
}

/// lode's serve configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Relay port (HTTP/1.1 and HTTP/2 cleartext).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin port: `/metrics`, `/healthz`, `/readyz`, `/demand`.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub chain: NodeConfig,
    pub store: StoreConfig,
    /// Supplier operator key files (hex or `pocketd keys export` armor); relays for
    /// other suppliers are refused.
    pub signing_key_files: Vec<PathBuf>,
    /// Passphrase of armored key files (prefer `LODE_KEY_PASSPHRASE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_passphrase: Option<String>,
    pub services: Vec<ServiceConfig>,
    /// Serve relays beyond the application's per-session budget (spec §5.3).
    #[serde(default)]
    pub enable_over_servicing: bool,
    /// Refuse the relays of applications with no delegated gateway. Their ring holds
    /// the public placeholder key, whose secret anyone can derive, so anyone can sign
    /// their relays (and spend their stake with this supplier). The chain accepts such
    /// relays, hence off by default; on, those applications are not served at all, even
    /// when they sign their own relays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuse_placeholder_ring: bool,
    /// Streams: later chunks are flushed to the gateway after this long…
    #[serde(default = "default_batch_ms")]
    pub stream_batch_ms: u64,
    /// …or once this many bytes are pending. The first chunk is always sent at once.
    #[serde(default = "default_batch_bytes")]
    pub stream_batch_bytes: usize,
    /// Open connections on the relay port, at most; later ones wait until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Memory (MiB) for the point tables that speed up the ring signatures of busy
    /// applications (about 0.6 MiB per point; least recently used out first). 0: none.
    #[serde(default = "default_ring_table_mib")]
    pub ring_table_mib: usize,
    /// Timeouts and the in-flight body budget of the relay port.
    #[serde(default = "default_limits")]
    pub limits: ConnectionLimits,
    /// A file holding the digest of the weights the engine beside serve loads
    /// (`blake3:<64 hex>`, as the pod's `weights-digest` step writes it): shown on
    /// `/metrics` as `lode_serve_model_info{digest="…"} 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest_file: Option<PathBuf>,
}

fn default_triton_model() -> String {
    DEFAULT_TRITON_MODEL.into()
}
fn default_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECONDS
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_admin() -> String {
    DEFAULT_ADMIN.into()
}
fn default_queue() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_batch_ms() -> u64 {
    DEFAULT_STREAM_BATCH_MS
}
fn default_batch_bytes() -> usize {
    DEFAULT_STREAM_BATCH_BYTES
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_ring_table_mib() -> usize {
    DEFAULT_RING_TABLE_MIB
}
fn default_queue_bytes() -> usize {
    DEFAULT_QUEUE_BYTES
}
fn default_limits() -> ConnectionLimits {
    ConnectionLimits::with_body_budget(DEFAULT_IN_FLIGHT_BODY_BYTES)
}

impl ServeConfig {
    /// A configuration serving `services` for the suppliers whose keys are in
    /// `signing_key_files`, with the defaults for everything else.
    pub fn new(
        chain: NodeConfig,
        store: StoreConfig,
        signing_key_files: Vec<PathBuf>,
        services: Vec<ServiceConfig>,
    ) -> Self {
        Self {
            listen: default_listen(),
            admin: default_admin(),
            chain,
            store,
            signing_key_files,
            key_passphrase: None,
            services,
            enable_over_servicing: false,
            refuse_placeholder_ring: false,
            stream_batch_ms: DEFAULT_STREAM_BATCH_MS,
            stream_batch_bytes: DEFAULT_STREAM_BATCH_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ring_table_mib: DEFAULT_RING_TABLE_MIB,
            limits: default_limits(),
            model_digest_file: None,
        }
    }

    /// The configuration with its secrets replaced by `<redacted>`: the key passphrase,
    /// basic-auth passwords and every header value sent to engines (engine API keys
    /// travel there). What `serve --check` prints.
    pub fn redacted(&self) -> Self {
        const HIDDEN: &str = "<redacted>";
        let mut shown = self.clone();
        if shown.key_passphrase.is_some() {
            shown.key_passphrase = Some(HIDDEN.into());
        }
        for s in &mut shown.services {
            if let Some(a) = &mut s.basic_auth {
                a.password = HIDDEN.into();
            }
            for v in s.headers.values_mut() {
                *v = HIDDEN.into();
            }
        }
        shown
    }

    /// Parses lode's YAML and checks it ([`Self::validate`]).
    pub fn from_yaml(text: &str) -> Result<Self, Invalid> {
        let c: Self = crate::from_yaml(text)?;
        c.validate()?;
        Ok(c)
    }

    /// The YAML serve reads back as this configuration.
    pub fn to_yaml(&self) -> String {
        crate::to_yaml(self)
    }

    pub fn stream_batch_interval(&self) -> Duration {
        Duration::from_millis(self.stream_batch_ms)
    }

    /// What serve needs to run: a service and a key, services with valid on-chain ids
    /// (each once) in front of http(s) engines with positive timeouts, room in the store
    /// queue, room for connections.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.services.is_empty() {
            return Err(Invalid::new("at least one service is required"));
        }
        if self.signing_key_files.is_empty() {
            return Err(Invalid::new("at least one signing key file is required"));
        }
        let mut seen = BTreeSet::new();
        for s in &self.services {
            if !seen.insert(&s.service_id) {
                return Err(Invalid(format!(
                    "service {:?} is configured twice",
                    s.service_id
                )));
            }
            if !is_service_id(&s.service_id) {
                return Err(Invalid(format!(
                    "service id {:?} is not a valid on-chain id (1–42 of [a-zA-Z0-9_-])",
                    s.service_id
                )));
            }
            if !is_http_url(&s.backend_url) {
                return Err(Invalid(format!(
                    "service {:?}: backend_url {:?} must be http:// or https://",
                    s.service_id, s.backend_url
                )));
            }
            if s.request_timeout_seconds == 0 {
                return Err(Invalid(format!(
                    "service {:?}: request_timeout_seconds must be positive",
                    s.service_id
                )));
            }
            if s.routes.is_empty() {
                return Err(Invalid(format!(
                    "service {:?}: routes must name at least one engine route",
                    s.service_id
                )));
            }
            for r in &s.routes {
                r.validate()
                    .map_err(|e| Invalid(format!("service {:?}: {e}", s.service_id)))?;
            }
            if let Some(e) = s.engines.iter().find(|e| !is_http_url(e)) {
                return Err(Invalid(format!(
                    "service {:?}: engine {e:?} must be http:// or https://",
                    s.service_id
                )));
            }
            if !s.engines.is_empty() && s.backend == BackendKind::Triton {
                return Err(Invalid(format!(
                    "service {:?}: several engine replicas are routed for OpenAI-compatible engines only",
                    s.service_id
                )));
            }
            s.routing
                .validate()
                .map_err(|e| Invalid(format!("service {:?}: {e}", s.service_id)))?;
            if let Some(d) = &s.discovery {
                if s.backend == BackendKind::Triton {
                    return Err(Invalid(format!(
                        "service {:?}: discovered engine replicas are routed for OpenAI-compatible engines only",
                        s.service_id
                    )));
                }
                d.validate()
                    .map_err(|e| Invalid(format!("service {:?}: {e}", s.service_id)))?;
            }
            if let Some(h) = &s.hold {
                if s.discovery.is_none() {
                    return Err(Invalid(format!(
                        "service {:?}: hold needs discovery (relays wait for a discovered engine replica)",
                        s.service_id
                    )));
                }
                if h.deadline_ms / 1000 >= s.request_timeout_seconds {
                    return Err(Invalid(format!(
                        "service {:?}: hold.deadline_ms {} must be below request_timeout_seconds ({} s)",
                        s.service_id, h.deadline_ms, s.request_timeout_seconds
                    )));
                }
                h.validate()
                    .map_err(|e| Invalid(format!("service {:?}: {e}", s.service_id)))?;
            }
        }
        let largest = self.services.iter().map(|s| s.max_body_bytes).max();
        self.limits.validate(largest.unwrap_or(0))?;
        if self.store.queue_bytes == 0 {
            return Err(Invalid::new("store.queue_bytes must be positive"));
        }
        if self.store.queue_capacity == 0 {
            return Err(Invalid::new("store.queue_capacity must be positive"));
        }
        if self.max_connections == 0 {
            return Err(Invalid::new("max_connections must be positive"));
        }
        Ok(())
    }
}
