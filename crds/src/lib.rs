//! lode's custom resources, `lode.pokt.network/v1alpha1`:
//!
//! - [`Supplier`]: a supplier identity on chain (operator/owner, key Secret, stake, the
//!   services it offers) and its session store.
//! - [`ServiceModel`]: one model served for one POKT service on GPU pods (engine, model
//!   source, GPUs, replicas and autoscaling).
//! - [`GatewayPool`]: OpenAI-compatible gateways for applications.
//!
//! The CRD manifests under `crds/` are generated from these types (`cargo run -p
//! lode-crds --bin crdgen`); a test fails when they drift.

// kube's `printcolumn(...)` repeats `type_ = ...` in one attribute by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "lode.pokt.network";

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where the chain is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainEndpoints {
    /// Cosmos/poktroll gRPC, e.g. `http://pocket-node:9090`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub grpc_url: String,
    /// CometBFT RPC, e.g. `http://pocket-node:26657`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub rpc_url: String,
    /// The chain id (`pocket` on mainnet).
    #[serde(default = "default_chain_id")]
    pub chain_id: String,
}

fn default_chain_id() -> String {
    "pocket".into()
}

/// The supplier's session store (one per supplier, on a PersistentVolume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreSpec {
    /// Volume size, e.g. `20Gi`.
    #[serde(default = "default_store_size")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// When a serving pod answers a relay relative to the store acknowledging it:
    /// `queue` (default) answers at once and ships in the background from a bounded
    /// queue; `hold` answers only once the store has acknowledged the relay, so a
    /// relay answered is never unpaid even if its pod is killed at that moment.
    #[serde(default)]
    pub relay_policy: RelayPolicy,
}

/// See [`StoreSpec::relay_policy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RelayPolicy {
    #[default]
    Queue,
    Hold,
}

fn default_store_size() -> String {
    "20Gi".into()
}

impl Default for StoreSpec {
    fn default() -> Self {
        Self {
            size: default_store_size(),
            storage_class_name: None,
            relay_policy: RelayPolicy::Queue,
        }
    }
}

/// A service the supplier stakes for, served by a ServiceModel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupplierService {
    /// The on-chain service id.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,42}$"))]
    pub service_id: String,
    /// The ServiceModel (same namespace) that serves it.
    #[schemars(length(min = 1, max = 253))]
    pub service_model: String,
    /// Revenue shares in percent by address; the rest goes to the owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rev_share_percent: BTreeMap<String, u8>,
}

/// Settings of the claim and proof Jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSettings {
    /// Retries of a failed Job inside its window.
    #[serde(default = "default_backoff")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,
    /// Multiplies simulated gas (`--gas-adjustment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gas_adjustment: Option<String>,
    /// uPOKT per unit of gas (`--gas-prices`), e.g. `0.0001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gas_price: Option<String>,
    /// The largest fee a transaction may carry, uPOKT (`--max-fee-upokt`; 1000000 when
    /// unset). Stake, unstake, claim and proof transactions above it are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fee_upokt: Option<String>,
}

fn default_backoff() -> i32 {
    3
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff(),
            gas_adjustment: None,
            gas_price: None,
            max_fee_upokt: None,
        }
    }
}

