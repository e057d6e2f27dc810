//! [`GrindHandle`], the caller's end of an item's result, with the waker
//! that lets a plain thread wait on it, and [`Reply`], the grinder's end.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::WorkError;
use super::stats::Counters;
use crate::error::WaitError;
use crate::task::TaskId;

#[cfg(doc)]
use super::WorkGrinder;

/// What an item's handle gets: its result, or why it has none.
type ItemResult<O> = Result<O, WorkError>;

/// An item's reply, with the flag its handle's `cancel` sets. If it is ever
/// dropped unanswered it answers [`WorkError::Lost`] itself, so no caller
/// waits forever.
pub(super) struct Reply<O> {
    tx: Option<oneshot::Sender<ItemResult<O>>>,
    cancelled: Arc<AtomicBool>,
}

impl<O> Reply<O> {
    /// A reply and the handle that receives it, for item number `seq`.
    pub(super) fn new(seq: u64, cancels: Sender<u64>) -> (Reply<O>, GrindHandle<O>) {
        let (tx, rx) = oneshot::async_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let handle = GrindHandle {
            seq,
            rx: RefCell::new(Some(rx)),
            cancel: ItemCanceller {
                seq,
                cancelled: cancelled.clone(),
                cancels,
            },
        };
        let reply = Reply {
            tx: Some(tx),
            cancelled,
        };
        (reply, handle)
    }

    pub(super) fn send(mut self, counters: &Counters, result: ItemResult<O>) {
        counters.count(&result);
        if let Some(tx) = self.tx.take() {
            // A caller that dropped its handle does not hear it: fine.
            let _ = tx.send(result);
        }
    }

    /// Answers an item cancelled through its handle, before it went to a
    /// worker.
    pub(super) fn send_cancelled(mut self, counters: &Counters) {
        counters
            .removed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(WorkError::Cancelled));
        }
    }

    /// The caller cancelled the item through its handle.
    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Forgets the caller: nothing will be sent (the item was handed back).
    pub(super) fn disarm(&mut self) {
        self.tx = None;
    }
}

impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(WorkError::Lost));
        }
    }
}

/// Cancels one item: sets its flag (seen wherever the item is) and tells
/// the scheduler, which removes it at once if it is pending.
#[derive(Clone)]
struct ItemCanceller {
    seq: u64,
    cancelled: Arc<AtomicBool>,
    cancels: Sender<u64>,
}

impl ItemCanceller {
    fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            // A grinder that has ended answered every item already.
            let _ = self.cancels.send(self.seq);
        }
    }
}

/// The result of one item given to a [`WorkGrinder`], delivered as soon as
/// the worker answers it.
///
/// Waiting comes in the same four forms as a
/// [`TaskHandle`](crate::TaskHandle)'s, with the same shapes: each returns
/// `Result<Result<Output, WorkError>, WaitError>` — the outer error is about
/// the waiting ([`WaitError::Timeout`] from [`try_wait`](Self::try_wait)
/// when the result is not in yet, or from a timed wait;
/// [`WaitError::AlreadyTaken`] once a wait returned it), the inner one is
/// the item's own ([`WorkError`]): [`wait`](Self::wait),
/// [`try_wait`](Self::try_wait), [`wait_timeout`](Self::wait_timeout),
/// [`wait_deadline`](Self::wait_deadline). It is also a `Future` that works
/// in any async runtime (`handle.await`), with the same output.
///
/// # Drop
///
/// Dropping the handle does not cancel the item, as for a `TaskHandle`:
/// the item runs and its result is discarded. Say so with
/// [`detach`](Self::detach); call [`cancel`](Self::cancel) to remove an
/// item that has not gone to a worker yet.
///
/// ```
/// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
/// use worker_facade::simple::SimpleTask;
///
/// let handle = grinder.enqueue(SimpleTask::new("one", 0.1))?;
/// let text = futures_executor::block_on(handle)??; // or handle.wait()??, or .await??
/// println!("{text}");
/// # Ok(()) }
/// ```
#[must_use = "dropping a GrindHandle does not cancel its item: it runs and its result is \
              discarded; call .detach() to say so, or .cancel() to remove it"]
