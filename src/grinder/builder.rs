//! [`GrinderBuilder`]: a grinder's settings, checked by
//! [`build`](GrinderBuilder::build), and [`AfterCrash`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::pool::LeasedExecutorManager;
use crate::task::Task;

use super::{Settings, WorkGrinder};

#[cfg(doc)]
use super::WorkError;

/// What happens to the rest of a batch when an item crashes its executor (or
/// the batch's lease expires and its worker is killed).
///
/// The item that was running is reported either way
/// ([`WorkError::Crashed`] or [`WorkError::LeaseExpired`]) and never re-run.
///
/// ```
/// use worker_facade::AfterCrash;
/// assert_eq!(AfterCrash::default(), AfterCrash::Rerun);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AfterCrash {
    /// The items that had not started run again on a freshly leased
    /// executor (each item at most 3 more times).
    #[default]
    Rerun,
    /// The items that had not started are answered
    /// [`WorkError::NotRun`] (or [`WorkError::LeaseExpired`]).
    ReportNotRun,
}

/// Configures a [`WorkGrinder`]; [`build`](Self::build) checks the values.
///
/// The defaults are those of Python's `leasepool` `WorkGrinder`: `max_wait`
/// 10 s, `batch_size_threshold` 20, `lease` 60 s, `owner_prefix`
/// `"work-grinder"`.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::sync::Arc;
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
///
/// let pool = Arc::new(
///     LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe()).build()?,
/// );
/// let grinder = WorkGrinder::builder(pool)
///     .max_wait(Duration::from_millis(50))
///     .batch_size_threshold(100)
///     .lease_seconds(30.0)
///     .owner_prefix("reports")
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct GrinderBuilder<T: Task> {
    manager: Arc<LeasedExecutorManager<T>>,
    max_wait: f64,
    batch_size_threshold: usize,
    lease: f64,
    owner_prefix: String,
    concurrency: Option<usize>,
    after_crash: AfterCrash,
}

impl<T: Task> fmt::Debug for GrinderBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrinderBuilder")
            .field("max_wait", &self.max_wait)
            .field("batch_size_threshold", &self.batch_size_threshold)
            .field("lease", &self.lease)
            .field("owner_prefix", &self.owner_prefix)
            .field("concurrency", &self.concurrency)
            .field("after_crash", &self.after_crash)
            .finish_non_exhaustive()
    }
}

impl<T: Task> GrinderBuilder<T> {
    /// A grinder leasing its executors from `manager`, with the defaults.
    pub fn new(manager: Arc<LeasedExecutorManager<T>>) -> Self {
        GrinderBuilder {
            manager,
            max_wait: 10.0,
            batch_size_threshold: 20,
            lease: 60.0,
            owner_prefix: "work-grinder".into(),
            concurrency: None,
            after_crash: AfterCrash::default(),
        }
    }

    /// The longest an item waits before its batch is dispatched (default
    /// 10 s). Must be more than zero.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait.as_secs_f64();
        self
    }

    /// [`max_wait`](Self::max_wait) in seconds, as `leasepool` takes it
    /// (`max_wait_seconds`). Must be finite and more than zero.
    pub fn max_wait_seconds(mut self, seconds: f64) -> Self {
        self.max_wait = seconds;
        self
    }

    /// A batch is dispatched as soon as this many items are pending, and
    /// holds at most this many (default 20). Must be more than zero.
    pub fn batch_size_threshold(mut self, items: usize) -> Self {
        self.batch_size_threshold = items;
        self
    }

    /// How long each batch leases its executor (default 60 s). Past it (plus
    /// the pool's `lease_grace`) the batch's worker is killed and the item
    /// it was running answered [`WorkError::LeaseExpired`]. Must be more than
    /// zero.
    ///
    /// An executor whose batch has landed goes straight to the next one
    /// when one is waiting, nobody else waits for the pool, its worker was
    /// never lost, the grinder is not cancelling and at least half the lease
    /// is left: its lease is renewed, a full term from the new batch's
    /// start.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.as_secs_f64();
        self
    }

    /// [`lease`](Self::lease) in seconds, as `leasepool` takes it
    /// (`lease_seconds`). Must be finite and more than zero.
    pub fn lease_seconds(mut self, seconds: f64) -> Self {
        self.lease = seconds;
        self
    }

    /// The prefix of each batch's lease owner, followed by `-` and the
    /// batch number (default `"work-grinder"`).
    pub fn owner_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.owner_prefix = prefix.into();
        self
    }

    /// How many batches may run at once, each on its own executor (default:
    /// the pool's `max_executors`). Must be more than zero.
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.concurrency = Some(batches);
        self
    }

    /// What happens to the rest of a batch after a crash (default
    /// [`AfterCrash::Rerun`]).
    pub fn after_crash(mut self, policy: AfterCrash) -> Self {
        self.after_crash = policy;
        self
    }

    /// Checks the settings and builds the grinder. Nothing runs until
    /// [`start`](WorkGrinder::start).
    ///
    /// # Errors
    ///
    /// [`GrinderConfigError`] naming the setting out of range: a `max_wait` or
    /// `lease` that is not a positive finite duration, a zero
    /// `batch_size_threshold` or `concurrency`.
    pub fn build(self) -> Result<WorkGrinder<T>, GrinderConfigError> {
        let max_wait =
            positive_seconds(self.max_wait).ok_or(GrinderConfigError::MaxWait(self.max_wait))?;
        let lease = positive_seconds(self.lease).ok_or(GrinderConfigError::Lease(self.lease))?;
        if self.batch_size_threshold == 0 {
            return Err(GrinderConfigError::BatchSizeThreshold);
        }
        let concurrency = self
            .concurrency
            .unwrap_or_else(|| self.manager.max_executors());
        if concurrency == 0 {
            return Err(GrinderConfigError::Concurrency);
        }
        let settings = Settings {
            max_wait,
            threshold: self.batch_size_threshold,
            lease,
            span: crate::trace::grinder_span(crate::trace::next_id(), &self.owner_prefix),
            owner_prefix: self.owner_prefix,
            concurrency,
            after_crash: self.after_crash,
        };
        Ok(WorkGrinder::with_settings(self.manager, settings))
    }
}

/// A finite, positive number of seconds that is at least one nanosecond.
fn positive_seconds(seconds: f64) -> Option<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
}

/// A [`GrinderBuilder`] value is out of range.
///
/// ```
/// # use std::sync::Arc;
/// # use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
/// use worker_facade::{GrinderConfigError, WorkGrinder};
/// // Building spawns nothing; only start() does.
/// let pool = Arc::new(LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("w")).build()?);
/// let err = WorkGrinder::builder(pool).max_wait_seconds(-1.0).build().unwrap_err();
/// assert_eq!(err, GrinderConfigError::MaxWait(-1.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GrinderConfigError {
    /// `max_wait` is zero, negative, not finite, or too large.
    #[error("max_wait must be a finite number of seconds greater than 0, got {0}")]
    MaxWait(f64),
    /// `batch_size_threshold` is zero.
    #[error("batch_size_threshold must be greater than 0")]
    BatchSizeThreshold,
    /// `lease` is zero, negative, not finite, or too large.
    #[error("lease must be a finite number of seconds greater than 0, got {0}")]
    Lease(f64),
    /// `concurrency` is zero (or the pool's `max_executors` is).
    #[error("concurrency must be greater than 0")]
    Concurrency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_checked() {
        assert_eq!(positive_seconds(0.5), Some(Duration::from_millis(500)));
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-12,
            1e30,
        ] {
            assert_eq!(positive_seconds(bad), None, "{bad}");
        }
    }
}
