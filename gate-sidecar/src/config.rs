//! The sidecar's configuration: command-line flags, each also an environment variable.
//!
//! [`Config`] is parsed by clap; [`Config::validated`] checks it and resolves the gate id, so a
//! bad setting is reported with a readable message before any socket is bound.
//!
//! An `https://` `--coordinator` is dialled over TLS: [`Config::validated`] loads the CA file
//! (`--coordinator-ca`) or the system roots once to prove they serve, and records the trust
//! settings in the [`CoordinatorEndpoint`], which reads the CA file again at every connection
//! (a CA rotated in a mounted ConfigMap is picked up by the next reconnect).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_proto::framing::DEFAULT_MAX_FRAME;
use thiserror::Error;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::sink::kafka::{KafkaConfigError, KafkaSettings, parse_option};

/// Everything the sidecar needs to serve one gate.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gate-sidecar",
    version,
    // A later flag wins, so wrappers can append overrides to a base command line.
    args_override_self = true,
    about = "sluice gate sidecar: admits or drops sink-bound records against the coordinator's barrier"
)]
pub struct Config {
    /// gRPC URL of the coordinator's `GateControl` service. `https://` dials it over TLS,
    /// verified against --coordinator-ca (else the system roots); `http://` is plaintext.
    #[arg(
        long,
        env = "SLUICE_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: CoordinatorEndpoint,

    /// PEM file of the CA certificate(s) the coordinator's TLS certificate must chain to
    /// (instead of the system roots). Needs an `https://` --coordinator. Read again at every
    /// connection, so a rotated CA (a mounted ConfigMap) is picked up on the next reconnect.
    #[arg(long, env = "SLUICE_COORDINATOR_CA")]
    pub coordinator_ca: Option<PathBuf>,

    /// Name to verify the coordinator's certificate against, instead of the host of
    /// --coordinator (e.g. when dialling an IP address or a port-forward). Needs `https://`.
    #[arg(long, env = "SLUICE_COORDINATOR_TLS_SERVER_NAME")]
    pub coordinator_tls_server_name: Option<String>,

    /// Pipeline this gate belongs to, `namespace/name` (e.g. `payments/fraud-scorer`).
    #[arg(long, env = "SLUICE_PIPELINE")]
    pub pipeline: String,

    /// Deployment id this gate belongs to (e.g. `fraud-scorer-v41`).
    #[arg(long, env = "SLUICE_DEPLOYMENT")]
    pub deployment: String,

    /// Gate id reported to the coordinator, stable across reconnects. Defaults to `$POD_NAME`,
    /// else the hostname, else `{deployment}-{pid}`.
    #[arg(long, env = "SLUICE_GATE_ID")]
    pub gate_id: Option<String>,

    /// Unix socket path the sink subtasks connect to. A stale socket file is removed first.
    #[arg(long, env = "SLUICE_SOCKET", default_value = "/tmp/sluice-gate.sock")]
    pub socket: PathBuf,

    /// Permissions of the Unix socket file, octal. In Kubernetes the job runs under another uid
    /// than the sidecar, so the webhook sets 0666 (the socket is in the pod's private emptyDir).
    #[arg(long, env = "SLUICE_SOCKET_MODE", default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Optional TCP address to accept channels on as well (loopback only, unless
    /// `--allow-non-loopback`).
    #[arg(long, env = "SLUICE_LISTEN_TCP")]
    pub listen_tcp: Option<SocketAddr>,

    /// Serve the Kafka front on this address (loopback only, unless `--allow-non-loopback`): a
    /// job's stock Kafka producer points `bootstrap.servers` here and writes through the gate.
    /// Off by default.
    #[arg(long, env = "SLUICE_KAFKA_LISTEN")]
    pub kafka_listen: Option<SocketAddr>,

    /// The real cluster behind the Kafka front, `HOST:PORT[,HOST:PORT...]`. Defaults to the
    /// `--sink kafka:` bootstrap servers.
    #[arg(long, env = "SLUICE_KAFKA_UPSTREAM")]
    pub kafka_upstream: Option<String>,

    /// Where the Kafka front takes a record's event time: `record-timestamp` (CreateTime, what
    /// Flink's KafkaSink sets from the element's timestamp), `json:/POINTER` (a field of a JSON
    /// value: ms, or an RFC 3339 string) or `header:NAME` (decimal ms, or 8 bytes). A record
    /// without one is refused with INVALID_RECORD and counted, never guessed.
    #[arg(long, env = "SLUICE_EVENT_TIME", default_value = "record-timestamp")]
    pub event_time: crate::kafka_front::EventTimeSource,

    /// The Kafka front's channels carry no watermarks: their watermark is the largest event
    /// time sent minus this (approximate; set it to the job's out-of-orderness bound or more).
    #[arg(long, env = "SLUICE_KAFKA_WATERMARK_BOUND", default_value = "5s", value_parser = humantime::parse_duration)]
    pub kafka_watermark_bound: Duration,

