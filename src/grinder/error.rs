//! Why the grinder refused to start or to take an item, and why an accepted
//! item has no result.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::pool::AcquireError;
use crate::task::{CrashInfo, NotRunReason};

#[cfg(doc)]
use super::{AfterCrash, WorkGrinder};

/// [`WorkGrinder::start`] failed.
///
/// ```
/// use worker_facade::GrinderStartError;
/// assert!(GrinderStartError::ManagerNotStarted.to_string().contains("start the executor manager"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrinderStartError {
    /// `start` was called twice.
    #[error("the grinder is already started")]
    AlreadyStarted,
    /// The grinder was stopped; it cannot be started again: build a new one.
    #[error("the grinder was stopped and cannot be started again: build a new one")]
    Stopped,
    /// The executor manager is not running.
    #[error("the executor manager is not running: start the executor manager before the grinder")]
    ManagerNotStarted,
    /// The grinder's threads could not be created (a thread limit).
    #[error("could not create the grinder's threads")]
    Thread(#[source] io::Error),
}

/// [`WorkGrinder::enqueue`] (or `submit_from_thread`, `submit`, `map`)
/// refused an item; it is handed back. (Formerly `GrinderError`.)
///
/// ```
/// use worker_facade::{EnqueueError, simple::SimpleTask};
/// let err = EnqueueError::NotStarted(SimpleTask::new("early", 0.0));
/// assert!(err.to_string().contains("call start()"));
/// assert_eq!(err.into_task().id, "early");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError<T> {
    /// The grinder has not been started.
    #[error("the grinder is not started: call start() before submitting work")]
    NotStarted(T),
    /// The grinder is stopping: it finishes (or cancels) what it has and
    /// takes nothing new.
    #[error("the grinder is stopping and takes no new work")]
    Stopping(T),
    /// The grinder was stopped.
    #[error("the grinder was stopped and takes no new work: build and start a new one")]
    Stopped(T),
}

impl<T> EnqueueError<T> {
    /// The item that was refused.
    pub fn into_task(self) -> T {
        match self {
            EnqueueError::NotStarted(t) | EnqueueError::Stopping(t) | EnqueueError::Stopped(t) => t,
        }
    }
}

impl<T> fmt::Debug for EnqueueError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnqueueError::NotStarted(_) => "NotStarted(..)",
            EnqueueError::Stopping(_) => "Stopping(..)",
            EnqueueError::Stopped(_) => "Stopped(..)",
        })
    }
}

/// Why an accepted item has no result.
///
/// The crash reports are boxed to keep `Result<_, WorkError>` small.
///
/// ```
/// use worker_facade::WorkError;
/// let err = WorkError::Failed("bad input".into());
/// assert_eq!(err.to_string(), "the task failed: bad input");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// The handler returned an error or panicked; the worker survived.
    #[error("the task failed: {0}")]
    Failed(String),
    /// The worker process died while running this item. It is not re-run.
    #[error("the task crashed its worker: {0}")]
    Crashed(Box<CrashInfo>),
    /// The item ran over its facade's task timeout; its worker was killed.
    #[error("the task ran longer than its limit of {0:?}; its worker was killed")]
    TimedOut(Duration),
    /// The batch's lease passed its hard expiry: its worker was killed while
    /// running this item (`crash` says how it ended), or before it started
    /// (`crash` is `None`; only with [`AfterCrash::ReportNotRun`]).
    #[error(
        "the lease of {owner} expired before the task finished{}; give the grinder a longer \
         lease, or look for a hung task",
        match crash {
            Some(_) => " (its worker was killed while running it)",
            None => " (it never started)",
        }
    )]
    LeaseExpired {
        /// The batch's lease owner.
        owner: String,
        /// How the killed worker ended, when it was running this item.
        crash: Option<Box<CrashInfo>>,
    },
    /// The item never ran: its executor died before it started and it was
    /// not re-run (see [`AfterCrash`]), or it could not be sent.
    #[error("the task never ran: {0}")]
    NotRun(Box<NotRunReason>),
    /// The item was refused before it was sent: it could not be encoded, or
    /// it is larger than the maximum frame size.
    #[error("the item was refused: {0}")]
    Refused(String),
    /// The item was cancelled before it went to a worker: through its
    /// handle ([`GrindHandle::cancel`](super::GrindHandle::cancel), or by
    /// dropping the future of [`WorkGrinder::submit`]), or by
    /// [`stop`](WorkGrinder::stop) with `cancel_pending`.
    #[error(
        "the task was cancelled before it went to a worker (by its handle, or by stopping the \
         grinder with cancel_pending)"
    )]
    Cancelled,
    /// No executor could be leased for the item's batch.
    #[error("no executor could be leased for the task")]
    NoExecutor(#[source] AcquireError),
    /// The grinder ended without answering. A bug in worker-facade: please
    /// report it. (A result already taken from its handle is
    /// [`WaitError::AlreadyTaken`](crate::WaitError::AlreadyTaken), not
    /// this.)
    #[error("the grinder ended without answering (a bug in worker-facade: please report it)")]
    Lost,
}

/// Why an item has no result: refused when it was submitted
/// ([`EnqueueError`]), or taken and without a result ([`WorkError`]). What
/// [`WorkGrinder::submit`] and the grinder's `map` give. (Formerly
/// `GrindError`.)
///
/// ```
/// use worker_facade::{ItemError, EnqueueError, WorkError, simple::SimpleTask};
/// let refused: ItemError<SimpleTask> = ItemError::Refused(EnqueueError::Stopped(SimpleTask::new("a", 0.0)));
/// assert!(refused.to_string().contains("stopped"));
/// let failed: ItemError<SimpleTask> = ItemError::Work(WorkError::Cancelled);
/// assert!(failed.to_string().contains("cancelled"));
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ItemError<T> {
    /// The grinder did not take the item.
    #[error(transparent)]
    Refused(EnqueueError<T>),
    /// The item was taken but has no result.
    #[error(transparent)]
    Work(WorkError),
}

/// The old name of [`EnqueueError`], too close to `GrindError`'s.
#[deprecated(note = "renamed to EnqueueError: the grinder refused to enqueue the item")]
pub type GrinderError<T> = EnqueueError<T>;

/// The old name of [`ItemError`], too close to `GrinderError`'s.
#[deprecated(note = "renamed to ItemError: why an item has no result")]
pub type GrindError<T> = ItemError<T>;

impl<T> fmt::Debug for ItemError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemError::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            ItemError::Work(e) => f.debug_tuple("Work").field(e).finish(),
        }
    }
}

/// [`WorkGrinder::stats_from_thread`] got no answer in time.
///
/// ```
/// use std::time::Duration;
/// use worker_facade::StatsTimeout;
/// assert!(StatsTimeout(Duration::from_millis(5)).to_string().contains("5ms"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the grinder did not answer within {0:?}; try again with a longer timeout")]
pub struct StatsTimeout(pub Duration);
