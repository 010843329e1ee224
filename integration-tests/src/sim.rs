//! A deterministic, seeded discrete-event simulation of sluice's barrier protocol.
//!
//! The simulation drives the *real* pure core (`sluice_core`): the coordinator is a
//! [`Pipeline`] plus a simulated store, every sidecar gate is a [`GateCore`] with a
//! [`WatermarkTracker`] and one [`ChannelQueue`] per channel. Nothing of the protocol is
//! re-implemented here; the simulation only supplies what the real binaries supply around the core
//! (streams, clocks, clients, faults) and then checks the outcome against `DESIGN.md`.
//!
//! Determinism: one [`ChaCha8Rng`] seeded from the run's `u64` seed, a simulated clock in
//! milliseconds, an event queue ordered by `(time, sequence number)` and only ordered maps. The
//! same seed always replays the same run, which is what makes a failing seed a bug report.
//!
//! What one run does:
//! - One input: records with unique ids and bounded out-of-order event times. Blue (production)
//!   and green (candidate) both consume all of it, partitioned differently over their channels
//!   (different gate and channel counts). Green starts late and replays from the beginning faster
//!   than real time until it catches up.
//! - Channels send watermarks (max event time sent minus the out-of-orderness bound), stall for a
//!   while (silent or explicitly idle) and come back with their backlog, and signal the end of
//!   their input (final `MAX` watermark, idle, or silence).
//! - The coordinator follows the driver rule: after every input, persist first when asked, then
//!   send every connected gate its full assignment. It ticks every ~100 ms, crashes and restarts
//!   from its stored record (also right after entering waiting, prepared and committed).
//! - Gate streams are FIFO with random delays; they break (both directions lose what is in
//!   flight), votes get lost (a break right after the vote), one gate may be partitioned from the
//!   coordinator for seconds, sidecars crash (held records go back to the client and are re-sent
//!   to the restarted, fail-closed gate).
//! - An orchestrator requests one to three cutovers (blue to green, then maybe a rollback, or a
//!   retry after an abort) at random moments with random settings, maybe aborts one, and after
//!   the last completion may tear the outgoing deployment down (its sinks send nothing new).
//!
//! Checks: after every persist (the coordinator never decides twice, versions and epochs never go
//! back, the record never changes without `Effects::persist`, two assignments with one version
//! never differ); at every completion (the drain never completes while an outgoing channel the
//! coordinator counted as live still has unsent records below the barrier); on every decision
//! (per-channel order, a record is decided at most once per deployment); and at the end: every
//! record is admitted exactly once, by the deployment that owns its event time under the
//! completed barriers, except that late copies may duplicate and late drops may lose.
//!
//! Sidecar behaviour the model assumes (`gate-sidecar` must match it, or exactly-once breaks):
//! - A sidecar persists a high-mark ceiling before deciding a record above it and restarts with
//!   [`GateCore::resume`]. A sidecar that restarts with [`GateCore::new`] votes yes on barriers
//!   below records its predecessor already decided ([`SimConfig::forgetful_sidecars`]).
//! - A sidecar that has not heard the coordinator for half its gate expiry (its lease) fences
//!   itself: it forgets its assignment and holds everything until it is assigned again
//!   ([`GateCore::fence`]); the coordinator forgets a gate disconnected for `gate_expiry_ms`
//!   and may then complete a cutover without it. [`SimConfig::expiry_partitions`] makes some
//!   partitions outlast the expiry; with [`SimConfig::no_lease`] as well, runs fail.
//!
//! Known gaps of the protocol the model exposes (counted, not failed, unless configured):
//! - Idle outgoing channels are excluded from the drain, so "completed" does not mean the
//!   outgoing deployment has nothing left to emit: tearing it down then loses the idle channels'
//!   backlog whatever the late policy ([`SimReport::idle_lost`]). [`SimConfig::strict_idle`]
//!   fails such runs. (A rollback no longer loses it: the returning deployment keeps admitting
//!   the range it owned, `Admission::Incoming::kept`; such a loss now fails every run.)

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::EventTime;
use sluice_core::channel::{ChannelQueue, Timed};
use sluice_core::gate::{
    AdmitKind, Applied, Assignment, Decision, DropReason, GateCore, LatePolicy, Vote,
};
use sluice_core::pipeline::{
    CutoverError, Effects, Event, GateEventKind, GateProgress, Phase, Pipeline, PipelineOptions,
    PipelineRecord, Settings, Stage,
};
use sluice_core::watermark::{Closed, WatermarkTracker};

const PIPELINE: &str = "sim/pipeline";
/// Event times are realistic epoch milliseconds: record `i` produced at sim time `p` has event
/// time `T0 + p - jitter`.
const T0: EventTime = 1_700_000_000_000;

/// Knobs of the simulation that are not drawn from the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Fewest input records per run.
    pub min_records: usize,
    /// Most input records per run.
    pub max_records: usize,
    /// Multiplies every fault probability and rate; `0.0` turns faults off.
    pub fault_rate: f64,
    /// Sim time a run may take after its input is exhausted before it counts as "did not
    /// terminate".
    pub settle_limit_ms: u64,
    /// Collect a human-readable event trace in [`SimReport::trace`] (slow; for one seed).
    pub trace: bool,
    /// Fail runs that lose records of a channel that was idle (excluded from the drain) when its
    /// deployment handed over to a teardown ([`SimReport::idle_lost`]). By default such losses
    /// are only counted; see the module docs.
    pub strict_idle: bool,
    /// Model sidecars that lose their high mark in a crash (restart with [`GateCore::new`]) as
    /// opposed to ones that persist a high-mark ceiling and restart with [`GateCore::resume`].
    /// Forgetful sidecars break exactly-once: a restarted gate votes yes on a barrier below
    /// records its predecessor already decided.
    pub forgetful_sidecars: bool,
    /// Let some gates' network partitions outlast the coordinator's gate expiry. An expired gate
    /// no longer votes or holds up the drain; the partitioned sidecar must have fenced itself by
    /// then (see [`SimConfig::no_lease`]). By default partitions end well before the gate would
    /// expire.
    pub expiry_partitions: bool,
    /// Model sidecars without a lease: a gate cut off from the coordinator keeps its last
    /// assignment however long (`DESIGN.md`'s "lost gRPC stream" rule as written). With
    /// [`SimConfig::expiry_partitions`] this breaks exactly-once; the sidecar fences itself
    /// (holds everything) half a gate expiry after it last heard the coordinator.
    pub no_lease: bool,
    /// Model sidecars without a future horizon: a record stamped a year ahead raises the high
    /// mark, so the next barrier lands a year ahead and the cutover never completes (the
    /// liveness check fails such runs).
    pub no_future_horizon: bool,
    /// Model the Kafka front with the exact drain through Flink's REST API: clients send no
    /// watermarks; each deployment is a Flink job whose sink watermark (the one its channels
    /// would have sent) is read stale from a modeled REST API, confirmed by a checkpoint
    /// triggered after it ([`sluice_core::flushed::FlushedWatermark`], the sidecar's own rule),
    /// and given to every channel of the deployment's gates. A checkpoint completes once every
    /// record its channels sent before it was triggered is decided (the sink's flush waits for
    /// the front's acknowledgements). Restores are not modeled (the sim's clients re-send).
    /// A watermark that did not move touches no channel (stalled jobs' channels go idle); the
    /// sidecar makes it a floor of its gate watermark, so in this mode a record lost with an
    /// idle channel is a failure, not excused as [`SimReport::idle_lost`].
    pub rest_drain: bool,
    /// With [`SimConfig::rest_drain`]: the jobs' sinks are exactly-once (issue 11). What a
    /// channel's gate admits goes into that channel's open transaction; a checkpoint's trigger
    /// closes it, and it commits 0–3 s (random) after the checkpoint completes — only then can
    /// a `read_committed` consumer see it. The sidecar sets a floor of its gate watermark at the
    /// least event time admitted into each open transaction and lifts it at the commit (the
    /// front's rule). The drain check then also requires every admitted record of the outgoing
    /// deployment below T to be committed. Sidecar restarts and job restores are not modeled
    /// here (run it with `fault_rate` 0).
    pub exactly_once: bool,
    /// With [`SimConfig::exactly_once`]: sidecars without floors (the drain follows the
    /// checkpoint, not the commit). Breaks the drain check.
    pub no_floors: bool,
    /// With [`SimConfig::rest_drain`]: sidecars that do not make the confirmed watermark a
    /// floor of the gate watermark, so a job stalled past the idle timeout with records in its
    /// buffers leaves a gate of idle channels that counts as drained. Breaks the drain check
    /// (in this mode idle channels are no excuse for a loss: the confirmed watermark covers
    /// them).
    pub no_rest_floor: bool,
    /// With [`SimConfig::exactly_once`]: half the commits (at random) come through another
    /// sidecar (Flink's committer on another TaskManager), so the writer's gate never sees
    /// them end; it learns it by asking the cluster (`DescribeTransactions`) every
    /// [`ASK_INTERVAL_MS`] about its transactions open at least [`ASK_AFTER_MS`], and lifts
    /// those the cluster says are committed (the front's rule).
    pub foreign_commits: bool,
    /// With [`SimConfig::foreign_commits`]: sidecars that take a pre-committed transaction
    /// (closed by its checkpoint, flushed, not yet committed) for ended when they ask. Breaks
    /// the drain check.
    pub ask_lifts_early: bool,
    /// With [`SimConfig::exactly_once`]: sidecars that lift a transaction's floor when its
    /// commit is acknowledged (`EndTxn` OK), before its markers are written and a
    /// `read_committed` consumer can see it (the model writes them up to
    /// [`MARKER_DELAY_MAX_MS`] later). Breaks the drain check.
    pub lift_at_commit_ack: bool,
}

/// The slowest writing of a commit's markers after the coordinator acknowledged it.
pub const MARKER_DELAY_MAX_MS: u64 = 800;
/// How soon an acknowledged commit is asked about again while its markers are written.
pub const ASK_AGAIN_MS: u64 = 100;

/// How often a sidecar asks the cluster about its open transactions (the front's interval).
pub const ASK_INTERVAL_MS: u64 = 500;
/// A transaction is asked about once open this long.
pub const ASK_AFTER_MS: u64 = 1_000;

/// The slowest commit after its checkpoint completed, in the exactly-once model.
const COMMIT_DELAY_MAX_MS: u64 = 3_000;

/// One transaction of a channel's sink (see [`SimConfig::exactly_once`]).
#[derive(Debug, Default)]
struct SimTxn {
    /// Admitted records: (id, event time).
    records: Vec<(u32, EventTime)>,
    /// The trigger time of the checkpoint that closed it.
    closed_by: Option<u64>,
    committed: bool,
    /// When the gate admitted its first record.
    opened_at: u64,
    /// Committed through another sidecar: its gate sees no `EndTxn` (see
    /// [`SimConfig::foreign_commits`]).
    foreign: bool,
    /// Its floor was lifted (by the cluster's answer, or at the acknowledgement with
    /// [`SimConfig::lift_at_commit_ack`]).
    lifted: bool,
    /// Its commit was acknowledged through its own gate (markers maybe not yet written).
    acked: bool,
}

/// The REST drain's model (see [`SimConfig::rest_drain`]).
const REST_FLOOR: &str = "flink-rest";
const REST_POLL_MS: u64 = 200;
const REST_CHECKPOINT_MS: u64 = 1_000;
/// The most a REST watermark read is behind (Flink's metric fetcher).
const REST_METRIC_AGE_MS: u64 = 1_000;
/// The most a checkpoint statistic read is behind (Flink's REST cache).
const REST_STATS_AGE_MS: u64 = 500;

/// One deployment as a Flink job, for the REST drain.
#[derive(Debug)]
struct FlinkJob {
    /// (time, the job's sink watermark then), newest last, for stale reads.
    samples: VecDeque<(u64, Option<EventTime>)>,
    /// Checkpoints in flight: trigger time, and per channel the `next` index at the trigger.
    in_flight: Vec<(u64, Vec<(usize, usize)>)>,
    /// Completed checkpoints: (completed at, triggered at), newest last.
    completed: VecDeque<(u64, u64)>,
    next_trigger: u64,
    flushed: sluice_core::flushed::FlushedWatermark,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            min_records: 300,
            max_records: 2_000,
            fault_rate: 1.0,
            settle_limit_ms: 600_000,
            trace: false,
            strict_idle: false,
            forgetful_sidecars: false,
            expiry_partitions: false,
            no_lease: false,
            no_future_horizon: false,
            rest_drain: false,
            exactly_once: false,
            no_floors: false,
            no_rest_floor: false,
            foreign_commits: false,
            ask_lifts_early: false,
            lift_at_commit_ack: false,
        }
    }
}

/// Faults injected into one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Gate streams broken (any cause other than a coordinator crash).
    pub stream_breaks: u32,
    /// Votes lost (the stream broke right after the vote was sent).
    pub lost_votes: u32,
    /// Sidecar crashes.
    pub sidecar_crashes: u32,
    /// Records a crashed sidecar held and handed back to its client.
    pub handed_back: u64,
    /// Coordinator crashes.
    pub coordinator_crashes: u32,
    /// Coordinator crashes while the stored phase was waiting.
    pub crashes_waiting: u32,
    /// Coordinator crashes while the stored phase was prepared.
    pub crashes_prepared: u32,
    /// Coordinator crashes while the stored phase was committed.
    pub crashes_committed: u32,
    /// Channel stalls (silent or explicitly idle).
    pub stalls: u32,
    /// Messages lost in flight on broken streams.
    pub messages_lost: u64,
    /// Long network partitions of one gate (possibly past the coordinator's gate expiry).
    pub partitions: u32,
    /// Gates the coordinator forgot after `gate_expiry_ms` disconnected.
    pub expired_gates: u32,
    /// Gates that lost their lease and fenced themselves (held everything until reassigned).
    pub fences: u32,
    /// Connections that said Hello and failed before sending anything (fresh ids, and failed
    /// reconnects of existing channels).
    pub bad_connections: u32,
}

/// What one successful run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Input records.
    pub records: usize,
    /// Blue gates and channels per gate.
    pub blue_layout: Vec<usize>,
    /// Green gates and channels per gate.
    pub green_layout: Vec<usize>,
    /// Records admitted by blue.
    pub blue_admitted: u64,
    /// Records admitted by green.
    pub green_admitted: u64,
    /// Records green dropped as late (policy `drop`).
    pub late_dropped: u64,
    /// Records green admitted as late (policy `admit-after-drain`).
    pub late_admitted: u64,
    /// Records in neither output because they were late and blue was torn down.
    pub missing_late: u64,
    /// Records in both outputs because one copy was a late admit.
    pub duplicated_late: u64,
    /// Records in neither output because their owner was torn down while their channel, idle
    /// when it handed over, still had them (its backlog was excluded from the drain); the other
    /// deployment dropped them as barrier, shadow or late records. Allowed unless
    /// [`SimConfig::strict_idle`].
    pub idle_lost: u64,
    /// Records stamped far ahead, dropped by every gate as beyond the future horizon.
    pub future_dropped: u64,
    /// Prepare attempts of the cutover.
    pub attempts: u32,
    /// "no" votes seen.
    pub no_votes: u32,
    /// The final phase (`Completed` or `Aborted`).
    pub final_phase: Phase,
    /// Whether the operator aborted the cutover.
    pub operator_abort: bool,
    /// The barrier of the last completed cutover, or the last proposed one.
    pub barrier: Option<EventTime>,
    /// Cutovers requested (a rollback or a retry may follow the first).
    pub cutovers: usize,
    /// Cutovers completed.
    pub completions: usize,
    /// Whether the last outgoing deployment was torn down after completion.
    pub teardown: bool,
    /// Whether the cutover was requested before green's gates started.
    pub requested_before_green: bool,
    /// Sim time at the end, ms.
    pub sim_time_ms: u64,
    /// The largest pause between two admitted records around the first cutover and in the
    /// steady state before it, ms, when the run qualified for the check (see `check_gap`).
    pub gap: Option<(u64, u64)>,
    /// Liveness: the longest a cutover ran past the start of its liveness window (faults
    /// healed, candidate caught up, request made), ms; the window's budget is
    /// [`Sim::liveness_budget`].
    pub slowest_settle_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Assignments a gate ignored as stale.
    pub stale_assignments: u64,
    /// Faults injected.
    pub faults: Faults,
    /// Phase history, one line per persisted phase change.
    pub history: Vec<String>,
    /// The event trace (only with [`SimConfig::trace`]).
    pub trace: Vec<String>,
}

