//! Compiles the chain's gRPC protocols with the pure-Rust `protox` (no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "cosmos/query.proto",
            "cosmos/bank.proto",
            "cosmos/tx.proto",
            "pocket/shared.proto",
            "pocket/application.proto",
            "pocket/session.proto",
            "pocket/service.proto",
            "pocket/supplier.proto",
            "pocket/proof.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        // One session header in all of lode: the kernels' (which implements
        // `prost::Message` for this).
        .extern_path(
            ".pocket.session.SessionHeader",
            "::lode_kernels::proto::SessionHeader",
        )
        .compile_fds(fds)?;
    Ok(())
}