pub struct GrindHandle<O> {
    seq: u64,
    /// `None` once the result was taken. A `RefCell`: waits take `&self`
    /// (as a `TaskHandle`'s do), and a handle is not `Sync`.
    rx: RefCell<Option<oneshot::AsyncReceiver<ItemResult<O>>>>,
    cancel: ItemCanceller,
}

impl<O> fmt::Debug for GrindHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrindHandle")
            .field("id", &self.id())
            .field("taken", &self.rx.borrow().is_none())
            .finish()
    }
}

/// Wakes a thread parked in [`GrindHandle::wait`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl<O> GrindHandle<O> {
    /// The item's ID, unique within its grinder (counting up in the order
    /// the grinder accepted its items).
    pub fn id(&self) -> TaskId {
        TaskId::from_raw(self.seq)
    }

    /// Removes the item if it has not gone to a worker yet: it never runs,
    /// and its result is `Err(`[`WorkError::Cancelled`]`)`. An item already
    /// on a worker runs to its end and its result is delivered as usual
    /// (unlike [`TaskHandle::cancel`](crate::TaskHandle::cancel), which
    /// stops a running task's worker: here the worker serves the rest of
    /// the item's batch). Never blocks; calling it again changes nothing.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Lets the item run without waiting for it: its result is discarded.
    /// The same as dropping the handle, said out loud.
    pub fn detach(self) {}

    /// What cancels the item, for `map`'s drop.
    pub(crate) fn canceller(&self) -> Box<dyn Fn() + Send + Sync> {
        let cancel = self.cancel.clone();
        Box::new(move || cancel.cancel())
    }

    /// Whether a wait (or a poll) has returned the result.
    pub(super) fn is_taken(&self) -> bool {
        self.rx.borrow().is_none()
    }

    /// Blocks until the result is in.
    ///
    /// # Errors
    ///
    /// [`WaitError::AlreadyTaken`] if an earlier wait returned it. The
    /// item's own failure is the inner `Err`.
    pub fn wait(self) -> Result<Result<O, WorkError>, WaitError> {
        self.block(None)
    }

    /// The result if it is in, without blocking.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if it is not in yet (ask again later);
    /// [`WaitError::AlreadyTaken`] if an earlier wait returned it.
    pub fn try_wait(&self) -> Result<Result<O, WorkError>, WaitError> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_result(&mut cx) {
            Poll::Ready(got) => got,
            Poll::Pending => Err(WaitError::Timeout),
        }
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    ///
    /// As [`wait_deadline`](Self::wait_deadline).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Result<O, WorkError>, WaitError> {
        self.block(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline` for the result.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if it is not in by then (the handle can wait
    /// again); [`WaitError::AlreadyTaken`] if an earlier wait returned it.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<Result<O, WorkError>, WaitError> {
        self.block(Some(deadline))
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<ItemResult<O>, WaitError>> {
        let mut rx = self.rx.borrow_mut();
        let Some(receiver) = rx.as_mut() else {
            return Poll::Ready(Err(WaitError::AlreadyTaken));
        };
        let got = std::task::ready!(Pin::new(receiver).poll(cx));
        *rx = None;
        // The reply answers `Lost` itself if it is ever dropped unanswered,
        // so a closed channel is that too.
        Poll::Ready(Ok(got.unwrap_or(Err(WorkError::Lost))))
    }

    /// Parks the thread until the reply wakes it (or the deadline passes).
    fn block(&self, deadline: Option<Instant>) -> Result<ItemResult<O>, WaitError> {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(got) = self.poll_result(&mut cx) {
                return got;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(WaitError::Timeout);
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

impl<O> Future for GrindHandle<O> {
    type Output = Result<Result<O, WorkError>, WaitError>;

    /// Polling again after the result was returned gives
    /// `Err(WaitError::AlreadyTaken)`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_result(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reply_answers_lost() {
        let (cancels, _rx) = crossbeam_channel::unbounded();
        let (reply, handle) = Reply::<String>::new(0, cancels);
        drop(reply);
        assert!(matches!(handle.try_wait(), Ok(Err(WorkError::Lost))));
        assert_eq!(handle.try_wait().err(), Some(WaitError::AlreadyTaken));
    }
}
