//! A gate: the admission point of one deployment inside one sidecar.
//!
//! [`GateCore`] holds the gate's current [`Assignment`] (from the coordinator) and its high mark,
//! and decides every record with [`GateCore::decide`]. Applying a prepared assignment yields the
//! gate's [`Vote`]. The caller must make "observe + decide" and "apply + vote" mutually atomic
//! (one lock around the `GateCore`), which is what makes the prepare vote sound: a gate that
//! votes yes has decided no record at or above the barrier.
//!
//! **Far-future records.** One record stamped far ahead (a bad clock, a parsing bug) would
//! raise the high mark, and with it every later barrier, by as much: the incoming deployment
//! would then admit nothing until real time got there, and the persisted ceiling would carry the
//! jump into every restart. A gate with a future horizon ([`GateCore::set_future_horizon`])
//! drops a record whose event time is more than the horizon ahead of the wall clock
//! ([`GateCore::is_future`], [`DropReason::Future`]), counted, and never lets it into the high
//! mark. Dropping is the only sound choice: a record outside the high mark may never be
//! admitted (the other deployment could admit it too after a barrier below it). Every gate drops
//! such records, so none is ever admitted twice; the same horizon as Kafka 4.0's
//! `log.message.timestamp.after.max.ms` default (1 h) means the broker would refuse them anyway.

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// What to do with a late record: one below the floor of a deployment whose predecessor drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    /// Drop and count: no duplicate, possible loss (the default).
    #[default]
    Drop,
    /// Admit and count: no loss, possible duplicate.
    AdmitAfterDrain,
}

/// What a gate does with records, as derived from its role and the pipeline's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "role")]
pub enum Admission {
    /// No cutover: the production deployment admits everything at or above its floor.
    Active {
        /// Records below this belong to a drained predecessor (late).
        floor: Option<EventTime>,
    },
    /// Neither active nor in a cutover: drop everything (shadow).
    Standby,
    /// The active deployment during a cutover (blue).
    Outgoing {
        /// Records below this are late (see [`Admission::Active`]).
        floor: Option<EventTime>,
        /// The barrier T: this deployment owns `[floor, T)`.
        barrier: EventTime,
        /// False while prepared (hold `>= T`), true once committed (drop `>= T`).
        committed: bool,
    },
    /// The candidate during a cutover (green).
    Incoming {
        /// The barrier T: this deployment owns `[T, ∞)`.
        barrier: EventTime,
        /// False while prepared (hold `>= T`), true once committed (admit `>= T`).
        committed: bool,
        /// When the candidate is the deployment the last cutover retired (a rollback), the
        /// range it still owns from then, admitted as before: without it the returning
        /// deployment would drop its own backlog below the earlier barrier as the other's.
        #[serde(default)]
        kept: Option<Kept>,
    },
    /// The former active deployment after the drain: keeps `[floor, T)`, drops the rest.
    Retired {
        /// Records below this are late.
        floor: Option<EventTime>,
        /// The barrier of the cutover that retired it.
        barrier: EventTime,
    },
}

/// The range `[floor, barrier)` a retired deployment owns, kept when it becomes the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// Records below this belong to an earlier deployment.
    pub floor: Option<EventTime>,
    /// The barrier of the cutover that retired it.
    pub barrier: EventTime,
}

impl Kept {
    /// Whether `ts` is in the range.
    pub fn contains(&self, ts: EventTime) -> bool {
        self.floor.is_none_or(|f| ts >= f) && ts < self.barrier
    }
}

/// The full state a coordinator gives a gate. Later versions replace earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Monotonic version of the pipeline's durable state; a lower version is stale.
    pub version: u64,
    /// Cutover epoch; votes name it.
    pub epoch: u64,
    /// What the gate does with records.
    pub admission: Admission,
    /// What to do with late records.
    pub late_policy: LatePolicy,
}

impl Assignment {
    /// The barrier of a prepared (not yet committed) cutover, if this assignment is one.
    pub fn prepared_barrier(&self) -> Option<EventTime> {
        match self.admission {
            Admission::Outgoing {
                barrier,
                committed: false,
                ..
            }
            | Admission::Incoming {
                barrier,
                committed: false,
                ..
            } => Some(barrier),
            _ => None,
        }
    }
}

/// What a gate does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Forward to the sink.
    Admit(AdmitKind),
    /// Discard (counted).
    Drop(DropReason),
    /// Neither yet: wait for the coordinator's decision (bounded; backpressure when full).
    Hold,
}

