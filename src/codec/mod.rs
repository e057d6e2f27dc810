//! The codec: how a task and its output become bytes on the wire.
//!
//! Tasks and outputs travel as [serde] values in a compact binary format:
//! **bincode 2** by default, or **postcard 1** with the crate's `postcard`
//! feature (bincode is unmaintained, RUSTSEC-2025-0141; postcard is
//! maintained and has a documented wire format). With both features on,
//! postcard is used; to leave bincode out of the build altogether, use
//! `default-features = false, features = ["postcard"]`. The parent and its
//! workers must use the same codec: the handshake checks it, and a worker
//! built with the other one is refused with
//! [`SpawnError::CodecMismatch`](crate::SpawnError::CodecMismatch) instead
//! of decoding garbage. [`NAME`] says which one this build uses.
//!
//! Everything the library serialises goes through this module, so the codec
//! is one module's business; none of the codec crates' types is part of the
//! API. [`encode`] and [`decode`] are public so that you can check, in your
//! own tests, that your task and output types survive the trip:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use worker_facade::codec;
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Resize { path: String, width: u32 }
//!
//! let task = Resize { path: "a.png".into(), width: 64 };
//! let bytes = codec::encode(&task)?;
//! assert_eq!(codec::decode::<Resize>(&bytes)?, task);
//! # Ok::<(), worker_facade::CodecError>(())
//! ```
//!
//! # Byte blobs: use `serde_bytes`
//!
//! A plain `Vec<u8>` (or `[u8; N]`, `&[u8]`) goes through serde as a
//! sequence, one call per byte, in every serde format; here that made a
//! 1 MiB payload about 13 times slower than the same bytes sent as one byte
//! string. Mark byte fields with [`serde_bytes`](https://docs.rs/serde_bytes)
//! (or use `serde_bytes::ByteBuf`) and they are written and read in one
//! piece:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Thumbnail {
//!     name: String,
//!     #[serde(with = "serde_bytes")]
//!     png: Vec<u8>,
//! }
//!
//! impl worker_facade::Task for Thumbnail {
//!     type Output = serde_bytes::ByteBuf; // a byte blob back, in one piece too
//! }
//! # let t = Thumbnail { name: "a".into(), png: vec![7; 3] };
//! # let back: Thumbnail = worker_facade::codec::decode(&worker_facade::codec::encode(&t)?)?;
//! # assert_eq!(back.png, t.png);
//! # Ok::<(), worker_facade::CodecError>(())
//! ```
//!
//! # Serde attributes that do not work, and can corrupt data
//!
//! Both codecs are *not self-describing*: a struct is its fields' values one
//! after the other, by position, with no names, no count and no type tags.
//! Attributes that make a type's shape depend on the data, or that look at
//! the data to decide what it is, do not work in task and output types:
//!
//! - `#[serde(skip_serializing_if = "...")]` **corrupts data rather than
//!   failing**: the field is left out, so the other side reads the next
//!   field's bytes in its place, and can decode wrong values without any
//!   error. This module refuses to encode such a value
//!   ([`CodecError::Unsupported`], naming the field); remove the attribute
//!   (a `None` costs one byte).
//! - `#[serde(flatten)]` writes a map of unknown length: refused when
//!   encoding, with the attribute named.
//! - `#[serde(untagged)]` enums, internally and adjacently tagged enums
//!   (`#[serde(tag = "...")]`), and types that decode through
//!   `deserialize_any` (such as `serde_json::Value`) encode without
//!   complaint but cannot be decoded: the worker reports the task
//!   [`NotRun`](crate::Outcome::NotRun) with
//!   [`Undecodable`](crate::NotRunReason::Undecodable) (or, for an output,
//!   the parent reports it [`Failed`](crate::Outcome::Failed)), with a text
//!   naming the likely attribute. Use serde's default, externally tagged
//!   enums.
//! - `#[serde(skip_serializing)]` without `skip_deserializing` on the same
//!   field is silent corruption too, and cannot be detected: skip a field on
//!   both sides (`#[serde(skip)]`) or on neither.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use worker_facade::{CodecError, codec};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Job {
//!     #[serde(skip_serializing_if = "Option::is_none")]
//!     note: Option<String>,
//!     size: u64,
//! }
//!
//! let err = codec::encode(&Job { note: None, size: 7 }).unwrap_err();
//! assert!(matches!(err, CodecError::Unsupported { attribute: "#[serde(skip_serializing_if)]", .. }));
//! assert!(err.to_string().contains("field `note` of `Job`"));
//! ```
//!
//! # Hostile bytes
//!
//! [`decode`] never allocates what a length inside the bytes claims beyond
//! what the input can hold (bincode runs under a limit scaled to the input,
//! postcard checks each length against the bytes left), so a few bytes
//! claiming a string of 2^62 bytes are an error, not an abort.
//!
//! Inside the library, bincode's limit is skipped where a type holds no
//! length at all (no string, byte buffer, sequence or map anywhere in its
//! serde shape, as traced for the handshake's type check): by a worker for
//! its tasks, and by the parent for outputs only when the output's type is
//! std's alone (integers, floats, `bool`, `char`, options, tuples, arrays),
//! which no bytes can lead into reading a length. The limit counts every
//! byte it reads, so this makes a small task's decode two to three times
//! as fast. A type with `SHAPE_CHECK` off is never traced and keeps it.

