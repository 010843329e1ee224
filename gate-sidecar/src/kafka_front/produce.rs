//! The policy of the Kafka front: every record of every Produce batch decided by the gate.
//!
//! For each partition of a request: decode its batch (any compression), take each record's
//! event time, pass the records through the partition's channel (the same hold queue, counters,
//! high mark, ceiling and future horizon as a native channel), wait while any is held (bounded
//! by the request's timeout), and rebuild the batch from the admitted records with the producer
//! id and epoch kept and the sequences mapped (`sequences`). Partitions with nothing left, or
//! refused, are answered by the front; the rest go upstream in one request, and the answers are
//! merged in the request's order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, RecordSet,
};
use sluice_core::EventTime;
use sluice_core::channel::{ChannelQueue, Timed};
use tokio::time::Instant;

use super::event_time::EventTimeSource;
use super::sequences::{Key, Mapped, Sequences};
use super::transactions::{OpenTransactions, floor_key};
use crate::counters::Verdict;
use crate::gate::Gate;

/// One record waiting in a partition's hold queue: its index in the client batch.
#[derive(Debug)]
struct Item {
    index: u32,
    ts: EventTime,
    future: bool,
}

impl Timed for Item {
    fn event_time(&self) -> EventTime {
        self.ts
    }

    fn is_future(&self) -> bool {
        self.future
    }
}

/// Every Kafka front channel id starts so (`kafka/{connection}/{topic}/{partition}`).
pub const CHANNEL_PREFIX: &str = "kafka/";

/// One (connection, topic, partition): a channel of the gate.
pub struct PartitionChannel {
    id: Arc<str>,
    queue: ChannelQueue<Item>,
    /// The largest event time sent, for the derived watermark.
    max_ts: Option<EventTime>,
}

impl PartitionChannel {
    /// Registers the channel with the gate and waits until its id is on disk.
    pub async fn open(gate: &Gate, id: String, hold_limit: usize) -> Result<Self, Refusal> {
        let generation = gate.open_channel(&id);
        gate.channel_durable(generation)
            .await
            .map_err(|_| Refusal::retriable("the sidecar cannot persist its channel list"))?;
        Ok(Self {
            id: id.into(),
            queue: ChannelQueue::new(hold_limit),
            max_ts: None,
        })
    }

    /// The connection closed: nothing of this channel is outstanding (requests are answered
    /// one by one), and the client's later records come on a new connection, so it is done.
    pub fn close(self, gate: &Gate) {
        let now = gate.now_ms();
        let mut state = gate.lock();
        state.tracker.on_watermark(&self.id, EventTime::MAX, now);
        state.tracker.on_close(&self.id, now);
        drop(state);
        gate.channel_forgotten();
    }
}

/// A partition the front answers itself with an error.
#[derive(Debug, Clone)]
pub struct Refusal {
    code: i16,
    message: String,
}

impl Refusal {
    fn new(error: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code: error.code(),
            message: message.into(),
        }
    }

    fn retriable(message: impl Into<String>) -> Self {
        Self::new(ResponseError::KafkaStorageError, message)
    }
}

/// What became of one partition of the request.
enum Outcome {
    /// Sent upstream; `dropped` records were removed first.
    Forwarded { dropped: bool },
    /// Every record dropped: answered here as a success.
    AllDropped,
    /// Refused.
    Refused(Refusal),
}

/// A partition's batch to forward: the rebuilt batch, whether records were dropped from it, and
/// the open transaction its records were admitted into.
type Forward = (Bytes, bool, Option<super::transactions::Producer>);

/// What the front needs to decide a request.
pub struct Policy<'a> {
    /// The gate.
    pub gate: &'a Gate,
    /// Event time of a record.
    pub event_time: &'a EventTimeSource,
    /// Sequence mapping, shared by every connection of the sidecar.
    pub sequences: &'a std::sync::Mutex<Sequences>,
    /// The connection's channels by (topic, partition).
    pub channels: &'a mut BTreeMap<(String, i32), PartitionChannel>,
    /// Names this connection's channels.
    pub connection: u64,
    /// Hold queue bound per channel.
    pub hold_limit: usize,
    /// Where channel watermarks come from.
    pub watermarks: &'a super::FrontWatermarks,
    /// Open transactions, shared by every connection of the sidecar.
    pub transactions: &'a std::sync::Mutex<OpenTransactions>,
}

