//! The coordinator's configuration: command-line flags, each also settable by a `SLUICE_*`
//! environment variable (handy in a Kubernetes Deployment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_core::gate::LatePolicy;
use sluice_core::pipeline::{PipelineOptions, Settings, SettingsError};
use thiserror::Error;

use crate::webhook::InjectionConfig;

/// The coordinator's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "sluice coordinator: chooses the barrier, drives cutovers, serves GateControl and \
             Cutover over gRPC"
)]
pub struct Config {
    /// Address to serve gRPC on. Only loopback addresses unless --allow-non-loopback.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Allow listening on a non-loopback address (the API has no authentication: put it
    /// behind a network policy or a mesh).
    #[arg(long, env = "SLUICE_ALLOW_NON_LOOPBACK")]
    pub allow_non_loopback: bool,

    /// PEM certificate chain for gRPC over TLS, server certificate first (e.g. a Secret's
    /// `tls.crt`). With --grpc-tls-key the gRPC listener serves only TLS (ALPN `h2`); without
    /// both it serves plaintext. Reloaded when the file changes.
    #[arg(long, env = "SLUICE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of --grpc-tls-cert (PKCS#8, PKCS#1 or SEC1; e.g. `tls.key`). Reloaded
    /// when the file changes.
    #[arg(long, env = "SLUICE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,

    /// How often the gRPC certificate and key files are checked for a change.
    #[arg(long, env = "SLUICE_GRPC_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grpc_tls_reload_interval: Duration,

    /// JSON file holding every pipeline's durable state; replaced atomically before every
    /// decision is announced. A missing file is an empty state.
    #[arg(long, env = "SLUICE_STATE_FILE", default_value = "sluice-state.json")]
    pub state_file: PathBuf,

    /// Default margin added to the largest high mark to choose the barrier.
    #[arg(long, env = "SLUICE_MARGIN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub margin: Duration,

    /// Default drain lateness: the drain waits for outgoing watermarks >= barrier + this.
    #[arg(long, env = "SLUICE_DRAIN_LATENESS", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_lateness: Duration,

    /// Default largest allowed lag of the candidate's watermark behind the active one.
    #[arg(long, env = "SLUICE_MAX_LAG", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_lag: Duration,

    /// Default time to wait for every gate's vote before aborting an attempt.
    #[arg(long, env = "SLUICE_PREPARE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub prepare_timeout: Duration,

    /// Default number of prepare attempts before a cutover gives up.
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Default number of candidate gates that must be attached before it counts as ready.
    #[arg(long, env = "SLUICE_MIN_GATES", default_value_t = 1)]
    pub min_gates: u32,

    /// A gate disconnected this long is forgotten (no longer blocks votes or the drain). Gates
    /// get half of it as their lease: a sidecar that hears nothing from the coordinator for that
    /// long holds every record until it is assigned again. At least 6 heartbeat intervals.
    #[arg(long, env = "SLUICE_GATE_EXPIRY", default_value = "2m", value_parser = humantime::parse_duration)]
    pub gate_expiry: Duration,

    /// Do not make the first deployment to attach to a new pipeline its active deployment
    /// (activate it with a StartCutover instead).
    #[arg(long, env = "SLUICE_NO_AUTO_ACTIVATE")]
    pub no_auto_activate: bool,

    /// Heartbeat sent on a gate's stream when nothing else was sent for this long.
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How often timeouts, readiness, the drain and gate expiry are re-evaluated.
    #[arg(long, env = "SLUICE_TICK_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub tick_interval: Duration,

    /// How often watchers receive a full status event.
    #[arg(long, env = "SLUICE_STATUS_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,

    /// Address to serve the Kubernetes mutating admission webhook on (HTTPS: `POST /mutate`,
    /// `GET /healthz`). No webhook when unset. Loopback only unless --allow-non-loopback.
    #[arg(long, env = "SLUICE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,

    /// PEM certificate chain of the webhook, server certificate first (e.g. a Secret's
    /// `tls.crt`). Required with --webhook-listen; reloaded when the file changes.
    #[arg(long, env = "SLUICE_WEBHOOK_CERT")]
    pub webhook_cert: Option<PathBuf>,

    /// PEM private key of the webhook certificate (PKCS#8, PKCS#1 or SEC1; e.g. `tls.key`).
    /// Required with --webhook-listen; reloaded when the file changes.
    #[arg(long, env = "SLUICE_WEBHOOK_KEY")]
    pub webhook_key: Option<PathBuf>,

