//! The coordinator's per-pipeline cutover state machine.
//!
//! A [`Pipeline`] is driven by inputs (gates attaching, reporting progress and votes, cutover
//! requests, the passage of time) and answers each with [`Effects`]: whether the durable
//! [`PipelineRecord`] changed and must be written *before* anything is announced, and the
//! [`Event`]s to show watchers. What each gate must do is never sent as a delta: the driver asks
//! [`Pipeline::assignment_for`] after every durable change and hands gates the full state.
//!
//! Time is an argument (`now_ms`), never read: the same inputs give the same outputs, which is
//! what the seeded simulation relies on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EventTime;
use crate::gate::{Admission, Assignment, Kept, LatePolicy};

/// Phase of a pipeline, as shown to people and gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No cutover has run yet.
    Steady,
    /// A cutover waits for its candidate to be ready.
    Waiting,
    /// A barrier is proposed; gates vote and hold.
    Prepared,
    /// The barrier is decided; the outgoing deployment drains.
    Committed,
    /// The last attempt was aborted; nothing changed.
    Aborted,
    /// The last cutover completed.
    Completed,
}

/// Settings of one cutover (defaults come from the coordinator's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Added to the largest high mark to choose the barrier.
    pub margin_ms: i64,
    /// The drain waits for outgoing watermarks `>= T + drain_lateness_ms`.
    pub drain_lateness_ms: i64,
    /// Candidate gates that must be attached before it is ready.
    pub min_gates: u32,
    /// Largest allowed lag of the candidate watermark behind the active one.
    pub max_lag_ms: i64,
    /// How long to wait for every vote.
    pub prepare_timeout_ms: u64,
    /// Prepare attempts before giving up.
    pub max_attempts: u32,
    /// The candidate's late-record policy once it takes over.
    pub late_policy: LatePolicy,
    /// Prepare at once, without waiting for readiness.
    pub now: bool,
    /// Give up waiting for readiness after this long (0: wait forever).
    pub ready_timeout_ms: u64,
    /// Accept a `now` cutover to a candidate with no registered gate (see
    /// [`CutoverError::CandidateUnknown`]).
    #[serde(default)]
    pub force: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            margin_ms: 1_000,
            drain_lateness_ms: 0,
            min_gates: 1,
            max_lag_ms: 5_000,
            prepare_timeout_ms: 5_000,
            max_attempts: 5,
            late_policy: LatePolicy::Drop,
            now: false,
            ready_timeout_ms: 0,
            force: false,
        }
    }
}

/// A setting outside its range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid setting {field}: {reason}")]
pub struct SettingsError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Settings {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, reason| Err(SettingsError { field, reason });
        if self.margin_ms < 0 {
            return bad("margin_ms", "must be >= 0");
        }
        if self.drain_lateness_ms < 0 {
            return bad("drain_lateness_ms", "must be >= 0");
        }
        if self.max_lag_ms < 0 {
            return bad("max_lag_ms", "must be >= 0");
        }
        if self.prepare_timeout_ms == 0 {
            return bad("prepare_timeout_ms", "must be > 0");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be >= 1");
        }
        Ok(())
    }
}

/// Behaviour of the coordinator that is not per cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// The first deployment to attach to a pipeline with no active deployment becomes active.
    pub auto_activate: bool,
    /// A gate disconnected this long is forgotten (no longer blocks votes or the drain).
    pub gate_expiry_ms: u64,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            auto_activate: true,
            gate_expiry_ms: 120_000,
        }
    }
}

/// A cutover in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverPlan {
    /// The deployment taking over.
    pub candidate: String,
    /// Its settings.
    pub settings: Settings,
    /// Prepare attempts made so far.
    pub attempt: u32,
    /// When it was requested.
    pub requested_at_ms: u64,
}

/// Where a pipeline is in its cutover lifecycle (durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "stage")]
pub enum Stage {
    /// No cutover running; `last` says how the previous one ended.
    Steady {
        /// `Steady`, `Aborted` or `Completed`.
        last: Phase,
    },
    /// Waiting for the candidate to be ready.
    Waiting {
        /// The cutover.
        plan: CutoverPlan,
    },
    /// Barrier proposed, votes being collected.
    Prepared {
        /// The cutover.
        plan: CutoverPlan,
        /// The proposed barrier.
        barrier: EventTime,
    },
    /// Barrier decided, outgoing deployment draining.
    Committed {
        /// The cutover.
        plan: CutoverPlan,
        /// The barrier.
        barrier: EventTime,
    },
}

