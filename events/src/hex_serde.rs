//! Serde helpers that write byte strings as lowercase hex in JSON.

use serde::{Deserialize, Deserializer, Serializer};

/// Serialises a byte slice as a lowercase hex string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode(bytes))
}

/// Lowercase hex of `bytes` (a table per byte; `hex::encode` goes through `char`s).
pub fn encode(bytes: &[u8]) -> String {
    let mut digits = vec![0u8; 2 * bytes.len()];
    write_digits(bytes, &mut digits);
    // Every byte is one of HEX_DIGITS: ASCII, so valid UTF-8.
    String::from_utf8(digits).unwrap_or_default()
}

/// Writes the lowercase hex of `bytes` into `digits`, two per byte.
fn write_digits(bytes: &[u8], digits: &mut [u8]) {
    debug_assert_eq!(digits.len(), 2 * bytes.len());
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Deserialises a lowercase or uppercase hex string into bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    hex::decode(&text).map_err(serde::de::Error::custom)
}

/// Why text is not the hex of a fixed number of bytes.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HexError {
    /// Not hex at all.
    #[error("not hex: {0}")]
    NotHex(hex::FromHexError),
    /// Hex of another length.
    #[error("expected {expected} bytes ({} hex digits), got {got}", 2 * expected)]
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The lowercase hex digits of a fixed number of bytes (`D` = twice that number), kept on the
/// stack.
#[derive(Clone, Copy)]
pub struct HexDigits<const D: usize>([u8; D]);

impl<const D: usize> HexDigits<D> {
    /// The digits of `bytes`, which must be `D / 2` bytes long.
    pub fn of(bytes: &[u8]) -> Self {
        assert_eq!(2 * bytes.len(), D, "{D} hex digits hold {} bytes", D / 2);
        let mut digits = [0u8; D];
        write_digits(bytes, &mut digits);
        Self(digits)
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        // Every byte is one of HEX_DIGITS: ASCII, so valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Deserialises exactly `N` bytes of hex from a string, borrowed where the format allows.
pub fn deserialize_fixed<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    struct FixedHex<const N: usize>;
    impl<const N: usize> serde::de::Visitor<'_> for FixedHex<N> {
        type Value = [u8; N];

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(formatter, "{} hex digits", 2 * N)
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            decode_fixed::<N>(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(FixedHex::<N>)
}

/// Decodes exactly `N` bytes of hex, naming what was expected on error.
pub fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    if text.len() == 2 * N {
        let mut bytes = [0u8; N];
        return hex::decode_to_slice(text, &mut bytes)
            .map(|()| bytes)
            .map_err(HexError::NotHex);
    }
    let bytes = hex::decode(text).map_err(HexError::NotHex)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| HexError::Length {
        expected: N,
        got: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Hash32;

    /// The stack digits are `hex::encode`'s, and JSON round-trips through them.
    #[test]
    fn digits_and_json_match_the_hex_crate() {
        for seed in 0u8..=255 {
            let bytes: [u8; 32] = std::array::from_fn(|at| seed.wrapping_mul(31) ^ (at as u8 * 7));
            let hash = Hash32(bytes);
            assert_eq!(hash.hex_digits().as_str(), hex::encode(bytes));
            assert_eq!(hash.to_hex(), hex::encode(bytes));
            assert_eq!(format!("{hash}"), hex::encode(bytes));
            assert_eq!(
                encode(&bytes[..seed as usize % 33]),
                hex::encode(&bytes[..seed as usize % 33])
            );
            let json = serde_json::to_string(&hash).expect("serializes");
            assert_eq!(json, format!("\"{}\"", hex::encode(bytes)));
            let back: Hash32 = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, hash);
            let value: Hash32 =
                serde_json::from_value(serde_json::Value::String(hex::encode_upper(bytes)))
                    .expect("upper case from a value");
            assert_eq!(value, hash);
        }
    }

    /// Wrong lengths and bad digits are refused with what was expected.
    #[test]
    fn bad_hex_is_refused_naming_the_length_or_the_digit() {
        let short = decode_fixed::<4>("abcd").expect_err("two bytes for four");
        assert_eq!(short.to_string(), "expected 4 bytes (8 hex digits), got 2");
        let bad = decode_fixed::<2>("abzd").expect_err("a z");
        assert!(bad.to_string().contains("'z'"), "{bad}");
        let odd = decode_fixed::<2>("abc").expect_err("odd");
        assert!(matches!(
            odd,
            HexError::NotHex(hex::FromHexError::OddLength)
        ));
        let json: Result<Hash32, _> = serde_json::from_str("\"00\"");
        let error = json.expect_err("one byte").to_string();
        assert!(error.contains("expected 32 bytes"), "{error}");
        let json: Result<Hash32, _> = serde_json::from_str("7");
        let error = json.expect_err("a number").to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }
}
