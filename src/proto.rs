//! The protobuf contracts, compiled by prost in build.rs: `FeatureVector` (DESIGN §3, the
//! Data Agent's wire format) and the subset of ONNX that the exporters write.
//! Generated code only; the meaning of each field lives in `schema`.

#[allow(clippy::all, missing_docs)]
pub mod attribution {
    include!(concat!(env!("OUT_DIR"), "/attribution.v1.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use attribution::FeatureVector;