/// The deployment the last completed cutover replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// Its id.
    pub deployment: String,
    /// Its floor while it was active.
    pub floor: Option<EventTime>,
    /// The barrier that retired it.
    pub barrier: EventTime,
}

/// Everything about a pipeline that must survive a coordinator restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// Pipeline name.
    pub name: String,
    /// Bumped on every change of any gate's assignment.
    pub version: u64,
    /// Bumped on every prepare attempt.
    pub epoch: u64,
    /// The deployment in production.
    pub active: Option<String>,
    /// Records below this belong to the active deployment's drained predecessor.
    pub floor: Option<EventTime>,
    /// The active deployment's late-record policy.
    pub late_policy: LatePolicy,
    /// The deployment retired by the last completed cutover.
    pub retired: Option<Retired>,
    /// Cutover lifecycle.
    pub stage: Stage,
    /// When the current phase began.
    pub phase_since_ms: u64,
    /// Every registered gate and its deployment; all of them must vote on a prepare.
    pub gates: BTreeMap<String, String>,
    /// Why the last cutover did not complete.
    pub last_error: Option<String>,
    /// Barrier of the running or last cutover.
    pub last_barrier: Option<EventTime>,
}

impl PipelineRecord {
    /// A pipeline nobody has attached to yet.
    pub fn new(name: impl Into<String>, now_ms: u64) -> Self {
        Self {
            name: name.into(),
            version: 0,
            epoch: 0,
            active: None,
            floor: None,
            late_policy: LatePolicy::Drop,
            retired: None,
            stage: Stage::Steady {
                last: Phase::Steady,
            },
            phase_since_ms: now_ms,
            gates: BTreeMap::new(),
            last_error: None,
            last_barrier: None,
        }
    }

    /// The pipeline's phase.
    pub fn phase(&self) -> Phase {
        match &self.stage {
            Stage::Steady { last } => *last,
            Stage::Waiting { .. } => Phase::Waiting,
            Stage::Prepared { .. } => Phase::Prepared,
            Stage::Committed { .. } => Phase::Committed,
        }
    }

    /// The running cutover, if any.
    pub fn plan(&self) -> Option<&CutoverPlan> {
        match &self.stage {
            Stage::Steady { .. } => None,
            Stage::Waiting { plan }
            | Stage::Prepared { plan, .. }
            | Stage::Committed { plan, .. } => Some(plan),
        }
    }
}

/// Progress a gate reports (its heartbeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateProgress {
    /// Largest event time seen.
    pub high_mark: Option<EventTime>,
    /// Gate watermark (minimum over live channels).
    pub watermark: Option<EventTime>,
    /// Channels tracked.
    pub channels: u32,
    /// Idle channels.
    pub idle_channels: u32,
}

/// What the coordinator knows of a registered gate right now (not durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLive {
    /// Connection generation of the stream that is currently open, if one is.
    pub conn: Option<u64>,
    /// When it last reported (or attached).
    pub last_seen_ms: u64,
    /// When it disconnected (or when the coordinator restarted), if not connected.
    pub disconnected_since_ms: Option<u64>,
    /// Its last progress.
    pub progress: GateProgress,
}

/// A gate lifecycle change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateEventKind {
    /// Its stream opened.
    Attached,
    /// Its stream closed.
    Detached,
    /// It was forgotten after `gate_expiry_ms` disconnected.
    Expired,
}

/// Something a watcher should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The phase changed.
    PhaseChanged {
        /// New phase.
        phase: Phase,
        /// Epoch.
        epoch: u64,
        /// Barrier, if set.
        barrier: Option<EventTime>,
        /// Why.
        reason: String,
    },
    /// A gate voted on the current prepare.
    Vote {
        /// Gate id.
        gate: String,
        /// Epoch.
        epoch: u64,
        /// The vote.
        yes: bool,
        /// Its high mark.
        high_mark: Option<EventTime>,
    },
    /// A gate attached, detached or expired.
    Gate {
        /// Gate id.
        gate: String,
        /// Its deployment.
        deployment: String,
        /// What happened.
        kind: GateEventKind,
    },
}

/// What an input asks of the driver.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "durable changes must be persisted before gates are told"]
pub struct Effects {
    /// The record changed: persist it before announcing anything (assignments included).
    pub persist: bool,
    /// Events for watchers, in order.
    pub events: Vec<Event>,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.persist |= other.persist;
        self.events.extend(other.events);
    }
}

