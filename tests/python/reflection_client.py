#!/usr/bin/env python3
"""A grpcio client that knows nothing of linesight's .proto: it discovers the API through server
reflection, checks health, and calls Inspect on one image. Prints a JSON summary.

Usage: reflection_client.py HOST:PORT IMAGE
"""
import json
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def stub(channel, pool, service, method):
    m = pool.FindServiceByName(service).methods_by_name[method]
    request_class = message_factory.GetMessageClass(m.input_type)
    response_class = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return request_class, call


def main():
    address, image_path = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = DescriptorPool(database)

        health_request, health_check = stub(channel, pool, "grpc.health.v1.Health", "Check")
        health = health_check(health_request(service="linesight.v1.Inspection"), timeout=10)

        inspect_request, inspect = stub(channel, pool, "linesight.v1.Inspection", "Inspect")
        with open(image_path, "rb") as f:
            request = inspect_request(camera_id="python-reflection", sequence=250, image={"data": f.read()})
        response = inspect(request, timeout=30)

        print(json.dumps({
            "services": services,
            "health": int(health.status),
            "camera_id": response.camera_id,
            "sequence": response.sequence,
            "verdict": int(response.verdict),
            "total_us": response.timings.total_us,
            "detections": [
                {"class_name": d.class_name, "score": d.score,
                 "box": [d.box.x1, d.box.y1, d.box.x2, d.box.y2]}
                for d in response.detections
            ],
        }))


if __name__ == "__main__":
    main()
