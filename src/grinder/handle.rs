//! [`GrindHandle`], the caller's end of an item's result, with the waker
//! that lets a plain thread wait on it, and [`Reply`], the grinder's end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::WorkError;
use super::stats::Counters;

#[cfg(doc)]
use super::WorkGrinder;

/// An item's reply. If it is ever dropped unanswered it answers
/// [`WorkError::Lost`] itself, so no caller waits forever.
pub(super) struct Reply<O>(pub(super) Option<oneshot::Sender<Result<O, WorkError>>>);

impl<O> Reply<O> {
    pub(super) fn send(mut self, counters: &Counters, result: Result<O, WorkError>) {
        counters.count(&result);
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }

    /// The caller dropped its handle.
    pub(super) fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(WorkError::Lost));
        }
    }
}

/// The result of one item given to a [`WorkGrinder`], delivered as soon as
/// the worker answers it.
///
/// It is a `Future` that works in any async runtime (`handle.await`), and it
/// can be waited on from a plain thread: [`wait`](Self::wait),
/// [`try_wait`](Self::try_wait), [`wait_timeout`](Self::wait_timeout),
/// [`wait_deadline`](Self::wait_deadline).
///
/// # Drop
///
/// Dropping the handle before its item is dispatched removes the item: it
/// never runs. Dropped later, the item runs and its result is discarded.
///
/// ```
/// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
/// use worker_facade::simple::SimpleTask;
///
/// let handle = grinder.enqueue(SimpleTask::new("one", 0.1))?;
/// let text = futures_executor::block_on(handle)?; // or handle.wait()?, or .await
/// println!("{text}");
/// # Ok(()) }
/// ```
#[must_use = "dropping the handle before dispatch removes the item"]
pub struct GrindHandle<O> {
    pub(super) seq: u64,
    /// `None` once the result was taken (or while dropping).
    pub(super) rx: Option<oneshot::AsyncReceiver<Result<O, WorkError>>>,
    pub(super) cancels: Sender<u64>,
}

impl<O> fmt::Debug for GrindHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrindHandle")
            .field("id", &self.seq)
            .field("answered", &self.rx.is_none())
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
    /// The item's number, unique within its grinder (in acceptance order).
    pub fn id(&self) -> u64 {
        self.seq
    }

    /// Blocks until the result is in. ([`WorkError::Lost`] if
    /// [`try_wait`](Self::try_wait) or a timed wait already took it.)
    pub fn wait(mut self) -> Result<O, WorkError> {
        self.block(None).unwrap_or(Err(WorkError::Lost))
    }

    /// The result if it is in, `None` if not yet (or if it was taken).
    pub fn try_wait(&mut self) -> Option<Result<O, WorkError>> {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_result(&mut cx)
    }

    /// Waits at most `timeout`; `None` if the result is not in by then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<O, WorkError>> {
        self.block(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline`; `None` if the result is not in by then.
    pub fn wait_deadline(&mut self, deadline: Instant) -> Option<Result<O, WorkError>> {
        self.block(Some(deadline))
    }

    fn poll_result(&mut self, cx: &mut Context<'_>) -> Option<Result<O, WorkError>> {
        let rx = self.rx.as_mut()?;
        match Pin::new(rx).poll(cx) {
            Poll::Ready(result) => {
                self.rx = None;
                Some(result.unwrap_or(Err(WorkError::Lost)))
            }
            Poll::Pending => None,
        }
    }

    /// Parks the thread until the reply wakes it (or the deadline passes).
    fn block(&mut self, deadline: Option<Instant>) -> Option<Result<O, WorkError>> {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            self.rx.as_ref()?;
            if let Some(result) = self.poll_result(&mut cx) {
                return Some(result);
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

impl<O> Future for GrindHandle<O> {
    type Output = Result<O, WorkError>;

    /// Polling again after the result was returned gives
    /// `Err(WorkError::Lost)`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.rx.is_none() {
            return Poll::Ready(Err(WorkError::Lost));
        }
        match self.poll_result(cx) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl<O> Drop for GrindHandle<O> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            // The receiver goes first, so that the scheduler, told below,
            // finds the item's reply closed even if the item reaches it
            // after this message.
            drop(rx);
            let _ = self.cancels.send(self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reply_answers_lost() {
        let (tx, rx) = oneshot::channel::<Result<String, WorkError>>();
        drop(Reply(Some(tx)));
        assert!(matches!(rx.recv(), Ok(Err(WorkError::Lost))));
    }
}
