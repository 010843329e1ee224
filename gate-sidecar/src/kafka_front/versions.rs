//! Which Kafka APIs the front serves, at which versions, and how: the ApiVersions answer is the
//! intersection of this table and what the cluster supports.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

/// How a request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Forwarded unchanged, the response too (no broker address inside).
    PassThrough,
    /// Forwarded unchanged; the response names brokers, which are rewritten to the front.
    RewriteResponse,
    /// Every record decided by the gate (see `produce`).
    Produce,
    /// Answered from the cluster's answer intersected with this table.
    ApiVersions,
    /// Forwarded unchanged; request and answer tell which transactions ended
    /// (`InitProducerId`, `EndTxn`: see `transactions`).
    Transaction,
}

/// The served APIs: (key, lowest, highest version, handling). Produce stops at 11 (v12 comes
/// with transactions v2, which needs a finalized feature the front does not pass on; v13 names
/// topics by id). Fetch is advertised (librdkafka needs Fetch ≥ 4 to write record batches v2)
/// but only below v16, whose responses would name brokers.
pub const SERVED: &[(ApiKey, i16, i16, Handling)] = &[
    (ApiKey::Produce, 3, 11, Handling::Produce),
    (ApiKey::Fetch, 4, 15, Handling::PassThrough),
    (ApiKey::ListOffsets, 1, 8, Handling::PassThrough),
    (ApiKey::Metadata, 0, 12, Handling::RewriteResponse),
    (ApiKey::FindCoordinator, 0, 5, Handling::RewriteResponse),
    (ApiKey::ApiVersions, 0, 3, Handling::ApiVersions),
    (ApiKey::InitProducerId, 0, 5, Handling::Transaction),
    (ApiKey::AddPartitionsToTxn, 0, 3, Handling::PassThrough),
    (ApiKey::AddOffsetsToTxn, 0, 4, Handling::PassThrough),
    (ApiKey::EndTxn, 0, 4, Handling::Transaction),
    (ApiKey::TxnOffsetCommit, 0, 4, Handling::PassThrough),
    (ApiKey::DescribeConfigs, 0, 4, Handling::PassThrough),
    (ApiKey::DescribeCluster, 0, 1, Handling::RewriteResponse),
    (ApiKey::DescribeProducers, 0, 0, Handling::PassThrough),
    (ApiKey::DescribeTransactions, 0, 0, Handling::PassThrough),
    (ApiKey::ListTransactions, 0, 1, Handling::PassThrough),
];

/// How `api` at `version` is handled, or `None` when the front does not serve it.
pub fn handling(api: ApiKey, version: i16) -> Option<Handling> {
    SERVED
        .iter()
        .find(|(k, lo, hi, _)| *k == api && (*lo..=*hi).contains(&version))
        .map(|(_, _, _, h)| *h)
}

/// The cluster's ApiVersions answer cut down to what the front serves: each range intersected,
/// APIs the front does not serve (or the cluster lacks) left out, finalized features removed
/// (they switch clients to protocols the front does not rewrite, such as transactions v2).
pub fn intersect(mut upstream: ApiVersionsResponse) -> ApiVersionsResponse {
    upstream.api_keys = upstream
        .api_keys
        .iter()
        .filter_map(|a| {
            let (_, lo, hi, _) = SERVED.iter().find(|(k, ..)| *k as i16 == a.api_key)?;
            let (min, max) = (a.min_version.max(*lo), a.max_version.min(*hi));
            (min <= max).then(|| {
                ApiVersion::default()
                    .with_api_key(a.api_key)
                    .with_min_version(min)
                    .with_max_version(max)
            })
        })
        .collect();
    upstream.finalized_features.clear();
    upstream.finalized_features_epoch = -1;
    upstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_intersection_and_nothing_else() {
        let mut up = ApiVersionsResponse::default();
        for (key, lo, hi) in [
            (0, 0, 13),
            (3, 0, 13),
            (18, 0, 4),
            (22, 0, 6),
            (71, 0, 0),
            (9, 1, 9),
        ] {
            up.api_keys.push(
                ApiVersion::default()
                    .with_api_key(key)
                    .with_min_version(lo)
                    .with_max_version(hi),
            );
        }
        let got: Vec<(i16, i16, i16)> = intersect(up)
            .api_keys
            .iter()
            .map(|a| (a.api_key, a.min_version, a.max_version))
            .collect();
        // Produce 3..11, Metadata 0..12, ApiVersions 0..3, InitProducerId 0..5; telemetry (71)
        // and OffsetFetch (9) are not served.
        assert_eq!(got, [(0, 3, 11), (3, 0, 12), (18, 0, 3), (22, 0, 5)]);
        assert_eq!(handling(ApiKey::Produce, 12), None);
        assert_eq!(handling(ApiKey::Produce, 9), Some(Handling::Produce));
        assert_eq!(handling(ApiKey::JoinGroup, 0), None);
    }
}