/// A POKT supplier run by lode.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lode.pokt.network",
    version = "v1alpha1",
    kind = "Supplier",
    doc = "A POKT supplier run by lode: its on-chain identity, stake and services, and its session store.",
    namespaced,
    status = "SupplierStatus",
    shortname = "sup",
    category = "lode",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.operatorAddress"
    ),
    printcolumn(name = "Staked", type_ = "string", json_path = ".status.stakedUpokt"),
    printcolumn(name = "Services", type_ = "string", json_path = ".status.services"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Last claim",
        type_ = "string",
        json_path = ".status.lastClaim.outcome"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SupplierSpec {
    /// The operator address: signs relays, claims and proofs.
    #[schemars(regex(pattern = r"^pokt1[02-9ac-hj-np-z]{38}$"))]
    pub operator_address: String,
    /// The owner address (holds the stake, receives rewards); the operator when empty
    /// (custodial staking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^pokt1[02-9ac-hj-np-z]{38}$"))]
    pub owner_address: Option<String>,
    /// The operator's signing key: hex, or `pocketd keys export` armor (then
    /// `keyPassphraseSecretRef` too). Mounted only into serve pods and jobs.
    pub key_secret_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_passphrase_secret_ref: Option<SecretKeyRef>,
    /// The stake, in uPOKT (a decimal string).
    #[schemars(regex(pattern = r"^[1-9][0-9]*$"))]
    pub stake_upokt: String,
    /// The services offered.
    #[schemars(length(min = 1))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, self.exists_one(t, t.serviceId == s.serviceId))").message("each serviceId may appear once"))]
    pub services: Vec<SupplierService>,
    /// The public URL gateways reach this supplier's relay port at.
    #[schemars(regex(pattern = r"^https?://"))]
    pub public_endpoint: String,
    /// Refuse relays of applications with no delegated gateway: their ring holds a
    /// placeholder key whose secret is public, so anyone can sign their relays. The
    /// chain accepts such relays, so off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuse_placeholder_ring: bool,
    pub chain: ChainEndpoints,
    #[serde(default)]
    pub store: StoreSpec,
    #[serde(default)]
    pub jobs: JobSettings,
    /// Unstake from the chain when this Supplier is deleted (opt-in). The operator then
    /// holds the `lode.pokt.network/unstake` finalizer until a `relayminer unstake` Job
    /// has succeeded; the stake returns to the owner after the unbonding period. Off, a
    /// deleted Supplier stays staked on chain.
    #[serde(default)]
    pub unstake_on_delete: bool,
}

/// A claim or proof outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowOutcome {
    pub session_end_height: i64,
    /// `included`, `skipped`, `failed: …`, `missed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupplierStatus {
    /// The stake on chain, in uPOKT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staked_upokt: Option<String>,
    /// The services staked on chain, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<String>,
    /// Serve pods ready across the supplier's ServiceModels.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Sessions in the store whose reward is not settled yet (open, being frozen, frozen
    /// or claimed), as the store last reported them; absent while it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_in_flight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_claim: Option<WindowOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_proof: Option<WindowOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Staked`, `StoreReady`, `ClaimsHealthy`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The inference engine. `llamacpp` is llama.cpp's `llama-server`: one GGUF file
/// (`model.file`), on CPUs (`gpus.count: 0`) or with every layer on the pod's GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    #[default]
    Vllm,
    TensorrtLlm,
    Triton,
    Sglang,
    // llama.cpp's OpenAI-compatible `llama-server` (a variant's doc comment would make
    // the schema list it apart, out of order).
    Llamacpp,
    Custom,
}

impl EngineKind {
    /// The kind as a ServiceModel names it (`engine.kind`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::TensorrtLlm => "tensorrt-llm",
            Self::Triton => "triton",
            Self::Sglang => "sglang",
            Self::Llamacpp => "llamacpp",
            Self::Custom => "custom",
        }
    }

    /// Whether the engine runs without a GPU: llama.cpp does; a custom image may; vLLM's,
    /// SGLang's, TensorRT-LLM's and Triton's images need one.
    pub fn runs_on_cpu(self) -> bool {
        matches!(self, Self::Llamacpp | Self::Custom)
    }
}

/// Where the model weights come from (exactly one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// A PersistentVolumeClaim holding the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// An OCI image holding the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A URI: `hf://org/model[@revision]` and `https://…` are fetched once by lode into
    /// the weight cache (`cache`) before the engine starts; other schemes (`s3://…`) are
    /// passed to the engine, which loads them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The weight cache for a fetched `uri`: a PersistentVolumeClaim `<name>-weights` the
    /// operator creates, kept across pod restarts (fetched once), shared by the replicas
    /// its access mode lets share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<WeightCache>,
    /// The one weights file an engine that loads a single file reads (llama.cpp's GGUF,
    /// e.g. `qwen2.5-0.5b-instruct-q4_k_m.gguf`, or a split model's first part), relative
    /// to the PVC, the image's `/model` or the `hf://` repository; required for
    /// `llamacpp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$"))]
    pub file: Option<String>,
    /// The weights' digest (`blake3:…`, as `relayminer digest` prints it): each pod
    /// checks its weights before the engine starts and does not start on others. PVC,
    /// image and fetched (`hf://`, `https://`) sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^blake3:[0-9a-f]{64}$"))]
    pub digest: Option<String>,
}

/// The weight cache of a fetched model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightCache {
    /// Its size: the weights, and room for one file being fetched.
    #[serde(default = "default_cache_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// Its StorageClass (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Who shares it: the replicas on one node (`ReadWriteOnce`), or all of them
    /// (`ReadWriteMany`, where the storage offers it).
    #[serde(default)]
    pub access_mode: CacheAccess,
    /// A hub token (`HF_TOKEN`) for gated or private repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Where `hf://` repositories are fetched from: a mirror in the Hugging Face hub's
    /// URL layout (`https://huggingface.co` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/[^\s]*)?$"))]
    pub hub_url: Option<String>,
}

