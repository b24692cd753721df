//! `crdgen [DIR]`: writes the CRD manifests generated from lode's types into DIR (by
//! default `crds/` of this repository). A test fails when the committed files drift.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    for (name, yaml) in lode_crds::manifests() {
        let path = dir.join(name);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
