//! Serde helpers that write byte strings as lowercase hex in JSON.

use serde::{Deserialize, Deserializer, Serializer};

/// Serialises a byte slice as a lowercase hex string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
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

/// Decodes exactly `N` bytes of hex, naming what was expected on error.
pub fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let bytes = hex::decode(text).map_err(HexError::NotHex)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| HexError::Length {
        expected: N,
        got: bytes.len(),
    })
}
