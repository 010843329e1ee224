//! The embedded sink: one JSON object per admitted record per line, on stdout or appended to a
//! file.
//!
//! Line format (field order as written):
//!
//! ```json
//! {"pipeline":"payments/fraud","deployment":"v41","gate":"pod-0","channel":"3",
//!  "topic":"sluice-out","partition":null,"key":"k1","value":"{\"amount\":5}",
//!  "event_time_ms":1700000000000,"headers":[{"key":"trace","value":"abc"}],
//!  "written_at_ms":1700000000123}
//! ```
//!
//! `key`, `value` and each header `value` are strings when the bytes are valid UTF-8; otherwise
//! the field is named `key_b64` / `value_b64` and holds standard base64. `partition` is `null`
//! when the record names none. `written_at_ms` is the sidecar's wall clock when it wrote the
//! batch (for measuring output gaps).
//!
//! One writer task owns the output. It takes batches from a bounded queue, writes every batch
//! already waiting, flushes once, then acknowledges them all: an ack means written and flushed.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{AckSender, BatchAck, Sink, SinkBatch, SinkError, SinkRecord};
use crate::config::SinkSpec;
use crate::gate::GateIdentity;

/// Most bytes coalesced into one write + flush, so a burst cannot grow the buffer unboundedly.
const MAX_COALESCED_BYTES: usize = 4 * 1024 * 1024;

enum Job {
    Write(SinkBatch, AckSender),
    Flush(oneshot::Sender<Result<(), SinkError>>),
}

/// JSON lines on stdout or a file, behind a bounded queue of batches.
#[derive(Debug, Clone)]
pub struct JsonLinesSink {
    jobs: mpsc::Sender<Job>,
}

impl JsonLinesSink {
    /// Opens the output named by `spec` (a file is created if missing and appended to) and
    /// starts the writer task. `queue` is the capacity in batches. Needs a Tokio runtime.
    pub async fn open(
        spec: &SinkSpec,
        identity: GateIdentity,
        queue: usize,
    ) -> Result<Self, SinkError> {
        match spec {
            SinkSpec::Stdout => Ok(Self::from_writer(
                tokio::io::stdout(),
                spec.to_string(),
                identity,
                queue,
            )),
            SinkSpec::File(path) => {
                let file = open_append(path).await.map_err(|e| SinkError::Open {
                    target: spec.to_string(),
                    source: Arc::new(e),
                })?;
                Ok(Self::from_writer(file, spec.to_string(), identity, queue))
            }
            SinkSpec::Kafka(_) | SinkSpec::Null => Err(SinkError::NotJsonLines(spec.to_string())),
        }
    }

    /// A sink writing to any async writer; `target` names it in errors. Needs a Tokio runtime.
    pub fn from_writer<W>(writer: W, target: String, identity: GateIdentity, queue: usize) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(write_loop(writer, target, identity, rx));
        Self { jobs }
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

impl Sink for JsonLinesSink {
    async fn submit(&self, batch: SinkBatch) -> Result<BatchAck, SinkError> {
        let (tx, ack) = BatchAck::pending();
        self.jobs
            .send(Job::Write(batch, tx))
            .await
            .map_err(|_| SinkError::Closed)?;
        Ok(ack)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Flush(tx))
            .await
            .map_err(|_| SinkError::Closed)?;
        rx.await.unwrap_or(Err(SinkError::Closed))
    }
}

/// Owns the writer: encodes batches, writes and flushes, then resolves their acks.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    target: String,
    identity: GateIdentity,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut buf = Vec::new();
        let mut written: Vec<AckSender> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(batch, ack) => match encode_batch(&identity, &batch) {
                    Ok(lines) => {
                        buf.extend_from_slice(&lines);
                        written.push(ack);
                    }
                    // Nothing of this batch is written: its channel fails, later ones go on.
                    Err(e) => ack.complete(Err(SinkError::Encode(Arc::new(e)))),
                },
                Job::Flush(tx) => flushes.push(tx),
            }
            // Coalesce what is already queued so one flush covers many small batches.
            if buf.len() < MAX_COALESCED_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let result = write_and_flush(&mut writer, &buf).await.map_err(|e| {
            tracing::error!(sink = %target, error = %e, "sink write failed");
            SinkError::Write {
                target: target.clone(),
                source: Arc::new(e),
            }
        });
        for ack in written {
            ack.complete(result.clone());
        }
        for tx in flushes {
            let _ = tx.send(result.clone());
        }
    }
}

async fn write_and_flush<W: AsyncWrite + Unpin>(writer: &mut W, buf: &[u8]) -> std::io::Result<()> {
    writer.write_all(buf).await?;
    writer.flush().await
}

fn encode_batch(identity: &GateIdentity, batch: &SinkBatch) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    // One wall-clock stamp per batch: lets a reader measure output gaps in real time.
    let written_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for record in &batch.records {
        encode_line(identity, &batch.channel, record, written_at_ms, &mut out)?;
    }
    Ok(out)
}

