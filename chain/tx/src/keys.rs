//! Signing keys as they arrive from a Kubernetes Secret: a file holding the 32-byte
//! secp256k1 key as hex (what `pocketd keys export --unarmored-hex --unsafe` prints), or
//! the passphrase-encrypted ASCII armor `pocketd keys export <name>` prints (Cosmos SDK
//! `crypto/armor`: bcrypt cost 12 over the passphrase with the header's salt, SHA-256 of
//! the bcrypt string as the key, XSalsa20-Poly1305 with the nonce in front, and the
//! secp256k1 key inside, raw or amino-encoded).

use std::path::Path;

use lode_kernels::crypto::SecretKey;
use sha2::Digest as _;

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
    #[error("armored key {path}: {reason}")]
    Armor { path: String, reason: String },
    #[error("armored key {path} did not decrypt: wrong passphrase (or a corrupted file)")]
    Passphrase { path: String },
}

const ARMOR_BEGIN: &str = "-----BEGIN TENDERMINT PRIVATE KEY-----";
const ARMOR_END: &str = "-----END TENDERMINT PRIVATE KEY-----";
/// The Cosmos SDK's bcrypt cost for exported keys.
const BCRYPT_COST: u32 = 12;
/// Amino's prefix of `tendermint/PrivKeySecp256k1`, then the length byte 32 (what older
/// SDKs encrypt; newer ones encrypt the 32 bytes alone).
const AMINO_SECP256K1_PREFIX: [u8; 5] = [0xe1, 0xb0, 0xf7, 0x9b, 0x20];

/// OpenPGP's CRC-24 (RFC 4880 §6.1), the armor's checksum.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xb7_04ce;
    for &b in data {
        crc ^= (b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4cfb;
            }
        }
    }
    crc & 0xff_ffff
}

/// Decrypts an ASCII-armored key exported by `pocketd keys export` (or any Cosmos SDK
/// binary) with its passphrase.
pub fn parse_armored_key(
    text: &str,
    passphrase: &str,
    path: &str,
) -> Result<SecretKey, KeyFileError> {
    let armor = |reason: &str| KeyFileError::Armor {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    if lines.next() != Some(ARMOR_BEGIN) {
        return Err(armor(&format!("does not start with {ARMOR_BEGIN}")));
    }
    let mut headers = std::collections::BTreeMap::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| armor("malformed header line"))?;
        headers.insert(k.trim().to_string(), v.trim().to_string());
    }
    let (mut body, mut checksum) = (String::new(), None);
    let mut ended = false;
    for line in lines {
        if line == ARMOR_END {
            ended = true;
            break;
        } else if let Some(c) = line.strip_prefix('=') {
            checksum = Some(c.to_string());
        } else {
            body.push_str(line);
        }
    }
    if !ended {
        return Err(armor(&format!("no {ARMOR_END} line")));
    }
    let data = lode_chain::comet::unbase64(&body).ok_or_else(|| armor("the body is not base64"))?;
    if let Some(c) = checksum {
        let want = lode_chain::comet::unbase64(&c)
            .filter(|b| b.len() == 3)
            .ok_or_else(|| armor("malformed checksum"))?;
        if crc24(&data).to_be_bytes()[1..] != want[..] {
            return Err(armor("checksum mismatch: the file is corrupted"));
        }
    }
    match headers.get("kdf").map(String::as_str) {
        Some("bcrypt") => {}
        Some(other) => return Err(armor(&format!("unsupported kdf {other:?} (only bcrypt)"))),
        None => return Err(armor("no kdf header")),
    }
    if let Some(t) = headers.get("type")
        && t != "secp256k1"
    {
        return Err(armor(&format!("key type {t:?} is not secp256k1")));
    }
    let salt: [u8; 16] = headers
        .get("salt")
        .and_then(|s| lode_kernels::hex::decode(s))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| armor("the salt header must be 16 bytes of hex"))?;
    if data.len() < 24 {
        return Err(armor("the body is too short"));
    }
    let hashed = bcrypt::hash_with_salt(passphrase.as_bytes(), BCRYPT_COST, salt)
        .map_err(|e| armor(&format!("bcrypt: {e}")))?
        .format_for_version(bcrypt::Version::TwoA);
    let key: [u8; 32] = sha2::Sha256::digest(hashed.as_bytes()).into();
    let (nonce, sealed) = data.split_at(24);
    use crypto_secretbox::aead::{Aead, KeyInit};
    let plain = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .decrypt(nonce.into(), sealed)
        .map_err(|_| KeyFileError::Passphrase {
            path: path.to_string(),
        })?;
    // Older SDKs armor the amino encoding, newer ones the 32 raw bytes.
    let raw = match plain.len() {
        32 => &plain[..],
        37 => plain
            .strip_prefix(&AMINO_SECP256K1_PREFIX[..])
            .ok_or_else(|| armor("the decrypted key is not an amino secp256k1 key"))?,
        n => return Err(armor(&format!("the decrypted key has {n} bytes, not 32"))),
    };
    SecretKey::from_bytes(raw).map_err(|_| KeyFileError::OutOfRange {
        path: path.to_string(),
    })
}

