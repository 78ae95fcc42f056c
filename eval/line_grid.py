#!/usr/bin/env python3
"""Chooses the counting-line defaults (handover_frames, duplicate_overlap, hysteresis_px) on tune
videos and reports them on held-out ones.

Each conveyor video (models/tools/conveyor_synth.py video, one seed each) is streamed once per
condition through a running `linesight serve -c docs/line-demo/linesight.toml` at its own 30 fps,
as a camera would, and the tracks every answer carried are recorded (eval/line_demo.py --dump).
Conditions: `quiet` (nothing else running), `bursty` (two busy processes switched on and off
every 1.5 s, as on a shared machine) and `saturated` (two busy processes all along: the server has
about half the machine). Tracking does not depend on the analytics settings, so every
grid point is replayed on the recorded tracks (examples/replay_counts.rs), and each crossing is
matched to the ground-truth part under its box:

  missed     parts whose visible centre crossed the line but were not counted
  duplicate  counts beyond the first of one part
  false      counts of no part (a box on no part, or a part that never crossed)
  class      parts counted in the wrong class (the detector's doing; reported, not tuned)

Defaults are chosen on the tune seeds by missed + duplicate + false, summed over the conditions;
ties go to fewer per-class count errors, then to the settings nearest the previous defaults
(handover_frames 10, duplicate_overlap 0, hysteresis_px 2).

  eval/line_grid.py --server 127.0.0.1:50051 --videos /tmp/videos --out eval/results/line-grid
"""

import argparse
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["bolt", "nut", "washer", "bracket", "cap"]
LINE_X = 160.0
GRID = {
    "handover_frames": [0, 5, 10, 20],
    "duplicate_overlap": [0.0, 0.6, 0.7, 0.8, 0.9],
    "hysteresis_px": [0.0, 2.0, 4.0],
}


def busy(stop, bursty):
    while not stop.is_set():
        if not bursty or int(time.time() / 1.5) % 2 == 0:
            for _ in range(20000):
                pass
        else:
            time.sleep(0.05)


def record(args, seed, condition, dump):
    video = Path(args.videos) / str(seed)
    if not (video / "conveyor.mp4").exists():
        subprocess.run([sys.executable, ROOT / "models/tools/conveyor_synth.py", "video", "--out", video, "--seed", str(seed), "--frames", "600", "--size", "320x320"], check=True)
    stop, workers = multiprocessing.Event(), []
    if condition in ("bursty", "saturated"):
        workers = [multiprocessing.Process(target=busy, args=(stop, condition == "bursty")) for _ in range(2)]
        for w in workers:
            w.start()
    try:
        with tempfile.TemporaryDirectory() as out:
            run = subprocess.run(
                [sys.executable, ROOT / "eval/line_demo.py", "--server", args.server, "--video", video, "--out", out,
                 "--camera-id", f"grid-{condition}-{seed}-{int(time.time())}", "--annotate-every", "0", "--dump", dump],
                capture_output=True, text=True)
            summary = json.loads((Path(out) / "summary.json").read_text())
    finally:
        stop.set()
        for w in workers:
            w.join()
    return {k: summary[k] for k in ("errors", "verdicts", "server_ms", "frames_per_s")} | {"exit": run.returncode}


def iou(a, b):
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth(video):
    """Parts whose visible centre was left of the line and later right of it, by class; every
    frame's ground-truth boxes."""
    frames, left, crossed, classes = {}, set(), set(), {}
    with open(Path(video) / "ground_truth.jsonl") as f:
        for row in map(json.loads, f):
            frames[row["frame"]] = row["objects"]
            for o in row["objects"]:
                classes[o["id"]] = o["class"]
                if (o["box"][0] + o["box"][2]) / 2 < LINE_X:
                    left.add(o["id"])
                elif o["id"] in left:
                    crossed.add(o["id"])
    return {p: classes[p] for p in crossed}, frames


