//! Generated protobuf and tonic code for `torchwire.v1`, their proto3 JSON serde impls (pbjson), plus the encoded file descriptor set
//! that reflection serves. Only `service/` and `validate.rs` use these types; everything below
//! them works on domain types.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("torchwire.v1");
include!(concat!(env!("OUT_DIR"), "/torchwire.v1.serde.rs"));

/// KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`), Triton-compatible.
pub mod kserve {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
    include!(concat!(env!("OUT_DIR"), "/inference.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every torchwire proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/torchwire_descriptor.bin"));
