//! The sidecar's top level: listeners, the accept loop, the control task and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ceiling::{Ceiling, CeilingError};
use crate::channel::{self, ChannelSettings};
use crate::config::SinkSpec;
use crate::config::{Config, ConfigError};
use crate::control::{self, ControlSettings};
use crate::gate::{Gate, GateIdentity};
use crate::health;
use crate::known_channels::{self, KnownChannelsError};
use crate::sink::jsonl::JsonLinesSink;
use crate::sink::kafka::KafkaSink;
use crate::sink::{NullSink, Sink, SinkError};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why the sidecar could not start or stop cleanly.
#[derive(Debug, Error)]
pub enum SidecarError {
    /// A setting is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The persisted high-mark ceiling cannot be read.
    #[error("cannot resume the gate's high mark")]
    Ceiling(#[from] CeilingError),
    /// The persisted channel list cannot be read.
    #[error("cannot resume the gate's channel list")]
    KnownChannels(#[from] KnownChannelsError),
    /// Neither a Unix nor a TCP listener was given.
    #[error("no listener: give a Unix socket or a TCP address")]
    NoListeners,
    /// The socket path exists and is not a socket, so it is not ours to remove.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Another process is serving the socket path.
    #[error("{0} is in use by a running process")]
    SocketInUse(PathBuf),
    /// A stale socket file could not be removed.
    #[error("cannot remove stale socket {path}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The socket file's permissions could not be set.
    #[error("cannot set the permissions of {path}")]
    SocketMode {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Binding a listener failed.
    #[error("cannot listen on {address}")]
    Bind {
        /// The socket path or TCP address.
        address: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The sink could not be opened or flushed.
    #[error("sink error")]
    Sink(#[source] SinkError),
}

/// The sockets channels connect to, bound before [`run`] so tests can use temporary sockets
/// and port 0.
#[derive(Debug, Default)]
pub struct Listeners {
    /// A Unix socket listener; its file is removed on shutdown.
    pub unix: Option<UnixListener>,
    /// A TCP listener (loopback unless explicitly allowed).
    pub tcp: Option<TcpListener>,
    /// The HTTP health endpoints' listener (`/livez`, `/readyz`).
    pub health: Option<TcpListener>,
    /// The Kafka front's bootstrap listener.
    pub kafka: Option<TcpListener>,
}

impl Listeners {
    /// Binds what `config` asks for: the Unix socket (removing a stale socket file first) and
    /// the optional TCP address. Validates the config first, so nothing is bound for a bad one.
    /// Needs a Tokio runtime.
    pub async fn bind(config: &Config) -> Result<Self, SidecarError> {
        let config = config.clone().validated()?;
        remove_stale_socket(&config.socket)?;
        let unix = UnixListener::bind(&config.socket).map_err(|source| SidecarError::Bind {
            address: config.socket.display().to_string(),
            source,
        })?;
        // Connecting needs write permission on the socket file; the umask decides otherwise.
        std::fs::set_permissions(
            &config.socket,
            std::os::unix::fs::PermissionsExt::from_mode(config.socket_mode),
        )
        .map_err(|source| SidecarError::SocketMode {
            path: config.socket.clone(),
            source,
        })?;
        let tcp = bind_tcp(config.listen_tcp).await?;
        let health = bind_tcp(config.health_listen).await?;
        let kafka = bind_tcp(config.kafka_listen).await?;
        Ok(Self {
            unix: Some(unix),
            tcp,
            health,
            kafka,
        })
    }
}

/// How often expired channels are looked for (new and forgotten channel ids are written at once).
const CHANNELS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the channel list on disk current until `stop`, then writes it a last time. Each round
/// reports the generation it covered (or its failure) so opening channels can wait for it.
async fn persist_channels(
    gate: Arc<Gate>,
    path: PathBuf,
    mut written: Vec<String>,
    stop: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = gate.channels_changed_wait() => false,
            () = tokio::time::sleep(CHANNELS_WRITE_INTERVAL) => false,
        };
        let (generation, now) = gate.channels_snapshot();
        let result = if now == written {
            Ok(())
        } else {
            let (p, list) = (path.clone(), now.clone());
            let saved = tokio::task::spawn_blocking(move || known_channels::save(&p, &list))
                .await
                .unwrap_or_else(|panicked| {
                    Err(KnownChannelsError::Write {
                        path: path.clone(),
                        source: std::io::Error::other(panicked),
                    })
                });
            match saved {
                Ok(()) => {
                    written = now;
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(
                        error = %crate::describe(&e),
                        "cannot persist the channel list; channels opening now are refused"
                    );
                    Err(e)
                }
            }
        };
        gate.channels_written(generation, result);
        if stopping {
            return;
        }
    }
}

/// Binds `addr` when given.
async fn bind_tcp(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, SidecarError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| SidecarError::Bind {
            address: addr.to_string(),
            source,
        })
}

/// Removes a socket file left by a previous run; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> Result<(), SidecarError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SidecarError::NotASocket(path.to_owned()));
    }
    // A socket someone still accepts on is not stale.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SidecarError::SocketInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| SidecarError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

/// Runs the sidecar with the sink named by `config.sink` until `shutdown` resolves (or, for
/// Kafka, until the producer fails fatally: then it stops with that error so a restart brings
/// a fresh producer).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let config = config.validated()?;
    match &config.sink {
        SinkSpec::Kafka(_) => {
            let settings = config
                .kafka_settings()
                .expect("a kafka sink has settings")
                .map_err(|e| SidecarError::Config(ConfigError::Kafka(e)))?;
            let sink = KafkaSink::open(&settings).map_err(SidecarError::Sink)?;
            let fatal = std::sync::Mutex::new(None);
            let stop = async {
                tokio::select! {
                    () = shutdown => {}
                    e = sink.fatal() => {
                        *fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    }
                }
            };
            let result = run_with_sink(config, listeners, sink.clone(), stop).await;
            match fatal
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                Some(e) => Err(SidecarError::Sink(e)),
                None => result,
            }
        }
        SinkSpec::Null => run_with_sink(config, listeners, NullSink, shutdown).await,
        SinkSpec::Stdout | SinkSpec::File(_) => {
            let sink = JsonLinesSink::open(&config.sink, identity(&config), config.sink_queue)
                .await
                .map_err(SidecarError::Sink)?;
            run_with_sink(config, listeners, sink, shutdown).await
        }
    }
}

