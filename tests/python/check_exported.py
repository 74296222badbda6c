"""An exported model checked by an independent consumer: the official `onnx` checker
(full_check, with shape inference), the contract of DESIGN §5 (opset, IR version, the
inputs and outputs, metadata), and one run in Python's onnxruntime.

usage: check_exported.py MODEL INPUTS_JSON_FILE
INPUTS_JSON_FILE: {"name": {"shape": [...], "data": [...]}, ...}
Prints {"outputs": {name: flat list}, "shapes": {name: shape}, "metadata": {...}}.
"""
import json, sys

import numpy as np
import onnx
import onnxruntime as ort

path, inputs_path = sys.argv[1], sys.argv[2]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
assert model.ir_version == 8, model.ir_version
assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
for t in list(model.graph.input) + list(model.graph.output):
    assert t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, t.name
    assert t.type.tensor_type.shape.dim[0].dim_param == "N", t.name
inputs = json.load(open(inputs_path))
feeds = {k: np.asarray(v["data"], dtype=np.float32).reshape(v["shape"]) for k, v in inputs.items()}
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
outs = session.run(None, feeds)
print(json.dumps({
    "outputs": {n: np.asarray(o).ravel().tolist() for n, o in zip(names, outs)},
    "shapes": {n: list(np.asarray(o).shape) for n, o in zip(names, outs)},
    "inputs": [i.name for i in session.get_inputs()],
    "metadata": {p.key: p.value for p in model.metadata_props},
}))