/// The ASCII armor `pocketd keys export` writes for `key` (raw 32-byte form, or amino
/// when `amino`), with the given salt and nonce (random ones in real use).
pub fn armor_key(
    key: &SecretKey,
    passphrase: &str,
    salt: [u8; 16],
    nonce: [u8; 24],
    amino: bool,
) -> String {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let hashed = bcrypt::hash_with_salt(passphrase.as_bytes(), BCRYPT_COST, salt)
        .expect("cost 12 is valid")
        .format_for_version(bcrypt::Version::TwoA);
    let box_key: [u8; 32] = sha2::Sha256::digest(hashed.as_bytes()).into();
    let mut plain = if amino {
        AMINO_SECP256K1_PREFIX.to_vec()
    } else {
        Vec::new()
    };
    plain.extend_from_slice(&key.to_bytes());
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(&box_key.into())
        .encrypt(&nonce.into(), plain.as_slice())
        .expect("in-memory encryption");
    let data = [&nonce[..], &sealed].concat();
    let body = lode_chain::comet::base64(&data);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "{ARMOR_BEGIN}\nkdf: bcrypt\nsalt: {}\ntype: secp256k1\n\n{}\n={}\n{ARMOR_END}\n",
        lode_kernels::hex::encode_upper(&salt),
        lines.join("\n"),
        lode_chain::comet::base64(&crc24(&data).to_be_bytes()[1..])
    )
}

/// Reads a key file in either format: hex, or armor decrypted with `passphrase` (an
/// armored file without a passphrase is an error that says so).
pub fn load_key(path: &Path, passphrase: Option<&str>) -> Result<SecretKey, KeyFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: shown.clone(),
        source,
    })?;
    if text.contains(ARMOR_BEGIN) {
        let pass = passphrase.ok_or_else(|| KeyFileError::Armor {
            path: shown.clone(),
            reason: "the key is passphrase-encrypted; give its passphrase".into(),
        })?;
        return parse_armored_key(&text, pass, &shown);
    }
    parse_hex_key(&text, &shown)
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

    /// A key exported by the Cosmos SDK (its `keys import` command test), passphrase
    /// `123456789`.
    const SDK_ARMORED: &str = "-----BEGIN TENDERMINT PRIVATE KEY-----
kdf: bcrypt
salt: 0A2203634D31B7BAFD938564E19A173A
type: secp256k1

OqpHBjYDPl5/jfm3LqzatY1Re19JvYvZ5fCAKGj/VUk1PZFj0bDjdYfr7CLDqduS
mBtElE9j21pFaLf9gt8hVPTMDXWPtbIL
=ctQV
-----END TENDERMINT PRIVATE KEY-----
";

    #[test]
    fn armored_keys_from_the_cosmos_sdk_decrypt() {
        let k = parse_armored_key(SDK_ARMORED, "123456789", "k").expect("decrypts");
        // Deterministic: the same file and passphrase give the same key.
        let again = parse_armored_key(SDK_ARMORED, "123456789", "k").expect("decrypts");
        assert_eq!(k.to_bytes(), again.to_bytes());
        assert!(
            k.public_key()
                .address()
                .to_bech32("pokt")
                .starts_with("pokt1")
        );
        assert!(matches!(
            parse_armored_key(SDK_ARMORED, "12345678", "k"),
            Err(KeyFileError::Passphrase { .. })
        ));
        let corrupted = SDK_ARMORED.replace("OqpHB", "OqpHC");
        let e = parse_armored_key(&corrupted, "123456789", "k").expect_err("checksum");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        let other_kdf = SDK_ARMORED.replace("kdf: bcrypt", "kdf: scrypt");
        assert!(parse_armored_key(&other_kdf, "123456789", "k").is_err());
        let ed = SDK_ARMORED.replace("type: secp256k1", "type: ed25519");
        assert!(parse_armored_key(&ed, "123456789", "k").is_err());
        assert!(parse_armored_key("not armor", "x", "k").is_err());
        let dir = std::env::temp_dir().join(format!("lode-key-{}", std::process::id()));
        std::fs::write(&dir, SDK_ARMORED).expect("write");
        assert_eq!(
            load_key(&dir, Some("123456789"))
                .expect("armored")
                .to_bytes(),
            k.to_bytes()
        );
        let e = load_key(&dir, None).expect_err("needs a passphrase");
        assert!(e.to_string().contains("passphrase"), "{e}");
        std::fs::write(&dir, lode_kernels::hex::encode(&k.to_bytes())).expect("write");
        assert_eq!(load_key(&dir, None).expect("hex").to_bytes(), k.to_bytes());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn armored_keys_round_trip_in_both_plaintext_forms() {
        let k = SecretKey::from_secret(b"supplier");
        for amino in [false, true] {
            let text = armor_key(&k, "correct horse", [7; 16], [9; 24], amino);
            let back = parse_armored_key(&text, "correct horse", "k").expect("decrypts");
            assert_eq!(back.to_bytes(), k.to_bytes(), "amino: {amino}");
            assert!(parse_armored_key(&text, "wrong", "k").is_err());
        }
        // The SDK's own file re-armored with its salt and nonce gives its exact bytes.
        let sdk = parse_armored_key(SDK_ARMORED, "123456789", "k").expect("decrypts");
        let body: String = SDK_ARMORED.lines().skip(5).take(2).collect();
        let data = lode_chain::comet::unbase64(&body).expect("base64");
        let salt = lode_kernels::hex::decode("0A2203634D31B7BAFD938564E19A173A").expect("hex");
        let again = armor_key(
            &sdk,
            "123456789",
            salt.try_into().expect("16"),
            data[..24].try_into().expect("24"),
            false,
        );
        assert_eq!(again, SDK_ARMORED);
    }

    #[test]
    fn crc24_matches_rfc_4880() {
        // CRC-24 of "123456789" (the check value of CRC-24/OPENPGP).
        assert_eq!(crc24(b"123456789"), 0x21cf02);
    }

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
