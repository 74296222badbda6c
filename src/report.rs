//! The evaluation as markdown (DESIGN §9): the PR comment, the job summary and `report.md`.
//!
//! Verdict first, a forced override shown loudly, then per model a table (metric |
//! production | candidate | Δ | Δ% | rule | ✓/✗), the baseline, links to the version, the
//! data summary and the training curves as mermaid `xychart-beta` charts. GitHub caps a
//! comment at 65,536 characters and a job summary at 1 MiB: `render` drops whole sections
//! from the least important end (curves, then the data summary, then links) until it fits,
//! says what it left out, and never drops the verdict or the gate tables.

use std::fmt::Write as _;

use crate::evaluate::{Metrics, Verdict};
use crate::gate::{Check, Direction, Rule};
use crate::pull::Dataset;
use crate::train::History;

/// GitHub's limit on an issue comment's body, in characters (we count bytes: stricter).
pub const COMMENT_LIMIT: usize = 65_536;
/// GitHub's limit on one step's job summary.
pub const SUMMARY_LIMIT: usize = 1 << 20;

/// What a report is made of. Only `metrics` is required.
#[derive(Default)]
pub struct Input<'a> {
    pub metrics: Option<&'a Metrics>,
    pub dataset: Option<&'a Dataset>,
    pub histories: Vec<&'a History>,
    /// The commit sha the candidate is (or would be) published under.
    pub sha: Option<&'a str>,
    /// The version's manifest URI, when it was published.
    pub manifest_uri: Option<&'a str>,
    /// A first line the reader does not see (the comment's marker).
    pub marker: Option<&'a str>,
}

/// Formats a figure compactly: 4 significant digits, no exponent for ordinary magnitudes.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = if a == 0.0 {
        0
    } else {
        (3 - a.log10().floor() as i32).clamp(0, 6) as usize
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

/// A rule in words: "lower ≤ +2 %", "higher ≥ 0.9, no worse".
pub fn rule_text(r: &Rule, bootstrap: bool) -> String {
    let mut parts = vec![match r.direction {
        Direction::Lower => "lower".to_string(),
        Direction::Higher => "higher".to_string(),
    }];
    if let Some(m) = r.min {
        parts.push(format!("≥ {}", num(m)));
    }
    if let Some(m) = r.max {
        parts.push(format!("≤ {}", num(m)));
    }
    if !bootstrap {
        let worse = match r.direction {
            Direction::Lower => "+",
            Direction::Higher => "−",
        };
        match (r.max_regression_abs, r.max_regression_rel) {
            (None, None) => parts.push("no worse".into()),
            (a, rel) => {
                if let Some(a) = a {
                    parts.push(format!("Δ {worse}{} max", num(a)));
                }
                if let Some(rel) = rel {
                    parts.push(format!("Δ% {worse}{} max", num(rel * 100.0)));
                }
            }
        }
    }
    parts.join(", ")
}

/// Escapes what would break a table cell or inject markup.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', " ")
}

