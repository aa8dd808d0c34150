//! Compiles `proto/` with protox (no `protoc` needed) and writes the
//! descriptor set that server reflection serves.

use prost::Message;
use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["proto/quota/v1/quota.proto"];
    let fds = protox::compile(protos, ["proto"])?;

    // `compile_fds` generates code only; reflection needs the encoded set.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("quota_descriptor.bin"), fds.encode_to_vec())?;

    // The messages and the servers, whose codec answers a request that does
    // not decode with INVALID_ARGUMENT (`src/codec.rs`)...
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(fds.clone())?;
    // ...and the clients, with tonic-prost's codec and the same messages.
    let clients = out_dir.join("clients");
    fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".quota.v1", "crate::pb")
        .out_dir(clients)
        .compile_fds(fds)?;

    // The standard health and reflection services' servers, with the same
    // codec. Their messages are tonic-health's and tonic-reflection's, whose
    // services the generated servers call; reflection describes them with
    // those crates' descriptor sets, so none is written here.
    let standard_protos = [
        "proto/grpc/health/v1/health.proto",
        "proto/grpc/reflection/v1/reflection.proto",
        "proto/grpc/reflection/v1alpha/reflection.proto",
    ];
    let standard = out_dir.join("standard");
    fs::create_dir_all(&standard)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .extern_path(".grpc.health.v1", "::tonic_health::pb")
        .extern_path(".grpc.reflection.v1", "::tonic_reflection::pb::v1")
        .extern_path(
            ".grpc.reflection.v1alpha",
            "::tonic_reflection::pb::v1alpha",
        )
        .out_dir(standard)
        .compile_fds(protox::compile(standard_protos, ["proto"])?)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
