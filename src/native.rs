//! Loading the native libraries. ONNX Runtime is loaded at run time (ort's `load-dynamic`)
//! from `ORT_DYLIB_PATH`, else from `../lib/libonnxruntime.so` beside the executable (the
//! training image's layout, /opt/emshap-ci/{bin,lib}), else from the path build.rs compiled
//! in (set by scripts/setup.sh), so the binary needs no `LD_LIBRARY_PATH`. libtorch is linked by
//! `emshap-ci-train` alone (crates/emshap-train), with an rpath to its folder.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::{Error, Result};

/// Where libonnxruntime is expected.
pub fn ort_library() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(beside_the_executable)
        .or_else(|| {
            let built = env!("EMSHAP_CI_BUILD_ORT_DYLIB");
            (!built.is_empty()).then(|| PathBuf::from(built))
        })
}

/// `<dir of the executable>/../lib/libonnxruntime.so`, when it is there: an installation
/// that carries its own ONNX Runtime (the training image) needs no absolute build path.
fn beside_the_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lib = exe.parent()?.parent()?.join("lib/libonnxruntime.so");
    lib.is_file().then_some(lib)
}

/// The process's ONNX Runtime environment, loaded once.
pub fn ort_environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let path = ort_library().ok_or_else(|| {
            "no ONNX Runtime library configured (run scripts/setup.sh, or set ORT_DYLIB_PATH to libonnxruntime.so)".to_string()
        })?;
        if !path.is_file() {
            return Err(format!(
                "ONNX Runtime library {} not found (run scripts/setup.sh, or set ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
            .with_name("emshap-ci")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    });
    env.as_ref()
        .map_err(|m| Error::usage("onnx runtime", m.clone()))
}

/// Makes glibc keep freed memory for reuse instead of returning it to the system after every
/// large free. Training allocates and frees tens of megabytes per layer per batch; with
/// glibc's defaults each such buffer is a fresh mmap whose pages fault in again (measured:
/// a third of an EMSHAP epoch's time in the kernel, BENCHMARKS.md). Called at the start of
/// training only; a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before training allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
