//! Per-channel watermarks and idleness, folded into one gate watermark.
//!
//! A channel is idle when the client said so, or when it sent no record and no watermark for
//! `idle_timeout_ms`. Idle channels are excluded from the gate watermark until they speak again.
//!
//! A busy channel is never idle either: one the sidecar has undelivered records of, or has
//! stopped reading (backpressure). Its silence is the sidecar's doing, not the client's having
//! nothing to say, and a drain that skipped it would complete with its records below the
//! barrier undelivered (a broker outage long enough would hand the outgoing deployment over to
//! a teardown with its last records still in the sidecar). The idle timeout starts again when
//! it stops being busy.
//!
//! A channel whose connection closed is never idle: it keeps counting with its last watermark
//! until a channel with the same id opens again (a restarted sink subtask) or
//! `closed_expiry_ms` passes. A crashed or restarting sink subtask will replay from its
//! checkpoint, so until it is back the gate cannot know it has nothing left below the barrier
//! (a real Flink TaskManager failover takes longer than any sensible idle timeout). A client
//! that is done says so with a final `i64::MAX` watermark before closing, and then does not
//! hold anything up.
//!
//! Two kinds of closed channel are forgotten at once instead ([`Closed::Forgotten`]), because
//! the gate owes nothing for them:
//! - one whose id never brought the gate a record or a watermark, on any connection (a client
//!   that said `Hello` and failed, or a connection refused for bad input). The gate has no
//!   more reason to wait for it than for a subtask that has not connected yet; if the same
//!   subtask comes back it opens as a new channel. A subtask that *did* send something, failed
//!   and reconnects keeps counting, however its later connections end (the case the closed
//!   rule exists for).
//! - one whose watermark is `i64::MAX` (finished: every record before it was delivered, since
//!   a watermark reaches the tracker only then).
//!
//! A floor ([`WatermarkTracker::set_floor`]) is the lowest event time of records that left
//! every channel but are not yet visible downstream — a Kafka transaction the sidecar admitted
//! them into and that is not committed yet. The gate watermark never passes a floor: a drain
//! is complete only when what it admitted can be read, not merely when it was written.
//!
//! The sidecar persists the ids the tracker knows ([`WatermarkTracker::known`]), so neither
//! kind comes back as "closed, watermark unknown" after a sidecar restart.

use std::collections::BTreeMap;

use crate::EventTime;

#[derive(Debug, Clone)]
struct ChannelClock {
    watermark: Option<EventTime>,
    last_active_ms: u64,
    idle_marked: bool,
    /// Connections open under this channel id (a reconnect may open before the old one closes).
    connections: u32,
    /// When the last connection closed; `None` while one is open.
    closed_at_ms: Option<u64>,
    /// Connections of this id the sidecar has work outstanding for (see the module docs).
    busy: u32,
    /// A record or a watermark arrived under this id (or an earlier sidecar run knew it).
    spoke: bool,
}

impl ChannelClock {
    /// A channel first seen at `now_ms`, without a watermark or a connection.
    fn new(now_ms: u64, closed_at_ms: Option<u64>) -> Self {
        Self {
            watermark: None,
            last_active_ms: now_ms,
            idle_marked: false,
            connections: 0,
            closed_at_ms,
            busy: 0,
            spoke: closed_at_ms.is_some(),
        }
    }

    /// Nothing is owed for it once closed (see the module docs).
    fn owes_nothing(&self) -> bool {
        !self.spoke || self.watermark == Some(EventTime::MAX)
    }

    fn idle(&self, now_ms: u64, idle_timeout_ms: u64) -> bool {
        self.closed_at_ms.is_none()
            && self.busy == 0
            && (self.idle_marked || now_ms.saturating_sub(self.last_active_ms) >= idle_timeout_ms)
    }

    fn expired(&self, now_ms: u64, closed_expiry_ms: u64) -> bool {
        self.closed_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= closed_expiry_ms)
    }
}

/// What closing a connection did to its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Another connection of the id is still open.
    StillOpen,
    /// The channel keeps counting, closed, until it reconnects or expires.
    Counting,
    /// The channel is forgotten: it never spoke, or it finished (see the module docs).
    Forgotten,
    /// The id was not tracked.
    Unknown,
}