    /// Make the Kafka front's watermark exact: poll this Flink JobManager REST endpoint
    /// (`http://HOST:PORT`; in Kubernetes `http://<FlinkDeployment>-rest.<namespace>:8081`) for
    /// the sink subtasks' input watermarks, and count a watermark only once a checkpoint
    /// triggered after it completed (the job's Kafka sink flushed). Needs an AT_LEAST_ONCE or
    /// EXACTLY_ONCE sink. Without it the watermark is derived (`--kafka-watermark-bound`) and a
    /// drain through the front is approximate.
    #[arg(long, env = "SLUICE_FLINK_REST")]
    pub flink_rest: Option<crate::flink_rest::RestAddress>,

    /// Fault injection for tests, hidden from `--help`: the Kafka front holds every `EndTxn`
    /// this long before forwarding it (a slow commit).
    #[arg(long, hide = true, default_value = "0s", value_parser = humantime::parse_duration)]
    pub fault_end_txn_delay: Duration,

    /// How often `--flink-rest` is polled.
    #[arg(long, env = "SLUICE_FLINK_REST_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub flink_rest_interval: Duration,

    /// The oldest a watermark read from `--flink-rest` may be: Flink serves it from its metric
    /// fetcher (`metrics.fetcher.update-interval`, 10 s by default). A restore voids what was
    /// read this long before it.
    #[arg(long, env = "SLUICE_FLINK_REST_METRIC_AGE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub flink_rest_metric_age: Duration,

    /// With `--flink-rest` on a session cluster running several jobs: the name of this
    /// deployment's job.
    #[arg(long, env = "SLUICE_FLINK_JOB")]
    pub flink_job: Option<String>,

    /// Allow `--listen-tcp` on a non-loopback address. The channel protocol has no
    /// authentication, so this exposes the gate to anyone who can reach the address.
    #[arg(long, env = "SLUICE_ALLOW_NON_LOOPBACK")]
    pub allow_non_loopback: bool,

    /// Where admitted records go: `kafka:HOST:PORT[,HOST:PORT...]` (idempotent producer,
    /// acks=all), `stdout` or `file:PATH` (JSON lines, appended), or `null` (discard; benchmarks).
    #[arg(long, env = "SLUICE_SINK", default_value = "stdout")]
    pub sink: SinkSpec,

    /// A librdkafka producer option `name=value` for the `kafka:` sink (repeatable; in the
    /// environment separate them with `;`). `acks` and `enable.idempotence` cannot be weakened.
    /// The Kafka front reaches its upstream with the same security options
    /// (`security.protocol`, `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`,
    /// `sasl.mechanism` PLAIN/SCRAM-SHA-256/SCRAM-SHA-512, `sasl.username`, `sasl.password`).
    #[arg(
        long = "kafka-option",
        env = "SLUICE_KAFKA_OPTIONS",
        value_delimiter = ';',
        value_name = "NAME=VALUE"
    )]
    pub kafka_options: Vec<String>,

    /// A file of librdkafka options for the `kafka:` sink, one `name=value` per line (`#`
    /// comments and blank lines skipped), read at start: for credentials mounted from a Secret,
    /// which belong neither on the command line nor in the environment. `--kafka-option`s
    /// apply after it. Values of secret-looking options are never logged.
    #[arg(long, env = "SLUICE_KAFKA_OPTIONS_FILE", value_name = "PATH")]
    pub kafka_options_file: Option<PathBuf>,

    /// Topic for records that name none.
    #[arg(long, env = "SLUICE_DEFAULT_TOPIC", default_value = "sluice-out")]
    pub default_topic: String,

    /// Records held per channel before the sidecar stops reading that channel (backpressure).
    #[arg(long, env = "SLUICE_HOLD_LIMIT", default_value_t = 10_000)]
    pub hold_limit: usize,

    /// Largest accepted frame on the local socket, in bytes.
    #[arg(long, env = "SLUICE_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,

    /// A channel silent (no record, no watermark) this long is idle: excluded from the gate
    /// watermark until it speaks again.
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A channel whose connection closed keeps counting in the gate watermark (with its last
    /// watermark) until a channel with the same id reconnects, or this long. Set it above the
    /// job's worst restart time: a drain completed without a restarting subtask loses what it
    /// would have replayed below the barrier.
    #[arg(long, env = "SLUICE_CLOSED_CHANNEL_EXPIRY", default_value = "10m", value_parser = humantime::parse_duration)]
    pub closed_channel_expiry: Duration,

    /// How often progress (high mark, watermark, counters) is reported to the coordinator.
    #[arg(long, env = "SLUICE_PROGRESS_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// Upper bound of the exponential backoff between coordinator reconnects.
    #[arg(long, env = "SLUICE_RECONNECT_MAX_BACKOFF", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reconnect_max_backoff: Duration,

    /// Capacity of the sink queue, in batches; a channel submitting to a full queue waits.
    #[arg(long, env = "SLUICE_SINK_QUEUE", default_value_t = 64)]
    pub sink_queue: usize,

    /// File keeping the gate's high-mark ceiling across restarts (put it on the pod's emptyDir).
    /// Defaults to the socket path with `.highmark` appended.
    #[arg(long, env = "SLUICE_HIGH_MARK_FILE")]
    pub high_mark_file: Option<PathBuf>,

    /// File keeping the gate's channel ids across restarts, so a restarted sidecar waits for
    /// its channels to come back (put it on the pod's emptyDir). A channel is refused while its
    /// id cannot be written. Defaults to the socket path with `.channels` appended.
    #[arg(long, env = "SLUICE_CHANNELS_FILE")]
    pub channels_file: Option<PathBuf>,

    /// How far above a record's event time the persisted ceiling is raised, so it is written
    /// about once per this much event time.
    #[arg(long, env = "SLUICE_HIGH_MARK_STEP", default_value = "10s", value_parser = humantime::parse_duration)]
    pub high_mark_step: Duration,

    /// A record whose event time is more than this far ahead of the wall clock is dropped and
    /// counted (`dropped_future`), and does not raise the high mark: one record stamped a year
    /// ahead would otherwise push every later barrier a year ahead. The default is Kafka 4.0's
    /// `log.message.timestamp.after.max.ms` (the broker refuses such records anyway); `0`
    /// turns the rule off (a far-future record then raises every later barrier).
    #[arg(long, env = "SLUICE_FUTURE_HORIZON", default_value = "1h", value_parser = humantime::parse_duration)]
    pub future_horizon: Duration,

    /// Optional address for the HTTP health endpoints `/livez` and `/readyz` (ready once the
    /// coordinator has assigned the gate a role). Serves no data, so any address is allowed.
    #[arg(long, env = "SLUICE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Runtime worker threads (default: one per CPU). Set it to the container's CPU limit.
    #[arg(long, env = "SLUICE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// On shutdown, how long channels may take to get their admitted records acknowledged by
    /// the sink before they are closed regardless.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where admitted records are written.
///
/// Parsed from `--sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkSpec {
    /// Kafka, through an idempotent librdkafka producer; the bootstrap servers.
    Kafka(String),
    /// JSON lines on standard output (logs go to standard error).
    Stdout,
    /// JSON lines appended to a file.
    File(PathBuf),
    /// Discard admitted records (benchmarks of the gate path, dry runs).
    Null,
}

