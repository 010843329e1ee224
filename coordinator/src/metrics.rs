//! Prometheus metrics of the coordinator, served as text on `--metrics-listen` (`GET
//! /metrics`). Few and real: webhook reviews by outcome, certificate reloads (webhook and gRPC)
//! by result, and the number of pipelines known. Cutover counters stay in `GetPipeline` / `WatchPipeline`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::webhook::review::Outcome;
use crate::webhook::tls::CertUse;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `outcome`: `injected`, `skipped` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    outcome: &'static str,
}

/// `result`: `loaded` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Injected => "injected",
        Outcome::Skipped => "skipped",
        Outcome::Error => "error",
    }
}

/// The coordinator's metrics; cheap to clone (every handle shares the same series).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    reviews: Family<ReviewLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    grpc_reloads: Family<ReloadLabels, Counter>,
    pipelines: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let reviews = Family::<ReviewLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let grpc_reloads = Family::<ReloadLabels, Counter>::default();
        let pipelines = Gauge::default();
        registry.register(
            "webhook_reviews",
            "Admission reviews answered by the webhook, by outcome (error: malformed review, \
             unreadable pod, or an opted-in pod that could not be injected)",
            reviews.clone(),
        );
        registry.register(
            "webhook_certificate_reloads",
            "Changes of the webhook certificate files, by result",
            reloads.clone(),
        );
        registry.register(
            "grpc_certificate_reloads",
            "Changes of the gRPC TLS certificate files, by result",
            grpc_reloads.clone(),
        );
        registry.register(
            "pipelines",
            "Pipelines known to the coordinator",
            pipelines.clone(),
        );
        // Every label value is present from the start, so rates work from the first scrape.
        for outcome in [Outcome::Injected, Outcome::Skipped, Outcome::Error] {
            let _ = reviews.get_or_create(&ReviewLabels {
                outcome: outcome_label(outcome),
            });
        }
        for result in ["loaded", "failed"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
            let _ = grpc_reloads.get_or_create(&ReloadLabels { result });
        }
        Self {
            registry: Arc::new(registry),
            reviews,
            reloads,
            grpc_reloads,
            pipelines,
        }
    }

    /// Counts one answered review.
    pub fn review(&self, outcome: Outcome) {
        let outcome = outcome_label(outcome);
        self.reviews.get_or_create(&ReviewLabels { outcome }).inc();
    }

    /// Counts one change of the certificate files of `cert` (the webhook's or gRPC's).
    pub fn cert_reload(&self, cert: CertUse, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        let family = match cert {
            CertUse::Webhook => &self.reloads,
            CertUse::Grpc => &self.grpc_reloads,
        };
        family.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Sets the number of pipelines known.
    pub fn set_pipelines(&self, n: usize) {
        self.pipelines.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_start_at_zero_and_count() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("sluice_webhook_reviews_total{outcome=\"injected\"} 0"),
            "{text}"
        );
        assert!(text.contains("sluice_pipelines 0"), "{text}");
        m.review(Outcome::Injected);
        m.review(Outcome::Injected);
        m.review(Outcome::Error);
        m.cert_reload(CertUse::Webhook, false);
        m.cert_reload(CertUse::Grpc, true);
        m.set_pipelines(3);
        let text = m.clone().encode();
        assert!(
            text.contains("sluice_webhook_reviews_total{outcome=\"injected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_webhook_reviews_total{outcome=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_webhook_reviews_total{outcome=\"skipped\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_webhook_certificate_reloads_total{result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_grpc_certificate_reloads_total{result=\"loaded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_grpc_certificate_reloads_total{result=\"failed\"} 0"),
            "{text}"
        );
        assert!(text.contains("sluice_pipelines 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
