#!/usr/bin/env python3
"""Evaluates the `el-defect` pipeline on real EL cells: PyPI `elpv-dataset` 1.0.0.post1 (Deitsch et
al., 2,624 cells of 300x300, defect probability 0, 1/3, 2/3 or 1; licence CC BY-NC-SA 4.0: evaluated
here, never trained on, never committed).

It starts `linesight serve` (the release binary), sends every selected cell over gRPC as its PNG
file, and scores the cell verdicts against the labels (defective = probability >= 0.5):
  * the verdict the server gave, by the pipeline's configured rule;
  * a sweep of the rule's two knobs (instance score, defect area fraction), to choose the default.
Only odd rows (0-based, of labels.csv) are used unless --rows even is given; the even rows are kept
for acceptance and must not be used to tune anything.

    .venv/bin/python eval/elpv_eval.py --binary target/release/linesight --out eval/results
    (needs eval/requirements-el.txt in that venv)

The server judges by the model's own [cell_rule] unless --min-score, --min-area, --classes,
--count-instances or --min-defect-probability set the pipeline's cell_rule. For a model with a cell
head, the report also sweeps its defect probability, alone and beside the best instance rule.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import elpv_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFECTIVE_AT = 0.5
# Instances down to this score come back, so the sweep can try any rule at or above it.
SWEEP_FLOOR = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: str, port: int, model_dir: str, model: str, rule: dict, threads: int):
    """`rule`: the pipeline's cell_rule keys to set; the rest come from the model's [cell_rule]."""
    rule_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in rule.items())
    config = f"""
[server]
listen = "127.0.0.1:{port}"
default_budget_ms = 60000

[engine]
intra_threads = {threads}

[pipelines.detect]
kind = "detect"
model = "nanodet-g"

[pipelines.el-defect]
kind = "segment"
model = "{model}"
score_threshold = {SWEEP_FLOOR}