def replay(binary, dump, settings):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        for key, value in settings.items():
            f.write(f"{key} = {value}\n")
        f.write(f'[[lines]]\nname = "exit"\nfrom = [{LINE_X}, 0.0]\nto = [{LINE_X}, 320.0]\nforward = [1.0, 0.0]\n')
    try:
        out = subprocess.run([binary, "--tracks", dump, "--analytics", f.name, "--classes", ",".join(CLASSES)], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return [json.loads(line) for line in out.splitlines()]


def score(crossings, boxes, parts, gt_frames):
    counted = defaultdict(list)
    false = 0
    for c in crossings:
        if c["direction"] != "forward":
            false += 1
            continue
        box = boxes[c["frame"]][c["id"]]
        best = max(((iou(box, o["box"]), o["id"]) for o in gt_frames.get(c["frame"], [])), default=(0.0, None))
        if best[0] >= 0.3 and best[1] in parts:
            counted[best[1]].append(c["class"])
        else:
            false += 1
    truth_classes = Counter(parts.values())
    got_classes = Counter(c["class"] for c in crossings if c["direction"] == "forward")
    return {
        "truth": len(parts),
        "counted": len(crossings),
        "missed": sum(1 for p in parts if p not in counted),
        "duplicate": sum(len(v) - 1 for v in counted.values()),
        "false": false,
        "class": sum(1 for p, v in counted.items() if v[0] != parts[p]),
        "per_class_error": sum(abs(got_classes[c] - truth_classes[c]) for c in CLASSES),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--videos", required=True, help="one folder per seed; missing ones are generated")
    parser.add_argument("--tune", default="8001,8002,8003,8004")
    parser.add_argument("--heldout", default="9001,9002,9003,9004")
    parser.add_argument("--conditions", default="quiet,bursty,saturated")
    parser.add_argument("--replay", default=str(ROOT / "target/release/examples/replay_counts"))
    parser.add_argument("--dumps", help="keep the recorded tracks here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="replay dumps already in --dumps instead of recording")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    splits = {"tune": [int(s) for s in args.tune.split(",")], "heldout": [int(s) for s in args.heldout.split(",")]}
    conditions = args.conditions.split(",")
    dumps = Path(args.dumps or tempfile.mkdtemp())
    dumps.mkdir(parents=True, exist_ok=True)
    runs = {}
    for split, seeds in splits.items():
        for seed, condition in itertools.product(seeds, conditions):
            dump = dumps / f"{condition}-{seed}.jsonl"
            stats = dumps / f"{condition}-{seed}.stats.json"
            if not (args.reuse and dump.exists()):
                stats.write_text(json.dumps(record(args, seed, condition, dump)))
                print(f"recorded {split} {condition} {seed}: {stats.read_text()}", file=sys.stderr)
            runs[f"{condition}-{seed}"] = json.loads(stats.read_text()) if stats.exists() else None

    recorded = {}
    for split, seeds in splits.items():
        for seed, condition in itertools.product(seeds, conditions):
            rows = [json.loads(line) for line in open(dumps / f"{condition}-{seed}.jsonl")]
            boxes = {r["frame"]: {t["id"]: t["box"] for t in r["tracks"]} for r in rows}
            parts, gt_frames = truth(Path(args.videos) / str(seed))
            recorded[(split, seed, condition)] = (dumps / f"{condition}-{seed}.jsonl", boxes, parts, gt_frames)

    keys = list(GRID)
    table = []
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(keys, values))
        sums = {split: Counter() for split in splits}
        per_video = {}
        for (split, seed, condition), (dump, boxes, parts, gt_frames) in recorded.items():
            s = score(replay(args.replay, str(dump), settings), boxes, parts, gt_frames)
            sums[split].update(s)
            per_video[f"{split}/{condition}/{seed}"] = s
        table.append({"settings": settings, "tune": dict(sums["tune"]), "heldout": dict(sums["heldout"]), "videos": per_video})

    def errors(row, split):
        s = row[split]
        return s["missed"] + s["duplicate"] + s["false"]

    before = {"handover_frames": 10, "duplicate_overlap": 0.0, "hysteresis_px": 2.0}

    def distance(settings):
        return sum(abs(settings[k] - before[k]) / (max(GRID[k]) - min(GRID[k])) for k in GRID)

    best = min(table, key=lambda r: (errors(r, "tune"), r["tune"]["per_class_error"], distance(r["settings"])))
    previous = next(r for r in table if r["settings"] == before)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "grid": GRID,
        "splits": splits,
        "conditions": conditions,
        "chosen_on_tune": best["settings"],
        "chosen": best,
        "before": previous,
        "recordings": runs,
        "table": [{k: r[k] for k in ("settings", "tune", "heldout")} for r in table],
        "command": " ".join(sys.argv),
    }
    (out / "line_grid.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| settings | tune: missed / dup / false (class) | held-out: missed / dup / false (class) |", "|---|---|---|"]
    for r in sorted(table, key=lambda r: errors(r, "tune"))[:12] + [previous]:
        t, h = r["tune"], r["heldout"]
        name = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {name} | {t['missed']} / {t['duplicate']} / {t['false']} ({t['class']}) | {h['missed']} / {h['duplicate']} / {h['false']} ({h['class']}) |")
    (out / "line_grid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("chosen on tune:", best["settings"])


if __name__ == "__main__":
    main()
