//! How callers reach the engine: a tray of submitted tasks, a channel of
//! other [`Command`]s, and a waker that costs no system call while the
//! engine is busy.
//!
//! Tasks do not go through the channel: a submitter appends its task and
//! its encoded frame to the tray under a lock (the ID is assigned under the
//! same lock, so IDs reach the engine in order), and the engine swaps the
//! whole tray for an empty one once per turn. A stream of tasks costs the
//! engine one lock per turn instead of one channel operation per task, and
//! no allocation: both sides reuse the tray's buffers. The engine takes the
//! channel's commands *before* the tray, so a command about a task (a
//! cancel) never comes before the task itself.
//!
//! The engine sets `parked` before it waits and checks the channel once
//! more; a caller pushes its command and then takes `parked` (a swap), and
//! only the caller that finds it set writes the eventfd. Both sides fence
//! between their two steps, so either the engine sees the command before it
//! waits, or the caller sees the flag and wakes it: a command never sits
//! unseen while the engine sleeps, and a stream of submissions to a busy
//! engine is channel pushes only.
//!
//! One task a tray may skip the engine: while it sleeps with a worker idle,
//! the first submitter writes its frame to that worker itself (`lane.rs`).
//! That task wakes nobody (the worker's answer will), so it does not count
//! as the tray's wake: the next submitter wakes the engine. A short write
//! wakes it too, and the engine's park looks at the lane's word as it looks
//! at the tray.
//!
//! A batch submitted in one go (a grinder's) is gathered ([`Outbox::gather`]):
//! while any gathering on this facade is open, no submission takes the lane
//! or wakes the engine; the last gathering to end wakes it, once, if the
//! tray holds tasks and nobody woke it for them. A busy engine still takes
//! the tray at its next turn, gathering or not.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst, fence};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Command;
use super::lane::{DIRECT_FRAME, Direct, Lane};
use super::ledger::Entry;
use crate::region::Span;
use crate::task::Task;

/// A frame at least this large travels in its own buffer, never copied
/// into the tray (nor anywhere else on its way to the socket).
pub(crate) const LARGE_FRAME: usize = super::outbound::SHARED_FRAME;

/// Tasks submitted since the engine last took the tray, in ID order.
pub(crate) struct Batch<T: Task> {
    /// The frames of the tasks without a buffer of their own, back to back.
    pub(crate) frames: Vec<u8>,
    pub(crate) tasks: Vec<Submission<T>>,
}

impl<T: Task> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            frames: Vec::new(),
            tasks: Vec::new(),
        }
    }
}

/// One accepted task in a [`Batch`]: 16 bytes besides its entry, so that
/// a stream's tray is small (it is the memory its submitter touches).
pub(crate) struct Submission<T: Task> {
    pub(crate) id: u64,
    pub(crate) entry: Entry<T>,
    /// What only a large task, or one sent by the lane, has; `None`: its
    /// frame is the next one in [`Batch::frames`], for the engine to send.
    pub(crate) rare: Option<Box<Rare>>,
}

/// The parts of a [`Submission`] that few tasks have.
#[derive(Default)]
pub(crate) struct Rare {
    /// A large frame, in its own buffer; `None`: the next one in
    /// [`Batch::frames`].
    pub(crate) own_frame: Option<Vec<u8>>,
    /// Written to an idle worker by its submitter (see [`super::lane`]).
    pub(crate) direct: Option<Direct>,
    /// Where its payload lies in the task region, when its frame is a
    /// TASK_AT (see `region.rs`).
    pub(crate) span: Option<Span>,
}

impl<T: Task> Submission<T> {
    /// Its parts: the rare ones empty for most tasks.
    pub(crate) fn into_parts(self) -> (u64, Entry<T>, Rare) {
        (
            self.id,
            self.entry,
            self.rare.map(|r| *r).unwrap_or_default(),
        )
    }
}

struct Tray<T: Task> {
    batch: Batch<T>,
    /// The engine has ended: nothing submitted now would be seen.
    closed: bool,
    /// A submitter woke the engine for the tasks in the tray (a task
    /// written through the lane wakes nobody).
    woken: bool,
    /// Open [`Gather`]s: while there is one, a submission neither takes
    /// the lane nor wakes the engine; the last one to end wakes it, once,
    /// for everything it left in the tray.
    gathering: usize,
}

