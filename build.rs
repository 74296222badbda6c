//! Build script: compiles the protobuf contracts with prost (through `protox`, so no system
//! `protoc` is needed) and makes the binary find its native libraries at run time without
//! `LD_LIBRARY_PATH`: an rpath to libtorch's folder, and the path of ONNX Runtime's library
//! compiled in as the default for `ort`'s `load-dynamic`.

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

    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if env::var_os("CARGO_FEATURE_TORCH").is_some() {
        if let Some(libtorch) = env::var_os("LIBTORCH") {
            let lib = PathBuf::from(libtorch).join("lib");
            // torch-sys links libtorch but leaves finding it at run time to the user.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
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
