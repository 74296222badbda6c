//! ONNX Runtime loads: a session on a tiny ONNX model that this test writes itself with the crate's own ONNX protobuf types.

use emshap_ci::proto::onnx;
use prost::Message;

fn value_info(name: &str, dims: &[onnx::tensor_shape_proto::Dimension]) -> onnx::ValueInfoProto {
    onnx::ValueInfoProto {
        name: name.into(),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: onnx::tensor_proto::DataType::Float as i32,
                    shape: Some(onnx::TensorShapeProto { dim: dims.to_vec() }),
                },
            )),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// y = x · W + b with W = [[1, 2], [3, 4]], b = [10, 20]; batch axis dynamic.
fn tiny_model() -> Vec<u8> {
    use onnx::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = |v: Value| Dimension {
        value: Some(v),
        denotation: String::new(),
    };
    let tensor = |name: &str, dims: Vec<i64>, data: Vec<f32>| onnx::TensorProto {
        name: name.into(),
        dims,
        data_type: onnx::tensor_proto::DataType::Float as i32,
        float_data: data,
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| onnx::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    };
    let model = onnx::ModelProto {
        ir_version: 8,
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "emshap-ci-smoke".into(),
        graph: Some(onnx::GraphProto {
            name: "smoke".into(),
            node: vec![
                node("MatMul", &["x", "W"], "xw"),
                node("Add", &["xw", "b"], "y"),
            ],
            initializer: vec![
                tensor("W", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
                tensor("b", vec![2], vec![10.0, 20.0]),
            ],
            input: vec![value_info(
                "x",
                &[dim(Value::DimParam("N".into())), dim(Value::DimValue(2))],
            )],
            output: vec![value_info(
                "y",
                &[dim(Value::DimParam("N".into())), dim(Value::DimValue(2))],
            )],
            ..Default::default()
        }),
        metadata_props: vec![onnx::StringStringEntryProto {
            key: "made_by".into(),
            value: "smoke test".into(),
        }],
        ..Default::default()
    };
    model.encode_to_vec()
}

#[test]
fn onnx_runtime_runs_a_model_written_here() {
    let env = emshap_ci::native::ort_environment().expect("ONNX Runtime loads");
    let mut session = ort::session::Session::builder(env)
        .unwrap()
        .commit_from_memory(&tiny_model())
        .expect("ONNX Runtime accepts the model");
    let x = ort::value::Tensor::from_array(([3usize, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]))
        .unwrap();
    let outputs = session.run(ort::inputs!["x" => x]).unwrap();
    let (shape, y) = outputs["y"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(shape.to_vec(), vec![3, 2]);
    assert_eq!(y, &[11.0, 22.0, 13.0, 24.0, 14.0, 26.0]);
}
