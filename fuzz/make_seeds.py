#!/usr/bin/env python3
"""Writes the seed corpus of both fuzz targets (fuzz/corpus/<target>/seed-*): small real frames in
every encoding, and well-formed and broken InspectRequests. Needs ffmpeg. The fuzzer grows the
corpus from these; the grown corpus is committed too and replayed by tests/fuzz_replay.rs."""

import pathlib
import struct
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent
FRAME = ROOT.parent / "tests/fixtures/vtest/frame_0250.jpg"


def ffmpeg(args, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / f"out{suffix}"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(FRAME), *args, str(out)], check=True)
        return out.read_bytes()


def image_seed(encoding, width, height, crop, data):
    return bytes([encoding]) + struct.pack("<HH", width, height) + bytes(crop) + data


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def request(camera, sequence, pipeline, image, budget_ms=0, annotate=False):
    msg = field(1, 2, camera.encode()) + field(2, 0, sequence) + field(3, 2, pipeline.encode())
    if image is not None:
        msg += field(4, 2, image)
    if budget_ms:
        msg += field(5, 0, budget_ms)
    if annotate:
        msg += field(6, 0, 1)
    return msg


def image_msg(data, encoding, width=0, height=0):
    return field(1, 2, data) + field(2, 0, encoding) + field(3, 0, width) + field(4, 0, height)


def main():
    jpeg = ffmpeg(["-vf", "scale=48:36", "-q:v", "8"], ".jpg")
    png = ffmpeg(["-vf", "scale=24:18"], ".png")
    raw_rgb = ffmpeg(["-vf", "scale=16:12", "-f", "rawvideo", "-pix_fmt", "rgb24"], ".rgb")
    raw_gray = ffmpeg(["-vf", "scale=16:12", "-f", "rawvideo", "-pix_fmt", "gray"], ".gray")
    crop = [2, 1, 0xF0, 0xF8, 0, 0, 0, 0]
    images = {
        "jpeg-sniffed": image_seed(0, 0, 0, crop, jpeg),
        "jpeg": image_seed(1, 0, 0, crop, jpeg),
        "png": image_seed(2, 0, 0, crop, png),
        "raw-rgb": image_seed(3, 16, 12, crop, raw_rgb),
        "raw-bgr": image_seed(4, 16, 12, crop, raw_rgb),
        "raw-gray": image_seed(5, 16, 12, crop, raw_gray),
        "raw-short": image_seed(3, 16, 13, crop, raw_rgb),
        "jpeg-truncated": image_seed(1, 0, 0, crop, jpeg[: len(jpeg) // 2]),
    }
    requests = {
        "jpeg-frame": request("cam-1", 7, "detect", image_msg(jpeg, 1), budget_ms=83),
        "raw-frame": request("line-4/cam-2", 1 << 40, "track", image_msg(raw_rgb, 3, 16, 12), annotate=True),
        "no-image": request("cam-1", 0, "", None),
        "no-camera": request("", 1, "detect", image_msg(png, 2)),
        "unknown-encoding": request("cam-1", 2, "detect", image_msg(png, 42)),
        "long-camera": request("c" * 300, 3, "detect", image_msg(png, 0)),
        "timeout-header": b"250m",
        # Not protobuf, or not an InspectRequest: the server answers INVALID_ARGUMENT.
        "camera-not-utf8": field(1, 2, b"\xff\xfe") + field(2, 0, 1),
        "pipeline-not-utf8": request("cam-1", 4, "", None) + field(3, 2, b"det\xc3\x28ct"),
        "random-bytes": bytes((i * 73 + 41) % 256 for i in range(64)),
        "truncated-varint": field(1, 2, b"cam-1") + b"\x10\xff\xff",
        "length-past-end": b"\x0a\x10cam",
        "wrong-wire-type": b"\x08\x01" + field(2, 0, 5),
        "image-not-a-message": field(1, 2, b"cam-1") + field(4, 2, b"\xff\xff\xff"),
    }
    for target, seeds in [("decode_preprocess", images), ("validate_request", requests)]:
        folder = ROOT / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {folder}")


if __name__ == "__main__":
    main()
