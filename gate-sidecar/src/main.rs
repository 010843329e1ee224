//! `gate-sidecar`: parses the configuration, binds the listeners and runs the sidecar until
//! SIGINT or SIGTERM. Everything else lives in the `sluice_gate_sidecar` library.
#![forbid(unsafe_code)]

use clap::{CommandFactory as _, Parser as _};
use sluice_gate_sidecar::{Config, Listeners};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: every record is allocated on a channel task and freed after
/// librdkafka copied it, and glibc's arena locks showed up in the Kafka path's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout may be the record sink.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (full disk, closed pipe) is lost, not fatal: the
        // default reports it with `eprintln!`, which panics whichever task was logging.
        .log_internal_errors(false)
        .init();

    // Validate before binding anything, so a bad flag never leaves a socket behind; report it
    // the way clap reports a bad flag (message, usage, exit code 2).
    let config = match Config::parse().validated() {
        Ok(config) => config,
        Err(e) => Config::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                sluice_gate_sidecar::describe(&e),
            )
            .exit(),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build()?.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        sluice_gate_sidecar::run(config, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing the pod).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
