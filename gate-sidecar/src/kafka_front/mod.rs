//! The Kafka front: the sidecar listens like a Kafka cluster on loopback, so a job's stock Kafka
//! producer (Flink's `KafkaSink`, a SQL `kafka` table, any client) writes through the gate by
//! pointing `bootstrap.servers` at it. It is a filtering pass-through proxy in front of the real
//! cluster, never a broker of its own: producer ids, sequences and transactions stay the
//! cluster's.
//!
//! Layout (codec, routing and policy apart):
//! - `frame`: size-prefixed frames, request/response headers, typed bodies.
//! - `bounds`: counts and lengths checked against the bytes before the codec allocates.
//! - `versions`: the APIs served, at which versions, and how; the ApiVersions intersection.
//! - `addresses`: a local port per upstream broker; every broker address in a response
//!   rewritten to it.
//! - `produce`: the policy — every record of every batch decided by the same gate as native
//!   channels, batches rebuilt from the admitted records.
//! - `sequences`: client sequences mapped to upstream sequences for idempotent producers.
//! - `transactions`: transactions holding admitted records, each a floor of the gate's
//!   watermark until it ends, so a drain completes only once its records are committed.
//! - `ask`: asking the cluster about those whose end came through another sidecar.
//! - `event_time`: a record's event time (`--event-time`).
//! - `upstream`: connections to the real cluster (TLS, SASL), as the Kafka sink reaches it.
//! - this module: the listeners and the per-connection loop.
//!
//! Each client connection is served one request at a time, in order: a request is decided,
//! forwarded and answered before the next is read (the client's further requests wait in the
//! socket — backpressure, bounded by TCP). That keeps responses in request order and a
//! partition's batches in sequence order without bookkeeping; the price is one upstream round
//! trip per request per connection (see the README's benchmark section). A closed connection
//! has nothing outstanding, so its channels end as finished. Kafka carries no watermarks: a
//! channel's watermark is either derived (largest event time sent minus
//! `--kafka-watermark-bound`: an approximate drain) or, with `--flink-rest`, the job's sink
//! watermark confirmed by a later checkpoint (`crate::flink_rest`: exact), see
//! [`FrontWatermarks`].

mod addresses;
mod ask;
mod bounds;
mod event_time;
mod frame;
mod produce;
mod sequences;
mod transactions;
mod upstream;
mod versions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse, ProduceRequest,
    ProduceResponse,
};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

pub use event_time::EventTimeSource;
use frame::{FrameError, Frames, Request};
pub use upstream::{Security, SecurityError};
use versions::Handling;

use crate::gate::Gate;

/// How long an upstream answer may take beyond the request's own timeout.
const UPSTREAM_GRACE: Duration = Duration::from_secs(5);
/// How long any other upstream answer may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Producer keys whose sequences the front keeps.
const SEQUENCE_KEYS: usize = 100_000;
/// Open transactions (and transactional sessions) the front keeps track of.
const OPEN_TRANSACTIONS: usize = 10_000;
/// How often transactions past their timeout are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the cluster is asked about open transactions (see `ask`).
const ASK_INTERVAL: Duration = Duration::from_millis(500);
/// A transaction is asked about once open this long, ms: most end through this front sooner.
const ASK_AFTER_MS: u64 = 1_000;
/// How soon an acknowledged commit is asked about again while its markers are being written.
const ASK_AGAIN: Duration = Duration::from_millis(100);
/// An acknowledged commit not confirmed complete this long is warned about, ms.
const UNCONFIRMED_WARNING_MS: u64 = 5_000;
/// Transactions asked about per round (the longest open first).
const ASK_LIMIT: usize = 200;

/// What the front is configured with.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// The real cluster's bootstrap servers, `host:port`.
    pub bootstrap: Vec<String>,
    /// Where a record's event time comes from.
    pub event_time: EventTimeSource,
    /// Largest request frame accepted.
    pub max_frame: usize,
    /// Hold queue bound per channel (connection and partition).
    pub hold_limit: usize,
    /// Where the channels' watermarks come from.
    pub watermarks: FrontWatermarks,
    /// How to reach the cluster (TLS, SASL).
    pub security: Security,
    /// Fault injection: how long every `EndTxn` is held before it is forwarded.
    pub end_txn_delay: Duration,
}

