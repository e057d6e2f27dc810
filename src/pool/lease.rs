//! [`Lease`]: one executor held by one caller until its expiry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::facade::WorkingProcessFacade;
use crate::handle::TaskHandle;
use crate::stats::FacadeStats;
use crate::task::Task;
use crate::trace;

use super::LeaseError;
use super::manager::{Msg, SharedTerm, term};

#[cfg(doc)]
use super::LeasedExecutorManager;

/// Why a lease was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// It passed its hard expiry.
    Expired,
    /// The manager was stopped.
    Stopped,
}

/// One executor leased to one caller, until its expiry.
///
/// Submit work with [`submit`](Self::submit); each task's outcome arrives on
/// its [`TaskHandle`] as soon as the worker answers. After the soft expiry
/// the lease takes no new work; at the hard expiry it is revoked (see
/// [`LeasedExecutorManager`]).
///
/// # Drop
///
/// Dropping a lease releases it, like [`release`](Self::release): the
/// executor goes back to the pool — or, if its worker crashed, is retired and
/// replaced. Tasks still queued on it keep running and their outcomes still
/// reach their handles, but the next lessee's tasks wait behind them: wait
/// for your handles before releasing.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, Outcome, WorkerCommand, simple::SimpleTask};
///
/// # let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe()).build()?;
/// # pool.start()?;
/// let lease = pool.acquire(Duration::from_secs(10), "report-job")?;
/// let handles: Vec<_> = ["a", "b"]
///     .into_iter()
///     .map(|id| lease.submit(SimpleTask::new(id, 0.1)))
///     .collect::<Result<_, _>>()?;
/// for handle in handles {
///     if let Outcome::Completed(text) = handle.wait()? {
///         println!("{text}");
///     }
/// }
/// drop(lease); // released
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A lease is `#[must_use]`: `pool.acquire(..)?;` on its own would release
/// it at once, and is warned about:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # use std::time::Duration;
/// # use worker_facade::{AcquireError, LeasedExecutorManager, simple::SimpleTask};
/// # fn demo(pool: &LeasedExecutorManager<SimpleTask>) -> Result<(), AcquireError> {
/// pool.acquire(Duration::from_secs(10), "job")?; // does not compile here
/// # Ok(()) }
/// ```
#[must_use = "dropping a Lease releases it at once: keep it while you submit work through it"]
pub struct Lease<T: Task> {
    pub(super) id: u64,
    pub(super) owner: String,
    pub(super) duration: Duration,
    pub(super) soft: Instant,
    pub(super) hard: Instant,
    pub(super) facade: Arc<WorkingProcessFacade<T>>,
    pub(super) revoked: Arc<OnceLock<Revoked>>,
    /// The term as the manager reads it (renewals write it there too).
    pub(super) term: SharedTerm,
    /// The pool's count of renewals.
    pub(super) renewed: Arc<AtomicU64>,
    pub(super) manager: Sender<Msg<T>>,
}

impl<T: Task> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("duration", &self.duration)
            .field("expired", &self.is_expired())
            .field("revoked", &self.is_revoked())
            .field("worker_pid", &self.worker_pid())
            .finish_non_exhaustive()
    }
}

impl<T: Task> Lease<T> {
    /// The lease's ID, unique within its manager.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who holds the lease, as given to `acquire`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The duration asked for: the soft expiry minus the time the lease
    /// was granted (or last renewed, which only a
    /// [`WorkGrinder`](crate::WorkGrinder) does to its own leases).
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// When the lease stops taking new work.
    pub fn soft_expiry(&self) -> Instant {
        self.soft
    }

    /// When the lease is revoked and its worker killed.
    pub fn hard_expiry(&self) -> Instant {
        self.hard
    }

    /// Whether the soft expiry has passed (or the lease was revoked).
    pub fn is_expired(&self) -> bool {
        self.is_revoked() || Instant::now() >= self.soft
    }

    /// Whether the lease was revoked: its hard expiry passed, or the manager
    /// was stopped. Its worker has been killed.
    pub fn is_revoked(&self) -> bool {
        self.revoked.get().is_some()
    }

    pub(crate) fn revocation(&self) -> Option<Revoked> {
        self.revoked.get().copied()
    }

    /// Where [`revocation`](Self::revocation) is read from, to read it
    /// where the lease itself is not (the grinder answers each item from
    /// the executor's engine thread, and the lease stays with its
    /// scheduler).
    pub(crate) fn revocation_cell(&self) -> Arc<OnceLock<Revoked>> {
        self.revoked.clone()
    }

    /// Queues `task` on the leased executor and returns the handle its
    /// outcome will arrive on. Never blocks.
    ///
    /// # Errors
    ///
    /// Refused, with the task handed back, once the soft expiry has passed
    /// ([`LeaseError::Expired`]) or the lease was revoked, when the manager
    /// stopped ([`LeaseError::Stopped`]), or when the task itself cannot be
    /// sent ([`LeaseError::Refused`]: not encodable, or above
    /// [`WorkerCommand::max_frame_size`](crate::WorkerCommand::max_frame_size)).
    pub fn submit(&self, task: T) -> Result<TaskHandle<T::Output>, LeaseError<T>> {
        self.submit_inner(task, None)
    }

