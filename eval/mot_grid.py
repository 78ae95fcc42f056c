#!/usr/bin/env python3
"""`linesight mot` against today's trackers on a grid of simulated detections from real ground truth.

Ground truth: TUD-Campus (71 frames) and TUD-Stadtmitte (179 frames), shipped in PyPI motmetrics
1.4.0 (only its data files are read). Every tracker gets the same detections, made from the ground
truth by the noise model below, one numpy `default_rng(seed)` per (sequence, variant, seed).

Noise model, one axis per key of a variant (`BASE` holds the values a variant does not change):
- `pos`, `size`: centre moves by N(0, pos·w), N(0, pos·h); width and height scale by exp(N(0, size)).
- `miss`: each box is dropped with probability miss + occ_miss·occlusion, where occlusion is the
  share of the box covered by ground-truth boxes whose bottom edge is lower (nearer the camera).
- `gap`: occlusion gaps. Each visible identity starts, with probability `gap` per frame, a run of
  5–15 frames in which it is not detected at all.
- `fp`: Poisson(fp) false positives per frame, sizes drawn from the sequence's boxes, positions
  uniform over the 640×480 image.
- `score`: "difficulty" (a detector's behaviour): 0.95 − 0.6·occlusion − 1.5·(box error) + N(0, 0.08),
  clipped to [0.05, 0.99], so low-score boxes are mostly real but occluded or badly placed objects;
  false positives score U(0.05, 0.6). "uniform": every box U(0.5, 1), score says nothing.
- `app`: each identity has a random unit vector in R^128; a detection's embedding is that vector plus
  N(0, app²/128·I), renormalised (app 0.4: cosine distance ≈ 0.08 to its own identity, ≈ 1 to others);
  None: no embeddings at all. False positives carry random vectors.
- `swap`: with probability swap (doubled when occluded by more than 30 %) a detection carries another
  identity's vector: the occluder's when there is one (its pixels fill the crop), else a random one.

The grid is split in two. Defaults are chosen on `TUNE` variants with seeds 0–9 only. `HELD_OUT`
variants (axes and levels never looked at while tuning: occlusion gaps, the worst embedding noise and
swaps, the worst jitter, an uninformative score, a combination of the hard axes) and fresh seeds
100–109 for every variant make the report.

Trackers: linesight (`linesight mot`, any number of `--linesight NAME=key=value,...` settings; the
defaults when only the binary is given), deep-sort-realtime 1.3.2 (the paper's parameters, our
embeddings), and PyPI `trackers` 2.6.1's ByteTrack, OC-SORT and BoT-SORT with their default parameters
(motion only: their re-identification needs weights that cannot be had here; BoT-SORT's camera
motion compensation needs frames, so it is off). Every tracker reports the boxes its API reports.

Scores: TrackEval 1.3.0 (the MOTChallenge reference code) CLEAR (MOTA, IDSW), Identity (IDF1) and
HOTA, all at its defaults (IoU 0.5 for CLEAR and Identity; HOTA averaged over α 0.05–0.95).

Usage:
  mot_grid.py --binary target/release/linesight [--linesight NAME=k=v,k=v ...] [--split tune|report]
              [--seeds 10] [--peers | --peer-results JSON] [--out eval/results/mot_grid]
Requirements: eval/requirements-grid.txt.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np

DIM = 128
IMAGE_W, IMAGE_H = 640, 480
SEQUENCES = ["TUD-Campus", "TUD-Stadtmitte"]
BASE = dict(pos=0.03, size=0.05, miss=0.05, occ_miss=0.3, gap=0.0, fp=0.5, score="difficulty", app=0.4, swap=0.02)
TUNE = {
    "clean": dict(pos=0.0, size=0.0, miss=0.0, occ_miss=0.0, fp=0.0, app=0.3, swap=0.0),
    "base": {},
    "jitter-2": dict(pos=0.06, size=0.10),
    "miss-15": dict(miss=0.15),
    "miss-30": dict(miss=0.30),
    "fp-2": dict(fp=2.0),
    "fp-4": dict(fp=4.0),
    "app-0.6": dict(app=0.6),
    "swap-5": dict(swap=0.05),
    "no-appearance": dict(app=None),
}
HELD_OUT = {
    "gap-1": dict(gap=0.01),
    "gap-3": dict(gap=0.03),
    "jitter-3": dict(pos=0.10, size=0.15),
    "app-0.9": dict(app=0.9),
    "swap-10": dict(swap=0.10),
    "score-uniform": dict(score="uniform"),
    "gap-no-appearance": dict(gap=0.02, app=None),
    "hard-mix": dict(gap=0.02, miss=0.10, fp=1.0, app=0.7, swap=0.05),
}
DEEPSORT_PARAMS = dict(max_age=30, n_init=3, max_iou_distance=0.7, max_cosine_distance=0.2, nn_budget=100)
PEERS = ["deep-sort-realtime", "ByteTrack", "OC-SORT", "BoT-SORT"]


def ground_truth(seq):
    """Rows (frame, id, x, y, w, h) of the sequence's ground truth, read from motmetrics' data."""
    spec = importlib.util.find_spec("motmetrics")
    root = Path(spec.submodule_search_locations[0]) / "data" / seq / "gt.txt"
    return np.loadtxt(root, delimiter=",")[:, :6]


def occlusion(boxes):
    """For each (x, y, w, h): the share of it covered by boxes nearer the camera, and the nearest such."""
    n = len(boxes)
    occ, by = np.zeros(n), np.full(n, -1)
    for i in range(n):
        x, y, w, h = boxes[i]
        for j in range(n):
            if i == j or boxes[j][1] + boxes[j][3] <= y + h:
                continue
            xj, yj, wj, hj = boxes[j]
            iw = max(0.0, min(x + w, xj + wj) - max(x, xj))
            ih = max(0.0, min(y + h, yj + hj) - max(y, yj))
            share = iw * ih / (w * h)
            if share > occ[i]:
                occ[i], by[i] = share, j
    return occ, by


def detections(gt, noise, seed):
    """Rows (frame, x, y, w, h, score, embedding | None)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt[:, 1]).astype(int)
    identity = {i: v / np.linalg.norm(v) for i, v in zip(ids, rng.standard_normal((len(ids), DIM)))}
    sizes = gt[:, 4:6]
    gap_left = {i: 0 for i in ids}
    frames = np.unique(gt[:, 0]).astype(int)
    rows = []

    def embedding(source):
        e = identity[source] + rng.normal(0, noise["app"] / np.sqrt(DIM), DIM)
        return e / np.linalg.norm(e)

    for f in range(frames.min(), frames.max() + 1):
        here = gt[gt[:, 0] == f]
        occ, by = occlusion(here[:, 2:6])
        for k, (_, tid, x, y, w, h) in enumerate(here):
            tid = int(tid)
            if gap_left[tid] > 0:
                gap_left[tid] -= 1
                continue
            if noise["gap"] and rng.random() < noise["gap"]:
                gap_left[tid] = int(rng.integers(5, 16)) - 1
                continue
            if rng.random() < noise["miss"] + noise["occ_miss"] * occ[k]:
                continue
            dx, dy = rng.normal(0, 1, 2) * noise["pos"]
            sw, sh = rng.normal(0, 1, 2) * noise["size"]
            w2, h2 = w * np.exp(sw), h * np.exp(sh)
            cx, cy = x + w / 2 + dx * w, y + h / 2 + dy * h
            if noise["score"] == "difficulty":
                error = np.hypot(dx, dy) + abs(sw) + abs(sh)
                score = float(np.clip(0.95 - 0.6 * occ[k] - 1.5 * error + rng.normal(0, 0.08), 0.05, 0.99))
            else:
                score = float(rng.uniform(0.5, 1.0))
            emb = None
            if noise["app"] is not None:
                source = tid
                p_swap = noise["swap"] * (2.0 if occ[k] > 0.3 else 1.0)
                if len(ids) > 1 and rng.random() < p_swap:
                    source = int(here[by[k], 1]) if by[k] >= 0 else int(rng.choice(ids[ids != tid]))
                emb = embedding(source)
            rows.append((f, cx - w2 / 2, cy - h2 / 2, w2, h2, score, emb))
        for _ in range(rng.poisson(noise["fp"])):
            w2, h2 = sizes[rng.integers(len(sizes))]
            x, y = rng.uniform(0, IMAGE_W - w2), rng.uniform(0, IMAGE_H - h2)
            score = float(rng.uniform(0.05, 0.6) if noise["score"] == "difficulty" else rng.uniform(0.5, 1.0))
            emb = None
            if noise["app"] is not None:
                e = rng.standard_normal(DIM)
                emb = e / np.linalg.norm(e)
            rows.append((f, x, y, w2, h2, score, emb))
    return rows, (int(frames.min()), int(frames.max()))