/// Why an attach was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttachError {
    /// The gate id is registered under another deployment.
    #[error("gate {gate} belongs to deployment {registered}, not {claimed}")]
    DeploymentMismatch {
        /// Gate id.
        gate: String,
        /// Where it is registered.
        registered: String,
        /// What it claimed.
        claimed: String,
    },
}

/// Why a cutover request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CutoverError {
    /// A cutover is already running.
    #[error("a cutover to {candidate} is already {phase:?}; abort it or wait for it to finish")]
    AlreadyRunning {
        /// Its candidate.
        candidate: String,
        /// Its phase.
        phase: Phase,
    },
    /// The candidate is the active deployment.
    #[error("{0} is already the active deployment")]
    CandidateIsActive(String),
    /// An empty candidate id.
    #[error("candidate deployment id must not be empty")]
    EmptyCandidate,
    /// A `now` cutover to a deployment no gate has attached as: most likely a typo, and the
    /// output of every record at or after the barrier would go nowhere.
    #[error(
        "no gate of deployment {0} has attached to this pipeline; a cutover now would send the \
         output from the barrier on to nobody. Check the name, wait for its gates (WHEN_READY), \
         or set force"
    )]
    CandidateUnknown(String),
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Nothing to abort.
    #[error("no cutover is running")]
    NothingToAbort,
    /// Too late to abort.
    #[error(
        "epoch {epoch} is committed at barrier {barrier}; it cannot be aborted — wait for the \
         drain to complete, then cut over back"
    )]
    AlreadyCommitted {
        /// Epoch.
        epoch: u64,
        /// Barrier.
        barrier: EventTime,
    },
}

/// One pipeline: its durable record plus what is known live about its gates.
#[derive(Debug, Clone)]
pub struct Pipeline {
    record: PipelineRecord,
    options: PipelineOptions,
    live: BTreeMap<String, GateLive>,
    /// Votes on the current epoch's prepare.
    votes: BTreeMap<String, (bool, Option<EventTime>)>,
    /// Largest high mark reported by a "no" vote during this cutover.
    reported_high: Option<EventTime>,
    prepare_deadline_ms: Option<u64>,
    /// When this pipeline was restored from its record: until every registered gate has
    /// re-attached, nobody knows their high marks (see [`Pipeline::restore`]).
    restored_at_ms: Option<u64>,
}

impl Pipeline {
    /// A new pipeline (first seen now).
    pub fn new(name: impl Into<String>, options: PipelineOptions, now_ms: u64) -> Self {
        Self::from_record(PipelineRecord::new(name, now_ms), options)
    }

    fn from_record(record: PipelineRecord, options: PipelineOptions) -> Self {
        Self {
            record,
            options,
            live: BTreeMap::new(),
            votes: BTreeMap::new(),
            reported_high: None,
            prepare_deadline_ms: None,
            restored_at_ms: None,
        }
    }

    /// Resumes a pipeline from its stored record after a coordinator restart. Every gate counts
    /// as disconnected since `now_ms`; a prepare whose outcome was never decided is aborted
    /// (and retried), a committed cutover resumes its drain.
    ///
    /// High marks are not stored (they change with every record), so until the gates re-attach
    /// the coordinator does not know them: a barrier chosen from the gates that came back first
    /// would fall below the others' and cost a "no" vote and an output gap. A waiting cutover
    /// therefore prepares only once every registered gate of both deployments is back — for a
    /// `now` cutover, or at most one prepare timeout after the restart.
    pub fn restore(
        record: PipelineRecord,
        options: PipelineOptions,
        now_ms: u64,
    ) -> (Self, Effects) {
        let mut p = Self::from_record(record, options);
        p.restored_at_ms = Some(now_ms);
        for gate in p.record.gates.keys() {
            p.live.insert(
                gate.clone(),
                GateLive {
                    conn: None,
                    last_seen_ms: now_ms,
                    disconnected_since_ms: Some(now_ms),
                    progress: GateProgress::default(),
                },
            );
        }
        let mut fx = Effects::default();
        if matches!(p.record.stage, Stage::Prepared { .. }) {
            fx.merge(p.abort_attempt(
                "coordinator restarted before the prepare was decided".into(),
                now_ms,
            ));
        }
        (p, fx)
    }

    /// The durable record.
    pub fn record(&self) -> &PipelineRecord {
        &self.record
    }

    /// Live gate information, by gate id.
    pub fn live(&self) -> &BTreeMap<String, GateLive> {
        &self.live
    }

    /// A gate's vote on the current prepare.
    pub fn vote_of(&self, gate: &str) -> Option<bool> {
        match self.record.stage {
            Stage::Prepared { .. } => self.votes.get(gate).map(|v| v.0),
            _ => None,
        }
    }

