#!/usr/bin/env python3
"""The int8 embedder against the f32 one it was quantised from, at the `track` pipeline's 256x128.

Same crops, pairs and AUC as eval/embedder_crop_size.py (NanoDet-g person boxes of vtest.avi frames
0-299; positives along unambiguous IoU chains 10 frames apart, negatives two people of one frame),
plus the embedding error: the cosine distance between a crop's f32 and int8 embeddings. Cost: median
of 15 runs of a batch of 10 crops at 2 threads.

Usage: embedder_int8.py --frames DIR [--int8 models/mobilenetv2-reid-int8/model.onnx]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from embedder_crop_size import auc, measure, person_crops_and_pairs  # noqa: E402

SIZE = (256, 128)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", required=True)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--detector", default="models/nanodet-g")
    ap.add_argument("--f32", default="models/mobilenetv2-reid/model.onnx")
    ap.add_argument("--int8", default="models/mobilenetv2-reid-int8/model.onnx")
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    models = {name: ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
              for name, path in (("f32", args.f32), ("int8", args.int8))}
    frames, crops, _, positives, negatives = person_crops_and_pairs(args.frames, args.count, args.gap, args.detector)
    keys = sorted(crops)
    report = {"frames": frames, "crops": len(keys), "positives": len(positives), "negatives": len(negatives),
              "gap": args.gap, "height": SIZE[0], "width": SIZE[1], "models": {}}
    feats = {}
    for name, session in models.items():
        feats[name], dp, dn, times = measure(session, crops, keys, positives, negatives, SIZE)
        report["models"][name] = {
            "auc": round(auc(dp, dn), 4),
            "positives_under_0.2": round(float((dp < 0.2).mean()), 4),
            "negatives_under_0.2": round(float((dn < 0.2).mean()), 4),
            "ms_per_crop": round(float(np.median(times)), 3),
        }
    error = 1.0 - np.sum(feats["f32"] * feats["int8"], axis=1)
    report["embedding_error_cosine_distance"] = {
        "median": round(float(np.median(error)), 5),
        "p99": round(float(np.quantile(error, 0.99)), 5),
        "max": round(float(error.max()), 5),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
