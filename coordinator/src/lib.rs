//! The sluice coordinator: owns every pipeline's cutover state, chooses the barrier and serves
//! the gRPC APIs. All protocol decisions are taken by the pure state machine
//! [`sluice_core::pipeline::Pipeline`]; this crate is the networking and storage around it.
//!
//! Layout:
//! - [`config`]: command-line / environment configuration and its validation.
//! - [`store`]: durable state ([`store::StateStore`], the atomic JSON [`store::FileStore`]).
//! - `engine`: the single task owning the pipelines; persists, then pushes assignments to gates,
//!   then events to watchers, after every input.
//! - `gate_service`: `sluice.v1.GateControl` (one bidirectional stream per gate).
//! - `cutover_service`: `sluice.v1.Cutover` (start, abort, get, list, watch).
//! - `status`: core state and events to the `Cutover` wire types.
//! - `grpc_tls`: gRPC over TLS (`--grpc-tls-cert`/`--grpc-tls-key`): the accept loop that
//!   hands TLS connections to tonic, with the webhook's reloading certificate resolver.
//! - [`webhook`]: the Kubernetes mutating admission webhook (HTTPS) that injects the gate
//!   sidecar into Flink TaskManager pods, and its certificate reloading.
//! - [`metrics`]: Prometheus metrics (plain HTTP).
//! - `accept`: the bounded accept loop step the HTTP servers and gRPC TLS share.
//!
//! Server reflection (v1 and v1alpha) and the standard health service are served alongside.
//!
//! Entry points: [`run`], or [`Coordinator::open`] then [`Coordinator::serve`] (gRPC only) or
//! [`Coordinator::serve_with`] (gRPC, webhook, metrics) to load the state and the webhook and
//! gRPC certificates before binding any listener.
#![forbid(unsafe_code)]

mod accept;
pub mod config;
mod cutover_service;
mod engine;
mod gate_service;
mod grpc_tls;
pub mod metrics;
mod status;
pub mod store;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use sluice_proto::v1::cutover_server::CutoverServer;
use sluice_proto::v1::gate_control_server::GateControlServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use crate::config::{Config, ConfigError};
pub use crate::engine::PersistError;
use crate::engine::{ENGINE_QUEUE, Engine, EngineHandle, OpenError, Timing};
use crate::metrics::Metrics;
use crate::store::{FileStore, StateStore, StoreError};
use crate::webhook::InjectionConfig;
use crate::webhook::tls::{CertUse, ReloadingCert, TlsError};

/// Why the coordinator could not start or stopped with a failure.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    /// The stored state could not be loaded.
    #[error("cannot load the coordinator state")]
    Load(#[source] StoreError),
    /// The state could not be written (at start-up, or before announcing a decision).
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build the gRPC reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("cannot read the listener's address")]
    Listener(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The engine task panicked.
    #[error("the coordinator engine task failed")]
    EngineTask(#[source] tokio::task::JoinError),
    /// The webhook certificate or key could not be loaded.
    #[error("cannot load the webhook certificate")]
    WebhookTls(#[source] TlsError),
    /// The gRPC certificate or key (--grpc-tls-cert, --grpc-tls-key) could not be loaded.
    #[error("cannot load the gRPC TLS certificate")]
    GrpcTls(#[source] TlsError),
    /// A webhook listener was given but the webhook is not configured (no --webhook-listen).
    #[error("a webhook listener was given but --webhook-listen is not set")]
    WebhookNotConfigured,
}

/// The listeners to serve on, bound by the caller (so that configuration and state errors
/// surface before any port is bound, and tests can bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC (GateControl, Cutover, health, reflection); TLS with --grpc-tls-cert.
    pub grpc: TcpListener,
    /// The admission webhook (HTTPS); needs --webhook-listen and its certificate.
    pub webhook: Option<TcpListener>,
    /// Prometheus metrics (HTTP).
    pub metrics: Option<TcpListener>,
}

/// The webhook's loaded configuration.
struct Webhook {
    injection: Arc<InjectionConfig>,
    cert: Arc<ReloadingCert>,
}

/// A coordinator whose state is loaded, ready to serve.
pub struct Coordinator {
    config: Config,
    store: Arc<dyn StateStore>,
    engine: Engine,
    webhook: Option<Webhook>,
    /// The gRPC listener's certificate, when it serves TLS.
    grpc_cert: Option<Arc<ReloadingCert>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.config)
            .field("store", &self.store.describe())
            .field("pipelines", &self.engine.len())
            .field("webhook", &self.webhook.is_some())
            .field("grpc_tls", &self.grpc_cert.is_some())
            .finish()
    }
}