def write_detections(rows, path):
    with open(path, "w") as out:
        for f, x, y, w, h, conf, emb in rows:
            line = f"{f},-1,{x:.3f},{y:.3f},{w:.3f},{h:.3f},{conf:.4f},-1,-1,-1"
            if emb is not None:
                line += "," + ",".join(f"{v:.6f}" for v in emb)
            out.write(line + "\n")


def by_frame(rows, span):
    frames = {f: [] for f in range(span[0], span[1] + 1)}
    for r in rows:
        frames[r[0]].append(r)
    return frames


def run_deep_sort_realtime(rows, span):
    from deep_sort_realtime.deepsort_tracker import DeepSort

    tracker = DeepSort(embedder=None, nms_max_overlap=1.0, **DEEPSORT_PARAMS)
    out = []
    for f, dets in by_frame(rows, span).items():
        raw = [([x, y, w, h], conf, "person") for _, x, y, w, h, conf, _ in dets]
        # Without appearance the peer still needs a vector per detection: a constant one makes every
        # cosine distance 0, leaving its cascade to the Mahalanobis gate alone.
        embeds = [e if e is not None else np.ones(DIM, np.float32) for *_, e in dets]
        for t in tracker.update_tracks(raw, embeds=embeds):
            if t.is_confirmed() and t.time_since_update == 0:
                out.append((f, int(t.track_id), *t.to_ltwh()))
    return out


