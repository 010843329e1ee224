//! The one gate this sidecar serves: its identity and its shared, locked state.
//!
//! All channels and the control task share one [`Gate`]. Its state (the core [`GateCore`], the
//! [`WatermarkTracker`] and the counters) sits behind one `std::sync::Mutex`, because the prepare
//! vote is only sound if "observe + decide a batch" and "apply an assignment + vote" never
//! interleave: a gate that votes yes must not have decided any record at or above the barrier.
//! The lock is never held across an `.await`.
//!
//! Channel tasks wait on a `watch` of a change counter to re-drain their hold queues whenever
//! an assignment is applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sluice_core::gate::{Applied, Assignment, GateCore};
use sluice_core::watermark::WatermarkTracker;
use sluice_proto::convert::role_of;
use sluice_proto::v1;
use tokio::sync::{Notify, watch};

use crate::ceiling::Ceiling;
use crate::counters::Counters;
use crate::known_channels::KnownChannelsError;

/// Who this gate is: the pipeline and deployment it serves, and its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateIdentity {
    /// Pipeline name, `namespace/name`.
    pub pipeline: String,
    /// Deployment id.
    pub deployment: String,
    /// Gate id, stable for the process lifetime.
    pub gate_id: String,
}

/// The state guarded by the gate lock.
#[derive(Debug)]
pub(crate) struct GateState {
    /// Assignment, high mark and vote.
    pub core: GateCore,
    /// Channel watermarks and idleness.
    pub tracker: WatermarkTracker,
    /// Counters for progress reports.
    pub counters: Counters,
    /// The persisted ceiling of decided event times.
    pub ceiling: Ceiling,
    /// The coordinator's lease: when it was last renewed and for how long (`None`: no lease).
    pub lease: Option<Lease>,
    /// Where the channels' watermarks come from (reported, so a drain says if it is exact).
    pub watermark_source: v1::WatermarkSource,
}

/// A lease the coordinator granted with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// When the command that granted it arrived.
    pub renewed: Instant,
    /// How long it lasts from then.
    pub length: Duration,
}

impl Lease {
    /// When it runs out.
    pub fn deadline(&self) -> Instant {
        self.renewed + self.length
    }
}

/// The shared gate.
#[derive(Debug)]
pub(crate) struct Gate {
    identity: GateIdentity,
    state: Mutex<GateState>,
    changes: watch::Sender<u64>,
    /// Woken when a channel id opens, so the channel list is persisted at once.
    channels_changed: Notify,
    /// Bumped (under the lock, with the tracker) each time a channel opens.
    channels_generation: AtomicU64,
    /// What the channel-list writer last managed, by generation.
    channels_written: watch::Sender<ListWrite>,
    /// The lease as last renewed, for the lease watcher.
    lease_renewed: watch::Sender<Option<Lease>>,
    /// Bumped every time the gate fences itself, so the control task re-attaches.
    fences: watch::Sender<u64>,
    started: Instant,
}

/// The channel-list writer's progress: which generation is on disk, which last failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListWrite {
    /// Every channel opened at or before this generation is in the file.
    pub written: u64,
    /// The last write that failed, with the generation it tried to cover.
    pub failed: Option<(u64, Arc<KnownChannelsError>)>,
}

impl Gate {
    /// A gate with no assignment, so every record is held (fail closed), whose high mark
    /// starts at the persisted ceiling of any earlier incarnation.
    pub fn new(
        identity: GateIdentity,
        idle_timeout_ms: u64,
        closed_expiry_ms: u64,
        ceiling: Ceiling,
    ) -> Self {
        Self {
            identity,
            state: Mutex::new(GateState {
                core: GateCore::resume(ceiling.current()),
                ceiling,
                tracker: WatermarkTracker::new(idle_timeout_ms, closed_expiry_ms),
                counters: Counters::default(),
                lease: None,
                watermark_source: v1::WatermarkSource::Explicit,
            }),
            changes: watch::channel(0).0,
            channels_changed: Notify::new(),
            channels_generation: AtomicU64::new(0),
            channels_written: watch::channel(ListWrite::default()).0,
            lease_renewed: watch::channel(None).0,
            fences: watch::channel(0).0,
            started: Instant::now(),
        }
    }

