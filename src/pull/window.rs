//! The `--window` language: which messages a pull reads.
//!
//! - `all`: everything present when the pull starts (low to high watermark);
//! - `last:N`: the last N messages of each partition;
//! - `offsets:START-END` for every partition, or `offsets:P=START-END,P=START-END` per
//!   partition (END exclusive; partitions not named are not read);
//! - `time:FROM..TO`: messages with FROM ≤ timestamp < TO, each an RFC 3339 time or epoch
//!   milliseconds; resolved with `offsets_for_times`, and a message inside the offsets whose
//!   own `timestamp_ms` lies outside is invalid (`outside_window`);
//! - `committed`: from the consumer group's committed offsets (`--group`) to the end.
//!
//! End offsets are fixed when the pull starts, so a pull always terminates.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    All,
    Last(u64),
    Offsets(OffsetSpec),
    Time { from_ms: i64, to_ms: i64 },
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetSpec {
    Every { start: i64, end: i64 },
    Per(Vec<(i32, i64, i64)>),
}

fn bad(spec: &str, why: &str) -> Error {
    Error::usage(
        "--window",
        format!("'{spec}': {why} (use all, last:N, offsets:START-END, offsets:P=START-END,..., time:FROM..TO or committed)"),
    )
}

fn parse_range(spec: &str, s: &str) -> Result<(i64, i64)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| bad(spec, "an offset range is START-END"))?;
    let a: i64 = a
        .trim()
        .parse()
        .map_err(|_| bad(spec, "offsets are integers"))?;
    let b: i64 = b
        .trim()
        .parse()
        .map_err(|_| bad(spec, "offsets are integers"))?;
    if a < 0 || b < a {
        return Err(bad(spec, "an offset range needs 0 <= START <= END"));
    }
    Ok((a, b))
}

/// Parses an RFC 3339 time or epoch milliseconds.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

impl FromStr for Window {
    type Err = Error;
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec == "all" {
            return Ok(Window::All);
        }
        if spec == "committed" {
            return Ok(Window::Committed);
        }
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad(spec, "unknown window"))?;
        match kind {
            "last" => {
                let n: u64 = rest.parse().map_err(|_| bad(spec, "N is a count"))?;
                if n == 0 {
                    return Err(bad(spec, "N must be at least 1"));
                }
                Ok(Window::Last(n))
            }
            "offsets" => {
                if rest.contains('=') {
                    let mut per = Vec::new();
                    for part in rest.split(',') {
                        let (p, r) = part
                            .split_once('=')
                            .ok_or_else(|| bad(spec, "per-partition ranges are P=START-END"))?;
                        let p: i32 = p
                            .trim()
                            .parse()
                            .map_err(|_| bad(spec, "a partition is an integer"))?;
                        if per.iter().any(|(q, _, _)| *q == p) {
                            return Err(bad(spec, "a partition is named twice"));
                        }
                        let (a, b) = parse_range(spec, r)?;
                        per.push((p, a, b));
                    }
                    per.sort_unstable();
                    Ok(Window::Offsets(OffsetSpec::Per(per)))
                } else {
                    let (start, end) = parse_range(spec, rest)?;
                    Ok(Window::Offsets(OffsetSpec::Every { start, end }))
                }
            }
            "time" => {
                let (a, b) = rest
                    .split_once("..")
                    .ok_or_else(|| bad(spec, "a time range is FROM..TO"))?;
                let from_ms = parse_time_ms(a).ok_or_else(|| bad(spec, "FROM is not a time"))?;
                let to_ms = parse_time_ms(b).ok_or_else(|| bad(spec, "TO is not a time"))?;
                if to_ms <= from_ms {
                    return Err(bad(spec, "TO must be after FROM"));
                }
                Ok(Window::Time { from_ms, to_ms })
            }
            _ => Err(bad(spec, "unknown window")),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::All => write!(f, "all"),
            Window::Committed => write!(f, "committed"),
            Window::Last(n) => write!(f, "last:{n}"),
            Window::Offsets(OffsetSpec::Every { start, end }) => {
                write!(f, "offsets:{start}-{end}")
            }
            Window::Offsets(OffsetSpec::Per(per)) => {
                let parts: Vec<String> =
                    per.iter().map(|(p, a, b)| format!("{p}={a}-{b}")).collect();
                write!(f, "offsets:{}", parts.join(","))
            }
            Window::Time { from_ms, to_ms } => write!(f, "time:{from_ms}..{to_ms}"),
        }
    }
}

impl Window {
    /// The timestamp bounds a record must lie in, if the window has any.
    pub fn time_bounds(&self) -> Option<(i64, i64)> {
        match self {
            Window::Time { from_ms, to_ms } => Some((*from_ms, *to_ms)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for s in [
            "all",
            "committed",
            "last:500",
            "offsets:10-20",
            "offsets:0=0-5,2=3-9",
            "time:1700000000000..1700000100000",
        ] {
            let w: Window = s.parse().unwrap();
            assert_eq!(w.to_string(), s);
        }
        let w: Window = "time:2023-11-14T22:13:20Z..2023-11-14T22:13:21Z"
            .parse()
            .unwrap();
        assert_eq!(
            w.time_bounds(),
            Some((1_700_000_000_000, 1_700_000_001_000))
        );
    }

    #[test]
    fn rejects_nonsense_with_the_grammar() {
        for s in [
            "",
            "last:0",
            "last:x",
            "offsets:5-1",
            "offsets:0=1-2,0=3-4",
            "time:5..1",
            "yesterday",
        ] {
            let e = s.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains("--window") && e.contains("last:N"), "{s}: {e}");
        }
    }
}
