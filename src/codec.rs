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

/// A value could not be encoded or decoded.
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
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(CodecError::Decode)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
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
    fn wrong_type_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode_into(&u8::MAX, &mut out).expect("encodes");
        assert!(decode::<String>(&out).is_err());
    }
}
