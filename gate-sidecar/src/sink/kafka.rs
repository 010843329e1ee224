//! Admitted records to Kafka, through librdkafka (the `rdkafka` crate's bundled, statically
//! linked build).
//!
//! One idempotent producer per sidecar (`acks=all`, `enable.idempotence=true`, Java-compatible
//! `murmur2_random` partitioner). Each record keeps its topic, partition (when the client named
//! one), key, value, headers, and its event time as the Kafka timestamp.
//!
//! **Acknowledgement.** A batch's records are enqueued in the channel's order, each carrying the
//! batch's shared [`Tracker`] as its delivery opaque. The tracker resolves the batch's
//! [`BatchAck`] once the brokers acknowledged its last record, or with the first failure.
//! Because the channel only answers a `Flush` after every earlier batch resolved `Ok`, a
//! `FlushAck` implies Kafka acknowledged every admitted record before it. Idempotence keeps
//! each partition's order across retries.
//!
//! **Backpressure.** [`Slots`] counts the records handed to librdkafka and not yet reported,
//! bounded by `queue.buffering.max.messages`; [`KafkaSink::submit`] waits for free slots and the
//! delivery callback frees them (an atomic counter, not a semaphore: the callback runs once per
//! record and must stay cheap). librdkafka's byte bound (`queue.buffering.max.kbytes`, 64 MiB here
//! unless configured) can still answer `QueueFull`; `submit` then retries after a short pause.
//! Either way a channel that cannot submit stops reading its socket, so a slow or absent broker
//! slows the job down instead of growing a buffer.
//!
//! **Failure.** A record that cannot be delivered within `message.timeout.ms` fails its batch,
//! which closes that channel with `SINK_FAILED` (the client replays from its checkpoint). A
//! fatal producer error (the idempotence guarantees can no longer be kept) fails everything and
//! trips [`KafkaSink::fatal`], on which the sidecar exits so a fresh producer replaces it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use thiserror::Error;
use tokio::sync::Notify;

use super::{AckSender, BatchAck, Sink, SinkBatch, SinkError, SinkRecord};

/// Pause before retrying a record librdkafka refused with `QueueFull` (its byte bound).
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);
/// Longest wait for outstanding deliveries on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings sluice always applies; a user option may not change them. `request.required.acks`
/// is librdkafka's other name for `acks`; without delivery reports for successes no batch would
/// ever be acknowledged and the queue would never drain.
const FIXED: &[(&str, &str)] = &[
    ("acks", "all"),
    ("request.required.acks", "all"),
    ("enable.idempotence", "true"),
    ("delivery.report.only.error", "false"),
];

/// Defaults sluice applies unless the user sets the option.
const DEFAULTS: &[(&str, &str)] = &[
    // What the Java client does for keyed records, so sluice writes where Flink's own Kafka
    // sink would have.
    ("partitioner", "murmur2_random"),
    // librdkafka's default is 1 GiB; a sidecar should not hold that much.
    ("queue.buffering.max.kbytes", "65536"),
    ("queue.buffering.max.messages", "100000"),
    ("client.id", "sluice-gate-sidecar"),
];

/// Option names whose values must never be logged.
const SECRET_MARKERS: &[&str] = &["password", "secret", "token", "jaas", "key.pem", "private"];

/// The Kafka sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma-separated `host:port`.
    pub bootstrap: String,
    /// Further librdkafka options, `(name, value)`, applied over sluice's defaults.
    pub options: Vec<(String, String)>,
}

/// A Kafka configuration sluice cannot run with.
#[derive(Debug, Error)]
pub enum KafkaConfigError {
    /// The bootstrap list is empty.
    #[error("`kafka:` needs bootstrap servers, e.g. `kafka:127.0.0.1:9092`")]
    EmptyBootstrap,
    /// An option would weaken the delivery guarantees.
    #[error(
        "librdkafka option `{name}={value}` is not allowed: sluice needs `{name}={required}` \
         for its delivery guarantees"
    )]
    Weakened {
        /// The option.
        name: String,
        /// The value given.
        value: String,
        /// The only value accepted.
        required: &'static str,
    },
    /// `bootstrap.servers` given as an option.
    #[error("give the brokers in `--sink kafka:HOST:PORT,...`, not as `bootstrap.servers`")]
    BootstrapOption,
    /// An option is not `name=value`.
    #[error("Kafka option `{0}` must have the form `name=value`")]
    NotPair(String),
    /// librdkafka refused an option (unknown name or bad value).
    #[error("librdkafka refused the producer configuration")]
    Rejected(#[source] KafkaError),
    /// `--kafka-options-file` cannot be read.
    #[error("cannot read the Kafka options file {path}")]
    OptionsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of `--kafka-options-file` is not `name=value` (not shown: it may hold a secret).
    #[error("line {line} of the Kafka options file {path} is not name=value")]
    OptionsFileLine {
        /// The file.
        path: std::path::PathBuf,
        /// The line number, from 1.
        line: usize,
    },
}