fn identity(config: &Config) -> GateIdentity {
    GateIdentity {
        pipeline: config.pipeline.clone(),
        deployment: config.deployment.clone(),
        gate_id: config.gate_id(),
    }
}

/// Runs the sidecar with a caller-provided sink until `shutdown` resolves. `config.sink` and
/// `config.sink_queue` are not used.
///
/// On shutdown: stop accepting, let every channel finish delivering what it admitted (up to
/// `config.shutdown_grace`), close the channels with `SHUTTING_DOWN`, flush the sink and remove
/// the Unix socket file.
pub async fn run_with_sink<S: Sink>(
    config: Config,
    listeners: Listeners,
    sink: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let config = config.validated()?;
    if listeners.unix.is_none() && listeners.tcp.is_none() {
        return Err(SidecarError::NoListeners);
    }
    let identity = identity(&config);
    let unix_path = listeners
        .unix
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    log_startup(&config, &identity, &listeners, unix_path.as_deref());

    let idle_ms = u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let path = config
        .high_mark_file
        .clone()
        .expect("validated config names a high-mark file");
    let step = i64::try_from(config.high_mark_step.as_millis()).unwrap_or(i64::MAX);
    let ceiling = Ceiling::load(&path, step)?;
    if let Some(c) = ceiling.current() {
        tracing::info!(file = %path.display(), ceiling = c, "resuming with the high-mark ceiling of an earlier run");
    }
    let expiry_ms = u64::try_from(config.closed_channel_expiry.as_millis()).unwrap_or(u64::MAX);
    let gate = Arc::new(Gate::new(identity, idle_ms, expiry_ms, ceiling));
    let horizon = (!config.future_horizon.is_zero())
        .then(|| i64::try_from(config.future_horizon.as_millis()).unwrap_or(i64::MAX));
    gate.lock().core.set_future_horizon(horizon);
    let channels_file = config
        .channels_file
        .clone()
        .expect("validated config names a channels file");
    let known = known_channels::load(&channels_file)?;
    if !known.is_empty() {
        let now = gate.now_ms();
        let mut state = gate.lock();
        for id in &known {
            state.tracker.restore_closed(id, now);
        }
        tracing::info!(
            file = %channels_file.display(),
            channels = known.len(),
            "channels of an earlier run count as closed until they reconnect"
        );
    }
    let sink = Arc::new(sink);
    let settings = Arc::new(ChannelSettings {
        max_frame_bytes: config.max_frame_bytes,
        hold_limit: config.hold_limit,
        default_topic: config.default_topic.as_str().into(),
    });
    let control = tokio::spawn(control::run(
        gate.clone(),
        ControlSettings {
            coordinator: config.coordinator.clone(),
            progress_interval: config.progress_interval,
            max_backoff: config.reconnect_max_backoff,
        },
    ));
    let lease = tokio::spawn(crate::lease::enforce(gate.clone()));

    let stop = CancellationToken::new();
    // Stopped after the channels: one closing during shutdown may still be forgotten (never
    // spoke, or finished), and the last write must not bring it back after a restart.
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(persist_channels(
        gate.clone(),
        channels_file,
        known,
        writer_stop.clone(),
    ));
    let mut channels = JoinSet::new();
    let mut conn: u64 = 0;
    let Listeners {
        unix,
        tcp,
        health,
        kafka,
    } = listeners;
    let health = health.map(|l| tokio::spawn(health::serve(l, gate.clone(), stop.clone())));
    let front_security = match kafka {
        Some(_) => config.front_security()?,
        None => crate::kafka_front::Security::default(),
    };
    let kafka = kafka.map(|l| {
        tracing::info!(upstream = ?config.kafka_bootstrap(), security = %front_security.describe(), "Kafka front: reaching the cluster");
        let settings = crate::kafka_front::FrontSettings {
            security: front_security,
            bootstrap: config.kafka_bootstrap(),
            event_time: config.event_time.clone(),
            max_frame: config.max_frame_bytes,
            hold_limit: config.hold_limit,
            end_txn_delay: config.fault_end_txn_delay,
            watermarks: match &config.flink_rest {
                Some(address) => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let rest = crate::flink_rest::RestSettings {
                        address: address.clone(),
                        interval: config.flink_rest_interval,
                        job_name: config.flink_job.clone(),
                        max_metric_age: config.flink_rest_metric_age,
                    };
                    tokio::spawn(crate::flink_rest::watch(rest, tx, stop.clone()));
                    crate::kafka_front::FrontWatermarks::Flushed(rx)
                }
                None => crate::kafka_front::FrontWatermarks::Derived {
                    bound_ms: i64::try_from(config.kafka_watermark_bound.as_millis())
                        .unwrap_or(i64::MAX),
                },
            },
        };
        gate.lock().watermark_source = settings.watermarks.source();
        tokio::spawn(crate::kafka_front::serve(
            l,
            settings,
            gate.clone(),
            stop.clone(),
        ))
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    conn += 1;
                    channels.spawn(channel::serve(
                        stream, conn, peer, gate.clone(), sink.clone(), settings.clone(), stop.clone(),
                    ));
                }
                Err(e) => accept_failed("unix", &e).await,
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    conn += 1;
                    // Records are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    channels.spawn(channel::serve(
                        stream, conn, peer, gate.clone(), sink.clone(), settings.clone(), stop.clone(),
                    ));
                }
                Err(e) => accept_failed("tcp", &e).await,
            },
            Some(done) = channels.join_next(), if !channels.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    tracing::error!(error = %e, "a channel task panicked");
                }
            }
        }
    }

    tracing::info!(
        channels = channels.len(),
        "shutting down: no longer accepting channels"
    );
    drop(unix);
    drop(tcp);
    stop.cancel();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while channels.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            channels = channels.len(),
            grace = %humantime::format_duration(config.shutdown_grace),
            "channels still waiting for the sink after the grace period; closing them"
        );
        channels.shutdown().await;
    }
    control.abort();
    lease.abort();
    writer_stop.cancel();
    let _ = writer.await;
    if let Some(h) = health {
        h.abort();
    }
    if let Some(k) = kafka {
        k.abort();
    }
    let flushed = sink.flush().await.map_err(SidecarError::Sink);
    if let Some(path) = unix_path
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket file");
    }
    tracing::info!("stopped");
    flushed
}

