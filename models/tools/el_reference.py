"""Reference mask paste in numpy: the same rule as the service's `segment::paste_mask`, written
independently, so tests can compare the two.

Each image pixel (x, y) the box touches (floor(x1)..ceil(x2), clipped to the image) takes the mask's
bilinear value at its centre mapped into the mask: u = ((x + 0.5 - x1) / (x2 - x1)) * m - 0.5 (and v
likewise), clamped to [0, m - 1]; it is object when that value is at least the threshold.
"""

from __future__ import annotations

import math

import numpy as np


def paste_region(box, width: int, height: int):
    x1, y1, x2, y2 = (float(v) for v in box)
    left = int(min(max(math.floor(x1), 0), width))
    top = int(min(max(math.floor(y1), 0), height))
    right = int(min(max(math.ceil(x2), 0), width))
    bottom = int(min(max(math.ceil(y2), 0), height))
    return left, top, max(right - left, 0), max(bottom - top, 0)


def paste_local(mask: np.ndarray, box, width: int, height: int, threshold: float):
    """(left, top, pixels uint8 [h, w]) over the box's region."""
    m = mask.shape[0]
    left, top, w, h = paste_region(box, width, height)
    x1, y1, x2, y2 = (np.float32(v) for v in box)
    bw = max(x2 - x1, np.float32(1e-6))
    bh = max(y2 - y1, np.float32(1e-6))
    xs = np.arange(left, left + w, dtype=np.float32)
    ys = np.arange(top, top + h, dtype=np.float32)
    u = np.clip(((xs + np.float32(0.5) - x1) / bw) * np.float32(m) - np.float32(0.5), 0, m - 1).astype(np.float32)
    v = np.clip(((ys + np.float32(0.5) - y1) / bh) * np.float32(m) - np.float32(0.5), 0, m - 1).astype(np.float32)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[None, :], (v - v0)[:, None]
    i0, j0 = u0.astype(int), v0.astype(int)
    i1, j1 = np.minimum(i0 + 1, m - 1), np.minimum(j0 + 1, m - 1)
    mk = mask.astype(np.float32)
    top_row = mk[j0][:, i0] * (1 - fu) + mk[j0][:, i1] * fu
    bottom_row = mk[j1][:, i0] * (1 - fu) + mk[j1][:, i1] * fu
    p = top_row * (1 - fv) + bottom_row * fv
    return left, top, (p >= threshold).astype(np.uint8)


def paste_mask(mask: np.ndarray, box, width: int, height: int, threshold: float) -> np.ndarray:
    """The pasted mask as a bool image [height, width]."""
    out = np.zeros((height, width), bool)
    left, top, local = paste_local(mask, box, width, height, threshold)
    out[top : top + local.shape[0], left : left + local.shape[1]] = local.astype(bool)
    return out
