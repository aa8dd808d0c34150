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

    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
