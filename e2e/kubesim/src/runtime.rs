//! What a container image runs as on this machine: kubesim's stand-in for a container
//! runtime. The kubelet asks a [`Runtime`] for the program and arguments of each
//! container; [`BinDir`] (what the `kubesim` binary uses) runs images named after
//! executables in a directory. A project that runs its own images here (lode's fleet)
//! brings its own `Runtime`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Maps a container to a local process.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// The program and arguments for a container of `image` started with `args` (already
    /// rewritten for this machine) in a pod at `pod_ip`; an error (shown as the
    /// container's `CreateContainerError`) when nothing here runs that image.
    fn program(
        &self,
        image: &str,
        args: Vec<String>,
        pod_ip: &str,
    ) -> Result<(PathBuf, Vec<String>), String>;
}

/// The repository part of an image reference: `ghcr.io/org/relayminer:1.2` → `relayminer`.
pub fn repository(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

/// Images named after executables in `dir` (`…/name:tag` runs `<dir>/name` with the
/// container's arguments), with `aliases` from repository names to executable names.
#[derive(Clone, Debug, Default)]
pub struct BinDir {
    pub dir: PathBuf,
    pub aliases: BTreeMap<String, String>,
}

impl Runtime for BinDir {
    fn program(
        &self,
        image: &str,
        args: Vec<String>,
        _pod_ip: &str,
    ) -> Result<(PathBuf, Vec<String>), String> {
        let repo = repository(image);
        let name = self.aliases.get(repo).map_or(repo, String::as_str);
        let path = self.dir.join(name);
        if path.is_file() {
            Ok((path, args))
        } else {
            Err(format!(
                "image {image:?}: no executable {:?} in {} (map it with --image {repo}=PROGRAM)",
                name,
                self.dir.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_run_the_executable_they_name() {
        assert_eq!(repository("ghcr.io/org/relayminer:1.2"), "relayminer");
        assert_eq!(repository("busybox"), "busybox");
        assert_eq!(repository("registry:5000/a/b@sha256:00"), "b");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("echo"), b"").expect("file");
        let rt = BinDir {
            dir: dir.path().to_path_buf(),
            aliases: BTreeMap::from([("gateway".to_string(), "echo".to_string())]),
        };
        let (p, args) = rt
            .program("example.com/tools/echo:1", vec!["hi".into()], "127.2.0.1")
            .expect("runs");
        assert_eq!((p, args), (dir.path().join("echo"), vec!["hi".to_string()]));
        assert!(rt.program("x/gateway:2", Vec::new(), "ip").is_ok(), "alias");
        let e = rt
            .program("vllm/vllm-openai:v1", Vec::new(), "ip")
            .expect_err("missing");
        assert!(e.contains("--image vllm-openai=PROGRAM"), "{e}");
    }
}
