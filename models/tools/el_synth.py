"""Synthetic electroluminescence (EL) images of solar cells, with instance masks of their defects.

One call of `make_cell(seed)` gives a 300x300 grayscale cell (uint8) and its defect instances
(class id and boolean mask). The same seed always gives the same cell.

What a cell is made of, modelled on real EL images of 60-cell modules (156 mm cells, 3 busbars):
  * base luminance: each cell is brighter or darker as a whole (current mismatch), with a smooth
    gradient across it and darker edges (the emitter's lower lifetime at the cut edges);
  * texture: monocrystalline cells are smooth with faint concentric swirl rings and cut (dark)
    corners of a pseudo-square wafer; polycrystalline cells show grains of different brightness,
    dark grain boundaries and clusters of dislocations (dark speckle), which are *not* defects;
  * metallisation: 2-4 dark busbars (usually horizontal) and faint fingers across them;
  * a dark frame of the neighbouring cells' gap at the border;
  * capture: optical blur, sensor noise, gamma and contrast.

Defect classes (ids as the model sees them; 0 is background):
  1 crack               thin dark line(s), often branched, mostly straight segments;
  2 inactive            an electrically separated region (dark, sometimes black), usually cut off by a
                        crack or at a cell edge/corner;
  3 finger_interruption short dark bars along a finger between two busbars (broken fingers leave the
                        area behind them poorly collected).

Run as a script to write a montage and a folder of cells with their masks:
    python models/tools/el_synth.py --out /tmp/el_synth --count 16 [--version 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 300
CLASSES = ["crack", "inactive", "finger_interruption"]


@dataclass
class Instance:
    class_id: int  # 1-based, see CLASSES
    mask: np.ndarray  # bool, SIZE x SIZE


def _smooth_noise(rng: np.random.Generator, cells: int, sigma: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] over the image."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    big = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    if sigma > 0:
        big = cv2.GaussianBlur(big, (0, 0), sigma)
    return big / (np.abs(big).max() + 1e-6)


def _poly_texture(rng: np.random.Generator) -> np.ndarray:
    """Multiplicative texture of a polycrystalline cell: grains, grain boundaries, dislocations."""
    n = int(rng.integers(40, 140))
    pts = rng.uniform(-20, SIZE + 20, size=(n, 2)).astype(np.float32)
    # Grains: nearest seed (Voronoi), each with its own brightness; stretched like cast silicon.
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    stretch = rng.uniform(0.6, 1.6)
    d = (xx[..., None] - pts[:, 0]) ** 2 + ((yy[..., None] - pts[:, 1]) * stretch) ** 2
    idx = np.argmin(d, axis=2)
    grain = rng.uniform(0.9, 1.04, size=n).astype(np.float32)[idx]
    # Boundaries: where the nearest seed changes.
    edge = np.zeros((SIZE, SIZE), np.float32)
    edge[:, 1:] += idx[:, 1:] != idx[:, :-1]
    edge[1:, :] += idx[1:, :] != idx[:-1, :]
    edge = cv2.GaussianBlur(np.minimum(edge, 1.0), (0, 0), 0.7)
    tex = grain * (1.0 - rng.uniform(0.02, 0.12) * edge)
    # Dislocation clusters: dark speckle in patches.
    speck = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(int(rng.integers(6, 24))):
        cx, cy = rng.uniform(0, SIZE, 2)
        r = rng.uniform(8, 45)
        k = int(rng.integers(20, 120))
        xs = np.clip(rng.normal(cx, r, k), 0, SIZE - 1).astype(int)
        ys = np.clip(rng.normal(cy, r * rng.uniform(0.4, 1.0), k), 0, SIZE - 1).astype(int)
        speck[ys, xs] += rng.uniform(0.3, 1.0, k)
    speck = cv2.GaussianBlur(speck, (0, 0), rng.uniform(0.8, 2.0))
    tex *= 1.0 - np.clip(speck * rng.uniform(0.8, 2.5), 0, 0.6)
    # Fine grain noise.
    tex *= 1.0 + rng.uniform(0.03, 0.08) * _smooth_noise(rng, 100, 0.6)
    return tex


def _mono_texture(rng: np.random.Generator) -> np.ndarray:
    """Multiplicative texture of a monocrystalline cell: smooth, faint swirl rings."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = rng.uniform(100, 200, 2)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    rings = np.sin(r / rng.uniform(6, 20) + rng.uniform(0, 6.28)) * rng.uniform(0.0, 0.015)
    return 1.0 + rings + 0.03 * _smooth_noise(rng, 8, 4.0)


