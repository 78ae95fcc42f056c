#!/usr/bin/env python3
"""Seeded generator of conveyor-belt scenes as a line camera sees them, for training and testing
YOLO detectors: five part classes (bolt, nut, washer, bracket, cap) in varied pose, scale, colour
and material, on textured belts under lighting gradients, with shadows, motion blur, occlusion by
the belt's side guides and by other parts, and unlabelled distractors (scraps, tape, stains).

Two products:
  dataset  an Ultralytics YOLO dataset (images/{train,val,test}, labels/..., data.yaml); `test` is
           the held-out split, drawn from its own seed range and never used for training or model
           selection.
  video    an MP4 of parts riding the belt past the camera, with per-frame ground truth
           (frame, track id, class, box, visible fraction) as JSON lines, for counting and tracking.

Every image and every video is a pure function of its seed. Usage:
  conveyor_synth.py dataset --out DIR [--size 320] [--train 2000] [--val 300] [--test 300]
  conveyor_synth.py video --out DIR [--seed 9001] [--frames 600] [--size 640x360]
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES = ["bolt", "nut", "washer", "bracket", "cap"]
# Seed ranges per split, so that no split can share a scene with another.
SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000}

MATERIALS = {
    # base BGR colour, colour jitter, specular strength
    "steel": ((165, 165, 160), 25, 0.8),
    "zinc": ((190, 185, 170), 20, 0.9),
    "brass": ((60, 160, 200), 25, 0.7),
    "black": ((40, 40, 42), 12, 0.4),
    "blue_plastic": ((170, 90, 30), 30, 0.3),
    "red_plastic": ((40, 40, 180), 30, 0.3),
    "white_plastic": ((215, 215, 210), 15, 0.25),
}
# Which materials each class comes in.
CLASS_MATERIALS = {
    "bolt": ["steel", "zinc", "black", "brass"],
    "nut": ["steel", "zinc", "brass", "black"],
    "washer": ["steel", "zinc", "brass", "black"],
    "bracket": ["steel", "zinc", "black", "blue_plastic"],
    "cap": ["red_plastic", "blue_plastic", "white_plastic", "black"],
}


@dataclass
class Sprite:
    """One part drawn on its own canvas: colour, alpha mask, class."""

    image: np.ndarray  # H×W×3 float32, 0..255
    alpha: np.ndarray  # H×W float32, 0..1
    class_id: int


def polygon(points, cx, cy, angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[cx + x * c - y * s, cy + x * s + y * c] for x, y in points], np.float32)


def regular(n, r, phase=0.0):
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def shade(rng, mask, material, light_angle):
    """Colours a part mask with its material: a directional gradient, a specular band, grain."""
    base, jitter, spec = MATERIALS[material]
    h, w = mask.shape
    colour = np.array(base, np.float32) + rng.uniform(-jitter, jitter, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = (xx / max(w, 1) - 0.5) * math.cos(light_angle) + (yy / max(h, 1) - 0.5) * math.sin(light_angle)
    gain = 1.0 + 0.45 * direction
    img = colour[None, None, :] * gain[..., None]
    # A soft specular streak across the part.
    band = np.exp(-(((direction - rng.uniform(-0.2, 0.2)) / 0.08) ** 2)) * 90 * spec
    img += band[..., None]
    img += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    # Darker edges: the part's rim turns away from the light.
    edge = cv2.GaussianBlur(mask, (0, 0), 1.5)
    img *= (0.55 + 0.45 * np.clip(edge * 1.6 - 0.3, 0, 1))[..., None]
    return np.clip(img, 0, 255)


def draw_part(rng, class_name, scale):
    """A sprite of one part, rotated, on a canvas just large enough."""
    size = int(scale * 2.4) + 8
    cx = cy = size / 2
    mask = np.zeros((size, size), np.uint8)
    holes = np.zeros_like(mask)
    detail = np.zeros_like(mask)
    angle = rng.uniform(0, 2 * math.pi)
    if class_name == "bolt":
        length, width = scale * rng.uniform(1.6, 2.2), scale * rng.uniform(0.28, 0.4)
        shaft = polygon([(-length / 2, -width / 2), (length / 2, -width / 2), (length / 2, width / 2), (-length / 2, width / 2)], cx, cy, angle)
        cv2.fillPoly(mask, [shaft.astype(np.int32)], 255)
        head = polygon([(x - length / 2, y) for x, y in regular(6, width * 1.2)], cx, cy, angle)
        cv2.fillPoly(mask, [head.astype(np.int32)], 255)
        # Thread: thin lines across the far half of the shaft.
        for t in np.linspace(0.0, length / 2 - 2, max(3, int(length / 6))):
            a = polygon([(t, -width / 2), (t, width / 2)], cx, cy, angle).astype(np.int32)
            cv2.line(detail, tuple(a[0]), tuple(a[1]), 255, 1)
    elif class_name == "nut":
        r = scale * rng.uniform(0.55, 0.75)
        cv2.fillPoly(mask, [polygon(regular(6, r), cx, cy, angle).astype(np.int32)], 255)
        cv2.circle(holes, (int(cx), int(cy)), int(r * rng.uniform(0.38, 0.5)), 255, -1)
        cv2.circle(detail, (int(cx), int(cy)), int(r * 0.75), 255, 1)
    elif class_name == "washer":
        r = scale * rng.uniform(0.55, 0.8)
        cv2.circle(mask, (int(cx), int(cy)), int(r), 255, -1)
        cv2.circle(holes, (int(cx), int(cy)), int(r * rng.uniform(0.35, 0.55)), 255, -1)
    elif class_name == "bracket":
        a, b, t = scale * rng.uniform(1.2, 1.7), scale * rng.uniform(0.9, 1.4), scale * rng.uniform(0.3, 0.45)
        shape = [(-a / 2, -b / 2), (a / 2, -b / 2), (a / 2, -b / 2 + t), (-a / 2 + t, -b / 2 + t), (-a / 2 + t, b / 2), (-a / 2, b / 2)]
        cv2.fillPoly(mask, [polygon(shape, cx, cy, angle).astype(np.int32)], 255)
        for hx, hy in [(a / 4, -b / 2 + t / 2), (-a / 2 + t / 2, b / 4)]:
            p = polygon([(hx, hy)], cx, cy, angle)[0]
            cv2.circle(holes, (int(p[0]), int(p[1])), max(1, int(t * 0.25)), 255, -1)
    elif class_name == "cap":
        r = scale * rng.uniform(0.5, 0.75)
        if rng.random() < 0.5:
            cv2.circle(mask, (int(cx), int(cy)), int(r), 255, -1)
        else:
            rect = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.7, 1.0)), math.degrees(angle))
            box = cv2.boxPoints(rect).astype(np.int32)
            cv2.fillPoly(mask, [box], 255)
            cv2.polylines(mask, [box], True, 255, max(1, int(r * 0.3)), lineType=cv2.LINE_AA)
        cv2.circle(detail, (int(cx), int(cy)), int(r * 0.7), 255, max(1, int(r * 0.08)))
        for k in range(8):  # knurled rim
            p = polygon([(r * 0.85, 0)], cx, cy, angle + k * math.pi / 4)[0]
            cv2.circle(detail, (int(p[0]), int(p[1])), 1, 255, -1)
    mask = cv2.bitwise_and(mask, cv2.bitwise_not(holes))
    maskf = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.6)
    material = CLASS_MATERIALS[class_name][rng.integers(len(CLASS_MATERIALS[class_name]))]
    img = shade(rng, maskf, material, rng.uniform(0, 2 * math.pi))
    img *= (1 - 0.35 * (detail.astype(np.float32) / 255))[..., None]
    ys, xs = np.nonzero(maskf > 0.05)
    if len(xs) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Sprite(img[y0:y1, x0:x1].copy(), maskf[y0:y1, x0:x1].copy(), CLASSES.index(class_name))


def belt(rng, h, w, offset=0.0, style=None):
    """A belt surface: base tone, fine grain, lengthwise weave, cross seams (moved by `offset`)."""
    style = style or belt_style(rng)
    tone = style["tone"]
    grain = np.random.default_rng(style["seed"]).normal(0, style["grain"], (h, w * 2)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 0.8)
    shift = int(offset) % w
    img = np.full((h, w, 3), tone, np.float32) + grain[:, shift:shift + w, None]
    weave = (np.sin(np.arange(h) * 2 * math.pi / style["weave_period"]) * style["weave"]).astype(np.float32)
    img += weave[:, None, None]
    for x in range(-shift % style["seam_period"], w, style["seam_period"]):
        cv2.line(img, (x, 0), (x, h), tuple(float(tone[i]) - 18 for i in range(3)), 2)
    return img


def belt_style(rng):
    tone = np.array([rng.uniform(30, 110)] * 3, np.float32) + rng.uniform(-8, 8, 3)
    if rng.random() < 0.25:  # green or blue PVC belts
        tone += np.array([20, 25, -10] if rng.random() < 0.5 else [35, -5, -15], np.float32)
    return {
        "tone": tone,
        "seed": int(rng.integers(1 << 30)),
        "grain": rng.uniform(3, 12),
        "weave": rng.uniform(0, 6),
        "weave_period": rng.uniform(3, 9),
        "seam_period": int(rng.integers(120, 400)),
    }


def lighting(rng, h, w):
    """A multiplicative gradient: the lamp is off-centre and falls off across the belt."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h
    d = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) / math.hypot(w, h)
    return (rng.uniform(0.75, 1.25) * (1.0 - rng.uniform(0.2, 0.6) * d)).astype(np.float32)