/// A `--sink` value that names no known sink.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SinkSpecError {
    /// `file:` without a path.
    #[error("`file:` needs a path, e.g. `file:/var/log/sluice.jsonl`")]
    EmptyPath,
    /// `kafka:` without brokers.
    #[error("`kafka:` needs bootstrap servers, e.g. `kafka:127.0.0.1:9092`")]
    EmptyBootstrap,
    /// Anything else.
    #[error("unknown sink `{0}`; expected `kafka:HOST:PORT`, `stdout`, `file:PATH` or `null`")]
    Unknown(String),
}

impl FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "stdout" {
            return Ok(SinkSpec::Stdout);
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SinkSpecError::EmptyPath);
            }
            return Ok(SinkSpec::File(PathBuf::from(path)));
        }
        if let Some(servers) = s.strip_prefix("kafka:") {
            if servers.trim().is_empty() {
                return Err(SinkSpecError::EmptyBootstrap);
            }
            return Ok(SinkSpec::Kafka(servers.trim().to_owned()));
        }
        if s == "null" {
            return Ok(SinkSpec::Null);
        }
        Err(SinkSpecError::Unknown(s.to_owned()))
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Kafka(servers) => write!(f, "kafka:{servers}"),
            SinkSpec::Stdout => f.write_str("stdout"),
            SinkSpec::File(p) => write!(f, "file:{}", p.display()),
            SinkSpec::Null => f.write_str("null"),
        }
    }
}

/// Where the coordinator is and, for `https://`, how its certificate is verified.
///
/// Parsed from `--coordinator` (the URL); [`Config::validated`] adds the trust settings of
/// `--coordinator-ca` and `--coordinator-tls-server-name`, so the control task gets them with
/// the URL. Displays as the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorEndpoint {
    url: String,
    tls: Option<TlsTrust>,
}

/// How the coordinator's certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsTrust {
    /// PEM CA file; `None`: the system roots.
    ca: Option<PathBuf>,
    /// Name to verify instead of the URL's host.
    server_name: Option<String>,
}

