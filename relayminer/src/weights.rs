//! Model weights, digested with BLAKE3: one digest per file and one over the sorted
//! manifest, so that a pod can say exactly which weights it serves and refuse to start
//! on weights that are not the ones a ServiceModel pins (`spec.model.digest`).
//!
//! The manifest is one line per regular file under the model directory, sorted by path
//! (bytes of the UTF-8 relative path, `/`-separated):
//!
//! ```text
//! <BLAKE3 of the file, 64 hex digits>  <size in bytes>  <relative path>\n
//! ```
//!
//! and the model's digest is the BLAKE3 of those lines, concatenated. A file is hashed
//! from a memory map across every core (BLAKE3's tree splits one file into independent
//! chunks), so a multi-GiB shard is digested at the speed it is read.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files at most this large are read whole; larger ones are memory-mapped and hashed on
/// every core.
const SMALL_FILE: u64 = 1 << 20;
/// At most this many files: a model is tens of shards and a few configs, never this.
const MAX_FILES: usize = 100_000;
/// Directories nested deeper than this are refused (a symlink loop, or not a model).
const MAX_DEPTH: usize = 32;

/// One file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Relative to the model directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub blake3: [u8; 32],
}

/// Every regular file under a model directory, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub files: Vec<FileDigest>,
}

/// Why a model directory could not be digested.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: the file name is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{0}: nested deeper than {MAX_DEPTH} directories")]
    TooDeep(PathBuf),
    #[error("more than {MAX_FILES} files under the model directory")]
    TooManyFiles,
    #[error("{0} holds no file")]
    Empty(PathBuf),
}

impl Manifest {
    /// The manifest's lines, as they are hashed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            let _ = writeln!(out, "{}  {}  {}", hex(&f.blake3), f.size, f.path);
        }
        out
    }

    /// The model's digest: BLAKE3 of [`Manifest::text`].
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(self.text().as_bytes()).as_bytes()
    }

    /// Bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8; 32]) -> String {
    lode_kernels::hex::encode(d)
}

/// Digests every regular file under `root` (symlinks followed, as an engine loading the
/// directory would).
pub fn digest_dir(root: &Path) -> Result<Manifest, DigestError> {
    let mut paths = Vec::new();
    walk(root, root, 0, &mut paths)?;
    if paths.is_empty() {
        return Err(DigestError::Empty(root.to_path_buf()));
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    let files = paths
        .into_iter()
        .map(|(rel, full)| {
            let (size, blake3) = digest_file(&full)?;
            Ok(FileDigest {
                path: rel,
                size,
                blake3,
            })
        })
        .collect::<Result<_, DigestError>>()?;
    Ok(Manifest { files })
}

/// One file's size and BLAKE3.
pub fn digest_file(path: &Path) -> Result<(u64, [u8; 32]), DigestError> {
    let io = |source| DigestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    let mut hasher = blake3::Hasher::new();
    if size <= SMALL_FILE {
        hasher.update(&std::fs::read(path).map_err(io)?);
    } else {
        hasher.update_mmap_rayon(path).map_err(io)?;
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), DigestError> {
    if depth > MAX_DEPTH {
        return Err(DigestError::TooDeep(dir.to_path_buf()));
    }
    let io = |source| DigestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // Follows symlinks: a hub cache links each file to its blob.
        let meta = std::fs::metadata(&path).map_err(|source| DigestError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(root, &path, depth + 1, out)?;
        } else if meta.is_file() {
            if out.len() >= MAX_FILES {
                return Err(DigestError::TooManyFiles);
            }
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(|r| {
                    r.components()
                        .map(|c| c.as_os_str().to_str())
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| DigestError::NotUtf8(path.clone()))?
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_the_manifest_are_digested_as_blake3_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        // BLAKE3's published value for the empty input.
        std::fs::write(dir.path().join("empty"), b"").expect("write");
        std::fs::create_dir(dir.path().join("shards")).expect("mkdir");
        let big: Vec<u8> = (0..3 * SMALL_FILE as usize + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("shards/b.bin"), &big).expect("write");
        std::fs::write(dir.path().join("shards/a.json"), b"{}").expect("write");
        let m = digest_dir(dir.path()).expect("digests");
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["empty", "shards/a.json", "shards/b.bin"]);
        assert_eq!(
            hex(&m.files[0].blake3),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // The memory-mapped, multi-threaded path equals hashing the bytes in one go.
        assert_eq!(m.files[2].blake3, *blake3::hash(&big).as_bytes());
        assert_eq!(m.files[2].size, big.len() as u64);
        assert_eq!(m.total_bytes(), big.len() as u64 + 2);
        let text = m.text();
        assert!(text.starts_with(
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262  0  empty\n"
        ));
        assert_eq!(m.digest(), *blake3::hash(text.as_bytes()).as_bytes());

        // One changed byte anywhere changes the model's digest; so does a renamed file.
        let before = m.digest();
        let mut changed = big.clone();
        changed[2 * SMALL_FILE as usize] ^= 1;
        std::fs::write(dir.path().join("shards/b.bin"), &changed).expect("write");
        assert_ne!(digest_dir(dir.path()).expect("digests").digest(), before);
        std::fs::write(dir.path().join("shards/b.bin"), &big).expect("write");
        assert_eq!(digest_dir(dir.path()).expect("digests").digest(), before);
        std::fs::rename(dir.path().join("empty"), dir.path().join("empty2")).expect("mv");
        assert_ne!(digest_dir(dir.path()).expect("digests").digest(), before);
    }

    #[test]
    fn empty_or_missing_directories_are_refused_with_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = digest_dir(dir.path()).expect_err("empty");
        assert!(e.to_string().contains("holds no file"), "{e}");
        let e = digest_dir(&dir.path().join("nope")).expect_err("missing");
        assert!(e.to_string().contains("nope"), "{e}");
        // A symlink loop is refused by depth, not followed forever.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).expect("symlink");
        std::fs::write(dir.path().join("w"), b"x").expect("write");
        let e = digest_dir(dir.path()).expect_err("loop");
        assert!(matches!(e, DigestError::TooDeep(_)), "{e}");
    }
}