/// Where the Kafka front's channels take their watermarks (Kafka carries none).
#[derive(Debug, Clone)]
pub enum FrontWatermarks {
    /// The largest event time a channel sent (and the broker stored) minus this bound:
    /// approximate, a record later than the bound is late.
    Derived {
        /// The bound, ms.
        bound_ms: i64,
    },
    /// The job's watermark confirmed by a checkpoint through Flink's REST API
    /// (`crate::flink_rest`): exact, the same for every channel of the gate.
    Flushed(tokio::sync::watch::Receiver<Option<sluice_core::EventTime>>),
}

impl FrontWatermarks {
    /// A channel's watermark, given the largest event time it sent.
    pub fn of(&self, max_sent: Option<sluice_core::EventTime>) -> Option<sluice_core::EventTime> {
        match self {
            Self::Derived { bound_ms } => max_sent.map(|m| m.saturating_sub(*bound_ms)),
            Self::Flushed(rx) => *rx.borrow(),
        }
    }

    /// The checkpoint-confirmed watermark, for `Flushed` only: no non-late record of the job
    /// below it is still to come from a flushing sink.
    pub fn confirmed(&self) -> Option<sluice_core::EventTime> {
        match self {
            Self::Derived { .. } => None,
            Self::Flushed(rx) => *rx.borrow(),
        }
    }

    /// What the gate reports as its watermark source.
    pub fn source(&self) -> sluice_proto::v1::WatermarkSource {
        match self {
            Self::Derived { .. } => sluice_proto::v1::WatermarkSource::Derived,
            Self::Flushed(_) => sluice_proto::v1::WatermarkSource::FlinkRest,
        }
    }
}

/// Why a client connection was closed.
#[derive(Debug, Error)]
pub enum FrontError {
    /// The client's bytes are not Kafka requests.
    #[error("bad request")]
    Frame(#[from] FrameError),
    /// A request claims more elements or bytes than it holds.
    #[error("bad Produce request")]
    OutOfBounds(#[from] bounds::OutOfBounds),
    /// An API the front does not serve (it is not in the ApiVersions answer either).
    #[error("{api:?} v{version} is not served by the sluice Kafka front")]
    Unsupported {
        /// The API.
        api: ApiKey,
        /// Its version.
        version: i16,
    },
    /// No upstream broker could be reached.
    #[error("cannot reach the upstream broker {address}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: upstream::ConnectError,
    },
    /// The upstream broker closed the connection or sent garbage.
    #[error("upstream connection failed")]
    Upstream(#[source] FrameError),
    /// The upstream broker did not answer in time.
    #[error("the upstream broker did not answer within {0:?}")]
    Timeout(Duration),
    /// A node the front has not seen in any response.
    #[error("no upstream address known for broker {0}")]
    UnknownNode(i32),
    /// A local broker port could not be bound.
    #[error("cannot bind a local port for an upstream broker")]
    Bind(#[source] std::io::Error),
}

/// Where a listener's connections go.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The bootstrap port: any of the bootstrap servers.
    Bootstrap,
    /// A broker's port.
    Node(i32),
}

/// Locks `m`, also after a panic elsewhere: the maps it guards stay consistent between calls.
fn unpoisoned<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    settings: FrontSettings,
    gate: Arc<Gate>,
    sequences: std::sync::Mutex<sequences::Sequences>,
    transactions: std::sync::Mutex<transactions::OpenTransactions>,
    brokers: addresses::BrokerMap,
    connections: AtomicU64,
    /// Wakes the asking of the cluster (a commit was acknowledged: see `transactions`).
    ask_now: tokio::sync::Notify,
    stop: CancellationToken,
}

/// Serves the front on `listener` (the bootstrap address clients are given) until `stop`.
pub async fn serve(
    listener: TcpListener,
    settings: FrontSettings,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let bind_ip = listener
        .local_addr()
        .map_or([127, 0, 0, 1].into(), |a| a.ip());
    let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
        let weak = weak.clone();
        let serve: addresses::Serve = Arc::new(move |listener, node| {
            if let Some(shared) = weak.upgrade() {
                tokio::spawn(accept(listener, Target::Node(node), shared));
            }
        });
        Shared {
            settings,
            gate,
            sequences: std::sync::Mutex::new(sequences::Sequences::new(SEQUENCE_KEYS)),
            transactions: std::sync::Mutex::new(transactions::OpenTransactions::new(
                OPEN_TRANSACTIONS,
            )),
            brokers: addresses::BrokerMap::new(bind_ip, serve),
            connections: AtomicU64::new(0),
            ask_now: tokio::sync::Notify::new(),
            stop,
        }
    });
    if let FrontWatermarks::Flushed(rx) = &shared.settings.watermarks {
        tokio::spawn(push_flushed(rx.clone(), shared.clone()));
    }
    tokio::spawn(expire_transactions(shared.clone()));
    tokio::spawn(ask_about_transactions(shared.clone()));
    accept(listener, Target::Bootstrap, shared).await;
}