def _clutter(rng: np.random.Generator, cell_type: str, version: int = 2) -> np.ndarray:
    """What real cells show that is *not* a defect: dark dots, short faint strokes, faint finger
    lines, and (polycrystalline) dark mottled patches of low-lifetime material."""
    out = np.ones((SIZE, SIZE), np.float32)
    m = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(int(rng.integers(0, 25 if cell_type == "poly" else 8))):
        cv2.circle(m, (int(rng.uniform(0, SIZE)), int(rng.uniform(0, SIZE))), int(rng.integers(1, 3)), float(rng.uniform(0.2, 0.7)), -1)
    for _ in range(int(rng.integers(0, 12 if cell_type == "poly" else 4))):
        x0, y0 = rng.uniform(0, SIZE, 2)
        a = rng.uniform(0, math.pi)
        length = rng.uniform(3, 12)
        x1, y1 = x0 + length * math.cos(a), y0 + length * math.sin(a)
        cv2.line(m, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0.1, 0.35)), 1)
    out *= 1.0 - cv2.GaussianBlur(m, (0, 0), 0.7)
    if rng.random() < 0.4:  # a few fingers show faintly over their whole length
        for _ in range(int(rng.integers(1, 4))):
            x = int(rng.uniform(5, SIZE - 5))
            out[:, x] *= 1.0 - rng.uniform(0.03, 0.1)
    if cell_type == "poly":
        patches = _smooth_noise(rng, int(rng.integers(12, 40)), 1.0)
        level = rng.uniform(0.3, 0.7)
        dark = np.clip((patches - level) / (1 - level), 0, 1)
        detail = 0.5 + 0.5 * _smooth_noise(rng, 120, 0.5)
        out *= 1.0 - rng.uniform(0.15, 0.45) * dark * detail
        if version >= 3:  # real cast cells: large cloudy dark clusters of dislocations, finely structured
            for _ in range(int(rng.integers(1, 4))):
                patches = _smooth_noise(rng, int(rng.integers(6, 30)), 1.0)
                level = rng.uniform(0.0, 0.5)
                dark = np.clip((patches - level) / (1 - level) * 3, 0, 1)
                detail = np.clip(0.2 + 0.8 * _smooth_noise(rng, int(rng.integers(80, 150)), 0.5), 0, 1)
                out *= 1.0 - rng.uniform(0.3, 0.7) * dark * detail
    return out


