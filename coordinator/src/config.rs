//! The coordinator's configuration: command-line flags, each also settable by a `SLUICE_*`
//! environment variable (handy in a Kubernetes Deployment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_core::gate::LatePolicy;
use sluice_core::pipeline::{PipelineOptions, Settings, SettingsError};
use thiserror::Error;

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

    /// A gate disconnected this long is forgotten (no longer blocks votes or the drain).
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
    /// The state file path is empty.
    #[error("--state-file must not be empty")]
    EmptyStateFile,
    /// The state file's directory does not exist (the first save would fail).
    #[error("the directory of state file {0} does not exist")]
    StateDirMissing(PathBuf),
    /// An interval that drives a timer is zero.
    #[error("--{0} must be greater than zero")]
    ZeroInterval(&'static str),
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
        self.options()?;
        self.default_settings()?
            .validate()
            .map_err(ConfigError::Settings)
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
        })
    }

    /// Behaviour that is not per cutover.
    pub fn options(&self) -> Result<PipelineOptions, ConfigError> {
        Ok(PipelineOptions {
            auto_activate: !self.no_auto_activate,
            gate_expiry_ms: unsigned_ms("gate-expiry", self.gate_expiry)?,
        })
    }
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
    }
}
