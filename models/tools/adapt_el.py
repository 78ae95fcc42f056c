#!/usr/bin/env python3
"""Adapts the el-defect model to a line's cells without labels, and sets its verdict threshold from
a few labelled ones; writes a model folder that `linesight serve` loads as it is.

    # batch-norm statistics re-estimated on the line's cells (no labels), then a threshold on the cell
    # head's probability chosen on 20 labelled cells for a target recall:
    python models/tools/adapt_el.py --base models/el-maskrcnn --out models/el-maskrcnn-line4 \
        --unlabelled line4/cells/ --calibrate line4/labels20.csv --images line4/ --target-recall 0.9

Unlabelled adaptation (AdaBN): the backbone's first batch norm (folded into its convolution by the
export) is given the line's own per-channel statistics in place of the synthetic training cells':
each channel is shifted and scaled so that its mean and spread over the line's cells equal what they
were over synthetic cells. No weight is trained; a few hundred cells are enough. Only the first
layer by default (--layers): on ELPV's odd rows (eval/elpv_adapt.py) it raised the cell head's AUC
by 0.026 (random halves) and 0.010 (contiguous halves), and every further layer adapted took some of
that back: what differs between a line and the synthetic cells is mostly exposure and contrast.

Calibration: the cell head's probability on the labelled cells, and the highest threshold that
flags at least --target-recall of the defective ones among them (with few cells, a recall target is
a coarse step: 20 cells of a line with 25 % defects hold about 5 defective ones). The written
model.toml makes that threshold the verdict (`min_defect_probability`, instances not counted).

Needs models/tools/requirements-el.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from el_maskrcnn import export_onnx, model_from_onnx  # noqa: E402
from finetune_el import cell_tensor, read_gray, read_labels, sha256  # noqa: E402
from train_el_maskrcnn import synthetic_sample  # noqa: E402

# Synthetic cells that stand for the training distribution: a range no training run drew from.
SOURCE_SEED_BASE = 6_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load(base: str) -> torch.nn.Module:
    model, fresh = model_from_onnx(os.path.join(base, "model.onnx"))
    if fresh:
        raise SystemExit(f"{base}: the model has no {fresh}")
    return model.eval()


def batch_norms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def cell_logits(model: torch.nn.Module, tensors: list[torch.Tensor], batch: int = 16) -> torch.Tensor:
    """The cell head's logits as the exported graph computes them: the 300 x 300 cells straight into
    the backbone (`model.transform` would pad a batch to 320 x 320, which moves the head's output)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch):
            cells = torch.stack(tensors[start : start + batch])
            out.append(model.cell_head(model.backbone(cells)).reshape(-1))
    return torch.cat(out)


def probabilities(model: torch.nn.Module, tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.sigmoid(cell_logits(model, tensors)).numpy()


def input_statistics(model: torch.nn.Module, tensors: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch norm, the mean and variance per channel of what reaches it over `tensors`."""
    sums: dict[int, list[torch.Tensor]] = {}

    def hook(index):
        def record(_module, inputs, _output):
            z = inputs[0].double()
            s = sums.setdefault(index, [torch.zeros(z.shape[1], dtype=torch.float64)] * 2 + [0])
            s[0] = s[0] + z.sum(dim=(0, 2, 3))
            s[1] = s[1] + (z * z).sum(dim=(0, 2, 3))
            s[2] += z.shape[0] * z.shape[2] * z.shape[3]

        return record

    handles = [bn.register_forward_hook(hook(i)) for i, bn in enumerate(batch_norms(model))]
    try:
        cell_logits(model, tensors)
    finally:
        for h in handles:
            h.remove()
    stats = []
    for i in range(len(handles)):
        total, squares, n = sums[i]
        mean = total / n
        stats.append((mean.float(), (squares / n - mean * mean).clamp(min=1e-8).float()))
    return stats


def adapt_batch_norm(
    model: torch.nn.Module, line: list[torch.Tensor], source: list[torch.Tensor], layers: int | None = None
) -> None:
    """AdaBN, layer by layer from the input up (each layer sees the layers below already adapted):
    every channel of the first `layers` backbone batch norms (all by default) keeps its
    synthetic-cell mean and spread on the line's cells."""
    source_stats = input_statistics(model, source)
    for index in range(len(batch_norms(model)) if layers is None else layers):
        adapt_layer(model, index, line, source_stats)


def adapt_layer(model: torch.nn.Module, index: int, line: list[torch.Tensor], source_stats) -> None:
    bn = batch_norms(model)[index]
    line_mean, line_var = input_statistics(model, line)[index]
    source_mean, source_var = source_stats[index]
    with torch.no_grad():
        # Folded: weight 1, running mean 0, running var 1 - eps, bias b. Now
        # y = sqrt(vs) (z - mt) / sqrt(vt) + ms + b: the identity on the synthetic cells.
        bn.bias.copy_(bn.bias + source_mean)
        bn.weight.copy_(torch.sqrt(source_var + bn.eps))
        bn.running_mean.copy_(line_mean)
        bn.running_var.copy_(line_var)


def source_cells(count: int) -> list[torch.Tensor]:
    return [synthetic_sample(seed, 3)[0] for seed in range(SOURCE_SEED_BASE, SOURCE_SEED_BASE + count)]


def threshold_for_recall(probability: np.ndarray, defective: np.ndarray, target: float) -> float:
    """The highest threshold that flags at least `target` of the defective cells."""
    positives = np.sort(probability[defective])[::-1]
    if len(positives) == 0:
        raise SystemExit("the labelled cells have no defective one: recall cannot be calibrated")
    needed = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[max(1, needed) - 1])


def write_model(base: str, out: str, model: torch.nn.Module, example: torch.Tensor, threshold: float | None, provenance: str) -> None:
    os.makedirs(out, exist_ok=True)
    onnx_path = os.path.join(out, "model.onnx")
    export_onnx(model, onnx_path, example[None].repeat(1, 3, 1, 1))
    toml = open(os.path.join(base, "model.toml")).read()
    toml = re.sub(r'^name = ".*"$', f'name = "{os.path.basename(os.path.normpath(out))}"', toml, count=1, flags=re.M)
    if threshold is not None:
        rule = (
            "[cell_rule]\n# Chosen by models/tools/adapt_el.py on labelled cells: the cell head's probability decides.\n"
            f"min_defect_probability = {threshold:.6f}\ncount_instances = false\n"
        )
        toml = re.sub(r"^\[cell_rule\]\n(?:(?!^\[).*\n)*", rule + "\n", toml, count=1, flags=re.M)
    toml = re.sub(r'^onnx_sha256 = ".*"$', f'onnx_sha256 = "{sha256(onnx_path)}"', toml, count=1, flags=re.M)
    toml = re.sub(r"^\[provenance\]\n", f'[provenance]\nadapted = "{provenance}"\n', toml, count=1, flags=re.M)
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write(toml)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="model folder to start from (its model.onnx and model.toml)")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--unlabelled", help="folder of the line's cells (no labels): adapt batch norm to them")
    ap.add_argument("--source-cells", type=int, default=256, help="synthetic cells that stand for training")
    ap.add_argument("--layers", type=int, default=1, help="adapt the first N batch norms (the backbone has 9)")
    ap.add_argument("--calibrate", help="CSV of labelled cells (image, defective) to set the threshold on")
    ap.add_argument("--images", default=".", help="folder the --calibrate CSV's paths are relative to")
    ap.add_argument("--target-recall", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.unlabelled or args.calibrate):
        raise SystemExit("give --unlabelled, --calibrate or both")
    torch.set_num_threads(args.threads)
    model = load(args.base)
    example = None
    steps = []
    if args.unlabelled:
        files = sorted(f for f in os.listdir(args.unlabelled) if f.lower().endswith(IMAGE_SUFFIXES))
        if len(files) < 32:
            raise SystemExit(f"{args.unlabelled}: {len(files)} cells; batch-norm statistics need at least 32")
        line = [cell_tensor(read_gray(os.path.join(args.unlabelled, f))) for f in files]
        adapt_batch_norm(model, line, source_cells(args.source_cells), args.layers)
        example = line[0]
        steps.append(f"batch norm adapted to {len(files)} unlabelled cells of {args.unlabelled}")
    threshold = None
    if args.calibrate:
        cells = read_labels(args.calibrate, args.images)
        tensors = [cell_tensor(read_gray(path)) for path, _ in cells]
        defective = np.array([d for _, d in cells])
        threshold = threshold_for_recall(probabilities(model, tensors), defective, args.target_recall)
        example = example if example is not None else tensors[0]
        steps.append(f"threshold {threshold:.4f} for recall {args.target_recall} on {len(cells)} labelled cells ({defective.sum()} defective)")
    write_model(args.base, args.out, model, example, threshold, "; ".join(steps))
    print(json.dumps({"out": args.out, "steps": steps}), file=sys.stderr)


if __name__ == "__main__":
    main()
