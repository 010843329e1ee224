//! Open transactions: records the gate admitted into a Kafka transaction that is not yet
//! committed, so not yet visible to a `read_committed` consumer.
//!
//! A drain is complete when the outgoing deployment's records below the barrier can be read,
//! not merely when they were written: an exactly-once sink writes at once but commits only
//! after the checkpoint, and a job cancelled in between would have its last records aborted.
//! So each open transaction (producer id and epoch) is a floor of the gate's watermark
//! (`WatermarkTracker::set_floor`) at the least event time admitted into it, lifted when
//!
//! - an `EndTxn` aborting it succeeds through this front (aborted records are never visible
//!   and the job replays them), or is refused because the producer was fenced (aborted too);
//! - its commit is *complete*: an `EndTxn` committing it answered OK means only that the
//!   coordinator decided (it answers once `PrepareCommit` is logged and writes the markers
//!   after), and until the markers are written a `read_committed` consumer does not see the
//!   records — the drain must not pass them yet. So after a commit's OK the cluster is asked at once
//!   (below) and the floor lifted when it says the commit is complete; or when a second
//!   `EndTxn` of the same producer session is answered OK with nothing admitted in between
//!   (the coordinator begins no transaction of a session before the last one is complete, and
//!   answers a retried `EndTxn` OK only once it is);
//! - an `InitProducerId` through this front gives its transactional id a new producer id or
//!   epoch (the coordinator completes or aborts the old transaction before it answers);
//! - the cluster says it is over (`DescribeTransactions`, asked by `described`): how a commit
//!   through another sidecar is seen — Flink's committer resumes a writer's transaction with its
//!   producer id and epoch on whichever TaskManager holds the committable, and after a restore
//!   with a producer id this front never saw. The cluster is asked only about a transaction
//!   whose every admitted batch was answered before the question was sent (so the answer
//!   counts those batches), and a "complete" answer lifts it only if nothing was admitted into
//!   it since the question; see [`over`] for what counts as over;
//! - its transaction timeout passed since it opened (the broker has aborted it by then; the
//!   last resort when the cluster cannot be asked). The timeout is the one the producer asked
//!   for in `InitProducerId`, or [`DEFAULT_TIMEOUT_MS`] (the broker's default maximum) if the
//!   front did not see it.
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

/// How long after a produce whose answer was lost (the upstream connection failed with it in
/// flight) the broker may still append it: no question about its transaction before then.
const UNSURE_MS: u64 = 35_000;

#[derive(Debug, Clone)]
struct Open {
    floor: EventTime,
    opened_ms: u64,
    timeout_ms: u64,
    transactional_id: Option<String>,
    /// Batches admitted into it and forwarded, not yet answered by the broker.
    in_flight: u32,
    /// Bumped at every admission: an answer to a question asked before one is stale.
    generation: u64,
    /// No question before this (a batch's answer was lost).
    ask_from_ms: u64,
    /// The generation whose commit the coordinator acknowledged (`EndTxn` OK): committing,
    /// not yet known complete, while it equals `generation`.
    committing: Option<u64>,
    /// When that commit was acknowledged.
    acked_at_ms: u64,
    /// Whether a warning named it unconfirmed since.
    warned: bool,
}

impl Open {
    fn is_committing(&self) -> bool {
        self.committing == Some(self.generation)
    }
}

/// A question for the cluster about one open transaction (see [`OpenTransactions::to_ask`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The producer session whose transaction it is.
    pub producer: Producer,
    /// Its transactional id, which `DescribeTransactions` takes.
    pub transactional_id: String,
    /// The transaction's generation when asked.
    pub generation: u64,
}

/// What `DescribeTransactions` said of a transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The answer's error code (0: the fields below hold).
    pub error_code: i16,
    /// `Empty`, `Ongoing`, `PrepareCommit`, `PrepareAbort`, `CompleteCommit`,
    /// `CompleteAbort`, `Dead`, `PrepareEpochFence`.
    pub state: String,
    /// The id's current producer session.
    pub producer: Producer,
}

/// `TRANSACTIONAL_ID_NOT_FOUND`: the cluster has no transaction for the id (it expired).
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

