//! The Kafka front's exact watermark: Flink's REST API, polled.
//!
//! Every poll reads, in this order (the order is the rule, see `sluice_core::flushed`): every
//! sink subtask's `currentInputWatermark`, then the JobManager's clock (`now` of the job's
//! details), then the latest completed checkpoint's trigger time and the latest restore.
//! [`FlushedWatermark`] turns the polls into a watermark below which every record of the job is
//! decided and delivered, and it is published to the front's channels. Sinks are the job
//! graph's vertices no other vertex reads from, as the previous poll's job details listed them
//! (a poll whose details list others is not an observation).
//!
//! Flink serves watermarks from its metric fetcher, refreshed every
//! `metrics.fetcher.update-interval` (10 s by default): the confirmed watermark trails by that
//! much plus a checkpoint interval, so set it to about a second on jobs cut over this way.
//!
//! The job followed is the one job of the cluster that is not finished, cancelled or failed
//! (`--flink-job NAME` picks one by name where a session cluster runs several). A job that
//! finishes confirms `MAX` (its final checkpoint flushed everything); one that is cancelled or
//! fails confirms nothing more.
//!
//! What this assumes of the job: its Kafka sink flushes before it acknowledges a checkpoint —
//! true of `DeliveryGuarantee.AT_LEAST_ONCE` and `EXACTLY_ONCE`, not of `NONE`, which Flink's
//! REST API does not reveal (documented; use the derived watermark for such a job).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sluice_core::EventTime;
use sluice_core::flushed::{FlushedWatermark, JobSnapshot};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long one REST request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest REST answer read.
const MAX_BODY: usize = 4 << 20;

/// Where and how often to poll.
#[derive(Debug, Clone)]
pub struct RestSettings {
    /// `http://HOST:PORT` of the JobManager's REST endpoint.
    pub address: RestAddress,
    /// Time between polls.
    pub interval: Duration,
    /// Follow the job of this name (otherwise the cluster's one unfinished job).
    pub job_name: Option<String>,
    /// The oldest a watermark read from the REST API may be.
    pub max_metric_age: Duration,
}

/// A Flink REST endpoint, `http://HOST:PORT` (a path prefix is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestAddress {
    host: String,
    port: u16,
    prefix: String,
}

/// Why `--flink-rest` is not usable.
#[derive(Debug, Error)]
pub enum RestAddressError {
    /// Not `http://HOST:PORT`.
    #[error("`{0}` is not an http://HOST:PORT address")]
    Malformed(String),
    /// `https://`: not supported yet.
    #[error("`{0}`: only http:// is supported for Flink's REST API (TLS to it is not built yet)")]
    Https(String),
}

