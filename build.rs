// Generates the gRPC code for proto/linesight/v1 with a pure-Rust protobuf compiler (protox),
// so a fresh machine needs no `protoc`. The encoded descriptor set also feeds server reflection.
//
// Messages and the client come from the .proto; the server side of `Inspection` is declared here
// instead, so that `Inspect` and `InspectStream` decode their requests with the API's own codec: a
// message protobuf cannot decode reaches the handler as such (INVALID_ARGUMENT, or an in-band
// error that lets a stream go on) instead of tonic's INTERNAL, which would also end the stream.
use std::path::PathBuf;

use tonic_build::manual::{Method, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/linesight/v1/inspection.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("linesight_v1_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".linesight.v1.Image.data")
        .compile_fds(fds)?;

    const INSPECT_CODEC: &str = "crate::api::InspectCodec";
    const PROST_CODEC: &str = "tonic_prost::ProstCodec";
    let method = |name: &str, route: &str, input: &str, output: &str, codec: &str| {
        Method::builder().name(name).route_name(route).input_type(input).output_type(output).codec_path(codec)
    };
    // Must match `service Inspection` in the .proto: reflection serves the .proto's descriptor.
    let inspection = Service::builder()
        .name("Inspection")
        .package("linesight.v1")
        .method(
            method("inspect", "Inspect", "crate::api::WireRequest", "super::InspectResponse", INSPECT_CODEC).build(),
        )
        .method(
            method(
                "inspect_stream",
                "InspectStream",
                "crate::api::WireRequest",
                "super::InspectResponse",
                INSPECT_CODEC,
            )
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "list_pipelines",
                "ListPipelines",
                "super::ListPipelinesRequest",
                "super::ListPipelinesResponse",
                PROST_CODEC,
            )
            .build(),
        )
        .method(
            method(
                "get_tracking_stats",
                "GetTrackingStats",
                "super::TrackingStatsRequest",
                "super::TrackingStatsResponse",
                PROST_CODEC,
            )
            .build(),
        )
        .method(
            method(
                "get_line_counts",
                "GetLineCounts",
                "super::LineCountsRequest",
                "super::LineCountsResponse",
                PROST_CODEC,
            )
            .build(),
        )
        .build();
    tonic_build::manual::Builder::new().build_client(false).out_dir(&out_dir).compile(&[inspection]);
    Ok(())
}
