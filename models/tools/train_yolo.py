#!/usr/bin/env python3
"""Trains an Ultralytics YOLO from its YAML (random initialisation: no weights are downloaded) on
the conveyor dataset of `conveyor_synth.py`, validates it on the held-out split with Ultralytics'
own `val`, and exports ONNX files as users export theirs.

  train_yolo.py --family yolo11 --scale n --data DIR/data.yaml --epochs 14 --close-mosaic 4 \
      --out runs/yolo11n --export fp32                      # the shipped models/yolo11n-conveyor
  train_yolo.py --family yolo26 --scale tiny --epochs 3 ...   # the small parity models

The shipped YOLO11n took 14 epochs, 74 minutes on the 2-core CPU; `--resume` continues an
interrupted run from its last.pt. Its card: models/yolo11n-conveyor/README.md.

`--scale tiny` is depth 0.33, width 0.125, max 256 channels: the same head and export layout as
`n` at a tenth of the size, small enough to commit as a test fixture.

Everything that would reach the network is off: YOLO_OFFLINE, no plots (fonts), no AMP check
(CPU), no hub sync. Exports (`--export`, comma-separated): fp32 (dynamic batch), fp32-b1 (fixed
batch 1), fp32-b2 (fixed batch 2), fp16 (CPU FP16 conversion: f16 weights, f32 inputs and outputs),
fixed-256x320-opset12, dynamic-224x384-opset16, nms-320x256-opset17 (other sizes, opsets, no
simplification, NMS in the graph).
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import yaml  # noqa: E402

import ultralytics  # noqa: E402
from ultralytics import YOLO, settings  # noqa: E402

FAMILIES = {"yolov8": "v8/yolov8.yaml", "yolo11": "11/yolo11.yaml", "yolo26": "26/yolo26.yaml"}
TINY = [0.33, 0.125, 256]


def model_yaml(family, scale, nc, out):
    """The family's YAML with our class count and the chosen scale, written next to the run."""
    src = Path(ultralytics.__file__).parent / "cfg" / "models" / FAMILIES[family]
    cfg = yaml.safe_load(src.read_text())
    cfg["nc"] = nc
    if scale == "tiny":
        cfg["scales"] = {"t": TINY}
        scale = "t"
    cfg["scale"] = scale
    path = out / f"{family}{scale}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


EXPORTS = {
    "fp32": dict(dynamic=True, batch=1),
    "fp32-b1": dict(dynamic=False, batch=1),
    "fp32-b2": dict(dynamic=False, batch=2),
    "fp16": dict(dynamic=False, batch=1, quantize=16),
    # The NMS-free head (YOLO26, YOLOv10): [n, max_det, 6] boxes already chosen.
    "e2e": dict(dynamic=True, batch=1, nms=False),
    "e2e-fp16": dict(dynamic=False, batch=1, nms=False, quantize=16),
    # Settings users export with that the exports above do not cover: other sizes, opsets, no
    # simplification, NMS inside the graph.
    "fixed-256x320-opset12": dict(dynamic=False, batch=1, imgsz=[256, 320], opset=12, simplify=False),
    "dynamic-224x384-opset16": dict(dynamic=True, batch=1, imgsz=[224, 384], opset=16),
    "nms-320x256-opset17": dict(dynamic=False, batch=1, imgsz=[320, 256], opset=17, nms=True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--scale", default="n")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the training split used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--export", default="fp32")
    parser.add_argument("--close-mosaic", type=int, default=10, help="last epochs trained without mosaic")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last.pt")
    args = parser.parse_args()

    settings.update({"sync": False})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = yaml.safe_load(Path(args.data).read_text())["names"]
    cfg = model_yaml(args.family, args.scale, len(names), out)
    last = out / "train" / "weights" / "last.pt"
    if args.resume and last.exists():
        # Ultralytics keeps the run's arguments, optimiser and schedule in last.pt.
        YOLO(str(last)).train(resume=True)
    else:
        train(args, cfg, out)
    report_and_export(args, out, names)


def train(args, cfg, out):
    YOLO(str(cfg)).train(
        data=args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        fraction=args.fraction,
        device="cpu",
        workers=2,
        seed=args.seed,
        close_mosaic=args.close_mosaic,
        deterministic=True,
        amp=False,
        plots=False,
        project=str(out),
        name="train",
        exist_ok=True,
        pretrained=False,
        verbose=False,
    )


def report_and_export(args, out, names):
    best = out / "train" / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics = trained.val(data=args.data, split="test", imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False, project=str(out), name="val_test", exist_ok=True)
    report = {
        "family": args.family,
        "scale": args.scale,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "seed": args.seed,
        "fraction": args.fraction,
        "ultralytics": ultralytics.__version__,
        "command": " ".join(sys.argv),
        "test_split": {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map), "precision": float(metrics.box.mp), "recall": float(metrics.box.mr)},
        "per_class_mAP50-95": {names[i]: float(v) for i, v in enumerate(metrics.box.maps)},
    }
    for kind in filter(None, args.export.split(",")):
        options = EXPORTS[kind]
        settings = {"imgsz": args.imgsz, "simplify": True, **options}
        path = Path(YOLO(str(best)).export(format="onnx", device="cpu", **settings))
        target = out / f"{args.family}{args.scale}-{kind}.onnx"
        shutil.move(path, target)
        report.setdefault("exports", {})[kind] = target.name
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["test_split"]))


if __name__ == "__main__":
    main()
