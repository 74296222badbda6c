//! The log filter both executables use: `-q`/`-v` pick a level, `EMSHAP_CI_LOG` (an
//! `EnvFilter` directive) overrides it. `emshap-ci` hands its filter to `emshap-ci-train`,
//! so the trainer logs at the level the user asked for.

use std::sync::OnceLock;

static FILTER: OnceLock<String> = OnceLock::new();

/// The filter for `-q` (`quiet` times) and `-v` (`verbose` times).
pub fn level(quiet: u8, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        // librdkafka's own log lines repeat what our errors already say, and the AWS SDK's
        // (its credential chain's) what the store's errors say: the SDK's from -v, librdkafka's from -vv.
        (q, _) if q >= 2 => "error,rdkafka=off,aws_config=off,aws_smithy_runtime=off",
        (_, 0) => "warn,rdkafka=off,aws_config=off,aws_smithy_runtime=off",
        (_, 1) => "info,rdkafka=off",
        (_, 2) => "debug",
        _ => "trace",
    }
}

/// Starts logging to stderr with `default` unless `EMSHAP_CI_LOG` says otherwise.
pub fn init(default: &str) {
    let filter = std::env::var("EMSHAP_CI_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = FILTER.set(filter);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

/// The filter in effect (the default level when logging was never started).
pub fn current() -> String {
    FILTER
        .get()
        .cloned()
        .unwrap_or_else(|| level(0, 0).to_string())
}
