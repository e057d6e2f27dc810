//! The wire format between the parent and a worker.
//!
//! Every message is one frame: a little-endian `u32` length, then that many
//! bytes of body. The body's first byte is the message kind; task-related
//! messages follow it with the task ID as a little-endian `u64`, then the
//! payload encoded by [`crate::codec`].
//!
//! ```text
//! frame   = len:u32le body[len]
//! body    = kind:u8 rest
//! BOOT    = 0x20 magic:u32le protocol:u32le token[16] options   parent -> worker, first
//! TASK    = 0x01 id:u64le payload      parent -> worker
//! TASK_AT = 0x05 id:u64le offset:u64le len:u64le   parent -> worker: the
//!                                      payload is in the task region (`region.rs`)
//! STOP    = 0x02                       parent -> worker (the terminator)
//! CANCEL  = 0x03                       parent -> worker: start nothing more, exit
//! CANCEL_TASK = 0x04 id:u64le          parent -> worker: do not start this task
//! HELLO   = 0x10 magic:u32le protocol:u32le pid:u32le token[16] crate_version
//! STARTED = 0x11 id:u64le              worker -> parent, before decoding a task
//! OK      = 0x12 id:u64le payload      worker -> parent
//! OK_STARTED = 0x19 id:u64le payload next:u64le   worker -> parent: OK,
//!                                      and it started task `next` (a STARTED
//!                                      for it, in the same frame)
//! ERR     = 0x13 id:u64le utf8-message worker -> parent: the handler failed
//! UNDECODABLE = 0x14 id:u64le utf8-message  worker -> parent: the task did not decode
//! SKIPPED = 0x16 id:u64le              worker -> parent: cancelled, not started
//! PROGRESS = 0x17 id:u64le payload     worker -> parent: the running task's report
//! WAKE    = 0x18                       worker -> parent, on the socket: the
//!                                      result ring has news (`ring.rs`)
//! NOT_SERVING = 0x15                   worker -> parent, instead of HELLO: the
//!                                      program made a facade instead of serving
//! ```
//!
//! `protocol` is [`PROTOCOL_VERSION`] in its low 24 bits and the codec's
//! [`codec::ID`](crate::codec::ID) in its high 8 (0 for bincode 2, 1 for
//! postcard 1), so that a worker built with the other codec is refused by
//! name instead of decoding garbage.
//!
//! The connection is a socket pair made before the worker is spawned; the
//! worker inherits its end as a descriptor whose number is in the
//! environment variable `WORKER_FACADE_FD`. The parent's BOOT is queued on
//! the socket before the worker runs, so it never blocks and never meets a
//! closed pipe.
//!
//! A reader checks the length against its maximum frame size *before*
//! allocating anything, so a hostile or broken peer cannot make the other
//! side allocate what a frame claims.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Marks the start of a worker-facade handshake ("WFAC").
pub(crate) const MAGIC: u32 = 0x5746_4143;
/// The version of the wire format and codec; bumped on every incompatible
/// change. A worker must speak the same version as its parent.
pub const PROTOCOL_VERSION: u32 = 5;
/// The largest handshake frame (a HELLO with its type shapes) a parent
/// reads, whatever the maximum frame size.
pub(crate) const HANDSHAKE_MAX: u32 = 64 * 1024;
/// What the handshake carries as `protocol`: the version and the codec.
pub(crate) const PROTOCOL_WORD: u32 = PROTOCOL_VERSION | (crate::codec::ID as u32) << 24;

/// A handshake's `protocol` split into the protocol version and the codec.
pub(crate) fn split_protocol_word(word: u32) -> (u32, u8) {
    (word & 0x00ff_ffff, (word >> 24) as u8)
}

/// The name of the codec numbered `id` on the wire.
pub(crate) fn codec_name(id: u8) -> String {
    match id {
        0 => "bincode 2".into(),
        1 => "postcard 1".into(),
        other => format!("codec #{other}"),
    }
}

/// The default maximum frame size: 64 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Length of the one-time token that authenticates the worker's connection.
pub(crate) const TOKEN_LEN: usize = 16;

