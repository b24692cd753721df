//! Hex, as the protocol prints it: lowercase for session ids and keys, uppercase for
//! CometBFT hashes and addresses.

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn encode_with(bytes: &[u8], digits: &[u8; 16]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digits[(b >> 4) as usize] as char);
        s.push(digits[(b & 15) as usize] as char);
    }
    s
}

/// Lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    encode_with(bytes, LOWER)
}

/// Uppercase hex.
pub fn encode_upper(bytes: &[u8]) -> String {
    encode_with(bytes, UPPER)
}

/// Decodes hex of either case; `None` for an odd length or a non-hex character.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_cases() {
        let b = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&b), "000fa5ff");
        assert_eq!(encode_upper(&b), "000FA5FF");
        assert_eq!(decode("000fA5FF"), Some(b.to_vec()));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode(""), Some(Vec::new()));
    }
}