    /// The full assignment for any gate of `deployment`.
    pub fn assignment_for(&self, deployment: &str) -> Assignment {
        let r = &self.record;
        let is_active = r.active.as_deref() == Some(deployment);
        let retired = r
            .retired
            .as_ref()
            .filter(|x| x.deployment == deployment)
            .map(|x| Admission::Retired {
                floor: x.floor,
                barrier: x.barrier,
            });
        let cut = match &r.stage {
            Stage::Prepared { plan, barrier } => Some((plan, *barrier, false)),
            Stage::Committed { plan, barrier } => Some((plan, *barrier, true)),
            Stage::Steady { .. } | Stage::Waiting { .. } => None,
        };
        let (admission, late_policy) = match cut {
            Some((_, barrier, committed)) if is_active => (
                Admission::Outgoing {
                    floor: r.floor,
                    barrier,
                    committed,
                },
                r.late_policy,
            ),
            Some((plan, barrier, committed)) if plan.candidate == deployment => (
                Admission::Incoming {
                    barrier,
                    committed,
                    // A rollback: the candidate is the deployment the last cutover retired.
                    kept: r
                        .retired
                        .as_ref()
                        .filter(|x| x.deployment == deployment)
                        .map(|x| Kept {
                            floor: x.floor,
                            barrier: x.barrier,
                        }),
                },
                plan.settings.late_policy,
            ),
            _ if is_active => (Admission::Active { floor: r.floor }, r.late_policy),
            _ => (retired.unwrap_or(Admission::Standby), r.late_policy),
        };
        Assignment {
            version: r.version,
            epoch: r.epoch,
            admission,
            late_policy,
        }
    }

    // --- inputs from gates ----------------------------------------------------------------

    /// A gate's stream opened (`conn` identifies this stream; a newer one replaces an older).
    pub fn attach(
        &mut self,
        gate: &str,
        deployment: &str,
        conn: u64,
        progress: GateProgress,
        now_ms: u64,
    ) -> Result<Effects, AttachError> {
        let mut fx = Effects::default();
        match self.record.gates.get(gate) {
            Some(registered) if registered != deployment => {
                return Err(AttachError::DeploymentMismatch {
                    gate: gate.into(),
                    registered: registered.clone(),
                    claimed: deployment.into(),
                });
            }
            Some(_) => {}
            None => {
                self.record.gates.insert(gate.into(), deployment.into());
                fx.persist = true;
            }
        }
        self.live.insert(
            gate.into(),
            GateLive {
                conn: Some(conn),
                last_seen_ms: now_ms,
                disconnected_since_ms: None,
                progress,
            },
        );
        fx.events.push(Event::Gate {
            gate: gate.into(),
            deployment: deployment.into(),
            kind: GateEventKind::Attached,
        });
        if self.record.active.is_none()
            && self.options.auto_activate
            && matches!(self.record.stage, Stage::Steady { .. })
        {
            fx.merge(self.activate(deployment, "first deployment to attach", now_ms));
        }
        fx.merge(self.tick(now_ms));
        Ok(fx)
    }

    /// A gate's stream closed. Ignored when `conn` is not the gate's current stream.
    pub fn detach(&mut self, gate: &str, conn: u64, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        if let Some(l) = self.live.get_mut(gate)
            && l.conn == Some(conn)
        {
            l.conn = None;
            l.disconnected_since_ms = Some(now_ms);
            fx.events.push(Event::Gate {
                gate: gate.into(),
                deployment: self.record.gates.get(gate).cloned().unwrap_or_default(),
                kind: GateEventKind::Detached,
            });
        }
        fx.merge(self.tick(now_ms));
        fx
    }

    /// A gate reported progress.
    pub fn progress(
        &mut self,
        gate: &str,
        conn: u64,
        progress: GateProgress,
        now_ms: u64,
    ) -> Effects {
        if let Some(l) = self.live.get_mut(gate)
            && l.conn == Some(conn)
        {
            l.progress = progress;
            l.last_seen_ms = now_ms;
        }
        self.tick(now_ms)
    }

