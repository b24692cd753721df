//! Compiles the store protocol with the pure-Rust `protox`, so builds need no `protoc`.
//! Its session header is poktroll's (`pocket/session.proto`, beside the chain client),
//! carried as the kernels' one `SessionHeader`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/store.proto");
    println!("cargo:rerun-if-changed=../../chain/proto/pocket");
    let fds = protox::compile(["proto/store.proto"], ["proto", "../../chain/proto"])?;
    tonic_prost_build::configure()
        .extern_path(
            ".pocket.session.SessionHeader",
            "::lode_kernels::proto::SessionHeader",
        )
        .compile_fds(fds)?;
    Ok(())
}
