//! Build script of the trainer, the only executable that links libtorch: an rpath to
//! libtorch's folder, so it runs without `LD_LIBRARY_PATH` (or, for a release,
//! `EMSHAP_CI_TRAIN_RPATH`, e.g. `$ORIGIN/../lib`), or for a CUDA build for another machine
//! (scripts/build_cuda.sh) the links that build needs.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=EMSHAP_CI_LINK_CUDA");
    println!("cargo:rerun-if-env-changed=EMSHAP_CI_TRAIN_RPATH");
    if env::var_os("EMSHAP_CI_LINK_CUDA").is_some_and(|v| v == "1") {
        // A build for another machine's CUDA libtorch (scripts/build_cuda.sh). Nothing
        // calls into libtorch_cuda.so directly (its static initialisers register CUDA),
        // so --as-needed would drop torch-sys's -ltorch_cuda: keep it. Its CUDA libraries
        // (cuBLAS, cuDNN, ...) are not here, only on the device, so leave their symbols
        // unchecked. No rpath: the device's libtorch is found through LD_LIBRARY_PATH.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    } else if let Some(rpath) = env::var_os("EMSHAP_CI_TRAIN_RPATH").filter(|v| !v.is_empty()) {
        // The release build (release.yml: `$ORIGIN/../lib`): the training image carries
        // libtorch beside the binaries, and no path of the build machine is baked in. The
        // release tarball's trainer finds libtorch through LD_LIBRARY_PATH (install.sh).
        println!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            rpath.to_string_lossy()
        );
    } else if let Some(libtorch) = env::var_os("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        // torch-sys links libtorch but leaves finding it at run time to the user.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