def run_trackers_peer(name, rows, span):
    import supervision as sv
    import warnings

    from trackers import BoTSORTTracker, ByteTrackTracker, OCSORTTracker

    tracker = {"ByteTrack": lambda: ByteTrackTracker(),
               "OC-SORT": lambda: OCSORTTracker(),
               "BoT-SORT": lambda: BoTSORTTracker(enable_cmc=False)}[name]()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f, dets in by_frame(rows, span).items():
            if dets:
                xyxy = np.array([[x, y, x + w, y + h] for _, x, y, w, h, _, _ in dets], dtype=np.float32)
                conf = np.array([d[5] for d in dets], dtype=np.float32)
            else:
                xyxy, conf = np.empty((0, 4), np.float32), np.empty((0,), np.float32)
            result = tracker.update(sv.Detections(xyxy=xyxy, confidence=conf))
            for box, tid in zip(result.xyxy, result.tracker_id):
                if tid >= 0:
                    out.append((f, int(tid), box[0], box[1], box[2] - box[0], box[3] - box[1]))
    return out


def run_linesight(binary, settings, det_path, out_path):
    args = [binary, "mot", "--detections", det_path, "--out", out_path]
    for s in settings:
        args += ["--tracker", s]
    subprocess.run(args, check=True, capture_output=True)
    tracks = np.loadtxt(out_path, delimiter=",", ndmin=2)
    return [tuple(r[:6]) for r in tracks] if tracks.size else []


