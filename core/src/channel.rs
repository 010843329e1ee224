//! One channel's ordered hold queue.
//!
//! Records leave a channel in the order they arrived: once one record is held, every later
//! record of the same channel waits behind it, even one that could be decided at once. That keeps
//! each channel's output order (and so Kafka's per-partition order) intact across a cutover.
//! The queue is bounded by its owner: it stops reading the channel while [`ChannelQueue::is_full`].

use std::collections::VecDeque;

use crate::EventTime;
use crate::gate::{Decision, DropReason, GateCore};

/// Anything with an event time can be queued.
pub trait Timed {
    /// The record's event time in ms.
    fn event_time(&self) -> EventTime;

    /// Whether the gate found it beyond its future horizon on arrival
    /// ([`GateCore::is_future`]): it is dropped in its turn, whatever the assignment.
    fn is_future(&self) -> bool {
        false
    }
}

/// A bounded FIFO of records waiting for a decision.
#[derive(Debug)]
pub struct ChannelQueue<R> {
    pending: VecDeque<R>,
    limit: usize,
}

impl<R: Timed> ChannelQueue<R> {
    /// A queue that reports full once it holds `limit` records (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True when the owner must stop reading the channel until a decision frees room.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limit
    }

    /// Queues one record behind those already waiting. The owner checks [`Self::is_full`]
    /// before reading more, so the queue never exceeds `limit` plus one frame's records.
    pub fn push(&mut self, record: R) {
        self.pending.push_back(record);
    }

    /// Decides records from the head, in order, until one must be held. Each decided record is
    /// passed to `emit` with its decision; returns how many were decided.
    pub fn drain(&mut self, gate: &GateCore, mut emit: impl FnMut(R, Decision)) -> usize {
        let mut n = 0;
        while let Some(head) = self.pending.front() {
            let decision = if head.is_future() {
                Decision::Drop(DropReason::Future)
            } else {
                gate.decide(head.event_time())
            };
            if decision == Decision::Hold {
                break;
            }
            let record = self.pending.pop_front().expect("front exists");
            emit(record, decision);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{Admission, Assignment, LatePolicy};

    impl Timed for i64 {
        fn event_time(&self) -> EventTime {
            *self
        }
    }

    fn gate(admission: Admission, version: u64) -> Assignment {
        Assignment {
            version,
            epoch: 1,
            admission,
            late_policy: LatePolicy::Drop,
        }
    }

    #[test]
    fn records_behind_a_held_record_wait_and_leave_in_order() {
        let mut g = GateCore::new();
        g.apply(gate(
            Admission::Outgoing {
                floor: None,
                barrier: 100,
                committed: false,
            },
            1,
        ));
        let mut q = ChannelQueue::new(10);
        for ts in [10, 150, 20, 30] {
            q.push(ts);
        }
        let mut out = vec![];
        assert_eq!(q.drain(&g, |r, d| out.push((r, d))), 1);
        assert_eq!(out.len(), 1, "20 and 30 wait behind the held 150");
        assert_eq!(q.len(), 3);

        g.apply(gate(
            Admission::Outgoing {
                floor: None,
                barrier: 100,
                committed: true,
            },
            2,
        ));
        q.drain(&g, |r, d| out.push((r, d)));
        let order: Vec<i64> = out.iter().map(|(r, _)| *r).collect();
        assert_eq!(order, vec![10, 150, 20, 30]);
        assert!(matches!(out[1].1, Decision::Drop(_)));
        assert!(q.is_empty());
    }

    #[derive(Debug, PartialEq)]
    struct Rec(i64, bool);

    impl Timed for Rec {
        fn event_time(&self) -> EventTime {
            self.0
        }
        fn is_future(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn a_far_future_record_is_dropped_in_its_turn_and_never_counted() {
        const NOW: i64 = 1_700_000_000_000;
        let mut g = GateCore::new();
        g.set_future_horizon(Some(3_600_000));
        let year = 365 * 24 * 3_600_000;
        assert!(!g.is_future(NOW + 3_600_000, NOW), "at the horizon: fine");
        assert!(g.is_future(NOW + 3_600_001, NOW));
        assert!(g.is_future(NOW + year, NOW));
        // A fresh gate holds everything, but a far-future record needs no assignment.
        let mut q = ChannelQueue::new(10);
        for (ts, future) in [(NOW + year, true), (NOW, false)] {
            if !future {
                g.observe(ts);
            }
            q.push(Rec(ts, future));
        }
        let mut out = vec![];
        assert_eq!(q.drain(&g, |r, d| out.push((r, d))), 1);
        assert_eq!(
            out,
            [(Rec(NOW + year, true), Decision::Drop(DropReason::Future))]
        );
        assert_eq!(
            g.high_mark(),
            Some(NOW),
            "the outlier does not move the high mark"
        );
        // Without a horizon nothing is far-future.
        g.set_future_horizon(None);
        assert!(!g.is_future(NOW + year, NOW));
    }

    #[test]
    fn full_is_reported_at_the_limit() {
        let mut q = ChannelQueue::new(2);
        q.push(1);
        assert!(!q.is_full());
        q.push(2);
        assert!(q.is_full());
        // A fresh gate holds everything: nothing drains, the owner must stop reading.
        assert_eq!(q.drain(&GateCore::new(), |_, _| ()), 0);
        assert!(q.is_full());
    }
}