    /// How often the webhook certificate and key files are checked for a change.
    #[arg(long, env = "SLUICE_WEBHOOK_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_reload_interval: Duration,

    /// Address to serve Prometheus metrics on (plain HTTP, `GET /metrics`). No metrics
    /// listener when unset. Loopback only unless --allow-non-loopback.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Container image of the gate sidecar that the webhook injects. Required with
    /// --webhook-listen.
    #[arg(long, env = "SLUICE_SIDECAR_IMAGE")]
    pub sidecar_image: Option<String>,

    /// CPU request of the injected sidecar (a Kubernetes quantity).
    #[arg(long, env = "SLUICE_SIDECAR_CPU_REQUEST", default_value = "100m")]
    pub sidecar_cpu_request: String,

    /// Memory request of the injected sidecar (a Kubernetes quantity).
    #[arg(long, env = "SLUICE_SIDECAR_MEMORY_REQUEST", default_value = "64Mi")]
    pub sidecar_memory_request: String,

    /// CPU limit of the injected sidecar; none by default, because a CPU limit throttles
    /// the gate, which is on the record path of the job.
    #[arg(long, env = "SLUICE_SIDECAR_CPU_LIMIT")]
    pub sidecar_cpu_limit: Option<String>,

    /// Memory limit of the injected sidecar (a Kubernetes quantity).
    #[arg(long, env = "SLUICE_SIDECAR_MEMORY_LIMIT", default_value = "256Mi")]
    pub sidecar_memory_limit: String,

    /// Sink of the injected sidecar (its `--sink`), unless the pod's `sluice.dev/sink`
    /// annotation names another.
    #[arg(long, env = "SLUICE_SIDECAR_SINK", default_value = "stdout")]
    pub sidecar_sink: String,

    /// gRPC URL of this coordinator as the injected sidecars reach it (its Service); an
    /// `https://` URL when the gRPC listener serves TLS.
    #[arg(
        long,
        env = "SLUICE_SIDECAR_COORDINATOR",
        default_value = "http://sluice-coordinator.sluice.svc:7070"
    )]
    pub sidecar_coordinator: String,

    /// ConfigMap, in the namespace of each injected pod, whose key `ca.crt` holds the CA
    /// (PEM) that signed the coordinator's gRPC certificate (e.g. published by a trust-manager
    /// Bundle). Mounted read-only into the sidecar, which trusts it (`SLUICE_COORDINATOR_CA`).
    /// Needs an `https://` --sidecar-coordinator; without it https sidecars use their system
    /// roots.
    #[arg(long, env = "SLUICE_SIDECAR_CA_CONFIGMAP")]
    pub sidecar_ca_configmap: Option<String>,
}

