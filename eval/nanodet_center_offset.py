#!/usr/bin/env python3
"""Which point does NanoDet-g regress distances from: (x, y) * stride or (x + 0.5, y + 0.5) * stride?

Mirror test: detect on a frame and on its horizontal mirror, mirror the second set back and pair boxes
(IoU > 0.5). With the right offset the paired box centres agree; with the wrong one they differ by about
one stride (in input pixels) because the error flips sign with the image.

Usage: nanodet_center_offset.py IMAGE...
"""
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
import reference_detect as rd  # noqa: E402

root = Path(__file__).resolve().parent.parent
spec = tomllib.loads((root / "models/nanodet-g/model.toml").read_text())
sess = ort.InferenceSession(str(root / "models/nanodet-g/model.onnx"), providers=["CPUExecutionProvider"])


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


for offset in (0.0, 0.5):
    spec["decoder"]["center_offset"] = offset
    dx = []
    for path in sys.argv[1:]:
        img = cv2.imread(path)
        w = img.shape[1]
        plain = rd.detect(sess, spec, img, 0.4, 0.6, 100)
        mirrored = [
            [w - d["box"][2], d["box"][1], w - d["box"][0], d["box"][3]]
            for d in rd.detect(sess, spec, np.ascontiguousarray(img[:, ::-1]), 0.4, 0.6, 100)
        ]
        for d in plain:
            best = max(mirrored, key=lambda m: iou(d["box"], m), default=None)
            if best is not None and iou(d["box"], best) > 0.5:
                dx.append((d["box"][0] + d["box"][2]) / 2 - (best[0] + best[2]) / 2)
    print(f"center_offset {offset}: {len(dx)} pairs, median centre shift {np.median(dx):+.2f} px")
