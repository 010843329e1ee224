//! sluice's integration tests and demo.
//!
//! - [`sim`]: the deterministic, seeded simulation of the barrier protocol (pure core, no I/O).
//! - [`harness`]: the coordinator, sidecars and `Cutover` API as the process-level tests use
//!   them.
//! - [`procs`]: starting the real `coordinator` and `gate-sidecar` binaries.
//! - [`client`]: a native-frame client, doing what a Flink sink writer does.
//! - [`apache_kafka`]: a real Apache Kafka broker (KRaft, Maven Central), with TLS and SASL.
//! - [`kafka`]: a real tansu broker, topic creation and reading a topic back.
//! - [`kafka_wire`]: a hand-driven Kafka wire-protocol client, for the Kafka front's fault tests.
//! - [`flink`]: real Apache Flink jobs (the Java reference sink) cut over end to end.
//! - [`flink_front`]: real Flink jobs with the stock Kafka connector (DataStream, SQL) writing
//!   through the sidecars' Kafka fronts, cut over and read back record by record.
//! - [`scenario`]: the process-level blue/green cutover, counted record by record; used by the
//!   `demo` binary and `tests/process.rs`.
#![forbid(unsafe_code)]

pub mod apache_kafka;
pub mod client;
pub mod flink;
pub mod flink_front;
pub mod harness;
pub mod kafka;
pub mod kafka_wire;
pub mod procs;
pub mod scenario;
pub mod sim;