pub(crate) const KIND_TASK: u8 = 0x01;
pub(crate) const KIND_STOP: u8 = 0x02;
pub(crate) const KIND_CANCEL: u8 = 0x03;
pub(crate) const KIND_CANCEL_TASK: u8 = 0x04;
pub(crate) const KIND_TASK_AT: u8 = 0x05;
pub(crate) const KIND_HELLO: u8 = 0x10;
pub(crate) const KIND_STARTED: u8 = 0x11;
pub(crate) const KIND_OK: u8 = 0x12;
pub(crate) const KIND_ERR: u8 = 0x13;
pub(crate) const KIND_UNDECODABLE: u8 = 0x14;
pub(crate) const KIND_NOT_SERVING: u8 = 0x15;
pub(crate) const KIND_SKIPPED: u8 = 0x16;
pub(crate) const KIND_PROGRESS: u8 = 0x17;
/// On the worker's socket: "the ring has news" (only while the parent is
/// parked; see `ring.rs`).
pub(crate) const KIND_WAKE: u8 = 0x18;
/// An OK whose last 8 bytes name the task the worker started as it sent
/// it: a stream's worker says "done, and started the next" in one frame,
/// not two (see [`mark_next_started`]).
pub(crate) const KIND_OK_STARTED: u8 = 0x19;
pub(crate) const KIND_BOOT: u8 = 0x20;

/// A frame could not be read. Reported inside the reason of the outcome of
/// a task whose worker sent it (the worker is then killed), or by
/// [`worker::WorkerError`](crate::worker::WorkerError) on the worker's side.
///
/// ```
/// use worker_facade::WireError;
/// let err = WireError::TooLarge { len: 1 << 30, max: 64 << 20 };
/// assert_eq!(
///     err.to_string(),
///     "frame of 1073741824 bytes exceeds the maximum frame size of 67108864 bytes \
///      (WorkerCommand::max_frame_size)"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The underlying read or write failed.
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// A frame claimed more bytes than the maximum frame size
    /// ([`WorkerCommand::max_frame_size`](crate::WorkerCommand::max_frame_size)).
    #[error(
        "frame of {len} bytes exceeds the maximum frame size of {max} bytes \
         (WorkerCommand::max_frame_size)"
    )]
    TooLarge {
        /// The length the frame claimed.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The frame's content does not follow the protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// One decoded frame, borrowing its body from the reader's buffer.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: u8,
    /// Everything after the kind byte.
    pub(crate) rest: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits a task-related frame into its ID and payload.
    pub(crate) fn id_and_payload(&self) -> Result<(u64, &'a [u8]), WireError> {
        if self.rest.len() < 8 {
            return Err(WireError::Malformed(format!(
                "kind {:#04x} needs an 8-byte task ID, got {} bytes",
                self.kind,
                self.rest.len()
            )));
        }
        let (id, payload) = self.rest.split_at(8);
        let id = u64::from_le_bytes(id.try_into().map_err(|_| bad("task ID"))?);
        Ok((id, payload))
    }
}

fn bad(what: &str) -> WireError {
    WireError::Malformed(format!("could not read {what}"))
}

/// Appends a frame of `kind` with `id` and a payload that `fill` writes.
///
/// The length is patched in after `fill` ran, so the payload is encoded
/// straight into `out` with no intermediate buffer. On error `out` is left as
/// it was.
pub(crate) fn push_frame<E>(
    out: &mut Vec<u8>,
    kind: u8,
    id: Option<u64>,
    max: u32,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), PushError<E>> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    if let Err(e) = fill(out) {
        out.truncate(start);
        return Err(PushError::Fill(e));
    }
    let body = out.len() - start - 4;
    match u32::try_from(body) {
        Ok(len) if len <= max => {
            out[start..start + 4].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(PushError::TooLarge { len: body, max })
        }
    }
}

/// Turns the OK frame that starts at `at` in `out`, and ends it, into an
/// OK_STARTED naming `next`: the worker is about to start `next`, and its
/// STARTED travels in the result's frame. `false`, and `out` unchanged, if
/// the bytes from `at` are not one whole OK frame, or the longer frame
/// would exceed `max`: the worker then sends a STARTED of its own.
pub(crate) fn mark_next_started(out: &mut Vec<u8>, at: usize, next: u64, max: u32) -> bool {
    let Some(frame) = out.get(at..) else {
        return false;
    };
    let (Some(word), Some(&KIND_OK)) = (frame.first_chunk::<4>(), frame.get(4)) else {
        return false;
    };
    let body = u32::from_le_bytes(*word);
    if 4 + body as usize != frame.len() || frame.len() < FRAME_HEADER {
        return false;
    }
    let Some(len) = body.checked_add(8).filter(|&len| len <= max) else {
        return false;
    };
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4] = KIND_OK_STARTED;
    out.extend_from_slice(&next.to_le_bytes());
    true
}

/// Sets the task ID of a frame made by [`push_frame`] with an ID.
pub(crate) fn set_frame_id(frame: &mut [u8], id: u64) {
    if let Some(slot) = frame.get_mut(5..13) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
}

