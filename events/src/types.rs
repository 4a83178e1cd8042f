//! Fixed-size byte strings that appear in events: hashes, public keys, signatures.
//!
//! In the canonical encoding each is its raw bytes with no length prefix; in JSON each is a
//! lowercase hex string.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                self.hex_digits().as_str().to_owned()
            }

            /// Lowercase hex in a buffer on the stack (no allocation: every JSON line of the
            /// log writes several of these).
            pub fn hex_digits(&self) -> crate::hex_serde::HexDigits<{ 2 * $len }> {
                crate::hex_serde::HexDigits::of(&self.0)
            }

            /// Parses hex of exactly the right length.
            pub fn from_hex(text: &str) -> Result<Self, crate::hex_serde::HexError> {
                crate::hex_serde::decode_fixed::<$len>(text).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self([0; $len])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.hex_digits().as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.hex_digits().as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.hex_digits().as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                crate::hex_serde::deserialize_fixed::<D, $len>(deserializer).map(Self)
            }
        }
    };
}

fixed_bytes!(
    /// A 32-byte BLAKE3 digest.
    Hash32,
    32
);
fixed_bytes!(
    /// An ed25519 public key in its 32-byte compressed form (RFC 8032).
    PublicKey,
    32
);
fixed_bytes!(
    /// An ed25519 signature, 64 bytes (R ‖ S, RFC 8032).
    SignatureBytes,
    64
);

impl From<blake3::Hash> for Hash32 {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl From<&ed25519_dalek::VerifyingKey> for PublicKey {
    fn from(key: &ed25519_dalek::VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

impl From<ed25519_dalek::Signature> for SignatureBytes {
    fn from(signature: ed25519_dalek::Signature) -> Self {
        Self(signature.to_bytes())
    }
}
