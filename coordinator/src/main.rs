//! `coordinator`: the sluice coordinator binary. Thin: parse the configuration, set up logging,
//! load the state and the webhook certificate, bind every listener, serve until ctrl-c or
//! SIGTERM. Everything else is in the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice_coordinator::{Config, Coordinator, Listeners};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (full disk, closed pipe) is lost, not fatal: the
        // default reports it with `eprintln!`, which panics whichever task was logging.
        .log_internal_errors(false)
        .init();
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Configuration, certificate and state errors surface before any port is bound.
    let (listen, webhook, metrics) = (config.listen, config.webhook_listen, config.metrics_listen);
    let coordinator = Coordinator::open(config)
        .await
        .context("cannot start the coordinator")?;
    let grpc = bind(listen).await?;
    let webhook = match webhook {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let metrics = match metrics {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let listeners = Listeners {
        grpc,
        webhook,
        metrics,
    };
    coordinator
        .serve_with(listeners, shutdown_signal())
        .await
        .context("coordinator failed")
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Completes on ctrl-c or SIGTERM (what Kubernetes sends on pod deletion).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
