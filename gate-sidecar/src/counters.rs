//! The gate's counters, reported to the coordinator in every progress report.

use sluice_core::gate::{AdmitKind, Decision, DropReason};
use sluice_proto::v1;

/// Cumulative per-gate counters since the sidecar started (plus `held`, a current level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Records received from clients.
    pub received: u64,
    /// Records admitted and acknowledged by the sink (owned and late ones).
    pub admitted: u64,
    /// Records dropped because this deployment is a standby.
    pub dropped_shadow: u64,
    /// Records dropped because the other deployment owns them under the barrier.
    pub dropped_barrier: u64,
    /// Late records dropped by policy.
    pub late_dropped: u64,
    /// Late records admitted by `admit-after-drain` and acknowledged by the sink.
    pub late_admitted: u64,
    /// Records held in channel queues right now.
    pub held: u64,
    /// Records dropped as beyond the future horizon.
    pub dropped_future: u64,
    /// The largest event time of those.
    pub future_max: Option<i64>,
    /// Records refused by the Kafka front for want of a usable event time.
    pub no_event_time: u64,
    /// Records the Kafka front received below a checkpoint-confirmed sink watermark.
    pub below_confirmed: u64,
}

/// What happens to a decided record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Goes to the sink; counted as admitted once the sink acknowledges it.
    Admit {
        /// Admitted by the late-record policy.
        late: bool,
    },
    /// Discarded; already counted.
    Drop,
}

impl Counters {
    /// Counts one record taken out of a hold queue with its decision. Drops count at once;
    /// admissions only count once the sink acknowledges them ([`Counters::on_acked`]), because
    /// "admitted" promises delivery.
    pub fn on_decided(&mut self, decision: Decision) -> Verdict {
        self.held = self.held.saturating_sub(1);
        match decision {
            Decision::Admit(AdmitKind::Owned) => Verdict::Admit { late: false },
            Decision::Admit(AdmitKind::Late) => Verdict::Admit { late: true },
            Decision::Drop(DropReason::Shadow) => {
                self.dropped_shadow += 1;
                Verdict::Drop
            }
            Decision::Drop(DropReason::Barrier) => {
                self.dropped_barrier += 1;
                Verdict::Drop
            }
            Decision::Drop(DropReason::Late) => {
                self.late_dropped += 1;
                Verdict::Drop
            }
            Decision::Drop(DropReason::Future) => {
                self.dropped_future += 1;
                Verdict::Drop
            }
            // `ChannelQueue::drain` stops at the first held record and never emits one.
            Decision::Hold => unreachable!("a held record is never drained"),
        }
    }

    /// The sink acknowledged a batch of `admitted` records, `late` of them admitted as late.
    pub fn on_acked(&mut self, admitted: u64, late: u64) {
        self.admitted += admitted;
        self.late_admitted += late;
    }

    /// The wire form for progress reports.
    pub fn to_wire(self) -> v1::GateCounters {
        v1::GateCounters {
            received: self.received,
            admitted: self.admitted,
            dropped_shadow: self.dropped_shadow,
            dropped_barrier: self.dropped_barrier,
            late_dropped: self.late_dropped,
            late_admitted: self.late_admitted,
            held: self.held,
            dropped_future: self.dropped_future,
            future_max_ms: self.future_max,
            refused_no_event_time: self.no_event_time,
            below_confirmed_watermark: self.below_confirmed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decision_lands_in_its_counter() {
        let mut c = Counters {
            held: 5,
            ..Counters::default()
        };
        assert_eq!(
            c.on_decided(Decision::Admit(AdmitKind::Owned)),
            Verdict::Admit { late: false }
        );
        assert_eq!(
            c.on_decided(Decision::Admit(AdmitKind::Late)),
            Verdict::Admit { late: true }
        );
        assert_eq!(
            c.on_decided(Decision::Drop(DropReason::Shadow)),
            Verdict::Drop
        );
        assert_eq!(
            c.on_decided(Decision::Drop(DropReason::Barrier)),
            Verdict::Drop
        );
        assert_eq!(
            c.on_decided(Decision::Drop(DropReason::Late)),
            Verdict::Drop
        );
        assert_eq!(
            (c.dropped_shadow, c.dropped_barrier, c.late_dropped, c.held),
            (1, 1, 1, 0)
        );
        assert_eq!(c.admitted, 0, "admissions count only after the sink ack");
        c.on_acked(2, 1);
        let w = c.to_wire();
        assert_eq!((w.admitted, w.late_admitted), (2, 1));
    }
}