def composite(img, sprite, x, y, shadow, occluder=None):
    """Pastes a sprite at top-left (x, y) with a soft drop shadow; returns its visible alpha in the
    whole image (before later parts or guides cover it)."""
    h, w = img.shape[:2]
    sh, sw = sprite.alpha.shape
    full = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + sw), min(h, y + sh)
    if x1 <= x0 or y1 <= y0:
        return full
    sa = sprite.alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    si = sprite.image[y0 - y:y1 - y, x0 - x:x1 - x]
    if shadow is not None:
        dx, dy, blur, depth = shadow
        sh_mask = np.zeros((h, w), np.float32)
        sx0, sy0 = x0 + dx, y0 + dy
        sx1, sy1 = min(w, x1 + dx), min(h, y1 + dy)
        if sx1 > max(0, sx0) and sy1 > max(0, sy0):
            sh_mask[max(0, sy0):sy1, max(0, sx0):sx1] = sa[max(0, -sy0):max(0, -sy0) + sy1 - max(0, sy0), max(0, -sx0):max(0, -sx0) + sx1 - max(0, sx0)]
        sh_mask = cv2.GaussianBlur(sh_mask, (0, 0), blur)
        img *= (1 - depth * sh_mask)[..., None]
    region = img[y0:y1, x0:x1]
    region[:] = region * (1 - sa[..., None]) + si * sa[..., None]
    full[y0:y1, x0:x1] = sa
    return full


