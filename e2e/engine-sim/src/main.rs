//! `engine-sim`: a vLLM-like OpenAI-compatible engine without a GPU.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lode_engine_sim::{EngineSim, KvConfig, SimConfig};

/// Serves `/v1/chat/completions`, `/v1/completions` (streaming or not, with `usage`),
/// `/v1/models`, vLLM-style `/metrics` and `/health`, generating `max_tokens` words at
/// `--tokens-per-second` after `--ttft-ms`; with `--triton-listen`, the same engine over
/// Triton's KServe v2 gRPC (`ModelInfer`, `ModelStreamInfer`). `POST /sim/mode?mode=error500|hang|ok` switches
/// failure modes at run time.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8000", env = "ENGINE_SIM_LISTEN")]
    listen: SocketAddr,
    /// Model name served.
    #[arg(long, default_value = "sim-model", env = "ENGINE_SIM_MODEL")]
    model: String,
    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    /// Tokens per second per request after the first (0: all at once).
    #[arg(long, default_value_t = 200.0)]
    tokens_per_second: f64,
    /// Completion length when a request names no `max_tokens`.
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Also serve Triton's KServe v2 gRPC API (TensorRT-LLM text tensors) here.
    #[arg(long)]
    triton_listen: Option<SocketAddr>,
    /// Requests generating at once; the rest wait (and show as waiting in /metrics).
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    /// Model a KV cache of this many tokens (0: none). Prefill then costs
    /// `--prefill-us-per-token` per prompt token not cached, on one lane, and decode
    /// `--decode-ms-per-token` per output token, instead of `--ttft-ms` and
    /// `--tokens-per-second`; where requests go decides what they cost.
    #[arg(long, default_value_t = 0)]
    kv_capacity_tokens: u64,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    kv_block_tokens: u64,
    /// Prefill time per prompt token not cached, microseconds.
    #[arg(long, default_value_t = 100)]
    prefill_us_per_token: u64,
    /// Decode time per output token of one sequence, milliseconds.
    #[arg(long, default_value_t = 2.0)]
    decode_ms_per_token: f64,
    /// Time to load the model before the port opens, milliseconds (a real engine's cold
    /// start: weights into GPU memory, CUDA graphs).
    #[arg(long, default_value_t = 0)]
    load_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if a.load_ms > 0 {
        eprintln!("engine-sim loading the model for {} ms", a.load_ms);
        tokio::time::sleep(Duration::from_millis(a.load_ms)).await;
    }
    let sim = EngineSim::new(SimConfig {
        model: a.model,
        ttft: Duration::from_millis(a.ttft_ms),
        tokens_per_second: a.tokens_per_second,
        default_max_tokens: a.max_tokens,
        max_num_seqs: a.max_num_seqs,
        kv: (a.kv_capacity_tokens > 0).then(|| KvConfig {
            capacity_tokens: a.kv_capacity_tokens,
            block_tokens: a.kv_block_tokens.max(1),
            prefill_per_token: Duration::from_micros(a.prefill_us_per_token),
            decode_per_token: Duration::from_secs_f64(a.decode_ms_per_token.max(0.0) / 1e3),
        }),
    });
    if let Some(t) = a.triton_listen {
        let (addr, _) = sim
            .serve_triton(t, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        eprintln!("engine-sim Triton gRPC on http://{addr}");
    }
    let (addr, task) = sim
        .serve(a.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    eprintln!("engine-sim listening on http://{addr}");
    task.await?;
    Ok(())
}
