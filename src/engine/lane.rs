//! The direct lane: while the engine sleeps with a worker idle, the next
//! caller to submit writes its task to that worker's socket itself.
//!
//! A round trip through the engine costs four thread hand-offs (caller →
//! engine → worker → engine → caller); through the lane it costs three, as
//! the engine learns of the task only when the worker's answer wakes it.
//! Neither side ever waits for the other here: on one CPU, the worker the
//! caller's write wakes runs before the caller has even returned, and the
//! engine that worker wakes runs before the caller learned how much it
//! wrote.
//!
//! How data and deaths flow through it:
//!
//! - **Opening.** Just before it sleeps, with nothing queued, no submitter
//!   in the tray and a worker that holds no task and has nothing unsent
//!   (and after it told that worker's ring it is parked, so the answer will
//!   wake it), the engine opens the lane to a duplicate of that worker's
//!   socket, under a new epoch.
//! - **Claiming.** A submitter holding the tray, with the tray empty, no
//!   gathering open (`inbox.rs`) and a small task without a time limit,
//!   claims the lane (one compare-and-swap)
//!   and puts the task in the tray marked [`Direct`]; then, holding no lock,
//!   it writes the frame once (`MSG_DONTWAIT`) and says whether the write
//!   was whole. Only a short write wakes the engine.
//! - **Observing.** The engine looks at the lane as soon as its wait
//!   returns, before it handles any event. A claim means the tray holds the
//!   task: the engine takes it at once, so the task is in the ledger and
//!   held by the worker's link (for a re-send if the worker dies) before the
//!   worker's STARTED is read. Until the engine knows the frame is whole,
//!   it writes nothing else to that socket: a CANCEL, a STOP or the next
//!   tasks for that worker wait for the submitter's word, so a submitter
//!   descheduled between its claim and its write holds that one worker
//!   back for as long (never for ever: it writes when it runs again).
//! - **Waking.** Only a short write wakes the engine. Should that wake find
//!   the engine awake, just before it parks, its park sees the submitter's
//!   word (the same fence-then-look as for the tray) and does not sleep.
//! - **Settling.** The frame is known whole when the submitter says so, or
//!   when the worker says anything about the task (it read the frame). A
//!   short write's rest is queued before anything else. A worker that dies
//!   meanwhile settles the lane with it; its task is re-sent or settled as
//!   any task the engine sent itself. The submitter's duplicate keeps the
//!   socket open until its write is over, so a descriptor number is never
//!   written to after it was closed or reused, and the epoch makes a late
//!   word from a finished claim miss a newer one.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::socket::{MsgFlags, send};

/// The largest task frame a submitter writes itself: far below a socket's
/// buffer, so that the write into an idle socket is whole.
pub(crate) const DIRECT_FRAME: usize = 4096;

/// A task its submitter writes to a worker itself: that worker's slot and
/// its link's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Direct {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
}

/// What the lane's word says, besides its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    /// A submitter claimed it and has not said how its write went.
    Claimed,
    /// The claim's frame was written whole.
    Whole,
    /// Only this many bytes of it were written.
    Short(usize),
}

/// The lane's state in one word: epoch (32 bits), bytes written (24 bits,
/// for [`Phase::Short`]), phase (8 bits).
fn pack(epoch: u32, phase: Phase) -> u64 {
    let (tag, written) = match phase {
        Phase::Closed => (0, 0),
        Phase::Open => (1, 0),
        Phase::Claimed => (2, 0),
        Phase::Whole => (3, 0),
        Phase::Short(n) => (4, n.min(DIRECT_FRAME) as u64),
    };
    (u64::from(epoch) << 32) | (written << 8) | tag
}

fn unpack(word: u64) -> (u32, Phase) {
    let epoch = (word >> 32) as u32;
    let written = ((word >> 8) & 0xff_ffff) as usize;
    let phase = match word & 0xff {
        1 => Phase::Open,
        2 => Phase::Claimed,
        3 => Phase::Whole,
        4 => Phase::Short(written),
        _ => Phase::Closed,
    };
    (epoch, phase)
}