def distractor(rng, img):
    """Unlabelled clutter: a scrap of tape, a stain, a wire offcut or a label."""
    h, w = img.shape[:2]
    kind = rng.integers(4)
    cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
    if kind == 0:  # tape
        box = cv2.boxPoints(((cx, cy), (rng.uniform(15, 50), rng.uniform(6, 14)), rng.uniform(0, 180))).astype(np.int32)
        cv2.fillPoly(img, [box], tuple(float(v) for v in rng.uniform(120, 230, 3)))
    elif kind == 1:  # stain
        overlay = np.zeros((h, w), np.float32)
        cv2.ellipse(overlay, (cx, cy), (int(rng.uniform(8, 30)), int(rng.uniform(5, 20))), rng.uniform(0, 180), 0, 360, 1.0, -1)
        overlay = cv2.GaussianBlur(overlay, (0, 0), 4)
        img *= (1 - 0.35 * overlay)[..., None]
    elif kind == 2:  # wire offcut
        pts = np.cumsum(rng.normal(0, 6, (6, 2)), axis=0) + [cx, cy]
        cv2.polylines(img, [pts.astype(np.int32)], False, tuple(float(v) for v in rng.uniform(40, 200, 3)), int(rng.integers(1, 3)))
    else:  # paper label
        cv2.rectangle(img, (cx, cy), (cx + int(rng.uniform(10, 25)), cy + int(rng.uniform(8, 18))), (225, 230, 230), -1)
        cv2.line(img, (cx + 2, cy + 4), (cx + 10, cy + 4), (60, 60, 60), 1)