[pipelines.el-defect.cell_rule]
{rule_lines}
"""
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "linesight.toml")
    with open(path, "w") as f:
        f.write(config)
    return subprocess.Popen(
        [binary, "serve", "--config", path, "--model-dir", model_dir],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def connect(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)])
    deadline = time.time() + 120
    while True:
        try:
            grpc.channel_ready_future(channel).result(timeout=2)
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            service = pool.FindServiceByName("linesight.v1.Inspection")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    method = service.methods_by_name["Inspect"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/linesight.v1.Inspection/Inspect",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return channel, request_class, call


def inspect_when_ready(call, request):
    """Inspect, retrying while the server answers UNAVAILABLE (its models still loading)."""
    deadline = time.time() + 300
    while True:
        try:
            return call(request, timeout=120)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                raise
            time.sleep(0.5)


def mask_of(detection, width: int, height: int) -> np.ndarray:
    m = detection.mask
    local = np.concatenate([np.full(run, i % 2, np.uint8) for i, run in enumerate(m.runs)] or [np.zeros(0, np.uint8)])
    out = np.zeros((height, width), bool)
    out[m.top : m.top + m.height, m.left : m.left + m.width] = local.reshape(m.height, m.width).astype(bool)
    return out


def scores_of(truth: list[bool], predicted: list[bool]) -> dict:
    t, p = np.array(truth), np.array(predicted)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    recall = tp / max(1, tp + fn)
    precision = tp / max(1, tp + fp)
    return {
        "cells": len(truth),
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "accuracy": round((tp + tn) / max(1, len(truth)), 4),
        "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/linesight"))
    ap.add_argument("--rows", choices=["odd", "even"], default="odd")
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--model", default="el-maskrcnn")
    ap.add_argument("--min-score", type=float, help="cell rule: instance score (default: the model's)")
    ap.add_argument("--min-area", type=float, help="cell rule: defect area fraction (default: the model's)")
    ap.add_argument("--classes", help="cell rule: counted classes, comma-separated (default: the model's)")
    ap.add_argument("--count-instances", choices=["true", "false"], help="cell rule (default: the model's)")
    ap.add_argument("--min-defect-probability", type=float, help="cell rule (default: the model's)")
    ap.add_argument("--row-list", help="only these rows (a JSON list of row numbers, all of the --rows parity)")
    ap.add_argument("--name", help="report name (default: elpv_<rows>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="at most this many cells (0 = all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "eval/results"))
    args = ap.parse_args()

    data = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
    rows = [line.split() for line in open(os.path.join(data, "labels.csv")) if line.strip()]
    parity = 1 if args.rows == "odd" else 0
    selected = [(i, r) for i, r in enumerate(rows) if i % 2 == parity]
    if args.row_list:
        wanted = set(json.load(open(args.row_list)))
        if any(r % 2 != parity for r in wanted):
            raise SystemExit(f"{args.row_list}: lists rows that are not {args.rows}")
        selected = [(i, r) for i, r in selected if i in wanted]
    if args.limit:
        selected = selected[: args.limit]

    port = free_port()
    rule = {}
    if args.min_score is not None:
        rule["min_score"] = args.min_score
    if args.min_area is not None:
        rule["min_area_fraction"] = args.min_area
    if args.classes is not None:
        rule["classes"] = [c for c in args.classes.split(",") if c]
    if args.count_instances is not None:
        rule["count_instances"] = args.count_instances == "true"
    if args.min_defect_probability is not None:
        rule["min_defect_probability"] = args.min_defect_probability
    server = start_server(args.binary, port, args.model_dir, args.model, rule, args.threads)
    try:
        channel, request_class, call = connect(port)
        cells = []
        started = time.time()
        for k, (index, (path, probability, cell_type)) in enumerate(selected):
            with open(os.path.join(data, path), "rb") as f:
                png = f.read()
            request = request_class(camera_id="elpv", sequence=index, pipeline="el-defect", budget_ms=60000)
            request.image.data = png
            response = inspect_when_ready(call, request)
            masks = [(d.score, d.class_name, mask_of(d, response.image_width, response.image_height)) for d in response.detections]
            cells.append(
                {
                    "row": index,
                    "type": cell_type,
                    "probability": float(probability),
                    "server_defective": response.cell.verdict == 2,
                    "defect_probability": response.cell.defect_probability if response.cell.HasField("defect_probability") else None,
                    "instances": masks,
                    "total_us": response.timings.total_us,
                    "inference_us": response.timings.inference_us,
                }
            )
            if (k + 1) % 200 == 0:
                print(f"{k + 1}/{len(selected)} cells, {time.time() - started:.0f} s", file=sys.stderr)
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    truth = [c["probability"] >= DEFECTIVE_AT for c in cells]

    def verdicts(min_score: float, min_area: float, classes: tuple[str, ...]) -> list[bool]:
        out = []
        for c in cells:
            kept = [m for s, name, m in c["instances"] if s >= min_score and (not classes or name in classes)]
            if not kept:
                out.append(False)
                continue
            union = np.logical_or.reduce(kept)
            out.append(union.mean() >= min_area)
        return out

    sweep = []
    class_sets = [(), ("crack", "inactive"), ("crack",), ("inactive",), ("finger_interruption",)]
    for counted in class_sets:
        for min_score in [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]:
            for min_area in [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]:
                s = scores_of(truth, verdicts(min_score, min_area, counted))
                sweep.append({"classes": list(counted), "min_score": min_score, "min_area_fraction": min_area, **s})
    best_f1 = max(sweep, key=lambda s: (s["f1"], s["accuracy"]))
    best_accuracy = max(sweep, key=lambda s: (s["accuracy"], s["f1"]))
    # The cell head's probability alone, and beside the best-F1 instance rule.
    probability_sweep = []
    if all(c["defect_probability"] is not None for c in cells):
        best_rule = verdicts(best_f1["min_score"], best_f1["min_area_fraction"], tuple(best_f1["classes"]))
        for threshold in [round(0.05 * k, 2) for k in range(1, 20)] + [0.97, 0.98, 0.99, 0.995, 0.998, 0.999]:
            by_head = [c["defect_probability"] >= threshold for c in cells]
            probability_sweep.append({"min_defect_probability": threshold, "count_instances": False, **scores_of(truth, by_head)})
            either = [h or r for h, r in zip(by_head, best_rule)]
            probability_sweep.append(
                {"min_defect_probability": threshold, "count_instances": True, "instance_rule": "best F1 above", **scores_of(truth, either)}
            )

    server_verdicts = [c["server_defective"] for c in cells]
    by_type = {
        t: scores_of([x for x, c in zip(truth, cells) if c["type"] == t], [v for v, c in zip(server_verdicts, cells) if c["type"] == t])
        for t in sorted({c["type"] for c in cells})
    }
    by_probability = {}
    for level in sorted({c["probability"] for c in cells}):
        flagged = [v for v, c in zip(server_verdicts, cells) if c["probability"] == level]
        by_probability[f"{level:.3f}"] = {"cells": len(flagged), "flagged_defective": round(sum(flagged) / max(1, len(flagged)), 4)}
    latency = sorted(c["total_us"] for c in cells)
    report = {
        "dataset": "PyPI elpv-dataset 1.0.0.post1 (CC BY-NC-SA 4.0), evaluation only",
        "rows": f"{args.rows} rows of labels.csv (0-based)",
        "defective_when_probability_at_least": DEFECTIVE_AT,
        "model": args.model,
        "server_rule": rule or "the model's [cell_rule]",
        "server_verdicts": scores_of(truth, server_verdicts),
        "server_verdicts_by_type": by_type,
        "flagged_by_label_probability": by_probability,
        "rule_sweep_best_f1": best_f1,
        "rule_sweep_best_accuracy": best_accuracy,
        "rule_sweep": sweep,
        "defect_probability_sweep": probability_sweep,
        "server_total_ms_median": round(latency[len(latency) // 2] / 1000, 2) if latency else None,
    }
    os.makedirs(args.out, exist_ok=True)
    name = args.name or f"elpv_{args.rows}"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    summary = {k: v for k, v in report.items() if k not in ("rule_sweep", "defect_probability_sweep")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
