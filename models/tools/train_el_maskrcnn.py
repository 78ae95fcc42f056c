"""Trains the el-defect Mask R-CNN (models/tools/el_maskrcnn.py) from scratch on synthetic cells.

Every training cell is drawn fresh by models/tools/el_synth.py from seed 1_000_000 + its index, so
the run needs no dataset on disk and never sees a cell twice. Seeds below 1_000_000 are kept for
validation and test fixtures. No real EL image is used.

    python models/tools/train_el_maskrcnn.py --out /tmp/el-train --iterations 6000

A run can start from another run's weights (--init, a checkpoint; or --init-onnx, an exported
model.onnx, read back by el_maskrcnn.load_onnx_weights; e.g. after the generator changed) and draw its
cells from further on (--first-cell), so no cell repeats across the two. Batch norm stays frozen
(running statistics kept) when starting from an ONNX file, whose batch norm is folded, or with
--freeze-bn. The cell head trains on the cells' image labels (any instance = defective) with weight
--cell-loss-weight.

Writes checkpoint.pt (and checkpoint-<iteration>.pt every --save-every iterations) and
training_log.tsv (iteration, seconds, learning rate, each loss) to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from el_maskrcnn import (  # noqa: E402
    BACKBONES,
    MEAN,
    STD,
    build_model,
    freeze_batch_norm,
    load_onnx_weights,
    onnx_backbone,
    optimise,
    training_losses,
)
from el_synth import boxes_of, make_cell  # noqa: E402

TRAIN_SEED_BASE = 1_000_000


def synthetic_sample(seed: int, generator_version: int):
    """A synthetic cell as the network takes it ([1, 300, 300], normalised) and its targets."""
    img, instances, _ = make_cell(seed, version=generator_version)
    x = torch.from_numpy((img.astype(np.float32) - MEAN) / STD)[None]
    target = {
        "boxes": torch.from_numpy(boxes_of(instances)),
        "labels": torch.tensor([i.class_id for i in instances], dtype=torch.int64),
        "masks": torch.from_numpy(np.stack([i.mask for i in instances]).astype(np.uint8))
        if instances
        else torch.zeros((0, img.shape[0], img.shape[1]), dtype=torch.uint8),
    }
    return x, target


def _in_trunk(name: str) -> bool:
    """A parameter of a pretrained backbone's ImageNet trunk (not its FPN)."""
    return name.startswith("backbone.") and not name.startswith("backbone.fpn.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="start from this checkpoint's weights (optimiser state is not kept)")
    ap.add_argument("--first-cell", type=int, default=0, help="index of the first training cell")
    ap.add_argument("--init-onnx", help="start from this exported model.onnx (batch norm frozen)")
    ap.add_argument("--freeze-bn", action="store_true")
    ap.add_argument("--cell-loss-weight", type=float, default=1.0)
    ap.add_argument("--only-cell-head", action="store_true", help="train the cell head alone; the rest stays as loaded")
    ap.add_argument("--generator-version", type=int, default=3, help="el_synth.make_cell's version")
    ap.add_argument("--backbone", choices=BACKBONES, default="tiny", help="tiny: from scratch; efficientnet-lite0: ImageNet trunk")
    ap.add_argument("--trunk-lr-scale", type=float, default=0.1, help="learning-rate factor of a pretrained trunk")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.init_onnx:
        args.backbone = onnx_backbone(args.init_onnx)
    elif args.init:
        args.backbone = torch.load(args.init, map_location="cpu")["args"].get("backbone", "tiny")
    pretrained_trunk = args.backbone != "tiny"
    model = build_model(backbone=args.backbone, pretrained=pretrained_trunk and not (args.init or args.init_onnx))
    if args.init:
        missing = model.load_state_dict(torch.load(args.init, map_location="cpu")["model"], strict=False).missing_keys
        print(f"--init: new parameters {missing}", file=sys.stderr)
    if args.init_onnx:
        print(f"--init-onnx: new parameters {load_onnx_weights(model, args.init_onnx)}", file=sys.stderr)
    model.train()
    # A pretrained trunk keeps ImageNet's batch-norm statistics: batches of 4 cells cannot estimate them.
    frozen_bn = args.freeze_bn or bool(args.init_onnx) or pretrained_trunk
    if frozen_bn:
        freeze_batch_norm(model)
    if args.only_cell_head:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("cell_head.")
    params = [p for p in model.parameters() if p.requires_grad]
    trunk = [p for n, p in model.named_parameters() if p.requires_grad and pretrained_trunk and _in_trunk(n)]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not (pretrained_trunk and _in_trunk(n))]
    groups = [{"params": rest, "scale": 1.0}] + ([{"params": trunk, "scale": args.trunk_lr_scale}] if trunk else [])
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-4)

    def lr_at(it: int) -> float:
        if it < args.warmup:
            return args.lr * (0.1 + 0.9 * it / args.warmup)
        progress = (it - args.warmup) / max(1, args.iterations - args.warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    log = open(os.path.join(args.out, "training_log.tsv"), "a")
    start = time.time()
    running: dict[str, float] = {}
    header_written = os.path.getsize(os.path.join(args.out, "training_log.tsv")) > 0
    for it in range(args.iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(it) * g["scale"]
        first = TRAIN_SEED_BASE + args.first_cell + it * args.batch
        batch = [synthetic_sample(first + k, args.generator_version) for k in range(args.batch)]
        images = [b[0] for b in batch]
        targets = [b[1] for b in batch]
        cell_labels = torch.tensor([float(len(t["labels"]) > 0) for t in targets])
        losses = training_losses(model, images, None if args.only_cell_head else targets, cell_labels)
        losses["loss_cell"] = losses["loss_cell"] * args.cell_loss_weight
        total = optimise(opt, params, losses, running)
        running["total"] = running.get("total", 0.0) + total.item()
        if (it + 1) % 50 == 0:
            names = sorted(running)
            if not header_written:
                log.write("iteration\tseconds\tlr\t" + "\t".join(names) + "\n")
                header_written = True
            log.write(
                f"{it + 1}\t{time.time() - start:.0f}\t{lr_at(it):.6f}\t"
                + "\t".join(f"{running[n] / 50:.4f}" for n in names)
                + "\n"
            )
            log.flush()
            running = {}
        if (it + 1) % args.save_every == 0 or it + 1 == args.iterations:
            state = {"model": model.state_dict(), "iteration": it + 1, "args": vars(args)}
            torch.save(state, os.path.join(args.out, "checkpoint.pt.tmp"))
            os.replace(os.path.join(args.out, "checkpoint.pt.tmp"), os.path.join(args.out, "checkpoint.pt"))
    log.close()


if __name__ == "__main__":
    main()