impl Default for WeightCache {
    fn default() -> Self {
        Self {
            size: default_cache_size(),
            storage_class_name: None,
            access_mode: CacheAccess::default(),
            token_secret_ref: None,
            hub_url: None,
        }
    }
}

fn default_cache_size() -> String {
    "100Gi".into()
}

/// The access mode of a weight cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CacheAccess {
    #[default]
    ReadWriteOnce,
    ReadWriteMany,
}

impl CacheAccess {
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// Whether lode fetches `uri` itself (into the weight cache) before the engine starts.
pub fn fetched_uri(uri: &str) -> bool {
    uri.starts_with("hf://") || uri.starts_with("https://") || uri.starts_with("http://")
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    pub kind: EngineKind,
    /// The engine image (a sensible default per kind when empty; required for custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra engine arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The engine's port.
    #[serde(default = "default_engine_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Run the engine as root. Off by default: the engine runs as an unprivileged
    /// user with every capability dropped, beside the relayminer that holds the
    /// supplier's key. Turn on only for an image that cannot run otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
}

fn default_engine_port() -> i32 {
    8000
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// GPUs per pod; 0 runs the engine on CPUs (`llamacpp` and `custom` only).
    #[schemars(range(min = 0, max = 16))]
    pub count: i32,
    /// `nvidia.com/gpu.product` to select, e.g. `NVIDIA-H100-80GB-HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The extended resource name (a MIG slice such as `nvidia.com/mig-3g.40gb`).
    #[serde(default = "default_gpu_resource")]
    pub resource_name: String,
    /// Tolerations for GPU node taints, as `key[=value]:Effect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<String>,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            count: 1,
            product: None,
            resource_name: default_gpu_resource(),
            tolerations: Vec::new(),
        }
    }
}

/// How replicas follow relay demand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalingMode {
    /// lode's demand autoscaler (reads serve pods' admin ports).
    #[default]
    Lode,
    /// Emit a HorizontalPodAutoscaler instead.
    Hpa,
    /// Emit a KEDA ScaledObject instead.
    Keda,
    /// Replicas stay at `spec.replicas`.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    #[serde(default)]
    pub mode: AutoscalingMode,
    /// In-flight plus queued relays per replica to aim for.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_in_flight_per_replica: i32,
    /// Seconds of lower demand before scaling down.
    #[serde(default = "default_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// Completion tokens per second per replica to aim for: a second signal, for
    /// engines whose throughput saturates before their in-flight count does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_completion_tokens_per_second_per_replica: Option<i32>,
    /// Requests waiting per engine replica to aim for, as the engines report them
    /// (vLLM's `num_requests_waiting`, llama.cpp's `requests_deferred`, Triton's pending
    /// requests): a signal for loads whose queue grows before relays in flight show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_waiting: Option<i32>,
    /// KV-cache use per engine replica to aim for, in percent (vLLM's
    /// `kv_cache_usage_perc`, TensorRT-LLM's used blocks): a signal for long prompts that
    /// fill the cache with few requests in flight.
    #[serde(
        default,
        rename = "targetKVCacheUsage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_kv_cache_usage: Option<i32>,
    /// With `minReplicas: 0`: seconds without a relay before the last engine replica
    /// goes. The relay tier stays up, holds the next relay and wakes the engines; an
    /// engine still starting is never taken back, however long its cold start.
    #[serde(default = "default_idle")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_to_zero_idle_seconds: i32,
}

fn default_target() -> i32 {
    8
}
fn default_window() -> i32 {
    300
}
fn default_idle() -> i32 {
    600
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            mode: AutoscalingMode::Lode,
            target_in_flight_per_replica: default_target(),
            scale_down_stabilization_seconds: default_window(),
            target_completion_tokens_per_second_per_replica: None,
            target_waiting: None,
            target_kv_cache_usage: None,
            scale_to_zero_idle_seconds: default_idle(),
        }
    }
}

/// How the relay tier picks an engine replica for a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EngineRouting {
    /// The replica that recently served the longest prefix of the prompt (its KV cache
    /// likely holds it), within the load bound; least-loaded when none did.
    #[default]
    Prefix,
    /// The replica with the fewest relays in flight.
    LeastLoaded,
    /// Each replica in turn.
    RoundRobin,
}

