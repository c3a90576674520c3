//! Generates the containerd snapshots service (server and client) from the project's own
//! `.proto` files with protox, a protobuf compiler in Rust: no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/containerd/services/snapshots/v1/snapshots.proto"];
    for p in [
        "proto/containerd/services/snapshots/v1/snapshots.proto",
        "proto/containerd/types/mount.proto",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
