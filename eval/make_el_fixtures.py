#!/usr/bin/env python3
"""Writes the el-defect test fixtures under tests/fixtures/el/:

  cell_<seed>.png    synthetic EL cells (models/tools/el_synth.py, seeds 900000.., never trained on)
  cells.json         per cell: its true instances (class, mask as runs over the whole image) and the
                     reference answer of Python onnxruntime on models/el-maskrcnn/model.onnx, masks
                     pasted by models/tools/el_reference.py (class, score, box, mask runs), its
                     defect probability (the cell head) and the verdict the model.toml rule gives
  paste_cases.json   mask-paste cases (random 28x28 probabilities, boxes fractional, clipped, tiny)
                     and the reference paste of each, as runs over the box region
  contour_cases.json masks and OpenCV's outer contours of them (cv2.findContours, RETR_CCOMP outer
                     borders, CHAIN_APPROX_NONE): every border pixel

Runs are row-major, alternating background/object, starting with background (the service's encoding).

    python eval/make_el_fixtures.py   (needs models/tools/requirements-el.txt)
"""

from __future__ import annotations

import json
import os
import sys
import tomllib

import cv2
import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models/tools"))
from el_maskrcnn import MEAN, SIZE, STD  # noqa: E402
from el_reference import paste_local  # noqa: E402
from el_synth import CLASSES, make_cell  # noqa: E402

OUT = os.path.join(ROOT, "tests/fixtures/el")
FIXTURE_SEEDS = list(range(900000, 900008))


def runs(pixels: np.ndarray) -> list[int]:
    flat = (pixels.reshape(-1) != 0).astype(np.int8)
    out, current, length = [], 0, 0
    for p in flat:
        if p != current:
            out.append(length)
            current, length = p, 0
        length += 1
    if length or not out:
        out.append(length)
    return [int(r) for r in out]


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def run_model(session, img: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs by name for one gray cell, normalised as the service does."""
    x = np.repeat(((img.astype(np.float32) - MEAN) / STD)[None, None], 3, axis=1)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})))


def reference_verdict(rule: dict, instances: list[dict], probability: float | None) -> bool:
    """The model.toml [cell_rule] (with the service's defaults) applied to the reference answer; the
    fixture cells' instances are never tiny, so the area rule is not modelled beyond 0."""
    assert rule.get("min_area_fraction", 0.0) == 0.0
    classes = [CLASSES.index(c) for c in rule.get("classes", [])]
    by_instances = rule.get("count_instances", True) and any(
        i["score"] >= rule.get("min_score", 0.5) and (not classes or i["class_id"] in classes) for i in instances
    )
    threshold = rule.get("min_defect_probability")
    return bool(by_instances or (threshold is not None and probability is not None and probability >= threshold))


def reference_instances(named: dict[str, np.ndarray], score: float) -> list[dict]:
    boxes, labels, scores, masks = (named[k] for k in ["boxes", "labels", "scores", "masks"])
    out = []
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    for i in order:
        b, l, s, m = boxes[i], labels[i], scores[i], masks[i]
        if s < score or len(out) >= 20:
            continue
        # The service's own pass: class-aware NMS at IoU 0.5, then instances whose mask is empty go.
        if any(o["class_id"] == int(round(float(l))) - 1 and box_iou(o["box"], b) > 0.5 for o in out):
            continue
        left, top, local = paste_local(m[0], b, SIZE, SIZE, 0.5)
        if not local.any():
            continue
        out.append(
            {
                "class_id": int(round(float(l))) - 1,
                "score": float(s),
                "box": [float(v) for v in b],
                "mask": {"left": left, "top": top, "width": int(local.shape[1]), "height": int(local.shape[0]), "runs": runs(local)},
            }
        )
    return out


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(os.path.join(ROOT, "models/el-maskrcnn/model.onnx"), options, providers=["CPUExecutionProvider"])

    with open(os.path.join(ROOT, "models/el-maskrcnn/model.toml"), "rb") as f:
        rule = tomllib.load(f).get("cell_rule", {})
    cells = []
    for seed in FIXTURE_SEEDS:
        img, truth, info = make_cell(seed)
        named = run_model(session, img)
        name = f"cell_{seed}.png"
        cv2.imwrite(os.path.join(OUT, name), img)
        cells.append(
            {
                "file": name,
                "cell_type": info["cell_type"],
                "truth": [{"class": CLASSES[t.class_id - 1], "class_id": t.class_id - 1, "runs": runs(t.mask)} for t in truth],
                # Every instance down to score 0.05, so the test can apply any threshold.
                "reference": reference_instances(named, 0.05),
                "reference_defect_probability": float(named["cell_defect"].reshape(-1)[0]) if "cell_defect" in named else None,
            }
        )
        reference = cells[-1]
        reference["reference_defective"] = reference_verdict(rule, reference["reference"], reference["reference_defect_probability"])
    with open(os.path.join(OUT, "cells.json"), "w") as f:
        json.dump({"width": SIZE, "height": SIZE, "cells": cells}, f)

    rng = np.random.default_rng(7)
    cases = []
    boxes = [
        [10.0, 20.0, 66.0, 48.0],  # whole pixels
        [10.3, 20.7, 65.2, 48.9],  # fractional
        [-12.5, -3.2, 30.1, 40.6],  # clipped at the top-left
        [280.4, 250.2, 320.8, 310.0],  # clipped at the bottom-right
        [100.2, 100.1, 101.1, 100.9],  # under two pixels
        [5.0, 5.0, 295.0, 295.0],  # most of the image
        [50.5, 80.25, 250.75, 95.5],  # long and thin, like a crack
    ]
    for k, box in enumerate(boxes):
        side = 28
        smooth = cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), 2.0)
        mask = (smooth - smooth.min()) / (smooth.max() - smooth.min() + 1e-6)
        left, top, local = paste_local(mask, box, SIZE, SIZE, 0.5)
        cases.append(
            {
                "side": side,
                "mask": [float(v) for v in mask.reshape(-1)],
                "box": box,
                "image": [SIZE, SIZE],
                "threshold": 0.5,
                "expected": {"left": left, "top": top, "width": int(local.shape[1]), "height": int(local.shape[0]), "runs": runs(local)},
            }
        )
    with open(os.path.join(OUT, "paste_cases.json"), "w") as f:
        json.dump(cases, f)

    # Contours: truth masks of synthetic cells (thin cracks, blobs, bars) and a ring with a hole.
    contour_cases = []
    masks = [t.mask for seed in range(900100, 900120) for t in make_cell(seed)[1]]
    ring = np.zeros((40, 50), bool)
    ring[5:35, 5:45] = True
    ring[12:28, 15:35] = False
    ring[0:3, 0:3] = True  # a region touching the corner
    masks.append(ring)
    for m in masks[:16]:
        m8 = m.astype(np.uint8)
        contours, hierarchy = cv2.findContours(m8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        outer = [c.reshape(-1, 2).tolist() for c, h in zip(contours, hierarchy[0]) if h[3] == -1]
        contour_cases.append({"width": int(m.shape[1]), "height": int(m.shape[0]), "runs": runs(m8), "outer": outer})
    with open(os.path.join(OUT, "contour_cases.json"), "w") as f:
        json.dump(contour_cases, f)
    print(f"wrote {len(cells)} cells, {len(cases)} paste cases, {len(contour_cases)} contour cases to {OUT}")


if __name__ == "__main__":
    main()
