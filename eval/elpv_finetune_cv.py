#!/usr/bin/env python3
"""What a factory's own labelled cells buy: 2-fold cross-validation of models/tools/finetune_el.py on
ELPV's odd rows (PyPI elpv-dataset, CC BY-NC-SA 4.0: evaluation only; the even rows are never read).

The odd rows are split in two halves, stratified by cell type and label (seed 0). For each half, the
tool fine-tunes the base model on the *other* half, exactly as a user would run it (a folder of
cells and a CSV of labels), and eval/elpv_eval.py scores the resulting model folder through
`linesight serve` on this half, with the verdict its model.toml sets. The fine-tuned weights are
written under --workdir (outside the repository) and never kept: they are trained on ELPV.

    python eval/elpv_finetune_cv.py --binary target/release/linesight --base models/el-maskrcnn \
        --out eval/results/elpv-finetune-cv
    (one venv with models/tools/requirements-el.txt and eval/requirements-el.txt)

Writes fold0.json, fold1.json (elpv_eval.py reports, with their sweeps) and cv.json (per fold, the
mean of the two, and the pooled confusion matrix overall and per cell type).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import elpv_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFECTIVE_AT = 0.5
METRICS = ["recall", "precision", "accuracy", "f1"]


def folds(rows: list[list[str]], seed: int) -> list[list[int]]:
    """The odd rows in two halves, each stratum (type, defective) split evenly."""
    rng = np.random.default_rng(seed)
    halves: list[list[int]] = [[], []]
    strata: dict[tuple[str, bool], list[int]] = {}
    for i, (_, probability, cell_type) in enumerate(rows):
        if i % 2 == 1:
            strata.setdefault((cell_type, float(probability) >= DEFECTIVE_AT), []).append(i)
    for key in sorted(strata):
        members = [strata[key][k] for k in rng.permutation(len(strata[key]))]
        half = len(members) // 2
        halves[0] += members[:half]
        halves[1] += members[half:]
    return [sorted(h) for h in halves]


def pooled(reports: list[dict], key: str) -> dict:
    confusion = {k: sum(r[key]["confusion"][k] for r in reports) for k in ["tp", "fp", "fn", "tn"]}
    tp, fp, fn, tn = (confusion[k] for k in ["tp", "fp", "fn", "tn"])
    recall, precision = tp / max(1, tp + fn), tp / max(1, tp + fp)
    return {
        "cells": tp + fp + fn + tn,
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "accuracy": round((tp + tn) / max(1, tp + fp + fn + tn), 4),
        "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
        "confusion": confusion,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/linesight"))
    ap.add_argument("--base", default=os.path.join(ROOT, "models/el-maskrcnn"))
    ap.add_argument("--out", default=os.path.join(ROOT, "eval/results/elpv-finetune-cv"))
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the fine-tuned models go (not the repository)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("finetune_args", nargs="*", help="passed to finetune_el.py after --, e.g. -- --epochs 4")
    args = ap.parse_args()
    workdir = os.path.abspath(os.path.join(args.workdir, "elpv-finetune-cv"))
    if os.path.commonpath([workdir, ROOT]) == ROOT:
        raise SystemExit("--workdir must be outside the repository: the fine-tuned weights are trained on ELPV")

    data = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
    rows = [line.split() for line in open(os.path.join(data, "labels.csv")) if line.strip()]
    halves = folds(rows, args.seed)
    os.makedirs(args.out, exist_ok=True)
    reports = []
    for k, test in enumerate(halves):
        train = halves[1 - k]
        fold_dir = os.path.join(workdir, f"fold{k}")
        models = os.path.join(fold_dir, "models")
        os.makedirs(models, exist_ok=True)
        labels = os.path.join(fold_dir, "labels.csv")
        with open(labels, "w") as f:
            f.write("image,probability\n")
            for i in train:
                f.write(f"{rows[i][0]},{rows[i][1]}\n")
        test_rows = os.path.join(fold_dir, "test_rows.json")
        with open(test_rows, "w") as f:
            json.dump(test, f)
        nanodet = os.path.join(models, "nanodet-g")
        if not os.path.exists(nanodet):
            os.symlink(os.path.join(ROOT, "models/nanodet-g"), nanodet)
        model = os.path.join(models, "el-finetuned")
        tool = os.path.join(ROOT, "models/tools/finetune_el.py")
        command = [sys.executable, tool, "--images", data, "--labels", labels, "--base", args.base, "--out", model]
        command += ["--threads", str(args.threads), *args.finetune_args]
        print(f"fold {k}: fine-tuning on {len(train)} cells, testing on {len(test)}", file=sys.stderr)
        subprocess.run(command, check=True)
        evaluate = [sys.executable, os.path.join(ROOT, "eval/elpv_eval.py"), "--binary", args.binary]
        evaluate += ["--model-dir", models, "--model", "el-finetuned", "--row-list", test_rows]
        evaluate += ["--name", f"fold{k}", "--out", args.out, "--threads", str(args.threads)]
        subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(args.out, f"fold{k}.json")) as f:
            report = json.load(f)
        with open(os.path.join(model, "finetune.json")) as f:
            report["finetune"] = json.load(f)
        reports.append(report)

    types = sorted(reports[0]["server_verdicts_by_type"])
    summary = {
        "what": "2-fold cross-validation inside ELPV's odd rows: fine-tuned on one half, scored on the other, both ways",
        "base_model": os.path.relpath(os.path.abspath(args.base), ROOT),
        "finetune_args": args.finetune_args,
        "folds": [
            {"train_cells": len(halves[1 - k]), "test_cells": len(halves[k]), "server_verdicts": r["server_verdicts"]}
            for k, r in enumerate(reports)
        ],
        "mean_of_folds": {m: round(float(np.mean([r["server_verdicts"][m] for r in reports])), 4) for m in METRICS},
        "pooled": pooled(reports, "server_verdicts"),
        "pooled_by_type": {t: pooled([{"x": r["server_verdicts_by_type"][t]} for r in reports], "x") for t in types},
        "flagged_by_label_probability": [r["flagged_by_label_probability"] for r in reports],
        "finetune_seconds": [r["finetune"]["epochs"][-1]["seconds"] for r in reports],
    }
    with open(os.path.join(args.out, "cv.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