/// The length, header included, of the frame at the start of `bytes`: one
/// of this process's own (a frame read from a peer goes through
/// [`FrameReader`], which checks it). Never beyond `bytes`.
pub(crate) fn own_frame_len(bytes: &[u8]) -> usize {
    match bytes.first_chunk::<4>() {
        Some(word) => (4 + u32::from_le_bytes(*word) as usize).min(bytes.len()),
        None => bytes.len(),
    }
}

/// The header of a frame made by [`push_frame`] with an ID: length, kind
/// and ID.
pub(crate) const FRAME_HEADER: usize = 4 + 1 + 8;

/// The payload of a frame made by [`push_frame`] with an ID (after its
/// header).
pub(crate) fn frame_payload(frame: &[u8]) -> &[u8] {
    frame
        .get(FRAME_HEADER..own_frame_len(frame))
        .unwrap_or_default()
}

/// The task ID of a frame made by [`push_frame`] with an ID.
pub(crate) fn frame_id(frame: &[u8]) -> Option<u64> {
    let id = frame.get(5..13)?;
    Some(u64::from_le_bytes(id.try_into().ok()?))
}

/// Why [`push_frame`] refused a frame.
#[derive(Debug)]
pub(crate) enum PushError<E> {
    Fill(E),
    TooLarge { len: usize, max: u32 },
}

