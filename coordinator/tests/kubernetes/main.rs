//! The Kubernetes side of the coordinator, tested for real: the admission webhook over HTTPS
//! (certificates generated at test time, an HTTP/1.1 client over rustls) and registered with a
//! real kube-apiserver (`apiserver`: etcd and the API server built from the Go module proxy, on
//! 127.0.0.1), its certificate reloading, gRPC over TLS with the same certificate, the metrics
//! endpoint, and every file under `manifests/`. Edge cases of the review are captured-style
//! fixtures under `tests/fixtures/admission/`; the patched pods are checked with k8s-openapi.
//! One test binary (modules below) keeps link time down.

mod admission;
mod apiserver;
mod common;
mod grpc_tls;
mod manifests;
mod metrics;
mod reload;
mod startup;
