//! The queue: accepted tasks not yet sent to a worker, in order.
//!
//! A task arrives as its frame (TASK, or TASK_AT for one in the task
//! region; made by `wire::push_frame` on the submitter's thread, so its
//! length words are trusted) and leaves as the same frame. While it waits,
//! a small frame is kept packed, without its 13-byte header: a varint of
//! twice its payload's length (plus one when its kind is not TASK, whose
//! byte then follows), a varint of its ID's step from the frame before
//! it, then the payload. Packed frames lie back
//! to back in chunks of about [`CHUNK`] bytes, so a queued tiny task costs
//! its encoding and two bytes (a backlog of a million tiny tasks is a
//! third smaller than as whole frames), with no allocation or pointer of
//! its own. The header is written again, into one reused buffer, as the
//! frame is taken. A frame of a chunk's size or more keeps a buffer to
//! itself, whole, moved in and out without a copy.
//!
//! A task settled while it waits (cancelled) keeps its place here; the
//! engine skips a frame whose task the ledger no longer holds.

use std::collections::VecDeque;

use crate::wire;

/// Bytes of packed frames gathered in one chunk.
const CHUNK: usize = 64 * 1024;

/// The most bytes a packed frame's head takes: two varints and a kind.
const PACKED_HEAD: usize = 3 + 1 + 10;

#[derive(Default)]
pub(crate) struct Queue {
    chunks: VecDeque<Chunk>,
    /// Frames in the queue.
    frames: usize,
    /// The frame last taken from a packed chunk, its header written again.
    taken: Vec<u8>,
    /// An emptied chunk's buffer, for the next chunk: a stream's backlog
    /// is not freed and faulted in again chunk by chunk.
    spare: Option<Vec<u8>>,
}

enum Chunk {
    Packed(Packed),
    /// One frame, whole.
    Whole(Vec<u8>),
}

/// Small frames, packed (see the module docs).
struct Packed {
    bytes: Vec<u8>,
    /// Where its first frame not yet taken starts.
    at: usize,
    /// The ID of the frame before the one at `at` (the first frame's step
    /// is from its own ID: 0).
    front_prev: u64,
    /// The ID of its last frame.
    back_prev: u64,
}

/// A frame taken from the queue: borrowed from the queue, or the buffer
/// the frame had to itself.
pub(crate) enum Taken<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

#[cfg(test)]
impl Taken<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Taken::Borrowed(b) => b,
            Taken::Owned(v) => v,
        }
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at the start of `bytes`, and its length. The bytes are the
/// queue's own, so a malformed one (never written) reads as 0.
fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return (v, i + 1);
        }
    }
    (0, bytes.len().min(10))
}

impl Packed {
    fn new(mut bytes: Vec<u8>, id: u64) -> Self {
        bytes.clear();
        Packed {
            bytes,
            at: 0,
            front_prev: id,
            back_prev: id,
        }
    }

    fn push(&mut self, kind: u8, id: u64, payload: &[u8]) {
        let word = (payload.len() as u64) << 1;
        if kind == wire::KIND_TASK {
            push_varint(&mut self.bytes, word);
        } else {
            push_varint(&mut self.bytes, word | 1);
            self.bytes.push(kind);
        }
        push_varint(&mut self.bytes, id.wrapping_sub(self.back_prev));
        self.bytes.extend_from_slice(payload);
        self.back_prev = id;
    }

    /// The front frame: its kind, its ID, and where its payload lies.
    fn front(&self) -> (u8, u64, std::ops::Range<usize>) {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let (word, mut a) = read_varint(rest);
        let mut kind = wire::KIND_TASK;
        if word & 1 == 1 {
            kind = rest.get(a).copied().unwrap_or(kind);
            a += 1;
        }
        let (step, b) = read_varint(rest.get(a..).unwrap_or_default());
        let start = (self.at + a + b).min(self.bytes.len());
        let end = start
            .saturating_add(usize::try_from(word >> 1).unwrap_or(usize::MAX))
            .min(self.bytes.len());
        (kind, self.front_prev.wrapping_add(step), start..end)
    }

