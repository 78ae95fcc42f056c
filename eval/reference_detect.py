#!/usr/bin/env python3
"""Reference detector pipeline in Python: Ultralytics-exact letterbox (cv2), onnxruntime, numpy decode
(NanoDet GFL distributions, YOLO v5/v8 layouts), class-aware NMS, mapping back to image pixels.

This is the peer the Rust pipeline is compared with (tests/detect_parity.rs reads its JSON output).

Usage: reference_detect.py --model models/nanodet-g [--score 0.35] [--iou 0.6] IMAGE... > out.json
"""
import argparse
import json
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort


def letterbox(img, size, pad_value):
    """Ultralytics LetterBox(auto=False, scaleup=True, center=True)."""
    h, w = img.shape[:2]
    new_h, new_w = size
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return img, r, left, top


def nms_class_aware(boxes, scores, classes, iou_thr, max_det):
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(order), bool)
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    for oi, i in enumerate(order):
        if suppressed[oi]:
            continue
        keep.append(i)
        if len(keep) == max_det:
            break
        rest = order[oi + 1 :]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        suppressed[oi + 1 :] |= (iou > iou_thr) & (classes[rest] == classes[i])
    return np.array(keep, dtype=int)


def decode_nanodet(outputs, spec, size):
    h, w = size
    strides, bins = spec["strides"], spec["reg_bins"]
    offset = spec.get("center_offset", 0.0)
    boxes, scores = [], []
    for s in strides:
        cls = outputs[f"cls_s{s}"][0]
        reg = outputs[f"reg_s{s}"][0].reshape(-1, 4, bins)
        fw = int(np.ceil(w / s))
        idx = np.arange(cls.shape[0])
        cx = (idx % fw + offset) * s
        cy = (idx // fw + offset) * s
        p = np.exp(reg - reg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        d = (p * np.arange(bins)).sum(-1) * s
        boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], -1))
        scores.append(cls)
    return np.concatenate(boxes), np.concatenate(scores)


def decode_yolo(raw, version):
    """v8/v11: [4+nc, A] (cx, cy, w, h, class scores); v5: [A, 5+nc] (cx, cy, w, h, obj, class scores)."""
    if version in ("v8", "v11"):
        p = raw.T
        xywh, cls = p[:, :4], p[:, 4:]
    elif version == "v5":
        xywh, cls = raw[:, :4], raw[:, 5:] * raw[:, 4:5]
    else:
        raise ValueError(version)
    boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                      xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], -1)
    return boxes, cls


def detect(session, spec, img_bgr, score_thr, iou_thr, max_det):
    pre = spec["input"]
    size = (pre["height"], pre["width"])
    lb, r, left, top = letterbox(img_bgr, size, pre["pad_value"])
    x = lb.astype(np.float32)
    if pre["channel_order"] == "rgb":
        x = x[:, :, ::-1]
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    dec = spec["decoder"]
    if dec["kind"] == "nanodet":
        boxes, scores = decode_nanodet(outputs, dec, size)
    elif dec["kind"] == "yolo":
        boxes, scores = decode_yolo(outputs[names[0]][0], dec["version"])
    else:
        raise ValueError(dec["kind"])
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    m = best > score_thr
    boxes, best, cls = boxes[m], best[m], cls[m]
    keep = nms_class_aware(boxes, best, cls, iou_thr, max_det)
    boxes, best, cls = boxes[keep], best[keep], cls[keep]
    ih, iw = img_bgr.shape[:2]
    boxes = (boxes - np.array([left, top, left, top])) / r
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, iw)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, ih)
    classes = spec["classes"]
    return [
        {"class_id": int(c), "class_name": classes[int(c)], "score": float(s), "box": [float(v) for v in b]}
        for b, s, c in zip(boxes, best, cls)
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model directory holding model.onnx and model.toml")
    ap.add_argument("--score", type=float)
    ap.add_argument("--iou", type=float)
    ap.add_argument("--max-det", type=int)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    mdir = Path(args.model)
    spec = tomllib.loads((mdir / "model.toml").read_text())
    post = spec["postprocess"]
    score = args.score if args.score is not None else post["score_threshold"]
    iou = args.iou if args.iou is not None else post["iou_threshold"]
    max_det = args.max_det if args.max_det is not None else post["max_detections"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(str(mdir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    result = {
        "model": spec["name"],
        "score_threshold": score,
        "iou_threshold": iou,
        "onnxruntime": ort.__version__,
        "images": {},
    }
    for path in args.images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        result["images"][Path(path).name] = detect(session, spec, img, score, iou, max_det)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
