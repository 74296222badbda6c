//! The errors users act on, each with a one-line message that names the thing, a hint, and
//! the fixed exit code of DESIGN §7. Unexpected failures (bugs) are `Internal` and carry
//! `anyhow` context; they must never be mistaken for a gate verdict, so they get their own
//! code (70, BSD's EX_SOFTWARE) instead of 1.

use std::path::{Path, PathBuf};

/// Exit codes: 0 pass, 1 gate failed, 2 usage/config, 3 external system, 4 data quality.
pub mod exit {
    pub const OK: i32 = 0;
    pub const GATE_FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const EXTERNAL: i32 = 3;
    pub const DATA_QUALITY: i32 = 4;
    pub const INTERNAL: i32 = 70;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, environment variable or setting has a value that cannot work.
    #[error("invalid {what}: {message}")]
    Usage { what: String, message: String },

    /// The config file exists but cannot be used.
    #[error("config file {}: {message} (fix the file or pass --config with another one)", path.display())]
    Config { path: PathBuf, message: String },

    /// A local file or folder the user named cannot be read or written.
    #[error("cannot {op} {}: {source} ({hint})", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// An output could not be written because of the machine's state (full disk, permissions,
    /// read-only file system), not because of a flag.
    #[error("cannot write {}: {problem} ({source}; {hint})", path.display())]
    Output {
        path: PathBuf,
        problem: &'static str,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// Kafka could not be reached or refused what was asked.
    #[error("kafka at {brokers}: {message} ({hint})")]
    Kafka {
        brokers: String,
        message: String,
        hint: String,
    },

    /// The model store could not be reached, refused a request, or holds something wrong.
    #[error("store {uri}: {message} ({hint})")]
    Store {
        uri: String,
        message: String,
        hint: String,
    },

    /// The GitHub API could not be reached or refused what was asked.
    #[error("github API {api}: {message} ({hint})")]
    GitHub {
        api: String,
        message: String,
        hint: String,
    },

    /// The data pulled is not good enough to train on.
    #[error("data quality: {message}")]
    DataQuality { message: String },

    /// The candidate failed the gate (DESIGN §7); metrics.json says which rules.
    #[error("gate failed: {message}")]
    GateFailed { message: String },

    /// Only production is deployed: `dispatch` was asked for another version.
    #[error("{sha} is not production in {store} (production: {production}); not dispatched (promote it first, or dispatch production's sha)")]
    NotProduction {
        sha: String,
        store: String,
        production: String,
    },

    /// `emshap-ci-train` is missing, is another version, or died before it reported.
    #[error("trainer {}: {message}", path.display())]
    Trainer {
        path: PathBuf,
        message: String,
        code: i32,
    },

    /// An error `emshap-ci-train` reported, relayed as it was: its message and exit code.
    #[error("{message}")]
    Relayed {
        kind: String,
        code: i32,
        message: String,
    },

    /// `doctor` found what a run needs missing or refused (the table says which and how to fix).
    #[error("doctor: failed checks: {failed} (the table above says how to fix each)")]
    Doctor {
        failed: String,
        /// The rows, for `--output json`.
        checks: serde_json::Value,
    },

    /// A bug or an unexpected condition.
    #[error("internal error: {0:#} (this is a bug in emshap-ci; please report it)")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage { .. }
            | Error::Config { .. }
            | Error::Io { .. }
            | Error::NotProduction { .. } => exit::USAGE,
            Error::Kafka { .. }
            | Error::Store { .. }
            | Error::GitHub { .. }
            | Error::Output { .. }
            | Error::Doctor { .. } => exit::EXTERNAL,
            Error::DataQuality { .. } => exit::DATA_QUALITY,
            Error::GateFailed { .. } => exit::GATE_FAILED,
            Error::Trainer { code, .. } | Error::Relayed { code, .. } => *code,
            Error::Internal(_) => exit::INTERNAL,
        }
    }

    /// A short machine-readable kind, for `--output json`.
    pub fn kind(&self) -> &str {
        match self {
            Error::Usage { .. } => "usage",
            Error::Config { .. } => "config",
            Error::Io { .. } => "io",
            Error::Output { .. } => "output",
            Error::Kafka { .. } => "kafka",
            Error::Store { .. } => "store",
            Error::GitHub { .. } => "github",
            Error::DataQuality { .. } => "data_quality",
            Error::GateFailed { .. } => "gate_failed",
            Error::NotProduction { .. } => "not_production",
            Error::Trainer { .. } => "trainer",
            Error::Doctor { .. } => "doctor",
            Error::Relayed { kind, .. } => kind,
            Error::Internal(_) => "internal",
        }
    }

    /// The error another emshap-ci process reported as (`kind`, exit `code`, `message`),
    /// with its kind and exit code kept.
    pub fn relayed(kind: &str, code: i32, message: String) -> Self {
        Error::Relayed {
            kind: kind.to_string(),
            code,
            message,
        }
    }

    pub fn usage(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Usage {
            what: what.into(),
            message: message.into(),
        }
    }

    pub fn data(message: impl Into<String>) -> Self {
        Error::DataQuality {
            message: message.into(),
        }
    }

    pub fn read(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op: "read",
            path: path.to_path_buf(),
            hint: "check that the path exists and is readable",
            source,
        }
    }

    /// Writing one of the tool's own outputs failed. A full disk, a permission problem or a
    /// read-only file system is the machine's state, not a bad flag: exit 3, saying which.
    pub fn write(path: &Path, source: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let problem = match source.kind() {
            K::StorageFull | K::QuotaExceeded => Some((
                "the disk is full",
                "free space there, or write elsewhere (--out, --work)",
            )),
            K::PermissionDenied => Some((
                "permission denied",
                "make the folder writable by this user, or write elsewhere (--out, --work)",
            )),
            K::ReadOnlyFilesystem => Some((
                "the file system is read-only",
                "write to a writable folder (--out, --work; in a container, a mounted volume)",
            )),
            _ => None,
        };
        match problem {
            Some((problem, hint)) => Error::Output {
                path: path.to_path_buf(),
                problem,
                hint,
                source,
            },
            None => Error::Io {
                op: "write",
                path: path.to_path_buf(),
                hint: "check that the folder exists, is writable and has space",
                source,
            },
        }
    }
}

/// The innermost cause of an error chain: the part that says what actually happened
/// ("Connection refused"), without a client library's wrappers.
pub fn deepest(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_design() {
        assert_eq!(Error::usage("window", "x").exit_code(), 2);
        assert_eq!(Error::data("x").exit_code(), 4);
        let kafka = Error::Kafka {
            brokers: "127.0.0.1:1".into(),
            message: "down".into(),
            hint: "h".into(),
        };
        assert_eq!(kafka.exit_code(), 3);
        assert_eq!(Error::Internal(anyhow::anyhow!("bug")).exit_code(), 70);
        let gate = Error::GateFailed {
            message: "power.rmse".into(),
        };
        assert_eq!(gate.exit_code(), 1);
        let p = Path::new("/out/metrics.json");
        for (kind, says) in [
            (std::io::ErrorKind::StorageFull, "the disk is full"),
            (std::io::ErrorKind::PermissionDenied, "permission denied"),
            (std::io::ErrorKind::ReadOnlyFilesystem, "read-only"),
        ] {
            let e = Error::write(p, std::io::Error::from(kind));
            assert_eq!(e.exit_code(), 3, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = Error::write(p, std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.exit_code(), 2, "{e}");
    }
}
