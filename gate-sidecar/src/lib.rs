//! The sluice gate sidecar: serves exactly one gate — one deployment of one pipeline — inside a
//! Flink TaskManager pod.
//!
//! Sink subtasks connect over a local socket (one connection = one *channel*) and send
//! sink-bound records in the native frame protocol (`sluice.v1.ClientFrame`, varint-delimited).
//! Every record is decided by the pure protocol core (`sluice_core::gate::GateCore`): admitted
//! records go to the [`Sink`], dropped ones are counted, held ones wait in the channel's bounded
//! hold queue for the coordinator's next assignment. The sidecar fails closed: until the
//! coordinator has assigned the gate a role, every record is held.
//!
//! Layout, one module per concept:
//!
//! - [`config`]: command-line flags / environment ([`Config`]) and their validation.
//! - `gate`: the shared gate state — core, watermark tracker, counters — behind one lock, so
//!   deciding records and applying an assignment (with its prepare vote) are mutually atomic.
//! - `counters`: the per-gate counters reported as progress.
//! - `known_channels`: the gate's channel ids on disk, for a restarted sidecar.
//! - `ceiling`: the persisted high-mark ceiling a restarted sidecar votes from.
//! - `atomic_file`: the crash-safe file replacement `ceiling` and `known_channels` use.
//! - `lease`: fences the gate when the coordinator's lease runs out.
//! - `channel`: one client connection: handshake, hold queue, backpressure, `Flush` acks,
//!   protocol errors.
//! - `control`: the `GateControl/Attach` client: hello, assignments, votes, progress,
//!   reconnects with backoff while keeping the last known state.
//! - [`sink`]: the [`Sink`] trait (ordered batches, each with an ack that resolves once
//!   delivered), the Kafka sink ([`sink::kafka`]), the embedded JSON-lines sink
//!   ([`sink::jsonl`]) and the discarding [`sink::NullSink`].
//! - `kafka_front`: the Kafka front — the sidecar listens like a Kafka cluster, so a stock
//!   Kafka producer writes through the same gate (`--kafka-listen`).
//! - `flink_rest`: with `--flink-rest`, the Kafka front's exact watermark — Flink's REST API
//!   polled, each sink watermark confirmed by a checkpoint triggered after it.
//! - `health`: the optional HTTP `/livez` and `/readyz` endpoints for the kubelet, and
//!   `/metrics`.
//! - `metrics`: the gate's Prometheus metrics, one snapshot per scrape.
//! - `server`: listeners, the accept loop, [`run`] / [`run_with_sink`] and graceful shutdown.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod atomic_file;
mod ceiling;
mod channel;
pub mod config;
mod control;
mod counters;
mod flink_rest;
mod gate;
mod health;
mod kafka_front;
mod known_channels;
mod lease;
mod metrics;
mod server;
pub mod sink;

#[doc(hidden)]
pub use kafka_front::fuzz_request;

/// An error with its chain of causes, `a: b: c`, for logs and client-facing messages. A cause
/// whose text its parent already shows (some errors print their source) is not repeated.
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

pub use config::{Config, ConfigError, SinkSpec};
pub use flink_rest::{RestAddress, RestAddressError};
pub use gate::GateIdentity;
pub use server::{Listeners, SidecarError, run, run_with_sink};
pub use sink::{BatchAck, NullSink, Sink, SinkBatch, SinkError, SinkHeader, SinkRecord};