fn verdict_section(m: &Metrics, sha: Option<&str>) -> String {
    let failed: Vec<&Check> = m.checks.iter().filter(|c| !c.passed).collect();
    let mut s = String::new();
    let head = match m.verdict {
        Verdict::Pass => "✅ **Gate passed**",
        Verdict::Forced => "⚠️ **Gate FORCED** (failed, overridden)",
        Verdict::Fail => "❌ **Gate failed**",
    };
    // A commit sha is shortened as git does; other version ids (local runs) are shown whole.
    let short = |s: &str| {
        if s.len() > 12 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            s[..12].to_string()
        } else {
            s.to_string()
        }
    };
    let sha = sha.map(|s| format!(" for `{}`", short(s)));
    let _ = writeln!(
        s,
        "## {head}{}: {} of {} checks passed",
        sha.unwrap_or_default(),
        m.checks.len() - failed.len(),
        m.checks.len()
    );
    if let Some(f) = &m.force {
        let _ = writeln!(
            s,
            "\n> [!CAUTION]\n> **Forced by {} :** {}\n> Overridden failures: {}",
            cell(&f.by),
            cell(&f.reason),
            if f.failed.is_empty() {
                "none".to_string()
            } else {
                f.failed
                    .iter()
                    .map(|x| cell(x))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    } else if !failed.is_empty() {
        let _ = writeln!(s);
        for c in &failed {
            let _ = writeln!(s, "- ✗ `{}.{}`: {}", c.model, c.metric, cell(&c.reason));
        }
    }
    s
}

fn baseline_section(m: &Metrics) -> String {
    use crate::gate::BaselineKind::*;
    let what = match (m.baseline, &m.production_sha) {
        (SameRows, Some(p)) => format!("production `{p}`, scored on the same test rows"),
        (SameRows, None) => "production's files, scored on the same test rows".into(),
        (StoredMetrics, p) => format!(
            "production{}'s stored metrics.json (its files could not be scored)",
            p.as_deref().map(|p| format!(" `{p}`")).unwrap_or_default()
        ),
        (Bootstrap, _) => {
            "none (bootstrap: no production version yet, absolute bounds only)".into()
        }
    };
    let mut s = format!("**Baseline:** {what}.");
    if let Some(n) = &m.baseline_note {
        let _ = write!(s, " {}", cell(n));
    }
    s.push('\n');
    s
}

fn tables_section(m: &Metrics) -> String {
    let bootstrap = m.production.is_none();
    let mut s = String::new();
    let mut models: Vec<&str> = m.checks.iter().map(|c| c.model.as_str()).collect();
    models.dedup();
    for model in models {
        let rows = m
            .rows
            .get(model)
            .map(|n| format!(" ({n} test rows)"))
            .unwrap_or_default();
        let _ = writeln!(s, "\n### {model}{rows}\n");
        let _ = writeln!(
            s,
            "| metric | production | candidate | Δ | Δ% | rule | |\n|---|---:|---:|---:|---:|---|:-:|"
        );
        for c in m.checks.iter().filter(|c| c.model == model) {
            let opt = |v: Option<f64>| v.map(num).unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.metric,
                opt(c.baseline),
                opt(c.candidate),
                c.delta.map(signed).unwrap_or_else(|| "—".into()),
                c.delta_rel
                    .map(|r| format!("{}%", signed(r * 100.0)))
                    .unwrap_or_else(|| "—".into()),
                rule_text(&c.rule, bootstrap),
                if c.passed { "✓" } else { "✗" }
            );
        }
        for c in m.checks.iter().filter(|c| c.model == model) {
            if let Some(note) = &c.note {
                let _ = writeln!(s, "\n*{}*: {}.", c.metric, cell(note));
            }
        }
        if model == "emshap" {
            if let Some(line) = emshap_line(m.candidate.get("emshap")) {
                let _ = writeln!(s, "\n{line}");
            }
        }
    }
    s
}

/// The candidate's EMSHAP facts beside the gated KPIs: energy on or off, K, the NLL's
/// standard error and K → 4K gap, the effective sample size.
fn emshap_line(k: Option<&std::collections::BTreeMap<String, f64>>) -> Option<String> {
    let k = k?;
    let energy = k.get("energy")?;
    let mut parts = vec![if *energy > 0.5 {
        "**Energy correction: on** (residual form p ∝ q·exp(−E))".to_string()
    } else {
        "**Energy correction: off** — it did not beat its own proposal on validation, so the \
         shipped density is the proposal"
            .to_string()
    }];
    if let Some(p) = k.get("proposals") {
        parts.push(format!("K = {}", num(*p)));
    }
    if let (Some(n), Some(se)) = (k.get("nll"), k.get("nll_se")) {
        parts.push(format!("nll {} ± {}", num(*n), num(*se)));
    }
    if let Some(g) = k.get("nll_k_gap") {
        parts.push(format!("|nll(K) − nll(4K)| = {}", num(*g)));
    }
    if let Some(e) = k.get("ess") {
        parts.push(format!("effective sample size {} of K", num(*e)));
    }
    Some(parts.join("; ") + ".")
}

fn links_section(input: &Input) -> Option<String> {
    let uri = input.manifest_uri?;
    Some(format!(
        "**Version:** `{}` (manifest with every file's sha256)\n",
        cell(uri)
    ))
}

fn data_section(d: &Dataset) -> String {
    let c = &d.counts;
    let mut s = String::from("\n### Data\n\n");
    let _ = writeln!(
        s,
        "{} `{}`, window `{}`: {} messages → {} rows ({} duplicates, {} invalid).",
        d.source.kind,
        cell(&d.source.name),
        cell(&d.source.window),
        c.messages,
        c.rows,
        c.duplicates,
        c.invalid_total
    );
    if !c.invalid.is_empty() {
        let reasons: Vec<String> = c.invalid.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "Invalid by reason: {}.", reasons.join(", "));
    }
    let splits: Vec<String> = d
        .split
        .iter()
        .map(|(k, v)| format!("{k} {}", v.rows))
        .collect();
    let _ = writeln!(
        s,
        "Splits: {}. Snapshot sha256 `{}`.",
        splits.join(", "),
        &d.snapshot_sha256[..d.snapshot_sha256.len().min(16)]
    );
    s
}

