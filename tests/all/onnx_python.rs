//! Models written by `emshap_ci::onnx` pass the official `onnx` checker (full_check) and
//! give the same outputs in Python's onnxruntime as in the Rust `ort` binding.

use emshap_ci::onnx::{attr_int, run, Dim, GraphBuilder, Tensor};
use prost::Message;

#[test]
fn built_model_passes_the_onnx_checker_and_python_onnxruntime_agrees() {
    let mut g = GraphBuilder::new();
    let x = g.input("features", &[Dim::Named("N"), Dim::Fixed(3)]);
    // Standardise inside the graph, as the exporters do, then a linear layer and a ReLU.
    let mean = g.constant("mean", &[3], &[1.0, 2.0, 3.0]);
    let std = g.constant("std", &[3], &[2.0, 4.0, 0.5]);
    let z = g.op("Sub", &[&x, &mean], vec![]);
    let z = g.op("Div", &[&z, &std], vec![]);
    // The weight stored [out, in], as tch keeps it: Gemm with transB.
    let w = g.constant("w", &[2, 3], &[1.0, 0.5, -0.25, -1.0, 2.0, 0.75]);
    let b = g.constant("b", &[2], &[0.1, -0.1]);
    let h = g.op("Gemm", &[&z, &w, &b], vec![attr_int("transB", 1)]);
    let y = g.op("Relu", &[&h], vec![]);
    g.output(&y, "out", &[Dim::Named("N"), Dim::Fixed(2)]);
    let model = g
        .finish("check", &[("feature_names", "a,b,c".to_string())])
        .encode_to_vec();

    let rows = [[1.0f32, 2.0, 3.0], [3.0, -2.0, 4.0], [0.0, 10.0, 2.5]];
    let ours = run(
        &model,
        vec![(
            "features",
            Tensor {
                shape: vec![3, 3],
                data: rows.concat(),
            },
        )],
        1,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check.onnx");
    std::fs::write(&path, &model).unwrap();
    let python = std::env::var("EMSHAP_CI_PYTHON").expect("EMSHAP_CI_PYTHON from scripts/setup.sh");
    let o = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/check_onnx.py"
        ))
        .arg(&path)
        .arg("features")
        .arg(serde_json::to_string(&rows).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "onnx checker / onnxruntime: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(theirs["metadata"]["feature_names"], "a,b,c");
    let theirs: Vec<f32> = theirs["output"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(ours[0].1.data.len(), theirs.len());
    for (a, b) in ours[0].1.data.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // And the values are right: row 0 standardises to zeros, so out = relu(b).
    assert_eq!(&ours[0].1.data[..2], &[0.1, 0.0]);
    // Row 2 standardises to [-0.5, 2, -1]: out = [0.85, 3.65] only if transB is honoured.
    assert!((ours[0].1.data[4] - 0.85).abs() < 1e-6 && (ours[0].1.data[5] - 3.65).abs() < 1e-6);
}

/// proto/onnx.proto is a subset of ONNX's own: same names, numbers, types, cardinality.
#[test]
fn onnx_proto_subset_matches_the_official_field_numbers() {
    let python = std::env::var("EMSHAP_CI_PYTHON").expect("EMSHAP_CI_PYTHON from scripts/setup.sh");
    let o = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/onnx_fields.py"
        ))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/proto"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let checked: usize = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(checked > 60, "only {checked} fields checked");
}
