#!/usr/bin/env python3
"""Fixtures for serving Ultralytics exports as they come (tests/e2e/ultralytics_exports.rs):
copies the parity models trained by models/tools/train_yolo.py (`--scale tiny`), a few held-out
conveyor images (the `test` split of models/tools/conveyor_synth.py, some cropped or resized so
that letterboxing pads and scales), and what Ultralytics itself predicts on each image with each
export: `YOLO(onnx, task="detect").predict(image, conf=CONF, iou=IOU)`.

`yolo11t-fp16-io.onnx` is the FP16 export with f16 inputs and outputs, as Ultralytics writes it
on a GPU (`model.half()` before tracing); made here from the CPU export by ONNX Runtime's
float16 converter with `keep_io_types=False`, since no GPU is at hand.

Also writes exports the service must refuse: one whose `names` metadata lists fewer classes than
its head has (a hand-edited export) and one with every metadata property stripped.

  eval/ultralytics_reference.py --runs /work/yolo-runs --data /work/conveyor-data --out tests/fixtures/ultralytics

`--shipped DIR` instead writes DIR/reference.json for the shipped model in DIR (its one .onnx) on
the fixture images already in --out (tests/e2e/ultralytics_exports.rs checks it the same way).

`--jpeg DIR` instead writes DIR/predict.json: what every export in --out and the shipped
models/yolo11n-conveyor predict (conf 0.05, so that more boxes are compared; iou 0.7) on the JPEG
frames of odd sizes in DIR (tests/fixtures/preprocess, eval/make_preprocess_fixtures.py), read by
predict from the files themselves (`cv2.imread`), as a user's JPEGs are.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import onnx  # noqa: E402
import ultralytics  # noqa: E402
from ultralytics import YOLO  # noqa: E402

CONF, IOU = 0.05, 0.7
MODELS = {
    # fixture file: (run folder, export file)
    "yolov8t-fp32.onnx": ("yolov8-tiny", "yolov8tiny-fp32.onnx"),
    "yolov8t-fp16.onnx": ("yolov8-tiny", "yolov8tiny-fp16.onnx"),
    "yolo11t-fp32.onnx": ("yolo11-tiny", "yolo11tiny-fp32.onnx"),
    "yolo11t-fp32-b2.onnx": ("yolo11-tiny", "yolo11tiny-fp32-b2.onnx"),
    "yolo11t-fp16.onnx": ("yolo11-tiny", "yolo11tiny-fp16.onnx"),
    "yolo11t-fp16-io.onnx": ("yolo11-tiny", None),
    "yolo26t-fp32.onnx": ("yolo26-tiny", "yolo26tiny-fp32.onnx"),
    "yolo26t-e2e.onnx": ("yolo26-tiny", "yolo26tiny-e2e.onnx"),
    "yolo26t-e2e-fp16.onnx": ("yolo26-tiny", "yolo26tiny-e2e-fp16.onnx"),
    # Other sizes, opsets and NMS in the graph (a later run of the same training command).
    "yolo11t-256x320-opset12.onnx": ("yolo11-tiny", "yolo11tiny-fixed-256x320-opset12.onnx"),
    "yolo11t-dynamic-224x384-opset16.onnx": ("yolo11-tiny", "yolo11tiny-dynamic-224x384-opset16.onnx"),
    "yolo11t-nms-320x256-opset17.onnx": ("yolo11-tiny", "yolo11tiny-nms-320x256-opset17.onnx"),
}


def images(data, out):
    """Held-out images as served: one as generated (320×320), one cropped wide, one cropped tall
    (letterbox pads, no resize) and one enlarged (letterbox scales down)."""
    test = sorted((Path(data) / "images" / "test").glob("*.png"))
    made = {}
    a = cv2.imread(str(test[0]))
    made["square.png"] = a
    made["wide.png"] = cv2.imread(str(test[1]))[40:280, :]
    made["tall.png"] = cv2.imread(str(test[2]))[:, 60:260]
    made["large.png"] = cv2.resize(cv2.imread(str(test[3])), (480, 480), interpolation=cv2.INTER_LINEAR)
    for name, img in made.items():
        cv2.imwrite(str(out / name), img)
    return sorted(made)


def predict_args(graph):
    """Ultralytics' prediction settings for an export. A dynamic export is given its export `imgsz`
    (predict would run it at 640; the service serves it at its export size) and keeps predict's
    default `rect=True`: each image letterboxed to the smallest multiple of the stride, as the
    service letterboxes a dynamic export. Fixed exports get predict's defaults."""
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    if all(d > 0 for d in dims):
        return {}
    meta = {p.key: p.value for p in graph.metadata_props}
    return {"imgsz": json.loads(meta["imgsz"])}


def predict(model_path, image_path, extra):
    model = YOLO(str(model_path), task="detect")
    result = model.predict(str(image_path), conf=CONF, iou=IOU, device="cpu", verbose=False, **extra)[0]
    boxes = result.boxes
    return [
        {"class_name": result.names[int(c)], "score": float(s), "box": [float(v) for v in b]}
        for b, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())
    ]


