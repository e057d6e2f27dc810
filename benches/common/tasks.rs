//! The tasks the benchmarks send: the tiny task and byte blobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_facade::Task;

/// A tiny task whose first payload byte is this blocks its worker forever
/// (until it is killed): the task running when `kill -9` hits.
pub(crate) const BLOCK: u8 = 0xB1;

/// The tiny task: `{id: u64, payload: [u8; 16]}`, with a small
/// result (a `u64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tiny {
    pub(crate) id: u64,
    pub(crate) payload: [u8; 16],
}

impl Task for Tiny {
    type Output = u64;
}

impl Tiny {
    pub(crate) fn new(id: u64) -> Self {
        Tiny {
            id,
            payload: [7; 16],
        }
    }

    /// A task that never finishes: its worker runs it until killed.
    pub(crate) fn blocking(id: u64) -> Self {
        let mut t = Tiny::new(id);
        t.payload[0] = BLOCK;
        t
    }
}

/// The work of a tiny task, the same in the facade's worker and in the raw
/// child.
pub(crate) fn solve_tiny(t: &Tiny) -> u64 {
    if t.payload[0] == BLOCK {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    t.id.wrapping_mul(3) ^ u64::from(t.payload[15])
}

/// Bytes as one serde byte string (what `serde_bytes` does), so bincode
/// copies them in one go instead of one `u8` at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Blob {
    pub(crate) id: u64,
    #[serde(with = "as_bytes")]
    pub(crate) data: Vec<u8>,
}

impl Task for Blob {
    type Output = u64;
}

/// The same bytes as a plain `Vec<u8>`: serde sees a sequence of `u8`, the
/// way most users first write it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BlobSeq {
    pub(crate) id: u64,
    pub(crate) data: Vec<u8>,
}

impl Task for BlobSeq {
    type Output = u64;
}

/// `#[serde(with)]` helpers: a `Vec<u8>` as a byte string.
mod as_bytes {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// A CPU-bound task: its worker spins for `micros` microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spin {
    pub(crate) micros: u64,
}

impl Task for Spin {
    type Output = u64;
}

/// Busy work for `t.micros` µs (no sleeping: it uses a CPU throughout).
pub(crate) fn solve_spin(t: &Spin) -> u64 {
    let until = std::time::Instant::now() + Duration::from_micros(t.micros);
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}