    /// A gate voted on epoch `epoch`.
    pub fn vote(
        &mut self,
        gate: &str,
        conn: u64,
        epoch: u64,
        yes: bool,
        high_mark: Option<EventTime>,
        now_ms: u64,
    ) -> Effects {
        let mut fx = Effects::default();
        let current = self.live.get(gate).is_some_and(|l| l.conn == Some(conn));
        if current
            && epoch == self.record.epoch
            && matches!(self.record.stage, Stage::Prepared { .. })
        {
            self.votes.insert(gate.into(), (yes, high_mark));
            if !yes {
                self.reported_high = self.reported_high.max(high_mark);
            }
            fx.events.push(Event::Vote {
                gate: gate.into(),
                epoch,
                yes,
                high_mark,
            });
        }
        fx.merge(self.tick(now_ms));
        fx
    }

    // --- inputs from operators ------------------------------------------------------------

    /// Starts a cutover to `candidate`. With no active deployment the candidate is activated at
    /// once (nothing was in production, so there is nothing to cut over from).
    pub fn start_cutover(
        &mut self,
        candidate: &str,
        settings: Settings,
        now_ms: u64,
    ) -> Result<Effects, CutoverError> {
        settings.validate()?;
        if candidate.is_empty() {
            return Err(CutoverError::EmptyCandidate);
        }
        if let Some(plan) = self.record.plan() {
            return Err(CutoverError::AlreadyRunning {
                candidate: plan.candidate.clone(),
                phase: self.record.phase(),
            });
        }
        if self.record.active.as_deref() == Some(candidate) {
            return Err(CutoverError::CandidateIsActive(candidate.into()));
        }
        if settings.now && !settings.force && !self.record.gates.values().any(|d| d == candidate) {
            return Err(CutoverError::CandidateUnknown(candidate.into()));
        }
        if self.record.active.is_none() {
            return Ok(self.activate(
                candidate,
                "no active deployment: activated directly",
                now_ms,
            ));
        }
        self.record.stage = Stage::Waiting {
            plan: CutoverPlan {
                candidate: candidate.into(),
                settings,
                attempt: 0,
                requested_at_ms: now_ms,
            },
        };
        self.record.last_error = None;
        self.reported_high = None;
        let mut fx = self.phase_changed(now_ms, format!("cutover to {candidate} requested"));
        fx.merge(self.tick(now_ms));
        Ok(fx)
    }

    /// Aborts the running cutover (possible until it is committed).
    pub fn abort(&mut self, reason: &str, now_ms: u64) -> Result<Effects, CutoverError> {
        match &self.record.stage {
            Stage::Steady { .. } => Err(CutoverError::NothingToAbort),
            Stage::Committed { barrier, .. } => Err(CutoverError::AlreadyCommitted {
                epoch: self.record.epoch,
                barrier: *barrier,
            }),
            Stage::Waiting { .. } | Stage::Prepared { .. } => {
                Ok(self.give_up(format!("aborted by request: {reason}"), now_ms))
            }
        }
    }

    // --- time -----------------------------------------------------------------------------