/// Appends a frame with no payload.
pub(crate) fn push_bare(out: &mut Vec<u8>, kind: u8, id: Option<u64>) {
    out.extend_from_slice(&(1 + if id.is_some() { 8u32 } else { 0 }).to_le_bytes());
    out.push(kind);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Appends a frame `kind id payload` whose size the caller has bounded.
pub(crate) fn push_bare_with(out: &mut Vec<u8>, kind: u8, id: u64, payload: &[u8]) {
    out.extend_from_slice(&((1 + 8 + payload.len()) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a TASK_AT frame: task `id`'s payload is the `len` bytes at
/// `offset` in the task region.
pub(crate) fn push_task_at(out: &mut Vec<u8>, id: u64, offset: u64, len: u64) {
    let mut at = [0u8; 16];
    at[..8].copy_from_slice(&offset.to_le_bytes());
    at[8..].copy_from_slice(&len.to_le_bytes());
    push_bare_with(out, KIND_TASK_AT, id, &at);
}

/// The offset and length a TASK_AT frame's payload names.
pub(crate) fn task_at(payload: &[u8]) -> Result<(u64, u64), WireError> {
    let bytes: [u8; 16] = payload.try_into().map_err(|_| {
        WireError::Malformed(format!("TASK_AT needs 16 bytes, got {}", payload.len()))
    })?;
    let (offset, len) = bytes.split_at(8);
    let word = |b: &[u8]| {
        b.try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| bad("TASK_AT"))
    };
    Ok((word(offset)?, word(len)?))
}

/// Reads frames from a byte stream, buffering so that many small frames cost
/// one `read` call.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: u32,
    /// Calls to `shrink` left before an oversized buffer is given back: a
    /// stream of large frames keeps its buffer instead of reallocating (and
    /// zero-filling) it for every frame.
    shrink_after: u32,
    /// Length of the last frame returned.
    last_frame: usize,
    /// Stream offset of the next byte `next_frame` will return.
    consumed: u64,
    /// Stream offset up to which whole frames were shown by
    /// [`Self::scan_buffered`].
    scanned: u64,
}

/// What [`FrameReader::try_next_frame`] found.
#[derive(Debug)]
pub(crate) enum Next<'a> {
    Frame(Frame<'a>),
    /// Not a whole frame yet: the stream has nothing more to read now.
    Pending,
    /// A clean end of stream, between frames.
    End,
}

enum Fill {
    Ready,
    Pending,
    Ended,
}

const READ_CHUNK: usize = 64 * 1024;
/// Small frames in a row after which a buffer grown for a large one is freed.
const SHRINK_AFTER: u32 = 64;

impl<R: Read> FrameReader<R> {
    /// Changes the maximum frame size for the frames still to come (the
    /// handshake's frames may be larger than a tiny user limit).
    pub(crate) fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    pub(crate) fn new(inner: R, max: u32) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max,
            shrink_after: SHRINK_AFTER,
            last_frame: 0,
            consumed: 0,
            scanned: 0,
        }
    }

    /// The stream it reads.
    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream, and the reader gone.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Whether a whole frame is already buffered, so that [`Self::next_frame`]
    /// will not touch the stream.
    pub(crate) fn has_buffered_frame(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        match header_len(avail) {
            Some(len) => avail.len() - 4 >= len as usize,
            None => false,
        }
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream between
    /// frames; an end of stream inside a frame is [`WireError::Truncated`].
    /// On a non-blocking stream with too few bytes, the error is an
    /// [`io::ErrorKind::WouldBlock`]: use [`Self::try_next_frame`] there.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        match self.try_next_frame()? {
            Next::Frame(frame) => Ok(Some(frame)),
            Next::End => Ok(None),
            Next::Pending => Err(WireError::Io(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Like [`Self::next_frame`], for a non-blocking stream: reads what is
    /// there, and says [`Next::Pending`] when a frame is not whole yet. What
    /// was read stays buffered for the next call.
    pub(crate) fn try_next_frame(&mut self) -> Result<Next<'_>, WireError> {
        match self.fill_to(4)? {
            Fill::Ready => {}
            Fill::Pending => return Ok(Next::Pending),
            Fill::Ended => {
                return match self.end - self.start {
                    0 => Ok(Next::End),
                    got => Err(WireError::Truncated { got, want: 4 }),
                };
            }
        }
        let len = header_len(&self.buf[self.start..self.end]).ok_or_else(|| bad("frame length"))?;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(WireError::Malformed("empty frame".into()));
        }
        let want = 4 + len as usize;
        match self.fill_to(want)? {
            Fill::Ready => {}
            Fill::Pending => return Ok(Next::Pending),
            Fill::Ended => {
                return Err(WireError::Truncated {
                    got: self.end - self.start,
                    want,
                });
            }
        }
        let body = &self.buf[self.start + 4..self.start + want];
        self.start += want;
        self.consumed += want as u64;
        self.last_frame = want;
        Ok(Next::Frame(Frame {
            kind: body[0],
            rest: &body[1..],
        }))
    }

    /// Blocks until a whole frame is buffered (`Ok(true)`), or the stream
    /// ended cleanly (`Ok(false)`), without taking the frame: a caller can
    /// look at everything buffered (with [`Self::scan_buffered`]) before it
    /// acts on the next frame. Errors are those of [`Self::next_frame`].
    pub(crate) fn wait_for_frame(&mut self) -> Result<bool, WireError> {
        match self.fill_to(4)? {
            Fill::Ready => {}
            Fill::Pending => return Err(WireError::Io(io::ErrorKind::WouldBlock.into())),
            Fill::Ended if self.end == self.start => return Ok(false),
            Fill::Ended => {
                return Err(WireError::Truncated {
                    got: self.end - self.start,
                    want: 4,
                });
            }
        }
        let len = header_len(&self.buf[self.start..self.end]).ok_or_else(|| bad("frame length"))?;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        let want = 4 + len as usize;
        match self.fill_to(want.max(5))? {
            Fill::Ready => Ok(true),
            Fill::Pending => Err(WireError::Io(io::ErrorKind::WouldBlock.into())),
            // next_frame reports it.
            Fill::Ended => Ok(true),
        }
    }

    /// Makes sure `n` bytes are buffered. Grows the buffer only as far as
    /// `n`, which the caller bounds by the maximum frame size.
    fn fill_to(&mut self, n: usize) -> Result<Fill, WireError> {
        if self.end - self.start >= n {
            return Ok(Fill::Ready);
        }
        self.compact();
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        while self.end < n {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(Fill::Ended),
                Ok(got) => self.end += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Pending),
                // A peer that dies with our data unread makes Linux reset the
                // connection instead of closing it: that is its end, not a
                // protocol fault.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Fill::Ended),
                Err(e) => return Err(WireError::Io(e)),
            }
        }
        Ok(Fill::Ready)
    }

    /// Moves the unread bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Adds to the buffer whatever `read` gives in one call (for a worker
    /// looking ahead without blocking: `read` is a `MSG_DONTWAIT` receive).
    /// Returns how many bytes came; `Ok(0)` also when the buffer is full.
    pub(crate) fn read_ahead(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.compact();
        if self.end == self.buf.len() {
            return Ok(0);
        }
        let got = read(&mut self.buf[self.end..])?;
        self.end += got.min(self.buf.len() - self.end);
        Ok(got)
    }

    /// Shows `visit` each whole frame that is buffered and was not shown
    /// before (the next one included): its kind and the rest of its body.
    /// Each buffered byte is looked at once over the reader's life, however
    /// often this is called; the frames stay buffered for `next_frame`.
    pub(crate) fn scan_buffered(&mut self, mut visit: impl FnMut(u8, &[u8])) {
        let base = self.consumed - self.start as u64; // stream offset of buf[0]
        let mut at = (self.scanned.max(self.consumed) - base) as usize;
        while let Some(len) = self.buf.get(at..self.end).and_then(header_len) {
            let len = len as usize;
            if len == 0 || len > self.max as usize || at + 4 + len > self.end {
                break;
            }
            visit(self.buf[at + 4], &self.buf[at + 5..at + 4 + len]);
            at += 4 + len;
        }
        self.scanned = base + at as u64;
    }

    /// Releases memory held for a large frame once no bytes are buffered
    /// and no large frame has come for a while. Call after each frame.
    pub(crate) fn shrink(&mut self) {
        if self.buf.len() <= 4 * READ_CHUNK {
            return;
        }
        if self.last_frame > READ_CHUNK || self.end - self.start > READ_CHUNK {
            self.shrink_after = SHRINK_AFTER; // large frames are coming
            return;
        }
        self.shrink_after = self.shrink_after.saturating_sub(1);
        if self.shrink_after == 0 && self.start == self.end {
            self.buf = vec![0; READ_CHUNK];
            self.start = 0;
            self.end = 0;
            self.shrink_after = SHRINK_AFTER;
        }
    }
}

