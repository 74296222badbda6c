//! Build script: compiles the protobuf contracts with prost (through `protox`, so no system
//! `protoc` is needed) and makes the binary find its native libraries at run time without
//! `LD_LIBRARY_PATH`: the path of ONNX Runtime's library compiled in as the default for
//! `ort`'s `load-dynamic`. (libtorch is linked by crates/emshap-train alone.)

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/feature_vector.proto", "proto/onnx.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    config.compile_fds(fds)?;

    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if let Some(ort) = env::var_os("ORT_DYLIB_PATH") {
        println!(
            "cargo:rustc-env=EMSHAP_CI_BUILD_ORT_DYLIB={}",
            PathBuf::from(ort).display()
        );
    } else {
        println!("cargo:rustc-env=EMSHAP_CI_BUILD_ORT_DYLIB=");
    }
    Ok(())
}
