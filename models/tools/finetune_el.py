#!/usr/bin/env python3
"""Fine-tunes the el-defect model on a factory's own labelled cells, with image-level labels only,
and writes a model folder that `linesight serve` loads as it is (model.onnx + model.toml).

    python models/tools/finetune_el.py --images cells/ --labels labels.csv \
        --base models/el-maskrcnn --out models/el-maskrcnn-line4

--labels is a CSV with a header row and two columns:
  image        the cell image's path, relative to --images (any format OpenCV reads; gray or colour)
  defective    1/0, true/false, yes/no, defective/ok; or a probability 0..1 (defective at >= 0.5)
(`label` and `probability` are accepted as names of the second column.)

What it does: it reads the base model back from its model.onnx (el_maskrcnn.load_onnx_weights), then
trains the backbone and the cell head on the user's cells (binary cross-entropy on the image label,
classes balanced, flips and exposure jitter), while every step also trains the whole network on
synthetic cells with instance masks (el_synth.py, version 3), so the instances the service returns
keep matching the updated backbone. The cell head's probability then decides the cell verdict:
the written model.toml sets `min_defect_probability` (and `count_instances = false` unless --verdict
either). The export is checked against PyTorch on a few cells.

Needs models/tools/requirements-el.txt. On 2 CPU cores, about a minute and a half per epoch of
650 cells (8 epochs by default).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from el_maskrcnn import (  # noqa: E402
    MEAN,
    SIZE,
    STD,
    ExportWrapper,
    export_onnx,
    freeze_batch_norm,
    model_from_onnx,
    optimise,
    training_losses,
)
from train_el_maskrcnn import synthetic_sample  # noqa: E402

# Synthetic cells drawn during fine-tuning: a range no shipped training run uses.
SYNTHETIC_SEED_BASE = 5_000_000
TRUE = {"1", "true", "yes", "defective", "defect", "ng", "bad"}
FALSE = {"0", "false", "no", "ok", "good", "pass"}


def read_labels(path: str, images: str) -> list[tuple[str, bool]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    columns = {c.strip().lower(): c for c in rows[0].keys() if c}
    if "image" not in columns:
        raise SystemExit(f"{path}: needs an `image` column, found {sorted(columns)}")
    label = next((columns[c] for c in ["defective", "label", "probability"] if c in columns), None)
    if label is None:
        raise SystemExit(f"{path}: needs a `defective` (or `label`, `probability`) column, found {sorted(columns)}")
    out = []
    for n, row in enumerate(rows, start=2):
        value = (row[label] or "").strip().lower()
        if value in TRUE:
            defective = True
        elif value in FALSE:
            defective = False
        else:
            try:
                defective = float(value) >= 0.5
            except ValueError:
                raise SystemExit(f"{path}:{n}: `{row[label]}` is not a label (1/0, true/false, ok/defective, 0..1)")
        file = os.path.join(images, row[columns["image"]].strip())
        if not os.path.isfile(file):
            raise SystemExit(f"{path}:{n}: {file} does not exist")
        out.append((file, defective))
    return out


def cell_tensor(gray: np.ndarray) -> torch.Tensor:
    """A gray cell letterboxed to SIZE x SIZE, normalised as the service does: [1, SIZE, SIZE]."""
    h, w = gray.shape
    scale = min(SIZE / w, SIZE / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else gray
    canvas = np.full((SIZE, SIZE), 128, np.uint8)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return torch.from_numpy((canvas.astype(np.float32) - MEAN) / STD)[None]


def read_gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SystemExit(f"{path}: not an image OpenCV can read")
    if img.ndim == 3:
        # The network averages the three channels of what the service sends.
        img = img[..., :3].mean(axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 / max(1.0, float(img.max()))), 0, 255)
    return img.astype(np.uint8)


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() < 0.5:
        x = x.flip(2)
    if rng.random() < 0.5:
        x = x.flip(1)
    # Exposure and contrast of another camera, in normalised units.
    gain, shift = rng.uniform(0.85, 1.15), rng.uniform(-0.25, 0.25)
    return x * gain + shift + torch.randn_like(x) * float(rng.uniform(0, 0.05))


def synthetic_batch(first: int, count: int):
    samples = [synthetic_sample(seed, 3) for seed in range(first, first + count)]
    targets = [t for _, t in samples]
    return [x for x, _ in samples], targets, torch.tensor([float(len(t["labels"]) > 0) for t in targets])


MODEL_TOML = """# {description}
# Written by models/tools/finetune_el.py; see provenance.
name = "{name}"
task = "segment"
file = "model.onnx"
description = "{description}"

classes = ["crack", "inactive", "finger_interruption"]

[input]
# images: [1, 3, 300, 300] f32, (pixel - 128) / 64; the network averages the three channels.
name = "images"
width = 300
height = 300
channel_order = "rgb"
mean = [128.0, 128.0, 128.0]
std = [64.0, 64.0, 64.0]
resize = "letterbox"
pad_value = 128
batch = 1

[decoder]
kind = "maskrcnn"
boxes = "boxes"
labels = "labels"
scores = "scores"
masks = "masks"
defect_probability = "cell_defect"

[postprocess]
score_threshold = 0.5
iou_threshold = 0.5
max_detections = 20
mask_threshold = 0.5