def _line_mask(points: np.ndarray, thickness: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.polylines(m, [np.round(points).astype(np.int32)], False, 1, thickness, lineType=cv2.LINE_8)
    return m.astype(bool)


def _crack_path(rng: np.random.Generator, start: np.ndarray, angle: float, length: float) -> np.ndarray:
    pts = [start]
    step = 6.0
    for _ in range(int(length / step)):
        angle += rng.normal(0, 0.12)
        nxt = pts[-1] + step * np.array([math.cos(angle), math.sin(angle)])
        pts.append(nxt)
        if not (-5 <= nxt[0] <= SIZE + 5 and -5 <= nxt[1] <= SIZE + 5):
            break
    return np.array(pts, np.float32)


def _add_crack(rng, img, busbar_dark, version: int = 2):
    """A crack: a main path plus a few branches. Returns its mask and, sometimes, a region it cuts off."""
    edge_start = rng.random() < 0.5
    if edge_start:
        side = int(rng.integers(4))
        t = rng.uniform(20, SIZE - 20)
        start = np.array([[t, 0], [SIZE - 1, t], [t, SIZE - 1], [0, t]][side], np.float32)
        angle = [math.pi / 2, math.pi, -math.pi / 2, 0.0][side] + rng.normal(0, 0.6)
    else:
        start = rng.uniform(40, SIZE - 40, 2).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(40, 380)
    main = _crack_path(rng, start, angle, length)
    if not edge_start and rng.random() < 0.6:  # grow both ways from an inner start
        back = _crack_path(rng, start, angle + math.pi, rng.uniform(20, 200))
        main = np.concatenate([back[::-1], main[1:]])
    paths = [main]
    for _ in range(int(rng.integers(0, 4))):
        at = main[int(rng.integers(len(main)))]
        paths.append(_crack_path(rng, at, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.3), rng.uniform(15, 120)))
    faint = version >= 3 and rng.random() < 0.5
    if faint:  # version 3: micro-cracks, 1 px and faint, more often branched
        for _ in range(int(rng.integers(0, 4))):
            at = main[int(rng.integers(len(main)))]
            paths.append(_crack_path(rng, at, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.3), rng.uniform(15, 80)))
    thickness = 1 if faint else int(rng.choice([1, 1, 2, 2, 3]))
    line = np.zeros((SIZE, SIZE), bool)
    for p in paths:
        line |= _line_mask(p, thickness)
    depth = rng.uniform(0.12, 0.35) if faint else rng.uniform(0.35, 0.8)
    shade = cv2.GaussianBlur(line.astype(np.float32), (0, 0), rng.uniform(0.5, 1.0))
    shade = shade / (shade.max() + 1e-6)
    img *= 1.0 - depth * shade
    # The mask covers the line and a one-pixel margin: a crack is annotated as a thin region.
    mask = cv2.dilate(line.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return mask, main


def _blob(rng, cx, cy, rx, ry) -> np.ndarray:
    """A smooth irregular region (radius modulated by low harmonics)."""
    angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    radius = np.ones_like(angles)
    for k in range(2, 6):
        radius += rng.uniform(0, 0.25 / k * 2) * np.cos(k * angles + rng.uniform(0, 6.28))
    pts = np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], 1)
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _add_inactive(rng, img, version: int = 2):
    """A dark region: a corner or edge piece cut off by a crack, or a blob (a separated island)."""
    kind = rng.choice(["corner", "edge", "blob"], p=[0.35, 0.3, 0.35])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if kind == "corner":
        cx, cy = [(0, 0), (SIZE, 0), (0, SIZE), (SIZE, SIZE)][int(rng.integers(4))]
        a, b = rng.uniform(40, 200, 2)
        # Region beyond a wavy line from (cx +- a, cy) to (cx, cy +- b).
        wobble = 6 * _smooth_noise(rng, 6, 3.0)
        region = (np.abs(xx - cx) / a + np.abs(yy - cy) / b + wobble / max(a, b)) < 1.0
        boundary = region
    elif kind == "edge":
        side = int(rng.integers(4))
        depth = rng.uniform(20, 120)
        start, end = sorted(rng.uniform(0, SIZE, 2))
        if end - start < 60:
            start, end = max(0, start - 40), min(SIZE, end + 40)
        wobble = 8 * _smooth_noise(rng, 6, 3.0)
        coord_in = [yy, SIZE - 1 - xx, SIZE - 1 - yy, xx][side]
        coord_along = [xx, yy, xx, yy][side]
        region = (coord_in + wobble < depth) & (coord_along >= start) & (coord_along <= end)
        boundary = region
    else:
        cx, cy = rng.uniform(40, SIZE - 40, 2)
        rx, ry = rng.uniform(12, 70, 2)
        region = _blob(rng, cx, cy, rx, ry)
        boundary = region
    if boundary.sum() < 80:
        return None
    darkness = rng.uniform(0.35, 0.92)
    soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), rng.uniform(0.7, 3.0))
    inner = 1.0 - darkness * (0.8 + 0.2 * _smooth_noise(rng, 10, 2.0))
    if version >= 3 and rng.random() < 0.6:  # faint, graded, sometimes with a blurred edge
        darkness = rng.uniform(0.12, 0.5)
        soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), rng.uniform(0.7, 6.0))
        inner = 1.0 - darkness * _graded(rng, region) * (0.85 + 0.15 * _smooth_noise(rng, 10, 2.0))
    img *= 1.0 - soft * (1.0 - np.clip(inner, 0.02, 1.0))
    # Its boundary usually shows the crack that separated it.
    if rng.random() < 0.6:
        contour = region.astype(np.uint8) - cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8))
        img *= 1.0 - 0.4 * cv2.GaussianBlur(contour.astype(np.float32), (0, 0), 0.6)
    return region