/// The floor key of the checkpoint-confirmed watermark (see [`push_flushed`]).
pub const FLINK_REST_FLOOR: &str = "flink-rest";

/// A confirmed watermark holds for every channel of the front, also those with nothing to
/// send: it is given to each as it comes (channels opened later get it when they first settle).
///
/// It is also a floor of the gate watermark. A job stalled longer than the idle timeout (a
/// frozen TaskManager, backpressure, a long GC) sends nothing, so every channel of the front
/// goes idle — and a gate whose channels are all idle counts as owing nothing, although the
/// job still holds records below the barrier in its buffers. The confirmed watermark is what
/// covers those; as a floor (a live channel that is never idle) it keeps the drain waiting for
/// the checkpoint that confirms them, stalled or not.
async fn push_flushed(
    mut rx: tokio::sync::watch::Receiver<Option<sluice_core::EventTime>>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let Some(wm) = *rx.borrow_and_update() else {
            continue;
        };
        let now = shared.gate.now_ms();
        let mut state = shared.gate.lock();
        let ids: Vec<String> = state
            .tracker
            .known(now)
            .filter(|id| id.starts_with(produce::CHANNEL_PREFIX))
            .map(str::to_owned)
            .collect();
        for id in ids {
            state.tracker.on_watermark(&id, wm, now);
        }
        state.tracker.set_floor(FLINK_REST_FLOOR, wm);
    }
}

