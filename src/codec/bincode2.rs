//! The bincode 2 backend (the default): serde, the standard configuration
//! (little-endian, variable-length integers).
//!
//! Bincode believes a length inside the bytes (of a string, a byte buffer)
//! and allocates it before reading it, unless a limit says otherwise: a
//! 9-byte payload claiming a 2^62-byte string would make it try to allocate
//! that and abort the process. Every decode therefore runs under a limit
//! scaled to the input. Through serde, bincode counts at most 16 bytes (a
//! `u128`) per byte it reads, so a limit of 16 x the input never refuses a
//! real value; it is rounded up to one of a few compile-time limits.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Failure;

pub(super) const NAME: &str = "bincode 2";
pub(super) const ID: u8 = 0;

/// The configuration both sides use. Changing it is a protocol change:
/// bump [`crate::wire::PROTOCOL_VERSION`].
const fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(super) fn encode_into<T: Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<(), Failure> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| encode_failure(&e))
}

/// Decodes a value from the start of `bytes`; returns it and how many bytes
/// it used.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), Failure> {
    let need = bytes.len().saturating_mul(16);
    if need <= 1 << 12 {
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
    .map_err(|e| decode_failure(&e))
}

/// Decodes a value from the start of `bytes` believing every length in
/// them: only for a type with none (`codec::Limit::Off`).
pub(super) fn decode_unlimited<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), Failure> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| decode_failure(&e))
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

fn encode_failure(e: &bincode::error::EncodeError) -> Failure {
    use bincode::error::EncodeError as E;
    match e {
        E::Serde(bincode::serde::EncodeError::SequenceMustHaveLength) => {
            Failure::Plain("a sequence or map of unknown length".into())
        }
        E::OtherString(text) => Failure::Plain(text.clone()),
        other => Failure::Plain(format!("{other:?}")),
    }
}

fn decode_failure(e: &bincode::error::DecodeError) -> Failure {
    use bincode::error::DecodeError as E;
    use bincode::serde::DecodeError as S;
    match e {
        E::Serde(S::AnyNotSupported) => Failure::AskedAny,
        E::Serde(S::IdentifierNotSupported | S::IgnoredAnyNotSupported) => Failure::AskedNames,
        E::UnexpectedEnd { additional } => Failure::Plain(format!(
            "the bytes ended {additional} byte(s) before the value did"
        )),
        E::LimitExceeded => {
            Failure::Plain("a length inside the bytes claims more than the input can hold".into())
        }
        E::Utf8 { .. } => Failure::Plain("a string is not valid UTF-8".into()),
        E::OtherString(text) => {
            Failure::Plain(format!("its Deserialize returned an error: {text}"))
        }
        other => Failure::Plain(format!("{other:?}")),
    }
}
