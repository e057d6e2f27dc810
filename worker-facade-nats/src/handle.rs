//! [`RemoteHandle`]: one remote task's outcome, as soon as it is recorded.

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
/// `IntoFuture`) that any async runtime can drive.
///
/// Dropping a handle does not cancel the task: its outcome then goes to
/// [`collect_tasks`](crate::RemoteFacade::collect_tasks) instead.
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
#[must_use = "dropping a handle sends the outcome to collect_tasks instead"]
pub struct RemoteHandle<O> {
    id: TaskId,
    rx: oneshot::Receiver<Outcome<O>>,
}

impl<O> RemoteHandle<O> {
    pub(crate) fn new(id: TaskId, rx: oneshot::Receiver<Outcome<O>>) -> Self {
        RemoteHandle { id, rx }
    }

    /// The task's ID within its job.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Blocks until the outcome arrives.
    pub fn wait(self) -> Result<Outcome<O>, WaitError> {
        self.rx.recv().map_err(|_| WaitError::Disconnected)
    }

    /// The outcome if it has arrived; [`WaitError::Timeout`] if not yet.
    pub fn try_wait(&self) -> Result<Outcome<O>, WaitError> {
        self.rx.try_recv().map_err(|e| match e {
            oneshot::TryRecvError::Empty => WaitError::Timeout,
            oneshot::TryRecvError::Disconnected => WaitError::Disconnected,
        })
    }

    /// Waits at most `timeout` for the outcome.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Outcome<O>, WaitError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => self.rx.recv_ref().map_err(|_| WaitError::Disconnected),
        }
    }

    /// Waits until `deadline` for the outcome.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<Outcome<O>, WaitError> {
        self.rx.recv_deadline(deadline).map_err(|e| match e {
            oneshot::RecvTimeoutError::Timeout => WaitError::Timeout,
            oneshot::RecvTimeoutError::Disconnected => WaitError::Disconnected,
        })
    }
}

impl<O> IntoFuture for RemoteHandle<O> {
    type Output = Result<Outcome<O>, WaitError>;
    type IntoFuture = RemoteFuture<O>;

    fn into_future(self) -> RemoteFuture<O> {
        RemoteFuture {
            rx: self.rx.into_future(),
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
    rx: oneshot::AsyncReceiver<Outcome<O>>,
}

impl<O> Future for RemoteFuture<O> {
    type Output = Result<Outcome<O>, WaitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| WaitError::Disconnected))
    }
}