    /// Who the gate is.
    pub fn identity(&self) -> &GateIdentity {
        &self.identity
    }

    /// Milliseconds since the sidecar started, on a monotonic clock (the tracker's time base).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes the gate lock. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panic under the lock leaves no half-applied state behind (every critical section
        // mutates plain values), so carrying on beats taking every channel down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts channel `id` open in the tracker and asks the channel-list writer to persist it;
    /// returns the generation [`Gate::channel_durable`] waits for.
    pub fn open_channel(&self, id: &str) -> u64 {
        let now = self.now_ms();
        let generation = {
            let mut state = self.lock();
            state.tracker.on_open(id, now);
            // Under the lock, so a writer's snapshot of the list and the generation agree.
            self.channels_generation.fetch_add(1, Ordering::Relaxed) + 1
        };
        self.channels_changed.notify_one();
        generation
    }

    /// Asks the channel-list writer to drop a channel the tracker forgot on close (one that
    /// never spoke or finished), so a restarted sidecar does not wait for it.
    pub fn channel_forgotten(&self) {
        self.channels_changed.notify_one();
    }

    /// Completes when a channel opened or was forgotten since the last call.
    pub async fn channels_changed_wait(&self) {
        self.channels_changed.notified().await;
    }

    /// The channels known now and the generation that list covers, taken together.
    pub fn channels_snapshot(&self) -> (u64, Vec<String>) {
        let now = self.now_ms();
        let state = self.lock();
        let generation = self.channels_generation.load(Ordering::Relaxed);
        (
            generation,
            state.tracker.known(now).map(str::to_owned).collect(),
        )
    }

    /// Records what the channel-list writer managed for `generation`.
    pub fn channels_written(&self, generation: u64, result: Result<(), KnownChannelsError>) {
        self.channels_written.send_modify(|w| match result {
            Ok(()) => w.written = w.written.max(generation),
            Err(e) => w.failed = Some((generation, Arc::new(e))),
        });
    }

