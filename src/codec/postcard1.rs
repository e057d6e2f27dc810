//! The postcard 1 backend (the `postcard` feature): a maintained format
//! with a documented wire specification.
//!
//! Postcard checks every length inside the bytes against the bytes that are
//! left before it takes them, so a short input claiming a huge string or
//! byte buffer is refused without allocating; a huge sequence count gets
//! serde's own cautious preallocation (at most 1 MiB) before the bytes run
//! out. No size-scaled limit is needed here.
//!
//! Postcard keeps no text for a `Serialize` or `Deserialize` impl's own
//! error; the guard keeps the first, `recover` the second.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Failure;
use super::recover::Failed;

pub(super) const NAME: &str = "postcard 1";
pub(super) const ID: u8 = 1;

pub(super) fn encode_into<T: Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<(), Failure> {
    postcard::serialize_with_flavor(value, Append(out)).map_err(|e| encode_failure(&e))
}

/// Decodes a value from the start of `bytes`; returns it and how many bytes
/// it used.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), Failure> {
    match super::recover::decode::<T>(bytes) {
        Ok((value, rest)) => Ok((value, bytes.len() - rest.len())),
        Err(Failed::Custom(message)) => Err(Failure::Plain(format!(
            "its Deserialize returned an error: {message}"
        ))),
        Err(Failed::Codec(e)) => Err(decode_failure(&e)),
    }
}

/// The same as [`decode`]: postcard needs no limit (see the module's docs).
pub(super) fn decode_unlimited<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), Failure> {
    decode(bytes)
}

/// Appends to a caller's writer (postcard's own `Vec` flavors own their
/// buffer). A writer with no more room is postcard's full buffer.
struct Append<W>(W);

impl<W: std::io::Write> postcard::ser_flavors::Flavor for Append<W> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0
            .write_all(data)
            .map_err(|_| postcard::Error::SerializeBufferFull)
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn encode_failure(e: &postcard::Error) -> Failure {
    use postcard::Error as E;
    match e {
        E::SerializeSeqLengthUnknown => {
            Failure::Plain("a sequence or map of unknown length".into())
        }
        other => Failure::Plain(other.to_string()),
    }
}

fn decode_failure(e: &postcard::Error) -> Failure {
    use postcard::Error as E;
    match e {
        // Postcard answers deserialize_any, deserialize_identifier and
        // deserialize_ignored_any alike.
        E::WontImplement => Failure::AskedAny,
        E::DeserializeUnexpectedEnd => {
            Failure::Plain("the bytes ended before the value did".into())
        }
        E::DeserializeBadUtf8 => Failure::Plain("a string is not valid UTF-8".into()),
        E::DeserializeBadVarint => Failure::Plain(
            "a length or integer inside the bytes is not a valid varint (or is too large)".into(),
        ),
        other => Failure::Plain(other.to_string()),
    }
}
