#!/usr/bin/env python3
"""The line demo: streams a conveyor video (models/tools/conveyor_synth.py video) through
InspectStream of a running `linesight serve` whose `track` pipeline has a counting line, and
compares the parts counted per class with the video's ground truth.

  linesight serve -c docs/line-demo/linesight.toml &
  eval/line_demo.py --server 127.0.0.1:50051 --video /tmp/conveyor-video \\
      --out eval/results/line-demo --sheet docs/line-demo/contact-sheet.jpg

Ground truth: a part counts once its visible box's centre has been left of the line and later
right of it (the belt runs left to right). The client knows only server reflection (no .proto).
Writes summary.json (counts, differences, latency) to --out and a contact sheet of annotated frames.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICE = "linesight.v1.Inspection"


def ground_truth(video, line_x):
    """Parts per class whose visible centre crosses x = line_x left to right."""
    left, crossed, classes = set(), set(), {}
    with open(Path(video) / "ground_truth.jsonl") as f:
        for row in map(json.loads, f):
            for o in row["objects"]:
                x1, _, x2, _ = o["box"]
                cx = (x1 + x2) / 2
                classes[o["id"]] = o["class"]
                if cx < line_x:
                    left.add(o["id"])
                elif o["id"] in left:
                    crossed.add(o["id"])
    counts = {}
    for part in crossed:
        counts[classes[part]] = counts.get(classes[part], 0) + 1
    return counts, len(classes)


def frames(video):
    capture = cv2.VideoCapture(str(Path(video) / "conveyor.mp4"))
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        yield bgr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--video", required=True)
    parser.add_argument("--camera-id", help="default: belt-<unix time>, so a rerun starts a fresh camera")
    parser.add_argument("--fps", type=float, help="frames sent per second, as a camera would (default: the video's; 0 = as fast as the stream takes them)")
    parser.add_argument("--pipeline", default="track")
    parser.add_argument("--line-x", type=float, help="the config's line (default: the frame's middle)")
    parser.add_argument("--annotate-every", type=int, default=75)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sheet", help="contact sheet of the annotated frames (JPEG)")
    parser.add_argument("--dump", help="write every answer's tracks and crossings here, as JSON lines")
    args = parser.parse_args()

    meta = json.loads((Path(args.video) / "video.json").read_text())
    line_x = args.line_x if args.line_x is not None else meta["width"] / 2
    camera_id = args.camera_id or f"belt-{int(time.time())}"
    fps = meta["fps"] if args.fps is None else args.fps
    truth, parts = ground_truth(args.video, line_x)

    channel = grpc.insecure_channel(args.server, options=[("grpc.max_receive_message_length", 64 << 20)])
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(SERVICE)

    def message(method, side):
        return message_factory.GetMessageClass(getattr(service.methods_by_name[method], side))

    Request, Response = message("InspectStream", "input_type"), message("InspectStream", "output_type")
    stream = channel.stream_stream(f"/{SERVICE}/InspectStream", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString)
    CountsRequest, CountsResponse = message("GetLineCounts", "input_type"), message("GetLineCounts", "output_type")
    get_counts = channel.unary_unary(f"/{SERVICE}/GetLineCounts", request_serializer=CountsRequest.SerializeToString, response_deserializer=CountsResponse.FromString)

    sent = {}

    def requests():
        for i, bgr in enumerate(frames(args.video)):
            if fps > 0:
                time.sleep(max(0.0, started + i / fps - time.perf_counter()))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sent[i] = time.perf_counter()
            yield Request(
                camera_id=camera_id,
                sequence=i + 1,
                pipeline=args.pipeline,
                image={"data": rgb.tobytes(), "encoding": "ENCODING_RAW_RGB8", "width": rgb.shape[1], "height": rgb.shape[0]},
                annotate=args.annotate_every > 0 and (i + 1) % args.annotate_every == 0,
            )

    dump = open(args.dump, "w") if args.dump else None
    started = time.perf_counter()
    server_ms, client_ms, sheet, errors, verdicts, last = [], [], [], 0, {}, None
    for r in stream(requests()):
        client_ms.append((time.perf_counter() - sent[r.sequence - 1]) * 1000)
        if r.HasField("error"):
            errors += 1
            print(f"frame {r.sequence}: {r.error.message}", file=sys.stderr)
            continue
        server_ms.append(r.timings.total_us / 1000)
        verdict = Response.DESCRIPTOR.fields_by_name["verdict"].enum_type.values_by_number[r.verdict].name
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
        last = r
        if dump:
            tracks = [{"id": d.track_id, "class": d.class_name, "score": round(d.score, 3), "box": [round(v, 1) for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2)]} for d in r.detections]
            crossings = [{"id": c.track_id, "class": c.class_name, "direction": c.direction} for c in r.analytics.crossings]
            dump.write(json.dumps({"frame": r.sequence - 1, "tracks": tracks, "crossings": crossings}) + "\n")
        if r.annotated_jpeg:
            sheet.append(cv2.imdecode(np.frombuffer(r.annotated_jpeg, np.uint8), cv2.IMREAD_COLOR))
    wall = time.perf_counter() - started

    counted = {}
    for row in last.analytics.line_totals if last is not None else []:
        counted[row.class_name] = counted.get(row.class_name, 0) + row.forward
    backward = sum(row.backward for row in last.analytics.line_totals) if last is not None else 0
    totals_rpc = json_format.MessageToDict(get_counts(CountsRequest(pipeline=args.pipeline, camera_id=camera_id)))
    classes = meta["classes"]
    per_class = {c: {"truth": truth.get(c, 0), "counted": counted.get(c, 0), "difference": counted.get(c, 0) - truth.get(c, 0)} for c in classes}

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if values else None

    summary = {
        "video": meta,
        "line_x": line_x,
        "camera_id": camera_id,
        "fps_sent": fps,
        "frames": len(sent),
        "errors": errors,
        "verdicts": verdicts,
        "parts_in_video": parts,
        "per_class": per_class,
        "total": {"truth": sum(truth.values()), "counted": sum(counted.values()), "backward": backward},
        "exact": all(v["difference"] == 0 for v in per_class.values()) and backward == 0,
        "server_ms": {"median": pct(server_ms, 50), "p95": pct(server_ms, 95), "p99": pct(server_ms, 99), "max": pct(server_ms, 100)},
        "client_ms": {"median": pct(client_ms, 50), "p95": pct(client_ms, 95)},
        "frames_per_s": round(len(sent) / wall, 1),
        "get_line_counts": totals_rpc,
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.sheet and sheet:
        columns = 4
        while len(sheet) % columns:
            sheet.append(np.zeros_like(sheet[0]))
        rows = [np.hstack(sheet[i : i + columns]) for i in range(0, len(sheet), columns)]
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.sheet, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(json.dumps({k: summary[k] for k in ("per_class", "total", "exact", "server_ms", "frames_per_s", "errors")}, indent=1))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
