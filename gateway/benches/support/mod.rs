//! What the gateway benchmarks share.

use std::path::Path;

use lode_devnet::{Devnet, HRP, Running};

/// The gateway for the devnet's first application (API key `sk-bench`, no rate limit),
/// signing as its first gateway, with `sim-model` mapped to service `llm`.
pub async fn start_gateway(
    devnet: &Devnet,
    chain: &Running,
    dir: &Path,
) -> lode_gateway::GatewayHandle {
    let gateway_key = dir.join("gateway.key");
    std::fs::write(
        &gateway_key,
        lode_kernels::hex::encode(&devnet.keys().gateways[0].to_bytes()),
    )
    .expect("key");
    let app = &devnet.keys().applications[0];
    lode_gateway::start(
        lode_gateway::GatewayConfig::from_yaml(&format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nchain: {{grpc_url: '{}', rpc_url: '{}'}}\nsigning_key_file: '{}'\napplications: [{{address: {}, api_keys: [sk-bench], requests_per_second: 1000000}}]\nmodels: {{sim-model: llm}}\n",
            chain.grpc_url,
            chain.rpc_url,
            gateway_key.display(),
            app.public_key().address().to_bech32(HRP)
        ))
        .expect("gateway config"),
    )
    .await
    .expect("gateway")
}
