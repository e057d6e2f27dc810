//! The payload codec: how a task and its output become bytes.
//!
//! Everything the library serialises goes through the two functions here, so
//! swapping bincode for another serde format is a change to this file only.
//! Framing (lengths, message kinds) lives in [`crate::wire`] and does not
//! depend on the codec.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The bincode configuration both sides use. Changing it is a protocol change:
/// bump [`crate::wire::PROTOCOL_VERSION`].
const fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// A value could not be encoded or decoded. It reaches users inside
/// outcome texts (a task that cannot be encoded is
/// [`NotRun`](crate::Outcome::NotRun), a result that cannot be decoded
/// [`Failed`](crate::Outcome::Failed)).
///
/// ```
/// use worker_facade::CodecError;
/// let err = CodecError::TrailingBytes(3);
/// assert!(err.to_string().contains("disagree on the type"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Serialisation failed (for example a map with non-string keys in a
    /// format that needs them, or a type whose `Serialize` returned an error).
    #[error("could not encode value")]
    Encode(#[source] bincode::error::EncodeError),
    /// The bytes did not decode as the expected type: the worker and the
    /// parent disagree on the task or output type, or the bytes are damaged.
    #[error("could not decode value")]
    Decode(#[source] bincode::error::DecodeError),
    /// The value decoded but bytes were left over: the two sides disagree on
    /// the type.
    #[error("{0} bytes left over after decoding: the two sides disagree on the type")]
    TrailingBytes(usize),
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(CodecError::Encode)
}

/// Decodes a whole value from `bytes`; every byte must be used.
///
/// A length inside the bytes (of a string, a byte buffer) is believed only
/// up to a limit scaled to the input: without one, a 9-byte payload claiming
/// a 2^62-byte string makes bincode try to allocate it and abort the process.
/// Through serde, bincode counts at most 16 bytes (a `u128`) per byte it
/// reads, so a limit of 16 x the input never refuses a real value; it is
/// rounded up to one of a few compile-time limits.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let need = bytes.len().saturating_mul(16);
    let (value, used) = if need <= 1 << 12 {
        decode_within::<T, { 1 << 12 }>(bytes)
    } else if need <= 1 << 16 {
        decode_within::<T, { 1 << 16 }>(bytes)
    } else if need <= 1 << 20 {
        decode_within::<T, { 1 << 20 }>(bytes)
    } else if need <= 1 << 24 {
        decode_within::<T, { 1 << 24 }>(bytes)
    } else if need <= 1 << 28 {
        decode_within::<T, { 1 << 28 }>(bytes)
    } else {
        decode_within::<T, { LARGEST_LIMIT }>(bytes)
    }
    .map_err(CodecError::Decode)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// 16 x the largest possible frame (4 GiB) on 64-bit targets.
#[cfg(target_pointer_width = "64")]
const LARGEST_LIMIT: usize = 1 << 36;
#[cfg(not(target_pointer_width = "64"))]
const LARGEST_LIMIT: usize = 1 << 31;

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config().with_limit::<LIMIT>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let mut out = Vec::new();
        encode_into(&("abc".to_string(), 7u64), &mut out).expect("encodes");
        let back: (String, u64) = decode(&out).expect("decodes");
        assert_eq!(back, ("abc".to_string(), 7));
        out.push(0);
        let err = decode::<(String, u64)>(&out).expect_err("trailing byte");
        assert!(matches!(err, CodecError::TrailingBytes(1)), "{err:?}");
    }

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating() {
        // A string claiming 2^62 bytes: varint tag 253 then a u64.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let err = decode::<String>(&bytes).expect_err("refused");
        assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    }

    #[test]
    fn values_that_claim_more_than_they_encode_still_decode() {
        // u128s encode as one byte each but claim 16.
        let values: Vec<u128> = vec![1; 10_000];
        let mut out = Vec::new();
        encode_into(&values, &mut out).expect("encodes");
        assert_eq!(decode::<Vec<u128>>(&out).expect("decodes"), values);
        let text = "x".repeat(1 << 20);
        let mut out = Vec::new();
        encode_into(&text, &mut out).expect("encodes");
        assert_eq!(decode::<String>(&out).expect("decodes"), text);
    }

    #[test]
    fn wrong_type_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode_into(&u8::MAX, &mut out).expect("encodes");
        assert!(decode::<String>(&out).is_err());
    }
}