/// A failed run: which seed, and what went wrong.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed that reproduces the failure.
    pub seed: u64,
    /// What went wrong, with a short trace summary.
    pub message: String,
    /// The event trace (only with [`SimConfig::trace`]).
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sim seed {} failed: {}\n  re-run: cargo run -p sluice-integration-tests --bin sim -- --seed {} -v",
            self.seed, self.message, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seeded simulation and checks it.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(seed, cfg);
    match sim.run_to_end().and_then(|()| sim.check_outcome()) {
        Ok(()) => Ok(sim.report()),
        Err(message) => {
            let summary = sim.summary();
            Err(SimFailure {
                seed,
                message: format!("{message}\n{summary}"),
                trace: std::mem::take(&mut sim.trace),
            })
        }
    }
}

// --- the world ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dep {
    Blue,
    Green,
}

impl Dep {
    fn name(self) -> &'static str {
        match self {
            Dep::Blue => "blue",
            Dep::Green => "green",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// One input record as the source has it.
#[derive(Debug, Clone, Copy)]
struct Input {
    /// Sim time at which blue's sink can emit it (green: see [`Sim::avail`]).
    produced_ms: u64,
    ts: EventTime,
    /// Stamped a year ahead (a bad clock): beyond every gate's future horizon.
    outlier: bool,
}

/// A record as it travels through a channel.
#[derive(Debug, Clone, Copy)]
struct Rec {
    id: u32,
    ts: EventTime,
    /// Position in its channel: arrival order.
    seq: u32,
    /// The gate found it beyond its future horizon when it arrived.
    future: bool,
}

impl Timed for Rec {
    fn event_time(&self) -> EventTime {
        self.ts
    }

    fn is_future(&self) -> bool {
        self.future
    }
}

/// The sidecars' `--future-horizon` (the default, 1 h).
const FUTURE_HORIZON_MS: EventTime = 3_600_000;
/// How far ahead of real time an outlier is stamped.
const OUTLIER_AHEAD_MS: EventTime = 365 * 24 * 3_600_000;

/// What a channel's client does when its input is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndMode {
    /// Sends the end-of-input watermark (`i64::MAX`), then falls silent.
    FinalMax,
    /// Marks the channel idle.
    Idle,
    /// Just falls silent (idle after the timeout).
    Silent,
    /// Closes its connection without a final watermark (the gate cannot tell it finished).
    Close,
    /// Sends the end-of-input watermark, then closes (a finished Flink sink subtask).
    FinalMaxClose,
}

/// A channel: one sink subtask (the client) and its connection into a gate.
#[derive(Debug)]
struct Chan {
    dep: Dep,
    gate: usize,
    /// Index of this channel within its gate.
    slot: usize,
    name: String,
    /// Record ids routed to this channel, in source order (the index is the record's `seq`).
    records: Vec<u32>,
    /// Next record of `records` never sent yet.
    next: usize,
    /// Records a crashed sidecar handed back, re-sent first.
    resend: VecDeque<Rec>,
    max_ts_sent: Option<EventTime>,
    last_wm_at: Option<u64>,
    stalled: bool,
    end: EndMode,
    end_signalled: bool,
    pending_wake: Option<u64>,
    wake_gen: u64,
    last_admitted_seq: Option<u32>,
    closed: bool,
    /// When the channel closed (meaningful while `closed`).
    closed_at: u64,
    /// Tracked by its gate when the gate's sidecar crashed: the restarted sidecar restores it
    /// from its channels file.
    persisted: bool,
    /// When a restarted sidecar restored it (until it reconnects).
    restored_at: Option<u64>,
    // What the gate's tracker should know of this channel (an independent model of
    // `WatermarkTracker`, checked against it on every progress report):
    /// The client is connected to the current sidecar incarnation.
    attached: bool,
    last_touch: u64,
    idle_marked: bool,
    wm_at_gate: Option<EventTime>,
    /// A record or watermark reached the gate under this id since the tracker last started
    /// tracking it (or it was restored from the channels file).
    spoke: bool,
    /// Closed owing nothing (never spoke, or finished): the tracker forgot it.
    forgotten: bool,
    /// REST drain: the watermark the Flink sink subtask has (what it would have sent).
    flink_wm: Option<EventTime>,
    /// REST drain: records the sink writer was handed and its Kafka producer has not sent yet
    /// (they count for the job's watermark, sent on the next wake: a linger).
    buffered: VecDeque<Rec>,
    /// REST drain: the largest event time handed to the writer.
    max_ts_taken: Option<EventTime>,
}

/// A sidecar's gate for one deployment.
#[derive(Debug)]
struct Gate {
    id: String,
    dep: Dep,
    chans: Vec<usize>,
    alive: bool,
    incarnation: u64,
    core: GateCore,
    tracker: WatermarkTracker,
    queues: Vec<ChannelQueue<Rec>>,
    /// What each queue holds, in order: the core's queue has no accessor, and a crashed sidecar
    /// must hand exactly these records back to its clients.
    mirrors: Vec<VecDeque<Rec>>,
    /// The gate's current stream to the coordinator.
    stream: Option<usize>,
    connect_gen: u64,
    /// The sidecar's persisted high-mark ceiling (survives crashes): raised, before a record
    /// above it is decided, to that record's event time plus the scenario's step.
    ceiling: Option<EventTime>,
    /// No stream to the coordinator can be opened before this time (a network partition).
    partitioned_until: u64,
    /// Commands received from the coordinator so far (each renews the lease).
    heard: u64,
    /// Bad connections open now (said Hello and will fail before sending anything), by channel
    /// id, with when they opened.
    bad_open: BTreeMap<String, u64>,
    /// Bad connections that were open when the sidecar crashed: the restarted sidecar restores
    /// them from its channels file (closed, watermark unknown) until they expire.
    bad_restored: BTreeMap<String, u64>,
    /// Bad connections made so far (for unique ids).
    bad_made: u32,
    /// The REST drain's floor this incarnation set: the confirmed watermark it last pushed.
    rest_floor: Option<EventTime>,
}

/// One gRPC `Attach` stream.
#[derive(Debug)]
struct Stream {
    gate: usize,
    alive: bool,
    /// Delivery time of the last message in each direction (FIFO per stream).
    up_last: u64,
    down_last: u64,
}

/// Gate → coordinator messages. `Vec<usize>` is simulation-only ground truth riding along with a
/// progress report: the channels the gate counted as live (not idle) in it.
#[derive(Debug, Clone)]
enum Up {
    Attach(GateProgress, Vec<usize>),
    Progress(GateProgress, Vec<usize>),
    Vote(Vote),
}

#[derive(Debug, Clone)]
enum Ev {
    CoordTick,
    CoordCrash,
    CoordRestart,
    StartCutover,
    OperatorAbort,
    Up {
        stream: usize,
        msg: Up,
    },
    Down {
        stream: usize,
        assignment: Assignment,
    },
    CoordSeesBreak {
        stream: usize,
    },
    GateSeesBreak {
        stream: usize,
    },
    Connect {
        gate: usize,
        generation: u64,
    },
    Heartbeat {
        gate: usize,
        incarnation: u64,
    },
    Wake {
        chan: usize,
        generation: u64,
    },
    /// REST drain: the deployment's sidecars poll Flink, which triggers and completes
    /// checkpoints.
    FlinkTick {
        dep: Dep,
    },
    /// Exactly-once: a channel's transaction commits.
    Commit {
        chan: usize,
        txn: u32,
    },
    /// Exactly-once: the coordinator acknowledges a channel's commit (`EndTxn` OK, through the
    /// channel's gate unless the commit is foreign); the markers follow.
    CommitAcked {
        chan: usize,
        txn: u32,
    },
    /// Exactly-once: a gate asks the cluster about its open transactions (`again`: the quick
    /// repeat while an acknowledged commit awaits its markers).
    AskCluster {
        gate: usize,
        again: bool,
    },
    BreakFault,
    Partition {
        gate: usize,
        len: u64,
    },
    /// The lease of a gate that had heard `heard` commands when its stream broke runs out.
    LeaseEnd {
        gate: usize,
        incarnation: u64,
        heard: u64,
    },
    SidecarCrash {
        gate: usize,
    },
    SidecarRestart {
        gate: usize,
    },
    GreenStart,
    Teardown,
    StallStart {
        chan: usize,
        explicit: bool,
    },
    StallEnd {
        chan: usize,
    },
    ClientConnect {
        chan: usize,
        incarnation: u64,
    },
    /// A connection says Hello to the gate and then fails (bad frame, or just closes).
    BadConnect {
        gate: usize,
    },
    /// The bad connection `name` of the gate's incarnation fails.
    BadClose {
        gate: usize,
        incarnation: u64,
        name: String,
    },
}

/// How one deployment decided one record.
#[derive(Debug, Clone, Copy)]
struct DecLog {
    decision: Decision,
    at_ms: u64,
    gate: usize,
    version: Option<u64>,
}

/// Everything drawn from the seed before the run starts.
#[derive(Debug, Clone)]
struct Scenario {
    spacing_ms: u64,
    bound_ms: i64,
    blue_layout: Vec<usize>,
    green_layout: Vec<usize>,
    green_start_ms: u64,
    replay_speed: u64,
    idle_timeout_ms: u64,
    /// A closed channel counts until it reconnects or this long (derived from the idle timeout,
    /// not drawn, so the seeds' scenarios are unchanged).
    closed_expiry_ms: u64,
    wm_interval_ms: u64,
    heartbeat_ms: u64,
    tick_ms: u64,
    queue_limit: usize,
    batch: usize,
    frame_gap_ms: u64,
    max_net_ms: u64,
    spike_p: f64,
    /// Chance that a client's (re)connect fails before it sends anything.
    bad_connect_p: f64,
    /// The cutovers the orchestrator requests, one after the other.
    cutovers: Vec<CutoverSpec>,
    /// Tear the outgoing deployment down this long after the last cutover completed.
    teardown_after_ms: Option<u64>,
    break_mean_ms: u64,
    faults_until_ms: u64,
    vote_loss_p: f64,
    phase_sidecar_crash_p: f64,
    phase_coord_crash_p: f64,
    max_coord_crashes: u32,
    gate_expiry_ms: u64,
    ceiling_step_ms: i64,
    /// A long network partition of one gate: (start, gate, length).
    partition: Option<(u64, usize, u64)>,
}

/// One cutover request.
#[derive(Debug, Clone)]
struct CutoverSpec {
    /// The first: absolute sim time; later ones: delay after the previous one ended.
    start_ms: u64,
    /// `min_gates` is clamped to the candidate's gate count when the request is made.
    settings: Settings,
    /// Abort it this long after it enters this phase.
    abort_in: Option<(Phase, u64)>,
}

impl CutoverSpec {
    fn random(rng: &mut ChaCha8Rng, start_ms: u64, fr: f64) -> Self {
        let late_policy = if rng.random_bool(0.5) {
            LatePolicy::Drop
        } else {
            LatePolicy::AdmitAfterDrain
        };
        let settings = Settings {
            // Small margins make "no" votes (and any unsoundness of the vote) likely.
            margin_ms: if rng.random_bool(0.3) {
                rng.random_range(0..=50)
            } else {
                rng.random_range(0..=2_000)
            },
            drain_lateness_ms: rng.random_range(0..=1_000),
            min_gates: rng.random_range(1..=4),
            max_lag_ms: rng.random_range(200..=5_000),
            prepare_timeout_ms: rng.random_range(500..=3_000),
            max_attempts: rng.random_range(3..=8),
            late_policy,
            now: rng.random_bool(0.3),
            ready_timeout_ms: if rng.random_bool(0.1) {
                rng.random_range(2_000..=20_000)
            } else {
                0
            },
            // Without it a `now` request before the candidate's first gate attached is refused
            // (and the orchestrator asks again later).
            force: rng.random_bool(0.5),
        };
        let abort_in = rng.random_bool(0.12 * fr.min(1.0)).then(|| {
            let phase = if rng.random_bool(0.5) {
                Phase::Waiting
            } else {
                Phase::Prepared
            };
            (phase, rng.random_range(0..=1_500))
        });
        Self {
            start_ms,
            settings,
            abort_in,
        }
    }
}

struct Sim<'a> {
    seed: u64,
    cfg: &'a SimConfig,
    sc: Scenario,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    events: u64,
    limit_ms: u64,

    inputs: Vec<Input>,
    chans: Vec<Chan>,
    gates: Vec<Gate>,
    streams: Vec<Stream>,

    options: PipelineOptions,
    coord: Option<Pipeline>,
    stored: PipelineRecord,
    /// gate → the stream the coordinator accepted its attach on (mirrors `GateLive::conn`).
    coord_conn: BTreeMap<usize, usize>,
    /// gate → live channels of the last report the coordinator accepted from it.
    shadow_live: BTreeMap<usize, Vec<usize>>,
    /// Exactly-once: every channel's transactions by (channel, number), and each channel's
    /// open one.
    txns: BTreeMap<(usize, u32), SimTxn>,
    open_txn: BTreeMap<usize, u32>,

    /// Cutovers requested so far (index of the next one in `sc.cutovers`).
    cutovers_started: usize,
    /// Whether the last requested cutover is still running.
    cutover_running: bool,
    requested_before_green: bool,
    green_started_at: Option<u64>,
    /// The deployment torn down, and when.
    teardown: Option<(Dep, u64)>,
    abort_scheduled: bool,
    operator_abort: bool,
    coord_crashes: u32,

    committed: BTreeMap<u64, EventTime>,
    prepared: BTreeMap<u64, EventTime>,
    sent_assignments: BTreeMap<(Dep, u64), Assignment>,
    commit_at: Option<u64>,
    /// Completed cutovers in order: the deployment that took over and the barrier.
    completions: Vec<(Dep, EventTime)>,
    /// The epoch committed by the running cutover, if any.
    committed_this_cutover: Option<u64>,
    attempts: u32,
    no_votes: u32,
    stale_assignments: u64,

    /// Per record, how blue (`[0]`) and green (`[1]`) decided it.
    dec: Vec<[Option<DecLog>; 2]>,
    outputs: [Vec<u32>; 2],
    late_dropped: u64,
    late_admitted: u64,
    missing_late: u64,
    duplicated_late: u64,
    idle_lost: u64,
    /// Far-future records, dropped by every gate that decided them.
    future_dropped: u64,
    /// Blue's (`[0]`) and green's (`[1]`) channel of every record.
    chan_of: Vec<[usize; 2]>,
    /// Per completed cutover, the outgoing channels the coordinator did not count as live (idle)
    /// when it completed the drain.
    excused: Vec<Vec<usize>>,
    faults: Faults,
    /// Liveness: no fault is in effect after this time (see [`Sim::check_liveness`]).
    healed_at: u64,
    /// Liveness: until this time a cutover may legitimately wait for a closed channel that
    /// never comes back to expire.
    expiry_wait_until: u64,
    /// When the running cutover was requested.
    requested_at: u64,
    /// See [`SimReport::slowest_settle_ms`].
    slowest_settle_ms: u64,
    /// Since when the running cutover's candidate has been caught up (see `check_liveness`).
    caught_up_since: Option<u64>,
    /// The largest event time of a real record (not an outlier) any gate observed.
    max_observed: Option<EventTime>,
    /// The first completed cutover: when it committed, when it completed, its settings.
    first_cutover: Option<(u64, u64, Settings)>,
    /// See [`SimReport::gap`].
    gap: Option<(u64, u64)>,
    history: Vec<String>,
    trace: Vec<String>,
    /// Blue's and green's Flink jobs (REST drain only).
    flink: [FlinkJob; 2],
}

/// A 64-bit mix (splitmix64's finaliser): partitions records differently per deployment.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fmt_ts(ts: Option<EventTime>) -> String {
    match ts {
        None => "-".into(),
        Some(EventTime::MAX) => "MAX".into(),
        Some(t) => format!("T0+{}", t - T0),
    }
}