def guides(rng, h, w):
    """The belt's side guides: rails along the top and bottom edges, sometimes a cross bar."""
    mask = np.zeros((h, w), np.float32)
    top, bottom = int(rng.uniform(0, 0.12) * h), int(rng.uniform(0, 0.12) * h)
    mask[:top] = 1
    if bottom:
        mask[h - bottom:] = 1
    if rng.random() < 0.25:
        x = int(rng.uniform(0.2, 0.8) * w)
        cv2.rectangle(mask, (x, 0), (x + int(rng.uniform(6, 16)), int(rng.uniform(0.2, 0.45) * h)), 1, -1)
    return mask, rng.uniform(90, 200)


def finish(rng, img, light, blur_px):
    """Lamp, motion blur along the belt, sensor noise, JPEG-like softness."""
    img = img * light[..., None]
    if blur_px >= 2:
        k = np.zeros((1, blur_px), np.float32)
        k[:] = 1.0 / blur_px
        img = cv2.filter2D(img, -1, k)
    img += rng.normal(0, rng.uniform(1, 5), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def visible_box(alpha, cover):
    """The box of what is still visible of a part, and the share of its in-frame area that guides
    and later parts leave visible. A part cut by the frame edge is labelled by its in-frame piece,
    as truncated objects are in COCO and MOT ground truth."""
    vis = alpha * (1 - cover)
    total = float(alpha.sum())
    if total <= 0:
        return None, 0.0
    ys, xs = np.nonzero(vis > 0.3)
    if len(xs) == 0:
        return None, 0.0
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), float(vis.sum()) / total


def scene(seed, size):
    """One still image and its labels: (image, [(class_id, x1, y1, x2, y2)])."""
    rng = np.random.default_rng(seed)
    h = w = size
    img = belt(rng, h, w)
    for _ in range(rng.integers(0, 4)):
        distractor(rng, img)
    shadow = (int(rng.integers(-4, 5)), int(rng.integers(1, 6)), rng.uniform(1.5, 4), rng.uniform(0.2, 0.55))
    alphas, classes = [], []
    for _ in range(rng.integers(1, 9)):
        name = CLASSES[rng.integers(len(CLASSES))]
        sprite = draw_part(rng, name, rng.uniform(0.04, 0.13) * size)
        if sprite is None:
            continue
        sh, sw = sprite.alpha.shape
        x = int(rng.uniform(-sw * 0.3, w - sw * 0.7))
        y = int(rng.uniform(-sh * 0.3, h - sh * 0.7))
        alpha = composite(img, sprite, x, y, shadow)
        # Parts pasted later cover earlier ones.
        alphas = [a * (1 - alpha) for a in alphas]
        alphas.append(alpha)
        classes.append(sprite.class_id)
    guide, tone = guides(rng, h, w)
    img = img * (1 - guide[..., None]) + tone * guide[..., None]
    img = finish(rng, img, lighting(rng, h, w), int(rng.choice([0, 0, 0, 2, 3, 5, 8])))
    labels = []
    for alpha, class_id in zip(alphas, classes):
        box, share = visible_box(alpha, guide)
        # A part mostly hidden (under a guide, another part or the frame edge) is not labelled.
        if box is not None and share >= 0.35 and box[2] - box[0] >= 3 and box[3] - box[1] >= 3:
            labels.append((class_id, *box))
    return img, labels


