"""Exports the trained el-defect Mask R-CNN to ONNX, checks it against PyTorch, and scores it on
held-out synthetic cells (seeds 0..--val-cells of --generator-version, never used in training):
instances, and the image-level verdicts of instances and of the cell head.

    python models/tools/export_el_maskrcnn.py --checkpoint /tmp/el-train/checkpoint.pt \
        --out models/el-maskrcnn

Writes model.onnx and validation.json to --out and prints the ONNX file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from el_maskrcnn import MEAN, SIZE, STD, ExportWrapper, build_model, export_onnx  # noqa: E402
from el_reference import paste_mask  # noqa: E402
from el_synth import CLASSES, make_cell  # noqa: E402


def tensor_of(img: np.ndarray) -> np.ndarray:
    x = (img.astype(np.float32) - MEAN) / STD
    return np.repeat(x[None, None], 3, axis=1)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--val-cells", type=int, default=400)
    ap.add_argument("--score", type=float, default=0.5)
    ap.add_argument("--generator-version", type=int, default=3, help="el_synth version of the held-out cells")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    state = torch.load(args.checkpoint, map_location="cpu")
    model = build_model(backbone=state.get("args", {}).get("backbone", "tiny"), pretrained=False)
    model.load_state_dict(state["model"])
    version = args.generator_version
    model.eval()
    wrapper = ExportWrapper(model).eval()
    onnx_path = os.path.join(args.out, "model.onnx")
    example = torch.from_numpy(tensor_of(make_cell(0)[0]))
    export_onnx(model, onnx_path, example)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    # ONNX vs PyTorch on the first cells.
    worst_box, worst_score, worst_mask, worst_cell, compared = 0.0, 0.0, 0.0, 0.0, 0
    for seed in range(20):
        x = tensor_of(make_cell(seed, version=version)[0])
        boxes, labels, scores, masks, cell = session.run(None, {"images": x})
        with torch.no_grad():
            tb, tl, ts, tm, tc = (t.numpy() for t in wrapper(torch.from_numpy(x)))
        worst_cell = max(worst_cell, float(np.abs(tc - cell).max()))
        if len(tb) != len(boxes):
            print(f"cell {seed}: {len(boxes)} instances in ONNX, {len(tb)} in PyTorch")
            continue
        if len(tb):
            worst_box = max(worst_box, float(np.abs(tb - boxes).max()))
            worst_score = max(worst_score, float(np.abs(ts - scores).max()))
            worst_mask = max(worst_mask, float(np.abs(tm - masks).max()))
        compared += 1

    # Held-out synthetic cells: instance recall at mask IoU >= 0.5, mean best IoU, image-level verdicts.
    per_class = {c: {"instances": 0, "found": 0, "iou_sum": 0.0} for c in CLASSES}
    image_tp = image_fp = image_fn = image_tn = 0
    false_instances = 0
    head_tp = head_fp = head_fn = 0
    for seed in range(args.val_cells):
        img, truth, _ = make_cell(seed, version=version)
        boxes, labels, scores, masks, cell = session.run(None, {"images": tensor_of(img)})
        head_flagged = float(cell.reshape(-1)[0]) >= 0.5
        head_tp += bool(truth) and head_flagged
        head_fp += head_flagged and not truth
        head_fn += bool(truth) and not head_flagged
        keep = scores >= args.score
        predicted = [
            (int(round(l)) , paste_mask(m[0], b, SIZE, SIZE, 0.5))
            for b, l, m in zip(boxes[keep], labels[keep], masks[keep])
        ]
        for inst in truth:
            name = CLASSES[inst.class_id - 1]
            per_class[name]["instances"] += 1
            best = max((mask_iou(inst.mask, p) for c, p in predicted if c == inst.class_id), default=0.0)
            per_class[name]["iou_sum"] += best
            per_class[name]["found"] += int(best >= 0.5)
        for c, p in predicted:
            if not any(t.class_id == c and mask_iou(t.mask, p) >= 0.5 for t in truth):
                false_instances += 1
        defective, flagged = bool(truth), bool(predicted)
        image_tp += defective and flagged
        image_fn += defective and not flagged
        image_fp += flagged and not defective
        image_tn += not flagged and not defective

    report = {
        "checkpoint_iteration": state.get("iteration"),
        "onnx_vs_pytorch": {
            "cells_compared": compared,
            "max_abs_diff_boxes_px": worst_box,
            "max_abs_diff_scores": worst_score,
            "max_abs_diff_mask_probabilities": worst_mask,
            "max_abs_diff_cell_defect": worst_cell,
        },
        "synthetic_validation": {
            "cells": args.val_cells,
            "seeds": f"0..{args.val_cells - 1}",
            "generator_version": version,
            "score_threshold": args.score,
            "per_class": {
                name: {
                    "instances": v["instances"],
                    "recall_at_mask_iou_0.5": round(v["found"] / max(1, v["instances"]), 4),
                    "mean_best_mask_iou": round(v["iou_sum"] / max(1, v["instances"]), 4),
                }
                for name, v in per_class.items()
            },
            "predicted_instances_without_a_match": false_instances,
            "image_level": {
                "tp": image_tp,
                "fp": image_fp,
                "fn": image_fn,
                "tn": image_tn,
                "recall": round(image_tp / max(1, image_tp + image_fn), 4),
                "precision": round(image_tp / max(1, image_tp + image_fp), 4),
            },
            "cell_head_at_0.5": {
                "tp": head_tp,
                "fp": head_fp,
                "fn": head_fn,
                "recall": round(head_tp / max(1, head_tp + head_fn), 4),
                "precision": round(head_tp / max(1, head_tp + head_fp), 4),
            },
        },
    }
    with open(os.path.join(args.out, "validation.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    digest = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    print(f"model.onnx: {os.path.getsize(onnx_path)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
