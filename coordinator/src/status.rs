//! Conversions from the core's pipeline state and events to the `Cutover` API's wire types.

use std::collections::BTreeMap;

use sluice_core::pipeline::{Event, GateEventKind, Pipeline, Settings, Stage};
use sluice_proto::convert::role_of;
use sluice_proto::v1;

/// The full status of a pipeline. `reported` holds the latest progress each gate sent on its
/// current stream (the core keeps no counters, so they come from there).
pub(crate) fn pipeline_status(
    p: &Pipeline,
    reported: &BTreeMap<String, v1::GateProgress>,
) -> v1::PipelineStatus {
    let r = p.record();
    let plan = r.plan();
    let barrier = match &r.stage {
        Stage::Prepared { barrier, .. } | Stage::Committed { barrier, .. } => Some(*barrier),
        Stage::Steady { .. } | Stage::Waiting { .. } => r.last_barrier,
    };
    let gates = r
        .gates
        .iter()
        .map(|(gate, deployment)| {
            let live = p.live().get(gate);
            // The core's view decides (it ignores reports from replaced streams); the wire
            // report only adds the counters.
            let progress = live.map(|l| v1::GateProgress {
                high_mark_ms: l.progress.high_mark,
                watermark_ms: l.progress.watermark,
                channels: l.progress.channels,
                idle_channels: l.progress.idle_channels,
                counters: reported.get(gate).and_then(|w| w.counters),
                watermark_source: reported.get(gate).map_or(0, |w| w.watermark_source),
            });
            v1::GateStatus {
                gate_id: gate.clone(),
                deployment: deployment.clone(),
                connected: live.is_some_and(|l| l.conn.is_some()),
                role: role_of(&p.assignment_for(deployment).admission) as i32,
                progress,
                vote: p.vote_of(gate),
                last_seen_ms: live.map_or(0, |l| l.last_seen_ms),
            }
        })
        .collect();
    v1::PipelineStatus {
        pipeline: r.name.clone(),
        phase: v1::Phase::from(r.phase()) as i32,
        epoch: r.epoch,
        version: r.version,
        active: r.active.clone().unwrap_or_default(),
        candidate: plan.map(|pl| pl.candidate.clone()).unwrap_or_default(),
        barrier_ms: barrier,
        floor_ms: r.floor,
        retired: r
            .retired
            .as_ref()
            .map(|x| x.deployment.clone())
            .unwrap_or_default(),
        attempt: plan.map_or(0, |pl| pl.attempt),
        settings: plan.map(|pl| settings_to_wire(&pl.settings)),
        phase_since_ms: r.phase_since_ms,
        gates,
        last_error: r.last_error.clone().unwrap_or_default(),
        waiting_for: p.waiting_for().unwrap_or_default(),
        drain_approximate: drain_approximate(p, reported),
    }
}

/// Whether a gate of the deployment a drain is (or would be) about — the active one, or the one
/// the last cutover retired — reports a derived watermark, or records below a confirmed one
/// (see the proto).
fn drain_approximate(p: &Pipeline, reported: &BTreeMap<String, v1::GateProgress>) -> bool {
    let r = p.record();
    let drained = [
        r.active.as_deref(),
        r.retired.as_ref().map(|x| x.deployment.as_str()),
    ];
    r.gates.iter().any(|(gate, deployment)| {
        drained.contains(&Some(deployment.as_str()))
            && reported.get(gate).is_some_and(|g| {
                g.watermark_source() == v1::WatermarkSource::Derived
                    || g.counters
                        .as_ref()
                        .is_some_and(|c| c.below_confirmed_watermark > 0)
            })
    })
}

/// The settings of a cutover as shown to clients.
pub(crate) fn settings_to_wire(s: &Settings) -> v1::CutoverSettings {
    v1::CutoverSettings {
        margin_ms: s.margin_ms,
        drain_lateness_ms: s.drain_lateness_ms,
        min_gates: s.min_gates,
        max_lag_ms: s.max_lag_ms,
        prepare_timeout_ms: s.prepare_timeout_ms,
        max_attempts: s.max_attempts,
        late_policy: v1::LatePolicy::from(s.late_policy) as i32,
        now: s.now,
        ready_timeout_ms: s.ready_timeout_ms,
        force: s.force,
    }
}

/// A status snapshot as a watch event.
pub(crate) fn status_event(status: v1::PipelineStatus, at_ms: u64) -> v1::PipelineEvent {
    v1::PipelineEvent {
        at_ms,
        pipeline: status.pipeline.clone(),
        kind: Some(v1::pipeline_event::Kind::Status(status)),
    }
}