use serde::Serialize;
use serde::de::DeserializeOwned;

mod guard;

#[cfg(not(any(feature = "bincode", feature = "postcard")))]
compile_error!(
    "worker-facade needs a wire codec: enable its `bincode` feature (the default) or its \
     `postcard` feature"
);

#[cfg(all(feature = "bincode", not(feature = "postcard")))]
mod bincode2;
#[cfg(all(feature = "bincode", not(feature = "postcard")))]
use bincode2 as backend;
#[cfg(feature = "postcard")]
mod postcard1;
#[cfg(feature = "postcard")]
use postcard1 as backend;
#[cfg(feature = "postcard")]
mod recover;

/// The codec this build uses: `"bincode 2"`, or `"postcard 1"` with the
/// `postcard` feature.
///
/// ```
/// assert!(["bincode 2", "postcard 1"].contains(&worker_facade::codec::NAME));
/// ```
pub const NAME: &str = backend::NAME;

/// The number that names [`NAME`] on the wire (in the handshake, and in
/// `worker-facade-nats` messages): 0 for bincode 2, 1 for postcard 1.
///
/// ```
/// use worker_facade::codec;
/// assert_eq!(codec::ID == 1, codec::NAME == "postcard 1");
/// ```
pub const ID: u8 = backend::ID;

/// A value could not be encoded or decoded.
///
/// It reaches you inside outcome texts (a task whose bytes do not decode
/// in the worker is [`NotRun`](crate::Outcome::NotRun) with
/// [`Undecodable`](crate::NotRunReason::Undecodable), a result that does
/// not decode in the parent [`Failed`](crate::Outcome::Failed)), in
/// [`SubmitError::Unencodable`](crate::SubmitError::Unencodable), and from
/// [`encode`] and [`decode`]. It is this crate's own type: no codec crate's
/// type appears in it.
///
/// ```
/// use worker_facade::CodecError;
/// let err = CodecError::TrailingBytes(3);
/// assert!(err.to_string().contains("disagree on the type"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The type uses a serde attribute that a format that is not
    /// self-describing cannot carry (see the [module docs](self)). The text
    /// names the field or the value, and says what to change.
    #[error("{detail}")]
    Unsupported {
        /// The attribute that is the likely cause, as written in the
        /// source: `"#[serde(skip_serializing_if)]"`, `"#[serde(flatten)]"`
        /// or `"#[serde(untagged)]"`.
        attribute: &'static str,
        /// What happened, where, and what to do.
        detail: String,
    },
    /// Serialisation failed: the type's `Serialize` returned an error, or
    /// wrote something the codec cannot carry (a sequence of unknown
    /// length, for example).
    #[error("could not encode the value with {NAME}: {detail}")]
    Encode {
        /// What went wrong.
        detail: String,
    },
    /// The bytes did not decode as the expected type: the worker and the
    /// parent disagree on the task or output type, or the bytes are damaged.
    #[error(
        "could not decode the value with {NAME}: {detail}; the worker and the parent may disagree \
         on the type (build both from the same source, with the same worker-facade features), or \
         the bytes are damaged"
    )]
    Decode {
        /// What went wrong.
        detail: String,
    },
    /// The value decoded but bytes were left over: the two sides disagree
    /// on the type.
    #[error(
        "{0} bytes left over after decoding: the worker and the parent disagree on the type \
         (build both from the same source, with the same worker-facade features)"
    )]
    TrailingBytes(usize),
}

/// What a backend says went wrong, before it becomes a [`CodecError`].
#[derive(Debug)]
enum Failure {
    Plain(String),
    /// The type called `deserialize_any`.
    AskedAny,
    /// The type read a struct as a map (`deserialize_identifier`,
    /// `deserialize_ignored_any`). Postcard does not tell this apart.
    #[cfg_attr(feature = "postcard", allow(dead_code))]
    AskedNames,
}