    /// Like [`submit`](Self::submit), with a limit on how long this task may
    /// run once started (past it, it is
    /// [`TimedOut`](crate::Outcome::TimedOut) and its worker stopped); not
    /// a limit on waiting.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn submit_with_time_limit(
        &self,
        task: T,
        limit: Duration,
    ) -> Result<TaskHandle<T::Output>, LeaseError<T>> {
        self.submit_inner(task, Some(limit))
    }

    /// The old name of [`submit_with_time_limit`](Self::submit_with_time_limit).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    #[deprecated(
        note = "renamed to submit_with_time_limit: the duration limits how long the task may \
                run, not how long to wait for it"
    )]
    pub fn submit_with_timeout(
        &self,
        task: T,
        timeout: Duration,
    ) -> Result<TaskHandle<T::Output>, LeaseError<T>> {
        self.submit_inner(task, Some(timeout))
    }

    fn submit_inner(
        &self,
        task: T,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<T::Output>, LeaseError<T>> {
        let task = self.still_open(task)?;
        // A revocation racing with this call kills the worker after the task
        // is queued: the task then gets a NotRun outcome that says the lease
        // expired, so it is answered either way.
        self.facade
            .submit_limited(task, timeout)
            .map_err(|err| self.refused(err))
    }

    /// Like [`submit_with_time_limit`](Self::submit_with_time_limit), handing the
    /// task back with a `NotRun` outcome (for the grinder, which then runs
    /// it on another executor).
    pub(crate) fn submit_reclaim(
        &self,
        task: T,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<crate::engine::Reclaimed<T>>, LeaseError<T>> {
        let task = self.still_open(task)?;
        self.facade
            .submit_reclaim(task, timeout)
            .map_err(|err| self.refused(err))
    }

    /// Gathers the submissions made until the guard is dropped into one
    /// wake of the executor's engine (a grinder's batch going in at once).
    pub(crate) fn gather(&self) -> crate::engine::Gather<'_, T> {
        self.facade.gather()
    }

    /// Whether the lease can carry more work for `at_least` before its
    /// soft expiry: not revoked, its worker never lost, and that much time
    /// left.
    pub(crate) fn has_time_for(&self, at_least: Duration) -> bool {
        !self.is_revoked()
            && self.facade.workers_lost() == 0
            && self
                .soft
                .checked_duration_since(Instant::now())
                .is_some_and(|left| left >= at_least)
    }

    /// Starts the lease's term again, from now, for `owner` (a grinder's
    /// executor going straight to its next batch, which the lease then
    /// names). The new term is written where the manager reads it, which
    /// wakes nobody: the manager finds it when the old term would have
    /// ended. Renew only a lease with time left
    /// ([`has_time_for`](Self::has_time_for)), so that the manager never
    /// revokes the lease just as it is renewed. Returns whether it was
    /// renewed: not once it is revoked.
    pub(crate) fn renew(&mut self, owner: String) -> bool {
        let now = Instant::now();
        let grace = self.hard.saturating_duration_since(self.soft);
        let soft = now.checked_add(self.duration).unwrap_or(self.soft);
        let hard = soft.checked_add(grace).unwrap_or(soft);
        {
            // The manager revokes under this lock too: a lease revoked
            // before it is taken stays revoked, and one renewed before the
            // manager looks is judged by its new term.
            let mut term = term(&self.term);
            if self.is_revoked() {
                return false;
            }
            term.owner.clone_from(&owner);
            term.soft = soft;
            term.hard = hard;
        }
        self.renewed.fetch_add(1, Ordering::Relaxed);
        trace::lease_renewed(self.id, &owner, self.facade.worker_pid(), self.duration);
        self.owner = owner;
        self.soft = soft;
        self.hard = hard;
        true
    }

    /// The task back if the lease takes work now; the refusal otherwise.
    fn still_open(&self, task: T) -> Result<T, LeaseError<T>> {
        match self.revocation() {
            Some(Revoked::Stopped) => Err(LeaseError::Stopped(task)),
            Some(Revoked::Expired) => Err(self.expired(task, true)),
            None if Instant::now() >= self.soft => Err(self.expired(task, false)),
            None => Ok(task),
        }
    }

    /// Why the facade refused a task, as the lease says it.
    fn refused(&self, err: crate::error::SubmitError<T>) -> LeaseError<T> {
        use crate::error::SubmitError;
        match err {
            err @ (SubmitError::Unencodable { .. } | SubmitError::TooLarge { .. }) => {
                LeaseError::Refused(err)
            }
            err => match self.revocation() {
                // The pool never collects its facades: one that refuses work
                // was ended with its lease.
                Some(Revoked::Stopped) => LeaseError::Stopped(err.into_task()),
                _ => self.expired(err.into_task(), true),
            },
        }
    }

    fn expired(&self, task: T, revoked: bool) -> LeaseError<T> {
        LeaseError::Expired {
            task,
            owner: self.owner.clone(),
            revoked,
        }
    }

    /// The leased executor's worker process ID, if it is running.
    pub fn worker_pid(&self) -> Option<u32> {
        self.facade.worker_pid()
    }

    /// The leased executor's counters (over its whole life, not only this
    /// lease).
    pub fn executor_stats(&self) -> FacadeStats {
        self.facade.stats()
    }

    /// Gives the executor back to the pool. The same as dropping the lease.
    pub fn release(self) {}
}

impl<T: Task> Drop for Lease<T> {
    fn drop(&mut self) {
        // A manager that has ended no longer needs to hear about it.
        let _ = self.manager.send(Msg::Release { id: self.id });
    }
}