impl CoordinatorEndpoint {
    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the URL asks for TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The CA file the coordinator's certificate is verified against (`None`: plaintext, or
    /// the system roots).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().and_then(|t| t.ca.as_deref())
    }

    /// A tonic endpoint for the URL, with TLS set up for `https://`: the CA file is read now,
    /// so every call sees its current content. Timeouts and keepalives are the caller's.
    pub fn endpoint(&self) -> Result<Endpoint, CoordinatorEndpointError> {
        let endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(CoordinatorEndpointError::Url)?;
        if !self.is_tls() {
            return Ok(endpoint);
        }
        let default = TlsTrust {
            ca: None,
            server_name: None,
        };
        let trust = self.tls.as_ref().unwrap_or(&default);
        let mut tls = ClientTlsConfig::new().timeout(TLS_HANDSHAKE_TIMEOUT);
        tls = match &trust.ca {
            Some(path) => tls.trust_anchors(load_ca(path)?.roots),
            None => tls.with_native_roots(),
        };
        if let Some(name) = &trust.server_name {
            ServerName::try_from(name.as_str())
                .map_err(|e| CoordinatorEndpointError::BadServerName(name.clone(), e))?;
            tls = tls.domain_name(name.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(CoordinatorEndpointError::Setup)
    }
}

/// Time for the TLS handshake with the coordinator.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and checks a PEM CA file: every certificate must parse as a trust anchor, and there
/// must be at least one (rustls would otherwise skip unparsable ones silently).
fn load_ca(path: &Path) -> Result<RootCertStore, CoordinatorEndpointError> {
    let pem = std::fs::read(path).map_err(|e| CoordinatorEndpointError::ReadCa(path.into(), e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CoordinatorEndpointError::BadCaPem(path.into(), e))?;
    if certs.is_empty() {
        return Err(CoordinatorEndpointError::NoCaCertificate(path.into()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| CoordinatorEndpointError::BadCaCertificate {
                path: path.into(),
                index: i + 1,
                source,
            })?;
    }
    Ok(roots)
}

impl FromStr for CoordinatorEndpoint {
    type Err = std::convert::Infallible;

    /// Takes the URL as is; [`Config::validated`] checks it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            url: s.to_owned(),
            tls: None,
        })
    }
}

impl fmt::Display for CoordinatorEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl PartialEq<&str> for CoordinatorEndpoint {
    fn eq(&self, other: &&str) -> bool {
        self.url == *other
    }
}

/// Why TLS to the coordinator cannot be set up. One variant per cause; messages name the
/// file and say what is wrong with it, since the sidecar's start-up error shows only them.
#[derive(Debug, Error)]
pub enum CoordinatorEndpointError {
    /// The URL is not usable.
    #[error("--coordinator is not a valid URL")]
    Url(#[source] tonic::transport::Error),
    /// The CA file cannot be read.
    #[error("cannot read --coordinator-ca {0}: {1}")]
    ReadCa(PathBuf, #[source] std::io::Error),
    /// The CA file has a malformed PEM section.
    #[error("--coordinator-ca {0} is not valid PEM: {1}")]
    BadCaPem(PathBuf, #[source] rustls::pki_types::pem::Error),
    /// The CA file holds no PEM certificate.
    #[error("--coordinator-ca {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCaCertificate(PathBuf),
    /// A certificate in the CA file cannot be a trust anchor.
    #[error(
        "certificate {index} in --coordinator-ca {path} is not a usable CA certificate: {source}"
    )]
    BadCaCertificate {
        /// The CA file.
        path: PathBuf,
        /// Which certificate, from 1.
        index: usize,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The server name override is not a DNS name or IP address.
    #[error("--coordinator-tls-server-name {0:?} is not a DNS name or IP address")]
    BadServerName(String, #[source] rustls::pki_types::InvalidDnsNameError),
    /// tonic refused the TLS settings (e.g. no system root certificate was found).
    #[error(
        "cannot set up TLS to the coordinator (without --coordinator-ca the system root \
         certificates are used; give the CA file if there are none): {0}"
    )]
    Setup(#[source] tonic::transport::Error),
}

/// A setting the sidecar cannot run with.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// `--pipeline` is empty.
    #[error("--pipeline must not be empty")]
    EmptyPipeline,
    /// `--pipeline` is not `namespace/name`.
    #[error("--pipeline `{0}` must have the form `namespace/name`")]
    PipelineFormat(String),
    /// `--deployment` is empty.
    #[error("--deployment must not be empty")]
    EmptyDeployment,
    /// `--gate-id` was given but is empty.
    #[error("--gate-id must not be empty when given")]
    EmptyGateId,
    /// `--coordinator` is not a usable URL.
    #[error("--coordinator `{url}` is not a valid URL")]
    Coordinator {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// `--coordinator` is neither `http://` nor `https://`.
    #[error("--coordinator `{0}` must be an http:// or https:// URL")]
    CoordinatorScheme(String),
    /// A TLS setting was given for a plaintext `--coordinator`.
    #[error("--{flag} needs an https:// --coordinator (got `{url}`)")]
    TlsWithoutHttps {
        /// The TLS flag given.
        flag: &'static str,
        /// The plaintext URL.
        url: String,
    },
    /// TLS to the coordinator cannot be set up (CA file, server name, system roots).
    #[error(transparent)]
    CoordinatorTls(CoordinatorEndpointError),
    /// `--socket` is empty.
    #[error("--socket must not be empty")]
    EmptySocket,
    /// `--listen-tcp` names a non-loopback address without `--allow-non-loopback`.
    #[error(
        "--listen-tcp {0} is not a loopback address; the channel protocol is unauthenticated, \
         pass --allow-non-loopback to expose it anyway"
    )]
    NonLoopback(SocketAddr),
    /// `--kafka-listen` names a non-loopback address without `--allow-non-loopback`.
    #[error(
        "--kafka-listen {0} is not a loopback address; the Kafka front is unauthenticated, pass \
         --allow-non-loopback to expose it anyway"
    )]
    KafkaNonLoopback(SocketAddr),
    /// `--flink-rest` without the Kafka front it serves.
    #[error("--flink-rest only applies to the Kafka front: add --kafka-listen")]
    FlinkRestWithoutFront,
    /// `--flink-rest-interval 0`.
    #[error("--flink-rest-interval must be more than 0")]
    FlinkRestInterval,
    /// The Kafka front has no cluster to forward to.
    #[error("--kafka-listen needs --kafka-upstream HOST:PORT (or a --sink kafka:...)")]
    KafkaUpstreamMissing,
    /// `--default-topic` is empty.
    #[error("--default-topic must not be empty")]
    EmptyTopic,
    /// A count or duration that must be positive is zero.
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    /// The Kafka options are unusable.
    #[error("invalid Kafka sink configuration")]
    Kafka(#[source] KafkaConfigError),
    /// `--kafka-option` or `--kafka-options-file` given with neither a Kafka sink nor a front.
    #[error(
        "Kafka options only apply to a `kafka:` sink or the Kafka front, but --sink is `{0}` \
         and there is no --kafka-listen"
    )]
    KafkaOptionsUnused(SinkSpec),
    /// The Kafka front cannot reach the cluster as the options ask.
    #[error("the Kafka front's upstream security options are unusable")]
    FrontSecurity(#[source] crate::kafka_front::SecurityError),
}

