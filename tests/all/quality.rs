//! EMSHAP against ground truth: `scripts/quality.py --fast` generates a correlated Gaussian
//! (d = 8, ρ = 0.5) whose conditionals are known exactly, runs it through this binary's
//! `pull` and `train emshap`, writes a known power function as the power model, and
//! measures the conditional mean, the conditional density and `explain`'s Shapley values
//! against the truth (DESIGN §4, §6). The bars below are what the value function must
//! reach; the sanity checks make sure none of them can pass vacuously. Training runs with
//! the CLI's default epochs (what a PR check runs): 1.5–4.5 minutes on 2 cores.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("quality.json has no number at {}", path.join(".")))
}

#[test]
fn emshap_quality_against_ground_truth() {
    let python = std::env::var("EMSHAP_CI_PYTHON").expect("EMSHAP_CI_PYTHON from scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quality.py");
    let o = Command::new(python)
        .arg(&script)
        .arg("--fast")
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_emshap-ci"))
        .arg("--work")
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "scripts/quality.py --fast failed ({}):\n{table}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{table}");
    let q: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let c = &q["cases"]["gauss8_rho0.5"];
    let cm = |k: &str| num(c, &["cond_mean_rmse_sd", "0.5", k]);
    let shap = |t: &str, e: &str| num(c, &["shapley", t, "estimators", e, "rel_mae"]);

    // Sanity: the truth is the truth, the problem is not trivial, the references behave.
    assert!(cm("truth") < 1e-9, "the truth recomputed: {}", cm("truth"));
    let marginal = cm("marginal_mean");
    assert!(
        marginal > 0.40,
        "the marginal mean should be far above the 0.25 bar on ρ = 0.5 data: {marginal}"
    );
    assert!(
        cm("gaussian_ref") < 0.10,
        "the fitted Gaussian is correctly specified here: {}",
        cm("gaussian_ref")
    );
    let nll_truth = num(c, &["nll", "0.5", "truth"]);
    let nll_gauss = num(c, &["nll", "0.5", "gaussian_ref"]);
    assert!(
        (nll_gauss - nll_truth).abs() < 0.05,
        "fitted-Gaussian NLL {nll_gauss} vs the true conditional's {nll_truth}"
    );
    for t in ["linear", "quadratic"] {
        let noise = num(c, &["shapley", t, "truth_self_noise_rel_mae"]);
        assert!(noise < 0.02, "{t}: the truth's own noise {noise}");
        let (ind, gauss) = (shap(t, "independence"), shap(t, "gaussian_ref"));
        assert!(
            gauss < 0.10 && ind > 0.25 && gauss < ind,
            "{t}: the Gaussian reference ({gauss}) must beat independence ({ind}) by far"
        );
        let fx = num(
            c,
            &[
                "shapley",
                t,
                "estimators",
                "emshap_default",
                "max_abs_f_x_diff",
            ],
        );
        assert!(
            fx < 1e-2,
            "{t}: explain's f(x) differs from the known f by {fx}"
        );
    }

    // The bars (all reported together).
    let mut failed = Vec::new();
    let k20 = cm("emshap_imputed_k20");
    let k200 = cm("emshap_imputed_k200");
    if k20 > 0.25 {
        failed.push(format!(
            "conditional-mean RMSE at mask rate 0.5, K = 20: {k20:.3} sd > 0.25 (marginal mean {marginal:.3}, fitted Gaussian {:.3})",
            cm("gaussian_ref")
        ));
    }
    if k200 > k20 + 0.01 {
        failed.push(format!(
            "conditional-mean RMSE grows with K: {k20:.3} at K = 20, {k200:.3} at K = 200"
        ));
    }
    for t in ["linear", "quadratic"] {
        let e = shap(t, "emshap_default");
        if e > 0.20 {
            failed.push(format!(
                "{t} target: Shapley relative MAE {e:.3} > 0.20 (independence {:.3}, fitted Gaussian {:.3})",
                shap(t, "independence"),
                shap(t, "gaussian_ref")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "EMSHAP misses its ground-truth bars:\n  {}\n{table}",
        failed.join("\n  ")
    );
}
