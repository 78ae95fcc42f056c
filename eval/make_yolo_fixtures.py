#!/usr/bin/env python3
"""Raw-output fixtures for the YOLO decoders, with Ultralytics' own post-processing as the answer.

No YOLO weights can be fetched here, so the raw outputs are synthetic but shaped like a real head's:
12 objects, each seen by a cluster of neighbouring anchors with jittered boxes and decaying
scores, over background anchors with low sigmoid scores and a few mid-score distractors.

  v8 (also YOLO11, same layout): [1, 84, 2100]  (320 px input, 80 classes)
  v5:                            [1, 4032, 85]  (256 px input, 80 classes, objectness)

Expected detections: ultralytics.utils.nms.non_max_suppression + ultralytics.utils.ops.scale_boxes
(letterbox of a 768x576 frame). Ultralytics' NMS takes only the v8 layout, so the v5 tensor goes in
as v8 with class scores multiplied by objectness - the YOLOv5 repo's `conf = obj_conf * cls_conf`.
Also writes the letterbox geometry of ultralytics.data.augment.LetterBox for several sizes.

Usage (needs ultralytics==8.3.253, torch): make_yolo_fixtures.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes

rng = np.random.default_rng(2024)
NC = 80
IMG0 = (576, 768)  # h, w of the original frame


def synthetic_rows(n_anchors, size, objectness):
    """[anchors, 4 (+1) + NC] rows: cx, cy, w, h, [obj], class scores."""
    attrs = 4 + int(objectness) + NC
    rows = np.zeros((n_anchors, attrs), np.float32)
    rows[:, 0:2] = rng.uniform(0, size, (n_anchors, 2))
    rows[:, 2:4] = rng.uniform(4, size / 3, (n_anchors, 2))
    first = 4 + int(objectness)
    rows[:, first:] = rng.uniform(0, 0.04, (n_anchors, NC))
    if objectness:
        rows[:, 4] = rng.uniform(0, 0.1, n_anchors)
    # Distractors: mid scores, random boxes.
    for i in rng.choice(n_anchors, 40, replace=False):
        rows[i, first + rng.integers(NC)] = rng.uniform(0.2, 0.35)
        if objectness:
            rows[i, 4] = rng.uniform(0.5, 1.0)
    # Objects: clusters of anchors.
    used = set()
    for _ in range(12):
        cls = int(rng.integers(NC))
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
        w, h = rng.uniform(0.05 * size, 0.4 * size, 2)
        peak = rng.uniform(0.5, 0.95)
        for k in range(int(rng.integers(4, 12))):
            i = int(rng.integers(n_anchors))
            while i in used:
                i = int(rng.integers(n_anchors))
            used.add(i)
            jitter = rng.normal(0, 0.06, 4) * np.array([w, h, w, h])
            rows[i, 0:4] = np.array([cx, cy, w, h]) + jitter
            rows[i, first + cls] = peak * (0.97**k)
            if rng.uniform() < 0.3:  # a second, weaker class on the same anchor
                rows[i, first + int(rng.integers(NC))] = peak * 0.5
            if objectness:
                rows[i, 4] = rng.uniform(0.8, 1.0)
    return rows


def ultralytics_answer(pred_v8, size, conf, iou, max_det):
    # A copy: Ultralytics converts the boxes of its input to xyxy in place.
    out = non_max_suppression(torch.from_numpy(pred_v8.copy()), conf_thres=conf, iou_thres=iou, max_det=max_det)[0]
    out[:, :4] = scale_boxes((size, size), out[:, :4], IMG0)
    return [[float(v) for v in row] for row in out.numpy()]


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases = []

    size = 320
    rows = synthetic_rows(40 * 40 + 20 * 20 + 10 * 10, size, objectness=False)
    raw = np.ascontiguousarray(rows.T[None])  # [1, 84, 2100]
    raw.astype("<f4").tofile(out / "v8_320.f32")
    for conf, iou in ((0.25, 0.45), (0.1, 0.7)):
        cases.append({
            "name": f"v8 conf {conf} iou {iou}", "layout": "v8", "file": "v8_320.f32", "shape": list(raw.shape),
            "input": size, "image": list(IMG0), "conf": conf, "iou": iou, "max_det": 300,
            "detections": ultralytics_answer(raw, size, conf, iou, 300),
        })

    size = 256
    rows = synthetic_rows(3 * (32 * 32 + 16 * 16 + 8 * 8), size, objectness=True)
    raw = np.ascontiguousarray(rows[None])  # [1, 4032, 85]
    raw.astype("<f4").tofile(out / "v5_256.f32")
    as_v8 = np.concatenate([rows[:, :4], rows[:, 5:] * rows[:, 4:5]], 1).T[None].copy()
    cases.append({
        "name": "v5 conf 0.25 iou 0.45", "layout": "v5", "file": "v5_256.f32", "shape": list(raw.shape),
        "input": size, "image": list(IMG0), "conf": 0.25, "iou": 0.45, "max_det": 300,
        "detections": ultralytics_answer(as_v8, size, 0.25, 0.45, 300),
    })

    letterbox = []
    for (w, h), (dw, dh) in [((768, 576), (640, 640)), ((1280, 720), (640, 640)), ((1920, 1080), (416, 416)),
                             ((100, 51), (64, 64)), ((10, 5), (5, 5)), ((3, 5), (7, 7)), ((577, 333), (320, 320)),
                             ((640, 480), (416, 416)), ((333, 1001), (640, 640))]:
        img = np.full((h, w, 3), 255, np.uint8)
        boxed = LetterBox(new_shape=(dh, dw), auto=False, scale_fill=False, scaleup=True, center=True)(image=img)
        mask = boxed[:, :, 0] == 255
        ys, xs = np.nonzero(mask)
        letterbox.append({"src": [w, h], "dst": [dw, dh],
                          "resized": [int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                          "pad": [int(xs.min()), int(ys.min())]})

    (out / "expected.json").write_text(json.dumps({
        "generator": "eval/make_yolo_fixtures.py",
        "ultralytics": __import__("ultralytics").__version__,
        "cases": cases, "letterbox": letterbox,
    }, indent=1))
    for c in cases:
        print(c["name"], len(c["detections"]), "detections")


if __name__ == "__main__":
    main()
