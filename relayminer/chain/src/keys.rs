//! Signing keys as they arrive from a Kubernetes Secret: a file holding the 32-byte
//! secp256k1 key as hex (what `pocketd keys export --unarmored-hex --unsafe` prints).

use std::path::Path;

use lode_kernels::crypto::SecretKey;

/// Why a key file was refused. The key itself never appears in a message.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} must hold 64 hex characters (a 32-byte secp256k1 key), optionally 0x-prefixed; found {found}"
    )]
    Format { path: String, found: String },
    #[error("key file {path} holds 0 or a value ≥ the curve order: not a secp256k1 key")]
    OutOfRange { path: String },
}

/// Parses a hex secret key (surrounding whitespace and a `0x` prefix allowed).
pub fn parse_hex_key(text: &str, path: &str) -> Result<SecretKey, KeyFileError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let describe = || {
        if t.chars().all(|c| c.is_ascii_hexdigit()) {
            format!("{} hex characters", t.len())
        } else {
            "non-hex characters".to_string()
        }
    };
    if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(KeyFileError::Format {
            path: path.to_string(),
            found: describe(),
        });
    }
    let bytes = lode_kernels::hex::decode(t).expect("checked: 64 hex characters");
    SecretKey::from_bytes(&bytes).map_err(|_| KeyFileError::OutOfRange {
        path: path.to_string(),
    })
}

/// Reads a hex secret key from a file (a mounted Secret).
pub fn load_hex_key(path: &Path) -> Result<SecretKey, KeyFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_hex_key(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_bad_ones_say_why_without_echoing_the_key() {
        let k = SecretKey::from_secret(b"operator");
        let hex = lode_kernels::hex::encode(&k.to_bytes());
        assert_eq!(
            parse_hex_key(&format!("  0x{hex}\n"), "k")
                .expect("valid")
                .to_bytes(),
            k.to_bytes()
        );
        assert_eq!(
            parse_hex_key(&hex.to_uppercase(), "k")
                .expect("valid")
                .to_bytes(),
            k.to_bytes()
        );
        let e = parse_hex_key(&hex[..62], "k").expect_err("short");
        assert!(e.to_string().contains("62 hex characters"), "{e}");
        let e = parse_hex_key(&format!("{}zz", &hex[..62]), "k").expect_err("not hex");
        assert!(
            !e.to_string().contains(&hex[..62]),
            "the key must not leak into errors"
        );
        assert!(matches!(
            parse_hex_key(&"0".repeat(64), "k"),
            Err(KeyFileError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_hex_key(&"f".repeat(64), "k"),
            Err(KeyFileError::OutOfRange { .. })
        ));
        assert!(matches!(
            load_hex_key(Path::new("/nonexistent/key")),
            Err(KeyFileError::Read { .. })
        ));
    }
}