/// Parses one `name=value` option.
pub fn parse_option(s: &str) -> Result<(String, String), KafkaConfigError> {
    match s.split_once('=') {
        // Both sides trimmed: `sasl.password = s3cret` in a properties file means `s3cret`.
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(KafkaConfigError::NotPair(redact_pair(s))),
    }
}

impl KafkaSettings {
    /// The producer configuration: sluice's defaults, then the user's options, then the fixed
    /// guarantees. Checked by librdkafka itself, without creating a client.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        if self.bootstrap.trim().is_empty() {
            return Err(KafkaConfigError::EmptyBootstrap);
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (name, value) in DEFAULTS {
            config.set(*name, *value);
        }
        for (name, value) in &self.options {
            if name == "bootstrap.servers" {
                return Err(KafkaConfigError::BootstrapOption);
            }
            if let Some((_, required)) = FIXED.iter().find(|(n, _)| n == name)
                && !same_setting(name, value, required)
            {
                return Err(KafkaConfigError::Weakened {
                    name: name.clone(),
                    value: value.clone(),
                    required,
                });
            }
            config.set(name, value);
        }
        for (name, value) in FIXED {
            config.set(*name, *value);
        }
        config.set_log_level(RDKafkaLogLevel::Warning);
        config
            .create_native_config()
            .map_err(KafkaConfigError::Rejected)?;
        Ok(config)
    }

    /// The options for a log line: secret values replaced by `***`.
    pub fn redacted_options(&self) -> Vec<String> {
        self.options
            .iter()
            .map(|(n, v)| redact_pair(&format!("{n}={v}")))
            .collect()
    }
}

/// `acks=-1` means `acks=all`; booleans may be spelled in several ways.
fn same_setting(name: &str, value: &str, required: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    match name {
        "acks" | "request.required.acks" => value == "all" || value == "-1",
        _ => {
            value == required
                || (required == "true" && value == "1")
                || (required == "false" && value == "0")
        }
    }
}

/// `s` for a log line or an error: after a secret-looking name, nothing (also when the value
/// is separated by something other than `=`, as in a mistyped `sasl.password:hunter2`).
fn redact_pair(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    if !SECRET_MARKERS.iter().any(|m| lower.contains(m)) {
        return s.to_owned();
    }
    let name_end = s
        .find(|c: char| c == '=' || c == ':' || c.is_whitespace())
        .unwrap_or(s.len());
    format!("{}=***", &s[..name_end])
}

/// The bounded count of records in librdkafka's hands.
#[derive(Debug)]
struct Slots {
    used: AtomicUsize,
    max: usize,
    /// Submitters waiting for room.
    waiting: AtomicUsize,
    freed: Notify,
}

