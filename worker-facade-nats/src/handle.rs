//! [`RemoteHandle`]: one remote task's outcome, as soon as it is recorded.

use std::cell::Cell;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use worker_facade::{Outcome, TaskId, WaitError};

/// The outcome of one task submitted with
/// [`RemoteFacade::submit`](crate::RemoteFacade::submit), delivered as soon
/// as an agent records it.
///
/// Waiting comes in four forms, as for a local `TaskHandle`:
/// [`wait`](Self::wait), [`try_wait`](Self::try_wait),
/// [`wait_timeout`](Self::wait_timeout) and
/// [`wait_deadline`](Self::wait_deadline). It is also a `Future` (through
/// `IntoFuture`) that any async runtime can drive. A handle gives its
/// outcome once: asking again is [`WaitError::AlreadyTaken`].
///
/// # Drop
///
/// Dropping a handle does not cancel the task: its outcome then goes to
/// [`collect_tasks`](crate::RemoteFacade::collect_tasks) instead. Say so
/// with [`detach`](Self::detach).
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use worker_facade::simple::SimpleTask;
/// use worker_facade_nats::RemoteFacade;
///
/// let client = RemoteFacade::<SimpleTask>::builder("nats://127.0.0.1:4222").start()?;
/// let handle = client.submit(SimpleTask::new("one", 0.5))?;
/// println!("{:?}", handle.wait());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "dropping a RemoteHandle does not cancel its task: the outcome goes to \
              collect_tasks instead; call .detach() to say so"]
pub struct RemoteHandle<O> {
    id: TaskId,
    rx: oneshot::Receiver<Outcome<O>>,
    /// Set once a wait returned the outcome.
    taken: Cell<bool>,
}

impl<O> RemoteHandle<O> {
    pub(crate) fn new(id: TaskId, rx: oneshot::Receiver<Outcome<O>>) -> Self {
        RemoteHandle {
            id,
            rx,
            taken: Cell::new(false),
        }
    }

    /// The task's ID within its job.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Lets the task run without waiting for it here: its outcome goes to
    /// [`collect_tasks`](crate::RemoteFacade::collect_tasks). The same as
    /// dropping the handle, said out loud.
    pub fn detach(self) {}

    /// Blocks until the outcome arrives.
    ///
    /// # Errors
    ///
    /// [`WaitError::AlreadyTaken`] if an earlier wait returned it;
    /// [`WaitError::Disconnected`] if it can never arrive.
    pub fn wait(self) -> Result<Outcome<O>, WaitError> {
        if self.taken.get() {
            return Err(WaitError::AlreadyTaken);
        }
        self.rx.recv().map_err(|_| WaitError::Disconnected)
    }

    /// The outcome if it has arrived, without blocking.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if not yet; [`WaitError::AlreadyTaken`] if an
    /// earlier wait returned it; [`WaitError::Disconnected`] if it can
    /// never arrive.
    pub fn try_wait(&self) -> Result<Outcome<O>, WaitError> {
        self.take(self.rx.try_recv().map_err(|e| match e {
            oneshot::TryRecvError::Empty => WaitError::Timeout,
            oneshot::TryRecvError::Disconnected => WaitError::Disconnected,
        }))
    }

    /// Waits at most `timeout` for the outcome.
    ///
    /// # Errors
    ///
    /// As [`wait_deadline`](Self::wait_deadline).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Outcome<O>, WaitError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None if self.taken.get() => Err(WaitError::AlreadyTaken),
            None => self.take(self.rx.recv_ref().map_err(|_| WaitError::Disconnected)),
        }
    }

    /// Waits until `deadline` for the outcome.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if it has not arrived by then (the handle can
    /// wait again); [`WaitError::AlreadyTaken`] if an earlier wait returned
    /// it; [`WaitError::Disconnected`] if it can never arrive.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<Outcome<O>, WaitError> {
        if self.taken.get() {
            return Err(WaitError::AlreadyTaken);
        }
        self.take(self.rx.recv_deadline(deadline).map_err(|e| match e {
            oneshot::RecvTimeoutError::Timeout => WaitError::Timeout,
            oneshot::RecvTimeoutError::Disconnected => WaitError::Disconnected,
        }))
    }

    /// What a wait got, remembering that the outcome was taken (the channel
    /// then reads as disconnected, which is not what happened).
    fn take(&self, got: Result<Outcome<O>, WaitError>) -> Result<Outcome<O>, WaitError> {
        match got {
            Ok(outcome) => {
                self.taken.set(true);
                Ok(outcome)
            }
            Err(WaitError::Disconnected) if self.taken.get() => Err(WaitError::AlreadyTaken),
            Err(e) => Err(e),
        }
    }
}

impl<O> IntoFuture for RemoteHandle<O> {
    type Output = Result<Outcome<O>, WaitError>;
    type IntoFuture = RemoteFuture<O>;

    fn into_future(self) -> RemoteFuture<O> {
        RemoteFuture {
            rx: (!self.taken.get()).then(|| self.rx.into_future()),
        }
    }
}

/// A [`RemoteHandle`] being awaited; it needs nothing but a waker, so any
/// runtime drives it.
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use worker_facade::simple::SimpleTask;
/// use worker_facade_nats::RemoteFacade;
///
/// async fn run(client: &RemoteFacade<SimpleTask>) {
///     let handle = client.submit(SimpleTask::new("one", 0.0)).expect("accepted");
///     println!("{:?}", handle.await);
/// }
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct RemoteFuture<O> {
    /// `None` once the outcome was taken.
    rx: Option<oneshot::AsyncReceiver<Outcome<O>>>,
}

impl<O> Future for RemoteFuture<O> {
    type Output = Result<Outcome<O>, WaitError>;

    /// Polling again after the outcome was returned gives
    /// `Err(WaitError::AlreadyTaken)`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Err(WaitError::AlreadyTaken));
        };
        let got = std::task::ready!(Pin::new(rx).poll(cx));
        self.rx = None;
        Poll::Ready(got.map_err(|_| WaitError::Disconnected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_taken_once_is_already_taken_for_every_later_wait() {
        let (tx, rx) = oneshot::channel();
        let h = RemoteHandle::<String>::new(TaskId::from_raw(1), rx);
        assert_eq!(h.try_wait(), Err(WaitError::Timeout));
        assert!(tx.send(Outcome::Completed("done".into())).is_ok());
        assert_eq!(
            h.wait_timeout(Duration::from_secs(1)),
            Ok(Outcome::Completed("done".into()))
        );
        assert_eq!(h.try_wait(), Err(WaitError::AlreadyTaken));
        assert_eq!(h.wait(), Err(WaitError::AlreadyTaken));
    }
}