def half_io(source, target):
    """f16 weights, inputs and outputs (of the dynamic export)."""
    from onnxruntime.transformers import float16

    model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
    onnx.save(model, str(target))


def refusals(out, source):
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "names":
            prop.value = "{0: 'bolt', 1: 'nut', 2: 'washer'}"
    onnx.save(model, str(out / "refused-names-mismatch.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(out / "refused-no-metadata.onnx"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shipped", help="a model folder holding one Ultralytics .onnx")
    parser.add_argument("--jpeg", help="a folder of JPEG frames: write its predict.json")
    parser.add_argument("--repredict", action="store_true", help="predict again on the fixtures in --out (no --runs)")
    parser.add_argument("--add", action="store_true", help="add the exports of MODELS missing from --out's reference.json")
    args = parser.parse_args()
    if args.add:
        return add_missing(Path(args.runs), Path(args.out))
    if args.repredict:
        return repredict(Path(args.out))
    if args.jpeg:
        return jpeg_reference(Path(args.out), Path(args.jpeg))
    if args.shipped:
        return shipped(Path(args.shipped), Path(args.out))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = images(args.data, out)
    reference = {"ultralytics": ultralytics.__version__, "conf": CONF, "iou": IOU, "models": {}}
    for fixture, (run, export) in MODELS.items():
        if export is None:
            half_io(Path(args.runs) / run / "yolo11tiny-fp32.onnx", out / fixture)
        else:
            shutil.copy(Path(args.runs) / run / export, out / fixture)
        reference["models"][fixture] = entry_for(Path(args.runs), run, out, fixture, names)
    refusals(out, out / "yolo11t-fp16.onnx")
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    for fixture, m in reference["models"].items():
        print(fixture, m["signature"], {k: len(v) for k, v in m["images"].items()})


def shipped(folder, fixtures):
    (model_path,) = sorted(folder.glob("*.onnx"))
    graph = onnx.load(str(model_path))
    names = ["square.png", "wide.png", "tall.png", "large.png"]
    extra = predict_args(graph)
    reference = {
        "ultralytics": ultralytics.__version__,
        "conf": CONF,
        "iou": IOU,
        "models": {folder.name: {"predict_args": {"conf": CONF, "iou": IOU, **extra}, "images": {n: predict(model_path, fixtures / n, extra) for n in names}}},
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print({n: len(v) for n, v in reference["models"][folder.name]["images"].items()})


def entry_for(runs, run, out, fixture, names):
    graph = onnx.load(str(out / fixture))
    signature = {
        "input": [d.dim_value or d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim],
        "input_type": onnx.TensorProto.DataType.Name(graph.graph.input[0].type.tensor_type.elem_type),
        "output": [d.dim_value or d.dim_param for d in graph.graph.output[0].type.tensor_type.shape.dim],
    }
    return {
        "trained_by": json.loads((runs / run / "report.json").read_text())["command"],
        "signature": signature,
        "predict_args": {"conf": CONF, "iou": IOU, **predict_args(graph)},
        "images": {name: predict(out / fixture, out / name, predict_args(graph)) for name in names},
    }


def add_missing(runs, out):
    """The exports of MODELS that --out's reference.json lacks, copied from --runs and predicted
    on the committed images; the others stay as they are."""
    reference = json.loads((out / "reference.json").read_text())
    names = sorted(next(iter(reference["models"].values()))["images"])
    for fixture, (run, export) in MODELS.items():
        if fixture in reference["models"] or export is None:
            continue
        shutil.copy(runs / run / export, out / fixture)
        reference["models"][fixture] = entry_for(runs, run, out, fixture, names)
        print(fixture, reference["models"][fixture]["signature"])
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


def repredict(out):
    """--out's reference.json with every export's predictions made again on its images (after a
    change of predict_args), the rest kept."""
    reference = json.loads((out / "reference.json").read_text())
    reference["ultralytics"] = ultralytics.__version__
    for fixture, entry in reference["models"].items():
        extra = predict_args(onnx.load(str(out / fixture)))
        entry["predict_args"] = {"conf": CONF, "iou": IOU, **extra}
        entry["images"] = {name: predict(out / fixture, out / name, extra) for name in entry["images"]}
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


def jpeg_reference(fixtures, frames_dir):
    frames = sorted(p.name for p in frames_dir.glob("*.jpg"))
    shipped_model = Path(__file__).resolve().parent.parent / "models" / "yolo11n-conveyor" / "model.onnx"
    exports = {name: fixtures / name for name in MODELS} | {"yolo11n-conveyor": shipped_model}
    reference = {"ultralytics": ultralytics.__version__, "conf": CONF, "iou": IOU, "models": {}}
    for name, path in exports.items():
        extra = predict_args(onnx.load(str(path)))
        images = {frame: predict(path, frames_dir / frame, extra) for frame in frames}
        reference["models"][name] = {"predict_args": {"conf": CONF, "iou": IOU, **extra}, "images": images}
        print(name, {k: len(v) for k, v in images.items()})
    (frames_dir / "predict.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
