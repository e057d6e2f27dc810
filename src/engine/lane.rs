//! The direct lane: while the engine sleeps with a worker idle, the next
//! caller to submit writes its task to that worker's socket itself.
//!
//! A round trip through the engine costs four thread hand-offs (caller →
//! engine → worker → engine → caller); through the lane it costs three, as
//! the engine learns of the task only when the worker's answer wakes it.
//!
//! How data and deaths flow through it:
//!
//! - **Opening.** Just before it sleeps, with nothing queued, no submitter
//!   in the tray and a worker that holds no task and has nothing unsent
//!   (and after it told that worker's ring it is parked, so the answer will
//!   wake it), the engine opens the lane to that worker's socket.
//! - **Using.** A submitter holding the tray, with the tray empty and a
//!   small task without a time limit, takes the lane's lock without ever
//!   waiting for it, writes the frame once (`MSG_DONTWAIT`), marks the lane
//!   used and closes it for everyone else, and puts the task in the tray
//!   with a [`Direct`] saying how much was written. Only if not all of it
//!   was does it wake the engine, which writes the rest.
//! - **Closing.** The engine closes the lane as soon as its wait returns,
//!   before it handles any event: the socket's number cannot be closed or
//!   reused while a submitter could still write to it. If the lane was used,
//!   the engine takes the tray at once, so the task is in its ledger and held
//!   by the worker's link (for a re-send if the worker dies) before the
//!   worker's STARTED or result is read.
//! - **Deaths.** A worker that died before or while the frame was written
//!   leaves the write short or failed; the engine queues the rest, finds
//!   the socket dead, and settles or re-sends the task as for any task it
//!   sent itself.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, TryLockError};

use nix::sys::socket::{MsgFlags, send};

/// The largest task frame a submitter writes itself: far below a socket's
/// buffer, so that the write into an idle socket is whole.
pub(crate) const DIRECT_FRAME: usize = 4096;

/// A task a submitter wrote to a worker itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Direct {
    /// The worker's slot and its link's generation.
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    /// How many bytes of the frame reached the socket (the engine writes
    /// the rest).
    pub(crate) written: usize,
}

#[derive(Debug)]
enum State {
    Closed,
    /// Open to the socket `fd` of the worker in `slot`.
    Open {
        fd: RawFd,
        slot: usize,
        generation: u32,
    },
    /// A submitter wrote a task through it; the engine has not seen it yet.
    Used,
}

/// The lane of one engine, shared by its submitters.
///
/// # Drop
///
/// Nothing to release: the lane holds a descriptor's number, never the
/// descriptor, which its worker's link owns.
#[derive(Debug)]
pub(crate) struct Lane {
    /// Whether it may be open: submitters look here before taking the lock,
    /// so a busy engine's submitters pay one load.
    open: AtomicBool,
    state: Mutex<State>,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            open: AtomicBool::new(false),
            state: Mutex::new(State::Closed),
        }
    }
}

impl Lane {
    /// The engine: opens the lane to the idle worker in `slot`, whose
    /// socket is `fd`. The engine must [`close`](Lane::close) it before it
    /// touches that worker or its socket again.
    pub(crate) fn open(&self, fd: RawFd, slot: usize, generation: u32) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = State::Open {
            fd,
            slot,
            generation,
        };
        self.open.store(true, Ordering::Release);
    }

    /// The engine: closes the lane (waiting for a submitter writing through
    /// it to finish). `true` if a submitter used it since it was opened.
    pub(crate) fn close(&self) -> bool {
        self.open.store(false, Ordering::Release);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(std::mem::replace(&mut *state, State::Closed), State::Used)
    }

    /// A submitter: writes `frame` to the idle worker if the lane is open,
    /// and closes it for everyone else. `None` if it is closed or another
    /// submitter holds it (then the task goes through the engine).
    pub(crate) fn send(&self, frame: &[u8]) -> Option<Direct> {
        if frame.len() > DIRECT_FRAME || !self.open.load(Ordering::Acquire) {
            return None;
        }
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let State::Open {
            fd,
            slot,
            generation,
        } = *state
        else {
            return None;
        };
        *state = State::Used;
        self.open.store(false, Ordering::Release);
        let written = loop {
            // The descriptor is open: the engine closes the lane (taking
            // this lock) before anything can close it. MSG_NOSIGNAL: a dead
            // worker is a short write here, never a SIGPIPE for the caller.
            match send(fd, frame, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break 0,
            }
        };
        Some(Direct {
            slot,
            generation,
            written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_lane_carries_one_frame_then_is_closed_until_reopened() {
        let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
        let lane = Lane::default();
        assert_eq!(lane.send(b"early"), None, "closed: nothing is written");
        assert!(!lane.close(), "never used");

        lane.open(ours.as_raw_fd(), 1, 7);
        let direct = lane.send(b"hello").expect("open: the frame is written");
        assert_eq!(
            direct,
            Direct {
                slot: 1,
                generation: 7,
                written: 5
            }
        );
        assert_eq!(lane.send(b"again"), None, "used once, then closed");
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).expect("the worker's end reads it");
        assert_eq!(&got, b"hello");
        assert!(lane.close(), "the engine learns it was used");
        assert!(!lane.close(), "and only once");

        lane.open(ours.as_raw_fd(), 1, 7);
        assert_eq!(
            lane.send(&vec![0u8; DIRECT_FRAME + 1]),
            None,
            "a large frame goes through the engine"
        );
        assert!(!lane.close());
    }

    #[test]
    fn a_write_to_a_dead_peer_is_a_short_write_not_a_signal() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        drop(theirs);
        let lane = Lane::default();
        lane.open(ours.as_raw_fd(), 0, 1);
        let direct = lane.send(b"nobody reads this").expect("the lane was open");
        assert_eq!(direct.written, 0, "EPIPE leaves it all to the engine");
        assert!(lane.close());
    }
}
