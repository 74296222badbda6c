//! Writing ONNX models with the prost types of `proto/onnx.proto` (opset 17, IR version 8,
//! f32, DESIGN §5), and running them with ONNX Runtime, the runtime the Go service uses.
//! Knows graphs, not models: the exporters of the training stage describe their
//! architectures with `GraphBuilder`.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// One axis of an input or output: a fixed size, or a named dynamic one (the batch `N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// An integer attribute (e.g. Gemm's `transB`, for weights stored [out, in] as tch keeps them).
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// An integer-list attribute (e.g. `axes` of the reductions that still take them as one).
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

/// Builds a graph node by node; every value gets a unique name.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next: usize,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Declares a graph input of f32.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, DataType::Float, dims));
        name.to_string()
    }

    /// Declares `value` as the graph output `name` (through an Identity when renamed).
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        if value != name {
            self.nodes.push(NodeProto {
                op_type: "Identity".into(),
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                name: format!("{name}_identity"),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, DataType::Float, dims));
    }

    /// An f32 constant (an initializer), stored as raw little-endian bytes.
    pub fn constant(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// An int64 constant (shapes, axes, indices).
    pub fn constant_i64(&mut self, hint: &str, dims: &[i64], data: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A scalar f32 constant.
    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.constant(hint, &[], &[v])
    }

    /// Adds an operator with one output; returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attrs).remove(0)
    }

    /// Adds an operator with `n` outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let base = self.fresh(&op_type.to_lowercase());
        let outputs: Vec<String> = if n == 1 {
            vec![base.clone()]
        } else {
            (0..n).map(|k| format!("{base}_{k}")).collect()
        };
        self.nodes.push(NodeProto {
            op_type: op_type.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: base,
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// The model: opset 17, IR version 8, with `metadata` as metadata_props.
    pub fn finish(self, graph_name: &str, metadata: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "emshap-ci".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                name: graph_name.into(),
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// An f32 tensor going into or out of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn ort_err(what: &str, e: ort::Error) -> Error {
    Error::Internal(anyhow::anyhow!("onnx runtime: {what}: {e}"))
}

/// A model loaded into ONNX Runtime once, for many runs (batches).
pub struct Session {
    inner: ort::session::Session,
    outputs: Vec<String>,
}

impl Session {
    pub fn new(model: &[u8], threads: usize) -> Result<Self> {
        let env = crate::native::ort_environment()?;
        let inner = ort::session::Session::builder(env)
            .map_err(|e| ort_err("session builder", e))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| ort_err("threads", e.into()))?
            .commit_from_memory(model)
            .map_err(|e| ort_err("the model was refused", e))?;
        let outputs = inner
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(Self { inner, outputs })
    }

    /// Runs the model; returns the outputs in graph order.
    pub fn run(&mut self, inputs: Vec<(&str, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        let mut values: Vec<(Cow<'_, str>, ort::session::SessionInputValue<'_>)> = Vec::new();
        for (name, t) in inputs {
            let v =
                ort::value::Tensor::from_array((t.shape, t.data)).map_err(|e| ort_err(name, e))?;
            values.push((Cow::Owned(name.to_string()), v.into()));
        }
        let outputs = self.inner.run(values).map_err(|e| ort_err("run", e))?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, data) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| ort_err(name, e))?;
                Ok((
                    name.clone(),
                    Tensor {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: data.to_vec(),
                    },
                ))
            })
            .collect()
    }
}

/// Runs a serialised model once through ONNX Runtime; returns the outputs in graph order.
pub fn run(
    model: &[u8],
    inputs: Vec<(&str, Tensor)>,
    threads: usize,
) -> Result<Vec<(String, Tensor)>> {
    Session::new(model, threads)?.run(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// y = relu(x·W + b)·v + c, a two-layer MLP with known weights.
    pub(crate) fn mlp() -> (Vec<u8>, impl Fn(&[f32]) -> f32) {
        let (w, b, v, c) = (
            vec![0.5f32, -1.0, 2.0, 0.25, 1.0, -0.5],
            vec![0.1f32, -0.2, 0.3],
            vec![1.0f32, -2.0, 0.5],
            0.75f32,
        );
        let mut g = GraphBuilder::new();
        let x = g.input("features", &[Dim::Named("N"), Dim::Fixed(2)]);
        let wn = g.constant("w", &[2, 3], &w);
        let bn = g.constant("b", &[3], &b);
        let h = g.op("Gemm", &[&x, &wn, &bn], vec![]);
        let h = g.op("Relu", &[&h], vec![]);
        let vn = g.constant("v", &[3, 1], &v);
        let cn = g.constant("c", &[1], &[c]);
        let y = g.op("Gemm", &[&h, &vn, &cn], vec![attr_float("alpha", 1.0)]);
        g.output(&y, "power_watts", &[Dim::Named("N"), Dim::Fixed(1)]);
        let model = g
            .finish("mlp", &[("feature_names", "a,b".into())])
            .encode_to_vec();
        let f = move |x: &[f32]| {
            let mut out = c;
            for k in 0..3 {
                let h = (x[0] * w[k] + x[1] * w[3 + k] + b[k]).max(0.0);
                out += h * v[k];
            }
            out
        };
        (model, f)
    }

    #[test]
    fn a_built_graph_runs_in_onnx_runtime_and_matches_by_hand() {
        let (model, f) = mlp();
        let xs = vec![1.0f32, 2.0, -1.0, 0.5, 0.0, 0.0, 3.0, -2.0];
        let out = run(
            &model,
            vec![(
                "features",
                Tensor {
                    shape: vec![4, 2],
                    data: xs.clone(),
                },
            )],
            1,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "power_watts");
        assert_eq!(out[0].1.shape, vec![4, 1]);
        for (i, y) in out[0].1.data.iter().enumerate() {
            let want = f(&xs[2 * i..2 * i + 2]);
            assert!((y - want).abs() < 1e-5, "row {i}: {y} vs {want}");
        }
        let decoded = ModelProto::decode(model.as_slice()).unwrap();
        assert_eq!(decoded.ir_version, 8);
        assert_eq!(decoded.opset_import[0].version, 17);
        assert_eq!(decoded.metadata_props[0].key, "feature_names");
    }

    #[test]
    fn a_broken_graph_is_refused_with_an_error() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", &[Dim::Named("N"), Dim::Fixed(2)]);
        let y = g.op("NoSuchOperator", &[&x], vec![]);
        g.output(&y, "y", &[Dim::Named("N"), Dim::Fixed(2)]);
        let model = g.finish("broken", &[]).encode_to_vec();
        let err = run(
            &model,
            vec![(
                "x",
                Tensor {
                    shape: vec![1, 2],
                    data: vec![0.0, 0.0],
                },
            )],
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("the model was refused"), "{err}");
    }
}