/// A configuration that cannot be served.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The listen address is not loopback and that was not explicitly allowed.
    #[error(
        "refusing to listen on non-loopback address {0}: the API is unauthenticated; pass \
         --allow-non-loopback (SLUICE_ALLOW_NON_LOOPBACK=true) if this is intended"
    )]
    NonLoopback(SocketAddr),
    /// The webhook or metrics address is not loopback and that was not explicitly allowed.
    #[error(
        "refusing --{flag} on non-loopback address {addr}: it is unauthenticated; pass \
         --allow-non-loopback (SLUICE_ALLOW_NON_LOOPBACK=true) if this is intended"
    )]
    NonLoopbackListener {
        /// The flag naming the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// Two listeners were given the same address.
    #[error("--{0} and --{1} have the same address {2}")]
    SameAddress(&'static str, &'static str, SocketAddr),
    /// A flag that the webhook needs is missing.
    #[error("--webhook-listen needs --{0}")]
    WebhookNeeds(&'static str),
    /// A webhook-only flag was given without --webhook-listen (likely a mistake).
    #[error("--{0} is only used with --webhook-listen")]
    WebhookOnly(&'static str),
    /// Only one of --grpc-tls-cert and --grpc-tls-key was given.
    #[error("--{given} needs --{missing}: give both (gRPC over TLS) or neither (plaintext)")]
    GrpcTlsPair {
        /// The flag that was given.
        given: &'static str,
        /// The flag that is missing.
        missing: &'static str,
    },
    /// A gRPC certificate or key file does not exist or is not a file.
    #[error("--{flag} {path} is not a readable file")]
    GrpcTlsFile {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// --sidecar-ca-configmap with a plaintext --sidecar-coordinator: the CA would be unused.
    #[error(
        "--sidecar-ca-configmap needs an https:// --sidecar-coordinator (got {0:?}): the \
         sidecars only use the CA for TLS"
    )]
    SidecarCaWithoutTls(String),
    /// The ConfigMap name is not a Kubernetes object name (the pod would not start).
    #[error(
        "--sidecar-ca-configmap {0:?} is not a Kubernetes ConfigMap name (lowercase letters, \
         digits, '-' and '.', at most 253 characters)"
    )]
    BadConfigMapName(String),
    /// A webhook certificate or key file does not exist or is not a file.
    #[error("--{flag} {path} is not a readable file")]
    WebhookFile {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A sidecar resource is not a Kubernetes quantity (a pod with it would be refused).
    #[error("--{flag} {value:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)")]
    BadQuantity {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A sidecar setting that ends up in every injected pod is empty or has whitespace.
    #[error("--{flag} {value:?} must be non-empty and without whitespace")]
    BadSidecarValue {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// The coordinator URL given to sidecars is not an http(s) URL.
    #[error("--sidecar-coordinator {0:?} must be an http:// or https:// URL")]
    BadCoordinatorUrl(String),
    /// The state file path is empty.
    #[error("--state-file must not be empty")]
    EmptyStateFile,
    /// The state file's directory does not exist (the first save would fail).
    #[error("the directory of state file {0} does not exist")]
    StateDirMissing(PathBuf),
    /// An interval that drives a timer is zero.
    #[error("--{0} must be greater than zero")]
    ZeroInterval(&'static str),
    /// The gate lease (half the gate expiry) would not outlast a few missed heartbeats.
    #[error(
        "--gate-expiry ({expiry}) must be at least 6 times --heartbeat-interval ({heartbeat}): \
         gates fence themselves after half the expiry without a word from the coordinator"
    )]
    LeaseTooShort {
        /// The gate expiry given.
        expiry: String,
        /// The heartbeat interval given.
        heartbeat: String,
    },
    /// A duration does not fit in the millisecond fields of the protocol.
    #[error("--{0} is too large")]
    TooLarge(&'static str),
    /// A default cutover setting is out of range.
    #[error("invalid default cutover setting")]
    Settings(#[source] SettingsError),
}

impl Config {
    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            return Err(ConfigError::NonLoopback(self.listen));
        }
        if self.state_file.as_os_str().is_empty() {
            return Err(ConfigError::EmptyStateFile);
        }
        if let Some(dir) = self.state_file.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(ConfigError::StateDirMissing(self.state_file.clone()));
        }
        self.validate_listeners()?;
        self.validate_grpc_tls()?;
        self.validate_webhook()?;
        for (name, d) in [
            ("heartbeat-interval", self.heartbeat_interval),
            ("tick-interval", self.tick_interval),
            ("status-interval", self.status_interval),
            ("gate-expiry", self.gate_expiry),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroInterval(name));
            }
        }
        // Checked multiplication: a huge --heartbeat-interval must be an error, not a panic.
        if self
            .heartbeat_interval
            .checked_mul(6)
            .is_none_or(|min| self.gate_expiry < min)
        {
            return Err(ConfigError::LeaseTooShort {
                expiry: humantime::format_duration(self.gate_expiry).to_string(),
                heartbeat: humantime::format_duration(self.heartbeat_interval).to_string(),
            });
        }
        self.options()?;
        self.default_settings()?
            .validate()
            .map_err(ConfigError::Settings)
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("listen", Some(self.listen)),
            ("webhook-listen", self.webhook_listen),
            ("metrics-listen", self.metrics_listen),
        ];
        for (flag, addr) in listeners.iter().skip(1) {
            if let Some(addr) = addr
                && !addr.ip().is_loopback()
                && !self.allow_non_loopback
            {
                return Err(ConfigError::NonLoopbackListener { flag, addr: *addr });
            }
        }
        for (i, (a_flag, a)) in listeners.iter().enumerate() {
            for (b_flag, b) in &listeners[i + 1..] {
                // Port 0 picks a free port for each listener: no clash.
                if let (Some(a), Some(b)) = (a, b)
                    && a == b
                    && a.port() != 0
                {
                    return Err(ConfigError::SameAddress(a_flag, b_flag, *a));
                }
            }
        }
        Ok(())
    }

    fn validate_grpc_tls(&self) -> Result<(), ConfigError> {
        let (cert, key) = match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (None, None) => return Ok(()),
            (Some(_), None) => {
                return Err(ConfigError::GrpcTlsPair {
                    given: "grpc-tls-cert",
                    missing: "grpc-tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::GrpcTlsPair {
                    given: "grpc-tls-key",
                    missing: "grpc-tls-cert",
                });
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        for (flag, path) in [("grpc-tls-cert", cert), ("grpc-tls-key", key)] {
            // `is_file` follows symlinks, as a Secret volume's files are.
            if !path.is_file() {
                return Err(ConfigError::GrpcTlsFile {
                    flag,
                    path: path.clone(),
                });
            }
        }
        if self.grpc_tls_reload_interval.is_zero() {
            return Err(ConfigError::ZeroInterval("grpc-tls-reload-interval"));
        }
        Ok(())
    }

    /// Whether the gRPC listener serves TLS (both --grpc-tls-cert and --grpc-tls-key given).
    pub fn grpc_tls(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.grpc_tls_cert.as_ref().zip(self.grpc_tls_key.as_ref())
    }

    fn validate_webhook(&self) -> Result<(), ConfigError> {
        if self.webhook_listen.is_none() {
            for (flag, given) in [
                ("webhook-cert", self.webhook_cert.is_some()),
                ("webhook-key", self.webhook_key.is_some()),
            ] {
                if given {
                    return Err(ConfigError::WebhookOnly(flag));
                }
            }
            return Ok(());
        }
        for (flag, path) in [
            ("webhook-cert", &self.webhook_cert),
            ("webhook-key", &self.webhook_key),
        ] {
            let path = path.as_ref().ok_or(ConfigError::WebhookNeeds(flag))?;
            // `is_file` follows symlinks, as a Secret volume's files are.
            if !path.is_file() {
                return Err(ConfigError::WebhookFile {
                    flag,
                    path: path.clone(),
                });
            }
        }
        if self.webhook_reload_interval.is_zero() {
            return Err(ConfigError::ZeroInterval("webhook-reload-interval"));
        }
        self.injection()?;
        Ok(())
    }

    /// What the webhook injects, from the `--sidecar-*` flags; `None` without --webhook-listen.
    pub fn injection(&self) -> Result<Option<InjectionConfig>, ConfigError> {
        if self.webhook_listen.is_none() {
            return Ok(None);
        }
        let image = self
            .sidecar_image
            .clone()
            .ok_or(ConfigError::WebhookNeeds("sidecar-image"))?;
        for (flag, value) in [
            ("sidecar-image", &image),
            ("sidecar-sink", &self.sidecar_sink),
        ] {
            if value.is_empty() || value.chars().any(char::is_whitespace) {
                return Err(ConfigError::BadSidecarValue {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let url = &self.sidecar_coordinator;
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.chars().any(char::is_whitespace)) {
            return Err(ConfigError::BadCoordinatorUrl(url.clone()));
        }
        if let Some(name) = &self.sidecar_ca_configmap {
            if !url.starts_with("https://") {
                return Err(ConfigError::SidecarCaWithoutTls(url.clone()));
            }
            if !is_object_name(name) {
                return Err(ConfigError::BadConfigMapName(name.clone()));
            }
        }
        let quantity = |flag: &'static str, value: &str| {
            if is_quantity(value) {
                Ok(value.to_owned())
            } else {
                Err(ConfigError::BadQuantity {
                    flag,
                    value: value.to_owned(),
                })
            }
        };
        Ok(Some(InjectionConfig {
            image,
            cpu_request: quantity("sidecar-cpu-request", &self.sidecar_cpu_request)?,
            memory_request: quantity("sidecar-memory-request", &self.sidecar_memory_request)?,
            cpu_limit: self
                .sidecar_cpu_limit
                .as_deref()
                .map(|v| quantity("sidecar-cpu-limit", v))
                .transpose()?,
            memory_limit: quantity("sidecar-memory-limit", &self.sidecar_memory_limit)?,
            sink: self.sidecar_sink.clone(),
            coordinator: url.clone(),
            coordinator_ca_configmap: self.sidecar_ca_configmap.clone(),
        }))
    }

    /// The per-cutover defaults, used where a StartCutover request leaves a field unset.
    pub fn default_settings(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            margin_ms: signed_ms("margin", self.margin)?,
            drain_lateness_ms: signed_ms("drain-lateness", self.drain_lateness)?,
            min_gates: self.min_gates,
            max_lag_ms: signed_ms("max-lag", self.max_lag)?,
            prepare_timeout_ms: unsigned_ms("prepare-timeout", self.prepare_timeout)?,
            max_attempts: self.max_attempts,
            late_policy: LatePolicy::Drop,
            now: false,
            ready_timeout_ms: 0,
            force: false,
        })
    }

    /// The lease every gate gets: half the gate expiry, so a gate cut off from the coordinator
    /// fences itself well before the coordinator forgets it.
    pub fn gate_lease(&self) -> Duration {
        self.gate_expiry / 2
    }

    /// Behaviour that is not per cutover.
    pub fn options(&self) -> Result<PipelineOptions, ConfigError> {
        Ok(PipelineOptions {
            auto_activate: !self.no_auto_activate,
            gate_expiry_ms: unsigned_ms("gate-expiry", self.gate_expiry)?,
        })
    }
}