    /// Re-evaluates timeouts, readiness, votes, drain and gate expiry.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        let mut fx = self.expire_gates(now_ms);
        match &self.record.stage {
            Stage::Steady { .. } => {}
            Stage::Waiting { plan } => {
                let s = plan.settings;
                let resuming = self
                    .restored_at_ms
                    .is_some_and(|at| now_ms < at.saturating_add(s.prepare_timeout_ms))
                    && self.absent_voter().is_some();
                if s.now && !resuming {
                    fx.merge(self.prepare(now_ms, "requested now".into()));
                } else if let (false, Ok(why)) = (s.now, self.readiness()) {
                    fx.merge(self.prepare(now_ms, why));
                } else if s.ready_timeout_ms > 0
                    && now_ms.saturating_sub(plan.requested_at_ms) >= s.ready_timeout_ms
                {
                    fx.merge(self.give_up(
                        format!("candidate not ready within {} ms", s.ready_timeout_ms),
                        now_ms,
                    ));
                }
            }
            Stage::Prepared { barrier, .. } => {
                let barrier = *barrier;
                let voters = self.voters();
                let no = voters
                    .iter()
                    .find_map(|g| self.votes.get(*g).filter(|v| !v.0).map(|v| (*g, v.1)));
                let missing: Vec<&str> = voters
                    .iter()
                    .filter(|g| !self.votes.contains_key(**g))
                    .copied()
                    .collect();
                if let Some((gate, hm)) = no {
                    let why = format!(
                        "gate {gate} voted no: high mark {} >= barrier {barrier}",
                        hm.map_or("?".into(), |h| h.to_string())
                    );
                    fx.merge(self.abort_attempt(why, now_ms));
                } else if missing.is_empty() {
                    fx.merge(self.commit(now_ms));
                } else if self.prepare_deadline_ms.is_some_and(|d| now_ms >= d) {
                    let why = format!(
                        "no vote within the prepare timeout from {}",
                        missing.join(", ")
                    );
                    fx.merge(self.abort_attempt(why, now_ms));
                }
            }
            Stage::Committed { barrier, plan } => {
                let target = barrier.saturating_add(plan.settings.drain_lateness_ms);
                if self.drained(target) {
                    fx.merge(self.complete(now_ms));
                }
            }
        }
        fx
    }

    // --- transitions ----------------------------------------------------------------------

    fn phase_changed(&mut self, now_ms: u64, reason: String) -> Effects {
        self.record.phase_since_ms = now_ms;
        let barrier = match &self.record.stage {
            Stage::Prepared { barrier, .. } | Stage::Committed { barrier, .. } => Some(*barrier),
            _ => self.record.last_barrier,
        };
        Effects {
            persist: true,
            events: vec![Event::PhaseChanged {
                phase: self.record.phase(),
                epoch: self.record.epoch,
                barrier,
                reason,
            }],
        }
    }

    fn activate(&mut self, deployment: &str, why: &str, now_ms: u64) -> Effects {
        self.record.active = Some(deployment.into());
        self.record.version += 1;
        self.phase_changed(now_ms, format!("{deployment} is active ({why})"))
    }

    /// Registered gates whose vote a prepare needs: every gate of both deployments.
    fn voters(&self) -> Vec<&str> {
        let Some(plan) = self.record.plan() else {
            return vec![];
        };
        let active = self.record.active.as_deref();
        self.record
            .gates
            .iter()
            .filter(|(_, d)| Some(d.as_str()) == active || **d == plan.candidate)
            .map(|(g, _)| g.as_str())
            .collect()
    }

    fn gates_of<'a>(
        &'a self,
        deployment: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a GateLive)> {
        self.record
            .gates
            .iter()
            .filter(move |(_, d)| *d == deployment)
            .filter_map(|(g, _)| self.live.get(g).map(|l| (g.as_str(), l)))
    }

    /// Minimum watermark over the connected, non-idle gates of a deployment; `Err` when one of
    /// them has none yet. A gate with no channel at all is idle: it has nothing to wait for.
    fn deployment_watermark(&self, deployment: &str) -> Result<Option<EventTime>, ()> {
        let mut min = None;
        for (_, l) in self.gates_of(deployment).filter(|(_, l)| l.conn.is_some()) {
            let p = l.progress;
            if p.idle_channels == p.channels {
                continue;
            }
            let w = p.watermark.ok_or(())?;
            min = Some(min.map_or(w, |m: EventTime| m.min(w)));
        }
        Ok(min)
    }

    /// A registered gate of either deployment of the running cutover whose stream is not open
    /// (a prepare needs every one's vote, and its high mark for the barrier).
    fn absent_voter(&self) -> Option<&str> {
        self.voters()
            .into_iter()
            .find(|g| self.live.get(*g).is_none_or(|l| l.conn.is_none()))
    }

    /// While waiting: what for, for people (`None` otherwise).
    pub fn waiting_for(&self) -> Option<String> {
        let Stage::Waiting { plan } = &self.record.stage else {
            return None;
        };
        if !plan.settings.now {
            return self.readiness().err();
        }
        let gate = self.absent_voter()?;
        Some(format!(
            "gate {gate} is not back since the coordinator restarted (a cutover requested now \
             waits up to one prepare timeout, {} ms, for every gate's high mark)",
            plan.settings.prepare_timeout_ms
        ))
    }

    /// Why the candidate is ready (`Ok`), or what it waits for (`Err`).
    ///
    /// Ready means: at least `min_gates` candidate gates attached; every registered gate of
    /// both deployments attached (a disconnected one could not vote, and its high mark — which
    /// the barrier must cover — is unknown, e.g. after a coordinator restart); and the
    /// candidate's watermark within `max_lag_ms` of the active one's. An active deployment
    /// whose gates are all idle (or have no channel) has nothing to catch up with.
    pub fn readiness(&self) -> Result<String, String> {
        let plan = self.record.plan().ok_or("no cutover is running")?;
        let s = plan.settings;
        let attached = self
            .gates_of(&plan.candidate)
            .filter(|(_, l)| l.conn.is_some())
            .count();
        if attached < s.min_gates as usize {
            return Err(format!(
                "{attached} of the {} candidate gates needed have attached",
                s.min_gates
            ));
        }
        if let Some(gate) = self.absent_voter() {
            let deployment = self.record.gates.get(gate).map_or("?", String::as_str);
            return Err(format!(
                "gate {gate} of {deployment} is not connected (it must vote, and the barrier \
                 must cover its high mark); it is forgotten after the gate expiry"
            ));
        }
        let unknown = |d: &str| format!("the watermark of {d} is not known yet");
        let cand = self
            .deployment_watermark(&plan.candidate)
            .map_err(|()| unknown(&plan.candidate))?;
        let active_id = self
            .record
            .active
            .as_deref()
            .ok_or("no active deployment")?;
        let active = self
            .deployment_watermark(active_id)
            .map_err(|()| unknown(active_id))?;
        match (cand, active) {
            (_, None) => Ok(format!(
                "{attached} candidate gates attached; {active_id} has nothing to catch up with"
            )),
            (Some(c), Some(a)) if c.saturating_add(s.max_lag_ms) >= a => Ok(format!(
                "{attached} candidate gates attached, watermark {c} within {} ms of {a}",
                s.max_lag_ms
            )),
            (Some(c), Some(a)) => Err(format!(
                "candidate watermark {c} is {} ms behind {a} (allowed: {} ms)",
                a.saturating_sub(c),
                s.max_lag_ms
            )),
            (None, Some(_)) => Err(format!(
                "{} has no watermark yet (every channel idle)",
                plan.candidate
            )),
        }
    }

    /// The largest high mark of every gate of both deployments (and every "no" vote's, and the
    /// floor) plus the margin. Only high marks decide: after an aborted attempt the new barrier
    /// follows where the gates are now, not the old barrier.
    fn choose_barrier(&self, margin: i64) -> EventTime {
        let plan_deps: BTreeSet<&str> = self
            .record
            .plan()
            .map(|p| p.candidate.as_str())
            .into_iter()
            .chain(self.record.active.as_deref())
            .collect();
        let highest = self
            .record
            .gates
            .iter()
            .filter(|(_, d)| plan_deps.contains(d.as_str()))
            .filter_map(|(g, _)| self.live.get(g)?.progress.high_mark)
            .chain(self.reported_high)
            .chain(self.record.floor)
            .max();
        highest.map_or(margin, |h| h.saturating_add(margin))
    }

    fn prepare(&mut self, now_ms: u64, why: String) -> Effects {
        let Stage::Waiting { plan } = &self.record.stage else {
            return Effects::default();
        };
        let mut plan = plan.clone();
        plan.attempt += 1;
        let barrier = self.choose_barrier(plan.settings.margin_ms);
        let timeout = plan.settings.prepare_timeout_ms;
        let attempt = plan.attempt;
        self.record.stage = Stage::Prepared { plan, barrier };
        self.record.epoch += 1;
        self.record.version += 1;
        self.record.last_barrier = Some(barrier);
        self.votes.clear();
        self.prepare_deadline_ms = Some(now_ms.saturating_add(timeout));
        let mut fx = self.phase_changed(now_ms, format!("attempt {attempt}: {why}"));
        // Gates that are already known to be ready to vote may make this decidable at once
        // (e.g. no voters at all); the caller's next tick handles the rest.
        if self.voters().is_empty() {
            fx.merge(self.commit(now_ms));
        }
        fx
    }

    fn abort_attempt(&mut self, why: String, now_ms: u64) -> Effects {
        let Stage::Prepared { plan, .. } = &self.record.stage else {
            return Effects::default();
        };
        if plan.attempt >= plan.settings.max_attempts {
            let tries = plan.attempt;
            return self.give_up(
                format!("gave up after {tries} attempts; last: {why}"),
                now_ms,
            );
        }
        // Tell watchers about the abort and go back to waiting: the gates release what they
        // held (a new version without the barrier), and the retry prepares only when the
        // candidate is ready again — with every gate back and its high mark known — so it is
        // never committed far behind the barrier. A `now` cutover retries at once.
        let plan = plan.clone();
        let mut fx = Effects {
            persist: true,
            events: vec![Event::PhaseChanged {
                phase: Phase::Aborted,
                epoch: self.record.epoch,
                barrier: self.record.last_barrier,
                reason: format!("{why}; retrying"),
            }],
        };
        self.record.stage = Stage::Waiting { plan };
        self.record.version += 1;
        self.votes.clear();
        self.prepare_deadline_ms = None;
        fx.merge(self.tick(now_ms));
        if let (Stage::Waiting { .. }, Err(wait)) = (&self.record.stage, self.readiness()) {
            fx.merge(self.phase_changed(now_ms, format!("retry after: {why}; waiting: {wait}")));
        }
        fx
    }

    /// Ends the cutover without a change of active deployment.
    fn give_up(&mut self, why: String, now_ms: u64) -> Effects {
        if matches!(self.record.stage, Stage::Prepared { .. }) {
            self.record.version += 1;
        }
        self.record.stage = Stage::Steady {
            last: Phase::Aborted,
        };
        self.record.last_error = Some(why.clone());
        self.votes.clear();
        self.prepare_deadline_ms = None;
        self.phase_changed(now_ms, why)
    }

    fn commit(&mut self, now_ms: u64) -> Effects {
        let Stage::Prepared { plan, barrier } = &self.record.stage else {
            return Effects::default();
        };
        let (plan, barrier) = (plan.clone(), *barrier);
        let n = self.votes.len();
        self.record.stage = Stage::Committed { plan, barrier };
        self.record.version += 1;
        self.votes.clear();
        self.prepare_deadline_ms = None;
        let mut fx = self.phase_changed(now_ms, format!("all {n} gates voted yes"));
        fx.merge(self.tick(now_ms));
        fx
    }

    /// Every registered outgoing gate is connected and past `target` (or all its channels idle,
    /// or it has none: a gate whose sink subtasks all finished, or that never had one, has
    /// nothing left to emit and must not hold the drain up forever).
    fn drained(&self, target: EventTime) -> bool {
        let Some(active) = self.record.active.as_deref() else {
            return true;
        };
        let registered = self.record.gates.values().filter(|d| *d == active).count();
        let done = self
            .gates_of(active)
            .filter(|(_, l)| {
                let p = l.progress;
                l.conn.is_some()
                    && (p.idle_channels == p.channels || p.watermark.is_some_and(|w| w >= target))
            })
            .count();
        done == registered
    }

    fn complete(&mut self, now_ms: u64) -> Effects {
        let Stage::Committed { plan, barrier } = &self.record.stage else {
            return Effects::default();
        };
        let (plan, barrier) = (plan.clone(), *barrier);
        let outgoing = self.record.active.replace(plan.candidate.clone());
        self.record.retired = outgoing.map(|deployment| Retired {
            deployment,
            floor: self.record.floor,
            barrier,
        });
        self.record.floor = Some(barrier);
        self.record.late_policy = plan.settings.late_policy;
        self.record.stage = Stage::Steady {
            last: Phase::Completed,
        };
        self.record.version += 1;
        self.phase_changed(
            now_ms,
            format!("outgoing deployment drained; {} is active", plan.candidate),
        )
    }

    fn expire_gates(&mut self, now_ms: u64) -> Effects {
        let expiry = self.options.gate_expiry_ms;
        let expired: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| {
                l.disconnected_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= expiry)
            })
            .map(|(g, _)| g.clone())
            .collect();
        let mut fx = Effects::default();
        for gate in expired {
            self.live.remove(&gate);
            self.votes.remove(&gate);
            if let Some(deployment) = self.record.gates.remove(&gate) {
                fx.persist = true;
                fx.events.push(Event::Gate {
                    gate,
                    deployment,
                    kind: GateEventKind::Expired,
                });
            }
        }
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_without_channels_holds_up_neither_readiness_nor_the_drain() {
        // b1 has no sink subtask (or all of its subtasks finished): nothing to wait for.
        let live = GateProgress {
            high_mark: Some(1_000),
            watermark: Some(900),
            channels: 1,
            idle_channels: 0,
        };
        let mut p = Pipeline::new("ns/p", PipelineOptions::default(), 0);
        let _ = p.attach("b0", "blue", 1, live, 0).unwrap();
        let _ = p
            .attach("b1", "blue", 1, GateProgress::default(), 0)
            .unwrap();
        let _ = p.attach("g0", "green", 1, live, 0).unwrap();
        let _ = p
            .attach("g1", "green", 1, GateProgress::default(), 0)
            .unwrap();
        let settings = Settings {
            min_gates: 2,
            ..Settings::default()
        };
        let _ = p.start_cutover("green", settings, 1).unwrap();
        assert_eq!(p.record().phase(), Phase::Prepared, "ready without g1");
        let epoch = p.record().epoch;
        for g in ["b0", "b1", "g0", "g1"] {
            let _ = p.vote(g, 1, epoch, true, None, 2);
        }
        assert_eq!(p.record().phase(), Phase::Committed);
        let past = GateProgress {
            watermark: Some(5_000),
            ..live
        };
        let _ = p.progress("b0", 1, past, 3);
        assert_eq!(p.record().phase(), Phase::Completed, "not waiting for b1");
    }
}