def write_dataset(out, size, counts):
    out = Path(out)
    for split, n in counts.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed = SPLIT_SEEDS[split] + i
            img, labels = scene(seed, size)
            stem = f"{split}_{seed:07d}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.png"), img)
            with open(out / "labels" / split / f"{stem}.txt", "w") as f:
                for c, x1, y1, x2, y2 in labels:
                    f.write(f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    (out / "data.yaml").write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}\n")


def write_video(out, seed, frames, width, height, fps=30):
    """Parts enter at the left, ride the belt to the right at the belt's speed (with a little
    wobble) and leave; ground truth per frame with stable identities."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    style = belt_style(rng)
    light = lighting(rng, height, width)
    guide, tone = guides(rng, height, width)
    shadow = (2, 3, 2.5, 0.4)
    speed = rng.uniform(4, 7)  # px per frame
    parts, next_id, next_spawn = [], 1, 0
    writer = cv2.VideoWriter(str(out / "conveyor.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    truth = open(out / "ground_truth.jsonl", "w")
    for f in range(frames):
        if f >= next_spawn:
            name = CLASSES[rng.integers(len(CLASSES))]
            sprite = draw_part(rng, name, rng.uniform(0.05, 0.1) * height)
            if sprite is not None:
                sh, sw = sprite.alpha.shape
                y = rng.uniform(0.12 * height, 0.88 * height - sh)
                parts.append({"id": next_id, "sprite": sprite, "x": -float(sw), "y": y, "wobble": rng.uniform(0, 6.28)})
                next_id += 1
            next_spawn = f + int(rng.integers(8, 30))
        img = belt(rng, height, width, offset=-f * speed, style=style)
        alphas = []
        for p in parts:
            p["x"] += speed
            y = p["y"] + 1.5 * math.sin(p["wobble"] + f * 0.05)
            alpha = composite(img, p["sprite"], int(round(p["x"])), int(round(y)), shadow)
            alphas = [a * (1 - alpha) for a in alphas]
            alphas.append(alpha)
        img = img * (1 - guide[..., None]) + tone * guide[..., None]
        frame_rng = np.random.default_rng(seed * 100_003 + f)
        img = finish(frame_rng, img, light, 3)
        writer.write(img)
        objects = []
        for p, alpha in zip(parts, alphas):
            box, share = visible_box(alpha, guide)
            if box is not None:
                objects.append({"id": p["id"], "class": CLASSES[p["sprite"].class_id], "box": box, "visible": round(share, 3)})
        truth.write(json.dumps({"frame": f, "objects": objects}) + "\n")
        parts = [p for p in parts if p["x"] < width]
    writer.release()
    truth.close()
    (out / "video.json").write_text(json.dumps({"seed": seed, "frames": frames, "width": width, "height": height, "fps": fps, "speed_px_per_frame": speed, "parts": next_id - 1, "classes": CLASSES}, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--size", type=int, default=320)
    d.add_argument("--train", type=int, default=2000)
    d.add_argument("--val", type=int, default=300)
    d.add_argument("--test", type=int, default=300)
    v = sub.add_parser("video")
    v.add_argument("--out", required=True)
    v.add_argument("--seed", type=int, default=9001)
    v.add_argument("--frames", type=int, default=600)
    v.add_argument("--size", default="640x360")
    args = parser.parse_args()
    if args.command == "dataset":
        write_dataset(args.out, args.size, {"train": args.train, "val": args.val, "test": args.test})
    else:
        w, h = (int(x) for x in args.size.split("x"))
        write_video(args.out, args.seed, args.frames, w, h)


if __name__ == "__main__":
    main()