/// Whether `s` is a Kubernetes resource quantity: a non-negative decimal number with an
/// optional binary (`Ki`..`Ei`), decimal (`n`, `u`, `m`, `k`, `M`..`E`) or exponent suffix.
/// Checked here because the API server refuses a pod with a bad quantity, so a typo would
/// stop every injected TaskManager from being created.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    valid_number && valid_suffix
}

/// Whether `s` is a Kubernetes object name (a DNS subdomain: RFC 1123 labels of lowercase
/// letters, digits and '-', joined by '.', at most 253 characters). Checked here because a pod
/// mounting a ConfigMap or Secret under an invalid name is refused by the API server.
pub(crate) fn is_object_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(label_ok)
}

fn unsigned_ms(name: &'static str, d: Duration) -> Result<u64, ConfigError> {
    u64::try_from(d.as_millis()).map_err(|_| ConfigError::TooLarge(name))
}

fn signed_ms(name: &'static str, d: Duration) -> Result<i64, ConfigError> {
    i64::try_from(d.as_millis()).map_err(|_| ConfigError::TooLarge(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_match_the_core_defaults() {
        let c = parse(&[]);
        assert_eq!(c.listen, "127.0.0.1:7070".parse().unwrap());
        c.validate().unwrap();
        assert_eq!(c.default_settings().unwrap(), Settings::default());
        assert_eq!(c.options().unwrap(), PipelineOptions::default());
    }

    #[test]
    fn non_loopback_needs_the_flag() {
        let c = parse(&["--listen", "0.0.0.0:7070"]);
        assert!(matches!(c.validate(), Err(ConfigError::NonLoopback(_))));
        parse(&["--listen", "0.0.0.0:7070", "--allow-non-loopback"])
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            parse(&["--max-attempts", "0"]).validate(),
            Err(ConfigError::Settings(_))
        ));
        assert!(matches!(
            parse(&["--tick-interval", "0s"]).validate(),
            Err(ConfigError::ZeroInterval("tick-interval"))
        ));
        assert!(matches!(
            parse(&["--state-file", "/nonexistent-dir/x.json"]).validate(),
            Err(ConfigError::StateDirMissing(_))
        ));
        assert!(Config::try_parse_from(["coordinator", "--margin", "soon"]).is_err());
        let err = parse(&["--gate-expiry", "5s", "--heartbeat-interval", "1s"])
            .validate()
            .unwrap_err();
        assert!(matches!(err, ConfigError::LeaseTooShort { .. }), "{err}");
        assert!(err.to_string().contains("--gate-expiry (5s)"), "{err}");
        // Six times a huge heartbeat overflows: still an error, not a panic.
        assert!(matches!(
            parse(&["--heartbeat-interval", "4000000000000000000s"]).validate(),
            Err(ConfigError::LeaseTooShort { .. })
        ));
        let ok = parse(&["--gate-expiry", "6s", "--heartbeat-interval", "1s"]);
        ok.validate().unwrap();
        assert_eq!(ok.gate_lease(), std::time::Duration::from_secs(3));
    }

    #[test]
    fn grpc_tls_needs_both_files() {
        let c = parse(&["--grpc-tls-cert", "/nonexistent/tls.crt"]);
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::GrpcTlsPair { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("--grpc-tls-cert needs --grpc-tls-key"),
            "{err}"
        );
        let err = parse(&["--grpc-tls-key", "k"]).validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("--grpc-tls-key needs --grpc-tls-cert"),
            "{err}"
        );
        let err = parse(&[
            "--grpc-tls-cert",
            "/nonexistent/c",
            "--grpc-tls-key",
            "/nonexistent/k",
        ])
        .validate()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--grpc-tls-cert /nonexistent/c is not a readable file"),
            "{err}"
        );
        assert!(parse(&[]).grpc_tls().is_none());
    }

    #[test]
    fn object_names_follow_kubernetes() {
        for ok in ["sluice-ca", "a", "ca.sluice.dev", "x1-2"] {
            assert!(is_object_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Sluice-CA",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"x".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }
}
