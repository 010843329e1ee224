//! One channel: the connection of one sink subtask, speaking the native frame protocol.
//!
//! A channel task reads `ClientFrame`s, checks the `Hello`, and passes records through its
//! bounded [`ChannelQueue`]: records are observed and decided under the gate lock, so records
//! of one channel leave in arrival order. Admitted records go to the sink as one batch per
//! decision step. While the hold queue is full the task stops reading the socket
//! (backpressure into the client) and waits for an assignment change.
//!
//! A `Flush` is answered once every record received before it has been decided and every
//! admitted batch containing such a record is acknowledged by the sink. Any protocol error, or
//! a sink failure, sends one `Error` frame and closes this channel only.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use sluice_core::EventTime;
use sluice_core::channel::{ChannelQueue, Timed};
use sluice_core::watermark::Closed;
use sluice_proto::framing::{FrameCodec, FrameError};
use sluice_proto::v1::{self, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::counters::Verdict;
use crate::gate::{Gate, GateIdentity};
use crate::sink::{BatchAck, Sink, SinkBatch, SinkError, SinkHeader, SinkRecord};

/// The frame protocol version this sidecar speaks (0 in a `Hello` means 1).
const PROTOCOL_VERSION: u32 = 1;
/// Flushes waiting for their ack before the channel stops reading (bounds the flush queue).
const MAX_PENDING_FLUSHES: usize = 1024;
/// Sink batches awaiting their ack before the channel stops reading (bounds the ack queue).
const MAX_IN_FLIGHT_BATCHES: usize = 256;
/// Watermarks waiting for the records before them to be delivered; more are merged into the
/// newest (which only delays it: a later watermark with a later mark is always safe).
const MAX_PENDING_WATERMARKS: usize = 64;
/// How long a closing channel tries to deliver its `Error` frame.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a closing channel keeps reading (and discarding) so the client can read the
/// `Error` frame before the connection goes away, instead of seeing a reset.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

type Codec = FrameCodec<ServerFrame, ClientFrame>;

/// Settings every channel shares.
#[derive(Debug, Clone)]
pub(crate) struct ChannelSettings {
    /// Largest accepted frame.
    pub max_frame_bytes: usize,
    /// Records held before the channel stops reading.
    pub hold_limit: usize,
    /// Topic for records that name none.
    pub default_topic: Arc<str>,
}

/// Why a channel closed.
#[derive(Debug, Error)]
pub(crate) enum ChannelError {
    /// A frame other than `Hello` came first.
    #[error("the first frame must be Hello, got {0}")]
    HelloRequired(&'static str),
    /// A second `Hello`.
    #[error("Hello was already received on this channel")]
    DuplicateHello,
    /// `Hello` named another gate.
    #[error(
        "this sidecar serves pipeline `{want_pipeline}` deployment `{want_deployment}`, \
         not pipeline `{pipeline}` deployment `{deployment}`"
    )]
    UnknownGate {
        /// Pipeline in the `Hello`.
        pipeline: String,
        /// Deployment in the `Hello`.
        deployment: String,
        /// Pipeline served.
        want_pipeline: String,
        /// Deployment served.
        want_deployment: String,
    },
    /// `Hello` asked for a protocol version this sidecar does not speak.
    #[error("protocol version {0} is not supported; this sidecar speaks version 1")]
    UnsupportedVersion(u32),
    /// A frame could not be decoded or was cut short.
    #[error("malformed frame")]
    Malformed(#[source] FrameError),
    /// A frame decoded but carried no kind.
    #[error("malformed frame: the frame has no kind")]
    NoKind,
    /// A frame exceeded the size limit.
    #[error("frame too large")]
    TooLarge(#[source] FrameError),
    /// The sink failed admitted records.
    #[error("the sink failed to deliver admitted records")]
    SinkFailed(#[source] SinkError),
    /// The sidecar is stopping.
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    /// The high-mark ceiling could not be persisted, so no record above it may be decided.
    #[error("cannot persist the gate's high-mark ceiling")]
    Ceiling(#[source] crate::ceiling::CeilingError),
    /// The channel's id could not be persisted, so a restarted sidecar would not know to wait
    /// for it; none of its records may be decided.
    #[error("cannot persist the channel list")]
    ChannelList(#[source] Arc<crate::known_channels::KnownChannelsError>),
    /// Reading the socket failed.
    #[error("socket read failed")]
    Socket(#[source] std::io::Error),
    /// Writing a frame to the client failed.
    #[error("writing to the client failed")]
    Send(#[source] FrameError),
}

impl ChannelError {
    fn from_read(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { .. } => ChannelError::TooLarge(e),
            FrameError::Io(io) => ChannelError::Socket(io),
            FrameError::BadLength | FrameError::Decode(_) | FrameError::Truncated { .. } => {
                ChannelError::Malformed(e)
            }
        }
    }

    /// The code to send the client, or `None` when the connection itself is gone.
    fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            ChannelError::HelloRequired(_) => ErrorCode::HelloRequired,
            ChannelError::DuplicateHello => ErrorCode::DuplicateHello,
            ChannelError::UnknownGate { .. } => ErrorCode::UnknownGate,
            ChannelError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ChannelError::Malformed(_) | ChannelError::NoKind => ErrorCode::MalformedFrame,
            ChannelError::TooLarge(_) => ErrorCode::FrameTooLarge,
            ChannelError::SinkFailed(_) => ErrorCode::SinkFailed,
            ChannelError::ShuttingDown => ErrorCode::ShuttingDown,
            ChannelError::Ceiling(_) | ChannelError::ChannelList(_) => ErrorCode::Internal,
            ChannelError::Socket(_) | ChannelError::Send(_) => return None,
        })
    }

    /// The error with its causes, for the client and the log.
    fn describe(&self) -> String {
        crate::describe(self)
    }
}

/// A record waiting in the hold queue.
#[derive(Debug)]
struct Pending(SinkRecord, bool);

impl Timed for Pending {
    fn event_time(&self) -> EventTime {
        self.0.event_time_ms
    }

    fn is_future(&self) -> bool {
        self.1
    }
}

/// The wall clock in ms since the epoch: the future horizon's reference.
pub(crate) fn wall_clock_ms() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A batch handed to the sink and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    /// Index (in arrival order) of the first record decided in the step that made the batch.
    first: u64,
    /// Records in the batch.
    admitted: u64,
    /// Of those, admitted as late.
    late: u64,
    ack: BatchAck,
}

/// Serves one accepted connection until it closes. Never fails the sidecar: every error is
/// reported to this client and logged.
pub(crate) async fn serve<IO, S>(
    io: IO,
    conn: u64,
    peer: String,
    gate: Arc<Gate>,
    sink: Arc<S>,
    settings: Arc<ChannelSettings>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    S: Sink,
{
    let mut framed = Framed::new(io, Codec::new(settings.max_frame_bytes));
    let hello = tokio::select! {
        r = handshake(&mut framed, gate.identity()) => r,
        () = shutdown.cancelled() => Err(ChannelError::ShuttingDown),
    };
    let hello = match hello {
        Ok(Some(h)) => h,
        Ok(None) => {
            tracing::debug!(conn, %peer, "connection closed before Hello");
            return;
        }
        Err(e) => {
            tracing::warn!(conn, %peer, error = %e.describe(), "channel refused");
            reject(framed, &e).await;
            return;
        }
    };
    let id: Arc<str> = if hello.channel_id.is_empty() {
        format!("conn-{conn}").into()
    } else {
        hello.channel_id.into()
    };
    let mut channel = Channel::open(id, gate, sink, &settings);
    tracing::info!(channel = %channel.id, conn, %peer, "channel opened");
    let result = match channel.durable(&shutdown).await {
        Ok(()) => channel.run(&mut framed, &shutdown).await,
        Err(e) => Err(e),
    };
    let held = channel.close();
    match result {
        Ok(()) => tracing::info!(
            channel = %channel.id,
            admitted = channel.admitted,
            dropped = channel.dropped,
            held_unacknowledged = held,
            "channel closed by the client"
        ),
        Err(e) => {
            tracing::warn!(
                channel = %channel.id,
                reason = %e.describe(),
                admitted = channel.admitted,
                dropped = channel.dropped,
                held_unacknowledged = held,
                "channel closed"
            );
            reject(framed, &e).await;
        }
    }
}

/// Reads the first frame; `Ok(None)` when the client left without a word.
async fn handshake<IO>(
    framed: &mut Framed<IO, Codec>,
    identity: &GateIdentity,
) -> Result<Option<v1::Hello>, ChannelError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(frame) = framed.next().await else {
        return Ok(None);
    };
    let frame = frame.map_err(ChannelError::from_read)?;
    let hello = match frame.kind {
        None => return Err(ChannelError::NoKind),
        Some(client_frame::Kind::Hello(h)) => h,
        Some(other) => return Err(ChannelError::HelloRequired(kind_name(&other))),
    };
    if hello.protocol_version > PROTOCOL_VERSION {
        return Err(ChannelError::UnsupportedVersion(hello.protocol_version));
    }
    if hello.pipeline != identity.pipeline || hello.deployment != identity.deployment {
        return Err(ChannelError::UnknownGate {
            pipeline: hello.pipeline,
            deployment: hello.deployment,
            want_pipeline: identity.pipeline.clone(),
            want_deployment: identity.deployment.clone(),
        });
    }
    Ok(Some(hello))
}

fn kind_name(kind: &client_frame::Kind) -> &'static str {
    match kind {
        client_frame::Kind::Hello(_) => "Hello",
        client_frame::Kind::Records(_) => "Records",
        client_frame::Kind::Watermark(_) => "Watermark",
        client_frame::Kind::Idle(_) => "Idle",
        client_frame::Kind::Flush(_) => "Flush",
    }
}

/// Sends the error (when the connection still works) and closes the connection.
async fn reject<IO>(mut framed: Framed<IO, Codec>, err: &ChannelError)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(code) = err.code() {
        let frame = ServerFrame {
            kind: Some(server_frame::Kind::Error(v1::Error {
                code: code as i32,
                message: err.describe(),
            })),
        };
        if timeout(ERROR_WRITE_TIMEOUT, framed.send(frame))
            .await
            .is_err()
        {
            tracing::debug!("client did not take the error frame in time");
        }
    }
    let mut io = framed.into_inner();
    let _ = timeout(CLOSE_LINGER, io.shutdown()).await;
    let _ = timeout(
        CLOSE_LINGER,
        tokio::io::copy(&mut io, &mut tokio::io::sink()),
    )
    .await;
}

