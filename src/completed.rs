//! [`Completed`]: records handed over as their tasks finish, while work
//! continues.
//!
//! The engine's ledger holds a sender; once `completed()` is called, every
//! record that no [`TaskHandle`](crate::TaskHandle) takes goes there as it
//! settles (the records kept until then go first), and the ledger forgets
//! it. The facade keeps a receiver of its own, so a record nobody has taken
//! yet is still returned by `collect_tasks`: each record reaches exactly one
//! of them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::task::{Task, TaskRecord};

/// Records of finished tasks, in the order they finish, from
/// [`WorkingProcessFacade::completed`](crate::WorkingProcessFacade::completed).
///
/// It yields the record of every task that has no live
/// [`TaskHandle`](crate::TaskHandle) (sent with `process_task`, or whose
/// handle was dropped): those that finished before `completed()` was first
/// called, then each one as it finishes. It ends (`None`) once the facade
/// is collected or dropped and every record was handed out.
///
/// Use it as a blocking [`Iterator`], with [`recv_timeout`](Self::recv_timeout)
/// or [`try_recv`](Self::try_recv), or in async code with
/// [`recv_async`](Self::recv_async) or [`stream`](Self::stream) (a
/// `futures_core::Stream`, for any runtime). Receivers may be cloned; each
/// record goes to one of them.
///
/// # Drop
///
/// Dropping it loses nothing: records not taken stay for
/// [`collect_tasks`](crate::WorkingProcessFacade::collect_tasks), which
/// returns exactly the records no receiver took.
///
/// ```
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
/// let done = w.completed();
/// for name in ["a", "b", "c"] {
///     w.process_task(SimpleTask::new(name, 0.0))?;
/// }
/// // Each record as soon as its task finishes, while the facade runs on.
/// let firsts: Vec<_> = done.iter().take(3).collect();
/// assert_eq!(firsts.len(), 3);
/// // collect_tasks returns what no receiver took: nothing here.
/// assert!(w.collect_tasks()?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Completed<T: Task> {
    rx: flume::Receiver<TaskRecord<T>>,
}

impl<T: Task> Clone for Completed<T> {
    fn clone(&self) -> Self {
        Completed {
            rx: self.rx.clone(),
        }
    }
}

impl<T: Task> std::fmt::Debug for Completed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completed")
            .field("waiting", &self.rx.len())
            .field("ended", &self.rx.is_disconnected())
            .finish()
    }
}

impl<T: Task> Completed<T> {
    pub(crate) fn new(rx: flume::Receiver<TaskRecord<T>>) -> Self {
        Completed { rx }
    }

    /// The next record, waiting for it; `None` once the facade is collected
    /// or dropped and every record was handed out.
    pub fn recv(&self) -> Option<TaskRecord<T>> {
        self.rx.recv().ok()
    }

    /// The next record if one is waiting now.
    pub fn try_recv(&self) -> Option<TaskRecord<T>> {
        self.rx.try_recv().ok()
    }

    /// The next record, waiting at most `timeout`; `None` if none came (or
    /// the receiver ended: see [`is_ended`](Self::is_ended)).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<TaskRecord<T>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.rx.recv_deadline(deadline).ok(),
            None => self.recv(),
        }
    }

    /// Waits for the next record without blocking a thread; `None` once the
    /// receiver ended.
    pub async fn recv_async(&self) -> Option<TaskRecord<T>> {
        self.rx.recv_async().await.ok()
    }

    /// Whether it ended: the facade is collected or dropped and no record is
    /// left to hand out.
    pub fn is_ended(&self) -> bool {
        self.rx.is_disconnected() && self.rx.is_empty()
    }

    /// Records waiting to be taken.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no record is waiting now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// A blocking iterator over the records (see [`recv`](Self::recv)).
    pub fn iter(&self) -> impl Iterator<Item = TaskRecord<T>> + '_ {
        self.rx.iter()
    }

    /// The records as a `futures_core::Stream`, for any async runtime.
    pub fn stream(&self) -> CompletedStream<T> {
        CompletedStream {
            inner: self.rx.clone().into_stream(),
        }
    }

    /// Takes every record waiting now (for `collect_tasks`).
    pub(crate) fn drain(&self) -> impl Iterator<Item = TaskRecord<T>> + '_ {
        self.rx.try_iter()
    }
}

impl<T: Task> IntoIterator for Completed<T> {
    type Item = TaskRecord<T>;
    type IntoIter = flume::IntoIter<TaskRecord<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.rx.into_iter()
    }
}

impl<'a, T: Task> IntoIterator for &'a Completed<T> {
    type Item = TaskRecord<T>;
    type IntoIter = flume::Iter<'a, TaskRecord<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.rx.iter()
    }
}

/// [`Completed`] as a `futures_core::Stream` of records, from
/// [`Completed::stream`]. Runtime-agnostic: it needs only a waker.
///
/// ```
/// # use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// # worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
/// use futures_core::Stream;
/// use std::pin::Pin;
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
/// let mut records = w.completed().stream();
/// w.process_task(SimpleTask::new("a", 0.0))?;
/// let first = futures_executor::block_on(std::future::poll_fn(|cx| {
///     Pin::new(&mut records).poll_next(cx)
/// }));
/// assert_eq!(first.map(|r| r.task.id), Some("a".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct CompletedStream<T: Task> {
    inner: flume::r#async::RecvStream<'static, TaskRecord<T>>,
}

impl<T: Task> std::fmt::Debug for CompletedStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletedStream").finish_non_exhaustive()
    }
}

impl<T: Task> futures_core::Stream for CompletedStream<T> {
    type Item = TaskRecord<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