/// A decided request: what to send upstream (if anything) and how to answer.
pub struct Decided {
    /// The request with only the admitted records, or `None` when nothing goes upstream.
    pub upstream: Option<ProduceRequest>,
    outcomes: Vec<(String, i32, Outcome)>,
    /// Per forwarded partition: its channel key and the admitted count, late count and the
    /// largest event time, for the counters and the watermark once upstream acknowledged.
    delivered: Vec<((String, i32), u64, u64)>,
    /// The open transactions records were admitted into, one entry per forwarded batch: their
    /// answers are due (`OpenTransactions::answered`).
    pub in_transactions: Vec<super::transactions::Producer>,
}

impl Policy<'_> {
    /// Decides every record of `request`.
    pub async fn decide(&mut self, mut request: ProduceRequest) -> Decided {
        let deadline =
            Instant::now() + Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
        let mut outcomes = Vec::new();
        let mut delivered = Vec::new();
        let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
        let mut in_transactions = Vec::new();
        for topic in &mut request.topic_data {
            let name = topic.name.0.to_string();
            let mut kept = Vec::new();
            for mut part in std::mem::take(&mut topic.partition_data) {
                let index = part.index;
                match self
                    .partition(
                        &name,
                        index,
                        part.records.take(),
                        transactional_id.as_deref(),
                        deadline,
                    )
                    .await
                {
                    Ok((Some(records), admitted, late)) => {
                        let dropped = records.1;
                        if let Some(producer) = records.2 {
                            in_transactions.push(producer);
                        }
                        part.records = Some(records.0);
                        kept.push(part);
                        delivered.push(((name.clone(), index), admitted, late));
                        outcomes.push((name.clone(), index, Outcome::Forwarded { dropped }));
                    }
                    Ok((None, _, _)) => outcomes.push((name.clone(), index, Outcome::AllDropped)),
                    Err(r) => outcomes.push((name.clone(), index, Outcome::Refused(r))),
                }
            }
            topic.partition_data = kept;
        }
        request.topic_data.retain(|t| !t.partition_data.is_empty());
        Decided {
            upstream: (!request.topic_data.is_empty()).then_some(request),
            outcomes,
            delivered,
            in_transactions,
        }
    }

    /// One partition: `Ok((Some((batch, some_dropped, transaction)), admitted, late))` to
    /// forward (`transaction`: the open transaction records were just admitted into),
    /// `Ok((None, ..))` when nothing is left.
    async fn partition(
        &mut self,
        topic: &str,
        index: i32,
        records: Option<Bytes>,
        transactional_id: Option<&str>,
        deadline: Instant,
    ) -> Result<(Option<Forward>, u64, u64), Refusal> {
        let Some(mut raw) = records else {
            return Err(Refusal::new(ResponseError::CorruptMessage, "no records"));
        };
        let corrupt = |e: &dyn std::fmt::Display| {
            Refusal::new(
                ResponseError::CorruptMessage,
                format!("undecodable record batch: {e}"),
            )
        };
        let count = super::bounds::record_count(&raw).map_err(|e| corrupt(&e))?;
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut raw,
            Some(super::bounds::decompress(count)),
        )
        .map_err(|e| corrupt(&e))?;
        if !raw.is_empty() {
            return Err(Refusal::new(
                ResponseError::InvalidRecord,
                "more than one record batch for one partition",
            ));
        }
        let Some(first) = set.records.first() else {
            return Ok((None, 0, 0));
        };
        let count = set.records.len() as i32;
        let (pid, epoch, base) = (first.producer_id, first.producer_epoch, first.sequence);
        let key: Key = (pid, epoch, topic.to_owned(), index);
        let idempotent = pid >= 0 && base >= 0;
        // A retry of a batch already decided: send exactly what was admitted then.
        let mapped = if idempotent {
            super::unpoisoned(self.sequences).map(&key, base, count)
        } else {
            Mapped::New { base: -1 }
        };
        tracing::debug!(
            topic,
            partition = index,
            producer_id = pid,
            epoch,
            base_sequence = base,
            records = count,
            transactional = first.transactional,
            ?mapped,
            "Kafka front: produce batch"
        );
        let mut in_transaction = None;
        let (up_base, admitted, late) = match mapped {
            Mapped::Retry { base, admitted } => (base, admitted, 0),
            Mapped::Unknown => {
                // Not UNKNOWN_PRODUCER_ID: kafka-clients 4 retries that one forever with the
                // same sequence (seen with Flink's KafkaSink: checkpoints stopped), so the
                // client is told with a non-retriable error and fails the batch; Flink then
                // restores its checkpoint with a new producer.
                return Err(Refusal::new(
                    ResponseError::InvalidRecord,
                    "the sluice sidecar restarted and does not know this producer's sequence \
                     here: the batch is refused, not guessed; restart the producer (Flink \
                     restores its checkpoint)",
                ));
            }
            Mapped::OutOfOrder => {
                return Err(Refusal::new(
                    ResponseError::OutOfOrderSequenceNumber,
                    "out-of-order sequence number (the sluice sidecar saw a gap)",
                ));
            }
            Mapped::New { base: up } => {
                let transactional = first.transactional && pid >= 0;
                if transactional && !super::unpoisoned(self.transactions).has_room((pid, epoch)) {
                    return Err(Refusal::retriable(
                        "too many open transactions in this sluice sidecar; retry when some end",
                    ));
                }
                let times = set
                    .records
                    .iter()
                    .map(|r| self.event_time.of(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        self.gate.lock().counters.no_event_time += u64::from(count as u32);
                        Refusal::new(ResponseError::InvalidRecord, e.to_string())
                    })?;
                self.check_flushed(topic, index, &times);
                let (admitted, late) = self.gate_records(topic, index, &times, deadline).await?;
                if transactional
                    && let Some(least) = admitted.iter().map(|&i| times[i as usize]).min()
                {
                    // Before the records go upstream: the drain must not pass them until their
                    // transaction ends (see `transactions`).
                    let floor = super::unpoisoned(self.transactions).admitted(
                        (pid, epoch),
                        transactional_id,
                        least,
                        self.gate.now_ms(),
                    );
                    in_transaction = Some((pid, epoch));
                    self.gate
                        .lock()
                        .tracker
                        .set_floor(&floor_key((pid, epoch)), floor);
                }
                if idempotent {
                    super::unpoisoned(self.sequences).commit(&key, base, count, admitted.clone());
                }
                (up, admitted, late)
            }
        };
        if admitted.is_empty() {
            return Ok((None, 0, 0));
        }
        let dropped = admitted.len() < set.records.len();
        let batch = rebuild(&set, &admitted, up_base).inspect_err(|_| {
            if let Some(p) = in_transaction {
                // Not forwarded after all: nothing of it is due.
                super::unpoisoned(self.transactions).answered(&[p], true, self.gate.now_ms());
            }
        })?;
        Ok((
            Some((batch, dropped, in_transaction)),
            admitted.len() as u64,
            late,
        ))
    }

    /// A flushing sink (AT_LEAST_ONCE, EXACTLY_ONCE) has sent every non-late record below a
    /// checkpoint-confirmed watermark before that checkpoint completed, so one arriving now
    /// means a sink that does not flush (DeliveryGuarantee.NONE) or a job emitting records
    /// behind its watermarks: counted, and warned at the 1st, 10th, 100th... such record.
    fn check_flushed(&self, topic: &str, index: i32, times: &[EventTime]) {
        let Some(confirmed) = self.watermarks.confirmed() else {
            return;
        };
        let below = times.iter().filter(|&&t| t < confirmed).count() as u64;
        if below == 0 {
            return;
        }
        let before = {
            let mut state = self.gate.lock();
            let before = state.counters.below_confirmed;
            state.counters.below_confirmed += below;
            before
        };
        let after = before + below;
        if before.checked_ilog10() != after.checked_ilog10() {
            let oldest = times.iter().min().copied().unwrap_or(confirmed);
            tracing::warn!(
                topic,
                partition = index,
                records = after,
                event_time = oldest,
                confirmed_watermark = confirmed,
                "Kafka front: records arrived below the job's sink watermark after a checkpoint \
                 had confirmed it; the job's Kafka sink does not flush at checkpoints \
                 (DeliveryGuarantee.NONE: use AT_LEAST_ONCE or EXACTLY_ONCE) or the job emits \
                 records behind its watermarks, and the REST drain is not exact for it"
            );
        }
    }

    /// Passes the records through the partition's channel; returns the admitted indices (in
    /// order) and how many of them were late admits.
    async fn gate_records(
        &mut self,
        topic: &str,
        index: i32,
        times: &[EventTime],
        deadline: Instant,
    ) -> Result<(Vec<u32>, u64), Refusal> {
        let key = (topic.to_owned(), index);
        if !self.channels.contains_key(&key) {
            let id = format!("{CHANNEL_PREFIX}{}/{topic}/{index}", self.connection);
            let ch = PartitionChannel::open(self.gate, id, self.hold_limit).await?;
            self.channels.insert(key.clone(), ch);
        }
        let ch = self.channels.get_mut(&key).expect("inserted above");
        let mut changes = self.gate.subscribe();
        let mut admitted = Vec::new();
        let mut late = 0;
        {
            let now = self.gate.now_ms();
            let wall = crate::channel::wall_clock_ms();
            let mut state = self.gate.lock();
            let items: Vec<Item> = times
                .iter()
                .enumerate()
                .map(|(i, &ts)| Item {
                    index: i as u32,
                    ts,
                    future: state.core.is_future(ts, wall),
                })
                .collect();
            if let Some(max) = items.iter().filter(|r| !r.future).map(|r| r.ts).max() {
                state
                    .ceiling
                    .cover(max)
                    .map_err(|_| Refusal::retriable("the sidecar cannot persist its high mark"))?;
                ch.max_ts = ch.max_ts.max(Some(max));
            }
            state.tracker.on_record(&ch.id, now);
            state.tracker.set_busy(&ch.id, true, now);
            state.counters.received += items.len() as u64;
            state.counters.held += items.len() as u64;
            for item in items {
                if !item.future {
                    state.core.observe(item.ts);
                }
                ch.queue.push(item);
            }
        }
        loop {
            {
                let mut guard = self.gate.lock();
                let state = &mut *guard;
                let counters = &mut state.counters;
                ch.queue.drain(&state.core, |item, decision| {
                    if let Verdict::Admit { late: is_late } = counters.on_decided(decision) {
                        late += u64::from(is_late);
                        admitted.push(item.index);
                    }
                });
                if ch.queue.is_empty() {
                    break;
                }
            }
            // Held: wait for the coordinator's next assignment, no longer than the client does.
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let mut state = self.gate.lock();
                let left = ch.queue.len() as u64;
                ch.queue = ChannelQueue::new(self.hold_limit);
                state.counters.held = state.counters.held.saturating_sub(left);
                state.tracker.set_busy(&ch.id, false, self.gate.now_ms());
                return Err(Refusal::new(
                    ResponseError::RequestTimedOut,
                    "records are held for a cutover decision (sluice); retry",
                ));
            }
        }
        Ok((admitted, late))
    }

    /// Upstream acknowledged (or refused) the forwarded partitions: count what was delivered,
    /// move each channel's derived watermark, and end its busy mark.
    pub fn settle(&mut self, decided: &Decided, response: Option<&ProduceResponse>) {
        let now = self.gate.now_ms();
        let mut state = self.gate.lock();
        for ((topic, index), admitted, late) in &decided.delivered {
            let code = response.map_or(0, |r| partition_error(r, topic, *index));
            let ok = code == 0;
            if ok {
                state.counters.on_acked(*admitted, *late);
            } else {
                tracing::debug!(
                    topic,
                    partition = index,
                    error_code = code,
                    "Kafka front: upstream refused a partition"
                );
            }
            if let Some(ch) = self.channels.get(&(topic.clone(), *index)) {
                if ok && let Some(wm) = self.watermarks.of(ch.max_ts) {
                    state.tracker.on_watermark(&ch.id, wm, now);
                }
                state.tracker.set_busy(&ch.id, false, now);
            }
        }
        for (topic, index, outcome) in &decided.outcomes {
            if matches!(outcome, Outcome::AllDropped)
                && let Some(ch) = self.channels.get(&(topic.clone(), *index))
            {
                if let Some(wm) = self.watermarks.of(ch.max_ts) {
                    state.tracker.on_watermark(&ch.id, wm, now);
                }
                state.tracker.set_busy(&ch.id, false, now);
            }
        }
    }
}

