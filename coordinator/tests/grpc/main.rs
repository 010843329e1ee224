//! End-to-end tests of the coordinator's gRPC APIs against the real server on 127.0.0.1:0.
//! One test binary (modules below) keeps link time down.

mod common;
mod cutover;
mod errors;
mod introspection;
mod restart;
mod startup;
