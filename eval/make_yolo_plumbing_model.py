#!/usr/bin/env python3
"""A tiny hand-built ONNX model with the Ultralytics YOLOv8 output layout, to test the serving path of
YOLO models end to end (manifest, RGB order, /255 scaling, pad 114, dynamic batch, v8 decode, NMS,
box mapping) without any trained weights.

  images: [n, 3, 64, 64] f32 RGB / 255
  output0: [n, 4 + 2, 3]: three fixed anchors (cx, cy, w, h in input pixels); class c's score on
           anchor a = sigmoid(W[c, a] * mean(channel c') + B[c, a]), c' = R for class 0, B for class 1

Scores depend on the mean red and blue of the letterboxed input, so a wrong channel order,
normalisation or padding changes them. Usage: make_yolo_plumbing_model.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

boxes = np.array([[20, 22, 45], [20, 21, 40], [16, 16, 20], [16, 16, 30]], np.float32)[None]  # [1, 4, 3]
W = np.array([[8.0, 6.0, -9.0], [-5.0, 7.0, 9.0]], np.float32)[None]  # [1, 2, 3]
B = np.array([[-3.0, -1.5, 4.0], [1.0, -2.0, -3.0]], np.float32)[None]

inits = [
    numpy_helper.from_array(boxes, "anchor_boxes"),
    numpy_helper.from_array(W, "W"),
    numpy_helper.from_array(B, "B"),
    numpy_helper.from_array(np.array([0, 2], np.int64), "red_blue"),
    numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    numpy_helper.from_array(np.array([0], np.int64), "first"),
    numpy_helper.from_array(np.array([1], np.int64), "second"),
    numpy_helper.from_array(np.array([1], np.int64), "axis1"),
]
nodes = [
    helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),  # [n, 3]
    helper.make_node("Gather", ["means", "red_blue"], ["rb"], axis=1),  # [n, 2]
    helper.make_node("Unsqueeze", ["rb", "axis2"], ["rb3"]),  # [n, 2, 1]
    helper.make_node("Mul", ["rb3", "W"], ["wx"]),  # [n, 2, 3]
    helper.make_node("Add", ["wx", "B"], ["logits"]),
    helper.make_node("Sigmoid", ["logits"], ["scores"]),
    # A zero of shape [n, 1, 1], so the constant boxes broadcast to the batch.
    helper.make_node("Slice", ["rb3", "first", "second", "axis1"], ["r3"]),  # [n, 1, 1]
    helper.make_node("Mul", ["r3", "zero"], ["zero_n"]),
    helper.make_node("Add", ["zero_n", "anchor_boxes"], ["boxes"]),  # [n, 4, 3]
    helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),  # [n, 6, 3]
]
graph = helper.make_graph(
    nodes,
    "yolo_plumbing",
    [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
    [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 3])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="linesight")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, str(out / "model.onnx"))

(out / "model.toml").write_text('''# Test fixture, not a detector: a hand-built model with the YOLOv8 output layout (see
# eval/make_yolo_plumbing_model.py). Used by tests/yolo_pipeline.rs.
name = "yolo-plumbing"
task = "detect"
file = "model.onnx"
description = "YOLOv8-layout plumbing fixture: 3 fixed anchors, scores from mean red / blue"
classes = ["red", "blue"]

[input]
# images: [n, 3, 64, 64] f32 RGB / 255, as Ultralytics exports
name = "images"
width = 64
height = 64
channel_order = "rgb"
mean = [0.0, 0.0, 0.0]
std = [255.0, 255.0, 255.0]
resize = "letterbox"
pad_value = 114

[decoder]
kind = "yolo"
version = "v8"

[postprocess]
score_threshold = 0.25
iou_threshold = 0.45
max_detections = 300

[provenance]
source = "eval/make_yolo_plumbing_model.py"
licence = "Apache-2.0 (this project)"
''')
print("wrote", out)
