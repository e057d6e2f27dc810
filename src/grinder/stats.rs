//! [`GrinderStats`], and the counters the grinder's threads share to fill it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::WorkError;

#[cfg(doc)]
use super::WorkGrinder;

/// A snapshot of a [`WorkGrinder`].
///
/// ```
/// # fn show(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) {
/// let stats = grinder.stats();
/// println!(
///     "{} pending (oldest {:?}), {} batches in flight, {} completed, {} failed",
///     stats.pending, stats.oldest_wait, stats.batches_in_flight, stats.completed, stats.failed
/// );
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GrinderStats {
    /// Started and not yet fully stopped.
    pub started: bool,
    /// `stop` has begun and not finished.
    pub stopping: bool,
    /// `stop` has finished.
    pub stopped: bool,
    /// Items waiting for their batch to be dispatched.
    pub pending: usize,
    /// How long the oldest pending item has waited.
    pub oldest_wait: Option<Duration>,
    /// The configured `max_wait`.
    pub max_wait: Duration,
    /// The configured `batch_size_threshold`.
    pub batch_size_threshold: usize,
    /// The configured lease per batch.
    pub lease: Duration,
    /// Batches dispatched so far.
    pub batches_dispatched: u64,
    /// Batches dispatched and not finished (waiting for a lease or running).
    pub batches_in_flight: u64,
    /// Items answered with a result.
    pub completed: u64,
    /// Items answered with a [`WorkError`] other than `Cancelled`.
    pub failed: u64,
    /// Items answered [`WorkError::Cancelled`] by
    /// [`stop`](WorkGrinder::stop)`(true)`.
    pub cancelled: u64,
    /// Items removed through their handle's
    /// [`cancel`](super::GrindHandle::cancel) before they went to a worker
    /// (answered [`WorkError::Cancelled`], not counted in `cancelled`).
    pub removed: u64,
    /// Item re-runs after a crash or an expired lease.
    pub rerun: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) removed: AtomicU64,
    pub(super) rerun: AtomicU64,
}

impl Counters {
    pub(super) fn count<O>(&self, result: &Result<O, WorkError>) {
        let cell = match result {
            Ok(_) => &self.completed,
            Err(WorkError::Cancelled) => &self.cancelled,
            Err(_) => &self.failed,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }
}