/// Whether `ours` is over by `answer`, asked after every batch admitted into it was answered:
/// the id has moved on to another producer session (a new producer id, or a bumped epoch: the
/// coordinator completed or aborted ours first), or our session's transaction is complete
/// (committed: its markers are written, so read_committed sees it; aborted: never visible),
/// or nothing is open (`Empty`: ended before; `Dead`, not found: expired). `Ongoing` and the
/// `Prepare…` states are not over (a prepared commit's markers may not all be written) —
/// except for a transaction whose commit was acknowledged (`committing`): then any state but
/// `PrepareCommit` is a later transaction of the session, which the coordinator begins only
/// once ours is complete.
pub fn over(ours: Producer, answer: &Described, committing: bool) -> bool {
    if answer.error_code == TRANSACTIONAL_ID_NOT_FOUND {
        return true;
    }
    if answer.error_code != 0 {
        return false;
    }
    let (pid, epoch) = answer.producer;
    if pid != ours.0 || epoch > ours.1 {
        return true;
    }
    if epoch != ours.1 {
        return false;
    }
    match answer.state.as_str() {
        "Empty" | "CompleteCommit" | "CompleteAbort" | "Dead" => true,
        "PrepareCommit" => false,
        _ => committing,
    }
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
    /// `now_ms` and are about to be forwarded (their answer is due: [`Self::answered`]);
    /// `transactional_id` is the Produce request's. Returns the transaction's floor now.
    pub fn admitted(
        &mut self,
        producer: Producer,
        transactional_id: Option<&str>,
        least: EventTime,
        now_ms: u64,
    ) -> EventTime {
        if let Some(t) = self.open.get_mut(&producer) {
            t.floor = t.floor.min(least);
            t.in_flight += 1;
            t.generation += 1;
            if t.transactional_id.is_none() {
                t.transactional_id = transactional_id.map(str::to_owned);
            }
            return t.floor;
        }
        let session = self.sessions.get(&producer.0);
        self.open.insert(
            producer,
            Open {
                floor: least,
                opened_ms: now_ms,
                timeout_ms: session.map_or(DEFAULT_TIMEOUT_MS, |s| s.1),
                transactional_id: session
                    .map(|s| s.0.clone())
                    .or_else(|| transactional_id.map(str::to_owned)),
                in_flight: 1,
                generation: 1,
                ask_from_ms: 0,
                committing: None,
                acked_at_ms: 0,
                warned: false,
            },
        );
        least
    }

    /// The broker answered (`sure`) the batches admitted into these transactions, or their
    /// answer was lost with the connection (the broker may append them later still).
    pub fn answered(&mut self, producers: &[Producer], sure: bool, now_ms: u64) {
        for p in producers {
            if let Some(t) = self.open.get_mut(p) {
                t.in_flight = t.in_flight.saturating_sub(1);
                if !sure {
                    t.ask_from_ms = t.ask_from_ms.max(now_ms.saturating_add(UNSURE_MS));
                }
            }
        }
    }

    /// At most `limit` questions for the cluster at `now_ms`: transactions whose commit was
    /// acknowledged, then those open at least `min_age_ms` (most end through this front before
    /// that), each with a known transactional id and no batch in flight, the longest open first.
    pub fn to_ask(&self, now_ms: u64, min_age_ms: u64, limit: usize) -> Vec<Question> {
        let mut due: Vec<(&Producer, &Open)> = self
            .open
            .iter()
            .filter(|(_, t)| {
                t.in_flight == 0
                    && t.transactional_id.is_some()
                    && now_ms >= t.ask_from_ms
                    && (t.is_committing() || now_ms.saturating_sub(t.opened_ms) >= min_age_ms)
            })
            .collect();
        due.sort_by_key(|(_, t)| (!t.is_committing(), t.opened_ms));
        due.into_iter()
            .take(limit)
            .filter_map(|(p, t)| {
                Some(Question {
                    producer: *p,
                    transactional_id: t.transactional_id.clone()?,
                    generation: t.generation,
                })
            })
            .collect()
    }

    /// The cluster's `answer` to `question`: lifts the transaction if the answer says it is
    /// [`over`] and nothing was admitted into it since the question was asked.
    pub fn described(
        &mut self,
        question: &Question,
        answer: &Described,
        now_ms: u64,
    ) -> Option<Lifted> {
        let t = self.open.get(&question.producer)?;
        if t.generation != question.generation || t.in_flight > 0 {
            return None;
        }
        if !over(question.producer, answer, t.is_committing()) {
            return None;
        }
        self.remove(question.producer, now_ms)
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

    /// `producer`'s transaction ended without becoming visible (aborted or fenced).
    pub fn ended(&mut self, producer: Producer, now_ms: u64) -> Option<Lifted> {
        self.remove(producer, now_ms)
    }

    /// The coordinator acknowledged committing `producer`'s transaction (`EndTxn` OK): its
    /// records become visible once the markers are written. Lifted now if an earlier commit of
    /// the session was acknowledged with nothing admitted since (that one is complete, see the
    /// module doc); otherwise it is to be asked about at once ([`Self::to_ask`]).
    pub fn commit_acknowledged(
        &mut self,
        producer: Producer,
        transactional_id: &str,
        now_ms: u64,
    ) -> Option<Lifted> {
        let t = self.open.get_mut(&producer)?;
        if t.is_committing() {
            return self.remove(producer, now_ms);
        }
        t.committing = Some(t.generation);
        t.acked_at_ms = now_ms;
        t.warned = false;
        // A producer commits only once every batch of the transaction was acknowledged (a
        // failed one makes it abort instead), and a batch arriving after the commit's
        // `PrepareCommit` is refused: nothing of it is in flight any more, answered or not.
        t.in_flight = 0;
        t.ask_from_ms = 0;
        if t.transactional_id.is_none() {
            t.transactional_id = Some(transactional_id.to_owned());
        }
        None
    }

    /// Acknowledged commits the cluster has not confirmed complete for `after_ms` (each named
    /// once per acknowledgement): worth a warning, they hold the drain.
    pub fn unconfirmed(&mut self, now_ms: u64, after_ms: u64) -> Vec<(Producer, String)> {
        self.open
            .iter_mut()
            .filter(|(_, t)| {
                t.is_committing() && !t.warned && now_ms.saturating_sub(t.acked_at_ms) >= after_ms
            })
            .map(|(p, t)| {
                t.warned = true;
                (*p, t.transactional_id.clone().unwrap_or_default())
            })
            .collect()
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

    /// Whether any acknowledged commit awaits the cluster's word that it is complete.
    pub fn any_committing(&self) -> bool {
        self.open.values().any(Open::is_committing)
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
        assert_eq!(t.admitted((7, 0), None, 500, 0), 500);
        assert_eq!(t.admitted((7, 0), None, 800, 1), 500);
        assert_eq!(
            t.admitted((7, 0), None, 300, 2),
            300,
            "an older record lowers it"
        );
        assert_eq!(t.admitted((8, 0), None, 900, 2), 900);
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
        t.admitted((7, 0), None, 100, 1);
        t.admitted((9, 3), None, 100, 1);
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
        t.admitted((1, 0), None, 10, 1_000);
        t.admitted((2, 0), None, 10, 1_000); // session unseen: the default timeout
        assert!(t.expired(1_000 + 60_000).is_empty(), "the margin");
        let e = t.expired(1_000 + 65_000);
        assert_eq!(e.iter().map(|l| l.producer).collect::<Vec<_>>(), [(1, 0)]);
        assert!(t.expired(1_000 + DEFAULT_TIMEOUT_MS).is_empty());
        assert_eq!(t.expired(1_000 + DEFAULT_TIMEOUT_MS + 5_000).len(), 1);
    }

    #[test]
    fn bounded_open_transactions_refuse_and_sessions_forget_the_oldest() {
        let mut t = OpenTransactions::new(2);
        t.admitted((1, 0), None, 1, 0);
        t.admitted((2, 0), None, 1, 0);
        assert!(!t.has_room((3, 0)));
        assert!(t.has_room((1, 0)), "an open one still takes records");
        for pid in 10..20 {
            t.initialized(&format!("id-{pid}"), 1_000, (pid, 0), 0);
        }
        assert_eq!(t.sessions.len(), 2);
    }

    fn described(state: &str, producer: Producer) -> Described {
        Described {
            error_code: 0,
            state: state.into(),
            producer,
        }
    }

    #[test]
    fn an_acknowledged_commit_holds_until_the_cluster_says_complete_or_the_session_ends_another() {
        let mut t = OpenTransactions::new(10);
        t.admitted((7, 0), None, 100, 0);
        t.answered(&[(7, 0)], true, 1);
        assert!(t.to_ask(2, 1_000, 10).is_empty(), "young, not committing");
        t.admitted((7, 0), None, 90, 1);
        t.answered(&[(7, 0)], false, 1); // an answer lost: no question for a while ...
        assert_eq!(
            t.commit_acknowledged((7, 0), "job-0-1", 2),
            None,
            "decided, not visible"
        );
        assert!(t.any_committing());
        let asked = t.to_ask(3, 1_000, 10);
        assert_eq!(asked.len(), 1, "... but a committed one is asked at once");
        assert!(t.unconfirmed(1_000, 5_000).is_empty());
        assert_eq!(t.unconfirmed(5_002, 5_000).len(), 1);
        assert!(t.unconfirmed(9_000, 5_000).is_empty(), "named once");
        assert_eq!(asked[0].transactional_id, "job-0-1", "named by the EndTxn");
        let prepared = described("PrepareCommit", (7, 0));
        assert_eq!(
            t.described(&asked[0], &prepared, 4),
            None,
            "markers not written"
        );
        // The session's next transaction began and its commit was acknowledged with nothing
        // admitted here in between (its records all dropped): the first one is complete.
        assert!(t.commit_acknowledged((7, 0), "job-0-1", 5).is_some());
        assert_eq!(t.len(), 0);
        // New records after an acknowledged commit: a new transaction, no longer committing.
        t.admitted((8, 0), Some("job-1-1"), 100, 10);
        t.answered(&[(8, 0)], true, 11);
        t.commit_acknowledged((8, 0), "job-1-1", 12);
        t.admitted((8, 0), Some("job-1-1"), 50, 13);
        t.answered(&[(8, 0)], true, 14);
        assert!(!t.any_committing());
        assert_eq!(t.commit_acknowledged((8, 0), "job-1-1", 15), None);
        let asked = t.to_ask(16, 1_000, 10);
        let done = described("CompleteCommit", (8, 0));
        assert!(t.described(&asked[0], &done, 17).is_some());
    }

    #[test]
    fn what_counts_as_over() {
        let ours = (7, 2);
        for committing in [false, true] {
            for state in ["Empty", "CompleteCommit", "CompleteAbort", "Dead"] {
                assert!(over(ours, &described(state, ours), committing), "{state}");
            }
            assert!(!over(ours, &described("PrepareCommit", ours), committing));
            assert!(
                over(ours, &described("Ongoing", (7, 3)), committing),
                "bumped epoch"
            );
            assert!(
                over(ours, &described("Ongoing", (8, 0)), committing),
                "another id"
            );
            assert!(
                !over(ours, &described("CompleteCommit", (7, 1)), committing),
                "older"
            );
        }
        for state in ["Ongoing", "PrepareAbort", "PrepareEpochFence"] {
            assert!(!over(ours, &described(state, ours), false), "{state}");
            assert!(
                over(ours, &described(state, ours), true),
                "{state} after our acknowledged commit: a later transaction"
            );
        }
        let refused = |code| Described {
            error_code: code,
            ..described("", (-1, -1))
        };
        assert!(over(ours, &refused(TRANSACTIONAL_ID_NOT_FOUND), false));
        assert!(
            !over(ours, &refused(16), true),
            "NOT_COORDINATOR: ask again"
        );
        assert!(
            !over(ours, &refused(14), true),
            "COORDINATOR_LOAD_IN_PROGRESS"
        );
    }

    #[test]
    fn the_cluster_is_asked_only_about_answered_batches_and_a_stale_answer_lifts_nothing() {
        let mut t = OpenTransactions::new(10);
        t.admitted((7, 0), Some("job-0-3"), 100, 0);
        t.admitted((8, 0), None, 100, 0); // no transactional id known: cannot be asked
        assert!(t.to_ask(5_000, 1_000, 10).is_empty(), "in flight");
        t.answered(&[(7, 0), (8, 0)], true, 10);
        assert!(t.to_ask(500, 1_000, 10).is_empty(), "too young");
        let asked = t.to_ask(5_000, 1_000, 10);
        assert_eq!(
            asked,
            [Question {
                producer: (7, 0),
                transactional_id: "job-0-3".into(),
                generation: 1
            }]
        );
        // Committed elsewhere, but another batch was admitted while the question was out.
        t.admitted((7, 0), Some("job-0-3"), 50, 5_001);
        let done = described("CompleteCommit", (7, 0));
        assert_eq!(t.described(&asked[0], &done, 5_002), None, "stale");
        t.answered(&[(7, 0)], true, 5_003);
        let again = t.to_ask(5_004, 1_000, 10);
        assert_eq!(again[0].generation, 2);
        assert_eq!(
            t.described(&again[0], &described("Ongoing", (7, 0)), 5_005),
            None
        );
        let lifted = t.described(&again[0], &done, 5_006).expect("over");
        assert_eq!(lifted.transactional_id.as_deref(), Some("job-0-3"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_lost_answer_keeps_questions_away_until_the_broker_can_no_longer_append_it() {
        let mut t = OpenTransactions::new(10);
        t.admitted((7, 0), Some("a"), 100, 0);
        t.answered(&[(7, 0)], false, 1_000);
        assert!(t.to_ask(1_000 + UNSURE_MS - 1, 0, 10).is_empty());
        assert_eq!(t.to_ask(1_000 + UNSURE_MS, 0, 10).len(), 1);
        let mut many = OpenTransactions::new(10);
        for pid in 0..5 {
            many.admitted((pid, 0), Some(&format!("id-{pid}")), 1, 100 - pid as u64);
            many.answered(&[(pid, 0)], true, 100);
        }
        let asked: Vec<i64> = many
            .to_ask(10_000, 0, 2)
            .iter()
            .map(|q| q.producer.0)
            .collect();
        assert_eq!(asked, [4, 3], "at most the limit, the longest open first");
    }
}
