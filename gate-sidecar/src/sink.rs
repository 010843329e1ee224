//! Where admitted records go: the [`Sink`] trait and its batch acknowledgement.
//!
//! A channel hands its admitted records to the sink in ordered batches ([`SinkBatch`]), one
//! batch per decision step. [`Sink::submit`] waits while the sink's bounded queue is full (that
//! is the backpressure a slow or absent sink exerts on the channel) and returns a [`BatchAck`]
//! that resolves once the sink has durably accepted the whole batch, or failed it. A channel
//! only acknowledges a `Flush` after every earlier batch's ack resolved `Ok`, so nothing is
//! ever reported as delivered before it is.
//!
//! Implementations: [`kafka::KafkaSink`] (librdkafka, idempotent, `acks=all`), the embedded
//! [`jsonl::JsonLinesSink`] (stdout or a file), and [`NullSink`] (discards, for benchmarks).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use sluice_core::EventTime;
use thiserror::Error;
use tokio::sync::oneshot;

pub mod jsonl;
pub mod kafka;

/// One admitted record on its way to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    /// Destination topic (the default topic already filled in; shared, as most records use it).
    pub topic: Arc<str>,
    /// Destination partition; `None` lets the sink's partitioner choose.
    pub partition: Option<i32>,
    /// Record key; empty means no key. (A slice of the frame it came in: no copy.)
    pub key: Bytes,
    /// Record value.
    pub value: Bytes,
    /// Headers, passed through unchanged.
    pub headers: Vec<SinkHeader>,
    /// Event time in ms since the Unix epoch.
    pub event_time_ms: EventTime,
}

/// One record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkHeader {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// Records admitted together from one channel, in the channel's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkBatch {
    /// The channel (sink subtask) the records came from.
    pub channel: Arc<str>,
    /// The records, oldest first. Never empty.
    pub records: Vec<SinkRecord>,
}

/// Why the sink could not accept records.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink's output could not be opened.
    #[error("cannot open sink {target}")]
    Open {
        /// What was being opened (e.g. `file:/path`).
        target: String,
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Writing or flushing the sink's output failed.
    #[error("cannot write to sink {target}")]
    Write {
        /// The sink's output (e.g. `stdout`).
        target: String,
        /// The I/O failure, shared by every batch of the failed write.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A record could not be encoded for the sink.
    #[error("cannot encode a record for the sink")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The downstream system refused the records (e.g. a broker error).
    #[error("sink refused the records: {0}")]
    Refused(String),
    /// The sink stopped and accepts nothing more.
    #[error("the sink has stopped")]
    Closed,
    /// The sink dropped a batch without saying whether it was delivered.
    #[error("the sink dropped a batch without acknowledging it")]
    Abandoned,
    /// A JSON-lines sink was asked to open a target that is not stdout or a file.
    #[error("sink `{0}` is not a JSON-lines sink")]
    NotJsonLines(String),
    /// The Kafka configuration is unusable.
    #[error("invalid Kafka configuration")]
    KafkaConfig(#[source] Arc<kafka::KafkaConfigError>),
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer")]
    KafkaClient(#[source] rdkafka::error::KafkaError),
    /// librdkafka refused to queue a record (e.g. too large, unknown partition).
    #[error("Kafka refused a record for topic `{topic}`")]
    Produce {
        /// The record's topic.
        topic: String,
        /// librdkafka's answer.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A record was queued but Kafka did not acknowledge it (timeout, broker error).
    #[error("Kafka did not acknowledge a record for {topic}/{partition}")]
    Delivery {
        /// The record's topic.
        topic: String,
        /// The partition it was sent to (-1 if none was chosen).
        partition: i32,
        /// librdkafka's answer.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Outstanding records were not acknowledged before the shutdown flush timed out.
    #[error("Kafka did not acknowledge every record before shutdown")]
    KafkaFlush(#[source] rdkafka::error::KafkaError),
    /// The idempotent producer hit a fatal error: nothing more can be delivered by it.
    #[error("fatal Kafka producer error ({0}); restart the sidecar")]
    Fatal(String),
}

/// Where admitted records go. Implementations must keep the order of the batches submitted by
/// one channel (the sidecar submits them one at a time, in order).
pub trait Sink: Send + Sync + 'static {
    /// Queues one batch. Waits while the sink's bounded queue is full; never drops records to
    /// make room. The returned ack resolves once the batch is durably accepted, or failed.
    fn submit(&self, batch: SinkBatch) -> impl Future<Output = Result<BatchAck, SinkError>> + Send;

    /// Waits until every batch submitted before the call is acknowledged (or failed) and the
    /// output is flushed. Called once on shutdown, after the channels have stopped.
    fn flush(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Discards admitted records, acknowledging each batch at once (benchmarks of the gate path,
/// dry runs). `FlushAck`s still wait for every record to be decided.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl Sink for NullSink {
    async fn submit(&self, _batch: SinkBatch) -> Result<BatchAck, SinkError> {
        Ok(BatchAck::ready(Ok(())))
    }

    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Resolves once the sink has durably accepted a batch, or with why it has not.
///
/// Dropping the [`AckSender`] without completing resolves it with [`SinkError::Abandoned`], so
/// a crashed sink task can never make a batch look delivered.
#[derive(Debug)]
#[must_use = "a batch is only delivered once its ack resolves Ok"]
pub struct BatchAck {
    rx: oneshot::Receiver<Result<(), SinkError>>,
}

/// The sink's side of a [`BatchAck`].
#[derive(Debug)]
pub struct AckSender {
    tx: oneshot::Sender<Result<(), SinkError>>,
}

impl BatchAck {
    /// A pending ack and the sender that completes it.
    pub fn pending() -> (AckSender, BatchAck) {
        let (tx, rx) = oneshot::channel();
        (AckSender { tx }, BatchAck { rx })
    }

    /// An ack that is already resolved (for sinks that deliver synchronously).
    pub fn ready(result: Result<(), SinkError>) -> BatchAck {
        let (tx, ack) = Self::pending();
        tx.complete(result);
        ack
    }
}

impl AckSender {
    /// Resolves the ack. A receiver that went away (its channel closed) is not an error.
    pub fn complete(self, result: Result<(), SinkError>) {
        let _ = self.tx.send(result);
    }
}

impl Future for BatchAck {
    type Output = Result<(), SinkError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(SinkError::Abandoned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acks_resolve_with_the_sinks_answer_or_abandoned() {
        let (tx, ack) = BatchAck::pending();
        tx.complete(Ok(()));
        assert!(ack.await.is_ok());

        let (tx, ack) = BatchAck::pending();
        drop(tx);
        assert!(matches!(ack.await, Err(SinkError::Abandoned)));

        let ack = BatchAck::ready(Err(SinkError::Refused("broker down".into())));
        let err = ack.await.unwrap_err();
        assert_eq!(err.to_string(), "sink refused the records: broker down");
    }
}