struct Shared<T: Task> {
    tray: Mutex<Tray<T>>,
    waker: Waker,
    lane: Lane,
    /// Buffers of large frames the workers have answered, for the next
    /// large frames: fresh memory would cost a page fault per 4 KiB.
    recycled: Mutex<Vec<Vec<u8>>>,
}

/// Large-frame buffers kept for reuse, at most, and the largest kept: an
/// idle facade holds no more than 16 MiB of them.
const RECYCLED: usize = 4;
const RECYCLED_MAX: usize = 4 << 20;

impl<T: Task> Shared<T> {
    fn tray(&self) -> std::sync::MutexGuard<'_, Tray<T>> {
        // Nothing panics while holding it; a poisoned tray is still whole.
        self.tray.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recycled(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.recycled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the buffer of a large frame for a later one.
    fn recycle(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut recycled = self.recycled();
        if recycled.len() < RECYCLED && buffer.capacity() <= RECYCLED_MAX {
            recycled.push(buffer);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Waker {
    fd: EventFd,
    parked: AtomicBool,
}

impl Waker {
    /// Wakes the engine if it is parked (or about to be).
    pub(crate) fn wake(&self) {
        fence(SeqCst);
        if self.parked.swap(false, SeqCst) {
            // The engine never reads the counter (its epoll is
            // edge-triggered): only a counter at its maximum, after some
            // 2^64 wakes, refuses a write, and is emptied first.
            if self.fd.write(1).is_err() {
                let _ = self.fd.read();
                let _ = self.fd.write(1);
            }
        }
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

/// The callers' side: clone it into every handle that talks to the engine.
pub(crate) struct Outbox<T: Task> {
    tx: Sender<Command<T>>,
    shared: Arc<Shared<T>>,
}

impl<T: Task> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T: Task> Outbox<T> {
    /// Sends `cmd`; gives it back if the engine is gone.
    pub(crate) fn send(&self, cmd: Command<T>) -> Result<(), Command<T>> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.shared.waker.wake();
        Ok(())
    }

    /// An empty buffer with room for `len` bytes: a recycled one when
    /// there is one large enough.
    pub(crate) fn large_buffer(&self, len: usize) -> Vec<u8> {
        let mut recycled = self.shared.recycled();
        match recycled.iter().position(|b| b.capacity() >= len) {
            Some(i) => recycled.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// Keeps the buffer a large task was encoded in, once its bytes are in
    /// the task region, for the next large task.
    pub(crate) fn recycle(&self, buffer: Vec<u8>) {
        self.shared.recycle(buffer);
    }

    /// Puts a task in the tray. `frame` is its whole TASK (or TASK_AT,
    /// with its `span`) frame with a placeholder ID: `assign` gives the
    /// ID, under the tray's lock, and the frame is copied into the tray
    /// (or, when large, taken, leaving `frame` empty). The task is handed
    /// back if refused (and its span let go): `assign` gave no ID
    /// (submission is closed), or the engine has ended.
    pub(crate) fn submit(
        &self,
        frame: &mut Vec<u8>,
        entry: Entry<T>,
        span: Option<Span>,
        assign: impl FnOnce() -> Option<u64>,
    ) -> Result<u64, Entry<T>> {
        let mut tray = self.shared.tray();
        if tray.closed {
            return Err(entry);
        }
        let Some(id) = assign() else {
            return Err(entry);
        };
        crate::wire::set_frame_id(frame, id);
        let first = tray.batch.tasks.is_empty();
        // Only the first task of a tray may go by the lane: the engine takes
        // the ones before it first, so they would start later. Nor one of a
        // gathering: the rest of its batch would follow it one wake later.
        let gathering = tray.gathering > 0;
        let may_go_direct = first && !gathering && entry.timeout().is_none();
        let claim = if may_go_direct && frame.len() <= DIRECT_FRAME {
            self.shared.lane.claim()
        } else {
            None
        };
        let own_frame = if frame.len() >= LARGE_FRAME {
            Some(std::mem::take(frame))
        } else {
            tray.batch.frames.extend_from_slice(frame);
            None
        };
        let direct = claim.as_ref().map(|c| c.direct);
        let rare = (own_frame.is_some() || direct.is_some() || span.is_some()).then(|| {
            Box::new(Rare {
                own_frame,
                direct,
                span,
            })
        });
        tray.batch.tasks.push(Submission { id, entry, rare });
        // One wake per tray is enough. A task written whole to the worker
        // wakes the engine with the worker's answer, and does not count:
        // the next task must wake it, or it could wait behind a long one.
        // A gathering's wake is its end's.
        let wake = claim.is_none() && !tray.woken && !gathering;
        tray.woken |= wake;
        drop(tray);
        // Written after the tray is let go: the worker this write wakes,
        // and the engine it wakes in turn, may run before this returns.
        let short = claim.is_some_and(|claim| !self.shared.lane.write(claim, frame));
        if wake || short {
            self.shared.waker.wake();
        }
        Ok(id)
    }

    /// Starts gathering submissions (a batch going in at once): until the
    /// returned guard is dropped, tasks submitted to this facade, from any
    /// thread, go in the tray without taking the lane or waking the engine,
    /// which then wakes once for all of them. A busy engine still takes them
    /// at its next turn. Hold it only while submitting a batch: everything
    /// submitted meanwhile waits for its end if the engine sleeps.
    pub(crate) fn gather(&self) -> Gather<'_, T> {
        let shared = &*self.shared;
        shared.tray().gathering += 1;
        Gather { shared }
    }
}

/// Submissions gathered into one wake of the engine; see
/// [`Outbox::gather`].
///
/// Drop: ends the gathering, and, if it was the last one open, wakes the
/// engine for the tasks left in the tray (unless a submitter did already).
pub(crate) struct Gather<'a, T: Task> {
    shared: &'a Shared<T>,
}

impl<T: Task> Drop for Gather<'_, T> {
    fn drop(&mut self) {
        let mut tray = self.shared.tray();
        tray.gathering = tray.gathering.saturating_sub(1);
        let wake = tray.gathering == 0 && !tray.woken && !tray.batch.tasks.is_empty();
        tray.woken |= wake;
        drop(tray);
        if wake {
            self.shared.waker.wake();
        }
    }
}

/// The engine's side.
pub(crate) struct Inbox<T: Task> {
    rx: Receiver<Command<T>>,
    shared: Arc<Shared<T>>,
}

/// What [`Inbox::try_recv`] found.
pub(crate) enum Mail<T: Task> {
    Command(Command<T>),
    Empty,
    /// Every caller's side is gone (the facade was dropped).
    Closed,
}

impl<T: Task> Inbox<T> {
    pub(crate) fn try_recv(&self) -> Mail<T> {
        match self.rx.try_recv() {
            Ok(cmd) => Mail::Command(cmd),
            Err(TryRecvError::Empty) => Mail::Empty,
            Err(TryRecvError::Disconnected) => Mail::Closed,
        }
    }

    /// Swaps the tray's tasks for `spare`'s (which must be empty): the
    /// tasks submitted since the last call, in ID order. Unless `wait`,
    /// nothing is taken while a submitter holds the tray: the engine looks
    /// again on its next turn rather than wait for one.
    pub(crate) fn take(&self, spare: &mut Batch<T>, wait: bool) {
        let mut tray = match self.shared.tray.try_lock() {
            Ok(tray) => tray,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if wait => self.shared.tray(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        std::mem::swap(&mut tray.batch, spare);
        tray.woken = false;
    }

    /// Keeps the buffer of a large frame a worker answered for a later one.
    pub(crate) fn recycle(&self, buffer: Vec<u8>) {
        self.shared.recycle(buffer);
    }

    /// The engine has ended: later submissions are refused. Returns what
    /// was submitted meanwhile (nothing, unless the engine ends by a bug).
    pub(crate) fn close(&self) -> Batch<T> {
        let mut tray = self.shared.tray();
        tray.closed = true;
        std::mem::take(&mut tray.batch)
    }

    /// Says the engine is about to wait. `false` if mail arrived meanwhile
    /// (then it must not wait).
    pub(crate) fn park(&self) -> bool {
        let waker = &self.shared.waker;
        waker.parked.store(true, SeqCst);
        fence(SeqCst);
        let tray_empty = match self.shared.tray.try_lock() {
            Ok(tray) => tray.batch.tasks.is_empty(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().batch.tasks.is_empty(),
            // A submitter is putting a task there.
            Err(std::sync::TryLockError::WouldBlock) => false,
        };
        if !self.rx.is_empty() || !tray_empty || self.shared.lane.said() {
            waker.parked.store(false, SeqCst);
            return false;
        }
        true
    }

    /// After the wait: no longer parked.
    pub(crate) fn unpark(&self) {
        self.shared.waker.parked.store(false, SeqCst);
    }

    pub(crate) fn waker(&self) -> &Waker {
        &self.shared.waker
    }

    /// The lane by which a submitter may reach an idle worker itself.
    pub(crate) fn lane(&self) -> &Lane {
        &self.shared.lane
    }
}

/// A connected pair.
pub(crate) fn inbox<T: Task>() -> std::io::Result<(Outbox<T>, Inbox<T>)> {
    let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let shared = Arc::new(Shared {
        tray: Mutex::new(Tray {
            batch: Batch::default(),
            closed: false,
            woken: false,
            gathering: 0,
        }),
        waker: Waker {
            fd,
            parked: AtomicBool::new(false),
        },
        lane: Lane::default(),
        recycled: Mutex::new(Vec::new()),
    });
    let (tx, rx) = unbounded();
    Ok((
        Outbox {
            tx,
            shared: shared.clone(),
        },
        Inbox { rx, shared },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lane::Seen;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_engine_does_not_park_while_a_submitters_word_is_unread() {
        let (_outbox, inbox) = inbox::<crate::simple::SimpleTask>().expect("inbox");
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        drop(theirs); // the worker is gone: the write comes back short
        let dup = OwnedFd::from(ours.try_clone().expect("dup"));
        let direct = Direct {
            slot: 0,
            generation: 1,
        };
        assert!(inbox.lane().open(Arc::new(dup), direct));
        let claim = inbox.lane().claim().expect("open");
        assert!(!inbox.lane().write(claim, b"task"), "short");
        // Its wake found the engine awake: the park must not sleep now.
        assert!(!inbox.park(), "a short write's word is unread");
        inbox.unpark();
        assert_eq!(inbox.lane().observe(), Seen::Short(0));
        assert!(inbox.park(), "nothing left to look at");
        inbox.unpark();
    }

    /// A gathered batch takes neither the lane nor a wake per task: it is
    /// all in the tray when the engine wakes, once, as the gathering ends.
    #[test]
    fn a_gathering_wakes_the_engine_once_at_its_end_and_leaves_the_lane_alone() {
        use crate::simple::SimpleTask;
        let (outbox, inbox) = inbox::<SimpleTask>().expect("inbox");
        let (ours, _theirs) = UnixStream::pair().expect("socket pair");
        let dup = OwnedFd::from(ours.try_clone().expect("dup"));
        let direct = Direct {
            slot: 0,
            generation: 1,
        };
        assert!(inbox.lane().open(Arc::new(dup), direct));
        assert!(inbox.park(), "an idle engine parks");
        let mut next = 0;
        let mut frame_len = 0;
        let gather = outbox.gather();
        for name in ["one", "two", "three"] {
            let mut frame = Vec::new();
            crate::wire::push_bare_with(&mut frame, crate::wire::KIND_TASK, 0, b"task");
            frame_len = frame.len();
            let entry = Entry::new(SimpleTask::new(name, 0.0), None, None, None);
            let assign = || {
                next += 1;
                Some(next - 1)
            };
            assert!(outbox.submit(&mut frame, entry, None, assign).is_ok());
            assert!(
                inbox.shared.waker.parked.load(SeqCst),
                "no wake while gathering"
            );
        }
        drop(gather);
        assert!(
            !inbox.shared.waker.parked.load(SeqCst),
            "the gathering's end woke the engine"
        );
        assert!(
            inbox.lane().claim().is_some(),
            "the lane is still open: no gathered task took it"
        );
        let mut batch = Batch::default();
        inbox.take(&mut batch, true);
        let ids: Vec<u64> = batch.tasks.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![0, 1, 2], "every task in the tray, in order");
        let direct = batch.tasks.iter().filter(|t| t.rare.is_some()).count();
        assert_eq!(direct, 0, "none went direct");
        assert_eq!(batch.frames.len(), 3 * frame_len, "every frame in the tray");

        // An empty gathering wakes nobody.
        assert!(inbox.park());
        drop(outbox.gather());
        let still_parked = inbox.shared.waker.parked.load(SeqCst);
        assert!(still_parked, "nothing to wake for");
        inbox.unpark();
    }
}