impl std::str::FromStr for RestAddress {
    type Err = RestAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = s
            .parse()
            .map_err(|_| RestAddressError::Malformed(s.into()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(RestAddressError::Https(s.into())),
            _ => return Err(RestAddressError::Malformed(s.into())),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| RestAddressError::Malformed(s.into()))?;
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: uri.port_u16().unwrap_or(8081),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for RestAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// Why one poll failed (the next one tries again).
#[derive(Debug, Error)]
pub enum PollError {
    /// The endpoint could not be reached.
    #[error("cannot connect to {address}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request {path} failed")]
    Http {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{0} took longer than {REQUEST_TIMEOUT:?}")]
    Timeout(String),
    /// A status other than 200.
    #[error("{path} answered HTTP {status}")]
    Status {
        /// The request path.
        path: String,
        /// The status.
        status: u16,
    },
    /// The answer is too large.
    #[error("{0} answered more than {MAX_BODY} bytes")]
    TooLarge(String),
    /// The answer is not the JSON expected.
    #[error("{path} answered unexpected JSON")]
    Json {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Several unfinished jobs and no `--flink-job` to choose.
    #[error("several running jobs ({0}); pick one with --flink-job NAME")]
    SeveralJobs(String),
}

#[derive(Deserialize)]
struct Overview {
    jobs: Vec<JobSummary>,
}

#[derive(Deserialize)]
struct JobSummary {
    jid: String,
    name: String,
    state: String,
}

#[derive(Deserialize)]
struct JobDetails {
    now: u64,
    plan: Plan,
    vertices: Vec<Vertex>,
}

#[derive(Deserialize)]
struct Plan {
    nodes: Vec<PlanNode>,
}

#[derive(Deserialize)]
struct PlanNode {
    #[serde(default)]
    inputs: Vec<PlanInput>,
}

#[derive(Deserialize)]
struct PlanInput {
    id: String,
}

#[derive(Deserialize)]
struct Vertex {
    id: String,
    parallelism: u32,
}

#[derive(Deserialize)]
struct Metric {
    id: String,
    value: String,
}

#[derive(Deserialize)]
struct Checkpoints {
    #[serde(default)]
    latest: Latest,
}

#[derive(Deserialize, Default)]
struct Latest {
    completed: Option<Completed>,
    restored: Option<Restored>,
}

#[derive(Deserialize)]
struct Completed {
    trigger_timestamp: u64,
}

#[derive(Deserialize)]
struct Restored {
    restore_timestamp: u64,
}

/// What a poll found.
enum Found {
    /// The job is running; one snapshot.
    Running(String, JobSnapshot),
    /// The job followed so far finished.
    Finished(String),
    /// No job to follow (yet, or any more).
    Nothing,
}

/// Polls until `stop`, publishing the confirmed watermark on `tx`.
pub async fn watch(
    settings: RestSettings,
    tx: watch::Sender<Option<EventTime>>,
    stop: CancellationToken,
) {
    tracing::info!(rest = %settings.address, interval = ?settings.interval, "following the Flink job's checkpoints for the Kafka front's watermark");
    let age = u64::try_from(settings.max_metric_age.as_millis()).unwrap_or(u64::MAX);
    let mut flushed = FlushedWatermark::new(age);
    let mut job: Option<String> = None;
    let mut sinks = None;
    let mut last_error: Option<String> = None;
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let found = poll(&settings, job.as_deref(), &mut sinks).await;
        let found = match found {
            Ok(f) => {
                if last_error.take().is_some() {
                    tracing::info!(rest = %settings.address, "Flink REST API reachable again");
                }
                f
            }
            Err(e) => {
                let text = crate::describe(&e);
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(rest = %settings.address, error = %text, "cannot read the Flink job; the watermark holds");
                    last_error = Some(text);
                }
                continue;
            }
        };
        let before = flushed.confirmed();
        match found {
            Found::Running(id, snapshot) => {
                if job.as_deref() != Some(id.as_str()) {
                    tracing::info!(job = %id, "following Flink job");
                    job = Some(id);
                }
                flushed.observe(&snapshot);
            }
            Found::Finished(id) => {
                if before != Some(EventTime::MAX) {
                    tracing::info!(job = %id, "Flink job finished: everything it wrote is delivered");
                }
                flushed.observe(&JobSnapshot {
                    finished: true,
                    ..JobSnapshot::default()
                });
            }
            Found::Nothing => {}
        }
        let now = flushed.confirmed();
        if now != before {
            tracing::debug!(watermark_ms = now, "watermark confirmed by a checkpoint");
            if before.is_none() {
                tracing::info!(
                    watermark_ms = now,
                    "first watermark confirmed by a checkpoint"
                );
            }
            tx.send_replace(now);
        }
    }
}

/// A job's sink vertices (no other vertex reads from them), with their parallelism.
type Sinks = Vec<(String, u32)>;

fn sink_vertices(details: &JobDetails) -> Sinks {
    let read_from: std::collections::BTreeSet<&str> = details
        .plan
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(|i| i.id.as_str()))
        .collect();
    details
        .vertices
        .iter()
        .filter(|v| !read_from.contains(v.id.as_str()))
        .map(|v| (v.id.clone(), v.parallelism))
        .collect()
}

async fn poll(
    s: &RestSettings,
    following: Option<&str>,
    sinks: &mut Option<(String, Sinks)>,
) -> Result<Found, PollError> {
    let overview: Overview = get(&s.address, "/jobs/overview").await?;
    let named = |j: &&JobSummary| s.job_name.as_deref().is_none_or(|n| j.name == n);
    let live: Vec<&JobSummary> = overview
        .jobs
        .iter()
        .filter(named)
        .filter(|j| !matches!(j.state.as_str(), "FINISHED" | "CANCELED" | "FAILED"))
        .collect();
    let id = match live.as_slice() {
        [one] => one.jid.clone(),
        [] => {
            let finished = overview
                .jobs
                .iter()
                .any(|j| Some(j.jid.as_str()) == following && j.state == "FINISHED");
            return Ok(match following {
                Some(f) if finished => Found::Finished(f.to_owned()),
                _ => Found::Nothing,
            });
        }
        many => {
            let names: Vec<&str> = many.iter().map(|j| j.name.as_str()).collect();
            return Err(PollError::SeveralJobs(names.join(", ")));
        }
    };
    // The sinks the last poll found for this job; the job's details are read once per poll,
    // after the watermarks (their `now` must follow them), and say whether the sinks changed.
    let read_sinks = match sinks.as_ref() {
        Some((job, v)) if *job == id => v.clone(),
        _ => sink_vertices(&get(&s.address, &format!("/jobs/{id}")).await?),
    };
    let mut sink_watermark: Option<EventTime> = Some(EventTime::MAX);
    for (vertex, parallelism) in &read_sinks {
        let metrics: Vec<Metric> = get(
            &s.address,
            &format!("/jobs/{id}/vertices/{vertex}/watermarks"),
        )
        .await?;
        let values: Vec<EventTime> = metrics
            .iter()
            .filter(|m| m.id.ends_with(".currentInputWatermark"))
            .filter_map(|m| m.value.parse().ok())
            .collect();
        // A subtask without a watermark yet (Long.MIN_VALUE, or no metric) holds it unknown.
        let min = values.iter().copied().min();
        sink_watermark = match (sink_watermark, min) {
            (Some(a), Some(b)) if values.len() as u32 >= *parallelism && b > EventTime::MIN => {
                Some(a.min(b))
            }
            _ => None,
        };
    }
    // After the watermark: a moment at which it held, on the JobManager's clock.
    let now: JobDetails = get(&s.address, &format!("/jobs/{id}")).await?;
    let current = sink_vertices(&now);
    if read_sinks.is_empty() || current != read_sinks {
        // No sink, or the graph changed under the read: not an observation.
        sink_watermark = None;
    }
    *sinks = Some((id.clone(), current));
    let checkpoints: Checkpoints = get(&s.address, &format!("/jobs/{id}/checkpoints")).await?;
    Ok(Found::Running(
        id,
        JobSnapshot {
            sink_watermark,
            jobmanager_now_ms: now.now,
            completed_trigger_ms: checkpoints.latest.completed.map(|c| c.trigger_timestamp),
            restored_at_ms: checkpoints.latest.restored.map(|r| r.restore_timestamp),
            finished: false,
        },
    ))
}

async fn get<T: serde::de::DeserializeOwned>(a: &RestAddress, path: &str) -> Result<T, PollError> {
    let full = format!("{}{path}", a.prefix);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((a.host.as_str(), a.port))
            .await
            .map_err(|source| PollError::Connect {
                address: format!("{}:{}", a.host, a.port),
                source,
            })?;
        let http_err = |source| PollError::Http {
            path: path.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let driver = tokio::spawn(conn);
        let request = http::Request::get(full.as_str())
            .header(http::header::HOST, format!("{}:{}", a.host, a.port))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .expect("a GET with a path and two headers is a valid request");
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status().as_u16();
        if status != 200 {
            driver.abort();
            return Err(PollError::Status {
                path: path.to_owned(),
                status,
            });
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| PollError::TooLarge(path.to_owned()))?
            .to_bytes();
        driver.abort();
        serde_json::from_slice(&body).map_err(|source| PollError::Json {
            path: path.to_owned(),
            source,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| PollError::Timeout(path.to_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_addresses_parse_and_refuse_clearly() {
        let a: RestAddress = "http://orders-rest.shop:8081".parse().unwrap();
        assert_eq!(a.to_string(), "http://orders-rest.shop:8081");
        let b: RestAddress = "http://127.0.0.1:9000/flink/".parse().unwrap();
        assert_eq!((b.port, b.prefix.as_str()), (9000, "/flink"));
        let c: RestAddress = "http://[::1]".parse().unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 8081));
        assert!(matches!(
            "https://x:1".parse::<RestAddress>(),
            Err(RestAddressError::Https(_))
        ));
        assert!(matches!(
            "x:1".parse::<RestAddress>(),
            Err(RestAddressError::Malformed(_))
        ));
        assert!(matches!(
            "ftp://x".parse::<RestAddress>(),
            Err(RestAddressError::Malformed(_))
        ));
    }
}
