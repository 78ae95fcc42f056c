// Generates the gRPC code for proto/linesight/v1 with a pure-Rust protobuf compiler (protox),
// so a fresh machine needs no `protoc`. The encoded descriptor set also feeds server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/linesight/v1/inspection.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("linesight_v1_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".linesight.v1.Image.data")
        .compile_fds(fds)?;
    Ok(())
}
