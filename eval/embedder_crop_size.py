#!/usr/bin/env python3
"""Choose the `track` pipeline's embedder crop size: identity quality against cost.

On consecutive frames of OpenCV's vtest.avi, people detected by NanoDet-g (eval/reference_detect.py)
are linked into short identity chains where the link is unambiguous: a box in frame t+1 whose IoU with
a box in frame t is >= 0.6 while no other box in either frame reaches 0.3 with it. Such chains are
almost surely one person, so pairs along a chain `gap` frames apart are positives; two distinct
people in the same frame are negatives. For each crop size the MobileNetV2 embedder embeds every crop
(RGB, ImageNet mean/std, plain resize as the peer does), and we report:

- AUC of cosine distance separating positives from negatives,
- how many positives / negatives fall under DeepSORT's matching threshold (0.2),
- cost per crop, median over runs of a batch of 10 crops at 2 threads.

Usage: embedder_crop_size.py --frames DIR [--count 300] [--gap 10]
"""
import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from reference_detect import detect  # noqa: E402

SIZES = [(224, 224), (256, 128), (128, 64), (96, 48), (64, 32)]
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def chains(per_frame):
    """Identity chains: list of [(frame, box_index)], linked only where unambiguous."""
    owner = {}
    result = []
    for t in range(len(per_frame)):
        for j in range(len(per_frame[t])):
            link = None
            if t > 0:
                prev = per_frame[t - 1]
                scores = [iou(p, per_frame[t][j]) for p in prev]
                strong = [i for i, s in enumerate(scores) if s >= 0.6]
                close = [i for i, s in enumerate(scores) if s >= 0.3]
                if len(strong) == 1 and len(close) == 1:
                    i = strong[0]
                    rivals = [k for k, b in enumerate(per_frame[t]) if k != j and iou(prev[i], b) >= 0.3]
                    if not rivals and (t - 1, i) in owner:
                        link = owner[(t - 1, i)]
            if link is None:
                link = len(result)
                result.append([])
            result[link].append((t, j))
            owner[(t, j)] = link
    return result


def embed(session, crops_bgr, size):
    h, w = size
    x = np.stack(
        [((cv2.resize(c[:, :, ::-1], (w, h)).astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1) for c in crops_bgr]
    )
    out = session.run(None, {"crops": x})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def auc(pos, neg):
    # P(distance of a negative > distance of a positive), ties counted half.
    pos, neg = np.sort(pos), np.sort(neg)
    less = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - less
    return float(((len(neg) - less - equal) + 0.5 * equal).sum() / (len(pos) * len(neg)))


def person_crops_and_pairs(frames_dir, count, gap, detector_dir):
    """NanoDet-g person crops of the first `count` frames, keyed (frame, box), and the positive and
    negative pairs of keys (see the module doc)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    mdir = Path(detector_dir)
    spec = tomllib.loads((mdir / "model.toml").read_text())
    detector = ort.InferenceSession(str(mdir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    paths = sorted(Path(frames_dir).glob("*.jpg"))[:count]
    images, per_frame = [], []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        dets = [d["box"] for d in detect(detector, spec, img, 0.35, 0.6, 100) if d["class_name"] == "person"]
        dets = [b for b in dets if b[2] - b[0] >= 8 and b[3] - b[1] >= 16]
        images.append(img)
        per_frame.append(dets)
    crops = {}
    for t, boxes in enumerate(per_frame):
        for j, b in enumerate(boxes):
            x1, y1, x2, y2 = (int(round(v)) for v in b)
            crops[(t, j)] = images[t][y1:y2, x1:x2]
    links = chains(per_frame)
    positives = [(c[i], c[i + gap]) for c in links for i in range(len(c) - gap)]
    negatives = [((t, a), (t, b)) for t, boxes in enumerate(per_frame) for a in range(len(boxes)) for b in range(a + 1, len(boxes))]
    return len(paths), crops, links, positives, negatives


def measure(session, crops, keys, positives, negatives, size):
    """Embeddings of every crop (rows in `keys` order), positive and negative pair distances, and
    15 timings (ms per crop) of a batch of 10 crops."""
    index = {k: i for i, k in enumerate(keys)}
    feats = np.concatenate([embed(session, [crops[k] for k in keys[i : i + 32]], size) for i in range(0, len(keys), 32)])
    dist = lambda pairs: np.array([1.0 - float(feats[index[a]] @ feats[index[b]]) for a, b in pairs])
    batch = [crops[k] for k in keys[:10]]
    embed(session, batch, size)
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        embed(session, batch, size)
        times.append((time.perf_counter() - t0) / len(batch) * 1e3)
    return feats, dist(positives), dist(negatives), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", required=True)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--detector", default="models/nanodet-g")
    ap.add_argument("--embedder", default="models/mobilenetv2-reid/model.onnx")
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    embedder = ort.InferenceSession(args.embedder, so, providers=["CPUExecutionProvider"])
    frames, crops, links, positives, negatives = person_crops_and_pairs(args.frames, args.count, args.gap, args.detector)
    keys = sorted(crops)
    report = {"frames": frames, "crops": len(keys), "chains_used": sum(len(c) > args.gap for c in links),
              "positives": len(positives), "negatives": len(negatives), "gap": args.gap, "sizes": []}
    for size in SIZES:
        feats, dp, dn, times = measure(embedder, crops, keys, positives, negatives, size)
        row = {
            "height": size[0], "width": size[1],
            "auc": round(auc(dp, dn), 4),
            "positives_under_0.2": round(float((dp < 0.2).mean()), 4),
            "negatives_under_0.2": round(float((dn < 0.2).mean()), 4),
            "median_positive_distance": round(float(np.median(dp)), 4),
            "median_negative_distance": round(float(np.median(dn)), 4),
            "ms_per_crop": round(float(np.median(times)), 3),
        }
        report["sizes"].append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
