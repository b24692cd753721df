//! `devnet`: a local POKT chain on loopback for trying lode without a real network.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lode_devnet::{Devnet, DevnetConfig, HRP};
use serde_json::json;

/// Runs an in-process POKT chain: poktroll's gRPC queries on --grpc-addr, CometBFT RPC
/// and websocket on --rpc-addr, blocks every --block-time. It prints the chain's
/// accounts (with their test keys) as JSON, then runs until Ctrl-C.
///
/// Point a relayminer at it with `query_node_grpc_url: http://<grpc-addr>` and
/// `query_node_rpc_url` / `tx_node_rpc_url: http://<rpc-addr>`. Produce blocks by hand
/// with `curl -X POST 'http://<rpc-addr>/devnet/advance?blocks=5'` (useful with
/// --block-time 0), and read settled claims at `http://<rpc-addr>/devnet/settlements`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seed of every key, address and block hash: the same seed gives the same chain.
    #[arg(long, default_value_t = 1, env = "DEVNET_SEED")]
    seed: u64,
    /// CometBFT RPC and websocket address.
    #[arg(long, default_value = "127.0.0.1:26657")]
    rpc_addr: SocketAddr,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    grpc_addr: SocketAddr,
    /// Time between blocks, e.g. `2s` or `500ms`; `0` produces blocks only on demand.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    block_time: Duration,
    /// Blocks per session (poktroll's default is 10; mainnet uses 20).
    #[arg(long, default_value_t = 10)]
    blocks_per_session: i64,
    /// Funded supplier operator accounts to create (they stake with MsgStakeSupplier).
    #[arg(long, default_value_t = 2)]
    suppliers: usize,
    /// Chain id.
    #[arg(long, default_value = "pocket-devnet")]
    chain_id: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 2s or 500ms"))?;
    match unit {
        "" if n == 0 => Ok(Duration::ZERO),
        "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?} is not a duration like 2s or 500ms")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.blocks_per_session > 0,
        "--blocks-per-session must be positive"
    );
    let mut config = DevnetConfig::new(args.seed);
    config.chain_id = args.chain_id;
    config.shared.num_blocks_per_session = args.blocks_per_session;
    config.suppliers = args.suppliers;
    let devnet = Devnet::new(&config);
    let block_time = (!args.block_time.is_zero()).then_some(args.block_time);
    let running = devnet
        .serve(args.rpc_addr, args.grpc_addr, block_time)
        .await
        .with_context(|| format!("binding {} and {}", args.rpc_addr, args.grpc_addr))?;
    let account = |k: &lode_kernels::crypto::SecretKey| json!({"address": k.public_key().address().to_bech32(HRP), "key_hex": lode_kernels::hex::encode(&k.to_bytes())});
    let keys = devnet.keys();
    let summary = json!({
        "chain_id": config.chain_id,
        "rpc_url": running.rpc_url,
        "grpc_url": running.grpc_url,
        "services": config.services.iter().map(|s| json!({"id": s.id, "compute_units_per_relay": s.compute_units_per_relay})).collect::<Vec<_>>(),
        "applications": keys.applications.iter().map(account).collect::<Vec<_>>(),
        "gateways": keys.gateways.iter().map(account).collect::<Vec<_>>(),
        "suppliers": keys.suppliers.iter().map(account).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("stopping at height {}", devnet.height());
    running.shutdown().await;
    Ok(())
}
