//! [`TaskHandle`]: one task's outcome, delivered as soon as it is known.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::WaitError;
use crate::task::{Outcome, TaskId};

/// The outcome of one task submitted with
/// [`submit`](crate::WorkingProcessFacade::submit), available as soon as the
/// worker answers — while other work continues.
///
/// Waiting comes in four forms: [`wait`](Self::wait),
/// [`try_wait`](Self::try_wait), [`wait_timeout`](Self::wait_timeout) and
/// [`wait_deadline`](Self::wait_deadline). It is also a `Future` (through
/// `IntoFuture`) that works with any async runtime.
///
/// Dropping a handle does not cancel the task: its outcome then goes to
/// [`collect_tasks`](crate::WorkingProcessFacade::collect_tasks) instead, so
/// it is never lost.
///
/// ```no_run
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("facade-worker"))?;
/// let handle = w.submit(SimpleTask::new("one", 0.0)).map_err(|e| e.to_string())?;
/// println!("{:?}", handle.wait());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "dropping a handle sends the outcome to collect_tasks instead"]
pub struct TaskHandle<O> {
    id: TaskId,
    rx: oneshot::Receiver<Outcome<O>>,
}

impl<O> TaskHandle<O> {
    pub(crate) fn new(id: TaskId, rx: oneshot::Receiver<Outcome<O>>) -> Self {
        TaskHandle { id, rx }
    }

    /// The task's ID.
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

impl<O> IntoFuture for TaskHandle<O> {
    type Output = Result<Outcome<O>, WaitError>;
    type IntoFuture = TaskFuture<O>;

    fn into_future(self) -> TaskFuture<O> {
        TaskFuture {
            rx: self.rx.into_future(),
        }
    }
}

/// A [`TaskHandle`] being awaited. Runtime-agnostic: it needs nothing but a
/// waker, so tokio, smol, async-std or `futures::executor` all drive it.
///
/// ```no_run
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// async fn run(w: &WorkingProcessFacade<SimpleTask>) {
///     let handle = w.submit(SimpleTask::new("one", 0.0)).expect("accepted");
///     let outcome = handle.await; // a TaskFuture
///     println!("{outcome:?}");
/// }
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct TaskFuture<O> {
    rx: oneshot::AsyncReceiver<Outcome<O>>,
}

impl<O> Future for TaskFuture<O> {
    type Output = Result<Outcome<O>, WaitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| WaitError::Disconnected))
    }
}