impl Coordinator {
    /// Validates `config`, loads the webhook certificate if the webhook is on and the gRPC
    /// certificate if gRPC serves TLS, and loads the state file (restoring every pipeline and writing the state back, which proves the file
    /// is writable). Nothing is bound yet.
    pub async fn open(config: Config) -> Result<Self, Error> {
        // `with_store` validates the whole configuration; `FileStore::new` touches nothing.
        let store = Arc::new(FileStore::new(&config.state_file));
        Self::with_store(config, store).await
    }

    /// Like [`Coordinator::open`] with another [`StateStore`] (e.g. a Kubernetes ConfigMap
    /// store): the configured state file is not used, though the configuration is still
    /// validated in full.
    pub async fn with_store(config: Config, store: Arc<dyn StateStore>) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let options = config.options().map_err(Error::Config)?;
        // Before the state: a certificate that cannot serve is a configuration error.
        let webhook = match (
            config.injection().map_err(Error::Config)?,
            &config.webhook_cert,
            &config.webhook_key,
        ) {
            (Some(injection), Some(cert), Some(key)) => Some(Webhook {
                injection: Arc::new(injection),
                cert: Arc::new(ReloadingCert::load(cert, key).map_err(Error::WebhookTls)?),
            }),
            _ => None,
        };
        let grpc_cert = match config.grpc_tls() {
            Some((cert, key)) => Some(Arc::new(
                ReloadingCert::load(cert, key).map_err(Error::GrpcTls)?,
            )),
            None => None,
        };
        let engine = Engine::open(store.clone(), options)
            .await
            .map_err(|e| match e {
                OpenError::Load(e) => Error::Load(e),
                OpenError::Persist(e) => Error::Persist(PersistError(e)),
            })?;
        let metrics = Metrics::new();
        metrics.set_pipelines(engine.len());
        Ok(Self {
            config,
            store,
            engine,
            webhook,
            grpc_cert,
            metrics,
        })
    }

    /// Number of pipelines restored from the state.
    pub fn pipelines(&self) -> usize {
        self.engine.len()
    }

    /// Serves gRPC on `listener` until `shutdown` completes (then ends every stream and
    /// returns `Ok`), or until the state cannot be persisted (then returns the error). No
    /// webhook or metrics listener: see [`Coordinator::serve_with`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.serve_with(
            Listeners {
                grpc: listener,
                webhook: None,
                metrics: None,
            },
            shutdown,
        )
        .await
    }

    /// Serves gRPC, and the webhook and metrics on their listeners if given, until
    /// `shutdown` completes or the state cannot be persisted; every server stops then. The
    /// webhook and metrics servers run in their own tasks: nothing that happens there stops
    /// the gRPC service.
    pub async fn serve_with(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Coordinator {
            config,
            store,
            engine,
            webhook,
            grpc_cert,
            metrics,
        } = self;
        let Listeners {
            grpc: listener,
            webhook: webhook_listener,
            metrics: metrics_listener,
        } = listeners;
        let defaults = config.default_settings().map_err(Error::Config)?;
        let addr = listener.local_addr().map_err(Error::Listener)?;
        let webhook_tls = match (&webhook, &webhook_listener) {
            (None, Some(_)) => return Err(Error::WebhookNotConfigured),
            (Some(w), Some(_)) => Some(w.cert.server_config().map_err(Error::WebhookTls)?),
            (Some(_), None) => {
                tracing::warn!("the webhook is configured but no webhook listener was given");
                None
            }
            (None, None) => None,
        };
        let grpc_tls = match &grpc_cert {
            Some(cert) => Some(cert.grpc_server_config().map_err(Error::GrpcTls)?),
            None => None,
        };
        tracing::info!(
            listen = %addr, tls = grpc_tls.is_some(), state = %store.describe(),
            pipelines = engine.len(), "coordinator serving"
        );

        // `stop` ends the server, every stream and the engine: fired by `shutdown` or by the
        // engine when it cannot persist.
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(ENGINE_QUEUE);
        let handle = EngineHandle::new(tx);
        let timing = Timing {
            tick: config.tick_interval,
            status: config.status_interval,
        };
        let engine_stop = stop.clone();
        let engine_metrics = metrics.clone();
        let engine_task = tokio::spawn(async move {
            let result = engine
                .run(rx, engine_stop.clone(), timing, engine_metrics)
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, cause = %e.0, "stopping the coordinator");
                engine_stop.cancel();
            }
            result
        });

        let gates = gate_service::GateService::new(
            handle.clone(),
            config.heartbeat_interval,
            config.gate_lease(),
            stop.clone(),
        );
        let cutover = cutover_service::CutoverService::new(handle, defaults, stop.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<GateControlServer<gate_service::GateService>>()
            .await;
        health
            .set_serving::<CutoverServer<cutover_service::CutoverService>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(Error::Reflection)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(Error::Reflection)?;

        let mut side_tasks = tokio::task::JoinSet::new();
        if let (Some(webhook), Some(listener), Some(tls)) = (webhook, webhook_listener, webhook_tls)
        {
            side_tasks.spawn(webhook.cert.clone().watch(
                CertUse::Webhook,
                config.webhook_reload_interval,
                metrics.clone(),
                stop.clone(),
            ));
            side_tasks.spawn(webhook::server::serve_webhook(
                listener,
                tokio_rustls::TlsAcceptor::from(tls),
                webhook.injection,
                metrics.clone(),
                stop.clone(),
            ));
        }
        if let Some(listener) = metrics_listener {
            side_tasks.spawn(webhook::server::serve_metrics(
                listener,
                metrics.clone(),
                stop.clone(),
            ));
        }

        let signal_stop = stop.clone();
        let signal = async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down"),
                () = signal_stop.cancelled() => {}
            }
            // Long-lived streams end on `stop`, so the graceful shutdown does not wait on them.
            signal_stop.cancel();
        };
        if let Some(cert) = &grpc_cert {
            side_tasks.spawn(cert.clone().watch(
                CertUse::Grpc,
                config.grpc_tls_reload_interval,
                metrics.clone(),
                stop.clone(),
            ));
        }
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(GateControlServer::new(gates))
            .add_service(CutoverServer::new(cutover));
        let served = match grpc_tls {
            Some(tls) => {
                let incoming = grpc_tls::incoming(
                    listener,
                    tokio_rustls::TlsAcceptor::from(tls),
                    stop.clone(),
                );
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
                    .await
            }
        };
        stop.cancel();
        // The webhook and metrics servers stop on `stop` (bounded by their shutdown grace); a
        // panic there is logged, never turned into a coordinator failure.
        while let Some(done) = side_tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a webhook or metrics task failed");
            }
        }
        // A persistence failure is the more important error: report it even if the server
        // also failed while stopping.
        engine_task.await.map_err(Error::EngineTask)??;
        served.map_err(Error::Serve)?;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}

/// Validates `config`, loads its state, and serves on `listener` until `shutdown` completes.
/// Returns an error on bad configuration, an unreadable or corrupt state file, or when the
/// state cannot be persisted while serving (a decision is never announced unpersisted).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Coordinator::open(config)
        .await?
        .serve(listener, shutdown)
        .await
}
