//! What travels through the server: task messages (headers + the task's
//! bytes), the copy of each task kept for resuming clients, and outcome
//! records. One module, so the format is in one place.
//!
//! A task message carries the protocol version and the task type in its
//! headers, readable whatever the body's layout: an agent of another version
//! or task type refuses it with a clear outcome instead of decoding garbage.
//! Stored values begin with a fixed 16-byte prefix for the same reason:
//! `WFNO`, the protocol word (u32, little-endian) and the task type's
//! fingerprint (u64, little-endian). Bodies are encoded by
//! `worker_facade::codec` (bincode 2, or postcard 1 with worker-facade's
//! `postcard` feature), as between a local facade and its workers; the
//! protocol word names the codec in its high byte and the version in the
//! rest, so that an agent or client built with the other codec refuses by
//! name instead of decoding garbage.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use worker_facade::{Outcome, Task, codec};

/// The version of this crate's messages. Agents and clients of other
/// versions refuse each other's tasks with a clear outcome.
pub const PROTOCOL_VERSION: u32 = 1;

/// What task messages and stored values carry as their protocol: the
/// version in the low 24 bits, the codec's number in the high 8.
pub(crate) const PROTOCOL_WORD: u32 = PROTOCOL_VERSION | (codec::ID as u32) << 24;

/// A protocol word in words: "protocol 1, postcard 1".
pub(crate) fn describe_protocol(word: u32) -> String {
    let codec = match word >> 24 {
        0 => "bincode 2".to_string(),
        1 => "postcard 1".to_string(),
        other => format!("codec #{other}"),
    };
    format!("protocol {}, {codec}", word & 0x00ff_ffff)
}

/// Whether `word` differs from ours in its codec alone.
pub(crate) fn only_the_codec_differs(word: u32) -> bool {
    word != PROTOCOL_WORD && word & 0x00ff_ffff == PROTOCOL_VERSION
}

const MAGIC: &[u8; 4] = b"WFNO";
const PREFIX_LEN: usize = 16;

pub(crate) const H_MSG_ID: &str = "Nats-Msg-Id";
const H_PROTOCOL: &str = "Wf-Protocol";
const H_TASK_TYPE: &str = "Wf-Task-Type";
const H_FINGERPRINT: &str = "Wf-Fingerprint";
const H_JOB: &str = "Wf-Job";
const H_TASK: &str = "Wf-Task";
const H_DEADLINE: &str = "Wf-Deadline-Ms";

/// Room kept for the headers when checking a task against the server's
/// maximum payload.
pub(crate) const HEADER_ALLOWANCE: usize = 1024;

/// Who a task type is: its name and a stable hash of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskType {
    pub(crate) name: String,
    pub(crate) fingerprint: u64,
}

impl TaskType {
    /// `name`, or the Rust type names of `T` and its output.
    pub(crate) fn of<T: Task>(name: Option<&str>) -> Self {
        let name = match name {
            Some(name) => name.to_string(),
            None => format!(
                "{} -> {}",
                std::any::type_name::<T>(),
                std::any::type_name::<T::Output>()
            ),
        };
        let fingerprint = fnv1a(name.as_bytes());
        TaskType { name, fingerprint }
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The headers of a task message, as an agent reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskMeta {
    pub(crate) job: String,
    pub(crate) id: u64,
    pub(crate) protocol: u32,
    pub(crate) task_type: String,
    pub(crate) fingerprint: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) deadline_ms: Option<u64>,
}

impl TaskMeta {
    /// The message ID the server deduplicates publishes by.
    pub(crate) fn msg_id(&self) -> String {
        format!("{}.{}", self.job, self.id)
    }