def iou_matrix(a, b):
    """IoU of every (x, y, w, h) in a against every one in b."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, float), np.asarray(b, float)
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-12)


def score(gt, tracks, span):
    """TrackEval's CLEAR, Identity and HOTA on one sequence; tracks are rows (frame, id, x, y, w, h)."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    tracks = np.asarray(tracks, float).reshape(-1, 6)
    gt_map = {v: i for i, v in enumerate(np.unique(gt[:, 1]).astype(int))}
    tr_map = {v: i for i, v in enumerate(np.unique(tracks[:, 1]).astype(int))}
    data = dict(gt_ids=[], tracker_ids=[], similarity_scores=[], num_timesteps=span[1] - span[0] + 1,
                num_gt_ids=len(gt_map), num_tracker_ids=len(tr_map), num_gt_dets=len(gt), num_tracker_dets=len(tracks))
    for f in range(span[0], span[1] + 1):
        g, t = gt[gt[:, 0] == f], tracks[tracks[:, 0] == f]
        data["gt_ids"].append(np.array([gt_map[int(i)] for i in g[:, 1]], dtype=int))
        data["tracker_ids"].append(np.array([tr_map[int(i)] for i in t[:, 1]], dtype=int))
        data["similarity_scores"].append(iou_matrix(g[:, 2:6], t[:, 2:6]))
    quiet = {"PRINT_CONFIG": False}
    clear = CLEAR(quiet).eval_sequence(data)
    ident = Identity(quiet).eval_sequence(data)
    hota = HOTA(quiet).eval_sequence(data)
    return {"mota": float(clear["MOTA"]), "idsw": int(clear["IDSW"]), "idf1": float(ident["IDF1"]),
            "hota": float(np.mean(hota["HOTA"])), "deta": float(np.mean(hota["DetA"])),
            "assa": float(np.mean(hota["AssA"]))}


def job(task):
    seq, variant, noise, seed, binary, configs, peers = task
    gt = ground_truth(seq)
    rows, span = detections(gt, noise, seed)
    result = {"sequence": seq, "variant": variant, "seed": seed, "scores": {}}
    with tempfile.TemporaryDirectory() as tmp:
        det = os.path.join(tmp, "det.txt")
        write_detections(rows, det)
        for name, settings in configs.items():
            tracks = run_linesight(binary, settings, det, os.path.join(tmp, f"{name}.txt"))
            result["scores"][name] = score(gt, tracks, span)
    for peer in peers:
        tracks = run_deep_sort_realtime(rows, span) if peer == "deep-sort-realtime" else run_trackers_peer(peer, rows, span)
        result["scores"][peer] = score(gt, tracks, span)
    return result


def paired(rs, a, b, key, scale):
    """Mean of a − b over paired runs and its 95 % confidence half-width, stratified by sequence:
    the mean of the per-sequence means, its variance from the per-sequence variances (the two
    sequences differ in how hard they are, so pooling them would widen the interval)."""
    means, variances, n = [], [], 0
    for seq in dict.fromkeys(r["sequence"] for r in rs):
        d = np.array([(r["scores"][a][key] - r["scores"][b][key]) * scale for r in rs if r["sequence"] == seq])
        means.append(d.mean())
        variances.append(d.var(ddof=1) / len(d) if len(d) > 1 else 0.0)
        n += len(d)
    k = len(means)
    mean = float(np.mean(means))
    se = float(np.sqrt(sum(variances)) / k)
    df = max(n - k, 1)
    t95 = {1: 12.706, 9: 2.262, 18: 2.101, 19: 2.093}.get(df, 1.96 if df > 30 else 2.1)
    return mean, t95 * se


def verdict(diff, half):
    return "ahead" if diff - half > 0 else "behind" if diff + half < 0 else "tied"