impl Config {
    /// The real cluster behind the Kafka front: `--kafka-upstream`, else the Kafka sink's.
    pub fn kafka_bootstrap(&self) -> Vec<String> {
        let list = match (&self.kafka_upstream, &self.sink) {
            (Some(u), _) => u.as_str(),
            (None, SinkSpec::Kafka(b)) => b.as_str(),
            (None, _) => "",
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// Checks every setting and fills in the gate id, so the result can be used as is.
    ///
    /// Idempotent: a validated config validates again to itself.
    pub fn validated(mut self) -> Result<Config, ConfigError> {
        if self.pipeline.is_empty() {
            return Err(ConfigError::EmptyPipeline);
        }
        match self.pipeline.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => return Err(ConfigError::PipelineFormat(self.pipeline)),
        }
        if self.deployment.is_empty() {
            return Err(ConfigError::EmptyDeployment);
        }
        if self.gate_id.as_deref() == Some("") {
            return Err(ConfigError::EmptyGateId);
        }
        self.validate_coordinator()?;
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::EmptySocket);
        }
        if self.high_mark_file.is_none() {
            let mut file = self.socket.clone().into_os_string();
            file.push(".highmark");
            self.high_mark_file = Some(file.into());
        }
        if self.channels_file.is_none() {
            let mut file = self.socket.clone().into_os_string();
            file.push(".channels");
            self.channels_file = Some(file.into());
        }
        if let Some(addr) = self.listen_tcp
            && !addr.ip().is_loopback()
            && !self.allow_non_loopback
        {
            return Err(ConfigError::NonLoopback(addr));
        }
        if let Some(addr) = self.kafka_listen {
            if !addr.ip().is_loopback() && !self.allow_non_loopback {
                return Err(ConfigError::KafkaNonLoopback(addr));
            }
            if self.kafka_bootstrap().is_empty() {
                return Err(ConfigError::KafkaUpstreamMissing);
            }
            self.front_security()?;
        }
        if self.flink_rest.is_some() {
            if self.kafka_listen.is_none() {
                return Err(ConfigError::FlinkRestWithoutFront);
            }
            if self.flink_rest_interval.is_zero() {
                return Err(ConfigError::FlinkRestInterval);
            }
        }
        if self.default_topic.is_empty() {
            return Err(ConfigError::EmptyTopic);
        }
        match self.kafka_settings() {
            Some(settings) => {
                settings
                    .map_err(ConfigError::Kafka)?
                    .client_config()
                    .map_err(ConfigError::Kafka)?;
            }
            None if self.kafka_listen.is_none()
                && (self.kafka_options.iter().any(|o| !o.trim().is_empty())
                    || self.kafka_options_file.is_some()) =>
            {
                return Err(ConfigError::KafkaOptionsUnused(self.sink));
            }
            None => {}
        }
        let positive = [
            ("worker-threads", self.worker_threads != Some(0)),
            ("hold-limit", self.hold_limit > 0),
            ("max-frame-bytes", self.max_frame_bytes > 0),
            ("sink-queue", self.sink_queue > 0),
            ("idle-timeout", !self.idle_timeout.is_zero()),
            (
                "closed-channel-expiry",
                !self.closed_channel_expiry.is_zero(),
            ),
            ("progress-interval", !self.progress_interval.is_zero()),
            (
                "reconnect-max-backoff",
                !self.reconnect_max_backoff.is_zero(),
            ),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(ConfigError::Zero(flag));
        }
        if self.gate_id.is_none() {
            self.gate_id = Some(default_gate_id(&self.deployment));
        }
        Ok(self)
    }

    /// Checks the coordinator URL and its TLS settings, and records them in
    /// [`Config::coordinator`]. Loads the CA file (or the system roots) once, so an unreadable
    /// or garbage CA stops the sidecar here rather than at every reconnect.
    fn validate_coordinator(&mut self) -> Result<(), ConfigError> {
        let url = self.coordinator.url.clone();
        if let Err(source) = Endpoint::from_shared(url.clone()) {
            return Err(ConfigError::Coordinator { url, source });
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::CoordinatorScheme(url));
        }
        if !self.coordinator.is_tls() {
            let given = [
                ("coordinator-ca", self.coordinator_ca.is_some()),
                (
                    "coordinator-tls-server-name",
                    self.coordinator_tls_server_name.is_some(),
                ),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                return Err(ConfigError::TlsWithoutHttps { flag, url });
            }
            self.coordinator.tls = None;
            return Ok(());
        }
        self.coordinator.tls = Some(TlsTrust {
            ca: self.coordinator_ca.clone(),
            server_name: self.coordinator_tls_server_name.clone(),
        });
        self.coordinator
            .endpoint()
            .map_err(ConfigError::CoordinatorTls)?;
        Ok(())
    }

    /// The Kafka sink's settings, when the sink is Kafka.
    pub fn kafka_settings(&self) -> Option<Result<KafkaSettings, KafkaConfigError>> {
        let SinkSpec::Kafka(bootstrap) = &self.sink else {
            return None;
        };
        Some(self.kafka_option_pairs().map(|options| KafkaSettings {
            bootstrap: bootstrap.clone(),
            options,
        }))
    }

    /// The librdkafka options: `--kafka-options-file` first, then `--kafka-option`s.
    pub fn kafka_option_pairs(&self) -> Result<Vec<(String, String)>, KafkaConfigError> {
        let from_file = match &self.kafka_options_file {
            Some(path) => read_options_file(path)?,
            None => Vec::new(),
        };
        let flags = self
            .kafka_options
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| parse_option(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(from_file.into_iter().chain(flags).collect())
    }

    /// How the Kafka front reaches the cluster: the same security options as the Kafka sink
    /// (`security.protocol`, `ssl.*` PEM files, `sasl.*`).
    pub fn front_security(&self) -> Result<crate::kafka_front::Security, ConfigError> {
        let options = self.kafka_option_pairs().map_err(ConfigError::Kafka)?;
        crate::kafka_front::Security::from_options(&options).map_err(ConfigError::FrontSecurity)
    }

    /// The gate id: the configured one, or the default of [`Config::validated`].
    pub fn gate_id(&self) -> String {
        self.gate_id
            .clone()
            .unwrap_or_else(|| default_gate_id(&self.deployment))
    }
}

