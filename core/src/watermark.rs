//! Per-channel watermarks and idleness, folded into one gate watermark.
//!
//! A channel is idle when the client said so, or when it sent no record and no watermark for
//! `idle_timeout_ms`. Idle channels are excluded from the gate watermark until they speak again.
//! A channel that closes is kept (with its last watermark) until it turns idle, so a crashed
//! sink subtask cannot make the gate look drained before the idle timeout.

use std::collections::BTreeMap;

use crate::EventTime;

#[derive(Debug, Clone)]
struct ChannelClock {
    watermark: Option<EventTime>,
    last_active_ms: u64,
    idle_marked: bool,
    open: bool,
}

impl ChannelClock {
    fn idle(&self, now_ms: u64, idle_timeout_ms: u64) -> bool {
        self.idle_marked || now_ms.saturating_sub(self.last_active_ms) >= idle_timeout_ms
    }
}

/// The gate-level view: what the coordinator needs for readiness and drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateClock {
    /// Minimum watermark over non-idle channels; `None` when a non-idle channel has none yet,
    /// or when every channel is idle.
    pub watermark: Option<EventTime>,
    /// Channels tracked (open, or closed but not yet idle).
    pub channels: u32,
    /// Of those, how many are idle.
    pub idle_channels: u32,
}

/// Tracks the channels of one gate.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    channels: BTreeMap<String, ChannelClock>,
    idle_timeout_ms: u64,
}

impl WatermarkTracker {
    /// A tracker that marks channels idle after `idle_timeout_ms` of silence.
    pub fn new(idle_timeout_ms: u64) -> Self {
        Self {
            channels: BTreeMap::new(),
            idle_timeout_ms,
        }
    }

    fn touch(&mut self, channel: &str, now_ms: u64) -> &mut ChannelClock {
        let c = self
            .channels
            .entry(channel.to_owned())
            .or_insert(ChannelClock {
                watermark: None,
                last_active_ms: now_ms,
                idle_marked: false,
                open: true,
            });
        c.last_active_ms = now_ms;
        c.idle_marked = false;
        c
    }

    /// A channel opened (or re-opened with the same id after a reconnect).
    pub fn on_open(&mut self, channel: &str, now_ms: u64) {
        self.touch(channel, now_ms).open = true;
    }

    /// The channel sent a record: it is not idle.
    pub fn on_record(&mut self, channel: &str, now_ms: u64) {
        self.touch(channel, now_ms);
    }

    /// The channel sent a watermark. Watermarks never go backwards on one channel.
    pub fn on_watermark(&mut self, channel: &str, watermark: EventTime, now_ms: u64) {
        let c = self.touch(channel, now_ms);
        c.watermark = Some(c.watermark.map_or(watermark, |w| w.max(watermark)));
    }

    /// The client marked the channel idle.
    pub fn on_idle(&mut self, channel: &str) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.idle_marked = true;
        }
    }

    /// The channel's connection closed; it stays until idle.
    pub fn on_close(&mut self, channel: &str) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.open = false;
        }
    }

    /// Whether the channel is idle now.
    pub fn is_idle(&self, channel: &str, now_ms: u64) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.idle(now_ms, self.idle_timeout_ms))
    }

    /// The gate watermark now; forgets closed channels that have gone idle.
    pub fn clock(&mut self, now_ms: u64) -> GateClock {
        let timeout = self.idle_timeout_ms;
        self.channels
            .retain(|_, c| c.open || !c.idle(now_ms, timeout));
        let mut clock = GateClock {
            channels: self.channels.len() as u32,
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
        clock.watermark = min.flatten();
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_watermark_is_the_minimum_of_live_channels() {
        let mut t = WatermarkTracker::new(1_000);
        t.on_watermark("a", 100, 0);
        t.on_watermark("b", 50, 0);
        assert_eq!(t.clock(10).watermark, Some(50));
        t.on_watermark("b", 200, 20);
        assert_eq!(t.clock(30).watermark, Some(100));
    }

    #[test]
    fn idle_channels_are_excluded_until_they_speak() {
        let mut t = WatermarkTracker::new(1_000);
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
    fn a_live_channel_without_watermark_makes_the_gate_unknown() {
        let mut t = WatermarkTracker::new(1_000);
        t.on_watermark("a", 100, 0);
        t.on_record("b", 0);
        assert_eq!(t.clock(1).watermark, None);
        let mut all_idle = WatermarkTracker::new(10);
        all_idle.on_watermark("a", 5, 0);
        let c = all_idle.clock(100);
        assert_eq!((c.watermark, c.channels, c.idle_channels), (None, 1, 1));
    }

    #[test]
    fn closed_channels_linger_until_idle_then_go() {
        let mut t = WatermarkTracker::new(100);
        t.on_watermark("a", 7, 0);
        t.on_close("a");
        assert_eq!(t.clock(50).channels, 1);
        assert_eq!(t.clock(50).watermark, Some(7));
        assert_eq!(t.clock(150).channels, 0);
    }

    #[test]
    fn watermarks_never_go_backwards() {
        let mut t = WatermarkTracker::new(100);
        t.on_watermark("a", 70, 0);
        t.on_watermark("a", 60, 1);
        assert_eq!(t.clock(2).watermark, Some(70));
    }
}