[cell_rule]
# Fine-tuned on the user's image-level labels: the cell head's probability decides{either}.
min_defect_probability = {threshold}
count_instances = {count_instances}
min_score = 0.2
classes = ["crack", "inactive"]

[provenance]
source = "fine-tuned by models/tools/finetune_el.py from {base_name} (sha256 {base_sha}) on {cells} labelled cells ({defective} defective) of {labels}"
command = "{command}"
onnx_sha256 = "{sha}"
"""


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder the CSV's image paths are relative to")
    ap.add_argument("--labels", required=True, help="CSV: image, defective")
    ap.add_argument("--base", required=True, help="model folder to start from (its model.onnx)")
    ap.add_argument("--out", required=True, help="model folder to write (model.onnx, model.toml, finetune.json)")
    ap.add_argument("--name", help="model name (default: the --out folder's name)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="user cells per step")
    ap.add_argument("--synthetic", type=int, default=2, help="synthetic cells with masks per step (0 = none)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threshold", type=float, default=0.5, help="min_defect_probability written to model.toml")
    ap.add_argument("--verdict", choices=["probability", "either"], default="probability")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0.0 <= args.threshold <= 1.0:
        raise SystemExit(f"--threshold {args.threshold}: a probability, 0..1")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    cells = read_labels(args.labels, args.images)
    positives = sum(d for _, d in cells)
    if positives == 0 or positives == len(cells):
        raise SystemExit(f"{args.labels}: needs both defective and OK cells ({positives} of {len(cells)} defective)")
    tensors = [cell_tensor(read_gray(path)) for path, _ in cells]
    labels = torch.tensor([float(d) for _, d in cells])
    pos_weight = torch.tensor((len(cells) - positives) / positives)
    print(f"{len(cells)} cells, {positives} defective", file=sys.stderr)

    base_onnx = os.path.join(args.base, "model.onnx")
    model, fresh = model_from_onnx(base_onnx)
    if fresh:
        print(f"not in the base model, trained from scratch: {fresh}", file=sys.stderr)
    model.train()
    freeze_batch_norm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(cells) / args.batch)
    total_steps = steps_per_epoch * args.epochs
    log = []
    started = time.time()
    step = 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(cells))
        running = {}
        for start in range(0, len(cells), args.batch):
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            idx = order[start : start + args.batch]
            images = [augment(tensors[i], rng) for i in idx]
            # As the exported graph runs them: the 300 x 300 cells straight into the backbone
            # (`model.transform` would pad the batch to 320 x 320, which the service never sends).
            logits = model.cell_head(model.backbone(torch.stack(images)))
            real = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx], pos_weight=pos_weight)
            losses = {"real_cell": real}
            if args.synthetic:
                first = SYNTHETIC_SEED_BASE + step * args.synthetic
                s_images, s_targets, s_labels = synthetic_batch(first, args.synthetic)
                for k, v in training_losses(model, s_images, s_targets, s_labels).items():
                    losses[f"synthetic_{k}"] = v
            optimise(opt, params, losses, running)
            step += 1
        n = steps_per_epoch
        entry = {"epoch": epoch + 1, "seconds": round(time.time() - started), **{k: round(v / n, 4) for k, v in running.items()}}
        log.append(entry)
        print(json.dumps(entry), file=sys.stderr)

    model.eval()
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    export_onnx(model, onnx_path, tensors[0][None].repeat(1, 3, 1, 1))
    # The export against PyTorch on the first cells.
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    wrapper = ExportWrapper(model).eval()
    worst = 0.0
    for t in tensors[:8]:
        x = t[None].repeat(1, 3, 1, 1)
        ours = session.run(None, {"images": x.numpy()})[4]
        with torch.no_grad():
            theirs = wrapper(x)[4].numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()))
    if worst > 1e-3:
        raise SystemExit(f"the ONNX export differs from PyTorch by {worst} in cell_defect")

    name = args.name or os.path.basename(os.path.normpath(args.out))
    base_name = os.path.basename(os.path.normpath(args.base))
    description = f"el-maskrcnn fine-tuned on {len(cells)} labelled cells ({os.path.basename(args.labels)})"
    with open(os.path.join(args.out, "model.toml"), "w") as f:
        f.write(
            MODEL_TOML.format(
                name=name,
                description=description,
                either=", and so does any crack or inactive area scoring >= 0.2" if args.verdict == "either" else "",
                threshold=args.threshold,
                count_instances="true" if args.verdict == "either" else "false",
                base_name=base_name,
                base_sha=sha256(base_onnx),
                cells=len(cells),
                defective=positives,
                labels=os.path.basename(args.labels),
                command=" ".join(os.path.basename(a) if a == sys.argv[0] else a for a in sys.argv).replace('"', "'"),
                sha=sha256(onnx_path),
            )
        )
    with open(os.path.join(args.out, "finetune.json"), "w") as f:
        json.dump({"args": vars(args), "cells": len(cells), "defective": positives, "epochs": log, "onnx_vs_pytorch_cell_defect": worst}, f, indent=1)
    print(f"wrote {args.out}: model.onnx ({os.path.getsize(onnx_path)} bytes), model.toml, finetune.json", file=sys.stderr)


if __name__ == "__main__":
    main()
