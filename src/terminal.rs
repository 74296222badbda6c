//! The report for a person at a terminal: the markdown `report` and `run` write (for
//! report.md, the PR comment and the job summary) rendered as plain text: tables aligned in
//! columns, mermaid charts drawn as text bars (bar charts) or sparklines (training curves),
//! and markdown's markers (`**`, backticks, `<details>`) removed. Used only when stdout is a
//! terminal; pipes and files get the markdown.

/// Plain-text rendering of `md`.
pub fn render(md: &str) -> String {
    let mut out = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                i += 1;
            }
            out.extend(table(&lines[start..i]));
            continue;
        }
        if line.trim() == "```mermaid" {
            let start = i + 1;
            i = start;
            while i < lines.len() && lines[i].trim() != "```" {
                i += 1;
            }
            out.extend(chart(&lines[start..i.min(lines.len())]));
            i += 1;
            continue;
        }
        if line.trim() == "```" {
            i += 1;
            continue;
        }
        out.push(inline(line));
        i += 1;
    }
    let mut text = out.join("\n");
    while text.contains("\n\n\n") {
        text = text.replace("\n\n\n", "\n\n");
    }
    text.trim_end().to_string()
}

/// One line without markdown's markers.
fn inline(line: &str) -> String {
    let mut s = line
        .replace("</summary>", "")
        .replace("<summary>", "")
        .replace("<details>", "")
        .replace("</details>", "")
        .replace("**", "")
        .replace('`', "")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("\\|", "|");
    if let Some(rest) = s.strip_prefix("### ") {
        s = format!("{rest}\n{}", "-".repeat(rest.chars().count()));
    } else if let Some(rest) = s.strip_prefix("## ") {
        s = format!("{rest}\n{}", "=".repeat(rest.chars().count()));
    } else if s.starts_with("<!--") && s.ends_with("-->") {
        s.clear();
    }
    s
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    // Split on `|` not escaped as `\|`.
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    cells.push(cur);
    cells.iter().map(|c| inline(c.trim())).collect()
}

/// A markdown table in aligned columns (numbers right-aligned where the markdown says so).
fn table(lines: &[&str]) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut right: Vec<bool> = Vec::new();
    for (k, l) in lines.iter().enumerate() {
        let c = cells(l);
        if k == 1
            && c.iter()
                .all(|x| x.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        {
            right = c
                .iter()
                .map(|x| x.ends_with(':') && !x.starts_with(':'))
                .collect();
            continue;
        }
        rows.push(c);
    }
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..n)
        .map(|j| {
            rows.iter()
                .map(|r| r.get(j).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = Vec::new();
    for (k, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (j, w) in width.iter().enumerate() {
            let c = r.get(j).map_or("", String::as_str);
            let pad = w - c.chars().count();
            if j > 0 {
                line.push_str("  ");
            }
            if right.get(j).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push(line.trim_end().to_string());
        if k == 0 {
            out.push(
                width
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
        }
    }
    out
}

/// The values in `[a, b, c]` (quoted labels or numbers).
fn list(s: &str) -> Vec<String> {
    let Some(open) = s.find('[') else {
        return Vec::new();
    };
    let close = s.rfind(']').unwrap_or(s.len());
    s[open + 1..close]
        .split(',')
        .map(|x| x.trim().trim_matches('"').to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// A mermaid xychart as text: bars as rows of █, lines as sparklines with their range.
fn chart(lines: &[&str]) -> Vec<String> {
    let mut title = String::new();
    let mut labels = Vec::new();
    let mut bars: Vec<f64> = Vec::new();
    let mut series: Vec<Vec<f64>> = Vec::new();
    for l in lines {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("title ") {
            title = rest.trim_matches('"').to_string();
        } else if t.starts_with("x-axis") {
            labels = list(t);
        } else if t.starts_with("bar") {
            bars = list(t).iter().filter_map(|v| v.parse().ok()).collect();
        } else if t.starts_with("line") {
            series.push(list(t).iter().filter_map(|v| v.parse().ok()).collect());
        }
    }
    let mut out = vec![title.clone()];
    if !bars.is_empty() {
        let max = bars
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        for (k, v) in bars.iter().enumerate() {
            let label = labels.get(k).cloned().unwrap_or_default();
            let n = ((v / max) * 30.0).round() as usize;
            out.push(format!(
                "  {label:<w$}  {} {}",
                "█".repeat(n.max(1)),
                crate::report::num(*v)
            ));
        }
    }
    const TICKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let names = ["train", "validation"];
    for (k, s) in series.iter().enumerate() {
        let (lo, hi) = s
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = (hi - lo).max(f64::MIN_POSITIVE);
        let spark: String = s
            .iter()
            .map(|v| TICKS[(((v - lo) / span) * 7.0).round().clamp(0.0, 7.0) as usize])
            .collect();
        out.push(format!(
            "  {:<10} {spark}  {} → {} (min {}, {} points)",
            names.get(k).copied().unwrap_or("series"),
            crate::report::num(*s.first().unwrap_or(&f64::NAN)),
            crate::report::num(*s.last().unwrap_or(&f64::NAN)),
            crate::report::num(lo),
            s.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_charts_become_text() {
        let md = "## ✅ **Gate passed** for `abc`\n\n| metric | production | candidate |\n|---|---:|---:|\n| rmse | 20.5 | 19 |\n| r2 \\| x | — | 0.93 |\n\n```mermaid\nxychart-beta\n    title \"top features by mean |φ|\"\n    x-axis [\"gpu_util\", \"cpu\"]\n    y-axis \"watts\"\n    bar [16, 8]\n```\n\n<details><summary>power training</summary>\n\n```mermaid\nxychart-beta\n    title \"power: loss\"\n    x-axis \"epoch\" [1, 2, 3]\n    line [3, 2, 1]\n    line [4, 3, 3.5]\n```\n\n</details>\n";
        let t = render(md);
        assert!(t.starts_with("✅ Gate passed for abc\n====="), "{t}");
        assert!(t.contains("metric  production  candidate\n------  ----------  ---------\nrmse          20.5         19\nr2 | x           —       0.93"), "{t}");
        assert!(
            t.contains(
                "  gpu_util  ██████████████████████████████ 16\n  cpu       ███████████████ 8"
            ),
            "{t}"
        );
        assert!(
            t.contains("  train      █▅▁  3 → 1 (min 1, 3 points)"),
            "{t}"
        );
        assert!(t.contains("power training"), "{t}");
        for md_only in ["```", "**", "<details>", "|---", "xychart"] {
            assert!(!t.contains(md_only), "{md_only} left in:\n{t}");
        }
    }
}
