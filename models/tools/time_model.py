#!/usr/bin/env python3
"""Median latency of an ONNX model under Python onnxruntime (CPU, graph optimisation ALL).

Usage: time_model.py MODEL.onnx [--threads 2] [--batch 1] [--runs 50]
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--runs", type=int, default=50)
args = ap.parse_args()

rng = np.random.default_rng(0)
sessions = []
for path in args.models:
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Interleaved sessions must not spin: an idle pool's spinning threads steal the other's cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [args.batch if not isinstance(d, int) else d for d in inp.shape]
    x = rng.normal(size=shape).astype(np.float32)
    for _ in range(5):
        sess.run(None, {inp.name: x})
    sessions.append((path, sess, inp.name, x, []))
# Interleave models so drift on a noisy machine hits them alike.
for _ in range(args.runs):
    for path, sess, name, x, times in sessions:
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
for path, _, _, x, times in sessions:
    print(f"{path}: batch {x.shape[0]}, {args.threads} threads: median {statistics.median(times):.2f} ms (n={len(times)})")