impl<'a> Sim<'a> {
    fn new(seed: u64, cfg: &'a SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fr = cfg.fault_rate.max(0.0);

        // --- input -----------------------------------------------------------------------
        let n = rng.random_range(cfg.min_records..=cfg.max_records.max(cfg.min_records));
        let spacing_ms = rng.random_range(15..=120u64);
        let bound_ms = *[0i64, 50, 200, 500]
            .get(rng.random_range(0..4usize))
            .expect("index in range");
        let mut inputs = Vec::with_capacity(n);
        let mut p = rng.random_range(0..=spacing_ms);
        for _ in 0..n {
            let jitter = rng.random_range(0..=bound_ms);
            inputs.push(Input {
                produced_ms: p,
                ts: T0 + p as EventTime - jitter,
                outlier: false,
            });
            p += rng.random_range(0..=2 * spacing_ms);
        }
        let input_end = inputs.last().map_or(0, |i| i.produced_ms);
        // A bad clock upstream: a few records stamped a year ahead.
        if rng.random_bool((0.2 * fr).min(1.0)) {
            for _ in 0..rng.random_range(1..=3) {
                let i = &mut inputs[rng.random_range(0..n)];
                i.ts = T0 + i.produced_ms as EventTime + OUTLIER_AHEAD_MS;
                i.outlier = true;
            }
        }

        // --- deployments -----------------------------------------------------------------
        let blue_layout: Vec<usize> = (0..2).map(|_| rng.random_range(2..=3)).collect();
        let green_gates = rng.random_range(1..=3);
        let green_layout: Vec<usize> = (0..green_gates).map(|_| rng.random_range(1..=4)).collect();
        let green_start_ms = rng.random_range(1_000..=(input_end * 6 / 10).max(2_000));
        let replay_speed = rng.random_range(2..=8);

        // --- the cutovers ----------------------------------------------------------------
        // Mostly one; sometimes a rollback (or a retry after an abort) follows.
        let count = match rng.random_range(0..10) {
            0..=6 => 1,
            7..=8 => 2,
            _ => 3,
        };
        let mut cutovers = Vec::with_capacity(count);
        for k in 0..count {
            // The first mostly during the input, sometimes after it ended (high marks stop moving
            // then); later ones some time after the previous one ended.
            let start_ms = if k > 0 {
                rng.random_range(0..=5_000)
            } else if rng.random_bool(0.25) {
                input_end + rng.random_range(0..=5_000)
            } else {
                rng.random_range(500..=input_end.max(1_000))
            };
            cutovers.push(CutoverSpec::random(&mut rng, start_ms, fr));
        }
        let teardown_after_ms = rng.random_bool(0.4).then(|| rng.random_range(0..=3_000));

        let partition = rng.random_bool((0.1 * fr).min(1.0));
        let break_mean_ms = if fr > 0.0 {
            (rng.random_range(2_000..=20_000u64) as f64 / fr) as u64
        } else {
            0
        };
        // Drawn here, in the same order as when it was drawn inside the literal below.
        let idle_timeout_ms = rng.random_range(500..=2_000);
        let sc = Scenario {
            spacing_ms,
            bound_ms,
            blue_layout,
            green_layout,
            green_start_ms,
            replay_speed,
            idle_timeout_ms,
            // Long against the idle timeout, as in production (10 min vs 10 s), so a drain or a
            // readiness that waits for it shows as a liveness failure.
            closed_expiry_ms: idle_timeout_ms * 20,
            wm_interval_ms: rng.random_range(100..=300),
            heartbeat_ms: 200,
            tick_ms: 100,
            queue_limit: rng.random_range(5..=100),
            batch: rng.random_range(1..=16),
            frame_gap_ms: rng.random_range(5..=20),
            max_net_ms: rng.random_range(2..=40),
            spike_p: 0.02,
            bad_connect_p: (0.1 * fr).min(1.0),
            cutovers,
            teardown_after_ms,
            break_mean_ms,
            faults_until_ms: input_end + 30_000,
            vote_loss_p: (rng.random_range(0.0..0.3) * fr).min(0.9),
            phase_sidecar_crash_p: (0.15 * fr).min(1.0),
            phase_coord_crash_p: (0.2 * fr).min(1.0),
            max_coord_crashes: if fr > 0.0 { rng.random_range(0..=4) } else { 0 },
            gate_expiry_ms: if partition {
                rng.random_range(10_000..=30_000)
            } else {
                120_000
            },
            ceiling_step_ms: *[0i64, 1_000, 10_000]
                .get(rng.random_range(0..3usize))
                .expect("index in range"),
            partition: None,
        };

        // --- channels and gates ----------------------------------------------------------
        let mut gates = Vec::new();
        let mut chans = Vec::new();
        let options = PipelineOptions {
            auto_activate: true,
            gate_expiry_ms: sc.gate_expiry_ms,
        };
        for (dep, layout) in [(Dep::Blue, &sc.blue_layout), (Dep::Green, &sc.green_layout)] {
            let first_chan = chans.len();
            for (gi, &nch) in layout.iter().enumerate() {
                let g = gates.len();
                let mut gate = Gate {
                    id: format!("{}-{gi}", dep.name()),
                    dep,
                    chans: vec![],
                    alive: false,
                    incarnation: 0,
                    core: GateCore::new(),
                    tracker: WatermarkTracker::new(sc.idle_timeout_ms, sc.closed_expiry_ms),
                    queues: vec![],
                    mirrors: vec![],
                    stream: None,
                    connect_gen: 0,
                    ceiling: None,
                    partitioned_until: 0,
                    heard: 0,
                    bad_open: BTreeMap::new(),
                    bad_restored: BTreeMap::new(),
                    bad_made: 0,
                    rest_floor: None,
                };
                for slot in 0..nch {
                    let end = match rng.random_range(0..5) {
                        0 => EndMode::FinalMax,
                        1 => EndMode::Idle,
                        2 => EndMode::Silent,
                        3 => EndMode::FinalMaxClose,
                        _ => EndMode::Close,
                    };
                    gate.chans.push(chans.len());
                    gate.queues.push(ChannelQueue::new(sc.queue_limit));
                    gate.mirrors.push(VecDeque::new());
                    chans.push(Chan {
                        dep,
                        gate: g,
                        slot,
                        name: format!("c{slot}"),
                        records: vec![],
                        next: 0,
                        resend: VecDeque::new(),
                        max_ts_sent: None,
                        last_wm_at: None,
                        stalled: false,
                        end,
                        end_signalled: false,
                        pending_wake: None,
                        wake_gen: 0,
                        last_admitted_seq: None,
                        closed: false,
                        closed_at: 0,
                        persisted: false,
                        restored_at: None,
                        attached: false,
                        last_touch: 0,
                        idle_marked: false,
                        wm_at_gate: None,
                        spoke: false,
                        forgotten: false,
                        flink_wm: None,
                        buffered: VecDeque::new(),
                        max_ts_taken: None,
                    });
                }
                gates.push(gate);
            }
            // The same input, partitioned by a deployment-specific hash.
            let count = chans.len() - first_chan;
            let salt = (dep.idx() as u64 + 1) << 40;
            for id in 0..n {
                let c = first_chan + (mix(id as u64 ^ salt) % count as u64) as usize;
                chans[c].records.push(id as u32);
            }
        }

        let mut sc = sc;
        if partition {
            // Around the cutover. Noticing the break and reconnecting take up to ~4.5 s more, so
            // by default the gate is back before the coordinator would forget it.
            let len = if cfg.expiry_partitions {
                rng.random_range(sc.gate_expiry_ms / 2..=sc.gate_expiry_ms * 2)
            } else {
                rng.random_range(sc.gate_expiry_ms / 8..=sc.gate_expiry_ms / 2 - 1_000)
            };
            let first = sc.cutovers[0].start_ms;
            let start = first.saturating_sub(rng.random_range(0..=sc.gate_expiry_ms));
            sc.partition = Some((start.max(500), rng.random_range(0..gates.len()), len));
        }
        let green_end = inputs
            .last()
            .map_or(0, |i| green_start_ms + i.produced_ms / replay_speed)
            .max(input_end);
        let cutovers_ms: u64 = sc.cutovers.iter().map(|c| c.start_ms).sum();
        let limit_ms = green_end.max(cutovers_ms) + cfg.settle_limit_ms * sc.cutovers.len() as u64;
        let mut sim = Sim {
            seed,
            cfg,
            sc,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            events: 0,
            limit_ms,
            inputs,
            chans,
            gates,
            streams: vec![],
            options,
            coord: Some(Pipeline::new(PIPELINE, options, 0)),
            stored: PipelineRecord::new(PIPELINE, 0),
            coord_conn: BTreeMap::new(),
            shadow_live: BTreeMap::new(),
            txns: BTreeMap::new(),
            open_txn: BTreeMap::new(),
            cutovers_started: 0,
            cutover_running: false,
            requested_before_green: false,
            green_started_at: None,
            teardown: None,
            abort_scheduled: false,
            operator_abort: false,
            coord_crashes: 0,
            committed: BTreeMap::new(),
            prepared: BTreeMap::new(),
            sent_assignments: BTreeMap::new(),
            commit_at: None,
            completions: vec![],
            committed_this_cutover: None,
            attempts: 0,
            no_votes: 0,
            stale_assignments: 0,
            dec: vec![[None, None]; n],
            outputs: [vec![], vec![]],
            late_dropped: 0,
            late_admitted: 0,
            missing_late: 0,
            duplicated_late: 0,
            idle_lost: 0,
            future_dropped: 0,
            chan_of: vec![],
            excused: vec![],
            faults: Faults::default(),
            healed_at: 0,
            expiry_wait_until: 0,
            requested_at: 0,
            slowest_settle_ms: 0,
            caught_up_since: None,
            max_observed: None,
            first_cutover: None,
            gap: None,
            history: vec![],
            trace: vec![],
            flink: std::array::from_fn(|_| FlinkJob {
                samples: VecDeque::new(),
                in_flight: vec![],
                completed: VecDeque::new(),
                next_trigger: 0,
                flushed: sluice_core::flushed::FlushedWatermark::new(REST_METRIC_AGE_MS),
            }),
        };
        sim.chan_of = vec![[0; 2]; n];
        for (c, ch) in sim.chans.iter().enumerate() {
            for &id in &ch.records {
                sim.chan_of[id as usize][ch.dep.idx()] = c;
            }
        }
        sim.schedule_initial(input_end, fr);
        sim
    }

    fn schedule_initial(&mut self, input_end: u64, fr: f64) {
        self.at(0, Ev::CoordTick);
        if self.cfg.rest_drain {
            self.at(0, Ev::FlinkTick { dep: Dep::Blue });
            self.at(0, Ev::FlinkTick { dep: Dep::Green });
        }
        if self.cfg.exactly_once {
            for gate in 0..self.gates.len() {
                let phase = self.rng.random_range(0..ASK_INTERVAL_MS);
                self.at(phase, Ev::AskCluster { gate, again: false });
            }
        }
        // Blue starts at once: its gates attach (and are auto-activated), its clients send.
        for g in 0..self.gates.len() {
            if self.gates[g].dep == Dep::Blue {
                self.start_gate(g);
            }
        }
        self.at(self.sc.green_start_ms, Ev::GreenStart);
        if let Some((t, gate, len)) = self.sc.partition {
            self.at(t, Ev::Partition { gate, len });
        }
        self.at(self.sc.cutovers[0].start_ms, Ev::StartCutover);
        if self.sc.break_mean_ms > 0 {
            let t = self.rng.random_range(0..=2 * self.sc.break_mean_ms);
            self.at(t, Ev::BreakFault);
        }
        if fr > 0.0 {
            // A sidecar that restarts shortly before the cutover: its new incarnation votes on
            // what it has seen since, not on what its predecessor decided.
            if self.rng.random_bool((0.3 * fr).min(1.0)) {
                // Mostly early enough to be back (and attached, with its fresh progress) when
                // the barrier is chosen.
                let before = self.rng.random_range(0..=6_000);
                let t = self.sc.cutovers[0].start_ms.saturating_sub(before).max(300);
                let g = self.rng.random_range(0..self.gates.len());
                self.at(t, Ev::SidecarCrash { gate: g });
            }
            let crashes = self.rng.random_range(0..=3u32);
            for _ in 0..crashes {
                let t = self.rng.random_range(300..=input_end.max(301));
                let g = self.rng.random_range(0..self.gates.len());
                self.at(t, Ev::SidecarCrash { gate: g });
            }
            let crashes = self.rng.random_range(0..=2u32);
            for _ in 0..crashes {
                let t = self.rng.random_range(1_000..=input_end.max(1_001));
                self.at(t, Ev::CoordCrash);
            }
        }
        for g in 0..self.gates.len() {
            if self.rng.random_bool((0.3 * fr).min(1.0)) {
                for _ in 0..self.rng.random_range(1..=3) {
                    let t = self.rng.random_range(0..=input_end + 5_000);
                    self.at(t, Ev::BadConnect { gate: g });
                }
            }
        }
        for c in 0..self.chans.len() {
            if self.rng.random_bool((0.3 * fr).min(1.0)) {
                for _ in 0..self.rng.random_range(1..=2) {
                    let start = self.rng.random_range(0..=input_end);
                    let len = self.rng.random_range(500..=8_000);
                    let explicit = self.rng.random_bool(0.5);
                    self.at(start, Ev::StallStart { chan: c, explicit });
                    self.at(start + len, Ev::StallEnd { chan: c });
                }
            }
        }
    }