async fn accept(listener: TcpListener, target: Target, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, peer, target, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka front: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Conn = Framed<TcpStream, Frames>;
type Up = Option<upstream::Upstream>;

async fn connection(stream: TcpStream, peer: SocketAddr, target: Target, shared: Arc<Shared>) {
    let number = shared.connections.fetch_add(1, Ordering::Relaxed);
    let mut client = Framed::new(stream, Frames::new(shared.settings.max_frame));
    let mut upstream = None;
    let mut channels = BTreeMap::new();
    let result = serve_connection(
        &mut client,
        &mut upstream,
        &mut channels,
        number,
        target,
        &shared,
    )
    .await;
    for (_, ch) in channels {
        ch.close(&shared.gate);
    }
    match result {
        Ok(()) => tracing::debug!(%peer, "Kafka front: client closed the connection"),
        Err(e) => {
            tracing::warn!(%peer, error = %crate::describe(&e), "Kafka front: connection closed")
        }
    }
}

async fn serve_connection(
    client: &mut Conn,
    upstream: &mut Up,
    channels: &mut BTreeMap<(String, i32), produce::PartitionChannel>,
    number: u64,
    target: Target,
    shared: &Shared,
) -> Result<(), FrontError> {
    loop {
        let next = tokio::select! {
            () = shared.stop.cancelled() => return Ok(()),
            n = client.next() => n,
        };
        let Some(frame) = next else { return Ok(()) };
        let request = Request::parse(frame?)?;
        let version = request.version();
        let handling = versions::handling(request.api, version);
        let answer = match handling {
            None if request.api == ApiKey::ApiVersions => Some(unsupported_api_versions(&request)?),
            None => {
                return Err(FrontError::Unsupported {
                    api: request.api,
                    version,
                });
            }
            Some(Handling::PassThrough) => Some(forward(&request, upstream, target, shared).await?),
            Some(Handling::Transaction) => {
                Some(transaction(&request, upstream, target, shared).await?)
            }
            Some(Handling::ApiVersions) => {
                let raw = forward(&request, upstream, target, shared).await?;
                let body = frame::response_body(&request, raw).map_err(FrontError::Upstream)?;
                let theirs: ApiVersionsResponse =
                    frame::decode_response(&request, "ApiVersions response", body)
                        .map_err(FrontError::Upstream)?;
                Some(frame::response(
                    &request,
                    "ApiVersions response",
                    &versions::intersect(theirs),
                )?)
            }
            Some(Handling::RewriteResponse) => {
                let raw = forward(&request, upstream, target, shared).await?;
                Some(rewrite(&request, raw, shared).await?)
            }
            Some(Handling::Produce) => {
                produce(&request, upstream, channels, number, target, shared).await?
            }
        };
        if let Some(answer) = answer {
            client.send(answer).await?;
        }
    }
}

/// `InitProducerId` and `EndTxn`: forwarded unchanged; what the answer says ended lifts the
/// transactions' floors (see `transactions`). An answer that does not decode is passed on all
/// the same (the client judges it); nothing is lifted then.
async fn transaction(
    request: &Request,
    upstream: &mut Up,
    target: Target,
    shared: &Shared,
) -> Result<Bytes, FrontError> {
    use kafka_protocol::messages::{
        EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
    };
    if request.api == ApiKey::EndTxn && !shared.settings.end_txn_delay.is_zero() {
        tokio::time::sleep(shared.settings.end_txn_delay).await;
    }
    let raw = forward(request, upstream, target, shared).await?;
    let Ok(body) = frame::response_body(request, raw.clone()) else {
        return Ok(raw);
    };
    let now = shared.gate.now_ms();
    let lifted = match request.api {
        ApiKey::InitProducerId => {
            let (Ok(req), Ok(resp)) = (
                request.decode::<InitProducerIdRequest>("InitProducerId request"),
                frame::decode_response::<InitProducerIdResponse>(request, "response", body),
            ) else {
                return Ok(raw);
            };
            match req.transactional_id {
                Some(id) if resp.error_code == 0 => unpoisoned(&shared.transactions).initialized(
                    id.0.as_str(),
                    u64::try_from(req.transaction_timeout_ms).unwrap_or(0),
                    (resp.producer_id.0, resp.producer_epoch),
                    now,
                ),
                _ => Vec::new(),
            }
        }
        ApiKey::EndTxn => {
            let (Ok(req), Ok(resp)) = (
                request.decode::<EndTxnRequest>("EndTxn request"),
                frame::decode_response::<EndTxnResponse>(request, "response", body),
            ) else {
                return Ok(raw);
            };
            let fenced = [
                ResponseError::ProducerFenced.code(),
                ResponseError::InvalidProducerEpoch.code(),
            ];
            if resp.error_code == 0 || fenced.contains(&resp.error_code) {
                let producer = (req.producer_id.0, req.producer_epoch);
                let committed = resp.error_code == 0 && req.committed;
                let outcome = match (resp.error_code, req.committed) {
                    (0, true) => "committed",
                    (0, false) => "aborted",
                    _ => "fenced",
                };
                tracing::debug!(
                    transactional_id = req.transactional_id.0.as_str(),
                    producer_id = producer.0,
                    epoch = producer.1,
                    outcome,
                    "Kafka front: transaction ended"
                );
                let mut open = unpoisoned(&shared.transactions);
                let lifted = if committed {
                    // Decided, not yet visible: lifted once the cluster says it is complete.
                    open.commit_acknowledged(producer, req.transactional_id.0.as_str(), now)
                } else {
                    open.ended(producer, now)
                };
                drop(open);
                shared.ask_now.notify_one();
                lifted.into_iter().collect()
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    };
    lift(shared, &lifted);
    Ok(raw)
}

/// Lifts the floors of transactions that ended.
fn lift(shared: &Shared, lifted: &[transactions::Lifted]) {
    if lifted.is_empty() {
        return;
    }
    let mut state = shared.gate.lock();
    for l in lifted {
        state
            .tracker
            .lift_floor(&transactions::floor_key(l.producer));
    }
}

/// Transactions past their timeout no longer hold the watermark: the broker has aborted them,
/// or they were committed through another sidecar.
async fn expire_transactions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let expired = unpoisoned(&shared.transactions).expired(shared.gate.now_ms());
        for l in &expired {
            tracing::warn!(
                transactional_id = l.transactional_id.as_deref().unwrap_or("(not seen)"),
                producer_id = l.producer.0,
                epoch = l.producer.1,
                open_ms = l.open_ms,
                "Kafka front: a transaction with admitted records passed its timeout without \
                 an end seen here (committed through another sidecar, or aborted by the \
                 broker); it no longer holds the drain"
            );
        }
        lift(&shared, &expired);
    }
}

/// Open transactions whose end did not come through this front, and acknowledged commits not
/// yet known complete: the cluster is asked how they stand (`DescribeTransactions`), and those
/// it says are over no longer hold the drain. Until it can be asked, a transaction holds it up
/// to its timeout (`expire_transactions`). Asked every [`ASK_INTERVAL`], at once after a commit
/// is acknowledged, and every [`ASK_AGAIN`] while one awaits its markers.
async fn ask_about_transactions(shared: Arc<Shared>) {
    let mut asker = ask::Asker::new(
        shared.settings.bootstrap.clone(),
        shared.settings.security.clone(),
    );
    let mut tick = tokio::time::interval(ASK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let again = unpoisoned(&shared.transactions).any_committing();
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
            () = shared.ask_now.notified() => {}
            () = tokio::time::sleep(ASK_AGAIN), if again => {}
        }
        let questions =
            unpoisoned(&shared.transactions).to_ask(shared.gate.now_ms(), ASK_AFTER_MS, ASK_LIMIT);
        if questions.is_empty() {
            continue;
        }
        let mut ids: Vec<String> = questions
            .iter()
            .map(|q| q.transactional_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let answers = match asker.describe(&ids).await {
            Ok(a) => a,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %crate::describe(&e),
                        "Kafka front: cannot ask the cluster how open transactions stand                          (retrying); one committed through another sidecar holds the drain                          until it can, or until its timeout"
                    );
                }
                failing = true;
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!("Kafka front: the cluster answers questions about transactions again");
        }
        let now = shared.gate.now_ms();
        let (lifted, unconfirmed) = {
            let mut open = unpoisoned(&shared.transactions);
            let lifted: Vec<transactions::Lifted> = questions
                .iter()
                .filter_map(|q| open.described(q, answers.get(&q.transactional_id)?, now))
                .collect();
            (lifted, open.unconfirmed(now, UNCONFIRMED_WARNING_MS))
        };
        for (producer, id) in &unconfirmed {
            let state =
                answers
                    .get(id)
                    .map_or("(no answer: coordinator not found)".to_owned(), |a| {
                        format!(
                            "{} (error {}, epoch {})",
                            a.state, a.error_code, a.producer.1
                        )
                    });
            tracing::warn!(
                transactional_id = id.as_str(),
                producer_id = producer.0,
                epoch = producer.1,
                cluster_says = state.as_str(),
                "Kafka front: a commit acknowledged {UNCONFIRMED_WARNING_MS} ms ago is not yet \
                 confirmed complete by the cluster; its records hold the drain until it is"
            );
        }
        for l in &lifted {
            tracing::debug!(
                transactional_id = l.transactional_id.as_deref().unwrap_or(""),
                producer_id = l.producer.0,
                epoch = l.producer.1,
                open_ms = l.open_ms,
                "Kafka front: the cluster says a transaction ended (not through this front); it                  no longer holds the drain"
            );
        }
        lift(&shared, &lifted);
    }
}

