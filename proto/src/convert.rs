//! Conversions between the wire types of [`crate::v1`] and the pure types of `sluice-core`.
//!
//! Decoding from the wire is fallible ([`ConvertError`]): a field combination the protocol does
//! not allow is refused rather than guessed at.

use sluice_core::gate::{Admission, Assignment, Kept, LatePolicy};
use sluice_core::pipeline::{GateProgress, Phase};
use thiserror::Error;

use crate::v1;

/// A wire message that does not describe a valid core value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertError {
    /// The role is unset or unknown.
    #[error("gate assignment has no valid role ({0})")]
    Role(i32),
    /// A role that needs a barrier came without one.
    #[error("gate assignment with role {0:?} has no barrier")]
    MissingBarrier(v1::GateRole),
}

impl From<LatePolicy> for v1::LatePolicy {
    fn from(p: LatePolicy) -> Self {
        match p {
            LatePolicy::Drop => v1::LatePolicy::Drop,
            LatePolicy::AdmitAfterDrain => v1::LatePolicy::AdmitAfterDrain,
        }
    }
}

impl From<v1::LatePolicy> for LatePolicy {
    fn from(p: v1::LatePolicy) -> Self {
        match p {
            v1::LatePolicy::Unspecified | v1::LatePolicy::Drop => LatePolicy::Drop,
            v1::LatePolicy::AdmitAfterDrain => LatePolicy::AdmitAfterDrain,
        }
    }
}

impl From<Phase> for v1::Phase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Steady => v1::Phase::Steady,
            Phase::Waiting => v1::Phase::Waiting,
            Phase::Prepared => v1::Phase::Prepared,
            Phase::Committed => v1::Phase::Committed,
            Phase::Aborted => v1::Phase::Aborted,
            Phase::Completed => v1::Phase::Completed,
        }
    }
}

/// The wire role of an admission.
pub fn role_of(a: &Admission) -> v1::GateRole {
    match a {
        Admission::Active { .. } => v1::GateRole::Active,
        Admission::Standby => v1::GateRole::Standby,
        Admission::Outgoing { .. } => v1::GateRole::Outgoing,
        Admission::Incoming { .. } => v1::GateRole::Incoming,
        Admission::Retired { .. } => v1::GateRole::Retired,
    }
}

/// Encodes an assignment; `phase` is the pipeline's phase (shown, not needed to decide).
pub fn assignment_to_wire(a: &Assignment, phase: Phase) -> v1::GateAssignment {
    let (barrier, floor, phase) = match a.admission {
        Admission::Active { floor } => (None, floor, phase),
        Admission::Standby => (None, None, phase),
        Admission::Outgoing {
            floor,
            barrier,
            committed,
        } => (Some(barrier), floor, prepared_or_committed(committed)),
        Admission::Incoming {
            barrier, committed, ..
        } => (Some(barrier), None, prepared_or_committed(committed)),
        Admission::Retired { floor, barrier } => (Some(barrier), floor, phase),
    };
    let kept = match a.admission {
        Admission::Incoming { kept, .. } => kept,
        _ => None,
    };
    v1::GateAssignment {
        version: a.version,
        epoch: a.epoch,
        role: role_of(&a.admission) as i32,
        phase: v1::Phase::from(phase) as i32,
        barrier_ms: barrier,
        floor_ms: floor,
        late_policy: v1::LatePolicy::from(a.late_policy) as i32,
        kept_floor_ms: kept.and_then(|k| k.floor),
        kept_barrier_ms: kept.map(|k| k.barrier),
    }
}

fn prepared_or_committed(committed: bool) -> Phase {
    if committed {
        Phase::Committed
    } else {
        Phase::Prepared
    }
}

/// Decodes an assignment. OUTGOING/INCOMING are committed iff the phase is COMMITTED.
pub fn assignment_from_wire(w: &v1::GateAssignment) -> Result<Assignment, ConvertError> {
    let role = v1::GateRole::try_from(w.role).map_err(|_| ConvertError::Role(w.role))?;
    let committed = w.phase == v1::Phase::Committed as i32;
    let barrier = || w.barrier_ms.ok_or(ConvertError::MissingBarrier(role));
    let admission = match role {
        v1::GateRole::Unspecified => return Err(ConvertError::Role(w.role)),
        v1::GateRole::Active => Admission::Active { floor: w.floor_ms },
        v1::GateRole::Standby => Admission::Standby,
        v1::GateRole::Outgoing => Admission::Outgoing {
            floor: w.floor_ms,
            barrier: barrier()?,
            committed,
        },
        v1::GateRole::Incoming => Admission::Incoming {
            barrier: barrier()?,
            committed,
            kept: w.kept_barrier_ms.map(|barrier| Kept {
                floor: w.kept_floor_ms,
                barrier,
            }),
        },
        v1::GateRole::Retired => Admission::Retired {
            floor: w.floor_ms,
            barrier: barrier()?,
        },
    };
    Ok(Assignment {
        version: w.version,
        epoch: w.epoch,
        admission,
        late_policy: v1::LatePolicy::try_from(w.late_policy)
            .unwrap_or(v1::LatePolicy::Drop)
            .into(),
    })
}

impl From<&v1::GateProgress> for GateProgress {
    fn from(p: &v1::GateProgress) -> Self {
        GateProgress {
            high_mark: p.high_mark_ms,
            watermark: p.watermark_ms,
            channels: p.channels,
            idle_channels: p.idle_channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admission_round_trips() {
        let admissions = [
            Admission::Active { floor: None },
            Admission::Active { floor: Some(5) },
            Admission::Standby,
            Admission::Outgoing {
                floor: Some(1),
                barrier: 9,
                committed: false,
            },
            Admission::Outgoing {
                floor: None,
                barrier: 9,
                committed: true,
            },
            Admission::Incoming {
                barrier: 9,
                committed: false,
                kept: None,
            },
            Admission::Incoming {
                barrier: 9,
                committed: true,
                kept: Some(Kept {
                    floor: Some(1),
                    barrier: 5,
                }),
            },
            Admission::Incoming {
                barrier: 9,
                committed: false,
                kept: Some(Kept {
                    floor: None,
                    barrier: 5,
                }),
            },
            Admission::Retired {
                floor: Some(2),
                barrier: 9,
            },
        ];
        for admission in admissions {
            for late_policy in [LatePolicy::Drop, LatePolicy::AdmitAfterDrain] {
                let a = Assignment {
                    version: 7,
                    epoch: 3,
                    admission,
                    late_policy,
                };
                let wire = assignment_to_wire(&a, Phase::Completed);
                assert_eq!(assignment_from_wire(&wire), Ok(a));
            }
        }
    }

    #[test]
    fn refuses_assignments_it_cannot_act_on() {
        let mut w = v1::GateAssignment {
            role: 0,
            ..Default::default()
        };
        assert_eq!(assignment_from_wire(&w), Err(ConvertError::Role(0)));
        w.role = 99;
        assert_eq!(assignment_from_wire(&w), Err(ConvertError::Role(99)));
        w.role = v1::GateRole::Incoming as i32;
        assert_eq!(
            assignment_from_wire(&w),
            Err(ConvertError::MissingBarrier(v1::GateRole::Incoming))
        );
    }
}
