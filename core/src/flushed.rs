//! A watermark confirmed by a checkpoint: the exact drain for jobs that send no watermarks.
//!
//! A Kafka producer (Flink's `KafkaSink`, a SQL `kafka` table) sends records and nothing else,
//! so the gate cannot know from the wire that a deployment has nothing left below a time. Flink
//! knows, and its REST API says it in two parts:
//!
//! 1. every sink subtask's `currentInputWatermark` ≥ `W`: every non-late record with an event
//!    time below `W` has been handed to the sink writer (chained operators emit synchronously,
//!    and a watermark follows the records before it);
//! 2. a checkpoint *triggered after* `W` held then completes: the at-least-once and exactly-once
//!    `KafkaSink` flush their producer before they acknowledge a checkpoint, and the sidecar's
//!    Kafka front acknowledges a produce only after the gate decided it and the upstream broker
//!    stored it. So every record below `W` is decided and delivered.
//!
//! "Triggered after" is stricter than "newer than the latest completed one": a checkpoint that
//! was already in flight may have passed the writer before the records below `W` reached it.
//! And Flink's REST answers are cached (watermarks come from the metric fetcher, every
//! `metrics.fetcher.update-interval`; checkpoint statistics for `web.refresh-interval`), so ids
//! read in one poll can be older than the watermark read before them. Times cannot: the
//! JobManager's own clock (`now` of a job's details) read *after* the watermark is a moment at
//! which `W` held, and a checkpoint whose `trigger_timestamp` is later, on the same clock, was
//! triggered after it. No clock of the sidecar is compared with Flink's.
//!
//! A restore voids an observation: the restored job replays from an earlier position, and a
//! checkpoint it completes says nothing about records it has not yet re-read. Since a cached
//! watermark may come from before the restore, an observation is void when the job restored
//! after `now - max_metric_age`.
//!
//! [`FlushedWatermark`] keeps that rule without I/O or a clock: the sidecar feeds it what it
//! polled ([`JobSnapshot`]), the seeded simulation feeds it the model's job.

use std::collections::VecDeque;

use crate::EventTime;

/// Observations waiting for their checkpoint; a newer one replaces the oldest beyond this.
const PENDING: usize = 16;

/// One poll of the job, in the order it must be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobSnapshot {
    /// The minimum input watermark over every sink subtask, read first; `None` when a subtask
    /// has none yet or is not running.
    pub sink_watermark: Option<EventTime>,
    /// The JobManager's clock, read after the watermark.
    pub jobmanager_now_ms: u64,
    /// When the latest completed checkpoint was triggered (JobManager clock).
    pub completed_trigger_ms: Option<u64>,
    /// When the job last restored from a checkpoint (JobManager clock).
    pub restored_at_ms: Option<u64>,
    /// The job finished: its input is exhausted and its final flush acknowledged.
    pub finished: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    watermark: EventTime,
    /// The watermark held at this JobManager time.
    held_at_ms: u64,
}

/// The largest watermark below which every record of the job is known to be delivered.
#[derive(Debug, Clone)]
pub struct FlushedWatermark {
    confirmed: Option<EventTime>,
    pending: VecDeque<Pending>,
    max_metric_age_ms: u64,
}

impl FlushedWatermark {
    /// Nothing confirmed yet; a watermark read may be up to `max_metric_age_ms` old.
    pub fn new(max_metric_age_ms: u64) -> Self {
        Self {
            confirmed: None,
            pending: VecDeque::new(),
            max_metric_age_ms,
        }
    }

    /// The confirmed watermark; it never goes back.
    pub fn confirmed(&self) -> Option<EventTime> {
        self.confirmed
    }

    /// Takes one poll into account and returns the confirmed watermark.
    pub fn observe(&mut self, s: &JobSnapshot) -> Option<EventTime> {
        if s.finished {
            self.pending.clear();
            self.confirm(EventTime::MAX);
            return self.confirmed;
        }
        let age = self.max_metric_age_ms;
        // A restore voids what may have been read before it.
        if let Some(r) = s.restored_at_ms {
            self.pending
                .retain(|p| r < p.held_at_ms.saturating_sub(age));
        }
        if let Some(trigger) = s.completed_trigger_ms {
            let mut best = None;
            self.pending.retain(|p| {
                let ok = trigger > p.held_at_ms;
                if ok {
                    best = best.max(Some(p.watermark));
                }
                !ok
            });
            if let Some(w) = best {
                self.confirm(w);
            }
        }
        let restored_lately = s
            .restored_at_ms
            .is_some_and(|r| r >= s.jobmanager_now_ms.saturating_sub(age));
        if let Some(w) = s.sink_watermark
            && !restored_lately
            && w > self.confirmed.unwrap_or(EventTime::MIN)
            && self.pending.back().is_none_or(|p| w > p.watermark)
        {
            if self.pending.len() == PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(Pending {
                watermark: w,
                held_at_ms: s.jobmanager_now_ms,
            });
        }
        self.confirmed
    }