fn header_len(avail: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = avail.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// What the parent tells a new worker, as the first frame on its socket,
/// before anything else. It never travels on argv or in the environment.
///
/// The token comes first in a fixed layout, so that a worker of any
/// protocol version can answer and report its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bootstrap {
    /// One-time token the worker echoes in its HELLO.
    pub(crate) token: [u8; TOKEN_LEN],
    /// Everything else, encoded with the codec.
    pub(crate) options: WorkerOptions,
}

/// Settings the worker applies to itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WorkerOptions {
    /// The maximum frame size, both directions.
    pub(crate) max_frame: u32,
    /// The parent's PID.
    pub(crate) parent_pid: u32,
    /// Whether the worker may write core dumps (sets `RLIMIT_CORE` to 0 when not).
    pub(crate) core_dumps: bool,
    /// An address-space limit (`RLIMIT_AS`) for the worker, in bytes.
    pub(crate) memory_limit: Option<u64>,
    /// Whether the worker marks in its stdout and stderr where each task
    /// starts ([`OUTPUT_MARK`]), so that each line is attributed to the task
    /// that printed it.
    pub(crate) mark_output: bool,
}

/// Starts the line a worker writes to its stdout and stderr when a task
/// starts (with `mark_output`): `\x1fWF:<task id>\x1f\n`. Everything
/// before it in the pipe was written before the task started.
pub(crate) const OUTPUT_MARK: &[u8] = b"\x1fWF:";

/// Encodes the bootstrap frame: `BOOT magic protocol token[16] options`.
pub(crate) fn encode_bootstrap(boot: &Bootstrap) -> Result<Vec<u8>, crate::codec::CodecError> {
    let mut body = vec![KIND_BOOT];
    body.extend_from_slice(&MAGIC.to_le_bytes());
    body.extend_from_slice(&PROTOCOL_WORD.to_le_bytes());
    body.extend_from_slice(&boot.token);
    crate::codec::encode_into(&boot.options, &mut body)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A decoded BOOT frame: the parent's protocol word, the token (readable
/// whatever the version), and the options when version and codec match.
#[derive(Debug)]
pub(crate) struct BootFrame {
    pub(crate) protocol: u32,
    pub(crate) token: [u8; TOKEN_LEN],
    pub(crate) options: Option<WorkerOptions>,
}

pub(crate) fn decode_bootstrap(frame: &Frame<'_>) -> Result<BootFrame, WireError> {
    let r = frame.rest;
    let fixed = 8 + TOKEN_LEN;
    if frame.kind != KIND_BOOT || r.len() < fixed {
        return Err(WireError::Malformed("expected a bootstrap frame".into()));
    }
    let word = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
    if word(0) != MAGIC {
        return Err(WireError::Malformed(format!("bad magic {:#x}", word(0))));
    }
    let protocol = word(4);
    let mut token = [0; TOKEN_LEN];
    token.copy_from_slice(&r[8..fixed]);
    let options = if protocol == PROTOCOL_WORD {
        Some(
            crate::codec::decode(&r[fixed..])
                .map_err(|e| WireError::Malformed(format!("bootstrap options: {e}")))?,
        )
    } else {
        None
    };
    Ok(BootFrame {
        protocol,
        token,
        options,
    })
}

/// The worker's first message on the socket. Its layout is fixed for every
/// protocol version so that any two versions can tell each other apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) pid: u32,
    pub(crate) token: [u8; TOKEN_LEN],
    pub(crate) crate_version: String,
    /// The worker's task and output types, after the version and a NUL
    /// (since protocol 3; a hand-made HELLO may leave them out).
    pub(crate) types: Option<crate::types::Signature>,
}

