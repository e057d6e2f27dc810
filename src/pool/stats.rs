//! [`PoolStats`]: a snapshot of a pool and its leases.

#[cfg(doc)]
use super::{Lease, LeasedExecutorManager};

/// A snapshot of a [`LeasedExecutorManager`].
///
/// ```
/// # use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
/// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
///     .max_executors(4)
///     .build()?;
/// let stats = pool.stats(); // works before start and after stop too
/// assert!(!stats.started);
/// assert_eq!(stats.max_executors, 4);
/// println!("{} available, {} leased, {} retired", stats.available, stats.leased, stats.retired);
/// for lease in &stats.leases {
///     println!("{} expires in {:.1} s", lease.owner, lease.seconds_to_soft_expiry);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// `start` succeeded.
    pub started: bool,
    /// `stop` has run.
    pub stopped: bool,
    /// The configured minimum.
    pub min_executors: usize,
    /// The configured maximum.
    pub max_executors: usize,
    /// Executors running and not leased.
    pub available: usize,
    /// Executors leased.
    pub leased: usize,
    /// Executors running: `available + leased` (`total + spawning` never
    /// exceeds the maximum).
    pub total: usize,
    /// Executors being started.
    pub spawning: usize,
    /// Callers waiting for a lease.
    pub waiting: usize,
    /// Executors taken out of service for good: their worker crashed or
    /// died, or their lease was revoked.
    pub retired: u64,
    /// Executors started to replace a retired one.
    pub replaced: u64,
    /// Leases revoked at their hard expiry.
    pub revoked: u64,
    /// Idle executors above the minimum shut down after `idle_timeout`.
    pub shrunk: u64,
    /// Executor starts that failed.
    pub spawn_failures: u64,
    /// Leases granted since `start`.
    pub granted: u64,
    /// Times a lease was renewed by its holder since `start`: a
    /// [`WorkGrinder`](crate::WorkGrinder)'s executor that went straight to
    /// its next batch, with a new term from then on, while nobody else
    /// waited for the pool.
    pub renewed: u64,
    /// Every current lease.
    pub leases: Vec<LeaseInfo>,
}

/// One current lease, in [`PoolStats::leases`].
///
/// ```
/// use worker_facade::LeaseInfo;
/// fn overdue(lease: &LeaseInfo) -> bool {
///     lease.seconds_to_soft_expiry < 0.0
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The lease's ID ([`Lease::id`]).
    pub id: u64,
    /// Who holds it.
    pub owner: String,
    /// The leased executor's worker, if it is running.
    pub worker_pid: Option<u32>,
    /// Seconds until the soft expiry; negative once it has passed.
    pub seconds_to_soft_expiry: f64,
    /// Seconds until the hard expiry, when the lease is revoked.
    pub seconds_to_hard_expiry: f64,
}