/// Forwards `request` unchanged and returns the upstream answer.
async fn forward(
    request: &Request,
    upstream: &mut Up,
    target: Target,
    shared: &Shared,
) -> Result<Bytes, FrontError> {
    let frame = request.frame.clone();
    exchange(upstream, target, shared, frame, UPSTREAM_TIMEOUT).await
}

/// A client asking ApiVersions at a version above the front's: answered at v0 with
/// `UNSUPPORTED_VERSION` and the versions it may use (KIP-511).
fn unsupported_api_versions(request: &Request) -> Result<Bytes, FrameError> {
    let (_, lo, hi, _) = versions::SERVED
        .iter()
        .find(|(k, ..)| *k == ApiKey::ApiVersions)
        .expect("ApiVersions is served");
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::ApiVersions as i16)
                .with_min_version(*lo)
                .with_max_version(*hi),
        ]);
    frame::response_at(request, 0, "ApiVersions response", &body)
}

/// Rewrites the broker addresses in a response to `request`.
async fn rewrite(request: &Request, raw: Bytes, shared: &Shared) -> Result<Bytes, FrontError> {
    let body = frame::response_body(request, raw).map_err(FrontError::Upstream)?;
    match request.api {
        ApiKey::Metadata => retyped::<MetadataResponse>(request, body, shared).await,
        ApiKey::FindCoordinator => retyped::<FindCoordinatorResponse>(request, body, shared).await,
        ApiKey::DescribeCluster => retyped::<DescribeClusterResponse>(request, body, shared).await,
        api => unreachable!("{api:?} is not a rewritten API"),
    }
}