/// The relay tier: CPU pods running `relayminer serve` with the supplier's key, in front
/// of the engine replicas (GPU pods, no key), routing each relay to one of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayTierSpec {
    #[serde(default)]
    pub routing: EngineRouting,
    /// No engine replica takes a relay that would put it above (100 + this) % of the
    /// mean relays in flight: a hot prefix spills over instead of queueing on one.
    #[serde(default = "default_load_epsilon_percent")]
    #[schemars(range(min = 0, max = 1000))]
    pub load_epsilon_percent: i32,
    /// Prefix keys remembered per engine replica (size it like the engine's KV cache:
    /// its tokens × 4 / 4096, at least).
    #[serde(default = "default_keys_per_engine")]
    #[schemars(range(min = 1, max = 16777216))]
    pub keys_per_engine: i32,
    /// Relay pods wanted now (the autoscaler writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Relay pods, at least and at most; the autoscaler scales between them by the
    /// tier's own relays in flight.
    #[serde(default = "default_relay_min")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[serde(default = "default_relay_max")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Relays in flight per relay pod to aim for.
    #[serde(default = "default_relay_target")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_in_flight_per_replica: i32,
    /// While no engine replica is ready (the model at zero, waking up), each relay pod
    /// holds relays until one is: each for at most this many seconds, then answered 503
    /// with `Retry-After` so the gateway tries another supplier. Keep it below the
    /// gateways' request timeout.
    #[serde(default = "default_hold_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub hold_seconds: i32,
    /// Relays held at once per relay pod, at most (more are answered 503 at once).
    #[serde(default = "default_hold_relays")]
    #[schemars(range(min = 1, max = 100000))]
    pub hold_relays: i32,
    /// Request bytes held at once per relay pod, MiB.
    #[serde(default = "default_hold_mib", rename = "holdMiB")]
    #[schemars(range(min = 1, max = 16384))]
    pub hold_mib: i32,
}

fn default_load_epsilon_percent() -> i32 {
    25
}
fn default_keys_per_engine() -> i32 {
    65_536
}
fn default_relay_min() -> i32 {
    2
}
fn default_relay_max() -> i32 {
    8
}
fn default_relay_target() -> i32 {
    256
}
fn default_hold_seconds() -> i32 {
    30
}
fn default_hold_relays() -> i32 {
    256
}
fn default_hold_mib() -> i32 {
    64
}

impl Default for RelayTierSpec {
    fn default() -> Self {
        Self {
            routing: EngineRouting::default(),
            replicas: None,
            load_epsilon_percent: default_load_epsilon_percent(),
            keys_per_engine: default_keys_per_engine(),
            min_replicas: default_relay_min(),
            max_replicas: default_relay_max(),
            target_in_flight_per_replica: default_relay_target(),
            hold_seconds: default_hold_seconds(),
            hold_relays: default_hold_relays(),
            hold_mib: default_hold_mib(),
        }
    }
}

/// One model served for one POKT service on GPU pods.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lode.pokt.network",
    version = "v1alpha1",
    kind = "ServiceModel",
    doc = "One model served for one POKT service on GPU pods: engine, model source, GPUs, replicas and autoscaling.",
    namespaced,
    status = "ServiceModelStatus",
    shortname = "sm",
    category = "lode",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.serviceId"),
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine.kind"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Relays",
        type_ = "integer",
        json_path = ".status.relayReadyReplicas"
    ),
    printcolumn(
        name = "Prefix-Hit%",
        type_ = "integer",
        json_path = ".status.prefixHitPercent"
    ),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.modelDigest"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.relay) || !has(self.relay.minReplicas) || !has(self.relay.maxReplicas) || self.relay.minReplicas <= self.relay.maxReplicas").message("relay.minReplicas must not exceed relay.maxReplicas"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)").message("replicas must be between minReplicas and maxReplicas"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.model.pvc) ? 1 : 0) + (has(self.model.image) ? 1 : 0) + (has(self.model.uri) ? 1 : 0) == 1").message("model needs exactly one of pvc, image or uri"))]
#[x_kube(validation = kube::core::Rule::new("self.engine.kind != 'custom' || has(self.engine.image)").message("a custom engine needs an image"))]
#[x_kube(validation = kube::core::Rule::new("self.engine.kind != 'llamacpp' || has(self.model.file)").message("a llamacpp engine loads one GGUF file: set model.file"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.gpus) || self.gpus.count > 0 || self.engine.kind == 'llamacpp' || self.engine.kind == 'custom'").message("this engine needs a GPU (gpus.count >= 1); llamacpp and custom engines may run on CPUs"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceModelSpec {
    /// The on-chain service id this model serves.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,42}$"))]
    pub service_id: String,
    /// The model name the engine serves (OpenAI `model`).
    #[schemars(length(min = 1))]
    pub model_name: String,
    pub model: ModelSource,
    pub engine: EngineSpec,
    #[serde(default)]
    pub gpus: GpuSpec,
    /// Replicas wanted now (the scale subresource; the autoscaler writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// The relay tier in front of the engines, and how it routes.
    #[serde(default)]
    pub relay: RelayTierSpec,
    /// Compute units per relay the supplier expects (checked against the chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub compute_units_per_relay: Option<u64>,
}

