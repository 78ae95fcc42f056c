#!/usr/bin/env python3
"""int8 MobileNetV2 embedder: ONNX Runtime static quantisation of models/mobilenetv2-reid.

Calibration crops are NanoDet-g person boxes (eval/reference_detect.py) from vtest.avi frames
500-794, which no test and no evaluation reads (the tests use frames 0, 100, 250 and 100-129, the
embedder evaluations frames 0-299). Crops are made as the `track` pipeline makes them: RGB, stretched
to 256x128, ImageNet mean/std.

Quantisation: QDQ format (runs on ONNX Runtime's CPU int8 kernels and is what TensorRT reads), int8
per-channel weights, uint8 activations, ranges by percentile 99.999 over the calibration crops.

Usage (requirements: models/tools/requirements-quantize.txt; frames from scripts/bench-frames.sh):
  quantize_embedder.py --frames target/bench-frames --out models/mobilenetv2-reid-int8/model.onnx
"""
import argparse
import hashlib
import sys
import tempfile
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
from reference_detect import detect  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CALIBRATION_FRAMES = range(500, 795)
CALIBRATION_CROPS = 256


def crop_tensor(image_bgr, box, height=256, width=128):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    crop = image_bgr[max(y1, 0) : y2, max(x1, 0) : x2]
    rgb = cv2.resize(crop[:, :, ::-1], (width, height)).astype(np.float32) / 255.0
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)


def person_crops(frames_dir, frame_numbers, detector_dir):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    spec = tomllib.loads((detector_dir / "model.toml").read_text())
    detector = ort.InferenceSession(str(detector_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    crops = []
    for n in frame_numbers:
        image = cv2.imread(str(frames_dir / f"frame_{n:04d}.jpg"), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"no frame {n} in {frames_dir} (scripts/bench-frames.sh makes them)")
        for d in detect(detector, spec, image, 0.35, 0.6, 100):
            b = d["box"]
            if d["class_name"] == "person" and b[2] - b[0] >= 8 and b[3] - b[1] >= 16:
                crops.append(crop_tensor(image, b))
    return np.stack(crops)


class Crops(CalibrationDataReader):
    def __init__(self, crops, batch=16):
        self.batches = iter([crops[i : i + batch] for i in range(0, len(crops), batch)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"crops": batch}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--source", type=Path, default=Path("models/mobilenetv2-reid/model.onnx"))
    ap.add_argument("--detector", type=Path, default=Path("models/nanodet-g"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calibration", choices=["percentile", "minmax", "entropy"], default="percentile")
    ap.add_argument("--keep-f32", nargs="*", default=[], metavar="NODE",
                    help="nodes left in f32 (e.g. the last convolution and the pooling)")
    args = ap.parse_args()

    crops = person_crops(args.frames, CALIBRATION_FRAMES, args.detector)
    # Every few crops: neighbouring frames repeat the same people, and the calibrator keeps every
    # activation of every crop in memory.
    crops = crops[:: max(1, len(crops) // CALIBRATION_CROPS)]
    print(f"{len(crops)} calibration crops from frames {CALIBRATION_FRAMES.start}-{CALIBRATION_FRAMES.stop - 1}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(args.source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(args.out),
            Crops(crops),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
                              "entropy": CalibrationMethod.Entropy}[args.calibration],
            nodes_to_exclude=args.keep_f32,
            extra_options={"CalibPercentile": 99.999},
        )
    print(f"{args.out}: sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