    fn is_spent(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.frames
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Appends one frame.
    pub(crate) fn push_back(&mut self, frame: &[u8]) {
        if frame.len() >= CHUNK {
            self.push_back_owned(frame.to_vec());
            return;
        }
        self.frames += 1;
        let kind = frame.get(4).copied().unwrap_or(wire::KIND_TASK);
        let id = wire::frame_id(frame).unwrap_or(u64::MAX);
        let payload = wire::frame_payload(frame);
        match self.chunks.back_mut() {
            Some(Chunk::Packed(p)) if p.bytes.len() + PACKED_HEAD + payload.len() <= CHUNK => {
                p.push(kind, id, payload);
            }
            _ => {
                let bytes = self
                    .spare
                    .take()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                let mut p = Packed::new(bytes, id);
                p.push(kind, id, payload);
                self.chunks.push_back(Chunk::Packed(p));
            }
        }
    }

    /// Appends one large frame that comes in a buffer of its own.
    pub(crate) fn push_back_owned(&mut self, frame: Vec<u8>) {
        self.frames += 1;
        self.chunks.push_back(Chunk::Whole(frame));
    }

    /// Puts `count` frames, back to back in `frames`, at the front, in
    /// their order (tasks a dead worker never started).
    pub(crate) fn push_front(&mut self, frames: Vec<u8>, count: usize) {
        if count == 0 {
            return;
        }
        let mut front = Queue {
            spare: self.spare.take(),
            ..Queue::default()
        };
        let mut at = 0;
        for _ in 0..count {
            let rest = frames.get(at..).unwrap_or_default();
            let len = wire::own_frame_len(rest);
            if len == 0 {
                break;
            }
            front.push_back(&rest[..len]);
            at += len;
        }
        self.frames += front.frames;
        self.spare = front.spare;
        for chunk in front.chunks.into_iter().rev() {
            self.chunks.push_front(chunk);
        }
    }

    /// The ID and length (header included) of the front frame.
    pub(crate) fn front(&self) -> Option<(u64, usize)> {
        match self.chunks.front()? {
            Chunk::Whole(v) => Some((wire::frame_id(v).unwrap_or(u64::MAX), v.len())),
            Chunk::Packed(p) => {
                let (_, id, payload) = p.front();
                Some((id, wire::FRAME_HEADER + payload.len()))
            }
        }
    }

    /// Takes the front frame.
    pub(crate) fn pop_front(&mut self) -> Option<Taken<'_>> {
        let Chunk::Packed(p) = self.chunks.front_mut()? else {
            self.frames -= 1;
            return match self.chunks.pop_front() {
                Some(Chunk::Whole(v)) => Some(Taken::Owned(v)),
                _ => None,
            };
        };
        self.frames -= 1;
        let (kind, id, payload) = p.front();
        self.taken.clear();
        wire::push_bare_with(&mut self.taken, kind, id, &p.bytes[payload.clone()]);
        p.at = payload.end;
        p.front_prev = id;
        if p.is_spent() {
            if let Some(Chunk::Packed(p)) = self.chunks.pop_front() {
                if p.bytes.capacity() == CHUNK {
                    self.spare = Some(p.bytes);
                }
            }
        }
        Some(Taken::Borrowed(&self.taken))
    }

    /// Every frame's task ID, and the queue emptied.
    pub(crate) fn drain_ids(&mut self) -> Vec<u64> {
        let mut ids = Vec::with_capacity(self.frames);
        while let Some((id, _)) = self.front() {
            ids.push(id);
            self.pop_front();
        }
        ids
    }