async fn accept_unix(
    listener: Option<&UnixListener>,
) -> std::io::Result<(tokio::net::UnixStream, String)> {
    match listener {
        Some(l) => {
            let (stream, _) = l.accept().await?;
            Ok((stream, "unix".to_owned()))
        }
        None => std::future::pending().await,
    }
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, String)> {
    match listener {
        Some(l) => {
            let (stream, peer) = l.accept().await?;
            Ok((stream, peer.to_string()))
        }
        None => std::future::pending().await,
    }
}

async fn accept_failed(kind: &str, e: &std::io::Error) {
    tracing::warn!(listener = kind, error = %e, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

fn log_startup(
    config: &Config,
    identity: &GateIdentity,
    listeners: &Listeners,
    unix_path: Option<&Path>,
) {
    tracing::info!(
        pipeline = %identity.pipeline,
        deployment = %identity.deployment,
        gate = %identity.gate_id,
        coordinator = %config.coordinator,
        socket = unix_path.map(|p| p.display().to_string()),
        tcp = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        health = listeners.health.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        kafka_front = listeners.kafka.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        kafka_upstream = config.kafka_listen.map(|_| config.kafka_bootstrap().join(",")),
        event_time = config.kafka_listen.map(|_| config.event_time.to_string()),
        sink = %config.sink,
        default_topic = %config.default_topic,
        hold_limit = config.hold_limit,
        max_frame_bytes = config.max_frame_bytes,
        idle_timeout = %humantime::format_duration(config.idle_timeout),
        closed_channel_expiry = %humantime::format_duration(config.closed_channel_expiry),
        progress_interval = %humantime::format_duration(config.progress_interval),
        reconnect_max_backoff = %humantime::format_duration(config.reconnect_max_backoff),
        "gate sidecar starting (fail closed: holding every record until the coordinator assigns a role)"
    );
}
