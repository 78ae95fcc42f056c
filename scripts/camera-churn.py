#!/usr/bin/env python3
"""A client cycling camera ids against a running `linesight serve`: N `track` frames, each from a new
camera id, sent by a few concurrent callers. Prints how the calls ended (with one message of each
kind) and the server's resident memory before, during (highest sample) and after, as JSON.

Usage: camera-churn.py HOST:PORT SERVER_PID IMAGE [N=100000] [CALLERS=8]
Needs the repository's .venv (grpcio, grpcio-reflection).
"""
import collections
import concurrent.futures
import json
import sys
import threading
import time

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    address, pid, image_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
    callers = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    with open(image_path, "rb") as f:
        image = f.read()
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("linesight.v1.Inspection").methods_by_name["Inspect"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    inspect = channel.unary_unary(
        "/linesight.v1.Inspection/Inspect",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    outcomes, examples, lock = collections.Counter(), {}, threading.Lock()
    peak = [rss_mib(pid)]
    before = peak[0]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mib(pid))

    def call(i):
        request = request_class(camera_id=f"churn-{i}", sequence=0, pipeline="track", image={"data": image})
        try:
            inspect(request, timeout=60)
            kind, message = "OK", ""
        except grpc.RpcError as error:
            kind, message = error.code().name, error.details()
        with lock:
            outcomes[kind] += 1
            examples.setdefault(kind, message)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(callers) as executor:
        list(executor.map(call, range(n)))
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    print(json.dumps({
        "calls": n, "seconds": round(seconds, 1), "outcomes": dict(outcomes), "examples": examples,
        "rss_mib": {"before": round(before, 1), "peak": round(peak[0], 1), "after": round(rss_mib(pid), 1)},
    }, indent=2))


if __name__ == "__main__":
    main()