    /// Drops the frames at the front whose task `live` says is gone,
    /// telling `dropped` each one's ID.
    pub(crate) fn prune(&mut self, live: impl Fn(u64) -> bool, mut dropped: impl FnMut(u64)) {
        while let Some((id, _)) = self.front() {
            if live(id) {
                return;
            }
            self.pop_front();
            dropped(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        wire::push_bare_with(&mut out, wire::KIND_TASK, id, &vec![id as u8; payload]);
        out
    }

    #[test]
    fn frames_come_out_in_order_whatever_their_sizes_and_the_front_goes_first() {
        let mut q = Queue::default();
        let sizes = [3usize, 70_000, 0, 10, CHUNK - 13, 5, 200_000, 1];
        for (id, &size) in sizes.iter().enumerate() {
            let f = frame(id as u64, size);
            if size > 100_000 {
                q.push_back_owned(f);
            } else {
                q.push_back(&f);
            }
        }
        for _ in 0..3000 {
            q.push_back(&frame(99, 17));
        }
        let mut front = frame(1000, 4);
        front.extend(frame(1001, 80_000));
        q.push_front(front, 2);
        assert_eq!(q.len(), sizes.len() + 3002);
        let mut want: Vec<(u64, usize)> = vec![(1000, 4), (1001, 80_000)];
        want.extend(sizes.iter().enumerate().map(|(i, &s)| (i as u64, s)));
        want.extend(std::iter::repeat_n((99, 17), 3000));
        for (id, size) in want {
            assert_eq!(q.front(), Some((id, 13 + size)));
            let taken = q.pop_front().expect("a frame");
            assert_eq!(taken.bytes(), &frame(id, size)[..]);
        }
        assert!(q.is_empty());
        assert!(q.front().is_none() && q.pop_front().is_none());
    }

    #[test]
    fn ids_in_any_order_and_redispatched_frames_of_any_size_come_back_whole() {
        let mut q = Queue::default();
        let ids = [5u64, 6, 900, 3, u64::MAX, 0, u64::MAX - 1, 7];
        for &id in &ids {
            q.push_back(&frame(id, id as usize % 50));
        }
        // A task in the task region: its kind is kept too.
        let mut at = Vec::new();
        wire::push_task_at(&mut at, 8, 4096, 1 << 20);
        q.push_back(&at);
        let mut back = Vec::new();
        for (id, size) in [(40u64, 2usize), (41, CHUNK + 5), (39, 0)] {
            back.extend(frame(id, size));
        }
        q.push_front(back, 3);
        let mut want = vec![(40u64, 2usize), (41, CHUNK + 5), (39, 0)];
        want.extend(ids.iter().map(|&id| (id, id as usize % 50)));
        assert_eq!(q.len(), want.len() + 1);
        for (id, size) in want {
            assert_eq!(q.front(), Some((id, 13 + size)));
            assert_eq!(
                q.pop_front().expect("a frame").bytes(),
                &frame(id, size)[..]
            );
        }
        assert_eq!(q.front(), Some((8, at.len())));
        assert_eq!(q.pop_front().expect("a frame").bytes(), &at[..]);
        assert!(q.is_empty() && q.pop_front().is_none());
    }

    /// What the memory row of the benchmark counts: a queued tiny task
    /// (21 bytes of payload, the next ID) costs its payload and two bytes,
    /// and an emptied chunk is used again.
    #[test]
    fn a_tiny_frame_waits_in_its_payload_and_two_bytes() {
        let mut q = Queue::default();
        let n = 10 * CHUNK / 23;
        for id in 0..n as u64 {
            q.push_back(&frame(id, 21));
        }
        let bytes: usize = q
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Packed(p) => p.bytes.len(),
                Chunk::Whole(v) => v.len(),
            })
            .sum();
        assert_eq!(bytes, 23 * n);
        for _ in 0..n {
            q.pop_front();
        }
        assert_eq!(q.spare.as_ref().map(|b| b.capacity()), Some(CHUNK));
        q.push_back(&frame(1, 21));
        assert!(q.spare.is_none(), "the spare chunk was taken");
    }

    #[test]
    fn pruning_drops_only_gone_tasks_at_the_front() {
        let mut q = Queue::default();
        for id in 0..10 {
            q.push_back(&frame(id, 1));
        }
        let mut dropped = Vec::new();
        q.prune(|id| id >= 4 && id != 6, |id| dropped.push(id));
        assert_eq!(dropped, vec![0, 1, 2, 3], "each frame dropped is named");
        assert_eq!(q.front().map(|f| f.0), Some(4));
        assert_eq!(q.drain_ids(), vec![4, 5, 6, 7, 8, 9]);
        assert!(q.is_empty());
    }
}
