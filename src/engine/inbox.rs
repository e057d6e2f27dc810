//! How callers reach the engine: a channel of [`Command`]s and a waker that
//! costs no system call while the engine is busy.
//!
//! The engine sets `parked` before it waits and checks the channel once
//! more; a caller pushes its command and then takes `parked` (a swap), and
//! only the caller that finds it set writes the eventfd. Both sides fence
//! between their two steps, so either the engine sees the command before it
//! waits, or the caller sees the flag and wakes it: a command never sits
//! unseen while the engine sleeps, and a stream of submissions to a busy
//! engine is channel pushes only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst, fence};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Command;
use crate::task::Task;

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
            let _ = self.fd.write(1);
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
    waker: Arc<Waker>,
}

impl<T: Task> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T: Task> Outbox<T> {
    /// Sends `cmd`; gives it back if the engine is gone.
    pub(crate) fn send(&self, cmd: Command<T>) -> Result<(), Command<T>> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

/// The engine's side.
pub(crate) struct Inbox<T: Task> {
    rx: Receiver<Command<T>>,
    waker: Arc<Waker>,
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

    /// Says the engine is about to wait. `false` if mail arrived meanwhile
    /// (then it must not wait).
    pub(crate) fn park(&self) -> bool {
        self.waker.parked.store(true, SeqCst);
        fence(SeqCst);
        if !self.rx.is_empty() {
            self.waker.parked.store(false, SeqCst);
            return false;
        }
        true
    }

    /// After the wait: no longer parked; the eventfd emptied if it fired.
    pub(crate) fn unpark(&self, woken: bool) {
        self.waker.parked.store(false, SeqCst);
        if woken {
            let _ = self.waker.fd.read();
        }
    }

    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

/// A connected pair.
pub(crate) fn inbox<T: Task>() -> std::io::Result<(Outbox<T>, Inbox<T>)> {
    let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let waker = Arc::new(Waker {
        fd,
        parked: AtomicBool::new(false),
    });
    let (tx, rx) = unbounded();
    Ok((
        Outbox {
            tx,
            waker: waker.clone(),
        },
        Inbox { rx, waker },
    ))
}