def _add_finger_interruptions(rng, img, busbars, vertical_bars):
    """Short dark bars along fingers (perpendicular to the busbars), between two busbars."""
    out = []
    edges = [0] + list(busbars) + [SIZE]
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(len(edges) - 1))
        lo, hi = edges[k] + 6, edges[k + 1] - 6
        if hi - lo < 15:
            continue
        length = rng.uniform(8, min(45, hi - lo))
        along0 = rng.uniform(lo, hi - length)
        across = rng.uniform(15, SIZE - 15)
        width = rng.uniform(2.5, 6)
        m = np.zeros((SIZE, SIZE), np.uint8)
        if vertical_bars:  # busbars vertical: fingers horizontal
            cv2.rectangle(m, (int(along0), int(across - width / 2)), (int(along0 + length), int(across + width / 2)), 1, -1)
        else:
            cv2.rectangle(m, (int(across - width / 2), int(along0)), (int(across + width / 2), int(along0 + length)), 1, -1)
        region = m.astype(bool)
        soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), rng.uniform(0.6, 1.5))
        img *= 1.0 - rng.uniform(0.25, 0.55) * soft
        out.append(region)
    return out


def _add_finger_failures(rng, img, busbars, finger_pitch):
    """Version 3: what real mono cells show most often — thin (1-3 px), faint (8-40 %) dark streaks
    along fingers, from a few pixels up to the whole gap between two busbars, alone or in clusters
    on neighbouring fingers. One instance per streak; the mask is the streak dilated by 1 px."""
    out = []
    edges = [0] + list(busbars) + [SIZE]
    k = int(rng.integers(len(edges) - 1))
    lo, hi = edges[k] + 4, edges[k + 1] - 4
    if hi - lo < 12:
        return out
    count = int(rng.choice([1, 1, 2, 3, 4, 6, 8]))
    spacing = finger_pitch * int(rng.integers(1, 4))
    x = rng.uniform(15, SIZE - 15 - spacing * count)
    depth = rng.uniform(0.08, 0.4)
    for _ in range(count):
        length = rng.uniform(10, hi - lo) if rng.random() < 0.6 else hi - lo
        y0 = lo if rng.random() < 0.4 else rng.uniform(lo, hi - length)
        y1 = y0 + length
        line = np.zeros((SIZE, SIZE), np.uint8)
        cv2.line(line, (int(round(x)), int(y0)), (int(round(x + rng.normal(0, 1))), int(y1)), 1, int(rng.choice([1, 1, 2, 2, 3])))
        shade = cv2.GaussianBlur(line.astype(np.float32), (0, 0), rng.uniform(0.5, 1.2))
        shade /= shade.max() + 1e-6
        halo = cv2.GaussianBlur(line.astype(np.float32), (0, 0), rng.uniform(2, 5))
        halo /= halo.max() + 1e-6
        d = depth * rng.uniform(0.7, 1.3)
        img *= 1.0 - np.clip(d * shade + 0.3 * d * halo, 0, 0.9)
        mask = cv2.dilate(line, np.ones((3, 3), np.uint8)).astype(bool)
        if mask.sum() >= 12:
            out.append(mask)
        x += spacing + rng.normal(0, 0.5)
    return out


