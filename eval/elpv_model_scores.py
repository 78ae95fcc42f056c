#!/usr/bin/env python3
"""Compares el-defect model files on ELPV's odd rows without the server: Python onnxruntime on each
cell (the service's normalisation), then how well each of the model's scores separates defective
cells from OK ones (ROC AUC, overall and per cell type) and the verdicts of simple rules. For
choosing between training runs and generator versions; the figures a user sees come from
eval/elpv_eval.py, through `linesight serve`.

PyPI elpv-dataset (CC BY-NC-SA 4.0): evaluation only; the even rows are never read.

    python eval/elpv_model_scores.py models/el-maskrcnn/model.onnx /tmp/other.onnx --out report.json
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np
import onnxruntime as ort

import elpv_dataset

DEFECTIVE_AT = 0.5
CLASSES = ["crack", "inactive", "finger_interruption"]


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    positives, negatives = truth.sum(), (~truth).sum()
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def scores_of_model(path: str, cells: list[tuple[str, float, str]]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    best = np.zeros((len(cells), len(CLASSES)))
    head = np.full(len(cells), np.nan)
    for k, (file, _, _) in enumerate(cells):
        gray = cv2.imread(file, cv2.IMREAD_GRAYSCALE)
        x = np.repeat(((gray.astype(np.float32) - 128.0) / 64.0)[None, None], 3, axis=1)
        out = dict(zip(names, session.run(None, {"images": x})))
        for label, score in zip(out["labels"], out["scores"]):
            c = int(round(float(label))) - 1
            best[k, c] = max(best[k, c], float(score))
        if "cell_defect" in out:
            head[k] = float(out["cell_defect"].reshape(-1)[0])
    scores = {f"best {c}": best[:, i] for i, c in enumerate(CLASSES)}
    scores["best crack or inactive"] = best[:, :2].max(axis=1)
    if not np.isnan(head).any():
        scores["cell head"] = head
    return scores


def verdict(truth: np.ndarray, flagged: np.ndarray) -> dict:
    tp, fp = int((truth & flagged).sum()), int((~truth & flagged).sum())
    fn, tn = int((truth & ~flagged).sum()), int((~truth & ~flagged).sum())
    recall, precision = tp / max(1, tp + fn), tp / max(1, tp + fp)
    return {
        "accuracy": round((tp + tn) / len(truth), 4),
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model.onnx files")
    ap.add_argument("--out", help="write the report here (JSON)")
    args = ap.parse_args()
    data = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
    rows = [line.split() for line in open(os.path.join(data, "labels.csv")) if line.strip()]
    cells = [(os.path.join(data, p), float(prob), t) for i, (p, prob, t) in enumerate(rows) if i % 2 == 1]
    truth = np.array([prob >= DEFECTIVE_AT for _, prob, _ in cells])
    mono = np.array([t == "mono" for _, _, t in cells])
    report = {"cells": len(cells), "rows": "odd rows of labels.csv (0-based)", "models": {}}
    for path in args.models:
        scores = scores_of_model(path, cells)
        entry = {"auc": {}, "rules": {}}
        for name, s in scores.items():
            entry["auc"][name] = {
                "all": round(auc(truth, s), 4),
                "mono": round(auc(truth[mono], s[mono]), 4),
                "poly": round(auc(truth[~mono], s[~mono]), 4),
            }
        for threshold in [0.2, 0.3, 0.5]:
            flagged = scores["best crack or inactive"] >= threshold
            entry["rules"][f"crack or inactive >= {threshold}"] = verdict(truth, flagged)
        report["models"][path] = entry
        print(json.dumps({path: entry}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