/// Where an open lane leads.
#[derive(Debug, Clone)]
struct Target {
    socket: Arc<OwnedFd>,
    direct: Direct,
}

/// A submitter's claim on the lane, to [`Lane::write`] through.
#[derive(Debug)]
pub(crate) struct Claim {
    epoch: u32,
    socket: Arc<OwnedFd>,
    pub(crate) direct: Direct,
}

/// What the engine found when it looked ([`Lane::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nobody used the lane (it is closed now).
    Unused,
    /// A submitter claimed it; how its write went is not known yet.
    Claimed,
    /// The claimed frame was written whole (the lane is closed now).
    Whole,
    /// Only this many bytes of it were written (the lane is closed now).
    Short(usize),
}

/// The lane of one engine, shared by its submitters.
///
/// # Drop
///
/// Drops the duplicate of a worker's socket it may still hold; the worker's
/// link owns the socket itself.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    word: AtomicU64,
    /// Set by the engine while the lane is closed, read by the claimant.
    target: Mutex<Option<Target>>,
}

impl Lane {
    fn target(&self) -> std::sync::MutexGuard<'_, Option<Target>> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine: opens the closed lane to the idle worker `direct`
    /// names, through `socket`, a duplicate of its socket. `false` (and
    /// nothing changed) unless the lane was closed.
    pub(crate) fn open(&self, socket: Arc<OwnedFd>, direct: Direct) -> bool {
        let word = self.word.load(Acquire);
        let (epoch, phase) = unpack(word);
        if phase != Phase::Closed {
            return false;
        }
        *self.target() = Some(Target { socket, direct });
        self.word
            .compare_exchange(
                word,
                pack(epoch.wrapping_add(1), Phase::Open),
                AcqRel,
                Acquire,
            )
            .is_ok()
    }

    /// A submitter, holding the tray: claims the open lane for its task.
    /// `None` if it is not open (the task goes through the engine).
    pub(crate) fn claim(&self) -> Option<Claim> {
        let word = self.word.load(Acquire);
        let (epoch, Phase::Open) = unpack(word) else {
            return None;
        };
        self.word
            .compare_exchange(word, pack(epoch, Phase::Claimed), AcqRel, Acquire)
            .ok()?;
        // The engine changes the target only while the lane is closed, so
        // an open lane always has one; should it not, the claim is undone.
        let Some(target) = self.target().clone() else {
            let _ = self.word.compare_exchange(
                pack(epoch, Phase::Claimed),
                pack(epoch, Phase::Closed),
                AcqRel,
                Acquire,
            );
            return None;
        };
        Some(Claim {
            epoch,
            socket: target.socket,
            direct: target.direct,
        })
    }

    /// A submitter, holding no lock: writes its claimed `frame` and says
    /// how it went. `true` if whole; otherwise the caller must wake the
    /// engine, which writes the rest (or finds the worker dead).
    pub(crate) fn write(&self, claim: Claim, frame: &[u8]) -> bool {
        let written = loop {
            // MSG_NOSIGNAL: a dead worker is a short write here, never a
            // SIGPIPE for the caller.
            match send(
                claim.socket.as_raw_fd(),
                frame,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break 0,
            }
        };
        let whole = written == frame.len();
        let said = if whole {
            Phase::Whole
        } else {
            Phase::Short(written)
        };
        // If the engine settled the claim already (the worker answered, or
        // died), the word moved on and this says nothing.
        let _ = self.word.compare_exchange(
            pack(claim.epoch, Phase::Claimed),
            pack(claim.epoch, said),
            AcqRel,
            Acquire,
        );
        whole
    }

    /// Whether a submitter has said how its write went and the engine has
    /// not looked yet: it must not sleep then (a short write's wake may
    /// have found it awake, just before it parked).
    pub(crate) fn said(&self) -> bool {
        matches!(
            unpack(self.word.load(std::sync::atomic::Ordering::SeqCst)).1,
            Phase::Whole | Phase::Short(_)
        )
    }