/// The gate-level view: what the coordinator needs for readiness and drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateClock {
    /// Minimum watermark over non-idle channels; `None` when a non-idle channel has none yet,
    /// or when every channel is idle.
    pub watermark: Option<EventTime>,
    /// Channels tracked (open, or closed and not yet back or expired), and floors: an open
    /// transaction is never idle, so a gate holding one is never "all idle, nothing owed".
    pub channels: u32,
    /// Of those, how many are idle.
    pub idle_channels: u32,
}

/// Tracks the channels of one gate.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    channels: BTreeMap<String, ChannelClock>,
    /// Floors by key (see the module docs).
    floors: BTreeMap<String, EventTime>,
    idle_timeout_ms: u64,
    closed_expiry_ms: u64,
}

impl WatermarkTracker {
    /// A tracker that marks open channels idle after `idle_timeout_ms` of silence and forgets
    /// closed ones `closed_expiry_ms` after they closed.
    pub fn new(idle_timeout_ms: u64, closed_expiry_ms: u64) -> Self {
        Self {
            channels: BTreeMap::new(),
            floors: BTreeMap::new(),
            idle_timeout_ms,
            closed_expiry_ms,
        }
    }

    fn touch(&mut self, channel: &str, now_ms: u64) -> &mut ChannelClock {
        let c = self
            .channels
            .entry(channel.to_owned())
            .or_insert(ChannelClock::new(now_ms, None));
        c.last_active_ms = now_ms;
        c.idle_marked = false;
        c
    }

    /// A channel opened (or re-opened with the same id after a reconnect).
    pub fn on_open(&mut self, channel: &str, now_ms: u64) {
        // An expired channel that was not swept yet starts afresh, as if it had been.
        let expiry = self.closed_expiry_ms;
        if self
            .channels
            .get(channel)
            .is_some_and(|c| c.expired(now_ms, expiry))
        {
            self.channels.remove(channel);
        }
        let c = self.touch(channel, now_ms);
        c.connections += 1;
        c.closed_at_ms = None;
    }

    /// Sets (or moves, either way) the floor under `key`: the gate watermark stays at or below
    /// `floor` until [`WatermarkTracker::lift_floor`].
    pub fn set_floor(&mut self, key: &str, floor: EventTime) {
        self.floors.insert(key.to_owned(), floor);
    }

    /// Removes the floor under `key` (its records became visible, or will never be).
    pub fn lift_floor(&mut self, key: &str) {
        self.floors.remove(key);
    }

    /// Floors set now.
    pub fn floors(&self) -> usize {
        self.floors.len()
    }

    /// The channel sent a record: it is not idle.
    pub fn on_record(&mut self, channel: &str, now_ms: u64) {
        self.touch(channel, now_ms).spoke = true;
    }

    /// The channel sent a watermark. Watermarks never go backwards on one channel.
    pub fn on_watermark(&mut self, channel: &str, watermark: EventTime, now_ms: u64) {
        let c = self.touch(channel, now_ms);
        c.spoke = true;
        c.watermark = Some(c.watermark.map_or(watermark, |w| w.max(watermark)));
    }