/// What woke the channel task.
enum Event {
    Shutdown,
    Acked(Result<(), SinkError>),
    Changed,
    Frame(Option<Result<ClientFrame, FrameError>>),
}

/// An open channel's state.
struct Channel<S> {
    id: Arc<str>,
    /// The channel-list generation that must be on disk before any record is decided.
    durable_at: u64,
    gate: Arc<Gate>,
    sink: Arc<S>,
    default_topic: Arc<str>,
    queue: ChannelQueue<Pending>,
    /// Records received so far (the index of the next record).
    received: u64,
    /// Records decided so far; they leave in order, so these are indices `0..decided`.
    decided: u64,
    /// Records admitted and acknowledged by the sink.
    admitted: u64,
    /// Records dropped.
    dropped: u64,
    in_flight: VecDeque<InFlight>,
    /// Watermarks not yet applied: `(watermark, records received before it)`. A watermark
    /// vouches that nothing more below it will come; the gate may only count it once every
    /// record before it is delivered, or a drain could complete with them still in the sink.
    pending_watermarks: VecDeque<(i64, u64)>,
    /// Whether the gate's tracker was last told this channel is busy (see `report_busy`).
    busy_reported: bool,
    /// A far-future record was logged on this connection (the rest are only counted).
    warned_future: bool,
    /// Flushes not yet answered: `(seq, records received before it)`.
    flushes: VecDeque<(u64, u64)>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl<S: Sink> Channel<S> {
    fn open(id: Arc<str>, gate: Arc<Gate>, sink: Arc<S>, settings: &ChannelSettings) -> Self {
        // Subscribe before the first decision so no assignment change can slip between them.
        let changes = gate.subscribe();
        let durable_at = gate.open_channel(&id);
        Self {
            id,
            durable_at,
            gate,
            sink,
            default_topic: settings.default_topic.clone(),
            queue: ChannelQueue::new(settings.hold_limit),
            received: 0,
            decided: 0,
            admitted: 0,
            dropped: 0,
            in_flight: VecDeque::new(),
            pending_watermarks: VecDeque::new(),
            busy_reported: false,
            warned_future: false,
            flushes: VecDeque::new(),
            changes,
        }
    }

    /// Waits until the channel's id is in the channel list on disk: a restarted sidecar only
    /// waits for the channels it knows of, so none of this channel's records may be decided
    /// (and so none admitted) before then.
    async fn durable(&self, shutdown: &CancellationToken) -> Result<(), ChannelError> {
        tokio::select! {
            r = self.gate.channel_durable(self.durable_at) => r.map_err(ChannelError::ChannelList),
            () = shutdown.cancelled() => Err(ChannelError::ShuttingDown),
        }
    }

    async fn run<IO>(
        &mut self,
        framed: &mut Framed<IO, Codec>,
        shutdown: &CancellationToken,
    ) -> Result<(), ChannelError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut reading = true;
        let mut stopping = false;
        loop {
            self.apply_watermarks();
            self.answer_flushes(framed).await?;
            if stopping && self.in_flight.is_empty() {
                return Err(ChannelError::ShuttingDown);
            }
            // The client closed its sending side: stay only while it still waits for answers.
            if !reading && self.in_flight.is_empty() && self.flushes.is_empty() {
                return Ok(());
            }
            let can_read = reading
                && !stopping
                && !self.queue.is_full()
                && self.flushes.len() < MAX_PENDING_FLUSHES
                && self.in_flight.len() < MAX_IN_FLIGHT_BATCHES;
            self.report_busy(!can_read);
            let in_flight = &mut self.in_flight;
            // Biased: shutdown first, then acks (they free in-flight slots and answer flushes)
            // before new work.
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !stopping => Event::Shutdown,
                r = front_ack(in_flight), if !in_flight.is_empty() => Event::Acked(r),
                _ = self.changes.changed(), if !self.queue.is_empty() && !stopping => Event::Changed,
                f = framed.next(), if can_read => Event::Frame(f),
            };
            match event {
                Event::Shutdown => stopping = true,
                Event::Acked(Ok(())) => {
                    let batch = self
                        .in_flight
                        .pop_front()
                        .expect("an ack came from the front");
                    self.admitted += batch.admitted;
                    self.gate
                        .lock()
                        .counters
                        .on_acked(batch.admitted, batch.late);
                }
                Event::Acked(Err(e)) => {
                    // Its ack has resolved: it must not be awaited again when the channel closes.
                    self.in_flight.pop_front();
                    return Err(ChannelError::SinkFailed(e));
                }
                Event::Changed => self.decide(Vec::new()).await?,
                Event::Frame(None) => {
                    tracing::debug!(channel = %self.id, "client finished sending");
                    reading = false;
                }
                Event::Frame(Some(Err(e))) => return Err(ChannelError::from_read(e)),
                Event::Frame(Some(Ok(frame))) => self.on_frame(frame).await?,
            }
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), ChannelError> {
        let now = self.gate.now_ms();
        match frame.kind {
            None => return Err(ChannelError::NoKind),
            Some(client_frame::Kind::Hello(_)) => return Err(ChannelError::DuplicateHello),
            Some(client_frame::Kind::Records(r)) => {
                let records = r
                    .records
                    .into_iter()
                    .map(|r| Pending(to_sink_record(r, &self.default_topic), false))
                    .collect();
                self.decide(records).await?;
            }
            Some(client_frame::Kind::Watermark(w)) => {
                if self.delivered(self.received) {
                    self.gate
                        .lock()
                        .tracker
                        .on_watermark(&self.id, w.watermark_ms, now);
                } else if self.pending_watermarks.len() < MAX_PENDING_WATERMARKS {
                    self.pending_watermarks
                        .push_back((w.watermark_ms, self.received));
                } else if let Some(newest) = self.pending_watermarks.back_mut() {
                    *newest = (newest.0.max(w.watermark_ms), self.received);
                }
            }
            Some(client_frame::Kind::Idle(_)) => self.gate.lock().tracker.on_idle(&self.id),
            Some(client_frame::Kind::Flush(f)) => self.flushes.push_back((f.seq, self.received)),
        }
        Ok(())
    }

