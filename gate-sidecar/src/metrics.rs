//! Prometheus metrics of the gate, served as text on the health listener (`GET /metrics`).
//!
//! Each scrape takes one snapshot of the gate's counters and levels (the same numbers its
//! progress reports carry to the coordinator, read under one lock) and encodes it; the
//! assignment version is read just after, under a second one.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::gate::Gate;

/// Content type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `reason`: why records were dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The gate's metrics now, in the OpenMetrics text format.
pub(crate) fn render(gate: &Gate) -> String {
    let progress = gate.progress();
    let counters = progress.counters.unwrap_or_default();
    let version = gate.assignment_version();
    let mut registry = Registry::with_prefix("sluice_gate");
    registry.register(
        "records_received",
        "Records received from the job's sink",
        ConstCounter::new(counters.received),
    );
    registry.register(
        "records_admitted",
        "Records admitted and acknowledged by the real sink (late ones included)",
        ConstCounter::new(counters.admitted),
    );
    registry.register(
        "records_late_admitted",
        "Late records admitted by the admit-after-drain policy and acknowledged",
        ConstCounter::new(counters.late_admitted),
    );
    registry.register(
        "records_below_confirmed_watermark",
        "Records the Kafka front received below a checkpoint-confirmed sink watermark \
         (--flink-rest): the job's sink did not flush at the checkpoint (DeliveryGuarantee.NONE) \
         or it emits records behind its watermarks; the REST drain is not exact for it",
        ConstCounter::new(counters.below_confirmed_watermark),
    );
    // A fresh registry per scrape: the family's counters start at 0 and take the totals.
    let dropped = Family::<DropLabels, Counter>::default();
    for (reason, n) in [
        ("shadow", counters.dropped_shadow),
        ("barrier", counters.dropped_barrier),
        ("late", counters.late_dropped),
        ("future", counters.dropped_future),
    ] {
        dropped.get_or_create(&DropLabels { reason }).inc_by(n);
    }
    registry.register(
        "records_dropped",
        "Records dropped (cumulative): shadow = standby deployment, barrier = the other \
         deployment owns them, late = below the floor under the drop policy, future = event \
         time beyond --future-horizon ahead of the wall clock",
        dropped,
    );
    registry.register(
        "records_held",
        "Records held right now, waiting for a decision",
        ConstGauge::new(counters.held as i64),
    );
    registry.register(
        "channels",
        "Channels tracked (open, or closed and awaited)",
        ConstGauge::new(i64::from(progress.channels)),
    );
    registry.register(
        "idle_channels",
        "Channels idle now (excluded from the gate watermark)",
        ConstGauge::new(i64::from(progress.idle_channels)),
    );
    registry.register(
        "assigned",
        "Whether the coordinator has assigned the gate a role (0 while it holds every record: \
         at start, or fenced after its lease ran out)",
        ConstGauge::new(i64::from(version.is_some())),
    );
    if let Some(v) = version {
        registry.register(
            "assignment_version",
            "Version of the assignment in force",
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
        );
    }
    if let Some(w) = progress.watermark_ms {
        registry.register(
            "watermark_ms",
            "Gate watermark, event-time ms (absent while unknown)",
            ConstGauge::new(w),
        );
    }
    if let Some(h) = progress.high_mark_ms {
        registry.register(
            "high_mark_ms",
            "Largest event time seen, ms",
            ConstGauge::new(h),
        );
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