fn data_drift_section(d: &crate::drift::TrainingDrift) -> String {
    let moved = d.moved();
    let mut s = format!(
        "\n### Training data against production\n\nThe candidate's {} train rows against production `{}`'s train split \
         (PSI on its deciles, atoms as their own bins; a band counts only above the sampling noise): ",
        d.rows,
        cell(&d.production_sha)
    );
    if moved.is_empty() {
        s.push_str("no feature moved.\n");
    } else {
        let names: Vec<String> = moved
            .iter()
            .map(|f| {
                format!(
                    "`{}` {} (PSI {})",
                    cell(&f.name),
                    f.band,
                    num(f.psi.unwrap_or(0.0))
                )
            })
            .collect();
        let _ = writeln!(s, "**{} moved**: {}.", moved.len(), names.join(", "));
    }
    s.push('\n');
    s.push_str(&crate::drift::psi_chart(
        &d.features,
        8,
        "PSI against production's train split (top 8)",
    ));
    s.push_str("\n| feature | band | PSI | noise | KS | W1/σ | outside range | missing (production) |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    let opt = |v: Option<f64>| v.map_or("–".to_string(), num);
    for f in &d.features {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            cell(&f.name),
            f.band,
            opt(f.psi),
            opt(f.noise_floor),
            opt(f.ks),
            opt(f.w1_over_sd),
            opt(f.outside_range),
            opt(f.missing_rate),
            opt(f.reference_missing_rate)
        );
    }
    s
}

/// At most `max` evenly spaced points of a series (first and last kept).
fn thin(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * (n - 1) / (max - 1)).collect()
}

