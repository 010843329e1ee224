//! The Kubernetes mutating admission webhook: injects the gate sidecar into opted-in Flink
//! TaskManager pods.
//!
//! Layout:
//! - [`mutate`]: the pure decision — which pods, which identity, which JSON patch.
//! - [`review`]: `admission.k8s.io/v1` `AdmissionReview` in and out; [`review::review`] turns a
//!   request body into a response, never denying a pod.
//! - [`tls`]: the serving certificate, loaded from PEM files and reloaded when they change.
//! - `server`: the thin HTTPS (and plain HTTP, for metrics) server around them.
//!
//! The webhook never blocks a pod: anything it cannot understand is admitted unchanged, with
//! a warning where useful, and the `MutatingWebhookConfiguration` uses `failurePolicy: Ignore`
//! so that an unreachable coordinator does not block pods either.

pub mod mutate;
pub mod review;
pub(crate) mod server;
pub mod tls;

pub use mutate::{Injection, InjectionConfig, Skip, mutate};
pub use server::{HEALTHZ_PATH, MAX_BODY_BYTES, METRICS_PATH, MUTATE_PATH};
