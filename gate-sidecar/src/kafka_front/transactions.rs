//! Open transactions: records the gate admitted into a Kafka transaction that is not yet
//! committed, so not yet visible to a `read_committed` consumer.
//!
//! A drain is complete when the outgoing deployment's records below the barrier can be read,
//! not merely when they were written: an exactly-once sink writes at once but commits only
//! after the checkpoint, and a job cancelled in between would have its last records aborted.
//! So each open transaction (producer id and epoch) is a floor of the gate's watermark
//! (`WatermarkTracker::set_floor`) at the least event time admitted into it, lifted when
//!
//! - an `EndTxn` for it succeeds through this front (commit or abort: either way nothing of it
//!   is pending any more — aborted records are never visible and the job replays them), or is
//!   refused because the producer was fenced (the transaction is aborted);
//! - an `InitProducerId` through this front gives its transactional id a new producer id or
//!   epoch (the coordinator completes or aborts the old transaction before it answers);
//! - its transaction timeout passed since it opened (the broker has aborted it by then; also
//!   what bounds the wait when the commit went through another sidecar, which Flink's committer
//!   on another TaskManager can do). The timeout is the one the producer asked for in
//!   `InitProducerId`, or [`DEFAULT_TIMEOUT_MS`] (the broker's default maximum) if the front
//!   did not see it.
//!
//! Pure state: no clock (times are passed in), no I/O. Bounded: at most `limit` open
//! transactions (a batch that would open one more is refused, retriable) and `limit` remembered
//! timeouts (the oldest forgotten: the default then applies, which is only slower).

use std::collections::{BTreeMap, VecDeque};

use sluice_core::EventTime;

/// The broker's default `transaction.max.timeout.ms` (15 min): no transaction outlives it.
pub const DEFAULT_TIMEOUT_MS: u64 = 15 * 60 * 1_000;
/// Extra wait past a transaction's timeout before its floor is lifted (the coordinator's abort
/// takes its own time to write the markers).
const TIMEOUT_MARGIN_MS: u64 = 5_000;

/// A producer session: (producer id, epoch).
pub type Producer = (i64, i16);

/// The tracker key of a producer session's floor.
pub fn floor_key((pid, epoch): Producer) -> String {
    format!("kafka-txn/{pid}/{epoch}")
}

#[derive(Debug, Clone)]
struct Open {
    floor: EventTime,
    opened_ms: u64,
    timeout_ms: u64,
    transactional_id: Option<String>,
}

/// Every open transaction the front admitted records into.
#[derive(Debug)]
pub struct OpenTransactions {
    open: BTreeMap<Producer, Open>,
    /// From `InitProducerId`: producer id → (transactional id, timeout ms), oldest first out.
    sessions: BTreeMap<i64, (String, u64)>,
    session_order: VecDeque<i64>,
    limit: usize,
}

/// A transaction whose floor was lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    /// Its producer session.
    pub producer: Producer,
    /// Its transactional id, when the front saw it.
    pub transactional_id: Option<String>,
    /// How long it was open, ms.
    pub open_ms: u64,
}