    /// The engine, as soon as its wait returns: what happened to the lane.
    /// An open lane is closed; a finished claim is settled.
    pub(crate) fn observe(&self) -> Seen {
        loop {
            let word = self.word.load(Acquire);
            let (epoch, phase) = unpack(word);
            let seen = match phase {
                Phase::Closed => return Seen::Unused,
                Phase::Claimed => return Seen::Claimed,
                Phase::Open => Seen::Unused,
                Phase::Whole => Seen::Whole,
                Phase::Short(n) => Seen::Short(n),
            };
            if self
                .word
                .compare_exchange(word, pack(epoch, Phase::Closed), AcqRel, Acquire)
                .is_ok()
            {
                *self.target() = None;
                return seen;
            }
        }
    }

    /// The engine: the claimed frame is known to be whole (the worker said
    /// something about its task), or no longer matters (the worker is
    /// gone). Closes the lane whatever the submitter says later.
    pub(crate) fn settle(&self) {
        let (epoch, phase) = unpack(self.word.load(Acquire));
        if phase != Phase::Closed {
            self.word.store(
                pack(epoch, Phase::Closed),
                std::sync::atomic::Ordering::Release,
            );
        }
        *self.target() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn lane_to(socket: &UnixStream) -> Lane {
        let lane = Lane::default();
        let dup = OwnedFd::from(socket.try_clone().expect("dup"));
        assert!(lane.open(
            Arc::new(dup),
            Direct {
                slot: 1,
                generation: 7
            }
        ));
        lane
    }

    #[test]
    fn a_lane_carries_one_frame_then_is_closed_until_reopened() {
        let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
        let closed = Lane::default();
        assert!(closed.claim().is_none(), "closed: nothing to claim");
        assert_eq!(closed.observe(), Seen::Unused);

        let lane = lane_to(&ours);
        let claim = lane.claim().expect("open: it can be claimed");
        assert_eq!(
            claim.direct,
            Direct {
                slot: 1,
                generation: 7
            }
        );
        assert!(lane.claim().is_none(), "one claim at a time");
        assert_eq!(lane.observe(), Seen::Claimed, "claimed, not yet written");
        assert!(lane.write(claim, b"hello"), "a whole write");
        let mut got = [0u8; 5];
        theirs
            .read_exact(&mut got)
            .expect("the worker's end reads it");
        assert_eq!(&got, b"hello");
        assert_eq!(
            lane.observe(),
            Seen::Whole,
            "the engine learns it was whole"
        );
        assert_eq!(lane.observe(), Seen::Unused, "and only once");
        assert!(lane.claim().is_none(), "closed until the engine reopens it");
    }

    #[test]
    fn a_write_to_a_dead_peer_is_a_short_write_not_a_signal() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        drop(theirs);
        let lane = lane_to(&ours);
        let claim = lane.claim().expect("open");
        assert!(!lane.write(claim, b"nobody reads this"));
        assert_eq!(
            lane.observe(),
            Seen::Short(0),
            "EPIPE leaves it all to the engine"
        );
    }

    #[test]
    fn a_claim_settled_by_the_engine_is_not_revived_by_its_late_word() {
        let (ours, _theirs) = UnixStream::pair().expect("socket pair");
        let lane = lane_to(&ours);
        let claim = lane.claim().expect("open");
        // The worker answered the task before its submitter said anything.
        lane.settle();
        let dup = OwnedFd::from(ours.try_clone().expect("dup"));
        let next = Direct {
            slot: 0,
            generation: 8,
        };
        assert!(lane.open(Arc::new(dup), next), "reopened under a new epoch");
        assert!(lane.write(claim, b"late"));
        // The old claim's word missed: the new epoch's lane is still open.
        assert_eq!(lane.claim().map(|c| c.direct), Some(next));
    }

    #[test]
    fn the_word_keeps_epoch_phase_and_length_apart() {
        for phase in [
            Phase::Closed,
            Phase::Open,
            Phase::Claimed,
            Phase::Whole,
            Phase::Short(0),
            Phase::Short(DIRECT_FRAME),
        ] {
            for epoch in [0, 1, u32::MAX] {
                assert_eq!(unpack(pack(epoch, phase)), (epoch, phase));
            }
        }
    }
}
