//! `lode-gateway`: the OpenAI-compatible gateway to POKT suppliers.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "lode-gateway",
    version,
    about = "OpenAI-compatible gateway to POKT suppliers",
    long_about = "OpenAI-compatible gateway to POKT suppliers.\n\nServes /v1/chat/completions, /v1/completions (streaming or not) and /v1/models. Each request's model maps to a POKT service (`models:` in the config) and its API key to an application (`applications[].api_keys`). The gateway finds the application's session on chain, picks a supplier by score, ring-signs the relay with the gateway key, verifies the supplier's signature on the answer (each batch of a stream), and fails over to another supplier of the session on errors. Admin port: /metrics, /healthz, /readyz, /suppliers (scores)."
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(long, env = "LODE_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Print the configuration as understood and exit.
    #[arg(long)]
    check: bool,
    /// Log as JSON lines.
    #[arg(long, env = "LODE_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // An unwritable log line is dropped, not reported with a panicking `eprintln!`.
        .log_internal_errors(false);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = lode_gateway::config::load(&cli.config)?;
    if cli.check {
        let mut shown = config.clone();
        if shown.key_passphrase.is_some() {
            shown.key_passphrase = Some("<redacted>".into());
        }
        for a in &mut shown.applications {
            a.api_keys = a.api_keys.iter().map(|_| "<redacted>".into()).collect();
        }
        println!("{shown:#?}");
        return Ok(());
    }
    let handle = lode_gateway::start(config).await?;
    tracing::info!(api = %handle.addr, admin = %handle.admin_addr, "gateway serving");
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
