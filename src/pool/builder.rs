//! [`PoolBuilder`]: a pool's settings, checked by [`build`](PoolBuilder::build).

use std::fmt;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crate::config::RestartPolicy;
use crate::error::SpawnError;
use crate::facade::{FacadeBuilder, WorkingProcessFacade};
use crate::task::Task;

use super::{LeasedExecutorManager, Phase, PoolConfigError};

/// Configures a [`LeasedExecutorManager`] before building it.
///
/// Every executor is a [`WorkingProcessFacade`] made from the same
/// [`FacadeBuilder`], whose restart policy is overridden with
/// [`RestartPolicy::Never`]: a crashed worker retires its executor, and the
/// manager replaces it with a fresh one.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
///
/// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe())
///     .min_executors(1)
///     .max_executors(4)
///     .idle_timeout(Duration::from_secs(30))
///     .lease_grace(Duration::from_secs(2))
///     .build()?;
/// pool.start()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct PoolBuilder<T: Task> {
    facade: FacadeBuilder<T>,
    pub(super) min: usize,
    pub(super) max: usize,
    pub(super) idle_timeout: Duration,
    pub(super) lease_grace: Duration,
}

impl<T: Task> Clone for PoolBuilder<T> {
    fn clone(&self) -> Self {
        PoolBuilder {
            facade: self.facade.clone(),
            min: self.min,
            max: self.max,
            idle_timeout: self.idle_timeout,
            lease_grace: self.lease_grace,
        }
    }
}

impl<T: Task> fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("facade", &self.facade)
            .field("min_executors", &self.min)
            .field("max_executors", &self.max)
            .field("idle_timeout", &self.idle_timeout)
            .field("lease_grace", &self.lease_grace)
            .finish()
    }
}

impl<T: Task> PoolBuilder<T> {
    /// A pool whose executors are built from `facade` (its restart policy is
    /// replaced with [`RestartPolicy::Never`]).
    pub fn new(facade: FacadeBuilder<T>) -> Self {
        PoolBuilder {
            facade,
            min: 1,
            max: thread::available_parallelism().map_or(2, |n| n.get()),
            idle_timeout: Duration::from_secs(60),
            lease_grace: Duration::from_secs(10),
        }
    }

    /// Executors kept running even when idle (default 1). Started by
    /// [`start`](LeasedExecutorManager::start), and restored after an
    /// executor is retired.
    pub fn min_executors(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// Executors running at most, leased or not (default: the number of
    /// CPUs). The pool grows to it on demand.
    pub fn max_executors(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// How long an executor above the minimum may stay idle before it is
    /// shut down (default 60 s).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Time past a lease's soft expiry (its duration) before the lease is
    /// revoked and its worker killed (default 10 s).
    pub fn lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace = grace;
        self
    }

    /// Checks the settings and builds the manager. Nothing is started until
    /// [`start`](LeasedExecutorManager::start).
    ///
    /// # Errors
    ///
    /// [`PoolConfigError`]: `max_executors` of 0, or a `min_executors` above
    /// it.
    pub fn build(self) -> Result<LeasedExecutorManager<T>, PoolConfigError> {
        if self.max == 0 {
            return Err(PoolConfigError::NoExecutors);
        }
        if self.min > self.max {
            return Err(PoolConfigError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        let span = crate::trace::pool_span(crate::trace::next_id(), self.min, self.max);
        Ok(LeasedExecutorManager {
            cfg: self,
            phase: Mutex::new(Phase::Idle),
            span,
            demand: Default::default(),
        })
    }

    /// Starts one executor; `lost` is called when its worker ends without
    /// being asked to (the executor is then broken).
    pub(super) fn spawn_executor(
        &self,
        lost: impl Fn() + Send + Sync + 'static,
    ) -> Result<WorkingProcessFacade<T>, SpawnError> {
        self.facade
            .clone()
            .restart(RestartPolicy::Never)
            .on_worker_lost(lost)
            .spawn()
    }
}