def summarize(results, ours, out_md):
    """Per variant: means of every tracker; then ours − each peer, paired over both sequences' seeds."""
    trackers = list(results[0]["scores"])
    peers = [t for t in trackers if t in PEERS]
    variants = list(dict.fromkeys(r["variant"] for r in results))
    lines = ["| split | variant | " + " | ".join(f"{t} MOTA / IDF1 / HOTA / IDSW" for t in trackers) + " |",
             "|---|---|" + "---|" * len(trackers)]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        split = "tune" if v in TUNE else "held-out"
        cells = []
        for t in trackers:
            m = lambda k: 100 * np.mean([r["scores"][t][k] for r in rs])
            sw = sum(r["scores"][t]["idsw"] for r in rs)
            cells.append(f"{m('mota'):.1f} / {m('idf1'):.1f} / {m('hota'):.1f} / {sw}")
        lines.append(f"| {split} | {v} | " + " | ".join(cells) + " |")
    behind = []
    if peers:
        lines += ["", f"Δ = {ours} − peer (points), paired by seed within each sequence, mean over both sequences ± 95 % half-width (stratified by sequence).", "",
                  "| split | variant | " + " | ".join(f"vs {p}: MOTA / IDF1 / HOTA" for p in peers) + " |",
                  "|---|---|" + "---|" * len(peers)]
        for v in variants:
            rs = [r for r in results if r["variant"] == v]
            cells = []
            for p in peers:
                parts = []
                for key in ["mota", "idf1", "hota"]:
                    d, h = paired(rs, ours, p, key, 100)
                    w = verdict(d, h)
                    if w == "behind":
                        behind.append(f"{v} {key.upper()} vs {p} ({d:+.2f} ± {h:.2f})")
                    parts.append(f"{d:+.2f}±{h:.2f} {'**behind**' if w == 'behind' else w}")
                cells.append(" / ".join(parts))
            split = "tune" if v in TUNE else "held-out"
            lines.append(f"| {split} | {v} | " + " | ".join(cells) + " |")
        lines += ["", "Behind: " + ("; ".join(behind) if behind else "none") + "."]
    text = "\n".join(lines) + "\n"
    if out_md:
        Path(out_md).write_text(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--linesight", action="append", default=[], metavar="NAME=k=v,k=v",
                    help="a linesight setting to run; NAME= alone runs the defaults")
    ap.add_argument("--split", choices=["tune", "report"], default="report",
                    help="tune: TUNE variants, seeds 0..; report: every variant, seeds 100..")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--peer-results", metavar="JSON",
                    help="take the peers' scores from an earlier run's JSON (same split and seeds) instead of rerunning them")
    ap.add_argument("--variants", help="comma-separated subset")
    ap.add_argument("--out", help="write NAME.json and NAME.md")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    configs = {}
    for spec in args.linesight or ["linesight="]:
        name, _, rest = spec.partition("=")
        configs[name] = [s for s in rest.split(",") if s]
    variants = dict(TUNE) if args.split == "tune" else {**TUNE, **HELD_OUT}
    if args.variants:
        variants = {k: v for k, v in {**TUNE, **HELD_OUT}.items() if k in args.variants.split(",")}
    first_seed = 0 if args.split == "tune" else 100
    peers = PEERS if args.peers else []
    tasks = []
    for vi, (variant, change) in enumerate(variants.items()):
        noise = {**BASE, **change}
        for seq in SEQUENCES:
            for s in range(args.seeds):
                seed = 100_000 * SEQUENCES.index(seq) + 1000 * (list({**TUNE, **HELD_OUT}).index(variant)) + first_seed + s
                tasks.append((seq, variant, noise, seed, args.binary, configs, peers))
    with Pool(args.jobs) as pool:
        results = []
        for i, r in enumerate(pool.imap(job, tasks)):
            results.append(r)
            if (i + 1) % 50 == 0 or i + 1 == len(tasks):
                print(f"{i + 1}/{len(tasks)} runs", file=sys.stderr, flush=True)
    if args.peer_results:
        earlier = {(r["sequence"], r["variant"], r["seed"]): r["scores"]
                   for r in json.loads(Path(args.peer_results).read_text())["runs"]}
        for r in results:
            scores = earlier[(r["sequence"], r["variant"], r["seed"])]
            r["scores"].update({p: scores[p] for p in PEERS if p in scores})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(
            {"base": BASE, "tune": TUNE, "held_out": HELD_OUT, "linesight": configs, "runs": results}, indent=1))
    text = summarize(results, next(iter(configs)), f"{args.out}.md" if args.out else None)
    print(text)


if __name__ == "__main__":
    main()
