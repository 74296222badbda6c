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
    println!("cargo:rerun-if-env-changed=EMSHAP_CI_LINK_CUDA");
    if env::var_os("CARGO_FEATURE_TORCH").is_some() {
        if env::var_os("EMSHAP_CI_LINK_CUDA").is_some_and(|v| v == "1") {
            // A build for another machine's CUDA libtorch (scripts/build_cuda.sh). Nothing
            // calls into libtorch_cuda.so directly (its static initialisers register CUDA),
            // so --as-needed would drop torch-sys's -ltorch_cuda: keep it. Its CUDA libraries
            // (cuBLAS, cuDNN, ...) are not here, only on the device, so leave their symbols
            // unchecked. No rpath: the device's libtorch is found through LD_LIBRARY_PATH.
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        } else if let Some(libtorch) = env::var_os("LIBTORCH") {
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