    /// The headers of this task's message.
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_MSG_ID, self.msg_id().as_str());
        h.insert(H_PROTOCOL, self.protocol.to_string().as_str());
        h.insert(H_TASK_TYPE, self.task_type.as_str());
        h.insert(H_FINGERPRINT, format!("{:016x}", self.fingerprint).as_str());
        h.insert(H_JOB, self.job.as_str());
        h.insert(H_TASK, self.id.to_string().as_str());
        if let Some(ms) = self.deadline_ms {
            h.insert(H_DEADLINE, ms.to_string().as_str());
        }
        h
    }

    /// Reads the headers of a task message. The job and task number are
    /// enough to record an outcome; the rest is checked by the caller.
    pub(crate) fn from_headers(h: Option<&HeaderMap>) -> Result<Self, String> {
        let h = h.ok_or("the message has no headers")?;
        let get = |name: &str| {
            h.get(name)
                .map(|v| v.as_str().to_string())
                .ok_or(format!("the message has no {name} header"))
        };
        let job = get(H_JOB)?;
        let id = get(H_TASK)?
            .parse()
            .map_err(|e| format!("bad {H_TASK} header: {e}"))?;
        // Version and type are read leniently: a bad one is a mismatch,
        // reported as such, not a message without a home.
        let protocol = get(H_PROTOCOL)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let task_type = get(H_TASK_TYPE).unwrap_or_default();
        let fingerprint = get(H_FINGERPRINT)
            .ok()
            .and_then(|f| u64::from_str_radix(&f, 16).ok())
            .unwrap_or(0);
        let deadline_ms = get(H_DEADLINE).ok().and_then(|d| d.parse().ok());
        Ok(TaskMeta {
            job,
            id,
            protocol,
            task_type,
            fingerprint,
            deadline_ms,
        })
    }
}

/// A task as kept in the bucket for a resuming client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredTask {
    pub(crate) deadline_ms: Option<u64>,
    /// One byte string, not a sequence of bytes: the same bytes on the wire
    /// in both codecs, written and read in one piece.
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
}

/// An outcome as recorded in the bucket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredOutcome<O> {
    /// The agent that recorded it (or `client` for a client's deadline).
    pub(crate) agent: String,
    /// Which delivery of the task this was (1 for the first).
    pub(crate) attempt: u32,
    pub(crate) outcome: Outcome<O>,
}

/// Why stored bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not a worker-facade-nats record (no WFNO prefix)")]
    NotOurs,
    #[error(
        "written with {}, this program reads {}: run agents and clients of the same \
         worker-facade-nats version, built with the same worker-facade codec",
        describe_protocol(*found),
        describe_protocol(PROTOCOL_WORD)
    )]
    Protocol { found: u32 },
    #[error("written for another task type (fingerprint {found:016x}, expected {expected:016x})")]
    TaskType { found: u64, expected: u64 },
    #[error("undecodable body: {0}")]
    Body(String),
}

/// The bytes of a task's body.
pub(crate) fn encode_task<T: Serialize>(task: &T) -> Result<Vec<u8>, String> {
    codec::encode(task).map_err(|e| e.to_string())
}

/// A task's body decoded.
pub(crate) fn decode_task<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_body(bytes).map_err(|e| e.to_string())
}

/// `value` behind the prefix for `fingerprint`.
pub(crate) fn encode_stored<V: Serialize>(fingerprint: u64, value: &V) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&PROTOCOL_WORD.to_le_bytes());
    out.extend_from_slice(&fingerprint.to_le_bytes());
    let body = codec::encode(value).map_err(|e| e.to_string())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// A stored value, checked against the protocol and `fingerprint` first.
pub(crate) fn decode_stored<V: DeserializeOwned>(
    fingerprint: u64,
    bytes: &[u8],
) -> Result<V, DecodeError> {
    let (prefix, body) = bytes
        .split_at_checked(PREFIX_LEN)
        .ok_or(DecodeError::NotOurs)?;
    if &prefix[..4] != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&prefix[4..8]);
    let protocol = u32::from_le_bytes(word);
    if protocol != PROTOCOL_WORD {
        return Err(DecodeError::Protocol { found: protocol });
    }
    let mut long = [0u8; 8];
    long.copy_from_slice(&prefix[8..16]);
    let found = u64::from_le_bytes(long);
    if found != fingerprint {
        return Err(DecodeError::TaskType {
            found,
            expected: fingerprint,
        });
    }
    decode_body(body)
}