/// An octal file mode such as `0660` or `666`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("`{s}` is not an octal file mode like 0660")),
    }
}

/// `$POD_NAME` (Kubernetes downward API), else the hostname, else `{deployment}-{pid}`.
fn default_gate_id(deployment: &str) -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    std::env::var("POD_NAME")
        .ok()
        .and_then(non_empty)
        .or_else(|| {
            // Read the kernel's hostname rather than calling gethostname(2): no unsafe, no
            // extra dependency, and it is what a container's hostname is set to.
            ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok().and_then(non_empty))
        })
        .unwrap_or_else(|| format!("{deployment}-{}", std::process::id()))
}

/// Reads `--kafka-options-file`: `name=value` lines, `#` comments and blank lines skipped.
fn read_options_file(path: &std::path::Path) -> Result<Vec<(String, String)>, KafkaConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KafkaConfigError::OptionsFile {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            // The line may hold a secret: say where, not what.
            parse_option(line).map_err(|_| KafkaConfigError::OptionsFileLine {
                path: path.to_owned(),
                line: n,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec![
            "gate-sidecar",
            "--pipeline",
            "payments/fraud",
            "--deployment",
            "v1",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("flags parse")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).validated().unwrap();
        assert_eq!(c.coordinator, "http://127.0.0.1:7070");
        assert_eq!(c.socket, PathBuf::from("/tmp/sluice-gate.sock"));
        assert_eq!(c.sink, SinkSpec::Stdout);
        assert_eq!(c.default_topic, "sluice-out");
        assert_eq!(c.hold_limit, 10_000);
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.idle_timeout, Duration::from_secs(10));
        assert_eq!(c.progress_interval, Duration::from_millis(200));
        assert_eq!(c.reconnect_max_backoff, Duration::from_secs(5));
        assert_eq!(c.sink_queue, 64);
        assert!(c.gate_id.as_deref().is_some_and(|g| !g.is_empty()));
        // Resolving twice gives the same id: it is stable for the process lifetime.
        assert_eq!(c.clone().validated().unwrap().gate_id, c.gate_id);
    }

    #[test]
    fn kafka_options_come_from_the_file_first_then_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kafka.properties");
        std::fs::write(
            &file,
            "# credentials from a Secret\n\nsasl.mechanism=PLAIN\n sasl.password = s3cret \nlinger.ms=5\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = parse(&[
            "--sink",
            "kafka:127.0.0.1:9092",
            "--kafka-options-file",
            path,
            "--kafka-option",
            "linger.ms=7",
        ]);
        let settings = c.kafka_settings().unwrap().unwrap();
        let names: Vec<&str> = settings.options.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["sasl.mechanism", "sasl.password", "linger.ms", "linger.ms"]
        );
        assert_eq!(
            settings.options.last().unwrap().1,
            "7",
            "the flag comes last"
        );
        assert_eq!(settings.options[1].1, "s3cret", "values are trimmed");
        assert!(
            !settings.redacted_options().join(" ").contains("s3cret"),
            "{:?}",
            settings.redacted_options()
        );
        c.validated().expect("a valid file validates");

        // A bad line is named by number, never by content.
        std::fs::write(&file, "linger.ms=5\nsasl.password s3cret\n").unwrap();
        let err = parse(&[
            "--sink",
            "kafka:127.0.0.1:9092",
            "--kafka-options-file",
            path,
        ])
        .validated()
        .unwrap_err();
        let text = crate::describe(&err);
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        // A missing file fails before anything starts; a file without a Kafka sink is refused.
        let missing = dir.path().join("nope");
        let err = parse(&[
            "--sink",
            "kafka:127.0.0.1:9092",
            "--kafka-options-file",
            missing.to_str().unwrap(),
        ])
        .validated()
        .unwrap_err();
        assert!(crate::describe(&err).contains("nope"), "{err}");
        assert!(matches!(
            parse(&["--kafka-options-file", path]).validated(),
            Err(ConfigError::KafkaOptionsUnused(_))
        ));
    }

    #[test]
    fn sink_specs_parse_into_the_enum() {
        assert_eq!("stdout".parse(), Ok(SinkSpec::Stdout));
        assert_eq!(
            "file:/tmp/x.jsonl".parse(),
            Ok(SinkSpec::File("/tmp/x.jsonl".into()))
        );
        assert_eq!("file:".parse::<SinkSpec>(), Err(SinkSpecError::EmptyPath));
        assert_eq!(
            "kafka:broker:9092,b2:9092".parse(),
            Ok(SinkSpec::Kafka("broker:9092,b2:9092".into()))
        );
        assert_eq!(
            "kafka:".parse::<SinkSpec>(),
            Err(SinkSpecError::EmptyBootstrap)
        );
        assert_eq!("null".parse(), Ok(SinkSpec::Null));
        assert!(matches!(
            "s3://x".parse::<SinkSpec>(),
            Err(SinkSpecError::Unknown(_))
        ));
        assert!(Config::try_parse_from(["gate-sidecar", "--sink", "nope"]).is_err());
    }

    #[test]
    fn refuses_non_loopback_tcp_unless_allowed() {
        let err = parse(&["--listen-tcp", "0.0.0.0:9000"])
            .validated()
            .unwrap_err();
        assert!(matches!(err, ConfigError::NonLoopback(_)), "{err}");
        assert!(err.to_string().contains("--allow-non-loopback"));
        parse(&["--listen-tcp", "0.0.0.0:9000", "--allow-non-loopback"])
            .validated()
            .unwrap();
        parse(&["--listen-tcp", "127.0.0.1:9000"])
            .validated()
            .unwrap();
        parse(&["--listen-tcp", "[::1]:9000"]).validated().unwrap();
    }

    #[test]
    fn refuses_empty_and_zero_settings_with_readable_messages() {
        let cases: &[(&[&str], &str)] = &[
            (&["--pipeline", ""], "--pipeline must not be empty"),
            (&["--pipeline", "noslash"], "namespace/name"),
            (&["--pipeline", "a/b/c"], "namespace/name"),
            (&["--deployment", ""], "--deployment must not be empty"),
            (&["--gate-id", ""], "--gate-id"),
            (
                &["--hold-limit", "0"],
                "--hold-limit must be greater than zero",
            ),
            (&["--max-frame-bytes", "0"], "--max-frame-bytes"),
            (&["--sink-queue", "0"], "--sink-queue"),
            (&["--idle-timeout", "0s"], "--idle-timeout"),
            (&["--progress-interval", "0ms"], "--progress-interval"),
            (
                &["--reconnect-max-backoff", "0s"],
                "--reconnect-max-backoff",
            ),
            (&["--default-topic", ""], "--default-topic"),
            (&["--coordinator", "not a url"], "--coordinator"),
        ];
        for (args, expected) in cases {
            let err = parse(args).validated().unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    /// A self-signed CA certificate, in PEM.
    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn flink_rest_needs_the_kafka_front_and_a_plain_http_address() {
        let front = [
            "--kafka-listen",
            "127.0.0.1:9092",
            "--kafka-upstream",
            "127.0.0.1:9093",
        ];
        let mut args = front.to_vec();
        args.extend(["--flink-rest", "http://orders-rest.shop:8081"]);
        let c = parse(&args).validated().unwrap();
        assert_eq!(
            c.flink_rest.unwrap().to_string(),
            "http://orders-rest.shop:8081"
        );
        assert!(matches!(
            parse(&["--flink-rest", "http://127.0.0.1:8081"]).validated(),
            Err(ConfigError::FlinkRestWithoutFront)
        ));
        let mut zero = args.clone();
        zero.extend(["--flink-rest-interval", "0s"]);
        assert!(matches!(
            parse(&zero).validated(),
            Err(ConfigError::FlinkRestInterval)
        ));
        let err = Config::try_parse_from([
            "gate-sidecar",
            "--pipeline",
            "a/b",
            "--deployment",
            "d",
            "--flink-rest",
            "https://x:1",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("only http:// is supported"), "{err}");
    }

    #[test]
    fn https_with_a_ca_file_validates_and_records_the_trust() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        // Two CAs (a bundle during a rotation) are fine.
        std::fs::write(&ca, ca_pem() + &ca_pem()).unwrap();
        let ca_arg = ca.to_str().unwrap();
        let c = parse(&[
            "--coordinator",
            "https://sluice-coordinator.sluice.svc:7070",
        ]);
        let c = Config {
            coordinator_ca: Some(ca.clone()),
            ..c
        }
        .validated()
        .unwrap();
        assert!(c.coordinator.is_tls());
        assert_eq!(c.coordinator.ca_file(), Some(ca.as_path()));
        assert_eq!(
            c.coordinator.to_string(),
            "https://sluice-coordinator.sluice.svc:7070"
        );
        c.coordinator.endpoint().unwrap();
        // Validated again: the same.
        assert_eq!(c.clone().validated().unwrap().coordinator, c.coordinator);
        let c = parse(&[
            "--coordinator",
            "https://127.0.0.1:7070",
            "--coordinator-ca",
            ca_arg,
            "--coordinator-tls-server-name",
            "sluice-coordinator.sluice.svc",
        ])
        .validated()
        .unwrap();
        c.coordinator.endpoint().unwrap();
        // Plaintext has no trust settings.
        let c = parse(&[]).validated().unwrap();
        assert!(!c.coordinator.is_tls() && c.coordinator.ca_file().is_none());
    }

    #[test]
    fn tls_settings_are_refused_with_readable_messages() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        let bad_der = dir.path().join("bad-der.crt");
        std::fs::write(
            &bad_der,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let good = dir.path().join("ca.crt");
        std::fs::write(&good, ca_pem()).unwrap();
        let (garbage, bad_der, good) = (
            garbage.to_str().unwrap(),
            bad_der.to_str().unwrap(),
            good.to_str().unwrap(),
        );
        let https = "https://sluice-coordinator.sluice.svc:7070";
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--coordinator",
                    https,
                    "--coordinator-ca",
                    "/nonexistent/ca.crt",
                ],
                "cannot read --coordinator-ca /nonexistent/ca.crt",
            ),
            (
                &["--coordinator", https, "--coordinator-ca", garbage],
                "holds no PEM certificate",
            ),
            (
                &["--coordinator", https, "--coordinator-ca", bad_der],
                "certificate 1 in --coordinator-ca",
            ),
            (
                &["--coordinator-ca", good],
                "--coordinator-ca needs an https:// --coordinator (got `http://127.0.0.1:7070`)",
            ),
            (
                &["--coordinator-tls-server-name", "x"],
                "--coordinator-tls-server-name needs an https:// --coordinator",
            ),
            (
                &[
                    "--coordinator",
                    https,
                    "--coordinator-ca",
                    good,
                    "--coordinator-tls-server-name",
                    "not a name!",
                ],
                "--coordinator-tls-server-name \"not a name!\" is not a DNS name",
            ),
            (
                &["--coordinator", "ftp://coordinator:7070"],
                "must be an http:// or https:// URL",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args).validated().unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse(&[]).socket_mode, 0o660);
        assert_eq!(parse(&["--socket-mode", "0666"]).socket_mode, 0o666);
        assert_eq!(parse(&["--socket-mode", "600"]).socket_mode, 0o600);
        for bad in ["888", "01777", "rw"] {
            assert!(
                Config::try_parse_from([
                    "gate-sidecar",
                    "--pipeline",
                    "a/b",
                    "--deployment",
                    "d",
                    "--socket-mode",
                    bad
                ])
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_use_humantime() {
        let c = parse(&["--idle-timeout", "1m 30s", "--progress-interval", "50ms"]);
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.progress_interval, Duration::from_millis(50));
    }
}