/// Bytes as a UTF-8 string when they are one, else base64 under the `_b64` name.
struct Text<'a> {
    text: Option<&'a str>,
    b64: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    pipeline: &'a str,
    deployment: &'a str,
    gate: &'a str,
    channel: &'a str,
    topic: &'a str,
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    event_time_ms: i64,
    headers: Vec<HeaderLine<'a>>,
    /// Wall clock (ms since the Unix epoch) when the sidecar wrote the record.
    written_at_ms: u64,
}

#[derive(Serialize)]
struct HeaderLine<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

fn text(bytes: &[u8]) -> Text<'_> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Text {
            text: Some(s),
            b64: None,
        },
        Err(_) => Text {
            text: None,
            b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        },
    }
}

/// Appends one record's JSON line (with its `\n`) to `out`.
fn encode_line(
    identity: &GateIdentity,
    channel: &str,
    record: &SinkRecord,
    written_at_ms: u64,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let key = text(&record.key);
    let value = text(&record.value);
    let line = Line {
        pipeline: &identity.pipeline,
        deployment: &identity.deployment,
        gate: &identity.gate_id,
        channel,
        topic: &record.topic,
        partition: record.partition,
        key: key.text,
        key_b64: key.b64,
        value: value.text,
        value_b64: value.b64,
        event_time_ms: record.event_time_ms,
        headers: record
            .headers
            .iter()
            .map(|h| {
                let v = text(&h.value);
                HeaderLine {
                    key: &h.key,
                    value: v.text,
                    value_b64: v.b64,
                }
            })
            .collect(),
        written_at_ms,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkHeader;

    fn identity() -> GateIdentity {
        GateIdentity {
            pipeline: "payments/fraud".into(),
            deployment: "v41".into(),
            gate_id: "pod-0".into(),
        }
    }

    fn record(key: &[u8], value: &[u8]) -> SinkRecord {
        SinkRecord {
            topic: "out".into(),
            partition: None,
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            headers: vec![
                SinkHeader {
                    key: "trace".into(),
                    value: b"abc".to_vec().into(),
                },
                SinkHeader {
                    key: "bin".into(),
                    value: vec![0xff, 0x00].into(),
                },
            ],
            event_time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn utf8_fields_are_strings_in_the_documented_order() {
        let mut out = Vec::new();
        encode_line(&identity(), "3", &record(b"k1", b"{\"a\":1}"), 42, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "{\"pipeline\":\"payments/fraud\",\"deployment\":\"v41\",\"gate\":\"pod-0\",\
             \"channel\":\"3\",\"topic\":\"out\",\"partition\":null,\"key\":\"k1\",\
             \"value\":\"{\\\"a\\\":1}\",\"event_time_ms\":1700000000000,\"headers\":[\
             {\"key\":\"trace\",\"value\":\"abc\"},{\"key\":\"bin\",\"value_b64\":\"/wA=\"}],\"written_at_ms\":42}\n"
        );
    }

    #[test]
    fn non_utf8_key_and_value_go_base64() {
        let mut r = record(&[0xc3, 0x28], &[0xff, 0xfe, 0xfd]);
        r.partition = Some(7);
        let mut out = Vec::new();
        encode_line(&identity(), "0", &r, 0, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["key_b64"], "wyg=");
        assert_eq!(v["value_b64"], "//79");
        assert_eq!(v["partition"], 7);
        assert!(v.get("key").is_none() && v.get("value").is_none());
    }

    /// A writer that records what was flushed, so the test sees "acked implies flushed".
    #[derive(Clone, Default)]
    struct Recorder {
        pending: Arc<std::sync::Mutex<Vec<u8>>>,
        flushed: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.pending.lock().unwrap().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let mut p = self.pending.lock().unwrap();
            self.flushed.lock().unwrap().append(&mut p);
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn an_ack_means_written_and_flushed_in_submission_order() {
        let rec = Recorder::default();
        let sink = JsonLinesSink::from_writer(rec.clone(), "test".into(), identity(), 2);
        let mut acks = Vec::new();
        for i in 0..5 {
            let mut r = record(b"k", b"v");
            r.event_time_ms = i;
            let batch = SinkBatch {
                channel: "c".into(),
                records: vec![r],
            };
            acks.push(sink.submit(batch).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        let flushed = rec.flushed.lock().unwrap().clone();
        let times: Vec<i64> = flushed
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["event_time_ms"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(times, vec![0, 1, 2, 3, 4]);
        sink.flush().await.unwrap();
    }

    struct Broken;
    impl AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_ack() {
        let sink = JsonLinesSink::from_writer(Broken, "broken".into(), identity(), 1);
        let ack = sink
            .submit(SinkBatch {
                channel: "c".into(),
                records: vec![record(b"k", b"v")],
            })
            .await
            .unwrap();
        let err = ack.await.unwrap_err();
        assert!(matches!(err, SinkError::Write { .. }), "{err}");
    }
}