/// One scaling decision, kept in a bounded history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    pub time: String,
    pub from: i32,
    pub to: i32,
    pub reason: String,
    /// Relays in flight across the ready serving pods when it was decided.
    #[serde(default)]
    pub in_flight: i64,
    /// Completion tokens per second across them.
    #[serde(default)]
    pub completion_tokens_per_second: i64,
}

/// A ServiceModel's status. Two writers share it, each applying (server-side) only the
/// fields it owns: the serving controller (`replicas`, `readyReplicas`, `selector`,
/// `observedGeneration`, `conditions`) and the autoscaler (`pendingReplicas`,
/// `observedDemand`, `decisions`). A field a writer leaves `None` is not sent, so it
/// stays the other writer's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceModelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pods waiting for a GPU node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_replicas: Option<i32>,
    /// The pods' label selector (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-flight plus queued relays across the pods, last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_demand: Option<i64>,
    /// Relay pods, and of them the ready ones (the relay tier's Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ready_replicas: Option<i32>,
    /// Of the prompt bytes the relay tier routed by prefix since its pods started, the
    /// percentage sent to an engine replica that had been sent that prefix before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_hit_percent: Option<i32>,
    /// The last cold start the autoscaler saw: from a scale-up decision to its engine
    /// replicas all Ready (pod scheduling, a GPU node if one had to come, weights,
    /// engine load), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_milliseconds: Option<i64>,
    /// The weights' digest (`blake3:…` over the sorted manifest of per-file BLAKE3
    /// digests), as the serving pods' `weights-digest` init steps computed it before
    /// their engines started; absent while they disagree or one refused its weights
    /// (condition `WeightsVerified` says why). With `model.digest` pinned, only that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<ScaleDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How a gateway picks among a session's suppliers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Health and latency scores, failing over to another supplier on error.
    #[default]
    Scored,
    RoundRobin,
    Random,
}

/// OpenAI-compatible gateways for applications.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lode.pokt.network",
    version = "v1alpha1",
    kind = "GatewayPool",
    doc = "OpenAI-compatible gateways that relay applications' requests to POKT suppliers.",
    namespaced,
    status = "GatewayPoolStatus",
    shortname = "gwp",
    category = "lode",
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gatewayAddress"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = kube::core::Rule::new("self.applications.size() <= 1 || has(self.apiKeysSecretRef)").message("with several applications, apiKeysSecretRef is required: the API key selects the application"))]
#[serde(rename_all = "camelCase")]
pub struct GatewayPoolSpec {
    #[schemars(regex(pattern = r"^pokt1[02-9ac-hj-np-z]{38}$"))]
    pub gateway_address: String,
    pub key_secret_ref: SecretKeyRef,
    /// Applications that delegated to this gateway.
    #[schemars(length(min = 1))]
    pub applications: Vec<String>,
    /// OpenAI model name → on-chain service id.
    #[schemars(length(min = 1))]
    pub services: BTreeMap<String, String>,
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    #[serde(default)]
    pub routing: RoutingPolicy,
    pub chain: ChainEndpoints,
    /// A Secret in this namespace holding the API keys (`Authorization: Bearer …`, the
    /// OpenAI SDK's `api_key`): one entry per application, named by its address, with
    /// that application's keys one per line. Required with several applications.
    /// Without it the gateway takes any request that reaches it, and its
    /// NetworkPolicy then admits only this namespace's pods (unless `clients` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret_ref: Option<SecretRef>,
    /// Who may reach the API port (NetworkPolicy peers, e.g. the ingress controller's
    /// namespace). Empty: everyone when API keys are set, else this namespace's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPoolStatus {
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The three CRDs as YAML documents, file name first (what `crdgen` writes).
pub fn manifests() -> Vec<(&'static str, String)> {
    let yaml = |v: &serde_json::Value| serde_saphyr::to_string(v).expect("CRDs serialize");
    vec![
        (
            "suppliers.yaml",
            yaml(&serde_json::to_value(Supplier::crd()).expect("json")),
        ),
        (
            "servicemodels.yaml",
            yaml(&serde_json::to_value(ServiceModel::crd()).expect("json")),
        ),
        (
            "gatewaypools.yaml",
            yaml(&serde_json::to_value(GatewayPool::crd()).expect("json")),
        ),
    ]
}