pub(crate) fn push_hello(out: &mut Vec<u8>, hello: &Hello) {
    let mut types = Vec::new();
    if let Some(sig) = &hello.types {
        types.push(0);
        sig.encode_into(&mut types);
    }
    let body = 1 + 4 + 4 + 4 + TOKEN_LEN + hello.crate_version.len() + types.len();
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.push(KIND_HELLO);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&hello.protocol.to_le_bytes());
    out.extend_from_slice(&hello.pid.to_le_bytes());
    out.extend_from_slice(&hello.token);
    out.extend_from_slice(hello.crate_version.as_bytes());
    out.extend_from_slice(&types);
}

pub(crate) fn decode_hello(frame: &Frame<'_>) -> Result<Hello, WireError> {
    let r = frame.rest;
    if frame.kind != KIND_HELLO || r.len() < 12 + TOKEN_LEN {
        return Err(WireError::Malformed(format!(
            "expected a HELLO frame, got kind {:#04x} with {} bytes",
            frame.kind,
            r.len()
        )));
    }
    let word = |at: usize| -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            r[at..at + 4].try_into().map_err(|_| bad("handshake"))?,
        ))
    };
    if word(0)? != MAGIC {
        return Err(WireError::Malformed("HELLO with a bad magic value".into()));
    }
    let mut token = [0; TOKEN_LEN];
    token.copy_from_slice(&r[12..12 + TOKEN_LEN]);
    let tail = &r[12 + TOKEN_LEN..];
    let (version, types) = match tail.iter().position(|&b| b == 0) {
        Some(nul) => {
            let types = crate::types::Signature::decode(&tail[nul + 1..])
                .ok_or_else(|| WireError::Malformed("HELLO with malformed type shapes".into()))?;
            (&tail[..nul], Some(types))
        }
        None => (tail, None),
    };
    Ok(Hello {
        protocol: word(4)?,
        pid: word(8)?,
        token,
        crate_version: String::from_utf8_lossy(version).into_owned(),
        types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8], max: u32) -> Result<Vec<(u8, Vec<u8>)>, WireError> {
        let mut r = FrameReader::new(bytes, max);
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push((f.kind, f.rest.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn only_a_whole_ok_frame_at_the_end_takes_the_next_tasks_start() {
        let ok = |out: &mut Vec<u8>, id| {
            push_frame(out, KIND_OK, Some(id), 64, |o| {
                o.extend_from_slice(b"out");
                Ok::<_, ()>(())
            })
            .map_err(|_| "push")
            .expect("fits");
        };
        // An OK, the last frame: it says the next task started too.
        let mut out = Vec::new();
        push_bare(&mut out, KIND_PROGRESS, Some(1));
        let at = out.len();
        ok(&mut out, 1);
        assert!(mark_next_started(&mut out, at, 2, 64));
        let frames = read_all(&out, 64).expect("reads");
        assert_eq!(frames[1].0, KIND_OK_STARTED);
        let mut want = 1u64.to_le_bytes().to_vec();
        want.extend_from_slice(b"out");
        want.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(frames[1].1, want);
        // Not when a frame follows it, nor at a frame that is no OK, nor
        // past the end, nor when the longer frame would be too large.
        let mut out = Vec::new();
        ok(&mut out, 1);
        push_bare(&mut out, KIND_SKIPPED, Some(2));
        let before = out.clone();
        assert!(!mark_next_started(&mut out, 0, 3, 64));
        assert!(!mark_next_started(&mut out, 16, 3, 64), "the SKIPPED");
        let past = out.len() + 5;
        assert!(!mark_next_started(&mut out, past, 3, 64));
        assert_eq!(out, before, "unchanged");
        let mut out = Vec::new();
        ok(&mut out, 1);
        let before = out.clone();
        assert!(
            !mark_next_started(&mut out, 0, 2, 19),
            "a body of 12 + 8 bytes > 19"
        );
        assert_eq!(out, before, "unchanged");
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        push_frame(&mut out, KIND_TASK, Some(9), 1024, |o| {
            crate::codec::encode_into(&"hi", o)
        })
        .map_err(|_| "push")
        .expect("fits");
        push_bare(&mut out, KIND_STOP, None);
        let frames = read_all(&out, 1024).expect("reads");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, KIND_TASK);
        assert_eq!(&frames[0].1[..8], &9u64.to_le_bytes());
        assert_eq!(frames[1], (KIND_STOP, vec![]));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let claim = u32::MAX.to_le_bytes();
        let err = read_all(&claim, 1024).expect_err("too large");
        assert!(matches!(
            err,
            WireError::TooLarge {
                len: u32::MAX,
                max: 1024
            }
        ));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut out = Vec::new();
        push_bare(&mut out, KIND_STARTED, Some(1));
        out.pop();
        assert!(matches!(
            read_all(&out, 1024),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            read_all(&out[..2], 1024),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn push_frame_refuses_over_max_and_leaves_buffer_intact() {
        let mut out = vec![1, 2, 3];
        let r = push_frame(&mut out, KIND_TASK, Some(1), 16, |o| {
            o.extend_from_slice(&[0; 64]);
            Ok::<(), ()>(())
        });
        assert!(matches!(r, Err(PushError::TooLarge { .. })));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn bootstrap_round_trips() {
        let boot = Bootstrap {
            token: [3; TOKEN_LEN],
            options: WorkerOptions {
                max_frame: 1024,
                parent_pid: 1,
                core_dumps: false,
                memory_limit: Some(1 << 30),
                mark_output: true,
            },
        };
        let bytes = encode_bootstrap(&boot).expect("encodes");
        let mut r = FrameReader::new(&bytes[..], 4096);
        let frame = r.next_frame().expect("reads").expect("one frame");
        let back = decode_bootstrap(&frame).expect("decodes");
        assert_eq!(back.protocol, PROTOCOL_WORD);
        assert_eq!(back.token, boot.token);
        assert_eq!(back.options, Some(boot.options));
    }

    #[test]
    fn the_protocol_word_carries_the_codec_and_another_codec_gets_no_options() {
        assert_eq!(
            split_protocol_word(PROTOCOL_WORD),
            (PROTOCOL_VERSION, crate::codec::ID)
        );
        assert_eq!(codec_name(crate::codec::ID), crate::codec::NAME);
        let boot = Bootstrap {
            token: [3; TOKEN_LEN],
            options: WorkerOptions {
                max_frame: 1024,
                parent_pid: 1,
                core_dumps: false,
                memory_limit: None,
                mark_output: false,
            },
        };
        let mut bytes = encode_bootstrap(&boot).expect("encodes");
        // The high byte of the protocol word (after len, kind and magic).
        bytes[4 + 1 + 4 + 3] ^= 1;
        let mut r = FrameReader::new(&bytes[..], 4096);
        let frame = r.next_frame().expect("reads").expect("one frame");
        let back = decode_bootstrap(&frame).expect("the fixed part decodes");
        assert_eq!(
            split_protocol_word(back.protocol),
            (PROTOCOL_VERSION, crate::codec::ID ^ 1)
        );
        assert_eq!(back.token, boot.token);
        assert_eq!(back.options, None, "options in another codec are not read");
    }

    #[test]
    fn hello_round_trips() {
        let hello = Hello {
            protocol: PROTOCOL_WORD,
            pid: 77,
            token: [5; TOKEN_LEN],
            crate_version: "0.1.0".into(),
            types: None,
        };
        let typed = Hello {
            types: Some((*crate::types::Signature::of::<crate::simple::SimpleTask>()).clone()),
            ..hello.clone()
        };
        for hello in [hello, typed] {
            let mut out = Vec::new();
            push_hello(&mut out, &hello);
            let mut r = FrameReader::new(&out[..], 1024);
            let frame = r.next_frame().expect("reads").expect("one frame");
            assert_eq!(decode_hello(&frame).expect("decodes"), hello);
        }
    }

    // Decoder fuzzing (issue 3, item 9): arbitrary bytes, cut into arbitrary
    // reads, never make the frame reader panic, return a frame above its
    // maximum, or grow its buffer beyond the maximum frame size.

    /// Hands out `data` in reads of the sizes in `sizes` (cycled), sometimes
    /// interrupted; refuses to be read at all while `forbidden` is set.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
        interrupt: bool,
        forbidden: bool,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.forbidden {
                return Err(io::Error::other("read while a whole frame was buffered"));
            }
            self.turn += 1;
            if self.interrupt && self.turn % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let size = self.sizes[self.turn % self.sizes.len()];
            let n = size.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn chunked(data: Vec<u8>, sizes: Vec<usize>, interrupt: bool) -> Chunked {
        Chunked {
            data,
            at: 0,
            sizes,
            turn: 0,
            interrupt,
            forbidden: false,
        }
    }

    /// Small maxima, maxima around the read chunk, and a large one.
    fn any_max() -> impl Strategy<Value = u32> {
        prop_oneof![
            1u32..80,
            (READ_CHUNK as u32 - 8)..(READ_CHUNK as u32 + 8),
            Just(1u32 << 20),
        ]
    }

    /// Bytes that are mostly frames, some well-formed and some not.
    fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            // Raw noise.
            proptest::collection::vec(any::<u8>(), 0..40),
            // A frame whose length may or may not match its body.
            (
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..60),
                -2i64..3
            )
                .prop_map(|(kind, body, skew)| {
                    let len = (1 + body.len() as i64 + skew).max(0) as u32;
                    let mut out = len.to_le_bytes().to_vec();
                    out.push(kind);
                    out.extend_from_slice(&body);
                    out
                }),
            // A bare header claiming anything.
            any::<u32>().prop_map(|len| len.to_le_bytes().to_vec()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 512,
            // Keep the source tree clean: no regression files next to it.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic_or_exceed_the_maximum(
            data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), frame_soup()],
            sizes in proptest::collection::vec(1usize..70, 1..6),
            interrupt in any::<bool>(),
            max in any_max(),
        ) {
            let total = data.len();
            let mut r = FrameReader::new(chunked(data, sizes, interrupt), max);
            // Each call consumes at least one byte, or ends the stream.
            for _ in 0..=total {
                let whole = r.has_buffered_frame();
                r.inner.forbidden = whole;
                let limit = READ_CHUNK.max(4 + max as usize);
                match r.next_frame() {
                    Ok(Some(frame)) => {
                        // The kind byte and the rest fit the maximum.
                        prop_assert!(frame.rest.len() < max as usize);
                        // The decoders built on a frame never panic either.
                        let _ = frame.id_and_payload();
                        let _ = decode_hello(&frame);
                        let _ = decode_bootstrap(&frame);
                    }
                    Ok(None) => {
                        prop_assert!(!whole);
                        break;
                    }
                    Err(WireError::Io(e)) => {
                        prop_assert!(!whole, "read the stream with a frame buffered: {}", e);
                        prop_assert!(false, "unexpected I/O error: {}", e);
                    }
                    Err(WireError::TooLarge { len, max: m }) => {
                        prop_assert_eq!(m, max);
                        prop_assert!(len > max);
                        break;
                    }
                    Err(WireError::Truncated { got, want }) => {
                        prop_assert!(!whole);
                        prop_assert!(got < want && want <= 4 + max as usize);
                        break;
                    }
                    Err(WireError::Malformed(_)) => break,
                }
                prop_assert!(r.buf.len() <= limit, "buffer of {} bytes", r.buf.len());
                r.inner.forbidden = false;
                r.shrink();
            }
            prop_assert!(r.buf.len() <= READ_CHUNK.max(4 + max as usize));
        }

        #[test]
        fn well_formed_frames_round_trip_in_any_chunking(
            frames in proptest::collection::vec(
                (any::<u8>(), proptest::option::of(any::<u64>()),
                 proptest::collection::vec(any::<u8>(), 0..100)),
                0..12,
            ),
            sizes in proptest::collection::vec(1usize..50, 1..6),
            interrupt in any::<bool>(),
        ) {
            let max = 128;
            let mut bytes = Vec::new();
            for (kind, id, payload) in &frames {
                push_frame(&mut bytes, *kind, *id, max, |out| {
                    out.extend_from_slice(payload);
                    Ok::<(), ()>(())
                })
                .map_err(|_| "push")
                .expect("fits the maximum");
            }
            let mut r = FrameReader::new(chunked(bytes, sizes, interrupt), max);
            for (kind, id, payload) in &frames {
                let frame = r.next_frame().expect("reads").expect("a frame");
                prop_assert_eq!(frame.kind, *kind);
                let mut rest = id.map(u64::to_le_bytes).map(Vec::from).unwrap_or_default();
                rest.extend_from_slice(payload);
                prop_assert_eq!(frame.rest, &rest[..]);
            }
            prop_assert!(r.next_frame().expect("clean end").is_none());
        }

        #[test]
        fn arbitrary_frames_never_panic_the_decoders(
            kind in prop_oneof![Just(KIND_HELLO), Just(KIND_BOOT), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let frame = Frame { kind, rest: &rest };
            let _ = frame.id_and_payload();
            let _ = decode_hello(&frame);
            let _ = decode_bootstrap(&frame);
        }
    }
}