fn partition_error(r: &ProduceResponse, topic: &str, index: i32) -> i16 {
    r.responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == index)
        .map_or(-1, |p| p.error_code)
}

/// The admitted records as one batch: offsets 0.., upstream sequences from `base` (`-1` for a
/// producer without idempotence), producer id, epoch, timestamps and compression kept.
fn rebuild(set: &RecordSet, admitted: &[u32], base: i32) -> Result<Bytes, Refusal> {
    let records: Vec<Record> = admitted
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let mut r = set.records[k as usize].clone();
            r.offset = i as i64;
            r.sequence = base.wrapping_add(i as i32);
            r
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: set.version,
        compression: set.compression,
    };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).map_err(|e| {
        Refusal::new(
            ResponseError::CorruptMessage,
            format!("cannot rebuild: {e}"),
        )
    })?;
    Ok(out.freeze())
}

/// The answer to the client: the upstream answer (if any) with the front's own partitions
/// merged in, in the request's order. A partition some records were dropped from has no
/// meaningful base offset (`-1`, which clients ignore).
pub fn respond(decided: &Decided, upstream: Option<ProduceResponse>) -> ProduceResponse {
    let mut up = upstream.unwrap_or_default();
    let mut by_topic: BTreeMap<String, Vec<PartitionProduceResponse>> = BTreeMap::new();
    for t in std::mem::take(&mut up.responses) {
        by_topic
            .entry(t.name.0.to_string())
            .or_default()
            .extend(t.partition_responses);
    }
    let mut out: Vec<TopicProduceResponse> = Vec::new();
    for (topic, index, outcome) in &decided.outcomes {
        let p = match outcome {
            Outcome::Forwarded { dropped } => {
                let got = by_topic.get_mut(topic).and_then(|ps| {
                    let at = ps.iter().position(|p| p.index == *index)?;
                    Some(ps.remove(at))
                });
                let mut p = got.unwrap_or_else(|| {
                    local(*index, ResponseError::UnknownServerError.code(), None)
                });
                if *dropped && p.error_code == 0 {
                    p.base_offset = -1;
                }
                p
            }
            Outcome::AllDropped => local(*index, 0, None),
            Outcome::Refused(r) => local(*index, r.code, Some(&r.message)),
        };
        match out.last_mut() {
            Some(t) if t.name.0.as_str() == topic => t.partition_responses.push(p),
            _ => out.push(
                TopicProduceResponse::default()
                    .with_name(StrBytes::from_string(topic.clone()).into())
                    .with_partition_responses(vec![p]),
            ),
        }
    }
    up.responses = out;
    up
}

fn local(index: i32, code: i16, message: Option<&str>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(|m| StrBytes::from_string(m.to_owned())))
}