    // --- the event loop -------------------------------------------------------------------

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t.max(self.now), self.seq), ev);
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    fn tr(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>8} {}", self.now, f());
            self.trace.push(line);
        }
    }

    fn run_to_end(&mut self) -> Result<(), String> {
        self.tr_scenario();
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > self.limit_ms {
                return Err(format!(
                    "did not terminate within {} ms of sim time: phase {:?}, {}",
                    self.limit_ms,
                    self.stored.phase(),
                    self.pending_summary()
                ));
            }
            self.now = t;
            self.events += 1;
            self.handle(ev)?;
            self.check_liveness()?;
            if self.done() {
                return Ok(());
            }
        }
        Err("event queue ran dry before the run ended".into())
    }

    /// The liveness rule of DESIGN.md: a cutover whose faults have healed and whose candidate
    /// has caught up ends — completed, or given up within its own limits — within
    /// [`Sim::liveness_budget`]. The window opens when the last of these happened: the request,
    /// the end of the last fault, green's replay catching up with real time, and the expiry of
    /// any closed channel that is never coming back (a closed channel the gate cannot know is
    /// finished counts until it expires; that wait is the contract).
    fn check_liveness(&mut self) -> Result<(), String> {
        if !self.cutover_running {
            return Ok(());
        }
        if self.green_started_at.is_none() {
            return Ok(());
        }
        let Some(plan) = self.stored.plan().cloned() else {
            return Ok(());
        };
        // Caught up, in truth (not as the coordinator sees it): every channel of both
        // deployments has sent every record produced (in real time) more than the candidate's
        // allowed lag ago. (A `now` cutover from a lagging deployment drains when it catches up.)
        let lag = u64::try_from(plan.settings.max_lag_ms).unwrap_or(0);
        let behind = (0..self.chans.len()).any(|c| {
            let ch = &self.chans[c];
            self.source_open(c)
                && (!ch.resend.is_empty()
                    || (ch.next < ch.records.len()
                        && self.inputs[ch.records[ch.next] as usize].produced_ms + lag <= self.now))
        });
        if behind {
            self.caught_up_since = None;
            return Ok(());
        }
        let caught_up = *self.caught_up_since.get_or_insert(self.now);
        let from = self
            .requested_at
            .max(self.healed_at)
            .max(caught_up)
            .max(self.expiry_wait_until);
        let ran = self.now.saturating_sub(from);
        self.slowest_settle_ms = self.slowest_settle_ms.max(ran);
        let budget = self.liveness_budget(&plan.settings);
        if ran > budget {
            return Err(format!(
                "liveness: the cutover to {} is still {:?} {ran} ms after its faults healed and \
                 its candidate caught up (budget {budget} ms); waiting for: {}",
                plan.candidate,
                self.stored.phase(),
                self.coord
                    .as_ref()
                    .map_or("coordinator down".into(), |p| match p.readiness() {
                        Err(why) if self.stored.phase() == Phase::Waiting => why,
                        _ => format!("phase {:?}", self.stored.phase()),
                    })
            ));
        }
        Ok(())
    }

    /// How long a healed cutover may take (see [`Sim::check_liveness`]): a retry after a vote
    /// lost at the last moment, the barrier's margin and the drain lateness passing in real
    /// time, watermarks trailing by the out-of-orderness bound and their interval, a silent
    /// channel turning idle, the candidate's allowed lag, and network and tick delays.
    fn liveness_budget(&self, s: &Settings) -> u64 {
        let sc = &self.sc;
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        2 * (s.prepare_timeout_ms + 4 * 400 + sc.tick_ms)
            + ms(s.margin_ms)
            + ms(s.drain_lateness_ms)
            + ms(s.max_lag_ms)
            + ms(sc.bound_ms)
            + sc.wm_interval_ms
            + sc.idle_timeout_ms
            + 4 * sc.heartbeat_ms
            + 3_000
            + if self.cfg.rest_drain {
                // Reads behind, a checkpoint interval, the poll: for each side.
                2 * (REST_METRIC_AGE_MS + REST_STATS_AGE_MS + 2 * REST_CHECKPOINT_MS + REST_POLL_MS)
            } else {
                0
            }
    }

    fn tr_scenario(&mut self) {
        if !self.cfg.trace {
            return;
        }
        let sc = format!("{:?}", self.sc);
        let n = self.inputs.len();
        self.tr(|| format!("scenario: {n} records, {sc}"));
    }

    fn done(&self) -> bool {
        if self.cutovers_started < self.sc.cutovers.len()
            || self.cutover_running
            || self.green_started_at.is_none()
        {
            return false;
        }
        if !matches!(
            self.stored.stage,
            Stage::Steady {
                last: Phase::Completed | Phase::Aborted
            }
        ) {
            return false;
        }
        self.gates
            .iter()
            .all(|g| g.alive && g.mirrors.iter().all(|m| m.is_empty()))
            && (0..self.chans.len()).all(|c| self.chan_finished(c) && self.chans[c].end_signalled)
    }

    /// What keeps the run from ending (for "did not terminate").
    fn pending_summary(&self) -> String {
        let unsent: usize = self
            .chans
            .iter()
            .map(|c| c.records.len() - c.next + c.resend.len())
            .sum();
        let held: usize = self
            .gates
            .iter()
            .flat_map(|g| g.mirrors.iter())
            .map(|m| m.len())
            .sum();
        let dead: Vec<&str> = self
            .gates
            .iter()
            .filter(|g| !g.alive)
            .map(|g| g.id.as_str())
            .collect();
        format!(
            "cutovers started {}/{}, coordinator {}, {unsent} records unsent, {held} held, dead gates {dead:?}",
            self.cutovers_started,
            self.sc.cutovers.len(),
            if self.coord.is_some() { "up" } else { "down" }
        )
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::CoordTick => {
                let tick = self.sc.tick_ms;
                self.after(tick, Ev::CoordTick);
                let now = self.now;
                if let Some(p) = self.coord.as_mut() {
                    let fx = p.tick(now);
                    self.after_input(fx)?;
                }
            }
            Ev::CoordCrash => self.coord_crash(),
            Ev::CommitAcked { chan, txn } => {
                let g = self.chans[chan].gate;
                let seen_here = self.txns.get(&(chan, txn)).is_some_and(|t| !t.foreign);
                if seen_here {
                    let lift = self.cfg.lift_at_commit_ack;
                    if let Some(t) = self.txns.get_mut(&(chan, txn)) {
                        t.acked = true;
                        t.lifted |= lift;
                    }
                    if lift {
                        self.gates[g]
                            .tracker
                            .lift_floor(&format!("txn/{chan}/{txn}"));
                    } else {
                        // The front asks the cluster at once after an acknowledged commit.
                        self.after(
                            0,
                            Ev::AskCluster {
                                gate: g,
                                again: true,
                            },
                        );
                    }
                }
                self.tr(|| {
                    let via = if seen_here {
                        ""
                    } else {
                        " (through another sidecar)"
                    };
                    format!("commit acknowledged: channel {chan} transaction {txn}{via}")
                });
            }
            Ev::Commit { chan, txn } => {
                if let Some(t) = self.txns.get_mut(&(chan, txn)) {
                    t.committed = true;
                }
                self.tr(|| format!("commit visible: channel {chan} transaction {txn}"));
            }
            Ev::AskCluster { gate, again } => {
                if !again {
                    self.after(ASK_INTERVAL_MS, Ev::AskCluster { gate, again: false });
                }
                let now = self.now;
                let early = self.cfg.ask_lifts_early;
                let over: Vec<(usize, u32)> = self
                    .txns
                    .iter()
                    .filter(|((c, _), t)| {
                        self.chans[*c].gate == gate
                            && !t.lifted
                            && !t.records.is_empty()
                            && (t.acked || now.saturating_sub(t.opened_at) >= ASK_AFTER_MS)
                            && (t.committed || (early && t.closed_by.is_some()))
                    })
                    .map(|(k, _)| *k)
                    .collect();
                let waiting = self.txns.iter().any(|((c, _), t)| {
                    self.chans[*c].gate == gate && t.acked && !t.lifted && !t.committed
                });
                if again && waiting {
                    self.after(ASK_AGAIN_MS, Ev::AskCluster { gate, again: true });
                }
                for (chan, txn) in over {
                    if let Some(t) = self.txns.get_mut(&(chan, txn)) {
                        t.lifted = true;
                    }
                    self.gates[gate]
                        .tracker
                        .lift_floor(&format!("txn/{chan}/{txn}"));
                    self.tr(|| {
                        format!("the cluster says channel {chan} transaction {txn} is over")
                    });
                }
            }
            Ev::FlinkTick { dep } => {
                self.after(REST_POLL_MS, Ev::FlinkTick { dep });
                if dep == Dep::Blue || self.green_started_at.is_some() {
                    self.flink_tick(dep)?;
                }
            }
            Ev::CoordRestart => {
                let (p, fx) = Pipeline::restore(self.stored.clone(), self.options, self.now);
                self.coord = Some(p);
                self.tr(|| "coordinator restarted from its stored record".into());
                self.after_input(fx)?;
            }
            Ev::StartCutover => self.start_cutover()?,
            Ev::OperatorAbort => {
                let now = self.now;
                let Some(p) = self.coord.as_mut() else {
                    self.after(200, Ev::OperatorAbort);
                    return Ok(());
                };
                match p.abort("simulated operator", now) {
                    Ok(fx) => {
                        self.operator_abort = true;
                        self.tr(|| "operator abort accepted".into());
                        self.after_input(fx)?;
                    }
                    Err(e) => self.tr(|| format!("operator abort refused: {e}")),
                }
            }
            Ev::Up { stream, msg } => self.deliver_up(stream, msg)?,
            Ev::Down { stream, assignment } => {
                if !self.streams[stream].alive {
                    self.faults.messages_lost += 1;
                    return Ok(());
                }
                let g = self.streams[stream].gate;
                if self.gates[g].stream == Some(stream) {
                    self.gates[g].heard += 1;
                    self.gate_apply(g, stream, assignment)?;
                }
            }
            Ev::CoordSeesBreak { stream } => {
                let g = self.streams[stream].gate;
                if self.coord.is_some() && self.coord_conn.get(&g) == Some(&stream) {
                    self.coord_conn.remove(&g);
                    let now = self.now;
                    let id = self.gates[g].id.clone();
                    let fx = self
                        .coord
                        .as_mut()
                        .expect("checked")
                        .detach(&id, stream as u64, now);
                    self.after_input(fx)?;
                }
            }
            Ev::GateSeesBreak { stream } => {
                let g = self.streams[stream].gate;
                if self.gates[g].stream == Some(stream) {
                    self.gates[g].stream = None;
                    let backoff = self.rng.random_range(50..=2_000);
                    self.schedule_connect(g, backoff);
                }
            }
            Ev::Connect { gate, generation } => self.connect(gate, generation)?,
            Ev::Heartbeat { gate, incarnation } => {
                let g = &self.gates[gate];
                if !g.alive || g.incarnation != incarnation {
                    return Ok(());
                }
                if let Some(s) = g.stream {
                    let (p, live) = self.progress(gate)?;
                    self.send_up(s, Up::Progress(p, live));
                }
                let d = self.sc.heartbeat_ms - 50 + self.rng.random_range(0..=100);
                self.after(d, Ev::Heartbeat { gate, incarnation });
            }
            Ev::Wake { chan, generation } => {
                if self.chans[chan].wake_gen == generation {
                    self.chans[chan].pending_wake = None;
                    self.chan_wake(chan)?;
                }
            }
            Ev::BreakFault => {
                if self.now < self.sc.faults_until_ms {
                    let t = self.rng.random_range(0..=2 * self.sc.break_mean_ms);
                    self.after(t, Ev::BreakFault);
                }
                let open: Vec<usize> = self.gates.iter().filter_map(|g| g.stream).collect();
                if !open.is_empty() {
                    let s = open[self.rng.random_range(0..open.len())];
                    self.break_stream(s);
                }
            }
            Ev::LeaseEnd {
                gate,
                incarnation,
                heard,
            } => {
                let g = &mut self.gates[gate];
                let expired = g.alive && g.incarnation == incarnation && g.heard == heard;
                if expired && !self.cfg.no_lease && g.core.assignment().is_some() {
                    g.core.fence();
                    self.faults.fences += 1;
                    let id = g.id.clone();
                    self.tr(|| format!("{id} lost its lease: fenced, holding everything"));
                }
            }
            Ev::Partition { gate, len } => {
                self.faults.partitions += 1;
                self.healed_at = self.healed_at.max(self.now + len + 2_000);
                self.gates[gate].partitioned_until = self.now + len;
                let id = self.gates[gate].id.clone();
                self.tr(|| format!("{id} is partitioned from the coordinator for {len} ms"));
                if let Some(s) = self.gates[gate].stream {
                    self.break_stream(s);
                }
            }
            Ev::SidecarCrash { gate } => self.sidecar_crash(gate),
            Ev::SidecarRestart { gate } => {
                self.start_gate(gate);
                let id = self.gates[gate].id.clone();
                self.tr(|| format!("{id} restarted (fail closed)"));
            }
            Ev::GreenStart => {
                if self.stored.active.is_none() {
                    // Green must not be the first to attach (it would be auto-activated).
                    self.after(500, Ev::GreenStart);
                    return Ok(());
                }
                self.green_started_at = Some(self.now);
                self.tr(|| "green starts, replaying from the beginning".into());
                for g in 0..self.gates.len() {
                    if self.gates[g].dep == Dep::Green {
                        self.start_gate(g);
                    }
                }
            }
            Ev::Teardown => {
                let dep = match &self.stored.retired {
                    Some(r) if r.deployment == Dep::Blue.name() => Dep::Blue,
                    _ => Dep::Green,
                };
                self.teardown = Some((dep, self.now));
                self.tr(|| format!("{} torn down: its sinks send nothing new", dep.name()));
            }
            Ev::StallStart { chan, explicit } => {
                if self.chans[chan].stalled {
                    return Ok(());
                }
                // Stalls last at most 8 s.
                self.healed_at = self.healed_at.max(self.now + 8_000);
                self.faults.stalls += 1;
                self.chans[chan].stalled = true;
                let g = self.chans[chan].gate;
                if explicit && self.gates[g].alive && self.chans[chan].attached {
                    self.chan_idle(chan);
                }
                let gid = self.gates[g].id.clone();
                let name = self.chans[chan].name.clone();
                self.tr(|| format!("{gid}/{name} stalls (explicit idle: {explicit})"));
            }
            Ev::ClientConnect { chan, incarnation } => {
                let g = self.chans[chan].gate;
                // A sink subtask that finished and closed its connection does not come back.
                let gone = self.chans[chan].closed
                    && self.chans[chan].end_signalled
                    && self.chan_finished(chan);
                if self.gates[g].alive && self.gates[g].incarnation == incarnation && !gone {
                    let now = self.now;
                    let name = self.chans[chan].name.clone();
                    let tracked = self.chan_state(chan).0;
                    if self.now < self.sc.faults_until_ms
                        && self.rng.random_bool(self.sc.bad_connect_p)
                    {
                        // This attempt fails before it sends anything (the sidecar refuses a
                        // bad frame, or the client dies): it must not make the gate forget a
                        // channel that owes a replay, nor leave one behind that owes nothing.
                        self.gates[g].tracker.on_open(&name, now);
                        let closed = self.gates[g].tracker.on_close(&name, now);
                        let restored = self.chans[chan].restored_at.is_some() && tracked;
                        let want = if restored {
                            self.chans[chan].restored_at = Some(now);
                            Closed::Counting
                        } else {
                            Closed::Forgotten
                        };
                        if closed != want {
                            return Err(format!(
                                "a failed reconnect of {}/{name} made the tracker answer \
                                 {closed:?}, the model expects {want:?}",
                                self.gates[g].id
                            ));
                        }
                        self.faults.bad_connections += 1;
                        let id = self.gates[g].id.clone();
                        self.tr(|| format!("{id}/{name}: a reconnect fails before speaking"));
                        self.healed_at = self.healed_at.max(now + 1_500);
                        let d = self.rng.random_range(100..=1_500);
                        self.after(d, Ev::ClientConnect { chan, incarnation });
                        return Ok(());
                    }
                    self.gates[g].tracker.on_open(&name, now);
                    let ch = &mut self.chans[chan];
                    ch.spoke &= tracked;
                    ch.forgotten = false;
                    ch.attached = true;
                    ch.closed = false;
                    ch.last_touch = now;
                    ch.idle_marked = false;
                    ch.restored_at = None;
                    ch.wm_at_gate = None;
                    // The client re-signals the end of its input to the new sidecar, if it had.
                    ch.end_signalled = false;
                    self.wake_at(chan, now);
                }
            }
            Ev::BadConnect { gate } => {
                let g = &mut self.gates[gate];
                if g.alive {
                    g.bad_made += 1;
                    let name = format!("bad{}", g.bad_made);
                    g.tracker.on_open(&name, self.now);
                    g.bad_open.insert(name.clone(), self.now);
                    let incarnation = g.incarnation;
                    self.faults.bad_connections += 1;
                    let id = g.id.clone();
                    self.tr(|| format!("{id}/{name}: a connection says Hello"));
                    let d = self.rng.random_range(0..=300);
                    self.healed_at = self.healed_at.max(self.now + d);
                    self.after(
                        d,
                        Ev::BadClose {
                            gate,
                            incarnation,
                            name,
                        },
                    );
                }
            }
            Ev::BadClose {
                gate,
                incarnation,
                name,
            } => {
                let now = self.now;
                let g = &mut self.gates[gate];
                if g.alive && g.incarnation == incarnation && g.bad_open.remove(&name).is_some() {
                    let closed = g.tracker.on_close(&name, now);
                    if closed != Closed::Forgotten {
                        return Err(format!(
                            "{}/{name} closed before it spoke, but the tracker answered \
                             {closed:?}: it would hold readiness and the drain up",
                            g.id
                        ));
                    }
                    let id = g.id.clone();
                    self.tr(|| format!("{id}/{name}: fails before speaking; forgotten"));
                }
            }
            Ev::StallEnd { chan } => {
                if self.chans[chan].stalled {
                    self.chans[chan].stalled = false;
                    let now = self.now;
                    self.wake_at(chan, now);
                }
            }
        }
        Ok(())
    }

    // --- the coordinator ------------------------------------------------------------------

    /// The driver rule: persist first when asked, then hand every connected gate its assignment.
    fn after_input(&mut self, fx: Effects) -> Result<(), String> {
        for e in &fx.events {
            match e {
                Event::PhaseChanged {
                    phase,
                    epoch,
                    barrier,
                    reason,
                } => {
                    self.history.push(format!(
                        "@{} {phase:?} e{epoch} T={} ({reason})",
                        self.now,
                        fmt_ts(*barrier)
                    ));
                }
                Event::Vote { yes: false, .. } => self.no_votes += 1,
                Event::Gate {
                    kind: GateEventKind::Expired,
                    ..
                } => self.faults.expired_gates += 1,
                _ => {}
            }
            if self.cfg.trace {
                let line = format!("coordinator: {e:?}");
                self.tr(|| line);
            }
        }
        let p = self
            .coord
            .as_ref()
            .expect("after_input needs a running coordinator");
        if !fx.persist {
            if p.record() != &self.stored {
                return Err(format!(
                    "the pipeline record changed without Effects.persist: stored {:?}, now {:?}",
                    self.stored,
                    p.record()
                ));
            }
            return Ok(());
        }
        let rec = p.record().clone();
        self.check_persist(&rec)?;
        let previous = std::mem::replace(&mut self.stored, rec);
        self.on_stored(&previous)?;
        let targets: Vec<(usize, usize)> = self.coord_conn.iter().map(|(g, s)| (*g, *s)).collect();
        for (g, s) in targets {
            self.send_assignment(g, s)?;
        }
        Ok(())
    }

    /// Checks a record about to be persisted against everything persisted before it.
    fn check_persist(&mut self, rec: &PipelineRecord) -> Result<(), String> {
        let prev = &self.stored;
        if let Stage::Prepared { plan, barrier } = &rec.stage
            && rec.epoch != prev.epoch
        {
            // No higher than needed: the largest event time any gate has observed (or the
            // floor) plus the margin. A barrier above that sends output to the outgoing
            // deployment for nothing (an old barrier plus the margin after a restart) or stalls
            // the cutover (a far-future record in the high marks).
            // (A restarted gate starts from its persisted ceiling, up to one step above what
            // it observed.)
            let ceilings = self.max_observed.map(|h| h + self.sc.ceiling_step_ms);
            let need = ceilings
                .max(rec.floor)
                .map_or(plan.settings.margin_ms, |h| {
                    h.saturating_add(plan.settings.margin_ms)
                });
            if *barrier > need {
                return Err(format!(
                    "barrier {} of epoch {} is above every observed event time and the floor \
                     plus the margin ({})",
                    fmt_ts(Some(*barrier)),
                    rec.epoch,
                    fmt_ts(Some(need))
                ));
            }
        }
        if rec.version < prev.version || rec.epoch < prev.epoch {
            return Err(format!(
                "persisted state went backwards: version {} -> {}, epoch {} -> {}",
                prev.version, rec.version, prev.epoch, rec.epoch
            ));
        }
        if let Some(plan) = rec.plan() {
            self.attempts = self.attempts.max(plan.attempt);
        }
        match &rec.stage {
            Stage::Prepared { barrier, .. } => {
                if let Some(t) = self.prepared.insert(rec.epoch, *barrier)
                    && t != *barrier
                {
                    return Err(format!(
                        "epoch {} prepared with two barriers: {} and {}",
                        rec.epoch,
                        fmt_ts(Some(t)),
                        fmt_ts(Some(*barrier))
                    ));
                }
                if let Some(t) = self.committed.get(&rec.epoch) {
                    return Err(format!(
                        "epoch {} was committed at {} and is prepared again",
                        rec.epoch,
                        fmt_ts(Some(*t))
                    ));
                }
            }
            Stage::Committed { barrier, .. } => {
                if let Some(t) = self.prepared.get(&rec.epoch)
                    && t != barrier
                {
                    return Err(format!(
                        "epoch {} prepared at {} but committed at {}",
                        rec.epoch,
                        fmt_ts(Some(*t)),
                        fmt_ts(Some(*barrier))
                    ));
                }
                if let Some(t) = self.committed.insert(rec.epoch, *barrier)
                    && t != *barrier
                {
                    return Err(format!(
                        "decided twice: epoch {} committed at {} and at {}",
                        rec.epoch,
                        fmt_ts(Some(t)),
                        fmt_ts(Some(*barrier))
                    ));
                }
                match self.committed_this_cutover {
                    Some(e) if e != rec.epoch => {
                        return Err(format!(
                            "decided twice: one cutover committed epochs {e} and {}",
                            rec.epoch
                        ));
                    }
                    _ => self.committed_this_cutover = Some(rec.epoch),
                }
            }
            Stage::Steady { .. } | Stage::Waiting { .. } => {}
        }
        // A committed epoch is final: the only way on is completion with its barrier.
        if let Stage::Committed { barrier, plan } = &prev.stage {
            let same = matches!(&rec.stage, Stage::Committed { barrier: b, .. } if b == barrier)
                && rec.epoch == prev.epoch;
            let completed = rec.phase() == Phase::Completed
                && rec.epoch == prev.epoch
                && rec.last_barrier == Some(*barrier)
                && rec.floor == Some(*barrier)
                && rec.active.as_deref() == Some(plan.candidate.as_str())
                && rec.retired.as_ref().map(|r| r.deployment.as_str()) == prev.active.as_deref();
            if !same && !completed {
                return Err(format!(
                    "decided twice: epoch {} was committed at {} and then the pipeline became \
                     {:?} at epoch {} (active {:?}, floor {}, last barrier {})",
                    prev.epoch,
                    fmt_ts(Some(*barrier)),
                    rec.phase(),
                    rec.epoch,
                    rec.active,
                    fmt_ts(rec.floor),
                    fmt_ts(rec.last_barrier)
                ));
            }
        }
        if prev.plan().is_some() && rec.plan().is_none() {
            if rec.phase() == Phase::Aborted && self.committed_this_cutover.is_some() {
                return Err(format!(
                    "the cutover aborted after committing epoch {:?}",
                    self.committed_this_cutover
                ));
            }
            self.committed_this_cutover = None;
        }
        // An aborted attempt goes back to waiting for readiness (same plan, attempts counted,
        // a new version so the gates release what they held); a commit never does.
        match (&prev.stage, &rec.stage) {
            (Stage::Committed { .. }, Stage::Waiting { .. }) => {
                return Err("went back from Committed to waiting".into());
            }
            (Stage::Prepared { plan: before, .. }, Stage::Waiting { plan: after })
                if after.candidate != before.candidate
                    || after.attempt < before.attempt
                    || rec.version <= prev.version =>
            {
                return Err(format!(
                    "an aborted attempt went back to waiting as another cutover: {before:?} -> \
                     {after:?}, version {} -> {}",
                    prev.version, rec.version
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Reacts to a newly persisted record: phase-triggered faults, operator actions, the next
    /// cutover, checks.
    fn on_stored(&mut self, previous: &PipelineRecord) -> Result<(), String> {
        let phase = self.stored.phase();
        let entered = phase != previous.phase() || self.stored.epoch != previous.epoch;
        if !entered {
            return Ok(());
        }
        let spec = self
            .cutovers_started
            .checked_sub(1)
            .and_then(|k| self.sc.cutovers.get(k))
            .cloned();
        if let Some((target, delay)) = spec.as_ref().and_then(|s| s.abort_in)
            && target == phase
            && self.cutover_running
            && !self.abort_scheduled
        {
            self.abort_scheduled = true;
            self.after(delay, Ev::OperatorAbort);
        }
        if matches!(phase, Phase::Waiting | Phase::Prepared | Phase::Committed) {
            if self.coord_crashes < self.sc.max_coord_crashes
                && self.rng.random_bool(self.sc.phase_coord_crash_p)
            {
                let d = self.rng.random_range(0..=400);
                self.after(d, Ev::CoordCrash);
            }
            if phase != Phase::Waiting && self.rng.random_bool(self.sc.phase_sidecar_crash_p) {
                let d = self.rng.random_range(0..=500);
                let g = self.rng.random_range(0..self.gates.len());
                self.after(d, Ev::SidecarCrash { gate: g });
            }
        }
        // A commit whose drain completes within the same input is persisted as completed only.
        if matches!(phase, Phase::Committed | Phase::Completed) && self.commit_at.is_none() {
            self.commit_at = Some(self.now);
        }
        if previous.plan().is_some() && self.stored.plan().is_none() && self.cutover_running {
            // The running cutover ended (completed, gave up or aborted).
            self.cutover_running = false;
            let last = self.cutovers_started == self.sc.cutovers.len();
            if phase == Phase::Completed {
                let t = self.stored.last_barrier.expect("completed has a barrier");
                let to = if self.stored.active.as_deref() == Some(Dep::Blue.name()) {
                    Dep::Blue
                } else {
                    Dep::Green
                };
                let from = if to == Dep::Blue {
                    Dep::Green
                } else {
                    Dep::Blue
                };
                if self.completions.is_empty()
                    && let (Some(commit), Some(plan)) = (self.commit_at, previous.plan())
                {
                    self.first_cutover = Some((commit, self.now, plan.settings));
                }
                self.completions.push((to, t));
                self.check_drain(from, t)?;
                if last && let Some(d) = self.sc.teardown_after_ms {
                    self.after(d, Ev::Teardown);
                }
            }
            if !last {
                let d = self.sc.cutovers[self.cutovers_started].start_ms;
                self.after(d, Ev::StartCutover);
            }
        }
        Ok(())
    }

    /// At completion, every outgoing channel the coordinator counted as live must have sent all
    /// its records below the barrier: otherwise the drain completed early and the outgoing
    /// deployment, torn down now, would lose records that are not late by any definition.
    fn check_drain(&mut self, outgoing: Dep, barrier: EventTime) -> Result<(), String> {
        if self.cfg.exactly_once {
            let uncommitted = self.txns.iter().find_map(|((c, n), t)| {
                let below = t.records.iter().find(|&&(_, ts)| ts < barrier)?;
                (self.chans[*c].dep == outgoing && !t.committed).then_some((*c, *n, *below))
            });
            if let Some((c, n, (id, ts))) = uncommitted {
                return Err(format!(
                    "drain completed before a commit: channel {} transaction {n} holds admitted \
                     record {id} (ts {}) below the barrier {} and is not committed",
                    self.chans[c].name,
                    fmt_ts(Some(ts)),
                    fmt_ts(Some(barrier))
                ));
            }
        }
        let mut excused = Vec::new();
        for (g, gate) in self.gates.iter().enumerate() {
            if gate.dep != outgoing {
                continue;
            }
            if !self.stored.gates.contains_key(&gate.id) {
                // A gate the coordinator forgot (expired): the drain did not wait for any of
                // its channels, as for idle ones.
                excused.extend(gate.chans.iter().copied());
                continue;
            }
            let live = self.shadow_live.get(&g).cloned().unwrap_or_default();
            excused.extend(gate.chans.iter().filter(|c| !live.contains(c)));
            for &c in &live {
                let ch = &self.chans[c];
                let unsent = ch
                    .resend
                    .iter()
                    .chain(&ch.buffered)
                    .map(|r| (r.id, r.ts))
                    .chain(
                        ch.records[ch.next..]
                            .iter()
                            .map(|&id| (id, self.inputs[id as usize].ts)),
                    )
                    .find(|(_, ts)| *ts < barrier);
                if let Some((id, ts)) = unsent {
                    return Err(format!(
                        "drain completed early: outgoing channel {}/{} was reported live and \
                         still had record {id} (ts {}) below the barrier {} unsent",
                        gate.id,
                        ch.name,
                        fmt_ts(Some(ts)),
                        fmt_ts(Some(barrier))
                    ));
                }
            }
        }
        self.excused.push(excused);
        Ok(())
    }

    fn coord_crash(&mut self) {
        if self.coord.is_none() {
            return;
        }
        // Down for up to 3 s, then every gate reconnects with backoff.
        self.healed_at = self.healed_at.max(self.now + 5_000);
        self.coord = None;
        self.coord_crashes += 1;
        self.faults.coordinator_crashes += 1;
        match self.stored.phase() {
            Phase::Waiting => self.faults.crashes_waiting += 1,
            Phase::Prepared => self.faults.crashes_prepared += 1,
            Phase::Committed => self.faults.crashes_committed += 1,
            _ => {}
        }
        let phase = self.stored.phase();
        self.tr(|| format!("coordinator crashes (stored phase {phase:?})"));
        for s in 0..self.streams.len() {
            if self.streams[s].alive {
                self.streams[s].alive = false;
                let g = self.streams[s].gate;
                self.lease_runs_from_now(g);
                let d = self.rng.random_range(1..=50);
                self.after(d, Ev::GateSeesBreak { stream: s });
            }
        }
        self.coord_conn.clear();
        self.shadow_live.clear();
        let down = self.rng.random_range(200..=3_000);
        self.after(down, Ev::CoordRestart);
    }

    fn start_cutover(&mut self) -> Result<(), String> {
        let now = self.now;
        let active = match self.stored.active.as_deref() {
            Some(a) if a == Dep::Blue.name() => Some(Dep::Blue),
            Some(_) => Some(Dep::Green),
            None => None,
        };
        // The orchestrator retries until the coordinator is up and a deployment is in
        // production (the first request is always blue to green).
        let first = self.cutovers_started == 0;
        let ok = self.coord.is_some() && active.is_some() && (!first || active == Some(Dep::Blue));
        if !ok {
            self.after(300, Ev::StartCutover);
            return Ok(());
        }
        let candidate = if active == Some(Dep::Blue) {
            Dep::Green
        } else {
            Dep::Blue
        };
        let spec = self.sc.cutovers[self.cutovers_started].clone();
        let gates = self.gates.iter().filter(|g| g.dep == candidate).count() as u32;
        let settings = Settings {
            min_gates: spec.settings.min_gates.min(gates),
            ..spec.settings
        };
        let p = self.coord.as_mut().expect("checked");
        match p.start_cutover(candidate.name(), settings, now) {
            Ok(fx) => {
                self.cutovers_started += 1;
                self.cutover_running = true;
                self.requested_at = now;
                self.abort_scheduled = false;
                if first {
                    self.requested_before_green = self.green_started_at.is_none();
                }
                self.tr(|| format!("cutover to {} requested: {settings:?}", candidate.name()));
                self.after_input(fx)
            }
            Err(e @ CutoverError::CandidateUnknown(_)) => {
                self.tr(|| format!("cutover refused, asking again later: {e}"));
                self.after(300, Ev::StartCutover);
                Ok(())
            }
            Err(e) => Err(format!("start_cutover refused: {e}")),
        }
    }

    fn deliver_up(&mut self, s: usize, msg: Up) -> Result<(), String> {
        if !self.streams[s].alive {
            self.faults.messages_lost += 1;
            return Ok(());
        }
        let g = self.streams[s].gate;
        let id = self.gates[g].id.clone();
        let dep = self.gates[g].dep.name();
        let now = self.now;
        let p = self
            .coord
            .as_mut()
            .expect("a live stream implies a running coordinator");
        match msg {
            Up::Attach(progress, live) => {
                let fx = p
                    .attach(&id, dep, s as u64, progress, now)
                    .map_err(|e| format!("attach of {id} refused: {e}"))?;
                self.coord_conn.insert(g, s);
                self.shadow_live.insert(g, live);
                let persisted = fx.persist;
                self.after_input(fx)?;
                // An attach always gets the current assignment; a persist already sent it.
                if !persisted && self.coord_conn.get(&g) == Some(&s) {
                    self.send_assignment(g, s)?;
                }
            }
            Up::Progress(progress, live) => {
                if self.coord_conn.get(&g) == Some(&s) {
                    self.shadow_live.insert(g, live);
                }
                let fx = p.progress(&id, s as u64, progress, now);
                self.after_input(fx)?;
            }
            Up::Vote(v) => {
                let fx = p.vote(&id, s as u64, v.epoch, v.yes, v.high_mark, now);
                self.after_input(fx)?;
            }
        }
        Ok(())
    }

    fn send_assignment(&mut self, g: usize, s: usize) -> Result<(), String> {
        let dep = self.gates[g].dep;
        let a = self
            .coord
            .as_ref()
            .expect("sending needs a coordinator")
            .assignment_for(dep.name());
        if let Some(prev) = self.sent_assignments.insert((dep, a.version), a)
            && prev != a
        {
            return Err(format!(
                "two different assignments with version {} for {}: {prev:?} and {a:?}",
                a.version,
                dep.name()
            ));
        }
        self.send_down(s, a);
        Ok(())
    }

    // --- the network ------------------------------------------------------------------------

    fn net_delay(&mut self) -> u64 {
        if self.rng.random_bool(self.sc.spike_p) {
            self.rng.random_range(50..=400)
        } else {
            self.rng.random_range(1..=self.sc.max_net_ms)
        }
    }

    fn send_up(&mut self, s: usize, msg: Up) {
        let t = (self.now + self.net_delay()).max(self.streams[s].up_last);
        self.streams[s].up_last = t;
        self.at(t, Ev::Up { stream: s, msg });
    }

    fn send_down(&mut self, s: usize, assignment: Assignment) {
        let t = (self.now + self.net_delay()).max(self.streams[s].down_last);
        self.streams[s].down_last = t;
        self.at(
            t,
            Ev::Down {
                stream: s,
                assignment,
            },
        );
    }

    fn break_stream(&mut self, s: usize) {
        if !self.streams[s].alive {
            return;
        }
        // The gate reconnects within its backoff.
        self.healed_at = self.healed_at.max(self.now + 2_000);
        self.streams[s].alive = false;
        self.faults.stream_breaks += 1;
        let g = self.streams[s].gate;
        self.lease_runs_from_now(g);
        let id = self.gates[g].id.clone();
        self.tr(|| format!("stream {s} of {id} breaks"));
        let d1 = self.rng.random_range(1..=300);
        let d2 = self.rng.random_range(1..=300);
        self.after(d1, Ev::CoordSeesBreak { stream: s });
        self.after(d2, Ev::GateSeesBreak { stream: s });
    }

    // --- gates ------------------------------------------------------------------------------

    /// A gate's stream broke: the last command it can have heard came at the latest now (the
    /// real coordinator sends a heartbeat every second, so the worst case for safety is one
    /// just before the break), and its lease runs out half a gate expiry later unless it hears
    /// the coordinator again.
    fn lease_runs_from_now(&mut self, g: usize) {
        let gate = &self.gates[g];
        let ev = Ev::LeaseEnd {
            gate: g,
            incarnation: gate.incarnation,
            heard: gate.heard,
        };
        self.after(self.sc.gate_expiry_ms / 2, ev);
    }

    /// Brings a gate (back) up: fresh, fail-closed core, channels reconnect, attach, heartbeats.
    fn start_gate(&mut self, g: usize) {
        let (idle, expiry) = (self.sc.idle_timeout_ms, self.sc.closed_expiry_ms);
        let limit = self.sc.queue_limit;
        let gate = &mut self.gates[g];
        gate.alive = true;
        gate.incarnation += 1;
        gate.core = if self.cfg.forgetful_sidecars {
            GateCore::new()
        } else {
            GateCore::resume(gate.ceiling)
        };
        if !self.cfg.no_future_horizon {
            gate.core.set_future_horizon(Some(FUTURE_HORIZON_MS));
        }
        gate.tracker = WatermarkTracker::new(idle, expiry);
        gate.rest_floor = None;
        for q in gate.queues.iter_mut() {
            *q = ChannelQueue::new(limit);
        }
        let incarnation = gate.incarnation;
        let chans = gate.chans.clone();
        let now = self.now;
        for &c in &chans {
            // The channels file: what the crashed incarnation tracked comes back as closed, with
            // no watermark (handed-back records come again below the one it had).
            let gone = self.chans[c].closed && self.chans[c].end_signalled && self.chan_finished(c);
            let ch = &mut self.chans[c];
            ch.restored_at = None;
            if std::mem::take(&mut ch.persisted) {
                self.gates[g].tracker.restore_closed(&ch.name, now);
                ch.restored_at = Some(now);
                ch.wm_at_gate = None;
                ch.spoke = true;
                if gone {
                    // Closed without its final watermark before the crash and never back.
                    self.expiry_wait_until = self.expiry_wait_until.max(now + expiry);
                }
            }
        }
        let gate = &mut self.gates[g];
        for (name, at) in gate.bad_restored.iter_mut() {
            gate.tracker.restore_closed(name, now);
            *at = now;
            self.expiry_wait_until = self.expiry_wait_until.max(now + expiry);
        }
        for &c in &chans {
            // Each sink subtask notices the new sidecar and reconnects in its own time: until
            // then the gate does not know the channel at all.
            self.chans[c].attached = false;
            let d = self.rng.random_range(0..=1_500);
            self.after(
                d,
                Ev::ClientConnect {
                    chan: c,
                    incarnation,
                },
            );
        }
        let d = self.rng.random_range(0..=20);
        self.schedule_connect(g, d);
        let hb = self.rng.random_range(0..=self.sc.heartbeat_ms);
        self.after(
            hb,
            Ev::Heartbeat {
                gate: g,
                incarnation,
            },
        );
    }

    fn schedule_connect(&mut self, g: usize, delay: u64) {
        self.gates[g].connect_gen += 1;
        let generation = self.gates[g].connect_gen;
        self.after(
            delay,
            Ev::Connect {
                gate: g,
                generation,
            },
        );
    }

    fn connect(&mut self, g: usize, generation: u64) -> Result<(), String> {
        let gate = &self.gates[g];
        if !gate.alive || gate.connect_gen != generation || gate.stream.is_some() {
            return Ok(());
        }
        if self.coord.is_none() || self.now < gate.partitioned_until {
            let wait = gate.partitioned_until.saturating_sub(self.now);
            let backoff = wait + self.rng.random_range(100..=1_500);
            self.schedule_connect(g, backoff);
            return Ok(());
        }
        let s = self.streams.len();
        self.streams.push(Stream {
            gate: g,
            alive: true,
            up_last: 0,
            down_last: 0,
        });
        self.gates[g].stream = Some(s);
        let (p, live) = self.progress(g)?;
        let id = self.gates[g].id.clone();
        self.tr(|| format!("{id} opens stream {s}"));
        self.send_up(s, Up::Attach(p, live));
        Ok(())
    }

    /// REST drain: one poll of `dep`'s Flink job by its sidecars (see [`SimConfig::rest_drain`]).
    fn flink_tick(&mut self, dep: Dep) -> Result<(), String> {
        let now = self.now;
        let chans: Vec<usize> = (0..self.chans.len())
            .filter(|&c| self.chans[c].dep == dep)
            .collect();
        // A checkpoint completes once everything sent before its trigger is decided: nothing
        // of it waits in a gate's queue or to be re-sent to a restarted sidecar.
        let undecided_below = |sim: &Self, c: usize, bound: usize| {
            let ch = &sim.chans[c];
            let g = &sim.gates[ch.gate];
            g.mirrors[ch.slot]
                .iter()
                .chain(&ch.resend)
                .chain(&ch.buffered)
                .any(|r| (r.seq as usize) < bound)
        };
        let job = &self.flink[dep.idx()];
        let mut done = vec![];
        for (k, (trigger, marks)) in job.in_flight.iter().enumerate() {
            if marks
                .iter()
                .all(|&(c, bound)| !undecided_below(self, c, bound))
            {
                done.push((k, *trigger));
            }
        }
        let job = &mut self.flink[dep.idx()];
        let mut completed = Vec::new();
        for (k, trigger) in done.into_iter().rev() {
            job.in_flight.remove(k);
            job.completed.push_back((now, trigger));
            completed.push(trigger);
        }
        if self.cfg.exactly_once {
            // The committer commits what each completed checkpoint closed, some time later.
            let closed: Vec<(usize, u32)> = self
                .txns
                .iter()
                .filter(|((c, _), t)| {
                    self.chans[*c].dep == dep
                        && t.closed_by.is_some_and(|at| completed.contains(&at))
                })
                .map(|(k, _)| *k)
                .collect();
            for (chan, txn) in closed {
                let delay = self.rng.random_range(0..=COMMIT_DELAY_MAX_MS);
                if self.cfg.foreign_commits
                    && self.rng.random_bool(0.5)
                    && let Some(t) = self.txns.get_mut(&(chan, txn))
                {
                    t.foreign = true;
                }
                let markers = self.rng.random_range(0..=MARKER_DELAY_MAX_MS);
                self.after(delay, Ev::CommitAcked { chan, txn });
                self.after(delay + markers, Ev::Commit { chan, txn });
            }
        }
        let job = &mut self.flink[dep.idx()];
        job.completed
            .retain(|(at, _)| now.saturating_sub(*at) <= 10 * REST_CHECKPOINT_MS);
        if now >= job.next_trigger && job.in_flight.len() < 3 {
            job.next_trigger = now + REST_CHECKPOINT_MS;
            let marks = chans.iter().map(|&c| (c, self.chans[c].next)).collect();
            self.flink[dep.idx()].in_flight.push((now, marks));
            if self.cfg.exactly_once {
                // The barrier closes each subtask's open transaction; the next one opens.
                for &c in &chans {
                    let n = self.open_txn.entry(c).or_default();
                    if let Some(t) = self.txns.get_mut(&(c, *n)) {
                        t.closed_by = Some(now);
                    }
                    *n += 1;
                }
            }
        }
        // The job's sink watermark now: the minimum over its subtasks.
        let wm = chans
            .iter()
            .map(|&c| self.chans[c].flink_wm)
            .try_fold(EventTime::MAX, |m, w| w.map(|w| m.min(w)));
        let job = &mut self.flink[dep.idx()];
        job.samples.push_back((now, wm));
        while job.samples.len() > 64 {
            job.samples.pop_front();
        }
        // Read stale, as Flink's REST API serves them.
        let metric_age = self.rng.random_range(0..=REST_METRIC_AGE_MS);
        let stats_age = self.rng.random_range(0..=REST_STATS_AGE_MS);
        let job = &mut self.flink[dep.idx()];
        let read_wm = job
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t + metric_age <= now)
            .and_then(|(_, w)| *w);
        let read_trigger = job
            .completed
            .iter()
            .rev()
            .find(|(at, _)| *at + stats_age <= now)
            .map(|(_, trigger)| *trigger);
        let confirmed = job.flushed.observe(&sluice_core::flushed::JobSnapshot {
            sink_watermark: read_wm,
            jobmanager_now_ms: now,
            completed_trigger_ms: read_trigger,
            restored_at_ms: None,
            finished: false,
        });
        let Some(w) = confirmed else { return Ok(()) };
        // Each sidecar gives it to every open Kafka channel of its gate when it moves (as the
        // sidecar's watch does: an unchanged watermark touches no channel, so a stalled job's
        // channels go idle) and makes it a floor of its gate watermark.
        for &c in &chans {
            let ch = &self.chans[c];
            if self.gates[ch.gate].alive
                && ch.attached
                && !ch.closed
                && ch.wm_at_gate.is_none_or(|m| m < w)
            {
                self.chan_watermark(c, w);
            }
        }
        if !self.cfg.no_rest_floor {
            for gate in self.gates.iter_mut().filter(|g| g.dep == dep && g.alive) {
                if gate.rest_floor.is_none_or(|f| f < w) {
                    gate.tracker.set_floor(REST_FLOOR, w);
                    gate.rest_floor = Some(w);
                }
            }
        }
        Ok(())
    }

    fn chan_watermark(&mut self, c: usize, wm: EventTime) {
        let now = self.now;
        let ch = &mut self.chans[c];
        self.gates[ch.gate].tracker.on_watermark(&ch.name, wm, now);
        ch.last_touch = now;
        ch.idle_marked = false;
        ch.spoke = true;
        ch.wm_at_gate = Some(ch.wm_at_gate.map_or(wm, |w| w.max(wm)));
    }

    fn chan_idle(&mut self, c: usize) {
        let ch = &mut self.chans[c];
        self.gates[ch.gate].tracker.on_idle(&ch.name);
        ch.idle_marked = true;
    }

    fn chan_close(&mut self, c: usize) -> Result<(), String> {
        let now = self.now;
        let ch = &mut self.chans[c];
        let closed = self.gates[ch.gate].tracker.on_close(&ch.name, now);
        ch.closed = true;
        ch.closed_at = now;
        // Owing nothing, the tracker forgets it; otherwise it counts until it expires (this
        // client does not come back: a drain may wait that long).
        ch.forgotten = !ch.spoke || ch.wm_at_gate == Some(EventTime::MAX);
        let want = if ch.forgotten {
            Closed::Forgotten
        } else {
            self.expiry_wait_until = self.expiry_wait_until.max(now + self.sc.closed_expiry_ms);
            Closed::Counting
        };
        if closed != want {
            return Err(format!(
                "closing {}/{} made the tracker answer {closed:?}, the model expects {want:?}",
                self.gates[self.chans[c].gate].id, self.chans[c].name
            ));
        }
        Ok(())
    }

    /// The model's view of a channel at its gate: (tracked, live).
    fn chan_state(&self, c: usize) -> (bool, bool) {
        let ch = &self.chans[c];
        if !ch.attached {
            // Restored from the channels file by a restarted sidecar: closed until it reconnects.
            let restored = ch
                .restored_at
                .is_some_and(|t| self.now.saturating_sub(t) < self.sc.closed_expiry_ms);
            return (restored, restored);
        }
        // A closed channel is never idle: it counts until it reconnects or expires — unless it
        // closed owing nothing.
        let tracked = ch.attached
            && (!ch.closed
                || (!ch.forgotten
                    && self.now.saturating_sub(ch.closed_at) < self.sc.closed_expiry_ms));
        let live = tracked
            && (ch.closed
                || (!ch.idle_marked
                    && self.now.saturating_sub(ch.last_touch) < self.sc.idle_timeout_ms));
        (tracked, live)
    }

    /// The gate's progress report, checked against the model of its channels; also returns the
    /// channels it counts as live (simulation-only ground truth for the drain check).
    fn progress(&mut self, g: usize) -> Result<(GateProgress, Vec<usize>), String> {
        let now = self.now;
        let clock = self.gates[g].tracker.clock(now);
        let mut tracked = 0;
        let mut idle = 0;
        let mut live = Vec::new();
        let mut wm: Option<Option<EventTime>> = None;
        for &c in &self.gates[g].chans {
            let (t, l) = self.chan_state(c);
            tracked += u32::from(t);
            idle += u32::from(t && !l);
            if l {
                live.push(c);
                let w = self.chans[c].wm_at_gate;
                wm = Some(match wm {
                    None => w,
                    Some(m) => m.zip(w).map(|(a, b)| a.min(b)),
                });
            }
        }
        // Bad connections: open ones are live (no watermark) until the idle timeout; restored
        // ones count, closed and unknown, until they expire.
        let (idle_ms, expiry) = (self.sc.idle_timeout_ms, self.sc.closed_expiry_ms);
        let gate = &self.gates[g];
        let open_live = |t: &u64| now.saturating_sub(*t) < idle_ms;
        let restored = gate
            .bad_restored
            .values()
            .filter(|t| now.saturating_sub(**t) < expiry)
            .count() as u32;
        let open = gate.bad_open.len() as u32;
        let open_idle = gate.bad_open.values().filter(|t| !open_live(t)).count() as u32;
        tracked += open + restored;
        idle += open_idle;
        if open - open_idle + restored > 0 {
            wm = Some(None);
        }
        // Exactly-once: each transaction the gate admitted records into and has not seen end
        // is a floor, a live channel of its own whose watermark is its least event time.
        if self.cfg.exactly_once && !self.cfg.no_floors {
            for ((c, _), t) in &self.txns {
                if self.chans[*c].gate != g || t.lifted {
                    continue;
                }
                if let Some(floor) = t.records.iter().map(|&(_, ts)| ts).min() {
                    tracked += 1;
                    wm = Some(match wm {
                        None => Some(floor),
                        Some(m) => m.map(|m| m.min(floor)),
                    });
                }
            }
        }
        // The REST drain: the confirmed watermark is a floor too.
        if let Some(floor) = self.gates[g].rest_floor {
            tracked += 1;
            wm = Some(match wm {
                None => Some(floor),
                Some(m) => m.map(|m| m.min(floor)),
            });
        }
        let expected = (tracked, idle, wm.flatten());
        if (clock.channels, clock.idle_channels, clock.watermark) != expected {
            return Err(format!(
                "watermark tracker of {} reports (channels, idle, watermark) = {:?}, the model \
                 expects {:?}",
                self.gates[g].id,
                (clock.channels, clock.idle_channels, clock.watermark),
                expected
            ));
        }
        let p = GateProgress {
            high_mark: self.gates[g].core.high_mark(),
            watermark: clock.watermark,
            channels: clock.channels,
            idle_channels: clock.idle_channels,
        };
        Ok((p, live))
    }

    fn gate_apply(&mut self, g: usize, s: usize, a: Assignment) -> Result<(), String> {
        match self.gates[g].core.apply(a) {
            Applied::Stale => {
                self.stale_assignments += 1;
            }
            Applied::Current { vote } => {
                if let Some(v) = vote {
                    let id = self.gates[g].id.clone();
                    self.tr(|| format!("{id} applies {a:?} and votes {v:?}"));
                    self.send_up(s, Up::Vote(v));
                    if self.rng.random_bool(self.sc.vote_loss_p) {
                        self.faults.lost_votes += 1;
                        self.break_stream(s);
                    }
                } else if self.cfg.trace {
                    let id = self.gates[g].id.clone();
                    self.tr(|| format!("{id} applies {a:?}"));
                }
            }
        }
        for slot in 0..self.gates[g].chans.len() {
            self.drain_slot(g, slot)?;
        }
        let now = self.now;
        for c in self.gates[g].chans.clone() {
            self.wake_at(c, now);
        }
        Ok(())
    }

    /// Decides what the head of one channel's queue allows.
    fn drain_slot(&mut self, g: usize, slot: usize) -> Result<(), String> {
        let mut out = Vec::new();
        {
            let gate = &mut self.gates[g];
            gate.queues[slot].drain(&gate.core, |r, d| out.push((r, d)));
        }
        for (r, d) in out {
            let m = self.gates[g].mirrors[slot].pop_front();
            if m.map(|m| m.id) != Some(r.id) {
                return Err(format!(
                    "channel queue of {} released record {} but {:?} was at its head",
                    self.gates[g].id,
                    r.id,
                    m.map(|m| m.id)
                ));
            }
            self.decided(g, slot, r, d)?;
        }
        Ok(())
    }

    fn decided(&mut self, g: usize, slot: usize, r: Rec, d: Decision) -> Result<(), String> {
        let gate = &self.gates[g];
        let dep = gate.dep;
        let c = gate.chans[slot];
        let log = DecLog {
            decision: d,
            at_ms: self.now,
            gate: g,
            version: gate.core.assignment().map(|a| a.version),
        };
        if let Some(prev) = self.dec[r.id as usize][dep.idx()] {
            return Err(format!(
                "record {} decided twice by {}: {prev:?} then {log:?}",
                r.id,
                dep.name()
            ));
        }
        self.dec[r.id as usize][dep.idx()] = Some(log);
        match d {
            Decision::Admit(kind) => {
                let ch = &mut self.chans[c];
                if ch.last_admitted_seq.is_some_and(|s| s >= r.seq) {
                    return Err(format!(
                        "channel {}/{} admitted record {} (seq {}) after seq {:?}: out of order",
                        self.gates[g].id, ch.name, r.id, r.seq, ch.last_admitted_seq
                    ));
                }
                ch.last_admitted_seq = Some(r.seq);
                self.outputs[dep.idx()].push(r.id);
                if self.cfg.exactly_once {
                    let n = *self.open_txn.entry(c).or_default();
                    let now = self.now;
                    let t = self.txns.entry((c, n)).or_default();
                    if t.records.is_empty() {
                        t.opened_at = now;
                    }
                    t.records.push((r.id, r.ts));
                    let floor = t.records.iter().map(|&(_, ts)| ts).min().unwrap_or(r.ts);
                    if !self.cfg.no_floors {
                        self.gates[g]
                            .tracker
                            .set_floor(&format!("txn/{c}/{n}"), floor);
                    }
                }
                if kind == AdmitKind::Late {
                    self.late_admitted += 1;
                }
            }
            Decision::Drop(DropReason::Late) => self.late_dropped += 1,
            Decision::Drop(_) => {}
            Decision::Hold => return Err("the queue released a held record".into()),
        }
        Ok(())
    }

    fn sidecar_crash(&mut self, g: usize) {
        let torn = self.teardown.is_some_and(|(d, _)| d == self.gates[g].dep);
        if !self.gates[g].alive || torn {
            return;
        }
        self.faults.sidecar_crashes += 1;
        // Restarted within 3 s; its clients and its stream come back within 2 s more.
        self.healed_at = self.healed_at.max(self.now + 5_000);
        let gate = &mut self.gates[g];
        gate.alive = false;
        gate.incarnation += 1;
        let mut handed = 0;
        let chans = gate.chans.clone();
        for &c in &chans {
            // Written to the channels file.
            self.chans[c].persisted = self.chan_state(c).0;
        }
        let gate = &mut self.gates[g];
        // Bad connections open at the crash are on the channels file too, and so are those an
        // earlier restart restored that have not expired yet.
        let (now, expiry) = (self.now, self.sc.closed_expiry_ms);
        gate.bad_restored
            .retain(|_, t| now.saturating_sub(*t) < expiry);
        gate.bad_restored.append(&mut gate.bad_open);
        for slot in 0..gate.chans.len() {
            let c = gate.chans[slot];
            self.chans[c].attached = false;
            let held = std::mem::take(&mut gate.mirrors[slot]);
            handed += held.len() as u64;
            let ch = &mut self.chans[c];
            // Held records were sent before anything still waiting to be re-sent.
            let mut resend = held;
            resend.append(&mut ch.resend);
            ch.resend = resend;
        }
        self.faults.handed_back += handed;
        let id = gate.id.clone();
        let stream = gate.stream.take();
        self.tr(|| format!("{id} crashes, handing back {handed} records"));
        if let Some(s) = stream {
            // The process is gone: the coordinator sees the stream end; nobody on the gate side.
            if self.streams[s].alive {
                self.streams[s].alive = false;
                let d = self.rng.random_range(1..=300);
                self.after(d, Ev::CoordSeesBreak { stream: s });
            }
        }
        let d = self.rng.random_range(300..=3_000);
        self.after(d, Ev::SidecarRestart { gate: g });
    }

    // --- channel clients --------------------------------------------------------------------

    /// When the channel's client can hand record `id` to its sidecar.
    fn avail(&self, dep: Dep, id: u32) -> u64 {
        let p = self.inputs[id as usize].produced_ms;
        match dep {
            Dep::Blue => p,
            Dep::Green => {
                let start = self.green_started_at.unwrap_or(u64::MAX / 4);
                (start + p / self.sc.replay_speed).max(p)
            }
        }
    }

    /// A torn-down deployment sends nothing new (what it already sent, held or handed back, it
    /// does).
    fn source_open(&self, c: usize) -> bool {
        self.teardown.is_none_or(|(d, _)| d != self.chans[c].dep)
    }

    fn chan_finished(&self, c: usize) -> bool {
        let ch = &self.chans[c];
        ch.resend.is_empty()
            && ch.buffered.is_empty()
            && (ch.next == ch.records.len() || !self.source_open(c))
    }

    fn wake_at(&mut self, c: usize, t: u64) {
        let ch = &mut self.chans[c];
        if ch.pending_wake.is_some_and(|p| p <= t) {
            return;
        }
        ch.wake_gen += 1;
        ch.pending_wake = Some(t);
        let generation = ch.wake_gen;
        self.at(
            t,
            Ev::Wake {
                chan: c,
                generation,
            },
        );
    }

    /// The client's loop: send a frame of records if the gate reads, a watermark when due, the
    /// end-of-input signal when done; then sleep until there is something to do.
    /// The channel's next record from its source, if its source is open and the record has
    /// been produced by now.
    fn take_next(&mut self, c: usize, open: bool) -> Option<Rec> {
        let ch = &self.chans[c];
        if !open || ch.next >= ch.records.len() {
            return None;
        }
        let id = ch.records[ch.next];
        if self.avail(ch.dep, id) > self.now {
            return None;
        }
        let r = Rec {
            id,
            ts: self.inputs[id as usize].ts,
            seq: ch.next as u32,
            future: false,
        };
        self.chans[c].next += 1;
        Some(r)
    }

    fn chan_wake(&mut self, c: usize) -> Result<(), String> {
        let now = self.now;
        let (g, slot, dep) = (self.chans[c].gate, self.chans[c].slot, self.chans[c].dep);
        if !self.gates[g].alive
            || !self.chans[c].attached
            || self.chans[c].stalled
            || self.chans[c].closed
        {
            return Ok(());
        }
        if dep == Dep::Green && self.green_started_at.is_none() {
            return Ok(());
        }
        let open = self.source_open(c);
        // One frame of records, unless the gate stopped reading (backpressure).
        let mut batch = Vec::new();
        if !self.gates[g].queues[slot].is_full() {
            while batch.len() < self.sc.batch {
                if let Some(r) = self.chans[c].resend.pop_front() {
                    batch.push(r);
                    continue;
                }
                if self.cfg.rest_drain {
                    // The producer sends what it buffered since the last wake.
                    match self.chans[c].buffered.pop_front() {
                        Some(r) => {
                            batch.push(r);
                            continue;
                        }
                        None => break,
                    }
                }
                match self.take_next(c, open) {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
        }
        if self.cfg.rest_drain && !self.gates[g].queues[slot].is_full() {
            // The writer is handed the next records; its producer sends them next time.
            while self.chans[c].buffered.len() < self.sc.batch {
                let Some(r) = self.take_next(c, open) else {
                    break;
                };
                let outlier = self.inputs[r.id as usize].outlier;
                let ch = &mut self.chans[c];
                ch.buffered.push_back(r);
                if !outlier {
                    ch.max_ts_taken = ch.max_ts_taken.max(Some(r.ts));
                }
            }
        }
        if !batch.is_empty() {
            let name = self.chans[c].name.clone();
            let step = self.sc.ceiling_step_ms;
            let gate = &mut self.gates[g];
            let wall = T0 + now as EventTime;
            for r in &mut batch {
                // Far-future records stay out of the high mark and the ceiling, and are dropped.
                r.future = gate.core.is_future(r.ts, wall);
                if !r.future {
                    if gate.ceiling.is_none_or(|c| r.ts > c) {
                        // Written ahead of the decision, so a restart never forgets a decided
                        // record.
                        gate.ceiling = Some(r.ts.saturating_add(step));
                    }
                    // Observe, queue and drain together: atomic with respect to assignments.
                    gate.core.observe(r.ts);
                    if !self.inputs[r.id as usize].outlier {
                        self.max_observed = self.max_observed.max(Some(r.ts));
                    }
                }
                gate.tracker.on_record(&name, now);
                gate.queues[slot].push(*r);
                gate.mirrors[slot].push_back(*r);
            }
            let ch = &mut self.chans[c];
            // The client's watermark follows its real records (an outlier would drag a
            // bounded-out-of-orderness watermark a year ahead: the job's own problem).
            ch.max_ts_sent = batch
                .iter()
                .filter(|r| !self.inputs[r.id as usize].outlier)
                .map(|r| r.ts)
                .chain(ch.max_ts_sent)
                .max();
            ch.last_touch = now;
            ch.idle_marked = false;
            ch.spoke = true;
            self.drain_slot(g, slot)?;
        }
        let finished = self.chan_finished(c);
        let ch = &self.chans[c];
        // Watermarks follow the records they cover: none while re-sending handed-back records.
        let wm_due = ch
            .last_wm_at
            .is_none_or(|t| now >= t + self.sc.wm_interval_ms);
        if let Some(max) = ch.max_ts_sent
            && ch.resend.is_empty()
            && !finished
            && wm_due
        {
            let wm = max - self.sc.bound_ms;
            if self.cfg.rest_drain {
                // Kafka carries no watermark: only the Flink job knows it, and it counts what
                // the writer was handed, sent or not.
                let ch = &mut self.chans[c];
                ch.flink_wm = ch.max_ts_taken.map(|m| m - self.sc.bound_ms);
            } else {
                self.chan_watermark(c, wm);
            }
            self.chans[c].last_wm_at = Some(now);
        }
        if finished && !self.chans[c].end_signalled && self.cfg.rest_drain {
            self.chans[c].end_signalled = true;
            // The subtask's input is done: its watermark is MAX in the job. On the wire there
            // is nothing to say: the producer stays connected and falls silent (a Flink job's
            // Kafka writers close only when the whole job ends).
            self.chans[c].flink_wm = Some(EventTime::MAX);
        }
        if finished && !self.chans[c].end_signalled {
            self.chans[c].end_signalled = true;
            if !open {
                // Torn down: the sink subtask's connection closes.
                self.chan_close(c)?;
            } else {
                match self.chans[c].end {
                    EndMode::FinalMax => self.chan_watermark(c, EventTime::MAX),
                    EndMode::Idle => self.chan_idle(c),
                    EndMode::Silent => {}
                    EndMode::Close => self.chan_close(c)?,
                    EndMode::FinalMaxClose => {
                        self.chan_watermark(c, EventTime::MAX);
                        self.chan_close(c)?;
                    }
                }
            }
        }
        // Sleep until the next thing to do.
        let ch = &self.chans[c];
        let ready_now = !ch.resend.is_empty()
            || !ch.buffered.is_empty()
            || (open && ch.next < ch.records.len() && self.avail(dep, ch.records[ch.next]) <= now);
        let next = if ready_now {
            // A full queue is woken by the assignment that frees it.
            (!self.gates[g].queues[slot].is_full()).then_some(now + self.sc.frame_gap_ms)
        } else if finished {
            None
        } else {
            let rec =
                (open && ch.next < ch.records.len()).then(|| self.avail(dep, ch.records[ch.next]));
            let wm = ch.last_wm_at.map(|t| t + self.sc.wm_interval_ms);
            rec.into_iter().chain(wm).min()
        };
        if let Some(t) = next {
            self.wake_at(c, t.max(now + 1));
        }
        Ok(())
    }

    // --- checks -----------------------------------------------------------------------------

    /// Which deployment owns event time `ts` after the completed cutovers: each took over
    /// everything at or above its barrier (barriers never decrease).
    fn owner(&self, ts: EventTime) -> Dep {
        self.completions
            .iter()
            .rfind(|(_, t)| ts >= *t)
            .map_or(Dep::Blue, |(d, _)| *d)
    }

    /// The end-of-run check: every record admitted exactly once, by its owner, except what the
    /// late-record policy allows (late copies may duplicate; late drops may lose), and what
    /// tearing down a deployment with idle channels loses (see [`SimReport::idle_lost`]).
    fn check_outcome(&mut self) -> Result<(), String> {
        if !matches!(self.stored.phase(), Phase::Completed | Phase::Aborted) {
            return Err(format!("ended in phase {:?}", self.stored.phase()));
        }
        for id in 0..self.inputs.len() {
            let ts = self.inputs[id].ts;
            if self.inputs[id].outlier && !self.cfg.no_future_horizon {
                // Beyond every gate's horizon: dropped by whoever decided it, admitted by none.
                for d in self.dec[id].iter().flatten() {
                    if d.decision != Decision::Drop(DropReason::Future) {
                        let what = "a far-future record was not dropped as such";
                        return Err(self.record_failure(id, what, *d));
                    }
                }
                self.future_dropped += 1;
                continue;
            }
            let owner = self.owner(ts);
            let mut owned = false;
            let mut late_admits = 0;
            let mut late_dropped = false;
            for dep in [Dep::Blue, Dep::Green] {
                let Some(d) = self.dec[id][dep.idx()] else {
                    continue;
                };
                match d.decision {
                    Decision::Admit(AdmitKind::Owned) if dep != owner => {
                        let what = format!(
                            "{} admitted a record that {} owns (completed barriers {})",
                            dep.name(),
                            owner.name(),
                            self.barriers()
                        );
                        return Err(self.record_failure(id, &what, d));
                    }
                    Decision::Admit(AdmitKind::Owned) => owned = true,
                    Decision::Admit(AdmitKind::Late) => late_admits += 1,
                    Decision::Drop(DropReason::Late) => late_dropped = true,
                    Decision::Drop(_) | Decision::Hold => {}
                }
            }
            if owned || late_admits > 0 {
                if u32::from(owned) + late_admits > 1 {
                    self.duplicated_late += 1;
                }
                continue;
            }
            // In nobody's output. Was the owner's channel idle when the owner handed over?
            let chan = self.chan_of[id][owner.idx()];
            let idle_at_handover = self.completions.iter().enumerate().any(|(k, (to, t))| {
                *to != owner && ts < *t && self.excused.get(k).is_some_and(|e| e.contains(&chan))
            });
            let owner_dec = self.dec[id][owner.idx()].map(|d| d.decision);
            let torn = self.teardown.is_some_and(|(d, _)| d == owner);
            // A late drop explains a loss only where the owner could not have admitted the
            // record: it never got it (torn down) or its channel was idle when it handed over.
            if late_dropped && (owner_dec.is_none() || idle_at_handover) {
                self.missing_late += 1;
            } else if idle_at_handover
                && torn
                && owner_dec.is_none()
                && !self.cfg.strict_idle
                && !self.cfg.rest_drain
            {
                // (With the REST drain idle channels are no excuse: the confirmed watermark
                // covers what they hold.)
                self.idle_lost += 1;
            } else {
                let why = format!(
                    "lost: owned by {} (completed barriers {}) and admitted by nobody",
                    owner.name(),
                    self.barriers()
                );
                return Err(self.record_failure_plain(id, &why));
            }
        }
        self.check_gap()
    }

    /// The output gap around a healed cutover stays near the steady state: when the first
    /// cutover committed `WHEN_READY` with no fault since, and green caught up, the largest
    /// pause between two admitted records (either deployment, sim time) from a second before
    /// the commit to the completion exceeds the largest pause of the 20 s before by at most the
    /// candidate's allowed lag, the out-of-orderness bound and the prepare's round trips.
    fn check_gap(&mut self) -> Result<(), String> {
        let Some((commit, completed, settings)) = self.first_cutover else {
            return Ok(());
        };
        let caught_up = self.green_started_at.map_or(u64::MAX, |start| {
            start * self.sc.replay_speed / (self.sc.replay_speed - 1)
        });
        if settings.now || commit < self.healed_at || commit < caught_up + 2_000 || commit < 22_000
        {
            return Ok(());
        }
        let mut times: Vec<u64> = self
            .dec
            .iter()
            .flat_map(|d| d.iter().flatten())
            .filter(|d| matches!(d.decision, Decision::Admit(_)))
            .map(|d| d.at_ms)
            .filter(|t| (commit - 22_000..=completed).contains(t))
            .collect();
        times.sort_unstable();
        let largest = |from: u64, to: u64| {
            times
                .windows(2)
                .filter(|w| w[0] >= from && w[1] <= to)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or(0)
        };
        let steady = largest(commit - 22_000, commit - 2_000);
        let around = largest(commit - 1_000, completed);
        let allowed = steady
            + u64::try_from(settings.max_lag_ms + self.sc.bound_ms).unwrap_or(0)
            + 4 * 400
            + 1_000;
        self.gap = Some((around, steady));
        if around > allowed {
            return Err(format!(
                "output gap: {around} ms between two admitted records around the cutover \
                 (commit at {commit} ms, completed at {completed} ms) against {steady} ms in \
                 the 20 s before; allowed {allowed} ms"
            ));
        }
        Ok(())
    }

    fn barriers(&self) -> String {
        let list: Vec<String> = self
            .completions
            .iter()
            .map(|(d, t)| format!("{} from {}", d.name(), fmt_ts(Some(*t))))
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }

    fn describe(&self, d: Option<DecLog>) -> String {
        match d {
            None => "never decided".into(),
            Some(d) => format!(
                "{:?} by {} at {} ms under version {:?}",
                d.decision, self.gates[d.gate].id, d.at_ms, d.version
            ),
        }
    }

    fn record_failure(&self, id: usize, what: &str, d: DecLog) -> String {
        format!(
            "{what}: record {id} ts {} — {}; blue: {}; green: {}",
            fmt_ts(Some(self.inputs[id].ts)),
            self.describe(Some(d)),
            self.describe(self.dec[id][0]),
            self.describe(self.dec[id][1])
        )
    }

    fn record_failure_plain(&self, id: usize, what: &str) -> String {
        format!(
            "{what}: record {id} ts {}; blue: {}; green: {}",
            fmt_ts(Some(self.inputs[id].ts)),
            self.describe(self.dec[id][0]),
            self.describe(self.dec[id][1])
        )
    }

    /// A short trace summary for failure messages.
    fn summary(&self) -> String {
        let sc = &self.sc;
        let mut out = format!(
            "  scenario: {} records every ~{} ms, blue {:?}, green {:?} (starts {} ms, x{} \
             replay), out-of-orderness bound {} ms, teardown {:?}, partition {:?} (gate expiry \
             {} ms)",
            self.inputs.len(),
            sc.spacing_ms,
            sc.blue_layout,
            sc.green_layout,
            sc.green_start_ms,
            sc.replay_speed,
            sc.bound_ms,
            sc.teardown_after_ms,
            sc.partition,
            sc.gate_expiry_ms,
        );
        for (k, c) in sc.cutovers.iter().enumerate() {
            let s = &c.settings;
            out.push_str(&format!(
                "\n  cutover {}: {} at {} ms, margin {}, drain lateness {}, min gates {}, max lag {}, \
                 prepare timeout {}, max attempts {}, {:?}, now {}, ready timeout {}, abort {:?}",
                k + 1,
                if k == 0 { "starts" } else { "follows" },
                c.start_ms,
                s.margin_ms,
                s.drain_lateness_ms,
                s.min_gates,
                s.max_lag_ms,
                s.prepare_timeout_ms,
                s.max_attempts,
                s.late_policy,
                s.now,
                s.ready_timeout_ms,
                c.abort_in
            ));
        }
        out.push_str(&format!(
            "\n  end: sim {} ms, phase {:?}, completed barriers {}, first commit at {:?}, faults \
             {:?}\n  phase history:",
            self.now,
            self.stored.phase(),
            self.barriers(),
            self.commit_at,
            self.faults
        ));
        let skip = self.history.len().saturating_sub(20);
        if skip > 0 {
            out.push_str(&format!("\n    ... {skip} earlier"));
        }
        for h in &self.history[skip..] {
            out.push_str("\n    ");
            out.push_str(h);
        }
        out
    }

    fn report(&mut self) -> SimReport {
        let admitted = |d: Dep| self.outputs[d.idx()].len() as u64;
        SimReport {
            seed: self.seed,
            records: self.inputs.len(),
            blue_layout: self.sc.blue_layout.clone(),
            green_layout: self.sc.green_layout.clone(),
            blue_admitted: admitted(Dep::Blue),
            green_admitted: admitted(Dep::Green),
            late_dropped: self.late_dropped,
            late_admitted: self.late_admitted,
            missing_late: self.missing_late,
            duplicated_late: self.duplicated_late,
            idle_lost: self.idle_lost,
            future_dropped: self.future_dropped,
            attempts: self.attempts,
            no_votes: self.no_votes,
            final_phase: self.stored.phase(),
            operator_abort: self.operator_abort,
            barrier: self
                .completions
                .last()
                .map(|c| c.1)
                .or(self.stored.last_barrier),
            cutovers: self.cutovers_started,
            completions: self.completions.len(),
            teardown: self.teardown.is_some(),
            requested_before_green: self.requested_before_green,
            sim_time_ms: self.now,
            slowest_settle_ms: self.slowest_settle_ms,
            gap: self.gap,
            events: self.events,
            stale_assignments: self.stale_assignments,
            faults: self.faults.clone(),
            history: self.history.clone(),
            trace: std::mem::take(&mut self.trace),
        }
    }
}

// --- many seeds ---------------------------------------------------------------------------------

/// Totals over many runs: what happened, so a test can assert the scenario space was covered.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Runs that passed.
    pub runs: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Runs that ended completed.
    pub completed: u64,
    /// Runs that ended aborted (given up or by the operator).
    pub aborted: u64,
    /// Runs aborted by the operator.
    pub operator_aborts: u64,
    /// Runs that needed more than one prepare attempt.
    pub retried: u64,
    /// Runs with more than one cutover requested.
    pub multi_cutover: u64,
    /// Runs with two or more completed cutovers (a rollback).
    pub rollbacks: u64,
    /// Runs with at least one "no" vote.
    pub with_no_votes: u64,
    /// Runs whose cutover was requested before green's gates started.
    pub requested_before_green: u64,
    /// Runs with blue torn down after completion.
    pub teardowns: u64,
    /// Runs with a coordinator crash while waiting.
    pub coord_crash_waiting: u64,
    /// Runs with a coordinator crash while prepared.
    pub coord_crash_prepared: u64,
    /// Runs with a coordinator crash while committed.
    pub coord_crash_committed: u64,
    /// Runs with a sidecar crash.
    pub sidecar_crashes: u64,
    /// Runs where a crashed sidecar handed held records back.
    pub handed_back: u64,
    /// Runs with a lost vote.
    pub lost_votes: u64,
    /// Runs with a broken stream.
    pub stream_breaks: u64,
    /// Runs with a channel stall.
    pub stalls: u64,
    /// Runs where the coordinator forgot a gate after a long partition.
    pub expired_gates: u64,
    /// Runs where a gate lost its lease and fenced itself.
    pub fences: u64,
    /// Runs with a long network partition of one gate.
    pub partitions: u64,
    /// Runs with late records dropped.
    pub late_dropped: u64,
    /// Runs with late records admitted.
    pub late_admitted: u64,
    /// Runs with late records lost (drop policy, blue torn down).
    pub missing_late: u64,
    /// Runs that lost records of an idle blue channel to blue's teardown.
    pub idle_lost: u64,
    /// Runs where a gate ignored a stale assignment.
    pub stale_assignments: u64,
    /// Input records over all runs.
    pub records: u64,
    /// Events processed over all runs.
    pub events: u64,
    /// Sim time over all runs, ms.
    pub sim_ms: u64,
    /// Runs with a connection that failed before it spoke.
    pub bad_connections: u64,
    /// Runs with far-future records (dropped as such).
    pub future_dropped: u64,
    /// The longest any cutover ran past the start of its liveness window, ms.
    pub slowest_settle_ms: u64,
    /// Runs whose output gap was checked, and the largest excess over steady state seen, ms.
    pub gap_checked: u64,
    /// See [`Totals::gap_checked`].
    pub gap_excess_ms: u64,
}

impl Totals {
    /// Adds one passed run.
    pub fn add(&mut self, r: &SimReport) {
        let f = &r.faults;
        let b = |x: bool| u64::from(x);
        self.runs += 1;
        self.completed += b(r.final_phase == Phase::Completed);
        self.aborted += b(r.final_phase == Phase::Aborted);
        self.operator_aborts += b(r.operator_abort);
        self.retried += b(r.attempts > 1);
        self.multi_cutover += b(r.cutovers > 1);
        self.rollbacks += b(r.completions > 1);
        self.with_no_votes += b(r.no_votes > 0);
        self.requested_before_green += b(r.requested_before_green);
        self.teardowns += b(r.teardown);
        self.coord_crash_waiting += b(f.crashes_waiting > 0);
        self.coord_crash_prepared += b(f.crashes_prepared > 0);
        self.coord_crash_committed += b(f.crashes_committed > 0);
        self.sidecar_crashes += b(f.sidecar_crashes > 0);
        self.handed_back += b(f.handed_back > 0);
        self.lost_votes += b(f.lost_votes > 0);
        self.stream_breaks += b(f.stream_breaks > 0);
        self.stalls += b(f.stalls > 0);
        self.expired_gates += b(f.expired_gates > 0);
        self.fences += b(f.fences > 0);
        self.partitions += b(f.partitions > 0);
        self.late_dropped += b(r.late_dropped > 0);
        self.late_admitted += b(r.late_admitted > 0);
        self.missing_late += b(r.missing_late > 0);
        self.idle_lost += b(r.idle_lost > 0);
        self.stale_assignments += b(r.stale_assignments > 0);
        self.records += r.records as u64;
        self.events += r.events;
        self.sim_ms += r.sim_time_ms;
        self.bad_connections += b(f.bad_connections > 0);
        self.future_dropped += b(r.future_dropped > 0);
        self.slowest_settle_ms = self.slowest_settle_ms.max(r.slowest_settle_ms);
        if let Some((around, steady)) = r.gap {
            self.gap_checked += 1;
            self.gap_excess_ms = self.gap_excess_ms.max(around.saturating_sub(steady));
        }
    }

    /// The coverage requirements a large enough batch of seeds must meet; the names of those it
    /// did not.
    pub fn uncovered(&self) -> Vec<&'static str> {
        [
            ("completed", self.completed),
            ("aborted", self.aborted),
            ("operator abort", self.operator_aborts),
            ("retried prepare", self.retried),
            ("several cutovers", self.multi_cutover),
            ("rollback completed", self.rollbacks),
            ("no vote", self.with_no_votes),
            (
                "cutover requested before green started",
                self.requested_before_green,
            ),
            ("blue torn down", self.teardowns),
            ("coordinator crash while waiting", self.coord_crash_waiting),
            (
                "coordinator crash while prepared",
                self.coord_crash_prepared,
            ),
            (
                "coordinator crash while committed",
                self.coord_crash_committed,
            ),
            ("sidecar crash", self.sidecar_crashes),
            ("held records handed back", self.handed_back),
            ("lost vote", self.lost_votes),
            ("stream break", self.stream_breaks),
            ("channel stall", self.stalls),
            ("long partition", self.partitions),
            ("late records dropped", self.late_dropped),
            ("late records admitted", self.late_admitted),
            ("connection failed before speaking", self.bad_connections),
            ("far-future records", self.future_dropped),
        ]
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(what, _)| what)
        .collect()
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed; completed {}, aborted {} (operator {}), retried {}, several cutovers {}, \
             rollbacks {}, no votes {}, \
             requested before green {}, teardowns {}; coordinator crashes in waiting {} / prepared \
             {} / committed {}; sidecar crashes {} (handed back {}), lost votes {}, stream breaks \
             {}, stalls {}, partitions {} (gates expired {}, fenced {}); late dropped {}, late admitted {}, late lost {}, idle-channel loss at teardown {}; \
             stale assignments {}; bad connections {}; far-future records {}; slowest cutover \
             after healing {} ms; output gap checked in {} runs, at most {} ms over steady state; \
             {} records, {} events, {} s of sim time",
            self.runs,
            self.failed,
            self.completed,
            self.aborted,
            self.operator_aborts,
            self.retried,
            self.multi_cutover,
            self.rollbacks,
            self.with_no_votes,
            self.requested_before_green,
            self.teardowns,
            self.coord_crash_waiting,
            self.coord_crash_prepared,
            self.coord_crash_committed,
            self.sidecar_crashes,
            self.handed_back,
            self.lost_votes,
            self.stream_breaks,
            self.stalls,
            self.partitions,
            self.expired_gates,
            self.fences,
            self.late_dropped,
            self.late_admitted,
            self.missing_late,
            self.idle_lost,
            self.stale_assignments,
            self.bad_connections,
            self.future_dropped,
            self.slowest_settle_ms,
            self.gap_checked,
            self.gap_excess_ms,
            self.records,
            self.events,
            self.sim_ms / 1_000
        )
    }
}

/// Runs seeds `start..start + count` on `jobs` threads; returns the totals and the failures in
/// seed order. Each run is independent and deterministic, so the result does not depend on
/// `jobs`.
pub fn run_many(start: u64, count: u64, cfg: &SimConfig, jobs: usize) -> (Totals, Vec<SimFailure>) {
    let jobs = jobs.max(1) as u64;
    let results: Vec<(Totals, Vec<SimFailure>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    let mut failures = Vec::new();
                    let mut seed = start + j;
                    while seed < start + count {
                        match run(seed, cfg) {
                            Ok(r) => totals.add(&r),
                            Err(f) => {
                                totals.failed += 1;
                                failures.push(f);
                            }
                        }
                        seed += jobs;
                    }
                    (totals, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for (t, f) in results {
        totals.merge(&t);
        failures.extend(f);
    }
    failures.sort_by_key(|f| f.seed);
    (totals, failures)
}

impl Totals {
    fn merge(&mut self, o: &Totals) {
        self.runs += o.runs;
        self.failed += o.failed;
        self.completed += o.completed;
        self.aborted += o.aborted;
        self.operator_aborts += o.operator_aborts;
        self.retried += o.retried;
        self.multi_cutover += o.multi_cutover;
        self.rollbacks += o.rollbacks;
        self.with_no_votes += o.with_no_votes;
        self.requested_before_green += o.requested_before_green;
        self.teardowns += o.teardowns;
        self.coord_crash_waiting += o.coord_crash_waiting;
        self.coord_crash_prepared += o.coord_crash_prepared;
        self.coord_crash_committed += o.coord_crash_committed;
        self.sidecar_crashes += o.sidecar_crashes;
        self.handed_back += o.handed_back;
        self.lost_votes += o.lost_votes;
        self.stream_breaks += o.stream_breaks;
        self.stalls += o.stalls;
        self.expired_gates += o.expired_gates;
        self.fences += o.fences;
        self.partitions += o.partitions;
        self.late_dropped += o.late_dropped;
        self.late_admitted += o.late_admitted;
        self.missing_late += o.missing_late;
        self.idle_lost += o.idle_lost;
        self.stale_assignments += o.stale_assignments;
        self.records += o.records;
        self.events += o.events;
        self.sim_ms += o.sim_ms;
        self.bad_connections += o.bad_connections;
        self.future_dropped += o.future_dropped;
        self.slowest_settle_ms = self.slowest_settle_ms.max(o.slowest_settle_ms);
        self.gap_checked += o.gap_checked;
        self.gap_excess_ms = self.gap_excess_ms.max(o.gap_excess_ms);
    }
}