/// Decodes a response as `T`, rewrites its broker addresses, encodes it again.
async fn retyped<T>(request: &Request, body: Bytes, shared: &Shared) -> Result<Bytes, FrontError>
where
    T: kafka_protocol::protocol::Decodable
        + kafka_protocol::protocol::Encodable
        + addresses::NamesBrokers,
{
    let what = "response";
    let mut r: T = frame::decode_response(request, what, body).map_err(FrontError::Upstream)?;
    r.rewrite(&shared.brokers).await.map_err(FrontError::Bind)?;
    Ok(frame::response(request, what, &r)?)
}

async fn produce(
    request: &Request,
    upstream: &mut Up,
    channels: &mut BTreeMap<(String, i32), produce::PartitionChannel>,
    number: u64,
    target: Target,
    shared: &Shared,
) -> Result<Option<Bytes>, FrontError> {
    bounds::produce_request(&request.body, request.version())?;
    let body: ProduceRequest = request.decode("Produce request")?;
    let acks = body.acks;
    let timeout =
        Duration::from_millis(u64::try_from(body.timeout_ms).unwrap_or(0)) + UPSTREAM_GRACE;
    let mut policy = produce::Policy {
        gate: &shared.gate,
        event_time: &shared.settings.event_time,
        sequences: &shared.sequences,
        channels,
        connection: number,
        hold_limit: shared.settings.hold_limit,
        watermarks: &shared.settings.watermarks,
        transactions: &shared.transactions,
    };
    let decided = policy.decide(body).await;
    let upstream_answer = match &decided.upstream {
        None => None,
        Some(req) => {
            let sent = async {
                let frame = request.with_body("Produce request", req)?;
                if acks == 0 {
                    send_only(upstream, target, shared, frame).await?;
                    Ok(None)
                } else {
                    exchange(upstream, target, shared, frame, timeout)
                        .await
                        .map(Some)
                }
            }
            .await;
            // Answered or not, the batches' transactions may be asked about again (see
            // `transactions`); without an answer, only once the broker cannot append them any
            // more.
            unpoisoned(&shared.transactions).answered(
                &decided.in_transactions,
                matches!(sent, Ok(Some(_))),
                shared.gate.now_ms(),
            );
            match sent? {
                None => None,
                Some(raw) => {
                    let body = frame::response_body(request, raw).map_err(FrontError::Upstream)?;
                    let mut r: ProduceResponse =
                        frame::decode_response(request, "Produce response", body)
                            .map_err(FrontError::Upstream)?;
                    addresses::NamesBrokers::rewrite(&mut r, &shared.brokers)
                        .await
                        .map_err(FrontError::Bind)?;
                    Some(r)
                }
            }
        }
    };
    policy.settle(&decided, upstream_answer.as_ref());
    if acks == 0 {
        return Ok(None);
    }
    let answer = produce::respond(&decided, upstream_answer);
    Ok(Some(frame::response(request, "Produce response", &answer)?))
}

