//! The Kubernetes side of the coordinator, tested for real: the admission webhook over HTTPS
//! (certificates generated at test time, an HTTP/1.1 client over rustls), its certificate
//! reloading, gRPC over TLS with the same certificate, the metrics endpoint, and every file
//! under `manifests/`. No API server is available here (see `../shared/REAL-PARTS.md`): the
//! reviews are captured-style fixtures under `tests/fixtures/admission/`, and the patched pods
//! are checked with k8s-openapi.
//! One test binary (modules below) keeps link time down.

mod admission;
mod common;
mod grpc_tls;
mod manifests;
mod metrics;
mod reload;
mod startup;