def _graded(rng, region: np.ndarray) -> np.ndarray:
    """Version 3: a ramp in [0.3, 1] across a region along a random direction, so a crack-isolated
    area is darker on one side (real inactive areas are rarely uniformly dark)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    inside = t[region]
    lo, hi = float(inside.min()), float(inside.max())
    return np.clip(0.3 + 0.7 * (t - lo) / max(1.0, hi - lo), 0.3, 1.0)


def make_cell(seed: int, defect_probability: float = 0.75, cell_type: str | None = None, version: int = 2):
    """Returns (image uint8 SIZE x SIZE, list[Instance], info dict).

    `version` 1 is the generator the model's first training phase drew from; version 2 (the
    default; the test fixtures are drawn from it) adds what real cells showed the first model to
    mistake for defects: dashed busbars (solder pads), larger cut corners with the backsheet beyond
    them, and clutter that is not a defect (dark dots, short faint strokes, faint fingers, dark
    mottled patches on poly cells). Version 3 adds what real cells showed the version-2 model to
    miss or mistake: thin faint streaks along fingers (clustered finger failures), faint 1-px
    micro-cracks, faint graded inactive areas, large cloudy dislocation clusters on poly cells, and
    a wider range of exposure, vignetting, blur and noise. Version 4 keeps version 3's cells and
    changes only their capture, fitted to statistics measured on real cells (ELPV odd rows: mean
    level, contrast, high-pass and Laplacian energy): brighter exposure, less pixel noise, applied
    before the optical blur, and a resample through a lower resolution, as a cell cut from a module
    image and resized is smooth at the pixel level. Earlier versions draw the same cells as before.
    """
    rng = np.random.default_rng(seed)
    cell_type = cell_type or ("mono" if rng.random() < 0.45 else "poly")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    img = np.ones((SIZE, SIZE), np.float32)
    img *= _mono_texture(rng) if cell_type == "mono" else _poly_texture(rng)
    # Edge darkening and a smooth gradient.
    dist = np.minimum.reduce([xx, yy, SIZE - 1 - xx, SIZE - 1 - yy])
    img *= 1.0 - rng.uniform(0.05, 0.3) * np.exp(-dist / rng.uniform(4, 20))
    img *= 1.0 + rng.uniform(0.0, 0.12) * _smooth_noise(rng, 3, 10.0)

    # Metallisation: busbars and fingers (horizontal busbars, vertical fingers; transposed later).
    n_bus = int(rng.choice([2, 3, 3, 3, 4]))
    pitch = SIZE / n_bus
    busbars = [int(pitch * (i + 0.5) + rng.normal(0, 2)) for i in range(n_bus)]
    finger_pitch = rng.uniform(4.5, 9)
    fingers = 1.0 - rng.uniform(0.0, 0.06) * (np.cos(2 * math.pi * xx / finger_pitch) > 0.85)
    img *= fingers
    bus_w = rng.uniform(2.5, 6)
    bus_dark = rng.uniform(0.35, 0.7)
    # Busbars are solid, or (version 2) dashed where the ribbon is soldered to pads (darker, wider
    # dashes).
    dashed = version >= 2 and rng.random() < 0.5
    if version >= 2:
        dash_pitch = SIZE / int(rng.integers(5, 9))
        dash_len = dash_pitch * rng.uniform(0.45, 0.75)
        dash_phase = rng.uniform(0, dash_pitch)
        pads = ((xx + dash_phase) % dash_pitch) < dash_len
    for y in busbars:
        band = np.exp(-0.5 * ((yy - y) / (bus_w / 2)) ** 4)
        if dashed:
            wide = np.exp(-0.5 * ((yy - y) / (bus_w * rng.uniform(0.7, 1.1))) ** 4)
            darkness = np.where(pads, bus_dark * rng.uniform(1.0, 1.3) * wide, bus_dark * rng.uniform(0.2, 0.6) * band)
            img *= 1.0 - np.clip(darkness, 0, 0.9)
        else:
            img *= 1.0 - bus_dark * band
    if version >= 2:
        img *= _clutter(rng, cell_type, version)

    instances: list[Instance] = []
    if rng.random() < defect_probability:
        n = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
        for _ in range(n):
            if version >= 3:
                kind = rng.choice([1, 2, 3, 4], p=[0.35, 0.25, 0.1, 0.3])
            else:
                kind = rng.choice([1, 2, 3], p=[0.5, 0.28, 0.22])
            if kind == 1:
                mask, _ = _add_crack(rng, img, bus_dark, version)
                if mask.sum() >= 20:
                    instances.append(Instance(1, mask))
            elif kind == 2:
                mask = _add_inactive(rng, img, version)
                if mask is not None:
                    instances.append(Instance(2, mask))
            elif kind == 4:
                for mask in _add_finger_failures(rng, img, busbars, finger_pitch):
                    instances.append(Instance(3, mask))
            else:
                for mask in _add_finger_interruptions(rng, img, busbars, False):
                    instances.append(Instance(3, mask))

    # Cut corners of a pseudo-square mono wafer, and the gap to the neighbouring cells.
    if version == 1 and cell_type == "mono" and rng.random() < 0.85:
        c = rng.uniform(8, 28)
        corner = (xx + yy < c) | ((SIZE - 1 - xx) + yy < c) | (xx + (SIZE - 1 - yy) < c) | ((SIZE - 1 - xx) + (SIZE - 1 - yy) < c)
        img[corner] *= rng.uniform(0.05, 0.3)
    if version >= 2 and cell_type == "mono" and rng.random() < 0.9:
        c = rng.uniform(10, 45)
        corner = (xx + yy < c) | ((SIZE - 1 - xx) + yy < c) | (xx + (SIZE - 1 - yy) < c) | ((SIZE - 1 - xx) + (SIZE - 1 - yy) < c)
        edge = (np.abs(xx + yy - c) < 1.5) | (np.abs((SIZE - 1 - xx) + yy - c) < 1.5) | (np.abs(xx + (SIZE - 1 - yy) - c) < 1.5) | (np.abs((SIZE - 1 - xx) + (SIZE - 1 - yy) - c) < 1.5)
        # Beyond the wafer's cut corner lies the backsheet: dark, or as bright as the cell.
        img[corner] = img[corner] * 0 + rng.uniform(0.05, 0.9)
        img[edge & ~corner] *= rng.uniform(0.4, 0.8)
    frame = int(rng.integers(0, 5))
    if frame:
        img[:frame] *= 0.3
        img[-frame:] *= 0.3
        img[:, :frame] *= 0.3
        img[:, -frame:] *= 0.3

    # Capture: exposure, blur, gamma, noise.
    if version >= 4:  # as measured on real cells (odd rows): brighter, and smooth at the pixel level
        level = rng.uniform(120, 235)
        r2 = ((xx - rng.uniform(0, SIZE)) ** 2 + (yy - rng.uniform(0, SIZE)) ** 2) / SIZE**2
        img = img * level * (1.0 - rng.uniform(0.0, 0.25) * r2)
        img += rng.normal(0, rng.uniform(0.5, 4.0), img.shape)  # sensor noise, before the optics
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4))
        # A cell is cut from a module image and resized: it passes through a lower resolution.
        side = int(rng.uniform(150, 300))
        img = cv2.resize(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        gamma = rng.uniform(0.7, 1.4)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
        img += rng.normal(0, rng.uniform(0.3, 1.5), img.shape)
    elif version >= 3:  # the wider range of real EL cameras: exposure, vignetting, blur, noise
        level = rng.uniform(80, 235)
        r2 = ((xx - rng.uniform(0, SIZE)) ** 2 + (yy - rng.uniform(0, SIZE)) ** 2) / SIZE**2
        img = img * level * (1.0 - rng.uniform(0.0, 0.25) * r2)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.8))
        gamma = rng.uniform(0.7, 1.4)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
        img += rng.normal(0, rng.uniform(1.0, 9.0), img.shape)
    else:
        level = rng.uniform(70, 215)
        img = img * level
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
        gamma = rng.uniform(0.8, 1.25)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
        img += rng.normal(0, rng.uniform(1.0, 6.0), img.shape)
    out = np.clip(img, 0, 255).astype(np.uint8)

    # Orientation: busbars horizontal most of the time, as in most module scans.
    if rng.random() < 0.15:
        out = np.ascontiguousarray(out.T)
        for inst in instances:
            inst.mask = np.ascontiguousarray(inst.mask.T)
    if rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
        for inst in instances:
            inst.mask = np.ascontiguousarray(inst.mask[:, ::-1])
    if rng.random() < 0.5:
        out = np.ascontiguousarray(out[::-1])
        for inst in instances:
            inst.mask = np.ascontiguousarray(inst.mask[::-1])
    instances = [i for i in instances if i.mask.sum() >= 12]
    return out, instances, {"seed": seed, "cell_type": cell_type, "version": version}


def boxes_of(instances: list[Instance]) -> np.ndarray:
    out = []
    for inst in instances:
        ys, xs = np.nonzero(inst.mask)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(out, np.float32).reshape(-1, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--version", type=int, default=3, help="generator version (see make_cell; 4: version 3 with a capture fitted to real cells)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tiles = []
    for seed in range(args.first_seed, args.first_seed + args.count):
        img, instances, info = make_cell(seed, version=args.version)
        cv2.imwrite(os.path.join(args.out, f"cell{seed:06d}.png"), img)
        meta = {**info, "instances": []}
        for k, inst in enumerate(instances):
            path = f"cell{seed:06d}_mask{k}.png"
            cv2.imwrite(os.path.join(args.out, path), inst.mask.astype(np.uint8) * 255)
            meta["instances"].append({"class": CLASSES[inst.class_id - 1], "mask": path})
        with open(os.path.join(args.out, f"cell{seed:06d}.json"), "w") as f:
            json.dump(meta, f, indent=1)
        overlay = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        colours = {1: (0, 0, 255), 2: (255, 0, 0), 3: (0, 200, 0)}
        for inst in instances:
            contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(overlay, contours, -1, colours[inst.class_id], 1)
        tiles.append(np.concatenate([cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), overlay], 0))
    per_row = 8
    rows = [np.concatenate(tiles[i : i + per_row], 1) for i in range(0, len(tiles) - per_row + 1, per_row)]
    if rows:
        cv2.imwrite(os.path.join(args.out, "montage.png"), np.concatenate(rows, 0))


if __name__ == "__main__":
    main()