/// Why a record was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmitKind {
    /// It belongs to this deployment.
    Owned,
    /// It is late and the policy is `admit-after-drain`.
    Late,
}

/// Why a record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// This deployment is a standby: its output is a shadow.
    Shadow,
    /// The other deployment owns this record under the barrier.
    Barrier,
    /// It is late and the policy is `drop`.
    Late,
    /// Its event time is beyond the gate's future horizon (see the module docs).
    Future,
}

/// A gate's vote on a prepared barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// The epoch voted on.
    pub epoch: u64,
    /// Yes iff the gate had seen no record at or above the barrier when it started holding.
    pub yes: bool,
    /// The gate's high mark when it voted.
    pub high_mark: Option<EventTime>,
}

/// The outcome of [`GateCore::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The assignment was older than the one held: ignored.
    Stale,
    /// The assignment is in force (it may equal the one held, e.g. re-sent on reconnect).
    Current {
        /// The vote to send, when the assignment is a prepare.
        vote: Option<Vote>,
    },
}

/// A gate's admission state: assignment, high mark and the vote it gave.
#[derive(Debug, Clone, Default)]
pub struct GateCore {
    assignment: Option<Assignment>,
    /// The oldest assignment version still acceptable: the one in force before a fence.
    min_version: u64,
    high_mark: Option<EventTime>,
    /// The vote given for the current prepared epoch: a yes stays yes, a no stays no.
    vote: Option<Vote>,
    /// Records more than this far ahead of the wall clock are dropped (see the module docs).
    future_horizon_ms: Option<EventTime>,
}

impl GateCore {
    /// A fresh gate: no assignment, so it holds every record (fail closed).
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate restarting after its process lost its state: fail closed like [`Self::new`], but
    /// starting from `high_mark`, the largest event time any earlier incarnation of the same
    /// gate may have decided (the sidecar persists such a ceiling before deciding above it).
    ///
    /// A plain [`Self::new`] after a crash would vote yes on a barrier below records its
    /// predecessor already admitted (or dropped as a shadow), and the other deployment would then
    /// admit them too (or never): the vote is only sound if the high mark covers every decision
    /// ever made under this gate id.
    pub fn resume(high_mark: Option<EventTime>) -> Self {
        Self {
            high_mark,
            ..Self::default()
        }
    }

    /// The gate lost its lease (no word from the coordinator for the lease time): it forgets its
    /// assignment and holds every record, as at start, until the coordinator assigns it again.
    /// The coordinator forgets a gate it has not heard from for its gate expiry, longer than the
    /// lease, and may then complete a cutover without it; a gate still admitting under its old
    /// assignment then would duplicate or lose records. The high mark and the vote stay, and
    /// the same or a newer assignment version is accepted again.
    pub fn fence(&mut self) {
        if let Some(a) = self.assignment.take() {
            self.min_version = a.version;
        }
    }

    /// The assignment in force, if any.
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    /// The largest event time seen on any channel (far-future records aside).
    pub fn high_mark(&self) -> Option<EventTime> {
        self.high_mark
    }

    /// Drops records more than `horizon_ms` ahead of the wall clock from now on (`None`: never).
    pub fn set_future_horizon(&mut self, horizon_ms: Option<EventTime>) {
        self.future_horizon_ms = horizon_ms;
    }

    /// Whether a record with event time `ts`, arriving at wall-clock time `wall_ms` (ms since
    /// the epoch, the caller's clock), is beyond the future horizon: then the caller drops it as
    /// [`DropReason::Future`] and does not [`observe`](Self::observe) it.
    pub fn is_future(&self, ts: EventTime, wall_ms: EventTime) -> bool {
        self.future_horizon_ms
            .is_some_and(|h| ts > wall_ms.saturating_add(h))
    }

    /// Records that a record with event time `ts` was seen. Call before deciding it.
    pub fn observe(&mut self, ts: EventTime) {
        self.high_mark = Some(self.high_mark.map_or(ts, |h| h.max(ts)));
    }

    /// Applies an assignment from the coordinator; returns the vote when it is a prepare.
    pub fn apply(&mut self, next: Assignment) -> Applied {
        let floor = self.assignment.map_or(self.min_version, |cur| cur.version);
        if next.version < floor {
            return Applied::Stale;
        }
        self.assignment = Some(next);
        let Some(barrier) = next.prepared_barrier() else {
            self.vote = None;
            return Applied::Current { vote: None };
        };
        let vote = match self.vote {
            // Once a gate has voted on an epoch its answer is fixed: after a yes it has held
            // everything at or above the barrier, after a no it has seen such a record.
            Some(v) if v.epoch == next.epoch => Vote {
                high_mark: self.high_mark,
                ..v
            },
            _ => Vote {
                epoch: next.epoch,
                yes: self.high_mark.is_none_or(|h| h < barrier),
                high_mark: self.high_mark,
            },
        };
        self.vote = Some(vote);
        Applied::Current { vote: Some(vote) }
    }

