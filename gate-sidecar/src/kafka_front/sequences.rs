//! Idempotent producers through a filter: client sequences mapped to upstream sequences.
//!
//! The broker checks that each (producer id, epoch, partition) sends contiguous sequences and
//! drops an exact retry of one of its last five batches. The front removes the records the gate
//! drops, so upstream it renumbers: a batch's upstream base sequence is the number of records
//! admitted from the client's earlier batches of the same key. A retried client batch (same
//! base sequence and count) gets the same upstream batch again — the same admitted records at
//! the same upstream sequences — whatever the gate would decide now, so the broker's duplicate
//! check still works. The map is bounded; a key it does not know (a sidecar restart, or
//! eviction) whose batch does not start a sequence at 0 is refused with a non-retriable
//! `INVALID_RECORD` naming the cause, so the client fails that batch and Flink restores its
//! checkpoint: never a guessed sequence, so never a lost or duplicated record beyond what the
//! restore replays. (`UNKNOWN_PRODUCER_ID` was the first choice: kafka-clients 4 retries it
//! forever with the same sequence.)

use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per key for retries (the broker keeps five; clients keep up to five in
/// flight).
const RETAINED: usize = 5;

/// (producer id, epoch, topic, partition).
pub type Key = (i64, i16, String, i32);

/// What the client's batch maps to upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A new batch: send the records the gate admits at upstream sequences from `base`, and
    /// [`Sequences::commit`] which were admitted.
    New {
        /// Upstream base sequence.
        base: i32,
    },
    /// A retry of a batch already mapped: send exactly these client indices again, from `base`.
    Retry {
        /// Upstream base sequence.
        base: i32,
        /// Indices (within the client batch) admitted the first time.
        admitted: Vec<u32>,
    },
    /// The front does not know this producer's sequence here (see the module docs).
    Unknown,
    /// Not the next batch and not a retry: a gap in the client's own sequence.
    OutOfOrder,
}

#[derive(Debug, Default)]
struct State {
    /// The client sequence the next new batch must start at.
    next_client: i32,
    /// The upstream sequence of the next admitted record.
    next_upstream: i32,
    /// Recent batches: (client base, record count, upstream base, admitted indices).
    recent: VecDeque<(i32, i32, i32, Vec<u32>)>,
}

/// The mapping of every producer key the front has seen, bounded.
#[derive(Debug)]
pub struct Sequences {
    keys: BTreeMap<Key, State>,
    /// Keys in order of last use, for eviction.
    order: VecDeque<Key>,
    limit: usize,
}

impl Sequences {
    /// A map of at most `limit` keys (the oldest is forgotten beyond that).
    pub fn new(limit: usize) -> Self {
        Self {
            keys: BTreeMap::new(),
            order: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Maps a client batch of `count` records starting at client sequence `base`.
    pub fn map(&mut self, key: &Key, base: i32, count: i32) -> Mapped {
        if let Some(s) = self.keys.get(key) {
            if let Some((_, _, up, admitted)) = s
                .recent
                .iter()
                .find(|(b, n, _, _)| *b == base && *n == count)
            {
                return Mapped::Retry {
                    base: *up,
                    admitted: admitted.clone(),
                };
            }
            if base == s.next_client {
                return Mapped::New {
                    base: s.next_upstream,
                };
            }
            return Mapped::OutOfOrder;
        }
        if base == 0 {
            Mapped::New { base: 0 }
        } else {
            Mapped::Unknown
        }
    }

    /// Records a new batch's outcome: the client indices admitted (sent upstream from the base
    /// [`Mapped::New`] gave).
    pub fn commit(&mut self, key: &Key, base: i32, count: i32, admitted: Vec<u32>) {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= self.limit
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
            self.keys.insert(key.clone(), State::default());
        }
        self.order.retain(|k| k != key);
        self.order.push_back(key.clone());
        let s = self.keys.get_mut(key).expect("inserted above");
        let up = s.next_upstream;
        s.next_client = base.wrapping_add(count);
        s.next_upstream = up.wrapping_add(admitted.len() as i32);
        s.recent.push_back((base, count, up, admitted));
        while s.recent.len() > RETAINED {
            s.recent.pop_front();
        }
    }

    /// Keys known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> Key {
        (7, 0, "t".into(), p)
    }

    #[test]
    fn upstream_sequences_count_only_admitted_records_and_retries_repeat_the_first_answer() {
        let mut s = Sequences::new(10);
        let k = key(0);
        assert_eq!(s.map(&k, 0, 4), Mapped::New { base: 0 });
        s.commit(&k, 0, 4, vec![0, 2]);
        assert_eq!(s.map(&k, 4, 3), Mapped::New { base: 2 });
        s.commit(&k, 4, 3, vec![]);
        // The first batch again (its response was lost): the same two records at 0 and 1.
        assert_eq!(
            s.map(&k, 0, 4),
            Mapped::Retry {
                base: 0,
                admitted: vec![0, 2]
            }
        );
        assert_eq!(s.map(&k, 7, 1), Mapped::New { base: 2 });
        assert_eq!(
            s.map(&k, 9, 1),
            Mapped::OutOfOrder,
            "a gap in the client's sequence"
        );
        // Another partition or epoch is another key; one never seen mid-sequence is unknown.
        assert_eq!(s.map(&key(1), 0, 1), Mapped::New { base: 0 });
        assert_eq!(s.map(&key(1), 5, 1), Mapped::Unknown);
    }

    #[test]
    fn only_five_batches_are_kept_and_the_map_is_bounded() {
        let mut s = Sequences::new(2);
        let k = key(0);
        for i in 0..7 {
            assert_eq!(s.map(&k, i, 1), Mapped::New { base: i });
            s.commit(&k, i, 1, vec![0]);
        }
        assert_eq!(
            s.map(&k, 1, 1),
            Mapped::OutOfOrder,
            "older than the last five"
        );
        assert!(matches!(s.map(&k, 2, 1), Mapped::Retry { base: 2, .. }));
        s.commit(&key(1), 0, 1, vec![0]);
        s.commit(&key(2), 0, 1, vec![0]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.map(&k, 7, 1),
            Mapped::Unknown,
            "the oldest key was forgotten"
        );
    }
}
