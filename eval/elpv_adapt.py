#!/usr/bin/env python3
"""Measures models/tools/adapt_el.py on real cells: ELPV's odd rows as a "line" without labels
(batch norm adapted on one half, the cell head's AUC measured on the other), and the verdict
threshold chosen from 20 labelled cells (drawn many times from one half) for a target recall, the
recall then measured on the other half. Halves two ways: a random split, and contiguous blocks of
the row index (ELPV has no module id; neighbouring rows tend to come from the same module, so a
random split flatters).

    python eval/elpv_adapt.py --base models/el-maskrcnn --out eval/results/elpv-adapt.json

PyPI elpv-dataset (CC BY-NC-SA 4.0): evaluation only; the even rows are never read, and no model
adapted here is shipped. Needs models/tools/requirements-el.txt and elpv-dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import elpv_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tools"))
from adapt_el import adapt_layer, batch_norms, input_statistics, load, probabilities, source_cells, threshold_for_recall  # noqa: E402
from finetune_el import cell_tensor, read_gray  # noqa: E402

DEFECTIVE_AT = 0.5
# adapt_el.py's default: the first batch norm only. "adapted" below is that; every depth is reported.
DEFAULT_LAYERS = 1


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    # Ties share their mean rank.
    for value in np.unique(score):
        tied = score == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    p, n = truth.sum(), (~truth).sum()
    return float((ranks[truth].sum() - p * (p + 1) / 2) / (p * n))


def calibration_trials(prob_a, truth_a, prob_b, truth_b, target, labelled, trials, rng) -> dict:
    recalls, skipped = [], 0
    for _ in range(trials):
        pick = rng.choice(len(prob_a), labelled, replace=False)
        if not truth_a[pick].any():
            skipped += 1
            continue
        threshold = threshold_for_recall(prob_a[pick], truth_a[pick], target)
        recalls.append(float((prob_b[truth_b] >= threshold).mean()))
    recalls = np.array(recalls)
    return {
        "target_recall": target,
        "labelled_cells": labelled,
        "draws": int(len(recalls)),
        "draws_without_a_defective_cell": skipped,
        "recall_mean": round(float(recalls.mean()), 4),
        "recall_p10_p90": [round(float(np.percentile(recalls, 10)), 4), round(float(np.percentile(recalls, 90)), 4)],
        "mean_abs_error": round(float(np.abs(recalls - target).mean()), 4),
        "share_within_5_points": round(float((np.abs(recalls - target) <= 0.05).mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/el-maskrcnn")
    ap.add_argument("--out", help="write the report here (JSON)")
    ap.add_argument("--labelled", type=int, default=20)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()

    data = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
    rows = [line.split() for line in open(os.path.join(data, "labels.csv")) if line.strip()]
    odd = [(os.path.join(data, p), float(prob)) for i, (p, prob, _) in enumerate(rows) if i % 2 == 1]
    truth = np.array([prob >= DEFECTIVE_AT for _, prob in odd])
    tensors = [cell_tensor(read_gray(path)) for path, _ in odd]
    source = source_cells(256)
    base = load(args.base)
    base_prob = probabilities(base, tensors)

    rng = np.random.default_rng(0)
    half = len(odd) // 2
    shuffled = rng.permutation(len(odd))
    splits = {
        "random": (np.sort(shuffled[:half]), np.sort(shuffled[half:])),
        "blocks": (np.arange(half), np.arange(half, len(odd))),
    }
    report = {"cells": len(odd), "defective": int(truth.sum()), "rows": "odd rows of labels.csv (0-based)", "base": args.base, "splits": {}}
    for name, (first, second) in splits.items():
        folds = []
        for adapt_on, measure_on in [(first, second), (second, first)]:
            model = load(args.base)
            source_stats = input_statistics(model, source)
            line = [tensors[i] for i in adapt_on]
            # AUC with the first N batch norms adapted, N = 1 (the input's exposure and contrast) up to all.
            auc_by_layers = {}
            for index in range(len(batch_norms(model))):
                adapt_layer(model, index, line, source_stats)
                prob_b = probabilities(model, [tensors[i] for i in measure_on])
                auc_by_layers[index + 1] = round(auc(truth[measure_on], prob_b), 4)
                if index + 1 == DEFAULT_LAYERS:
                    adapted_prob_b, adapted_prob_a = prob_b, probabilities(model, line)
            fold = {
                "auc_base": round(auc(truth[measure_on], base_prob[measure_on]), 4),
                "auc_adapted": auc_by_layers[DEFAULT_LAYERS],
                "auc_adapted_first_n_layers": auc_by_layers,
                "threshold_from_labels": {
                    "base": calibration_trials(
                        base_prob[adapt_on], truth[adapt_on], base_prob[measure_on], truth[measure_on], 0.9, args.labelled, args.trials, np.random.default_rng(1)
                    ),
                    "adapted": calibration_trials(
                        adapted_prob_a, truth[adapt_on], adapted_prob_b, truth[measure_on], 0.9, args.labelled, args.trials, np.random.default_rng(1)
                    ),
                    "base_target_0.75": calibration_trials(
                        base_prob[adapt_on], truth[adapt_on], base_prob[measure_on], truth[measure_on], 0.75, args.labelled, args.trials, np.random.default_rng(1)
                    ),
                },
            }
            folds.append(fold)
            print(json.dumps({name: fold}), flush=True)
        report["splits"][name] = {
            "folds": folds,
            "auc_base_mean": round(float(np.mean([f["auc_base"] for f in folds])), 4),
            "auc_adapted_mean": round(float(np.mean([f["auc_adapted"] for f in folds])), 4),
        }
    report["auc_base_all_odd_rows"] = round(auc(truth, base_prob), 4)
    report["seconds"] = round(time.time() - started)
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
