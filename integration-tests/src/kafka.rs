//! Kafka for the process-level tests, the demo and the benchmark: a real Kafka-compatible broker
//! (tansu, from the project's install cache), topic creation through the admin API, and a
//! consumer that reads a whole topic back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};

use crate::procs::{Proc, free_port, wait_for_tcp};

/// The tansu binary: `$SLUICE_TANSU`, else where `scripts/test.sh` installs it.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/sluice")
        });
    let path = cache.join("tansu/bin/tansu");
    if !path.exists() {
        bail!(
            "the tansu Kafka broker is not installed at {}; run scripts/test.sh (it installs it) \
             or `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root {}`",
            path.display(),
            cache.join("tansu").display()
        );
    }
    Ok(path)
}

/// A tansu broker on a free loopback port with in-memory storage; killed when dropped.
pub struct Broker {
    _proc: Proc,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl Broker {
    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self._proc.id()
    }

    /// Starts the broker, logging to `dir/tansu.log`, and waits until it accepts connections.
    pub fn start(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]
        .map(String::from);
        // tansu logs every span at info (about 280 MB for the 100,000-record test), so warnings
        // only unless SLUICE_TANSU_LOG asks for more.
        let level = std::env::var("SLUICE_TANSU_LOG").unwrap_or("warn".into());
        let proc = Proc::spawn_logging(
            "tansu",
            &tansu_binary()?,
            &args,
            &dir.join("tansu.log"),
            &level,
        )?;
        wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(20))
            .context("tansu did not start")?;
        Ok(Self {
            _proc: proc,
            bootstrap: format!("127.0.0.1:{port}"),
        })
    }
}

/// The classpath of the plain Java producer (`integration-tests/kafka-java/`, the official
/// kafka-clients), built by `scripts/kafka-java.sh` into the install cache (Maven Central).
pub fn java_client_classpath() -> Result<String> {
    crate::procs::install_script("kafka-java.sh", "building the Java Kafka client")
}

/// Creates `topic` with `partitions` partitions through the Kafka admin API.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("CreateTopics failed")?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("cannot create topic {name}: {code}");
        }
    }
    Ok(())
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes (empty when null).
    pub key: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// The record's timestamp.
    pub timestamp: Timestamp,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Consumed {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads every partition of `topic` from the beginning (blocking) until `expected` records
/// arrived and then `quiet` passed without another one (so extra copies would show), or fails
/// after `within`. Reads `read_committed` (librdkafka's default).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    quiet: Duration,
    within: Duration,
) -> Result<Vec<Consumed>> {
    read_topic_isolated(
        bootstrap,
        topic,
        partitions,
        expected,
        quiet,
        within,
        "read_committed",
    )
}

/// [`read_topic`] at `isolation` (`read_committed` or `read_uncommitted`).
pub fn read_topic_isolated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    quiet: Duration,
    within: Duration,
    isolation: &str,
) -> Result<Vec<Consumed>> {
    let consumer = reader(bootstrap, topic, partitions, isolation)?;
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(expected);
    let mut last = Instant::now();
    loop {
        if out.len() >= expected && last.elapsed() >= quiet {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!(
                "read {} of {expected} records from {topic} within {within:?}",
                out.len()
            );
        }
        if poll_into(&consumer, &mut out)? {
            last = Instant::now();
        }
    }
}

/// What a `read_committed` consumer can read of `topic` now: the last stable offset of each
/// partition is taken first, then every record below it is read (records committed later are
/// not included, however soon).
pub fn read_visible_now(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    within: Duration,
) -> Result<Vec<Consumed>> {
    let consumer = reader(bootstrap, topic, partitions, "read_committed")?;
    // For a read_committed consumer librdkafka asks ListOffsets at that isolation: the LSO.
    let ends = (0..partitions)
        .map(|p| {
            Ok(consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1)
        })
        .collect::<Result<Vec<i64>>>()?;
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        if poll_into(&consumer, &mut out)?
            && out
                .last()
                .is_some_and(|c| c.offset >= ends[c.partition as usize])
        {
            out.pop();
        }
        let positions = consumer.position()?;
        let done = (0..partitions).all(|p| {
            let at = positions
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            at >= ends[p as usize] || ends[p as usize] == 0
        });
        if done {
            return Ok(out);
        }
        ensure!(
            Instant::now() < deadline,
            "could not read up to the last stable offsets {ends:?} within {within:?}"
        );
    }
}

/// Reads `topic` `read_committed` from the beginning (blocking) until `watching` is cleared,
/// noting the wall-clock time (ms) each record became readable and its `deployment` header:
/// how a downstream consumer sees the output flow.
pub fn watch_visible(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    watching: &std::sync::atomic::AtomicBool,
) -> Result<Vec<(u64, String)>> {
    // Fetches answered at once: the time read is the time the record became readable.
    let consumer = reader_with(
        bootstrap,
        topic,
        partitions,
        "read_committed",
        &[("fetch.wait.max.ms", "20")],
    )?;
    let mut seen = Vec::new();
    while watching.load(std::sync::atomic::Ordering::Relaxed) {
        // The broker may be down for a while (a fault): errors are retried, not fatal.
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let deployment = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "deployment")?.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        seen.push((crate::harness::now_ms(), deployment));
    }
    Ok(seen)
}

fn reader(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Result<BaseConsumer> {
    reader_with(bootstrap, topic, partitions, isolation, &[])
}

/// A consumer of every partition of `topic` from the beginning at `isolation`, with `more`
/// librdkafka settings.
fn reader_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    more: &[(&str, &str)],
) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation);
    for (k, v) in more {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().context("consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Polls once (100 ms at most); `true` if a record was read.
fn poll_into(consumer: &BaseConsumer, out: &mut Vec<Consumed>) -> Result<bool> {
    let Some(m) = consumer.poll(Duration::from_millis(100)) else {
        return Ok(false);
    };
    let m = m.context("consumer error")?;
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    out.push(Consumed {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().unwrap_or_default().to_vec(),
        value: m.payload().unwrap_or_default().to_vec(),
        timestamp: m.timestamp(),
        headers,
    });
    Ok(true)
}

/// The partition the Java Kafka client's default partitioner (and librdkafka's
/// `murmur2_random`) gives a non-empty key: `toPositive(murmur2(key)) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Per partition, the last value of an increasing sequence per producer stream; counts the
/// records that arrive out of that order.
#[derive(Debug, Default)]
pub struct OrderCheck {
    last: HashMap<(i32, String), u64>,
    /// Records seen after a later record of the same stream in the same partition.
    pub out_of_order: u64,
}

impl OrderCheck {
    /// Records that `stream`'s record number `seq` was read from `partition` next.
    pub fn see(&mut self, partition: i32, stream: &str, seq: u64) {
        match self.last.insert((partition, stream.to_owned()), seq) {
            Some(prev) if prev >= seq => self.out_of_order += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(
            java_partition(b"foobar", 4),
            ((-790332482i32) & 0x7fff_ffff) % 4
        );
    }

    #[test]
    fn order_check_counts_regressions_per_partition_and_stream() {
        let mut c = OrderCheck::default();
        c.see(0, "blue/0", 1);
        c.see(1, "blue/0", 0);
        c.see(0, "green/0", 0);
        c.see(0, "blue/0", 2);
        assert_eq!(c.out_of_order, 0);
        c.see(0, "blue/0", 2);
        assert_eq!(c.out_of_order, 1);
    }
}
