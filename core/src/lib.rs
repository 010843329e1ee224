//! sluice's barrier protocol as pure state machines: no I/O, no async, no clock.
//!
//! - [`gate`]: one gate's admission — the table of `DESIGN.md` ([`gate::decide`]), fail-closed
//!   start, versioned assignments and the prepare vote ([`gate::GateCore`]).
//! - [`channel`]: a channel's bounded, order-keeping hold queue ([`channel::ChannelQueue`]).
//! - [`watermark`]: per-channel watermarks and idleness folded into a gate watermark.
//! - [`flushed`]: a watermark confirmed by a later checkpoint (Flink's REST API), the exact
//!   drain for Kafka producers that send no watermarks.
//! - [`pipeline`]: the coordinator's per-pipeline cutover state machine (readiness, barrier
//!   choice, prepare/commit/abort with retries, drain, gate expiry, restart).
//!
//! The sidecar and the coordinator wrap these in networking; the seeded simulation in
//! `integration-tests` drives them directly. Time is always an argument (`now_ms`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod flushed;
pub mod gate;
pub mod pipeline;
pub mod watermark;

/// An event time: milliseconds since the Unix epoch.
pub type EventTime = i64;
