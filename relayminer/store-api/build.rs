//! Compiles the store protocol with the pure-Rust `protox`, so builds need no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/store.proto");
    let fds = protox::compile(["proto/store.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