    fn confirm(&mut self, w: EventTime) {
        self.confirmed = Some(self.confirmed.map_or(w, |c| c.max(w)));
        let c = self.confirmed;
        self.pending.retain(|p| Some(p.watermark) > c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: u64 = 10_000;

    /// A poll at JobManager time `now`, the latest completed checkpoint triggered at `trigger`.
    fn snap(wm: Option<i64>, now: u64, trigger: u64) -> JobSnapshot {
        JobSnapshot {
            sink_watermark: wm,
            jobmanager_now_ms: now,
            completed_trigger_ms: Some(trigger),
            restored_at_ms: None,
            finished: false,
        }
    }

    #[test]
    fn a_watermark_is_confirmed_by_a_checkpoint_triggered_after_it_held() {
        let mut f = FlushedWatermark::new(AGE);
        // Seen at 100_500; the latest completed checkpoint was triggered at 100_000.
        assert_eq!(f.observe(&snap(Some(100), 100_500, 100_000)), None);
        // A checkpoint triggered at 100_400 completes: it may have passed the writer before
        // the records below 100 reached it.
        assert_eq!(f.observe(&snap(Some(150), 101_000, 100_400)), None);
        // One triggered at 100_900 was triggered after 100 held: confirmed.
        assert_eq!(f.observe(&snap(Some(200), 101_500, 100_900)), Some(100));
        assert_eq!(f.observe(&snap(Some(210), 102_000, 101_400)), Some(150));
        assert_eq!(f.observe(&snap(Some(220), 102_500, 101_900)), Some(200));
    }

    #[test]
    fn a_restore_voids_what_may_have_been_read_before_it() {
        let mut f = FlushedWatermark::new(AGE);
        f.observe(&snap(Some(100), 100_000, 99_000));
        // Restored at 100_200; the new execution completes a checkpoint before it has re-read
        // everything below 100.
        let restored = |s: JobSnapshot| JobSnapshot {
            restored_at_ms: Some(100_200),
            ..s
        };
        assert_eq!(f.observe(&restored(snap(None, 101_000, 100_800))), None);
        // A watermark read within the metric age of the restore may be the old execution's.
        assert_eq!(
            f.observe(&restored(snap(Some(300), 105_000, 104_800))),
            None
        );
        assert_eq!(f.observe(&restored(snap(None, 106_000, 105_800))), None);
        // Past the age: an observation again, confirmed by a later checkpoint.
        assert_eq!(f.observe(&restored(snap(Some(90), 110_300, 109_900))), None);
        assert_eq!(
            f.observe(&restored(snap(Some(95), 111_000, 110_500))),
            Some(90)
        );
    }

    #[test]
    fn confirmed_never_goes_back_and_a_finished_job_is_flushed() {
        let mut f = FlushedWatermark::new(AGE);
        f.observe(&snap(Some(100), 1_000, 0));
        assert_eq!(f.observe(&snap(Some(50), 2_000, 1_500)), Some(100));
        assert_eq!(f.observe(&snap(Some(60), 3_000, 2_500)), Some(100));
        assert_eq!(f.observe(&snap(Some(i64::MIN), 4_000, 3_500)), Some(100));
        let done = JobSnapshot {
            finished: true,
            ..JobSnapshot::default()
        };
        assert_eq!(f.observe(&done), Some(i64::MAX));
    }

    #[test]
    fn no_checkpoint_no_confirmation_and_pending_is_bounded() {
        let mut f = FlushedWatermark::new(AGE);
        for w in 0..1_000 {
            assert_eq!(f.observe(&snap(Some(w), 5_000 + w as u64, 100)), None);
        }
        assert!(f.pending.len() <= PENDING);
        // The newest observations survive; a checkpoint after them confirms the largest.
        assert_eq!(f.observe(&snap(None, 7_000, 6_500)), Some(999));
    }
}