    /// The client marked the channel idle.
    pub fn on_idle(&mut self, channel: &str) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.idle_marked = true;
        }
    }

    /// One connection of the channel has (`true`) or no longer has (`false`) work outstanding
    /// for the sidecar; each `true` is matched by one `false`. While any connection of the id is
    /// busy it is not idle (an old connection still waiting for the sink while the restarted
    /// subtask's new one is quiet counts), and its idle timeout starts again when none is.
    pub fn set_busy(&mut self, channel: &str, busy: bool, now_ms: u64) {
        if let Some(c) = self.channels.get_mut(channel) {
            if busy {
                c.busy += 1;
            } else if c.busy > 0 {
                c.busy -= 1;
                if c.busy == 0 {
                    c.last_active_ms = now_ms;
                }
            }
        }
    }

    /// One connection of the channel closed. When it was the last, the channel keeps counting
    /// until it opens again or expires — unless it owes nothing (see the module docs).
    pub fn on_close(&mut self, channel: &str, now_ms: u64) -> Closed {
        let Some(c) = self.channels.get_mut(channel) else {
            return Closed::Unknown;
        };
        c.connections = c.connections.saturating_sub(1);
        if c.connections > 0 {
            return Closed::StillOpen;
        }
        if c.owes_nothing() {
            self.channels.remove(channel);
            return Closed::Forgotten;
        }
        c.closed_at_ms = Some(now_ms);
        c.busy = 0;
        Closed::Counting
    }

    /// A channel an earlier run of this gate had (persisted by the sidecar), known again as
    /// closed at `now_ms`: it counts until it reconnects or expires, like a channel whose
    /// connection just closed — but with no watermark: records the crashed run held or had not
    /// yet delivered come again from the client's replay, below the watermark it had sent, so
    /// that watermark no longer bounds what is to come. Ignored if already known.
    pub fn restore_closed(&mut self, channel: &str, now_ms: u64) {
        self.channels
            .entry(channel.to_owned())
            .or_insert(ChannelClock::new(now_ms, Some(now_ms)));
    }

    /// Every channel tracked at `now_ms` (what a restarted gate needs to know).
    pub fn known(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        let expiry = self.closed_expiry_ms;
        self.channels
            .iter()
            .filter(move |(_, c)| !c.expired(now_ms, expiry))
            .map(|(id, _)| id.as_str())
    }

    /// Whether the channel is idle now.
    pub fn is_idle(&self, channel: &str, now_ms: u64) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.idle(now_ms, self.idle_timeout_ms))
    }

    /// The gate watermark now; forgets closed channels that expired.
    pub fn clock(&mut self, now_ms: u64) -> GateClock {
        let (timeout, expiry) = (self.idle_timeout_ms, self.closed_expiry_ms);
        self.channels.retain(|_, c| !c.expired(now_ms, expiry));
        let mut clock = GateClock {
            channels: (self.channels.len() + self.floors.len()) as u32,
            ..GateClock::default()
        };
        let mut min: Option<Option<EventTime>> = None;
        for c in self.channels.values() {
            if c.idle(now_ms, timeout) {
                clock.idle_channels += 1;
                continue;
            }
            // A live channel without a watermark makes the gate watermark unknown.
            min = Some(match (min, c.watermark) {
                (None, w) => w,
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
                _ => None,
            });
        }
        // A floor is a live channel whose watermark is the floor.
        for &f in self.floors.values() {
            min = Some(match min {
                None => Some(f),
                Some(w) => w.map(|w| w.min(f)),
            });
        }
        clock.watermark = min.flatten();
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_watermark_is_the_minimum_of_live_channels() {
        let mut t = WatermarkTracker::new(1_000, 60_000);
        t.on_watermark("a", 100, 0);
        t.on_watermark("b", 50, 0);
        assert_eq!(t.clock(10).watermark, Some(50));
        t.on_watermark("b", 200, 20);
        assert_eq!(t.clock(30).watermark, Some(100));
    }

    #[test]
    fn floors_hold_the_gate_watermark_until_lifted_and_may_move_down() {
        let mut t = WatermarkTracker::new(1_000, 60_000);
        t.on_watermark("a", 100, 0);
        t.set_floor("txn/1", 70);
        t.set_floor("txn/2", 90);
        assert_eq!(t.clock(1).watermark, Some(70));
        // A later batch of the same transaction, older than its first: the floor goes down.
        t.set_floor("txn/2", 40);
        assert_eq!(t.clock(2).watermark, Some(40));
        t.lift_floor("txn/2");
        assert_eq!(t.clock(3).watermark, Some(70));
        t.lift_floor("txn/1");
        assert_eq!(t.clock(4).watermark, Some(100));
        // A floor above every channel's watermark changes nothing.
        t.set_floor("txn/3", 500);
        assert_eq!(t.clock(5).watermark, Some(100));
        // Every channel idle (a sink stalled in its commit), a transaction open: the gate is
        // not "all idle, nothing owed" — the floor is its watermark.
        t.on_idle("a");
        let c = t.clock(6);
        assert_eq!(
            (c.watermark, c.channels, c.idle_channels),
            (Some(500), 2, 1)
        );
        t.lift_floor("txn/3");
        let c = t.clock(7);
        assert_eq!((c.watermark, c.channels, c.idle_channels), (None, 1, 1));
        assert_eq!(t.floors(), 0);
    }

    #[test]
    fn idle_channels_are_excluded_until_they_speak() {
        let mut t = WatermarkTracker::new(1_000, 60_000);
        t.on_watermark("a", 100, 0);
        t.on_watermark("b", 50, 0);
        t.on_idle("b");
        let c = t.clock(1);
        assert_eq!(
            (c.watermark, c.channels, c.idle_channels),
            (Some(100), 2, 1)
        );
        // By timeout: a speaks again at 1500, b has been silent since 0.
        t.on_idle("b");
        t.on_record("a", 1_500);
        assert_eq!(t.clock(1_600).watermark, Some(100));
        // b comes back with a record: it counts again, with its old watermark.
        t.on_record("b", 1_700);
        assert_eq!(t.clock(1_700).watermark, Some(50));
    }

    #[test]
    fn a_busy_channel_is_never_idle_and_its_timeout_restarts_after() {
        let mut t = WatermarkTracker::new(100, 60_000);
        t.on_watermark("a", 7, 0);
        t.on_watermark("b", 9, 0);
        t.on_watermark("c", 5, 0);
        t.set_busy("a", true, 10);
        t.set_busy("c", true, 10);
        t.on_idle("c");
        // Silent far past the timeout (a), or marked idle by the client (c), but busy: both
        // count; only b is idle.
        let c = t.clock(1_000);
        assert_eq!((c.watermark, c.idle_channels), (Some(5), 1));
        t.set_busy("a", false, 1_000);
        t.set_busy("c", false, 1_000);
        assert!(!t.is_idle("a", 1_050), "the timeout starts again");
        assert!(t.is_idle("a", 1_100));
        assert!(
            t.is_idle("c", 1_000),
            "the client's mark holds once not busy"
        );
        // Two connections of one id (a reconnect while the old one waits for the sink): busy
        // until both are done.
        t.on_open("a", 1_200);
        t.on_open("a", 1_210);
        t.set_busy("a", true, 1_220);
        t.set_busy("a", true, 1_230);
        t.set_busy("a", false, 1_240);
        assert!(!t.is_idle("a", 5_000), "one connection is still busy");
        t.set_busy("a", false, 5_000);
        assert!(t.is_idle("a", 5_100));
    }

    #[test]
    fn a_live_channel_without_watermark_makes_the_gate_unknown() {
        let mut t = WatermarkTracker::new(1_000, 60_000);
        t.on_watermark("a", 100, 0);
        t.on_record("b", 0);
        assert_eq!(t.clock(1).watermark, None);
        let mut all_idle = WatermarkTracker::new(10, 60_000);
        all_idle.on_watermark("a", 5, 0);
        let c = all_idle.clock(100);
        assert_eq!((c.watermark, c.channels, c.idle_channels), (None, 1, 1));
    }

    #[test]
    fn closed_channels_count_past_the_idle_timeout_until_back_or_expired() {
        let mut t = WatermarkTracker::new(100, 1_000);
        t.on_watermark("a", 7, 0);
        t.on_watermark("b", 9, 0);
        t.on_close("a", 10);
        // Long past the idle timeout, the closed channel still holds the gate watermark.
        let c = t.clock(500);
        assert_eq!((c.channels, c.idle_channels, c.watermark), (2, 1, Some(7)));
        // It comes back (a restarted subtask) and moves on.
        t.on_open("a", 600);
        t.on_watermark("a", 20, 600);
        assert_eq!(t.clock(650).watermark, Some(20));
        // Closed again and never back: forgotten after the expiry.
        t.on_close("a", 700);
        assert_eq!(t.clock(1_699).channels, 2);
        let c = t.clock(1_700);
        assert_eq!((c.channels, c.watermark), (1, None));
        // A reconnect that opens before the old connection closes keeps the channel open.
        t.on_open("b", 1_750);
        t.on_open("b", 1_760);
        t.on_close("b", 1_770);
        assert_eq!(t.clock(1_900).idle_channels, 1, "open and silent: idle");
        t.on_close("b", 1_780);
        t.on_watermark("b", 9, 1_790);
        // An explicitly idle channel that closes counts again: it may replay when it returns.
        t.on_idle("b");
        t.on_close("b", 1_800);
        assert_eq!(t.clock(1_800).watermark, Some(9));
    }

    #[test]
    fn restored_channels_count_as_closed_until_they_reconnect_or_expire() {
        let mut t = WatermarkTracker::new(100, 1_000);
        t.restore_closed("a", 0);
        t.restore_closed("b", 0);
        // Long past the idle timeout both still count, with no watermark: the gate's is unknown.
        let c = t.clock(500);
        assert_eq!((c.channels, c.idle_channels, c.watermark), (2, 0, None));
        t.on_open("b", 600);
        t.on_watermark("b", 90, 600);
        assert_eq!(t.clock(650).watermark, None, "a is still unknown");
        // A restore never overrides what is known now.
        t.restore_closed("b", 700);
        assert_eq!(t.known(700).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(t.known(1_000).collect::<Vec<_>>(), ["b"]);
        // a never comes back: forgotten after the expiry; b is open and speaking.
        t.on_watermark("b", 95, 990);
        let c = t.clock(1_000);
        assert_eq!((c.channels, c.watermark), (1, Some(95)));
    }

    #[test]
    fn a_channel_that_never_spoke_is_forgotten_when_it_closes() {
        let mut t = WatermarkTracker::new(100, 600_000);
        t.on_watermark("a", 50, 0);
        // Hello, then a bad frame (or nothing) and the connection is gone: nothing is owed.
        t.on_open("bad", 10);
        assert_eq!(t.clock(20).watermark, None, "open and silent: unknown");
        assert_eq!(t.on_close("bad", 30), Closed::Forgotten);
        let c = t.clock(40);
        assert_eq!((c.channels, c.watermark), (1, Some(50)));
        assert_eq!(t.known(40).collect::<Vec<_>>(), ["a"]);
        // Marked idle by the client and then closed: still nothing owed.
        t.on_open("quiet", 50);
        t.on_idle("quiet");
        assert_eq!(t.on_close("quiet", 60), Closed::Forgotten);
        // A subtask that sent a record, failed, and reconnects only to fail before speaking:
        // it still owes its replay, so it keeps counting.
        t.on_open("r", 70);
        t.on_record("r", 71);
        assert_eq!(t.on_close("r", 72), Closed::Counting);
        t.on_open("r", 80);
        assert_eq!(t.on_close("r", 81), Closed::Counting);
        assert_eq!(
            t.clock(500).watermark,
            None,
            "r has no watermark and counts"
        );
        // Two connections of one id: the channel is gone only with the last one.
        t.on_open("two", 90);
        t.on_open("two", 91);
        assert_eq!(t.on_close("two", 92), Closed::StillOpen);
        assert_eq!(t.on_close("two", 93), Closed::Forgotten);
        assert_eq!(t.on_close("never-opened", 94), Closed::Unknown);
    }

    #[test]
    fn a_finished_channel_is_forgotten_and_a_restored_one_is_not() {
        let mut t = WatermarkTracker::new(100, 600_000);
        t.on_open("done", 0);
        t.on_record("done", 1);
        t.on_watermark("done", EventTime::MAX, 2);
        t.on_open("live", 0);
        t.on_watermark("live", 7, 3);
        assert_eq!(t.on_close("done", 4), Closed::Forgotten);
        assert_eq!(t.known(5).collect::<Vec<_>>(), ["live"]);
        // A channel restored from a predecessor's list may owe a replay: it counts, even if
        // it reconnects and fails before speaking.
        t.restore_closed("old", 6);
        t.on_open("old", 7);
        assert_eq!(t.on_close("old", 8), Closed::Counting);
        assert_eq!(t.clock(9).watermark, None);
    }

    #[test]
    fn watermarks_never_go_backwards() {
        let mut t = WatermarkTracker::new(100, 60_000);
        t.on_watermark("a", 70, 0);
        t.on_watermark("a", 60, 1);
        assert_eq!(t.clock(2).watermark, Some(70));
    }
}
