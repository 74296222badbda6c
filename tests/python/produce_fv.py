"""An independent producer for the Kafka tests: Python's confluent-kafka (librdkafka) and
Google's protobuf runtime, with FeatureVector compiled from proto/feature_vector.proto by
grpc_tools. Writes N good messages (cpu_util = i, power_watts = 100 + i), then one with a NaN
feature and one that is not protobuf at all, keyed by node_id.

With --confluent the values are written by confluent-kafka's own ProtobufSerializer against a
mock:// Schema Registry (Confluent's wire format: magic 0, schema id, message index), and
the two bad ones are a value framed with message index [1] (another message type) and a
bare FeatureVector (magic byte 0x0a: not framed).

With --confluent-header the serializer writes Confluent's newer form instead
(`schema.id.serializer` = header_schema_id_serializer): a bare value, and the schema as
magic 1 + GUID + message index in the `__value_schema_id` header; the bad ones are a value
whose header names message index [1], and one whose header starts with magic byte 0x07.

usage: produce_fv.py BROKERS TOPIC N PROTO_DIR [--confluent | --confluent-header]
"""
import importlib, math, os, sys, tempfile

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from grpc_tools import protoc

brokers, topic, n, proto_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
header_form = "--confluent-header" in sys.argv[5:]
confluent = header_form or "--confluent" in sys.argv[5:]
out = tempfile.mkdtemp()
rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", os.path.join(proto_dir, "feature_vector.proto")])
assert rc == 0, "protoc failed"
sys.path.insert(0, out)
pb = importlib.import_module("feature_vector_pb2")

admin = AdminClient({"bootstrap.servers": brokers})
for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
    fut.result(30)

failed = []
p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
if confluent:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from confluent_kafka.schema_registry import header_schema_id_serializer
    registry = SchemaRegistryClient.new_client({"url": "mock://emshap-ci-test"})
    conf = {"schema.id.serializer": header_schema_id_serializer} if header_form else {}
    serializer = ProtobufSerializer(pb.FeatureVector, registry, conf)
    def encode(fv):
        headers = []
        value = serializer(fv, SerializationContext(topic, MessageField.VALUE, headers))
        return value, headers
else:
    encode = lambda fv: (fv.SerializeToString(), [])
def done(err, msg):
    if err is not None:
        failed.append(err)

for i in range(n):
    fv = pb.FeatureVector(node_id=f"py-{i % 7}", timestamp_ms=1_700_000_000_000 + i * 1000,
                          power_watts=100.0 + i, schema_version=1)
    for j, name in enumerate(["cpu_util", "mem_util", "disk_io", "net_io", "gpu_util", "gpu_mem", "temp_cpu",
                              "temp_gpu", "fan_speed", "voltage", "current", "frequency", "cache_miss",
                              "cache_hit", "context_switch", "page_fault", "interrupts", "load_avg",
                              "process_count", "thread_count"]):
        setattr(fv, name, float(i) if j == 0 else float(i % 13 + j))
    value, headers = encode(fv)
    p.produce(topic, key=fv.node_id.encode(), value=value, headers=headers, on_delivery=done)
bad = pb.FeatureVector(node_id="py-nan", timestamp_ms=1_700_000_000_000, power_watts=1.0, cpu_util=math.nan)
if header_form:
    value, headers = encode(bad)
    (key, guid), = headers
    assert key == "__value_schema_id" and guid[0] == 1 and len(guid) == 18, headers
    # The same GUID with message index [1] (zig-zag 2, 2), then an unknown magic byte.
    p.produce(topic, key=b"py-index", value=value, headers=[(key, guid[:17] + bytes([2, 2]))], on_delivery=done)
    p.produce(topic, key=b"py-magic", value=value, headers=[(key, bytes([7]) + guid[1:])], on_delivery=done)
    import uuid
    print("schema guid", uuid.UUID(bytes=bytes(guid[1:17])), file=sys.stderr)
elif confluent:
    framed, _ = encode(bad)
    # Magic 0, the same schema id, then message index [1] (array length 1, index 1: zig-zag 2, 2).
    other_type = framed[:5] + bytes([2, 2]) + bad.SerializeToString()
    p.produce(topic, key=b"py-index", value=other_type, on_delivery=done)
    p.produce(topic, key=b"py-bare", value=bad.SerializeToString(), on_delivery=done)
    print("schema id", int.from_bytes(framed[1:5], "big"), file=sys.stderr)
else:
    p.produce(topic, key=b"py-nan", value=bad.SerializeToString(), on_delivery=done)
    p.produce(topic, key=b"py-garbage", value=b"\x0a\xff\xff\xff not protobuf", on_delivery=done)
left = p.flush(30)
assert left == 0 and not failed, f"undelivered: {left}, failed: {failed}"
print(n + 2)
