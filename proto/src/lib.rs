//! sluice's wire formats, generated from `proto/*.proto` (the one source of truth).
//!
//! - [`v1`]: the `sluice.v1` package: the local-socket frames (`ClientFrame`, `ServerFrame`),
//!   the `GateControl` service (sidecar <-> coordinator) and the `Cutover` service (operators).
//! - [`convert`]: wire types to and from the pure `sluice-core` types.
//! - [`framing`]: the varint-length-delimited frame codec of the local socket.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
#![forbid(unsafe_code)]

/// The `sluice.v1` protobuf package.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::doc_lazy_continuation,
        clippy::large_enum_variant
    )]
    tonic::include_proto!("sluice.v1");
}

pub mod convert;
pub mod framing;

/// Encoded `FileDescriptorSet` of every sluice proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