impl OpenTransactions {
    /// At most `limit` open transactions and remembered sessions.
    pub fn new(limit: usize) -> Self {
        Self {
            open: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_order: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Whether a batch of `producer` may be taken: its transaction is open, or there is room
    /// for one more (checked before the gate decides; concurrent connections may pass the
    /// limit by at most one transaction each).
    pub fn has_room(&self, producer: Producer) -> bool {
        self.open.contains_key(&producer) || self.open.len() < self.limit
    }

    /// Records with least event time `least` were admitted into `producer`'s transaction at
    /// `now_ms`; returns the transaction's floor now.
    pub fn admitted(&mut self, producer: Producer, least: EventTime, now_ms: u64) -> EventTime {
        if let Some(t) = self.open.get_mut(&producer) {
            t.floor = t.floor.min(least);
            return t.floor;
        }
        let session = self.sessions.get(&producer.0);
        self.open.insert(
            producer,
            Open {
                floor: least,
                opened_ms: now_ms,
                timeout_ms: session.map_or(DEFAULT_TIMEOUT_MS, |s| s.1),
                transactional_id: session.map(|s| s.0.clone()),
            },
        );
        least
    }

    /// An `InitProducerId` for `transactional_id` (asking `timeout_ms`) was answered with
    /// `producer`: earlier sessions of that id are over. Returns the transactions that ends.
    pub fn initialized(
        &mut self,
        transactional_id: &str,
        timeout_ms: u64,
        producer: Producer,
        now_ms: u64,
    ) -> Vec<Lifted> {
        if !self.sessions.contains_key(&producer.0) {
            if self.sessions.len() >= self.limit
                && let Some(old) = self.session_order.pop_front()
            {
                self.sessions.remove(&old);
            }
            self.session_order.push_back(producer.0);
        }
        self.sessions
            .insert(producer.0, (transactional_id.to_owned(), timeout_ms));
        let over: Vec<Producer> = self
            .open
            .iter()
            .filter(|(p, t)| {
                **p != producer
                    && (p.0 == producer.0
                        || t.transactional_id.as_deref() == Some(transactional_id))
            })
            .map(|(p, _)| *p)
            .collect();
        over.into_iter()
            .filter_map(|p| self.remove(p, now_ms))
            .collect()
    }

    /// `producer`'s transaction ended (committed, aborted or fenced).
    pub fn ended(&mut self, producer: Producer, now_ms: u64) -> Option<Lifted> {
        self.remove(producer, now_ms)
    }

    /// Transactions open longer than their timeout (and a margin) at `now_ms`.
    pub fn expired(&mut self, now_ms: u64) -> Vec<Lifted> {
        let old: Vec<Producer> = self
            .open
            .iter()
            .filter(|(_, t)| {
                now_ms.saturating_sub(t.opened_ms) >= t.timeout_ms.saturating_add(TIMEOUT_MARGIN_MS)
            })
            .map(|(p, _)| *p)
            .collect();
        old.into_iter()
            .filter_map(|p| self.remove(p, now_ms))
            .collect()
    }

    /// Transactions open now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    fn remove(&mut self, producer: Producer, now_ms: u64) -> Option<Lifted> {
        let t = self.open.remove(&producer)?;
        Some(Lifted {
            producer,
            transactional_id: t.transactional_id,
            open_ms: now_ms.saturating_sub(t.opened_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_is_the_least_event_time_admitted_and_ends_with_the_transaction() {
        let mut t = OpenTransactions::new(10);
        assert_eq!(t.admitted((7, 0), 500, 0), 500);
        assert_eq!(t.admitted((7, 0), 800, 1), 500);
        assert_eq!(t.admitted((7, 0), 300, 2), 300, "an older record lowers it");
        assert_eq!(t.admitted((8, 0), 900, 2), 900);
        assert_eq!(t.len(), 2);
        let l = t.ended((7, 0), 10).expect("open");
        assert_eq!((l.producer, l.open_ms), ((7, 0), 10));
        assert_eq!(t.ended((7, 0), 11), None, "only once");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_new_session_of_the_same_transactional_id_ends_the_old_one() {
        let mut t = OpenTransactions::new(10);
        assert!(t.initialized("job-0-1", 60_000, (7, 0), 0).is_empty());
        t.admitted((7, 0), 100, 1);
        t.admitted((9, 3), 100, 1);
        // The job restarted: the same id, a bumped epoch (the coordinator aborted epoch 0).
        let lifted = t.initialized("job-0-1", 60_000, (7, 1), 5);
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].producer, (7, 0));
        assert_eq!(lifted[0].transactional_id.as_deref(), Some("job-0-1"));
        assert_eq!(t.len(), 1, "another producer's transaction is untouched");
    }

    #[test]
    fn a_transaction_whose_commit_the_front_never_sees_expires_after_its_timeout() {
        let mut t = OpenTransactions::new(10);
        t.initialized("a", 60_000, (1, 0), 0);
        t.admitted((1, 0), 10, 1_000);
        t.admitted((2, 0), 10, 1_000); // session unseen: the default timeout
        assert!(t.expired(1_000 + 60_000).is_empty(), "the margin");
        let e = t.expired(1_000 + 65_000);
        assert_eq!(e.iter().map(|l| l.producer).collect::<Vec<_>>(), [(1, 0)]);
        assert!(t.expired(1_000 + DEFAULT_TIMEOUT_MS).is_empty());
        assert_eq!(t.expired(1_000 + DEFAULT_TIMEOUT_MS + 5_000).len(), 1);
    }

    #[test]
    fn bounded_open_transactions_refuse_and_sessions_forget_the_oldest() {
        let mut t = OpenTransactions::new(2);
        t.admitted((1, 0), 1, 0);
        t.admitted((2, 0), 1, 0);
        assert!(!t.has_room((3, 0)));
        assert!(t.has_room((1, 0)), "an open one still takes records");
        for pid in 10..20 {
            t.initialized(&format!("id-{pid}"), 1_000, (pid, 0), 0);
        }
        assert_eq!(t.sessions.len(), 2);
    }
}