    /// Completes when the channel list on disk covers `generation`, or fails with the write
    /// error when the write that should have covered it failed.
    pub async fn channel_durable(&self, generation: u64) -> Result<(), Arc<KnownChannelsError>> {
        let mut rx = self.channels_written.subscribe();
        let w = rx
            .wait_for(|w| {
                w.written >= generation || w.failed.as_ref().is_some_and(|f| f.0 >= generation)
            })
            .await
            .expect("the gate owns the sender");
        match &w.failed {
            Some((_, e)) if w.written < generation => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// A receiver that wakes whenever an assignment is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Applies an assignment and computes the vote atomically with respect to every decision,
    /// then wakes the channels so they re-decide their held records.
    pub fn apply(&self, next: Assignment) -> Applied {
        let (applied, previous) = {
            let mut state = self.lock();
            let previous = state.core.assignment().copied();
            (state.core.apply(next), previous)
        };
        match applied {
            Applied::Stale => {
                tracing::debug!(
                    version = next.version,
                    held = previous.map(|a| a.version),
                    "ignoring stale assignment"
                );
            }
            Applied::Current { .. } => {
                if previous != Some(next) {
                    log_assignment(&next);
                }
                self.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        applied
    }

    /// A command from the coordinator arrived granting `lease_ms` (0: no lease). Call before
    /// applying what it carries, so a fence can never undo an assignment that came after it.
    pub fn renew_lease(&self, lease_ms: u64) {
        let lease = (lease_ms > 0).then(|| Lease {
            renewed: Instant::now(),
            length: Duration::from_millis(lease_ms),
        });
        self.lock().lease = lease;
        self.lease_renewed.send_replace(lease);
    }

    /// The lease as last renewed, watched by the lease task.
    pub fn watch_lease(&self) -> watch::Receiver<Option<Lease>> {
        self.lease_renewed.subscribe()
    }

    /// Fences the gate if `seen` is still the lease in force and it has run out: the gate
    /// forgets its assignment and holds every record (see `GateCore::fence`). Returns whether
    /// it fenced.
    pub fn fence_if_expired(&self, seen: Lease) -> bool {
        let fenced = {
            let mut state = self.lock();
            if state.lease != Some(seen) || Instant::now() < seen.deadline() {
                return false;
            }
            let version = state.core.assignment().map(|a| a.version);
            state.core.fence();
            version
        };
        let Some(version) = fenced else {
            return false;
        };
        tracing::warn!(
            lease = %humantime::format_duration(seen.length),
            assignment_version = version,
            "no word from the coordinator for the whole lease: it may have forgotten this gate \
             and completed a cutover without it, so every record is held until it assigns this \
             gate again"
        );
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.fences.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// A receiver that changes every time the gate fences itself.
    pub fn watch_fences(&self) -> watch::Receiver<u64> {
        self.fences.subscribe()
    }

    /// The version of the assignment in force; `None` for a fresh gate.
    pub fn assignment_version(&self) -> Option<u64> {
        self.lock().core.assignment().map(|a| a.version)
    }

    /// A progress report as of now.
    pub fn progress(&self) -> v1::GateProgress {
        let now = self.now_ms();
        let mut state = self.lock();
        let clock = state.tracker.clock(now);
        v1::GateProgress {
            high_mark_ms: state.core.high_mark(),
            watermark_ms: clock.watermark,
            channels: clock.channels,
            idle_channels: clock.idle_channels,
            counters: Some(state.counters.to_wire()),
            watermark_source: state.watermark_source as i32,
        }
    }
}

fn log_assignment(a: &Assignment) {
    let (barrier, committed) = match a.admission {
        sluice_core::gate::Admission::Outgoing {
            barrier, committed, ..
        }
        | sluice_core::gate::Admission::Incoming {
            barrier, committed, ..
        } => (Some(barrier), Some(committed)),
        sluice_core::gate::Admission::Retired { barrier, .. } => (Some(barrier), None),
        sluice_core::gate::Admission::Active { .. } | sluice_core::gate::Admission::Standby => {
            (None, None)
        }
    };
    tracing::info!(
        version = a.version,
        epoch = a.epoch,
        role = role_of(&a.admission).as_str_name(),
        barrier_ms = barrier,
        committed,
        late_policy = ?a.late_policy,
        "assignment changed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::gate::{Admission, LatePolicy};

    fn identity() -> GateIdentity {
        GateIdentity {
            pipeline: "a/b".into(),
            deployment: "d".into(),
            gate_id: "g".into(),
        }
    }

    fn gate() -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let ceiling = Ceiling::load(&dir.path().join("hm"), 1_000).unwrap();
        Gate::new(identity(), 1_000, 60_000, ceiling)
    }

    #[test]
    fn a_restarted_gate_starts_from_the_persisted_ceiling_and_votes_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm");
        let mut before = Ceiling::load(&path, 1_000).unwrap();
        before.cover(5_000).unwrap();
        // The sidecar crashes; its successor loads the same file.
        let g = Gate::new(
            identity(),
            1_000,
            60_000,
            Ceiling::load(&path, 1_000).unwrap(),
        );
        assert_eq!(g.lock().core.high_mark(), Some(6_000));
        let prepare = assignment(
            1,
            Admission::Outgoing {
                floor: None,
                barrier: 5_500,
                committed: false,
            },
        );
        let Applied::Current { vote: Some(v) } = g.lock().core.apply(prepare) else {
            panic!("a prepare yields a vote")
        };
        assert!(!v.yes, "its predecessor may have decided up to 6000");
    }

    fn assignment(version: u64, admission: Admission) -> Assignment {
        Assignment {
            version,
            epoch: 1,
            admission,
            late_policy: LatePolicy::Drop,
        }
    }

    #[tokio::test]
    async fn applying_wakes_subscribers_but_stale_assignments_do_not() {
        let g = gate();
        let mut rx = g.subscribe();
        g.apply(assignment(2, Admission::Standby));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(
            g.apply(assignment(1, Admission::Active { floor: None })),
            Applied::Stale
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(g.assignment_version(), Some(2));
    }

    #[test]
    fn progress_reports_high_mark_and_counters() {
        let g = gate();
        {
            let mut s = g.lock();
            s.core.observe(42);
            s.counters.received = 3;
            s.tracker.on_watermark("c", 40, g.now_ms());
        }
        let p = g.progress();
        assert_eq!(p.high_mark_ms, Some(42));
        assert_eq!(p.watermark_ms, Some(40));
        assert_eq!(p.channels, 1);
        assert_eq!(p.counters.unwrap().received, 3);
    }
}