/// The upstream connection of this client connection, opened on first use (and again when
/// the broker's session limit is near: between requests, nothing is in flight).
async fn connect<'a>(
    upstream: &'a mut Up,
    target: Target,
    shared: &Shared,
) -> Result<&'a mut upstream::Upstream, FrontError> {
    if upstream.as_ref().is_some_and(upstream::Upstream::expired) {
        *upstream = None;
    }
    if upstream.is_none() {
        let addresses = match target {
            Target::Bootstrap => shared.settings.bootstrap.clone(),
            Target::Node(n) => vec![
                shared
                    .brokers
                    .upstream(n)
                    .await
                    .ok_or(FrontError::UnknownNode(n))?,
            ],
        };
        let mut last = None;
        for address in addresses {
            match upstream::connect(&address, &shared.settings.security).await {
                Ok(up) => {
                    *upstream = Some(up);
                    break;
                }
                Err(source) => last = Some(FrontError::Connect { address, source }),
            }
        }
        if upstream.is_none() {
            return Err(last.unwrap_or(FrontError::UnknownNode(-1)));
        }
    }
    Ok(upstream.as_mut().expect("connected above"))
}

async fn send_only(
    upstream: &mut Up,
    target: Target,
    shared: &Shared,
    frame: Bytes,
) -> Result<(), FrontError> {
    let up = connect(upstream, target, shared).await?;
    up.frames.send(frame).await.map_err(|e| {
        *upstream = None;
        FrontError::Upstream(e)
    })
}

/// Sends one request upstream and waits for its response.
async fn exchange(
    upstream: &mut Up,
    target: Target,
    shared: &Shared,
    frame: Bytes,
    timeout: Duration,
) -> Result<Bytes, FrontError> {
    send_only(upstream, target, shared, frame).await?;
    let up = upstream.as_mut().expect("sent on it");
    match tokio::time::timeout(timeout, up.frames.next()).await {
        Err(_) => {
            *upstream = None;
            Err(FrontError::Timeout(timeout))
        }
        Ok(None) => {
            *upstream = None;
            Err(FrontError::Upstream(FrameError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )))
        }
        Ok(Some(Err(e))) => {
            *upstream = None;
            Err(FrontError::Upstream(e))
        }
        Ok(Some(Ok(f))) => Ok(f),
    }
}

/// The front's request decoding path on arbitrary bytes, for the fuzzer (`fuzz/`): framing,
/// the header, the served-API table, the Produce bounds and body, each partition's batch with
/// its bounds and decompression, and every record's event time by each source. The first byte
/// chooses: `0`, the rest is a client's byte stream (size-prefixed frames); otherwise the rest
/// is a Produce body at version 3 + (byte % 9). Must never panic, abort or allocate beyond the
/// input's size.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    use tokio_util::codec::Decoder as _;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode != 0 {
        fuzz_produce(Bytes::copy_from_slice(rest), 3 + i16::from(mode % 9));
        return;
    }
    let mut buf = bytes::BytesMut::from(rest);
    let mut frames = Frames::new(1 << 20);
    while let Ok(Some(frame)) = frames.decode(&mut buf) {
        let Ok(request) = Request::parse(frame) else {
            continue;
        };
        if versions::handling(request.api, request.version()) == Some(Handling::Produce) {
            fuzz_produce(request.body.clone(), request.version());
        }
    }
}

fn fuzz_produce(body: Bytes, version: i16) {
    use kafka_protocol::protocol::Decodable as _;
    if bounds::produce_request(&body, version).is_err() {
        return;
    }
    let Ok(request) = ProduceRequest::decode(&mut body.clone(), version) else {
        return;
    };
    let sources = [
        EventTimeSource::RecordTimestamp,
        EventTimeSource::Json("/ts".into()),
        EventTimeSource::Header("ts".into()),
    ];
    for topic in request.topic_data {
        for partition in topic.partition_data {
            let Some(mut raw) = partition.records else {
                continue;
            };
            let Ok(count) = bounds::record_count(&raw) else {
                continue;
            };
            let decoded =
                kafka_protocol::records::RecordBatchDecoder::decode_with_custom_compression(
                    &mut raw,
                    Some(bounds::decompress(count)),
                );
            if let Ok(set) = decoded {
                for r in &set.records {
                    for s in &sources {
                        let _ = s.of(r);
                    }
                }
            }
        }
    }
}
