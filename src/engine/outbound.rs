//! Frames on their way to one worker: the bytes not yet written to its
//! socket ([`Outgoing`]), and a copy of each task's frame until the worker
//! answers it ([`Held`]), which is what goes back to the queue if the
//! worker dies first.
//!
//! Small frames are copied into one buffer each (a memcpy is cheaper than
//! any bookkeeping at that size). A large frame is shared, never copied:
//! the same [`Arc`] is written from and held, so a 1 MiB task costs the
//! parent no copy between its encoding and the kernel's. Every frame here
//! is the engine's own, so its length word is trusted.

use std::collections::VecDeque;
use std::sync::Arc;

/// A frame at least this large is shared between [`Outgoing`] and
/// [`Held`] instead of copied into both.
pub(super) const SHARED_FRAME: usize = 16 * 1024;

/// One frame, as the link received it from the queue.
pub(super) enum Frame<'a> {
    Small(&'a [u8]),
    Large(Arc<Vec<u8>>),
}

impl Frame<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Frame::Small(b) => b.len(),
            Frame::Large(v) => v.len(),
        }
    }
}

enum Segment {
    Bytes(Vec<u8>),
    Large(Arc<Vec<u8>>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Bytes(b) => b,
            Segment::Large(v) => v,
        }
    }
}

/// Bytes queued for the socket, in order.
#[derive(Default)]
pub(super) struct Outgoing {
    segments: VecDeque<Segment>,
    /// How much of the front segment is written.
    at: usize,
    /// Bytes not yet written.
    unsent: usize,
}

impl Outgoing {
    pub(super) fn push(&mut self, frame: &Frame<'_>) {
        self.unsent += frame.len();
        match frame {
            Frame::Large(v) => {
                // An empty buffer kept for small frames would be written
                // (zero bytes) first: it goes.
                if matches!(self.segments.back(), Some(Segment::Bytes(b)) if b.is_empty()) {
                    self.segments.pop_back();
                }
                self.segments.push_back(Segment::Large(v.clone()));
            }
            Frame::Small(b) => match self.segments.back_mut() {
                Some(Segment::Bytes(buf)) => buf.extend_from_slice(b),
                _ => self.segments.push_back(Segment::Bytes(b.to_vec())),
            },
        }
    }

    /// Puts `bytes` before everything queued. Only while nothing of the
    /// queue has been written yet (nothing can be written through it then
    /// but them).
    pub(super) fn push_front(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.at, 0, "the front segment is partly written");
        self.unsent += bytes.len();
        self.segments.push_front(Segment::Bytes(bytes.to_vec()));
    }

    pub(super) fn unsent(&self) -> usize {
        self.unsent
    }

    /// The bytes to write next (empty when nothing waits).
    pub(super) fn next(&self) -> &[u8] {
        match self.segments.front() {
            Some(s) => s.bytes().get(self.at..).unwrap_or_default(),
            None => &[],
        }
    }

    /// `n` bytes of [`next`](Self::next) were written.
    pub(super) fn advance(&mut self, n: usize) {
        self.unsent -= n.min(self.unsent);
        self.at += n;
        let done = self
            .segments
            .front()
            .is_some_and(|s| self.at >= s.bytes().len());
        if done {
            self.at = 0;
            match self.segments.pop_front() {
                // The last small buffer is kept for the next frames, unless
                // a burst made it large.
                Some(Segment::Bytes(mut buf))
                    if self.segments.is_empty() && buf.capacity() <= 4 << 20 =>
                {
                    buf.clear();
                    self.segments.push_back(Segment::Bytes(buf));
                }
                _ => {}
            }
        }
    }

    /// Drops everything not written (the socket is gone).
    pub(super) fn clear(&mut self) {
        *self = Outgoing::default();
    }
}

enum HeldFrame {
    /// In [`Held::bytes`], this long.
    Inline(usize),
    Large(Arc<Vec<u8>>),
}

/// The frames of the tasks a worker holds, oldest first.
#[derive(Default)]
pub(super) struct Held {
    frames: VecDeque<HeldFrame>,
    bytes: Vec<u8>,
    /// Where the oldest inline frame starts.
    at: usize,
    /// Buffers of large frames answered, for the engine to recycle.
    pub(super) spent: Vec<Vec<u8>>,
}

impl Held {
    pub(super) fn push(&mut self, frame: &Frame<'_>) {
        match frame {
            Frame::Large(v) => self.frames.push_back(HeldFrame::Large(v.clone())),
            Frame::Small(b) => {
                self.bytes.extend_from_slice(b);
                self.frames.push_back(HeldFrame::Inline(b.len()));
            }
        }
    }

    /// Forgets the oldest frame (its task was answered or skipped).
    pub(super) fn pop(&mut self) {
        let len = match self.frames.pop_front() {
            Some(HeldFrame::Inline(len)) => len,
            Some(HeldFrame::Large(shared)) => {
                // Written already (answered), so no longer shared.
                if let Ok(buffer) = Arc::try_unwrap(shared) {
                    self.spent.push(buffer);
                }
                return;
            }
            None => return,
        };
        self.at = (self.at + len).min(self.bytes.len());
        if self.at == self.bytes.len() {
            self.bytes.clear();
            self.at = 0;
            if self.bytes.capacity() > 4 << 20 {
                self.bytes = Vec::new();
            }
        } else if self.at >= 64 * 1024 && self.at * 2 >= self.bytes.len() {
            self.bytes.drain(..self.at);
            self.at = 0;
        }
    }

    /// Every frame held, back to back, oldest first.
    pub(super) fn into_frames(self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = self.at;
        for frame in self.frames {
            match frame {
                HeldFrame::Inline(len) => {
                    out.extend_from_slice(self.bytes.get(at..at + len).unwrap_or_default());
                    at += len;
                }
                HeldFrame::Large(v) => out.extend_from_slice(&v),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u8, len: usize) -> Vec<u8> {
        vec![id; len]
    }

    #[test]
    fn bytes_leave_in_order_and_held_frames_come_back_in_order() {
        let mut out = Outgoing::default();
        let mut held = Held::default();
        let large = Arc::new(frame(2, SHARED_FRAME));
        let frames = [
            Frame::Small(&[1; 10]),
            Frame::Large(large.clone()),
            Frame::Small(&[3; 5]),
            Frame::Small(&[4; 7]),
        ];
        for f in &frames {
            out.push(f);
            held.push(f);
        }
        assert_eq!(out.unsent(), 10 + SHARED_FRAME + 12);
        // Written in uneven pieces.
        let mut written = Vec::new();
        while out.unsent() > 0 {
            let next = out.next();
            let n = next.len().min(3000);
            written.extend_from_slice(&next[..n]);
            out.advance(n);
        }
        let mut want = frame(1, 10);
        want.extend(frame(2, SHARED_FRAME));
        want.extend(frame(3, 5));
        want.extend(frame(4, 7));
        assert_eq!(written, want);
        assert!(out.next().is_empty());
        // The emptied small buffer is not written (as nothing) before a
        // large frame that follows.
        out.push(&Frame::Large(large.clone()));
        assert_eq!(out.next().len(), SHARED_FRAME);
        // The first is answered; the rest come back.
        held.pop();
        assert_eq!(held.into_frames(), want[10..].to_vec());
    }
}
