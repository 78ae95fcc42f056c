#!/usr/bin/env python3
"""Parameters and convolution multiply-accumulates of an ONNX detector at batch 1, to identify it
against published model cards. Usage: model_stats.py MODEL.onnx"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

model = onnx.load(sys.argv[1])
for vi in list(model.graph.input) + list(model.graph.output):
    vi.type.tensor_type.shape.dim[0].dim_value = 1
model = shape_inference.infer_shapes(model)
shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
          for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
params = sum(a.size for a in inits.values() if a.dtype == np.float32)
macs = 0
for node in model.graph.node:
    if node.op_type == "Conv":
        w = inits[node.input[1]]  # [out, in/groups, kh, kw]
        out = shapes[node.output[0]]  # [1, out, h, w]
        macs += int(np.prod(out)) * int(np.prod(w.shape[1:]))
print(f"float parameters: {params:,}")
print(f"conv multiply-accumulates at batch 1: {macs / 1e9:.2f} G")