    /// Queues `incoming` (observing each event time), decides from the head of the queue under
    /// the gate lock, and hands the admitted records to the sink as one batch.
    async fn decide(&mut self, incoming: Vec<Pending>) -> Result<(), ChannelError> {
        let now = self.gate.now_ms();
        let first = self.decided;
        let mut records = Vec::new();
        let mut late = 0;
        {
            let mut guard = self.gate.lock();
            let state = &mut *guard;
            // Far-future records are dropped in their turn and stay out of the high mark and
            // the ceiling (see `sluice_core::gate`).
            let wall = wall_clock_ms();
            let mut incoming = incoming;
            for record in &mut incoming {
                record.1 = state.core.is_future(record.event_time(), wall);
            }
            let future_max = incoming
                .iter()
                .filter(|r| r.1)
                .map(|r| r.event_time())
                .max();
            if let Some(ts) = future_max {
                state.counters.future_max = state.counters.future_max.max(Some(ts));
                if !std::mem::replace(&mut self.warned_future, true) {
                    tracing::warn!(
                        channel = %self.id,
                        event_time_ms = ts,
                        ahead_ms = ts.saturating_sub(wall),
                        "a record's event time is beyond the future horizon (--future-horizon): \
                         dropped and counted as dropped_future (once per connection in this log)"
                    );
                }
            }
            // The ceiling must cover a record before it can be decided (see `ceiling`).
            if let Some(max) = incoming
                .iter()
                .filter(|r| !r.1)
                .map(|r| r.event_time())
                .max()
            {
                state.ceiling.cover(max).map_err(ChannelError::Ceiling)?;
            }
            if !incoming.is_empty() {
                state.tracker.on_record(&self.id, now);
                state.counters.received += incoming.len() as u64;
                state.counters.held += incoming.len() as u64;
                self.received += incoming.len() as u64;
            }
            for record in incoming {
                if !record.1 {
                    state.core.observe(record.event_time());
                }
                self.queue.push(record);
            }
            let counters = &mut state.counters;
            let mut dropped = 0;
            let decided = self
                .queue
                .drain(&state.core, |Pending(record, _), decision| {
                    match counters.on_decided(decision) {
                        Verdict::Admit { late: is_late } => {
                            late += u64::from(is_late);
                            records.push(record);
                        }
                        Verdict::Drop => dropped += 1,
                    }
                });
            self.decided += decided as u64;
            self.dropped += dropped;
            if !records.is_empty() && !self.busy_reported {
                // Before the sink may make this task wait: records of this channel are now
                // undelivered, so its silence from here on is not the client's.
                state.tracker.set_busy(&self.id, true, now);
                self.busy_reported = true;
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let admitted = records.len() as u64;
        let batch = SinkBatch {
            channel: self.id.clone(),
            records,
        };
        // Waits while the sink queue is full: the channel reads nothing meanwhile.
        let ack = self
            .sink
            .submit(batch)
            .await
            .map_err(ChannelError::SinkFailed)?;
        self.in_flight.push_back(InFlight {
            first,
            admitted,
            late,
            ack,
        });
        Ok(())
    }

    /// Whether every record before index `mark` is decided and, if admitted, acknowledged.
    fn delivered(&self, mark: u64) -> bool {
        self.decided >= mark && self.in_flight.front().is_none_or(|b| b.first >= mark)
    }

    /// Hands the gate every pending watermark whose records are all delivered.
    fn apply_watermarks(&mut self) {
        let mut due = None;
        while let Some(&(watermark, mark)) = self.pending_watermarks.front() {
            if !self.delivered(mark) {
                break;
            }
            self.pending_watermarks.pop_front();
            due = Some(watermark);
        }
        if let Some(watermark) = due {
            let now = self.gate.now_ms();
            self.gate
                .lock()
                .tracker
                .on_watermark(&self.id, watermark, now);
        }
    }

    /// Tells the gate's tracker whether the sidecar has work outstanding for this channel
    /// (held or undelivered records, watermarks waiting on them, or not reading it), when
    /// that changed: a busy channel is never idle.
    fn report_busy(&mut self, not_reading: bool) {
        let busy = not_reading
            || !self.queue.is_empty()
            || !self.in_flight.is_empty()
            || !self.pending_watermarks.is_empty();
        if busy != self.busy_reported {
            let now = self.gate.now_ms();
            self.gate.lock().tracker.set_busy(&self.id, busy, now);
            self.busy_reported = busy;
        }
    }

    /// Sends every `FlushAck` whose records are all decided and acknowledged, in order.
    async fn answer_flushes<IO>(
        &mut self,
        framed: &mut Framed<IO, Codec>,
    ) -> Result<(), ChannelError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        while let Some(&(seq, mark)) = self.flushes.front() {
            if !self.delivered(mark) {
                break;
            }
            self.flushes.pop_front();
            let ack = ServerFrame {
                kind: Some(server_frame::Kind::FlushAck(v1::FlushAck {
                    seq,
                    admitted: self.admitted,
                    dropped: self.dropped,
                })),
            };
            framed.send(ack).await.map_err(ChannelError::Send)?;
        }
        Ok(())
    }

    /// Unregisters the channel; returns how many held records it leaves unacknowledged (the
    /// client never got a `FlushAck` for them, so it must resend them).
    fn close(&mut self) -> usize {
        let held = self.queue.len();
        let closed = {
            let mut state = self.gate.lock();
            let now = self.gate.now_ms();
            if std::mem::take(&mut self.busy_reported) {
                // Matches this connection's busy report; another connection of the id may
                // still be busy.
                state.tracker.set_busy(&self.id, false, now);
            }
            let closed = state.tracker.on_close(&self.id, now);
            state.counters.held = state.counters.held.saturating_sub(held as u64);
            closed
        };
        if closed == Closed::Forgotten {
            tracing::debug!(channel = %self.id, "channel closed owing nothing (never spoke, or finished): forgotten");
            self.gate.channel_forgotten();
        }
        // Batches already handed to the sink still get delivered: count them when they are.
        let in_flight = std::mem::take(&mut self.in_flight);
        if !in_flight.is_empty() {
            let gate = self.gate.clone();
            let id = self.id.clone();
            tokio::spawn(async move {
                for batch in in_flight {
                    match batch.ack.await {
                        Ok(()) => gate.lock().counters.on_acked(batch.admitted, batch.late),
                        Err(e) => {
                            tracing::warn!(channel = %id, error = %e, "sink failed a batch of a closed channel")
                        }
                    }
                }
            });
        }
        held
    }
}

/// Waits for the oldest in-flight batch's ack (the queue is non-empty).
async fn front_ack(in_flight: &mut VecDeque<InFlight>) -> Result<(), SinkError> {
    poll_fn(|cx| {
        let front = in_flight.front_mut().expect("polled only when non-empty");
        std::future::Future::poll(Pin::new(&mut front.ack), cx)
    })
    .await
}

fn to_sink_record(r: v1::Record, default_topic: &Arc<str>) -> SinkRecord {
    SinkRecord {
        topic: if r.topic.is_empty() {
            default_topic.clone()
        } else {
            r.topic.into()
        },
        partition: r.partition,
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|h| SinkHeader {
                key: h.key,
                value: h.value,
            })
            .collect(),
        event_time_ms: r.event_time_ms,
    }
}
