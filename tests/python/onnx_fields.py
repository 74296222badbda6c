"""Checks proto/onnx.proto against the official `onnx` package: every message, field and
enum value we declare must exist there with the same number, type and cardinality.
Prints the number of fields checked; exits non-zero on any difference.

usage: onnx_fields.py PROTO_DIR
"""
import os, sys, tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc
import onnx  # noqa: F401  (registers the official descriptors)
from onnx import onnx_ml_pb2

proto_dir = sys.argv[1]
out = os.path.join(tempfile.mkdtemp(), "ours.pb")
assert protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", os.path.join(proto_dir, "onnx.proto")]) == 0
ours = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read()).file[0]
official = onnx_ml_pb2.DESCRIPTOR

problems, checked = [], 0


def official_message(path):
    d = official.message_types_by_name[path[0]]
    for name in path[1:]:
        d = d.nested_types_by_name[name]
    return d


def walk(msg, path):
    global checked
    path = path + [msg.name]
    try:
        theirs = official_message(path)
    except KeyError:
        problems.append(f"message {'.'.join(path)} is not in onnx"); return
    for f in msg.field:
        t = theirs.fields_by_name.get(f.name)
        if t is None:
            problems.append(f"{'.'.join(path)}.{f.name} is not in onnx"); continue
        checked += 1
        if t.number != f.number:
            problems.append(f"{'.'.join(path)}.{f.name}: number {f.number}, onnx {t.number}")
        if t.type != f.type:
            problems.append(f"{'.'.join(path)}.{f.name}: type {f.type}, onnx {t.type}")
        theirs_repeated = t.is_repeated if hasattr(t, "is_repeated") else t.label == 3
        if theirs_repeated != (f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED):
            problems.append(f"{'.'.join(path)}.{f.name}: repeated differs")
    for e in msg.enum_type:
        theirs_enum = theirs.enum_types_by_name[e.name]
        for v in e.value:
            checked += 1
            tv = theirs_enum.values_by_name.get(v.name)
            if tv is None or tv.number != v.number:
                problems.append(f"{'.'.join(path)}.{e.name}.{v.name} = {v.number} differs from onnx")
    for nested in msg.nested_type:
        walk(nested, path)


for m in ours.message_type:
    walk(m, [])
if problems:
    sys.exit("\n".join(problems))
print(checked)
