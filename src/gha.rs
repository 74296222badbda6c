//! GitHub Actions I/O from the binary itself (DESIGN §9): step outputs (`$GITHUB_OUTPUT`),
//! the job summary (`$GITHUB_STEP_SUMMARY`), workflow commands on stdout (`::error::`,
//! `::warning::`, `::notice::`, `::group::`/`::endgroup::`, `::add-mask::`).
//!
//! Outside Actions (`GITHUB_ACTIONS` unset) every call is a no-op, so the same code runs on a
//! laptop. Values go through the documented escapes, and multi-line outputs use a random
//! heredoc delimiter, so no value can forge another output or command.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where the runner wants things; `None` outside GitHub Actions.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    output: Option<PathBuf>,
    summary: Option<PathBuf>,
    /// Workflow commands go to stdout only inside Actions.
    commands: bool,
}

/// `%`, CR and LF in a command's message (the runner's own escaping).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A command property value also escapes `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

impl Actions {
    /// From the environment the runner sets.
    pub fn from_env() -> Self {
        let on = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty() && on)
                .map(PathBuf::from)
        };
        Actions {
            output: path("GITHUB_OUTPUT"),
            summary: path("GITHUB_STEP_SUMMARY"),
            commands: on,
        }
    }

    /// For tests: these files, commands on.
    pub fn with_files(output: PathBuf, summary: PathBuf) -> Self {
        Actions {
            output: Some(output),
            summary: Some(summary),
            commands: true,
        }
    }

    pub fn active(&self) -> bool {
        self.commands
    }

    fn append(path: &Option<PathBuf>, text: &str) -> Result<()> {
        let Some(p) = path else { return Ok(()) };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| Error::write(p, e))?;
        f.write_all(text.as_bytes()).map_err(|e| Error::write(p, e))
    }

    /// One step output. Names are [A-Za-z0-9_-]; values may hold anything, newlines too.
    pub fn output(&self, name: &str, value: &str) -> Result<()> {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "output name {name:?}"
        );
        let delimiter = loop {
            let d = format!("EMSHAP_CI_EOF_{:016x}", rand::random::<u64>());
            if !value.contains(&d) {
                break d;
            }
        };
        Self::append(
            &self.output,
            &format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"),
        )
    }

    /// Appends markdown to the job summary.
    pub fn summary(&self, markdown: &str) -> Result<()> {
        Self::append(&self.summary, markdown)
    }

    fn command(&self, cmd: &str, props: &str, message: &str) {
        if self.commands {
            println!("::{cmd}{props}::{}", escape_data(message));
        }
    }

    pub fn error(&self, title: &str, message: &str) {
        self.command(
            "error",
            &format!(" title={}", escape_property(title)),
            message,
        );
    }

    pub fn warning(&self, title: &str, message: &str) {
        self.command(
            "warning",
            &format!(" title={}", escape_property(title)),
            message,
        );
    }

    pub fn notice(&self, title: &str, message: &str) {
        self.command(
            "notice",
            &format!(" title={}", escape_property(title)),
            message,
        );
    }

    /// Masks a secret in the rest of the job's log. Empty values are skipped (masking ""
    /// would be an error in the runner).
    pub fn mask(&self, secret: &str) {
        for line in secret.lines().filter(|l| !l.trim().is_empty()) {
            self.command("add-mask", "", line);
        }
    }

    /// Runs `f` inside a collapsible log group.
    pub fn group<T>(&self, title: &str, f: impl FnOnce() -> T) -> T {
        self.command("group", "", title);
        let out = f();
        self.command("endgroup", "", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_use_a_delimiter_no_value_can_forge() {
        let dir = tempfile::tempdir().unwrap();
        let (o, s) = (dir.path().join("out"), dir.path().join("sum"));
        let a = Actions::with_files(o.clone(), s.clone());
        a.output("verdict", "pass").unwrap();
        a.output("note", "two\nlines\nverdict=fail").unwrap();
        a.summary("## hi\n").unwrap();
        let text = std::fs::read_to_string(&o).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        let (name, delim) = first.split_once("<<").unwrap();
        assert_eq!(name, "verdict");
        assert_eq!(lines.next(), Some("pass"));
        assert_eq!(lines.next(), Some(delim));
        let second = lines.next().unwrap();
        let (name, delim2) = second.split_once("<<").unwrap();
        assert_eq!(name, "note");
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != delim2).collect();
        assert_eq!(body, ["two", "lines", "verdict=fail"]);
        assert_eq!(std::fs::read_to_string(&s).unwrap(), "## hi\n");
    }

    #[test]
    fn messages_and_properties_are_escaped() {
        assert_eq!(escape_data("50% done\r\n::x::"), "50%25 done%0D%0A::x::");
        assert_eq!(escape_property("a:b,c\n"), "a%3Ab%2Cc%0A");
    }

    #[test]
    fn outside_actions_nothing_is_written() {
        let a = Actions::default();
        assert!(!a.active());
        a.output("verdict", "pass").unwrap();
        a.summary("x").unwrap();
    }
}