impl Failure {
    fn into_encode_error(self) -> CodecError {
        match self {
            Failure::Plain(detail) => CodecError::Encode { detail },
            // Only decoders ask; keep the text if one ever comes here.
            other => other.into_decode_error(),
        }
    }

    fn into_decode_error(self) -> CodecError {
        match self {
            Failure::Plain(detail) => CodecError::Decode { detail },
            Failure::AskedAny => CodecError::Unsupported {
                attribute: "#[serde(untagged)]",
                detail: format!(
                    "could not decode the value: the type asks {NAME} what kind of value comes \
                     next (serde's deserialize_any), which a format that is not self-describing \
                     cannot tell; the likely cause is #[serde(untagged)] on an enum (internally \
                     tagged enums, #[serde(tag = \"...\")], and #[serde(flatten)] need it too): \
                     use serde's default, externally tagged enums in task and output types"
                ),
            },
            Failure::AskedNames => CodecError::Unsupported {
                attribute: "#[serde(flatten)]",
                detail: format!(
                    "could not decode the value: the type reads a struct as a map of named \
                     fields, which {NAME} cannot (it writes no names); the likely cause is \
                     #[serde(flatten)]: nest the struct instead of flattening it in task and \
                     output types"
                ),
            },
        }
    }
}

impl From<guard::Refusal> for CodecError {
    fn from(refusal: guard::Refusal) -> Self {
        match refusal {
            guard::Refusal::Attribute { attribute, detail } => CodecError::Unsupported {
                attribute,
                detail: format!("could not encode the value: {detail}"),
            },
            guard::Refusal::UnknownLength(detail) => CodecError::Encode { detail },
            guard::Refusal::Custom(text) => CodecError::Encode {
                detail: format!("its Serialize returned an error: {text}"),
            },
        }
    }
}

/// Encodes `value` as the wire does.
///
/// # Errors
///
/// [`CodecError::Unsupported`] for a serde attribute the codec cannot
/// carry (see the [module docs](self)), [`CodecError::Encode`] when the
/// value's `Serialize` fails.
///
/// ```
/// let bytes = worker_facade::codec::encode(&("abc", 7u32))?;
/// assert!(!bytes.is_empty());
/// # Ok::<(), worker_facade::CodecError>(())
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out`. On error `out` may hold part
/// of it: the caller truncates.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    encode_to(value, out)
}

/// Writes the encoding of `value` to `out`, in as few writes as the codec
/// makes (a byte string is one). On error `out` may hold part of it.
pub(crate) fn encode_to<T: Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<(), CodecError> {
    let slot = guard::Slot::new(None);
    let result = backend::encode_into(&guard::Checked::new(value, &slot, NAME), out);
    // A refusal wins even if the value's Serialize swallowed the error: the
    // bytes would be wrong.
    if let Some(refusal) = slot.take() {
        return Err(refusal.into());
    }
    result.map_err(Failure::into_encode_error)
}

/// Decodes a whole value from `bytes`; every byte must be used.
///
/// A length inside the bytes (of a string, a byte buffer, a sequence) is
/// never believed beyond what the input can hold.
///
/// # Errors
///
/// [`CodecError::Decode`] when the bytes are not a `T`,
/// [`CodecError::TrailingBytes`] when bytes are left over, and
/// [`CodecError::Unsupported`] when `T` uses a serde attribute that needs
/// a self-describing format.
///
/// ```
/// use worker_facade::{CodecError, codec};
/// let bytes = codec::encode(&7u8)?;
/// assert_eq!(codec::decode::<u8>(&bytes)?, 7);
/// assert!(matches!(codec::decode::<(u8, u8)>(&bytes), Err(CodecError::Decode { .. })));
/// # Ok::<(), CodecError>(())
/// ```
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, Limit::Input)
}

/// Whether a decode believes a length inside the bytes only as far as the
/// input can hold (see [`decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// As [`decode`] does.
    Input,
    /// Not at all: only for a type whose shape holds no length to believe
    /// (`types::Lengths`), so that nothing is allocated from the bytes
    /// either way. bincode counts every byte it reads against its limit,
    /// which makes a small struct's decode two to three times as slow.
    Off,
}

/// [`decode`] under `limit`.
pub(crate) fn decode_with<T>(bytes: &[u8], limit: Limit) -> Result<T, CodecError>
where
    T: DeserializeOwned,
{
    let decoded = match limit {
        Limit::Input => backend::decode::<T>(bytes),
        Limit::Off => backend::decode_unlimited::<T>(bytes),
    };
    let (value, used) = decoded.map_err(Failure::into_decode_error)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