impl Slots {
    fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes `n <= max` slots if they are free.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + n <= self.max).then_some(used + n)
            })
            .is_ok()
    }

    /// Waits until `n <= max` slots are free and takes them.
    async fn take(&self, n: usize) {
        if self.try_take(n) {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            // Registered before the re-check, so a release in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(n) {
                break;
            }
            freed.await;
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Returns `n` slots.
    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// Resolves one batch's ack when its last record is acknowledged, or at its first failure.
#[derive(Debug)]
struct Tracker {
    remaining: AtomicUsize,
    ack: Mutex<Option<AckSender>>,
}

impl Tracker {
    fn new(records: usize, ack: AckSender) -> Self {
        Self {
            remaining: AtomicUsize::new(records),
            ack: Mutex::new(Some(ack)),
        }
    }

    fn take(&self) -> Option<AckSender> {
        self.ack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn delivered(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(ack) = self.take()
        {
            ack.complete(Ok(()));
        }
    }

    fn failed(&self, error: SinkError) {
        if let Some(ack) = self.take() {
            ack.complete(Err(error));
        }
    }
}

/// The same transient client error is logged at most once per this long (librdkafka repeats
/// "all brokers down" every few hundred ms during an outage).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// librdkafka's callbacks: deliveries, errors and logs.
struct Callbacks {
    slots: Arc<Slots>,
    /// Woken on every client error, so [`KafkaSink::fatal`] can ask the client whether it was
    /// fatal: the error event carries the underlying code (say OUT_OF_ORDER_SEQUENCE_NUMBER),
    /// not `Fatal`, and the context has no client handle to ask.
    error_seen: Notify,
    /// Last logged transient error: its code and when, and how many were not logged since.
    last_error: Mutex<Option<(Option<RDKafkaErrorCode>, Instant, u64)>>,
}

impl ClientContext for Callbacks {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.error_seen.notify_one();
        // Mostly transient (broker down, connection refused...): librdkafka retries by itself.
        // A fatal one is reported by `KafkaSink::fatal`.
        let code = error.rdkafka_error_code();
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &mut *last {
            Some((c, at, suppressed)) if *c == code && at.elapsed() < ERROR_LOG_INTERVAL => {
                *suppressed += 1;
            }
            _ => {
                let suppressed = last.map_or(0, |(_, _, n)| n);
                tracing::warn!(%error, reason, suppressed, "Kafka client error");
                *last = Some((code, Instant::now(), 0));
            }
        }
    }
}

impl ProducerContext for Callbacks {
    type DeliveryOpaque = Arc<Tracker>;

    fn delivery(&self, result: &DeliveryResult<'_>, tracker: Arc<Tracker>) {
        self.slots.give(1);
        match result {
            Ok(_) => tracker.delivered(),
            Err((error, message)) => tracker.failed(SinkError::Delivery {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                source: error.clone(),
            }),
        }
    }
}

/// The Kafka sink: one idempotent producer shared by every channel.
#[derive(Clone)]
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Callbacks>>,
    slots: Arc<Slots>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("queued", &self.queued())
            .field("max_queued", &self.slots.max)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer (connections are made lazily, so an unreachable broker is not an
    /// error here: records wait until it is reachable).
    pub fn open(settings: &KafkaSettings) -> Result<Self, SinkError> {
        let config = settings
            .client_config()
            .map_err(|e| SinkError::KafkaConfig(Arc::new(e)))?;
        let max = config
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100_000);
        let slots = Arc::new(Slots::new(max));
        let callbacks = Callbacks {
            slots: slots.clone(),
            error_seen: Notify::new(),
            last_error: Mutex::new(None),
        };
        let producer = config
            .create_with_context(callbacks)
            .map_err(SinkError::KafkaClient)?;
        tracing::info!(
            bootstrap = %settings.bootstrap,
            options = ?settings.redacted_options(),
            max_queued = max,
            "Kafka producer created (acks=all, idempotent)"
        );
        Ok(Self {
            producer: Arc::new(producer),
            slots,
        })
    }

    /// Records handed to librdkafka and not yet acknowledged or failed (at most the
    /// `queue.buffering.max.messages` bound).
    pub fn queued(&self) -> usize {
        self.slots.used.load(Ordering::SeqCst)
    }

    /// The bound on [`KafkaSink::queued`].
    pub fn max_queued(&self) -> usize {
        self.slots.max
    }

    /// Completes when the producer hit a fatal error and can deliver nothing more.
    pub async fn fatal(&self) -> SinkError {
        loop {
            // An error between the check and the wait leaves a permit: nothing is missed.
            if let Some(e) = self.fatal_now() {
                tracing::error!(error = %e, "fatal Kafka producer error; the sidecar will stop");
                return e;
            }
            self.producer.context().error_seen.notified().await;
        }
    }

    /// The client's fatal error, if it has one.
    fn fatal_now(&self) -> Option<SinkError> {
        let (code, reason) = self.producer.client().fatal_error()?;
        Some(SinkError::Fatal(format!("{code}: {reason}")))
    }

    /// Enqueues one record, retrying while librdkafka's byte bound is reached.
    async fn enqueue(&self, r: &SinkRecord, tracker: &Arc<Tracker>) -> Result<(), SinkError> {
        let mut record: BaseRecord<'_, [u8], [u8], Arc<Tracker>> =
            BaseRecord::with_opaque_to(&r.topic, tracker.clone())
                .payload(r.value.as_ref())
                .timestamp(r.event_time_ms);
        if !r.key.is_empty() {
            record = record.key(r.key.as_ref());
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if !r.headers.is_empty() {
            let headers = r.headers.iter().fold(
                OwnedHeaders::new_with_capacity(r.headers.len()),
                |h, header| {
                    h.insert(Header {
                        key: &header.key,
                        value: Some(header.value.as_ref()),
                    })
                },
            );
            record = record.headers(headers);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _)) => {
                    return Err(self
                        .fatal_now()
                        .unwrap_or_else(|| SinkError::Fatal("no reason given".to_owned())));
                }
                Err((error, _)) => {
                    return Err(SinkError::Produce {
                        topic: r.topic.to_string(),
                        source: error,
                    });
                }
            }
        }
    }
}

