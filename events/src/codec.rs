//! The one canonical encoding of events: bincode 2 with little-endian fixed-width integers.
//!
//! Fixed-width integers (rather than varints) make the bytes easy to describe and to decode in
//! any language: `u32`/`u64` are 4/8 bytes little-endian, a `bool` is one byte 0 or 1, a
//! `String` or `Vec` is a u64 length followed by its elements, an `Option` is one byte 0 or 1
//! followed by the value, an enum is its variant index as u32 followed by the variant's fields,
//! and a fixed array is its bytes with no prefix. Decoding is strict: every byte must be used,
//! booleans and option tags must be 0 or 1, strings must be UTF-8, and nothing larger than
//! [`MAX_EVENT_BYTES`] is read. So every event has exactly one encoding.

use bincode::config::{Configuration, Fixint, LittleEndian, NoLimit};
use bincode::{Decode, Encode};
use thiserror::Error;

use crate::event::Event;
use crate::wire::{MAX_SIGNED_BYTES, WIRE_MAGIC};

/// Largest canonical encoding of one event, in bytes (the `signed` limit minus the magic).
pub const MAX_EVENT_BYTES: usize = MAX_SIGNED_BYTES - WIRE_MAGIC.len();

type Canonical = Configuration<LittleEndian, Fixint, NoLimit>;
type Limited = Configuration<LittleEndian, Fixint, bincode::config::Limit<MAX_EVENT_BYTES>>;

const CANONICAL: Canonical = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding();
const LIMITED: Limited = CANONICAL.with_limit::<MAX_EVENT_BYTES>();

/// Why bytes are not a canonical event.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes than any event may have.
    #[error("event is {len} bytes, over the limit of {max} bytes")]
    Oversize {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The `signed` bytes do not start with `FABRICv1`.
    #[error("signed bytes do not start with the wire magic \"FABRICv1\"")]
    BadMagic,
    /// A valid event followed by more bytes.
    #[error("{trailing} trailing bytes after a complete event of {used} bytes")]
    TrailingBytes {
        /// Bytes the event used.
        used: usize,
        /// Bytes left over.
        trailing: usize,
    },
    /// Not an event at all.
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// An event too large to be signed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("event encodes to {len} bytes, over the limit of {max} bytes")]
pub struct OversizeEvent {
    /// Its encoded size.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Appends the canonical encoding of any value to `out`.
///
/// Used for events and for the other canonical structures (approval scopes, snapshots).
pub fn encode_canonical_into<T: Encode>(value: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail and our types have no fallible Encode impls.
    bincode::encode_into_std_write(value, out, CANONICAL)
        .expect("encoding into a Vec<u8> is infallible");
}

/// The canonical encoding of any value.
pub fn encode_canonical<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_canonical_into(value, &mut out);
    out
}

/// Decodes a canonical value of any type, strictly: every byte must be used.
pub fn decode_canonical<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::decode_from_slice::<T, _>(bytes, CANONICAL)
        .map_err(|err| DecodeError::Malformed(err.to_string()))?;
    check_used(bytes.len(), used)?;
    Ok(value)
}

/// Decodes one canonical value at the start of `bytes` and says how many bytes it used, for
/// structures that are a sequence of values (state snapshots). Damaged lengths cannot make it
/// allocate much more than the input: the decoder's limit is at most sixteen times the input's
/// length.
pub fn decode_canonical_prefix<T: Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    fn with_limit<T: Decode<()>, const LIMIT: usize>(
        bytes: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::decode_from_slice::<T, _>(bytes, CANONICAL.with_limit::<LIMIT>())
    }
    let result = match bytes.len() {
        0..=0xffff => with_limit::<T, { 1 << 16 }>(bytes),
        0x1_0000..=0xf_ffff => with_limit::<T, { 1 << 20 }>(bytes),
        0x10_0000..=0xff_ffff => with_limit::<T, { 1 << 24 }>(bytes),
        0x100_0000..=0xfff_ffff => with_limit::<T, { 1 << 28 }>(bytes),
        0x1000_0000..=0xffff_ffff => with_limit::<T, { 1 << 32 }>(bytes),
        _ => with_limit::<T, { 1 << 40 }>(bytes),
    };
    result.map_err(|err| DecodeError::Malformed(err.to_string()))
}

/// The canonical encoding of an event, refused when over [`MAX_EVENT_BYTES`].
pub fn encode_event(event: &Event) -> Result<Vec<u8>, OversizeEvent> {
    let bytes = encode_canonical(event);
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(OversizeEvent {
            len: bytes.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a canonical event strictly, with the size limit.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::Oversize {
            len: bytes.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    let (event, used) = bincode::decode_from_slice::<Event, _>(bytes, LIMITED)
        .map_err(|err| DecodeError::Malformed(err.to_string()))?;
    check_used(bytes.len(), used)?;
    Ok(event)
}

fn check_used(len: usize, used: usize) -> Result<(), DecodeError> {
    if used == len {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            used,
            trailing: len - used,
        })
    }
}