    /// Decides one record under the assignment in force.
    pub fn decide(&self, ts: EventTime) -> Decision {
        let Some(a) = &self.assignment else {
            return Decision::Hold;
        };
        decide(&a.admission, a.late_policy, ts)
    }
}

/// The admission table of `DESIGN.md`, one arm per cell.
pub fn decide(admission: &Admission, late: LatePolicy, ts: EventTime) -> Decision {
    let late_decision = match late {
        LatePolicy::Drop => Decision::Drop(DropReason::Late),
        LatePolicy::AdmitAfterDrain => Decision::Admit(AdmitKind::Late),
    };
    let below = |floor: &Option<EventTime>| floor.is_some_and(|f| ts < f);
    match *admission {
        Admission::Active { floor } if below(&floor) => late_decision,
        Admission::Active { .. } => Decision::Admit(AdmitKind::Owned),
        Admission::Standby => Decision::Drop(DropReason::Shadow),
        Admission::Outgoing { floor, .. } | Admission::Retired { floor, .. } if below(&floor) => {
            late_decision
        }
        Admission::Outgoing { barrier, .. } | Admission::Retired { barrier, .. }
            if ts < barrier =>
        {
            Decision::Admit(AdmitKind::Owned)
        }
        Admission::Outgoing {
            committed: false, ..
        } => Decision::Hold,
        Admission::Outgoing {
            committed: true, ..
        }
        | Admission::Retired { .. } => Decision::Drop(DropReason::Barrier),
        Admission::Incoming { kept: Some(k), .. } if k.contains(ts) => {
            Decision::Admit(AdmitKind::Owned)
        }
        Admission::Incoming { barrier, .. } if ts < barrier => Decision::Drop(DropReason::Barrier),
        Admission::Incoming {
            committed: false, ..
        } => Decision::Hold,
        Admission::Incoming {
            committed: true, ..
        } => Decision::Admit(AdmitKind::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: EventTime = 1_000;
    const F: EventTime = 500;
    const ADMIT: Decision = Decision::Admit(AdmitKind::Owned);
    const HOLD: Decision = Decision::Hold;
    const BARRIER: Decision = Decision::Drop(DropReason::Barrier);

    fn gate(admission: Admission, late_policy: LatePolicy) -> GateCore {
        let mut g = GateCore::new();
        g.apply(Assignment {
            version: 1,
            epoch: 1,
            admission,
            late_policy,
        });
        g
    }

    fn out(committed: bool) -> Admission {
        Admission::Outgoing {
            floor: None,
            barrier: T,
            committed,
        }
    }

    fn inc(committed: bool) -> Admission {
        Admission::Incoming {
            barrier: T,
            committed,
            kept: None,
        }
    }

    #[test]
    fn a_returning_deployment_keeps_admitting_its_own_earlier_range() {
        // Blue was retired at 400 (owning [100, 400)); green is active from 400; blue comes
        // back as the candidate with barrier T.
        let kept = Some(Kept {
            floor: Some(100),
            barrier: 400,
        });
        for committed in [false, true] {
            let g = gate(
                Admission::Incoming {
                    barrier: T,
                    committed,
                    kept,
                },
                LatePolicy::Drop,
            );
            assert_eq!(g.decide(99), BARRIER, "an earlier deployment's");
            assert_eq!(g.decide(100), ADMIT, "its own, kept");
            assert_eq!(g.decide(399), ADMIT, "its own, kept");
            assert_eq!(g.decide(400), BARRIER, "green's");
            assert_eq!(g.decide(T - 1), BARRIER, "green's");
            let at_t = if committed { ADMIT } else { HOLD };
            assert_eq!(g.decide(T), at_t);
        }
    }

    #[test]
    fn a_fenced_gate_holds_everything_until_assigned_again_and_keeps_its_vote() {
        let mut g = GateCore::new();
        let prepared = Assignment {
            version: 4,
            epoch: 2,
            admission: out(false),
            late_policy: LatePolicy::Drop,
        };
        g.observe(900);
        let Applied::Current { vote: Some(v) } = g.apply(prepared) else {
            panic!("a prepare gets a vote")
        };
        assert!(v.yes);
        assert_eq!(g.decide(10), ADMIT);
        g.fence();
        assert!(g.assignment().is_none());
        for ts in [10, T - 1, T, T + 1] {
            assert_eq!(g.decide(ts), HOLD, "fenced: {ts} held");
        }
        // An older version is still stale; the same one is taken back, with the same vote.
        let older = Assignment {
            version: 3,
            ..prepared
        };
        assert_eq!(g.apply(older), Applied::Stale);
        g.observe(T + 5);
        let Applied::Current { vote: Some(again) } = g.apply(prepared) else {
            panic!("the same prepare again")
        };
        assert!(again.yes, "a yes stays yes across a fence");
        assert_eq!(g.decide(10), ADMIT);
        assert_eq!(g.decide(T), HOLD);
    }

    // --- the admission table, one test per cell -------------------------------------------

    #[test]
    fn no_cutover_blue_admits_everything() {
        let g = gate(Admission::Active { floor: None }, LatePolicy::Drop);
        for ts in [i64::MIN, 0, T - 1, T, T + 1, i64::MAX] {
            assert_eq!(g.decide(ts), ADMIT, "ts {ts}");
        }
    }

    #[test]
    fn no_cutover_green_drops_as_shadow() {
        let g = gate(Admission::Standby, LatePolicy::AdmitAfterDrain);
        for ts in [i64::MIN, 0, T, i64::MAX] {
            assert_eq!(g.decide(ts), Decision::Drop(DropReason::Shadow));
        }
    }

    #[test]
    fn prepared_blue_admits_below_and_holds_at_or_above() {
        let g = gate(out(false), LatePolicy::Drop);
        assert_eq!(g.decide(T - 1), ADMIT);
        assert_eq!(g.decide(i64::MIN), ADMIT);
        assert_eq!(g.decide(T), HOLD);
        assert_eq!(g.decide(T + 1), HOLD);
    }

    #[test]
    fn prepared_green_drops_below_and_holds_at_or_above() {
        let g = gate(inc(false), LatePolicy::AdmitAfterDrain);
        assert_eq!(g.decide(T - 1), BARRIER);
        assert_eq!(g.decide(T), HOLD);
        assert_eq!(g.decide(i64::MAX), HOLD);
    }

    #[test]
    fn committed_blue_admits_below_and_drops_at_or_above() {
        let g = gate(out(true), LatePolicy::Drop);
        assert_eq!(g.decide(T - 1), ADMIT);
        assert_eq!(g.decide(T), BARRIER);
        assert_eq!(g.decide(T + 1), BARRIER);
    }

    #[test]
    fn committed_green_admits_at_or_above_and_drops_below() {
        let g = gate(inc(true), LatePolicy::AdmitAfterDrain);
        assert_eq!(
            g.decide(T - 1),
            BARRIER,
            "below T is blue's, not late, until drained"
        );
        assert_eq!(g.decide(T), ADMIT);
        assert_eq!(g.decide(T + 1), ADMIT);
    }

    #[test]
    fn aborted_blue_and_green_return_to_no_cutover_and_release_held() {
        let mut blue = gate(out(false), LatePolicy::Drop);
        let mut green = gate(inc(false), LatePolicy::Drop);
        assert_eq!(blue.decide(T + 5), HOLD);
        assert_eq!(green.decide(T + 5), HOLD);
        // Abort = the coordinator's next version puts both back to "no cutover".
        let abort = |admission| Assignment {
            version: 2,
            epoch: 1,
            admission,
            late_policy: LatePolicy::Drop,
        };
        blue.apply(abort(Admission::Active { floor: None }));
        green.apply(abort(Admission::Standby));
        assert_eq!(
            blue.decide(T + 5),
            ADMIT,
            "held record re-decided: admitted by blue"
        );
        assert_eq!(green.decide(T + 5), Decision::Drop(DropReason::Shadow));
        assert_eq!(green.decide(T - 5), Decision::Drop(DropReason::Shadow));
    }

    #[test]
    fn completed_green_admits_at_or_above_and_applies_late_policy_below() {
        let active = Admission::Active { floor: Some(T) };
        let dropping = gate(active, LatePolicy::Drop);
        assert_eq!(dropping.decide(T), ADMIT);
        assert_eq!(dropping.decide(T - 1), Decision::Drop(DropReason::Late));
        let admitting = gate(active, LatePolicy::AdmitAfterDrain);
        assert_eq!(admitting.decide(T - 1), Decision::Admit(AdmitKind::Late));
        assert_eq!(admitting.decide(T + 7), ADMIT);
    }

    #[test]
    fn completed_blue_is_retired_and_keeps_only_its_range() {
        let g = gate(
            Admission::Retired {
                floor: Some(F),
                barrier: T,
            },
            LatePolicy::Drop,
        );
        assert_eq!(g.decide(F), ADMIT);
        assert_eq!(g.decide(T - 1), ADMIT);
        assert_eq!(g.decide(T), BARRIER);
        assert_eq!(g.decide(F - 1), Decision::Drop(DropReason::Late));
    }

    #[test]
    fn outgoing_with_a_floor_treats_records_below_it_as_late() {
        let g = gate(
            Admission::Outgoing {
                floor: Some(F),
                barrier: T,
                committed: false,
            },
            LatePolicy::AdmitAfterDrain,
        );
        assert_eq!(g.decide(F - 1), Decision::Admit(AdmitKind::Late));
        assert_eq!(g.decide(F), ADMIT);
        assert_eq!(g.decide(T), HOLD);
    }

    // --- fail closed, versions and votes ----------------------------------------------------

    #[test]
    fn a_fresh_gate_holds_everything() {
        let g = GateCore::new();
        for ts in [i64::MIN, 0, i64::MAX] {
            assert_eq!(g.decide(ts), HOLD);
        }
    }

    #[test]
    fn stale_assignments_are_ignored() {
        let mut g = gate(Admission::Active { floor: None }, LatePolicy::Drop);
        let old = Assignment {
            version: 0,
            epoch: 0,
            admission: Admission::Standby,
            late_policy: LatePolicy::Drop,
        };
        assert_eq!(g.apply(old), Applied::Stale);
        assert_eq!(g.decide(1), ADMIT);
    }

    #[test]
    fn vote_is_yes_only_below_the_barrier_and_sticks_for_the_epoch() {
        let prepare = |version| Assignment {
            version,
            epoch: 3,
            admission: out(false),
            late_policy: LatePolicy::Drop,
        };
        let mut g = gate(Admission::Active { floor: None }, LatePolicy::Drop);
        g.observe(T - 1);
        let Applied::Current { vote: Some(v) } = g.apply(prepare(2)) else {
            panic!("prepare must yield a vote")
        };
        assert!(v.yes);
        assert_eq!(v.epoch, 3);
        // A record at T arrives after the yes: it is held, and a re-sent prepare is still yes.
        g.observe(T + 10);
        assert_eq!(g.decide(T + 10), HOLD);
        let Applied::Current { vote: Some(again) } = g.apply(prepare(2)) else {
            panic!()
        };
        assert!(again.yes);
        assert_eq!(again.high_mark, Some(T + 10));

        let mut late = gate(Admission::Active { floor: None }, LatePolicy::Drop);
        late.observe(T);
        let Applied::Current { vote: Some(no) } = late.apply(prepare(2)) else {
            panic!()
        };
        assert!(!no.yes, "a gate that already saw T must vote no");
        assert_eq!(no.high_mark, Some(T));
    }

    #[test]
    fn a_resumed_gate_holds_everything_and_votes_on_its_predecessors_high_mark() {
        let mut g = GateCore::resume(Some(T));
        assert_eq!(g.decide(T - 1), HOLD, "fail closed until assigned");
        assert_eq!(g.high_mark(), Some(T));
        let Applied::Current { vote: Some(v) } = g.apply(Assignment {
            version: 1,
            epoch: 1,
            admission: out(false),
            late_policy: LatePolicy::Drop,
        }) else {
            panic!("prepare must yield a vote")
        };
        assert!(!v.yes, "the predecessor may have admitted a record at T");
        assert_eq!(v.high_mark, Some(T));
    }

    #[test]
    fn a_gate_with_no_records_votes_yes() {
        let mut g = GateCore::new();
        let Applied::Current { vote: Some(v) } = g.apply(Assignment {
            version: 1,
            epoch: 1,
            admission: inc(false),
            late_policy: LatePolicy::Drop,
        }) else {
            panic!()
        };
        assert!(v.yes);
        assert_eq!(v.high_mark, None);
    }

    #[test]
    fn exactly_once_across_a_committed_pair_for_every_timestamp() {
        // For every ts, exactly one of blue/green admits once both are committed.
        let blue = gate(out(true), LatePolicy::Drop);
        let green = gate(inc(true), LatePolicy::Drop);
        for ts in (T - 50)..(T + 50) {
            let admitted = [blue.decide(ts), green.decide(ts)]
                .iter()
                .filter(|d| matches!(d, Decision::Admit(_)))
                .count();
            assert_eq!(admitted, 1, "ts {ts}");
        }
    }
}
