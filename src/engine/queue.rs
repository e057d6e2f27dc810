//! The queue: accepted tasks not yet sent to a worker, as their encoded
//! TASK frames, in order.
//!
//! Frames lie back to back in chunks of about [`CHUNK`] bytes, so a queued
//! tiny task costs its frame and nothing more (no allocation, no pointer of
//! its own). A frame larger than a chunk keeps a chunk to itself, moved in
//! and out without a copy. The frames are the engine's own (made by
//! `wire::push_frame` on the submitter's thread), so their length words are
//! trusted.
//!
//! A task settled while it waits (cancelled) keeps its frame here; the
//! engine skips a frame whose task the ledger no longer holds.

use std::collections::VecDeque;

use crate::wire;

/// Bytes of small frames gathered in one chunk.
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub(crate) struct Queue {
    chunks: VecDeque<Chunk>,
    /// Frames in the queue.
    frames: usize,
}

struct Chunk {
    bytes: Vec<u8>,
    /// Where its first frame not yet taken starts.
    at: usize,
}

/// A frame taken from the queue: borrowed from its chunk, or the chunk
/// itself when the frame filled it.
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

use wire::own_frame_len as frame_len;

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.frames
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Appends one frame.
    pub(crate) fn push_back(&mut self, frame: &[u8]) {
        self.frames += 1;
        if frame.len() >= CHUNK {
            self.chunks.push_back(Chunk {
                bytes: frame.to_vec(),
                at: 0,
            });
            return;
        }
        match self.chunks.back_mut() {
            Some(chunk) if chunk.bytes.len() + frame.len() <= CHUNK => {
                chunk.bytes.extend_from_slice(frame);
            }
            _ => {
                let mut bytes = Vec::with_capacity(CHUNK);
                bytes.extend_from_slice(frame);
                self.chunks.push_back(Chunk { bytes, at: 0 });
            }
        }
    }

    /// Appends one large frame that comes in a buffer of its own.
    pub(crate) fn push_back_owned(&mut self, frame: Vec<u8>) {
        self.frames += 1;
        self.chunks.push_back(Chunk {
            bytes: frame,
            at: 0,
        });
    }

    /// Puts `count` frames, back to back in `frames`, at the front, in
    /// their order (tasks a dead worker never started).
    pub(crate) fn push_front(&mut self, frames: Vec<u8>, count: usize) {
        if count == 0 {
            return;
        }
        self.frames += count;
        self.chunks.push_front(Chunk {
            bytes: frames,
            at: 0,
        });
    }

    /// The ID and length of the front frame.
    pub(crate) fn front(&self) -> Option<(u64, usize)> {
        let chunk = self.chunks.front()?;
        let rest = &chunk.bytes[chunk.at..];
        Some((wire::frame_id(rest).unwrap_or(u64::MAX), frame_len(rest)))
    }

    /// Takes the front frame.
    pub(crate) fn pop_front(&mut self) -> Option<Taken<'_>> {
        let chunk = self.chunks.front_mut()?;
        self.frames -= 1;
        let len = frame_len(&chunk.bytes[chunk.at..]);
        if chunk.at == 0 && len == chunk.bytes.len() {
            let chunk = self.chunks.pop_front()?;
            return Some(Taken::Owned(chunk.bytes));
        }
        let start = chunk.at;
        chunk.at += len;
        if chunk.at < chunk.bytes.len() {
            let chunk = self.chunks.front()?;
            return Some(Taken::Borrowed(&chunk.bytes[start..start + len]));
        }
        // Its last frame: the chunk goes once the frame is copied out.
        let chunk = self.chunks.pop_front()?;
        let mut bytes = chunk.bytes;
        bytes.drain(..start);
        Some(Taken::Owned(bytes))
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
