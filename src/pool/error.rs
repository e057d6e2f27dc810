//! Why a pool refused: its settings, its start, a lease request, a task.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::error::SpawnError;

#[cfg(doc)]
use super::{Lease, LeasedExecutorManager};

/// The pool's settings are inconsistent.
///
/// ```
/// use worker_facade::{LeasedExecutorManager, PoolConfigError, WorkerCommand, simple::SimpleTask};
///
/// let err = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
///     .min_executors(3)
///     .max_executors(2)
///     .build()
///     .unwrap_err();
/// assert_eq!(err, PoolConfigError::MinAboveMax { min: 3, max: 2 });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolConfigError {
    /// `max_executors` is 0.
    #[error("max_executors must be at least 1")]
    NoExecutors,
    /// `min_executors` is above `max_executors`.
    #[error(
        "min_executors ({min}) is above max_executors ({max}): lower the minimum or raise the maximum"
    )]
    MinAboveMax {
        /// The minimum asked for.
        min: usize,
        /// The maximum asked for.
        max: usize,
    },
}

/// [`LeasedExecutorManager::start`] failed. Executors started before the
/// failure have been shut down again.
///
/// ```
/// use worker_facade::PoolStartError;
/// assert_eq!(
///     PoolStartError::AlreadyStarted.to_string(),
///     "the executor manager is already started"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolStartError {
    /// `start` was called twice.
    #[error("the executor manager is already started")]
    AlreadyStarted,
    /// The manager was stopped; a stopped manager cannot be started again:
    /// build a new one.
    #[error("the executor manager was stopped and cannot be started again: build a new one")]
    Stopped,
    /// One of the minimum executors could not be started.
    #[error("an executor could not be started")]
    Spawn(#[source] SpawnError),
    /// The manager's threads could not be created (a thread limit).
    #[error("could not create the executor manager's {0} thread")]
    Thread(&'static str, #[source] io::Error),
}

/// No lease was granted.
///
/// ```
/// use worker_facade::AcquireError;
/// let err = AcquireError::NoneAvailable { max: 2 };
/// assert!(err.to_string().contains("all 2 executors are leased"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// The manager has not been started: call
    /// [`start`](LeasedExecutorManager::start) first.
    #[error("the executor manager is not started: call start() first")]
    NotStarted,
    /// No executor is free and the pool is at its maximum (only without
    /// waiting, from [`try_acquire`](LeasedExecutorManager::try_acquire)).
    #[error(
        "no executor is available: all {max} executors are leased; retry after a lease is \
         released, or wait with acquire_timeout"
    )]
    NoneAvailable {
        /// The pool's maximum size.
        max: usize,
    },
    /// No executor became free before the deadline.
    #[error(
        "no executor became available within {waited:?}: every executor stayed leased; wait \
         longer, raise max_executors, or shorten the leases"
    )]
    TimedOut {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The manager was stopped and hands out no more leases.
    #[error("the executor manager is stopped and hands out no more leases")]
    Stopped,
    /// A lease must last longer than zero.
    #[error("a lease duration of zero was asked for: a lease must last longer than zero")]
    ZeroLease,
    /// The pool had room to grow, but the new executor failed to start.
    #[error("a new executor was needed but could not be started")]
    Spawn(#[source] Arc<SpawnError>),
}

/// A task was refused by a [`Lease`]. The task is handed back.
///
/// ```
/// use worker_facade::{LeaseError, simple::SimpleTask};
/// let err = LeaseError::Expired {
///     task: SimpleTask::new("late", 0.0),
///     owner: "me".into(),
///     revoked: true,
/// };
/// assert!(err.to_string().contains("lease of me expired"));
/// assert_eq!(err.into_task().id, "late");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError<T> {
    /// The lease passed its soft expiry (it takes no new work; what was
    /// submitted may finish until the hard expiry), or its hard expiry, when
    /// it was revoked and its worker killed.
    #[error(
        "the lease of {owner} expired{}; release it and acquire a new one",
        if *revoked { " and was revoked: its worker was killed" } else { " and takes no new work" }
    )]
    Expired {
        /// The refused task.
        task: T,
        /// The lease's owner.
        owner: String,
        /// Whether the hard expiry passed and the worker was killed.
        revoked: bool,
    },
    /// The manager was stopped, which revoked every lease.
    #[error("the executor manager was stopped, which revoked this lease; its worker was killed")]
    Stopped(T),
    /// The task itself was refused: it could not be encoded, or it is
    /// larger than the maximum frame size. The lease is fine.
    #[error("the task was refused")]
    Refused(#[source] crate::error::SubmitError<T>),
}

impl<T> LeaseError<T> {
    /// The task that was refused.
    pub fn into_task(self) -> T {
        match self {
            LeaseError::Expired { task, .. } | LeaseError::Stopped(task) => task,
            LeaseError::Refused(err) => err.into_task(),
        }
    }
}

impl<T> fmt::Debug for LeaseError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Expired { owner, revoked, .. } => f
                .debug_struct("Expired")
                .field("owner", owner)
                .field("revoked", revoked)
                .finish_non_exhaustive(),
            LeaseError::Stopped(_) => f.write_str("Stopped(..)"),
            LeaseError::Refused(err) => f.debug_tuple("Refused").field(err).finish(),
        }
    }
}
