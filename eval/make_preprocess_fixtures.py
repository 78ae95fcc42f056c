#!/usr/bin/env python3
"""Makes tests/fixtures/preprocess: JPEG frames of odd sizes from several encoders and subsamplings,
and what OpenCV makes of them (the pixels Ultralytics' predict feeds a model): `cv2.imread`'s
decoded pixels and `cv2.resize(..., INTER_LINEAR)` at the sizes Ultralytics' LetterBox resizes to,
and the whole letterboxed image of Ultralytics' `LetterBox` (resize and 114 borders; `auto=False`
as for a fixed export, `auto=True` with stride 32 as predict letterboxes a dynamic one), each
recorded as the SHA-256 of its RGB8 bytes. `tests/e2e/preprocess_parity.rs` checks linesight's
decoder and letterbox against them byte for byte.

    python eval/make_preprocess_fixtures.py --out tests/fixtures/preprocess

Needs the venv of models/tools/requirements-yolo.txt (opencv-python, Pillow). The frames are this
project's own synthetic conveyor images (tests/fixtures/ultralytics/*.png), resized and re-encoded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.augment import LetterBox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "tests", "fixtures", "ultralytics")

# (name, source png, size, encoder, options)
FRAMES = [
    ("q90-420-500x333.jpg", "square.png", (500, 333), "cv2", {"quality": 90}),
    ("q85-420-1280x720.jpg", "large.png", (1280, 720), "cv2", {"quality": 85}),
    ("q92-422-241x599.jpg", "tall.png", (241, 599), "pil", {"quality": 92, "subsampling": 1}),
    ("q95-444-333x500.jpg", "wide.png", (333, 500), "pil", {"quality": 95, "subsampling": 0}),
    ("q80-420-progressive-640x480.jpg", "wide.png", (640, 480), "pil", {"quality": 80, "progressive": True}),
    ("q88-gray-97x61.jpg", "square.png", (97, 61), "cv2-gray", {"quality": 88}),
    ("q75-420-restart-1023x767.jpg", "large.png", (1023, 767), "cv2", {"quality": 75, "restart": 4}),
]

# Model input sizes (width, height) of fixed exports: square, landscape, portrait, small.
TARGETS = [(640, 640), (320, 256), (384, 224), (256, 320), (160, 160)]


def letterbox_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """Ultralytics LetterBox's `new_unpad` (auto=False, scaleup=True)."""
    tw, th = target
    r = min(th / height, tw / width)
    return max(round(width * r), 1), max(round(height * r), 1)


def encode(image_bgr: np.ndarray, encoder: str, options: dict) -> bytes:
    if encoder == "cv2":
        params = [cv2.IMWRITE_JPEG_QUALITY, options["quality"]]
        if "restart" in options:
            params += [cv2.IMWRITE_JPEG_RST_INTERVAL, options["restart"]]
        return cv2.imencode(".jpg", image_bgr, params)[1].tobytes()
    if encoder == "cv2-gray":
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        return cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, options["quality"]])[1].tobytes()
    out = io.BytesIO()
    Image.fromarray(image_bgr[..., ::-1]).save(out, "JPEG", **options)
    return out.getvalue()


def sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "preprocess"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    frames = []
    for name, source, size, encoder, options in FRAMES:
        image = cv2.resize(cv2.imread(os.path.join(SOURCES, source)), size, interpolation=cv2.INTER_AREA)
        path = os.path.join(args.out, name)
        with open(path, "wb") as f:
            f.write(encode(image, encoder, options))
        decoded = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]
        height, width = decoded.shape[:2]
        letterboxes = []
        for target in TARGETS:
            resized_size = letterbox_size(width, height, target)
            resized = decoded if resized_size == (width, height) else cv2.resize(decoded, resized_size, interpolation=cv2.INTER_LINEAR)
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            full = LetterBox((target[1], target[0]), auto=False)(image=bgr)[..., ::-1]
            stride = LetterBox((target[1], target[0]), auto=True, stride=32)(image=bgr)[..., ::-1]
            letterboxes.append(
                {
                    "target": list(target),
                    "resized": list(resized_size),
                    "rgb_sha256": sha256(resized),
                    "letterboxed_sha256": sha256(full),
                    "stride32": {"size": [stride.shape[1], stride.shape[0]], "rgb_sha256": sha256(stride)},
                }
            )
        frames.append(
            {"file": name, "width": width, "height": height, "encoder": encoder, "options": options,
             "rgb_sha256": sha256(decoded), "letterbox": letterboxes}
        )
    reference = {
        "opencv": cv2.__version__,
        "made_by": "eval/make_preprocess_fixtures.py",
        "frames": frames,
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