/// A body decoded; a length inside it is never believed beyond the bytes
/// there are (the codec's guarantee).
fn decode_body<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, DecodeError> {
    codec::decode(bytes).map_err(|e| DecodeError::Body(e.to_string()))
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker_facade::simple::SimpleTask;
    use worker_facade::{NotRunReason, Outcome};

    #[test]
    fn headers_round_trip() {
        let meta = TaskMeta {
            job: "j-1".into(),
            id: 7,
            protocol: PROTOCOL_WORD,
            task_type: "t".into(),
            fingerprint: 0xdead_beef,
            deadline_ms: Some(123),
        };
        let back = TaskMeta::from_headers(Some(&meta.headers())).expect("decodes");
        assert_eq!(back, meta);
        assert_eq!(meta.msg_id(), "j-1.7");
    }

    #[test]
    fn stored_outcome_checks_protocol_and_type() {
        let ty = TaskType::of::<SimpleTask>(None);
        let rec = StoredOutcome::<String> {
            agent: "a".into(),
            attempt: 1,
            outcome: Outcome::Completed("ok".into()),
        };
        let bytes = encode_stored(ty.fingerprint, &rec).expect("encodes");
        let back: StoredOutcome<String> = decode_stored(ty.fingerprint, &bytes).expect("decodes");
        assert_eq!(back.outcome, Outcome::Completed("ok".into()));
        assert!(matches!(
            decode_stored::<StoredOutcome<String>>(ty.fingerprint ^ 1, &bytes),
            Err(DecodeError::TaskType { .. })
        ));
        let mut old = bytes.clone();
        old[4] = 9;
        assert_eq!(
            decode_stored::<StoredOutcome<String>>(ty.fingerprint, &old).err(),
            Some(DecodeError::Protocol {
                found: PROTOCOL_WORD & !0xff | 9
            })
        );
        // Written by a program built with the other codec: refused by name.
        let mut other = bytes.clone();
        other[7] ^= 1;
        let err = decode_stored::<StoredOutcome<String>>(ty.fingerprint, &other)
            .expect_err("another codec");
        assert!(matches!(err, DecodeError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("bincode 2"), "{err}");
        assert!(err.to_string().contains("postcard 1"), "{err}");
        assert_eq!(
            decode_stored::<StoredOutcome<String>>(ty.fingerprint, b"garbage").err(),
            Some(DecodeError::NotOurs)
        );
        assert!(matches!(
            decode_stored::<StoredOutcome<String>>(ty.fingerprint, &bytes[..20]),
            Err(DecodeError::Body(_))
        ));
    }

    #[test]
    fn a_not_run_outcome_reads_whatever_the_output_type() {
        // An agent refusing a task of another type writes NotRun with its own
        // output type; the client reads it with its own.
        let rec = StoredOutcome::<Vec<u64>> {
            agent: "a".into(),
            attempt: 1,
            outcome: Outcome::NotRun(NotRunReason::DeadlineExpired),
        };
        let bytes = encode_stored(5, &rec).expect("encodes");
        let back: StoredOutcome<String> = decode_stored(5, &bytes).expect("decodes");
        assert_eq!(back.outcome, Outcome::NotRun(NotRunReason::DeadlineExpired));
    }

    #[test]
    fn the_protocol_word_names_the_codec() {
        assert_eq!(
            describe_protocol(PROTOCOL_WORD),
            format!("protocol {PROTOCOL_VERSION}, {}", codec::NAME)
        );
        assert!(only_the_codec_differs(PROTOCOL_WORD ^ 1 << 24));
        assert!(!only_the_codec_differs(PROTOCOL_WORD));
        assert!(!only_the_codec_differs(PROTOCOL_WORD + 1));
    }

    #[test]
    fn a_stored_task_is_the_same_bytes_as_before_its_payload_became_a_byte_string() {
        // The layout of `StoredTask` when its payload was a plain Vec<u8>.
        #[derive(Serialize)]
        struct Plain {
            deadline_ms: Option<u64>,
            payload: Vec<u8>,
        }
        let payload = vec![1, 2, 3, 255];
        let now = StoredTask {
            deadline_ms: Some(5),
            payload: payload.clone(),
        };
        assert_eq!(
            codec::encode(&now).expect("encodes"),
            codec::encode(&Plain {
                deadline_ms: Some(5),
                payload
            })
            .expect("encodes")
        );
    }

    #[test]
    fn fingerprints_differ_by_type_and_are_stable() {
        assert_ne!(
            TaskType::of::<SimpleTask>(None).fingerprint,
            TaskType::of::<SimpleTask>(Some("other")).fingerprint
        );
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
