"""A second, independent consumer of an exported model: the official `onnx` checker
(full_check, with shape inference) and Python's onnxruntime. Reads the input rows as JSON
from argv[3], prints the first output as JSON.

usage: check_onnx.py MODEL INPUT_NAME ROWS_JSON
"""
import json, sys

import numpy as np
import onnx
import onnxruntime as ort

path, input_name, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
assert model.ir_version == 8, model.ir_version
assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
out = session.run(None, {input_name: np.asarray(rows, dtype=np.float32)})
print(json.dumps({"output": np.asarray(out[0]).tolist(),
                  "metadata": {p.key: p.value for p in model.metadata_props}}))