impl Sink for KafkaSink {
    async fn submit(&self, batch: SinkBatch) -> Result<BatchAck, SinkError> {
        if batch.records.is_empty() {
            // A tracker of nothing would never resolve, and its dropped sender would fail it.
            return Ok(BatchAck::ready(Ok(())));
        }
        let (tx, ack) = BatchAck::pending();
        let tracker = Arc::new(Tracker::new(batch.records.len(), tx));
        for chunk in batch.records.chunks(self.slots.max) {
            // Freed one by one by the delivery callback.
            self.slots.take(chunk.len()).await;
            for (i, record) in chunk.iter().enumerate() {
                if let Err(e) = self.enqueue(record, &tracker).await {
                    self.slots.give(chunk.len() - i);
                    return Err(e);
                }
            }
        }
        Ok(ack)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(FLUSH_TIMEOUT)))
            .await
            .map_err(|_| SinkError::Abandoned)?
            .map_err(SinkError::KafkaFlush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(options: &[&str]) -> KafkaSettings {
        KafkaSettings {
            bootstrap: "127.0.0.1:9092".into(),
            options: options.iter().map(|o| parse_option(o).unwrap()).collect(),
        }
    }

    #[test]
    fn guarantees_are_fixed_and_defaults_overridable() {
        let c = settings(&["linger.ms=0", "queue.buffering.max.kbytes=1024"])
            .client_config()
            .unwrap();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        assert_eq!(c.get("linger.ms"), Some("0"));
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("1024"));
        // Restating a guarantee is fine.
        settings(&["acks=-1", "enable.idempotence=true"])
            .client_config()
            .unwrap();
    }

    #[test]
    fn weakening_options_and_bad_ones_are_refused_readably() {
        for (opt, needle) in [
            ("acks=1", "acks=all"),
            ("request.required.acks=1", "request.required.acks=all"),
            ("enable.idempotence=false", "enable.idempotence=true"),
            (
                "delivery.report.only.error=true",
                "delivery.report.only.error=false",
            ),
            ("bootstrap.servers=x:1", "--sink kafka:"),
            ("no.such.option=1", "librdkafka refused"),
        ] {
            let err = settings(&[opt]).client_config().unwrap_err();
            assert!(err.to_string().contains(needle), "{opt}: {err}");
        }
        assert!(matches!(
            parse_option("novalue"),
            Err(KafkaConfigError::NotPair(_))
        ));
        let empty = KafkaSettings {
            bootstrap: " ".into(),
            options: vec![],
        };
        assert!(matches!(
            empty.client_config(),
            Err(KafkaConfigError::EmptyBootstrap)
        ));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = settings(&["sasl.password=hunter2", "linger.ms=5"]);
        let shown = s.redacted_options().join(" ");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.password=***") && shown.contains("linger.ms=5"));
        let err = parse_option("ssl.key.password").unwrap_err().to_string();
        assert!(err.contains("ssl.key.password"));
        let err = parse_option("sasl.password:hunter2")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sasl.password") && !err.contains("hunter2"),
            "{err}"
        );
        assert_eq!(
            parse_option(" sasl.password = s3cret ").unwrap(),
            ("sasl.password".to_owned(), "s3cret".to_owned())
        );
    }

    #[tokio::test]
    async fn slots_bound_the_queue_and_wake_a_waiting_submitter() {
        let slots = Arc::new(Slots::new(10));
        slots.take(8).await;
        assert!(!slots.try_take(3));
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(3).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "took slots that were not free");
        slots.give(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when room was made")
            .unwrap();
        assert_eq!(slots.used.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_tracker_resolves_once_on_the_last_delivery_or_the_first_failure() {
        let (tx, mut ack) = BatchAck::pending();
        let t = Tracker::new(2, tx);
        t.delivered();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut ack).poll(&mut cx).is_pending());
        t.delivered();
        assert!(matches!(
            std::pin::Pin::new(&mut ack).poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        ));

        let (tx, mut ack) = BatchAck::pending();
        let t = Tracker::new(2, tx);
        t.failed(SinkError::Closed);
        t.delivered();
        t.delivered();
        assert!(matches!(
            std::pin::Pin::new(&mut ack).poll(&mut cx),
            std::task::Poll::Ready(Err(SinkError::Closed))
        ));
    }
}