fn curves_section(h: &History) -> String {
    let idx = thin(h.epochs.len(), 60);
    if idx.is_empty() {
        return String::new();
    }
    let list = |f: &dyn Fn(usize) -> f64| {
        idx.iter()
            .map(|&i| num(f(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let epochs: Vec<String> = idx.iter().map(|&i| h.epochs[i].epoch.to_string()).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n<details><summary>{} training: best epoch {} of {} (validation loss {}), on {}</summary>\n",
        h.model,
        h.best_epoch,
        h.epochs.len(),
        num(h.best_val_loss),
        cell(&h.device)
    );
    let _ = writeln!(
        s,
        "```mermaid\nxychart-beta\n    title \"{}: loss per epoch (train, validation)\"\n    x-axis \"epoch\" [{}]\n    y-axis \"loss\"\n    line [{}]\n    line [{}]\n```\n\n</details>",
        h.model,
        epochs.join(", "),
        list(&|i| h.epochs[i].train_loss),
        list(&|i| h.epochs[i].val_loss),
    );
    s
}

/// The top features by mean |φ| as a mermaid bar chart, with the efficiency check.
fn attribution_section(g: &crate::explain::Global) -> String {
    let mut top: Vec<(&String, f64)> = g.mean_abs_phi.iter().map(|(k, v)| (k, *v)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(10);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Attribution\n\nMean |φ| (watts) per feature over {} test rows ({}, value function {}); \
         the φ of a row add up to its prediction minus the base value (on average \
         {} W), off by at most {} (efficiency).\n",
        g.rows,
        g.method,
        match (&g.value_function, g.draws) {
            (Some(v), Some(d)) => format!("{v}, {d} joint draws per coalition"),
            (Some(v), None) => v.clone(),
            (None, _) => format!("mean, {} proposals per imputation", g.proposals),
        },
        num(g.mean_prediction_minus_base),
        num(g.efficiency_gap)
    );
    let names: Vec<String> = top.iter().map(|(k, _)| format!("\"{k}\"")).collect();
    let values: Vec<String> = top.iter().map(|(_, v)| num(*v)).collect();
    let _ = writeln!(
        s,
        "```mermaid\nxychart-beta\n    title \"top features by mean |φ|\"\n    x-axis [{}]\n    y-axis \"watts\"\n    bar [{}]\n```",
        names.join(", "),
        values.join(", ")
    );
    s
}

/// What each model was trained on: rows (a seeded sample when fewer than the train split)
/// and device.
fn training_line(input: &Input) -> Option<String> {
    if input.histories.is_empty() {
        return None;
    }
    let total = input
        .dataset
        .and_then(|d| d.split.get("train"))
        .map(|s| s.rows as usize);
    let parts: Vec<String> = input
        .histories
        .iter()
        .map(|h| match total {
            Some(t) if h.rows_train < t => format!(
                "{} on a seeded sample of {} of the {t} train rows ({})",
                h.model, h.rows_train, h.device
            ),
            _ => format!("{} on {} train rows ({})", h.model, h.rows_train, h.device),
        })
        .collect();
    Some(format!("\n**Training:** {}.\n", parts.join("; ")))
}

/// The report, at most `limit` bytes.
pub fn render(input: &Input, limit: usize) -> String {
    let mut head = String::new();
    if let Some(mk) = input.marker {
        let _ = writeln!(head, "{mk}");
    }
    let Some(m) = input.metrics else {
        head.push_str("## ❔ No evaluation\n");
        return head;
    };
    head.push_str(&verdict_section(m, input.sha));
    head.push('\n');
    head.push_str(&baseline_section(m));
    head.push_str(&tables_section(m));
    if let Some(t) = training_line(input) {
        head.push_str(&t);
    }
    // The rest, most important first; dropped from the end to fit.
    let mut rest: Vec<(&str, String)> = Vec::new();
    if let Some(g) = &m.attribution {
        rest.push(("attribution", attribution_section(g)));
    }
    if let Some(d) = &m.data_drift {
        rest.push(("data drift", data_drift_section(d)));
    }
    if let Some(l) = links_section(input) {
        rest.push(("links", format!("\n{l}")));
    }
    if let Some(d) = input.dataset {
        rest.push(("data summary", data_section(d)));
    }
    for h in &input.histories {
        rest.push(("training curves", curves_section(h)));
    }
    let footer = |dropped: &[&str]| {
        if dropped.is_empty() {
            String::new()
        } else {
            let mut names: Vec<&str> = dropped.to_vec();
            names.dedup();
            format!(
                "\n_Left out to stay within GitHub's size limit: {}._\n",
                names.join(", ")
            )
        }
    };
    let mut dropped: Vec<&str> = Vec::new();
    loop {
        let body: String = rest.iter().map(|(_, s)| s.as_str()).collect();
        let out = format!("{head}{body}{}", footer(&dropped));
        if out.len() <= limit {
            return out;
        }
        match rest.pop() {
            Some((name, _)) => dropped.insert(0, name),
            None => {
                // The verdict and tables alone are too long: cut at a char boundary,
                // keeping the verdict line.
                let note = "\n\n_…cut to stay within GitHub's size limit._\n";
                let mut end = limit.saturating_sub(note.len());
                while !out.is_char_boundary(end) {
                    end -= 1;
                }
                return format!("{}{note}", &out[..end]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{default_rules, judge, BaselineKind, Kpis};

    fn kpis(mse: f64, r2: f64) -> Kpis {
        let mut k = Kpis::new();
        k.entry("power".into())
            .or_default()
            .insert("mse".into(), mse);
        k.entry("power".into()).or_default().insert("r2".into(), r2);
        k
    }

    fn metrics(cand: Kpis, prod: Option<Kpis>) -> Metrics {
        let mut rules = default_rules();
        rules.retain(|model, _| model == "power");
        for r in rules.values_mut() {
            r.retain(|m, _| m == "mse" || m == "r2");
        }
        let checks = judge(&rules, &cand, prod.as_ref());
        let pass = checks.iter().all(|c| c.passed);
        Metrics {
            format: "emshap-ci.metrics/1".into(),
            verdict: if pass { Verdict::Pass } else { Verdict::Fail },
            baseline: if prod.is_some() {
                BaselineKind::SameRows
            } else {
                BaselineKind::Bootstrap
            },
            production_sha: prod.as_ref().map(|_| "abc1234".into()),
            baseline_note: None,
            candidate: cand,
            production: prod,
            checks,
            force: None,
            attribution: None,
            data_drift: None,
            prediction_reference: None,
            rows: [("power".to_string(), 1000)].into(),
            seed: 1,
            mask_rate: 0.5,
            proposals: 20,
            snapshot_sha256: "00".repeat(32),
            models: Default::default(),
            seconds: 1.0,
        }
    }

    #[test]
    fn numbers_are_short_and_signed() {
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(12345.678), "12346");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1.5e-6), "1.500e-6");
        assert_eq!(signed(0.25), "+0.25");
        assert_eq!(signed(-0.25), "-0.25");
    }

    #[test]
    fn the_verdict_comes_first_and_every_check_has_a_row() {
        let m = metrics(kpis(2.0, 0.95), Some(kpis(1.0, 0.96)));
        let r = render(
            &Input {
                metrics: Some(&m),
                marker: Some("<!-- emshap-ci -->"),
                ..Default::default()
            },
            COMMENT_LIMIT,
        );
        let mut lines = r.lines();
        assert_eq!(lines.next(), Some("<!-- emshap-ci -->"));
        assert!(
            lines.next().unwrap().starts_with("## ❌ **Gate failed**"),
            "{r}"
        );
        assert!(
            r.contains("| mse | 1 | 2 | +1 | +100% | lower, no worse | ✗ |"),
            "{r}"
        );
        assert!(
            r.contains("| r2 | 0.96 | 0.95 | -0.01 | -1.042% | higher, ≥ 0.9, no worse | ✗ |"),
            "{r}"
        );
        assert!(
            r.contains("production `abc1234`, scored on the same test rows"),
            "{r}"
        );
        let boot = metrics(kpis(1.0, 0.95), None);
        let r = render(
            &Input {
                metrics: Some(&boot),
                ..Default::default()
            },
            COMMENT_LIMIT,
        );
        assert!(r.starts_with("## ✅ **Gate passed**"), "{r}");
        assert!(r.contains("| mse | — | 1 | — | — | lower | ✓ |"), "{r}");
        assert!(r.contains("bootstrap"), "{r}");
    }

    #[test]
    fn a_forced_override_is_loud_and_names_who_and_why() {
        let mut m = metrics(kpis(2.0, 0.95), Some(kpis(1.0, 0.96)));
        m.verdict = Verdict::Forced;
        m.force = Some(crate::evaluate::Force {
            by: "octocat".into(),
            reason: "incident <42> | hotfix".into(),
            failed: vec!["power.mse: worse".into()],
        });
        let r = render(
            &Input {
                metrics: Some(&m),
                ..Default::default()
            },
            COMMENT_LIMIT,
        );
        assert!(r.starts_with("## ⚠️ **Gate FORCED**"), "{r}");
        assert!(r.contains("[!CAUTION]") && r.contains("octocat"), "{r}");
        assert!(r.contains("incident &lt;42&gt; \\| hotfix"), "{r}");
    }

    #[test]
    fn over_the_limit_the_least_important_parts_go_never_the_verdict() {
        let m = metrics(kpis(1.0, 0.95), Some(kpis(1.0, 0.95)));
        let mut h: History = serde_json::from_value(serde_json::json!({
            "format": "x", "model": "power", "device": "cpu", "seed": 1, "threads": 1,
            "batch_size": 1, "rows_train": 1, "rows_val": 1, "snapshot_sha256": "",
            "settings": {}, "epochs": [], "best_epoch": 1, "best_val_loss": 0.5,
            "stopped_early": false, "test": {},
            "proof": {"rows": 0, "tolerance": 0.0, "max_rel_diff": {}}
        }))
        .unwrap();
        for e in 1..=500 {
            h.epochs.push(crate::train::EpochRecord {
                epoch: e,
                train_loss: 1.0 / e as f64,
                val_loss: 1.1 / e as f64,
                val_nll: None,
                val_proposal_nll: None,
                val_loss_se: None,
                mask_rate: None,
                lr: 1e-3,
                seconds: 1.0,
                samples_per_s: 1.0,
                phases: None,
            });
        }
        let input = Input {
            metrics: Some(&m),
            histories: vec![&h, &h],
            manifest_uri: Some("s3://b/p/versions/abc/manifest.json"),
            ..Default::default()
        };
        let full = render(&input, SUMMARY_LIMIT);
        assert!(
            full.contains("xychart-beta") && full.contains("s3://b/p"),
            "{full}"
        );
        // Thinned to at most 60 points per line, first and last epoch kept.
        assert!(full.contains("x-axis \"epoch\" [1, ") && full.contains(", 500]"));
        // Room for the footer, not for one whole chart.
        let cut = full.find("<details>").unwrap() + 200;
        let small = render(&input, cut);
        assert!(small.len() <= cut);
        assert!(small.starts_with("## ✅"), "{small}");
        assert!(
            small.contains("Left out to stay within GitHub's size limit: training curves"),
            "{small}"
        );
        assert!(small.contains("s3://b/p"), "links stay: {small}");
        let tiny = render(&input, 120);
        assert!(tiny.len() <= 120 && tiny.starts_with("## ✅"), "{tiny}");
    }
}
