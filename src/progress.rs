//! Progress for long stages: an indicatif bar on a terminal, periodic plain lines (every
//! few seconds, on stderr) when not, nothing when quiet. Shared by reference across threads.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    label: String,
    mode: Mode,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Lines {
        done: AtomicU64,
        total: AtomicU64,
        unit: Mutex<&'static str>,
        last: Mutex<Instant>,
        every: Duration,
    },
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise; `quiet` hides it.
    pub fn new(label: &str, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>6} [{bar:30}] {percent:>3}% {human_pos}/{human_len} {msg} (eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            Mode::Bar(bar)
        } else {
            Mode::Lines {
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                unit: Mutex::new(""),
                last: Mutex::new(Instant::now()),
                every: Duration::from_secs(5),
            }
        };
        Self {
            label: label.to_string(),
            mode,
        }
    }

    pub fn set_total(&self, total: u64, unit: &'static str) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => {
                b.set_length(total);
                b.set_message(unit);
            }
            Mode::Lines {
                total: t, unit: u, ..
            } => {
                t.store(total, Ordering::Relaxed);
                *u.lock().expect("not poisoned") = unit;
            }
        }
    }

    pub fn inc(&self, n: u64) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => b.inc(n),
            Mode::Lines {
                done,
                total,
                unit,
                last,
                every,
            } => {
                let d = done.fetch_add(n, Ordering::Relaxed) + n;
                let mut last = last.lock().expect("not poisoned");
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    let t = total.load(Ordering::Relaxed);
                    let pct = if t > 0 {
                        d as f64 * 100.0 / t as f64
                    } else {
                        0.0
                    };
                    let unit = *unit.lock().expect("not poisoned");
                    eprintln!("{}: {d}/{t} {unit} ({pct:.0} %)", self.label);
                }
            }
        }
    }

    /// Whether nothing is shown (quiet): a child process that draws its own progress is
    /// told so.
    pub fn is_hidden(&self) -> bool {
        matches!(self.mode, Mode::Hidden)
    }

    /// The label shown beside the progress ("train emshap").
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn finish(&self) {
        if let Mode::Bar(b) = &self.mode {
            b.finish_and_clear();
        }
    }
}