/// A core event as a watch event.
pub(crate) fn event_to_wire(pipeline: &str, event: &Event, at_ms: u64) -> v1::PipelineEvent {
    use v1::pipeline_event::Kind;
    let kind = match event {
        Event::PhaseChanged {
            phase,
            epoch,
            barrier,
            reason,
        } => Kind::PhaseChange(v1::PhaseChange {
            phase: v1::Phase::from(*phase) as i32,
            epoch: *epoch,
            barrier_ms: *barrier,
            reason: reason.clone(),
        }),
        Event::Vote {
            gate,
            epoch,
            yes,
            high_mark,
        } => Kind::Vote(v1::VoteEvent {
            gate_id: gate.clone(),
            epoch: *epoch,
            yes: *yes,
            high_mark_ms: *high_mark,
        }),
        Event::Gate {
            gate,
            deployment,
            kind,
        } => Kind::Gate(v1::GateEvent {
            gate_id: gate.clone(),
            deployment: deployment.clone(),
            kind: gate_event_kind(*kind) as i32,
        }),
    };
    v1::PipelineEvent {
        at_ms,
        pipeline: pipeline.into(),
        kind: Some(kind),
    }
}

fn gate_event_kind(kind: GateEventKind) -> v1::GateEventKind {
    match kind {
        GateEventKind::Attached => v1::GateEventKind::Attached,
        GateEventKind::Detached => v1::GateEventKind::Detached,
        GateEventKind::Expired => v1::GateEventKind::Expired,
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::pipeline::{GateProgress, PipelineOptions};

    use super::*;

    #[test]
    fn a_derived_watermark_on_the_active_side_marks_the_drain_approximate() {
        let mut p = Pipeline::new("ns/p", PipelineOptions::default(), 10);
        let _ = p
            .attach("b1", "blue", 1, GateProgress::default(), 11)
            .unwrap();
        let _ = p
            .attach("g1", "green", 2, GateProgress::default(), 12)
            .unwrap();
        let from = |source: v1::WatermarkSource| v1::GateProgress {
            watermark_source: source as i32,
            ..Default::default()
        };
        let green_derived = BTreeMap::from([
            ("b1".to_string(), from(v1::WatermarkSource::FlinkRest)),
            ("g1".to_string(), from(v1::WatermarkSource::Derived)),
        ]);
        let s = pipeline_status(&p, &green_derived);
        assert!(!s.drain_approximate, "only the active side's drain matters");
        assert_eq!(
            s.gates[0].progress.as_ref().unwrap().watermark_source,
            v1::WatermarkSource::FlinkRest as i32
        );
        let blue_derived = BTreeMap::from([("b1".to_string(), from(v1::WatermarkSource::Derived))]);
        assert!(pipeline_status(&p, &blue_derived).drain_approximate);
        let unflushed = |n: u64| v1::GateProgress {
            counters: Some(v1::GateCounters {
                below_confirmed_watermark: n,
                ..Default::default()
            }),
            ..from(v1::WatermarkSource::FlinkRest)
        };
        for (n, approximate) in [(0, false), (1, true)] {
            let blue = BTreeMap::from([("b1".to_string(), unflushed(n))]);
            assert_eq!(
                pipeline_status(&p, &blue).drain_approximate,
                approximate,
                "{n} records below the confirmed watermark"
            );
        }
    }

    #[test]
    fn status_fills_gates_roles_progress_and_counters() {
        let mut p = Pipeline::new("ns/p", PipelineOptions::default(), 10);
        let progress = GateProgress {
            high_mark: Some(50),
            watermark: Some(40),
            channels: 2,
            idle_channels: 1,
        };
        let _ = p.attach("b1", "blue", 1, progress, 11).unwrap();
        let _ = p
            .attach("g1", "green", 2, GateProgress::default(), 12)
            .unwrap();
        let counters = v1::GateCounters {
            received: 7,
            admitted: 6,
            ..Default::default()
        };
        let reported = BTreeMap::from([(
            "b1".to_string(),
            v1::GateProgress {
                counters: Some(counters),
                ..Default::default()
            },
        )]);
        let s = pipeline_status(&p, &reported);
        assert_eq!(s.pipeline, "ns/p");
        assert_eq!(s.active, "blue");
        assert_eq!(s.phase, v1::Phase::Steady as i32);
        assert_eq!(s.gates.len(), 2);
        let b1 = &s.gates[0];
        assert_eq!(
            (b1.gate_id.as_str(), b1.connected, b1.role, b1.last_seen_ms),
            ("b1", true, v1::GateRole::Active as i32, 11)
        );
        let bp = b1.progress.unwrap();
        assert_eq!(
            (
                bp.high_mark_ms,
                bp.watermark_ms,
                bp.channels,
                bp.idle_channels
            ),
            (Some(50), Some(40), 2, 1)
        );
        assert_eq!(bp.counters, Some(counters));
        assert_eq!(s.gates[1].role, v1::GateRole::Standby as i32);
        assert!(s.settings.is_none());
    }
}
