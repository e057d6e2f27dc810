//! [`LeasedExecutorManager`]: a pool of worker processes that callers lease
//! for a bounded time.
//!
//! # Design
//!
//! One manager thread (`wf-pool-manager`) owns every executor, every lease
//! and every waiting caller; callers and leases talk to it through a channel.
//! Lease expiry is a deadline on that channel's wait, so no thread sleeps and
//! nothing polls. Starting an executor (spawn + handshake) can take a while,
//! so it happens on a second thread (`wf-pool-spawner`) and the manager keeps
//! answering meanwhile. Both threads are joined by [`stop`].
//!
//! Executors are [`WorkingProcessFacade`]s built with
//! [`RestartPolicy::Never`]: a worker that dies leaves its facade dead, and the
//! manager, seeing it from the facade's counters, retires the executor and
//! starts a fresh one. A crash therefore never silently moves a lessee's
//! queued work to another process behind its back; the lessee sees the crash
//! and the tasks that did not run, and decides.
//!
//! [`stop`]: LeasedExecutorManager::stop

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::command::WorkerCommand;
use crate::config::RestartPolicy;
use crate::error::SpawnError;
use crate::facade::{FacadeBuilder, WorkingProcessFacade};
use crate::handle::TaskHandle;
use crate::stats::FacadeStats;
use crate::task::Task;

/// How long after a failed spawn the manager tries again to restore the
/// minimum (doubling up to [`MAX_RETRY`]). Callers waiting for an executor
/// trigger their own spawns and are not delayed by this.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Configures a [`LeasedExecutorManager`] before building it.
///
/// Every executor is a [`WorkingProcessFacade`] made from the same
/// [`FacadeBuilder`], whose restart policy is overridden with
/// [`RestartPolicy::Never`]: a crashed worker retires its executor, and the
/// manager replaces it with a fresh one.
///
/// ```no_run
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
///
/// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("target/debug/facade-worker"))
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
    min: usize,
    max: usize,
    idle_timeout: Duration,
    lease_grace: Duration,
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
        Ok(LeasedExecutorManager {
            cfg: self,
            phase: Mutex::new(Phase::Idle),
        })
    }

    fn spawn_executor(&self) -> Result<WorkingProcessFacade<T>, SpawnError> {
        self.facade.clone().restart(RestartPolicy::Never).spawn()
    }
}

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
}

impl<T> LeaseError<T> {
    /// The task that was refused.
    pub fn into_task(self) -> T {
        match self {
            LeaseError::Expired { task, .. } | LeaseError::Stopped(task) => task,
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
        }
    }
}

/// Why a lease was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// It passed its hard expiry.
    Expired,
    /// The manager was stopped.
    Stopped,
}

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

/// What callers and leases send the manager thread.
enum Msg<T: Task> {
    Acquire {
        owner: String,
        duration: Duration,
        wait: bool,
        deadline: Option<Instant>,
        reply: Sender<Result<Lease<T>, AcquireError>>,
    },
    Release {
        id: u64,
    },
    Spawned {
        result: Result<WorkingProcessFacade<T>, SpawnError>,
        replacement: bool,
    },
    Stats(oneshot::Sender<PoolStats>),
    Stop,
}

enum Phase<T: Task> {
    Idle,
    Running {
        tx: Sender<Msg<T>>,
        thread: JoinHandle<PoolStats>,
        spawner: JoinHandle<()>,
    },
    Stopped(PoolStats),
}

/// A pool of executors — worker processes, each behind a
/// [`WorkingProcessFacade`] — that callers lease for a bounded time.
///
/// The pool keeps between `min_executors` and `max_executors` executors,
/// starts new ones when callers wait, and shuts down executors above the
/// minimum that stayed idle for `idle_timeout`. An executor is leased to one
/// caller at a time:
///
/// - [`acquire`](Self::acquire) (waits as long as it takes),
///   [`try_acquire`](Self::try_acquire) (does not wait for a lease to be
///   released), [`acquire_timeout`](Self::acquire_timeout) and
///   [`acquire_deadline`](Self::acquire_deadline) return a [`Lease`].
/// - A lease has a **soft expiry** (its duration), after which it takes no new
///   work, and a **hard expiry** (plus `lease_grace`), at which it is revoked:
///   its worker is killed, the task it was running is reported
///   [`Crashed`](crate::Outcome::Crashed) and every task it had not started
///   [`NotRun`](crate::Outcome::NotRun), both with a reason saying the lease
///   expired, later submissions are refused with [`LeaseError::Expired`], and
///   the executor is replaced.
/// - An executor whose worker crashed or died is **retired**, never handed out
///   again, and replaced, so the pool keeps its minimum.
///
/// Every method works from any thread; share the manager in an `Arc`.
///
/// # Drop
///
/// Dropping a running manager calls [`stop`](Self::stop): leases still held
/// are revoked (their workers killed) and idle executors are shut down.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
///
/// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("target/debug/facade-worker"))
///     .max_executors(2)
///     .build()?;
/// pool.start()?;
/// let lease = pool.acquire_timeout(Duration::from_secs(60), "me", Duration::from_secs(5))?;
/// let handle = lease.submit(SimpleTask::new("one", 0.1))?;
/// println!("{:?}", handle.wait()?);
/// lease.release();
/// pool.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LeasedExecutorManager<T: Task> {
    cfg: PoolBuilder<T>,
    phase: Mutex<Phase<T>>,
}

impl<T: Task> fmt::Debug for LeasedExecutorManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.lock_phase() {
            Phase::Idle => "not started",
            Phase::Running { .. } => "running",
            Phase::Stopped(_) => "stopped",
        };
        f.debug_struct("LeasedExecutorManager")
            .field("min_executors", &self.cfg.min)
            .field("max_executors", &self.cfg.max)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<T: Task> LeasedExecutorManager<T> {
    /// A builder for a pool whose executors run `command` with the default
    /// facade settings. Shorthand for
    /// `PoolBuilder::new(WorkingProcessFacade::<T>::builder(command))`; use
    /// [`PoolBuilder::new`] to tune the facades (task timeouts, output).
    pub fn builder(command: WorkerCommand) -> PoolBuilder<T> {
        PoolBuilder::new(WorkingProcessFacade::<T>::builder(command))
    }

    fn lock_phase(&self) -> MutexGuard<'_, Phase<T>> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the minimum number of executors and the manager's threads.
    ///
    /// On error, every executor started so far is shut down again.
    pub fn start(&self) -> Result<(), PoolStartError> {
        let mut phase = self.lock_phase();
        match &*phase {
            Phase::Running { .. } => return Err(PoolStartError::AlreadyStarted),
            Phase::Stopped(_) => return Err(PoolStartError::Stopped),
            Phase::Idle => {}
        }
        // Dropping this vector on an early return shuts the executors down.
        let mut executors = Vec::with_capacity(self.cfg.min);
        for _ in 0..self.cfg.min {
            executors.push(Arc::new(
                self.cfg.spawn_executor().map_err(PoolStartError::Spawn)?,
            ));
        }
        let (tx, rx) = unbounded();
        let (spawn_tx, spawn_rx) = unbounded::<bool>();
        let stopping = Arc::new(AtomicBool::new(false));
        let spawner = {
            let cfg = self.cfg.clone();
            let tx = tx.clone();
            let stopping = stopping.clone();
            thread::Builder::new()
                .name("wf-pool-spawner".into())
                .spawn(move || spawner::<T>(cfg, spawn_rx, tx, stopping))
                .map_err(|e| PoolStartError::Thread("spawner", e))?
        };
        let now = Instant::now();
        let manager = Manager {
            min: self.cfg.min,
            max: self.cfg.max,
            idle_timeout: self.cfg.idle_timeout,
            grace: self.cfg.lease_grace,
            rx,
            tx: tx.clone(),
            spawn_tx: Some(spawn_tx),
            spawner_stop: stopping,
            available: executors
                .into_iter()
                .map(|facade| Idle { facade, since: now })
                .collect(),
            leased: HashMap::new(),
            waiters: VecDeque::new(),
            spawning: 0,
            next_lease: 0,
            retired: 0,
            replaced: 0,
            revoked: 0,
            shrunk: 0,
            spawn_failures: 0,
            retry_at: None,
            backoff: FIRST_RETRY,
            stopping: false,
        };
        let thread = match thread::Builder::new()
            .name("wf-pool-manager".into())
            .spawn(move || manager.run())
        {
            Ok(thread) => thread,
            Err(e) => {
                // The closure, and with it the manager, its executors and the
                // spawner's request channel, is gone: the spawner ends.
                drop(tx);
                let _ = spawner.join();
                return Err(PoolStartError::Thread("manager", e));
            }
        };
        *phase = Phase::Running {
            tx,
            thread,
            spawner,
        };
        Ok(())
    }

    /// Stops the manager: callers waiting for a lease get
    /// [`AcquireError::Stopped`], leases still held are revoked (their
    /// workers killed; their tasks get outcomes saying so), idle executors
    /// are shut down (each finishes the task it runs, within its grace
    /// period), and both of the manager's threads are joined.
    ///
    /// Idempotent. A manager that was never started is simply marked stopped.
    pub fn stop(&self) {
        let mut phase = self.lock_phase();
        let stats = match std::mem::replace(&mut *phase, Phase::Idle) {
            Phase::Idle => PoolStats {
                min_executors: self.cfg.min,
                max_executors: self.cfg.max,
                stopped: true,
                ..PoolStats::default()
            },
            Phase::Stopped(stats) => stats,
            Phase::Running {
                tx,
                thread,
                spawner,
            } => {
                let _ = tx.send(Msg::Stop);
                drop(tx);
                let stats = thread.join().unwrap_or_else(|_| PoolStats {
                    started: true,
                    stopped: true,
                    min_executors: self.cfg.min,
                    max_executors: self.cfg.max,
                    ..PoolStats::default()
                });
                // The manager dropped the spawner's request channel; an
                // executor it was still starting is shut down again.
                let _ = spawner.join();
                stats
            }
        };
        *phase = Phase::Stopped(stats);
    }

    /// Whether [`start`](Self::start) succeeded and [`stop`](Self::stop) has
    /// not run.
    pub fn is_started(&self) -> bool {
        matches!(&*self.lock_phase(), Phase::Running { .. })
    }

    /// The configured minimum number of executors.
    pub fn min_executors(&self) -> usize {
        self.cfg.min
    }

    /// The configured maximum number of executors.
    pub fn max_executors(&self) -> usize {
        self.cfg.max
    }

    /// Leases an executor for `lease`, waiting as long as it takes for one to
    /// be free (or started). See [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire(
        &self,
        lease: Duration,
        owner: impl Into<String>,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with(lease, owner.into(), true, None)
    }

    /// Leases an executor for `lease` without waiting for another lease to be
    /// released: [`AcquireError::NoneAvailable`] when every executor is
    /// leased and the pool is at its maximum. When the pool has room to grow,
    /// it starts an executor and waits for that start.
    pub fn try_acquire(
        &self,
        lease: Duration,
        owner: impl Into<String>,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with(lease, owner.into(), false, None)
    }

    /// Leases an executor for `lease`, waiting at most `timeout` for one to be
    /// free: [`AcquireError::TimedOut`] after that.
    pub fn acquire_timeout(
        &self,
        lease: Duration,
        owner: impl Into<String>,
        timeout: Duration,
    ) -> Result<Lease<T>, AcquireError> {
        let deadline = Instant::now().checked_add(timeout);
        self.acquire_with(lease, owner.into(), true, deadline)
    }

    /// Leases an executor for `lease`, waiting until `deadline` for one to be
    /// free: [`AcquireError::TimedOut`] after that.
    pub fn acquire_deadline(
        &self,
        lease: Duration,
        owner: impl Into<String>,
        deadline: Instant,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with(lease, owner.into(), true, Some(deadline))
    }

    fn acquire_with(
        &self,
        lease: Duration,
        owner: String,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Lease<T>, AcquireError> {
        let asked = Instant::now();
        let reply = self.request(lease, owner, wait, deadline)?;
        match deadline {
            None => reply.recv().unwrap_or(Err(AcquireError::Stopped)),
            Some(deadline) => match reply.recv_deadline(deadline) {
                Ok(result) => result,
                // A lease granted just now is dropped with `reply` and goes
                // straight back to the pool.
                Err(RecvTimeoutError::Timeout) => Err(AcquireError::TimedOut {
                    waited: asked.elapsed(),
                }),
                Err(RecvTimeoutError::Disconnected) => Err(AcquireError::Stopped),
            },
        }
    }

    /// Asks for a lease and returns the channel the answer will come on, so
    /// that the caller can wait for it alongside other events (the grinder
    /// waits for a lease or a cancellation). Dropping the receiver gives up;
    /// a lease granted after that goes back to the pool.
    pub(crate) fn request(
        &self,
        lease: Duration,
        owner: String,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Receiver<Result<Lease<T>, AcquireError>>, AcquireError> {
        if lease.is_zero() {
            return Err(AcquireError::ZeroLease);
        }
        let tx = match &*self.lock_phase() {
            Phase::Idle => return Err(AcquireError::NotStarted),
            Phase::Stopped(_) => return Err(AcquireError::Stopped),
            Phase::Running { tx, .. } => tx.clone(),
        };
        let (reply, answer) = bounded(1);
        tx.send(Msg::Acquire {
            owner,
            duration: lease,
            wait,
            deadline,
            reply,
        })
        .map_err(|_| AcquireError::Stopped)?;
        Ok(answer)
    }

    /// Gives a lease back; the same as [`Lease::release`] or dropping it.
    pub fn release(&self, lease: Lease<T>) {
        lease.release();
    }

    /// A snapshot: executors available, leased, total, retired and replaced,
    /// and every lease with its owner and the seconds until its soft and hard
    /// expiry. Works before `start` and after `stop` too.
    pub fn stats(&self) -> PoolStats {
        let tx = match &*self.lock_phase() {
            Phase::Idle => {
                return PoolStats {
                    min_executors: self.cfg.min,
                    max_executors: self.cfg.max,
                    ..PoolStats::default()
                };
            }
            Phase::Stopped(stats) => return stats.clone(),
            Phase::Running { tx, .. } => tx.clone(),
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(Msg::Stats(reply)).is_ok() {
            if let Ok(stats) = answer.recv() {
                return stats;
            }
        }
        // The manager ended meanwhile: `stop` is running and holds the
        // lock until the final figures are in.
        match &*self.lock_phase() {
            Phase::Stopped(stats) => stats.clone(),
            _ => PoolStats {
                started: true,
                stopped: true,
                min_executors: self.cfg.min,
                max_executors: self.cfg.max,
                ..PoolStats::default()
            },
        }
    }
}

impl<T: Task> Drop for LeasedExecutorManager<T> {
    fn drop(&mut self) {
        self.stop();
    }
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
/// ```no_run
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, Outcome, WorkerCommand, simple::SimpleTask};
///
/// # let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker")).build()?;
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
pub struct Lease<T: Task> {
    id: u64,
    owner: String,
    duration: Duration,
    soft: Instant,
    hard: Instant,
    facade: Arc<WorkingProcessFacade<T>>,
    revoked: Arc<OnceLock<Revoked>>,
    manager: Sender<Msg<T>>,
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

    /// The duration asked for (soft expiry minus grant time).
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

    /// Queues `task` on the leased executor and returns the handle its
    /// outcome will arrive on. Never blocks.
    ///
    /// Refused, with the task handed back, once the soft expiry has passed
    /// ([`LeaseError::Expired`]) or the lease was revoked.
    pub fn submit(&self, task: T) -> Result<TaskHandle<T::Output>, LeaseError<T>> {
        self.submit_inner(task, None)
    }

    /// Like [`submit`](Self::submit), with a time limit for this task.
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
        match self.revocation() {
            Some(Revoked::Stopped) => return Err(LeaseError::Stopped(task)),
            Some(Revoked::Expired) => return Err(self.expired(task, true)),
            None if Instant::now() >= self.soft => return Err(self.expired(task, false)),
            None => {}
        }
        // A revocation racing with this call kills the worker after the task
        // is queued: the task then gets a NotRun outcome that says the lease
        // expired, so it is answered either way.
        self.facade
            .submit_with_timeout(task, timeout)
            .map_err(|err| match self.revocation() {
                // The pool never collects its facades: one that refuses work
                // was ended with its lease.
                Some(Revoked::Stopped) => LeaseError::Stopped(err.into_task()),
                _ => self.expired(err.into_task(), true),
            })
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

struct Idle<T: Task> {
    facade: Arc<WorkingProcessFacade<T>>,
    since: Instant,
}

struct Leased<T: Task> {
    facade: Arc<WorkingProcessFacade<T>>,
    owner: String,
    duration: Duration,
    soft: Instant,
    hard: Instant,
    revoked: Arc<OnceLock<Revoked>>,
}

struct Waiter<T: Task> {
    asked: Instant,
    owner: String,
    duration: Duration,
    wait: bool,
    deadline: Option<Instant>,
    reply: Sender<Result<Lease<T>, AcquireError>>,
}

/// The manager thread's state. Nothing here is shared.
struct Manager<T: Task> {
    min: usize,
    max: usize,
    idle_timeout: Duration,
    grace: Duration,
    rx: Receiver<Msg<T>>,
    /// Handed to every lease, for its release.
    tx: Sender<Msg<T>>,
    /// Each message asks the spawner for one executor; `true` marks a
    /// replacement.
    spawn_tx: Option<Sender<bool>>,
    spawner_stop: Arc<AtomicBool>,
    /// Idle executors; the most recently used at the back.
    available: VecDeque<Idle<T>>,
    leased: HashMap<u64, Leased<T>>,
    waiters: VecDeque<Waiter<T>>,
    spawning: usize,
    next_lease: u64,
    retired: u64,
    replaced: u64,
    revoked: u64,
    shrunk: u64,
    spawn_failures: u64,
    /// When to try again to restore the minimum after a failed spawn.
    retry_at: Option<Instant>,
    backoff: Duration,
    stopping: bool,
}

/// An executor is broken when its worker crashed, timed out or is gone. Its
/// facade runs with `RestartPolicy::Never`, so it will not get a new worker.
/// (With `max_tasks_per_worker`, a recycled executor also looks gone between
/// workers; replacing it with a fresh one is equivalent.)
fn is_broken(stats: &FacadeStats) -> bool {
    stats.crashed > 0 || stats.timed_out > 0 || stats.worker_pid.is_none()
}

/// `now + d`, or a century from now when that overflows.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

fn seconds_until(now: Instant, then: Instant) -> f64 {
    if then >= now {
        (then - now).as_secs_f64()
    } else {
        -(now - then).as_secs_f64()
    }
}

impl<T: Task> Manager<T> {
    fn run(mut self) -> PoolStats {
        loop {
            let now = Instant::now();
            self.revoke_expired(now);
            self.retire_broken();
            self.serve(now);
            self.shrink(now);
            self.keep_minimum(now);
            let msg = match self.next_deadline() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => Msg::Stop,
                },
                None => self.rx.recv().unwrap_or(Msg::Stop),
            };
            if let Msg::Stop = msg {
                return self.shutdown();
            }
            self.handle(msg);
            // Take whatever else is waiting before deciding anything.
            while let Ok(msg) = self.rx.try_recv() {
                if let Msg::Stop = msg {
                    return self.shutdown();
                }
                self.handle(msg);
            }
        }
    }

    fn handle(&mut self, msg: Msg<T>) {
        let now = Instant::now();
        match msg {
            Msg::Acquire {
                owner,
                duration,
                wait,
                deadline,
                reply,
            } => self.waiters.push_back(Waiter {
                asked: now,
                owner,
                duration,
                wait,
                deadline,
                reply,
            }),
            Msg::Release { id } => {
                if let Some(lease) = self.leased.remove(&id) {
                    if is_broken(&lease.facade.stats()) {
                        self.retire(lease.facade);
                    } else {
                        self.available.push_back(Idle {
                            facade: lease.facade,
                            since: now,
                        });
                    }
                }
            }
            Msg::Spawned {
                result,
                replacement,
            } => {
                self.spawning = self.spawning.saturating_sub(1);
                match result {
                    Ok(facade) => {
                        if replacement {
                            self.replaced += 1;
                        }
                        self.retry_at = None;
                        self.backoff = FIRST_RETRY;
                        self.available.push_back(Idle {
                            facade: Arc::new(facade),
                            since: now,
                        });
                    }
                    Err(err) => {
                        self.spawn_failures += 1;
                        self.retry_at = Some(later(now, self.backoff));
                        self.backoff = (self.backoff * 2).min(MAX_RETRY);
                        // The caller this spawn was for hears why.
                        if let Some(waiter) = self.waiters.pop_front() {
                            let _ = waiter.reply.send(Err(AcquireError::Spawn(Arc::new(err))));
                        }
                    }
                }
            }
            Msg::Stats(reply) => {
                // Settle what time has decided (expiries, idle shrinking)
                // first, so that a caller who waited past a deadline reads
                // its effect.
                self.revoke_expired(now);
                self.retire_broken();
                self.serve(now);
                self.shrink(now);
                let _ = reply.send(self.snapshot(now));
            }
            Msg::Stop => {}
        }
    }

    fn total(&self) -> usize {
        self.available.len() + self.leased.len() + self.spawning
    }

    /// Revokes every lease past its hard expiry: marks it, kills its worker
    /// (the facade reports the running task crashed and the rest not run,
    /// with the reason) and retires the executor.
    fn revoke_expired(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.hard <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(lease) = self.leased.remove(&id) else {
                continue;
            };
            // Marked before the kill, so whoever sees an outcome of the kill
            // also sees why.
            let _ = lease.revoked.set(Revoked::Expired);
            lease.facade.terminate(format!(
                "the lease of {} expired: it passed its hard expiry ({:?} lease + {:?} grace) \
                 and was revoked",
                lease.owner, lease.duration, self.grace
            ));
            self.revoked += 1;
            self.retire(lease.facade);
        }
    }

    /// Takes an executor out of service for good and asks for a replacement.
    fn retire(&mut self, facade: Arc<WorkingProcessFacade<T>>) {
        self.retired += 1;
        // Its worker is dead or being killed, so this drop (when it is the
        // last reference) does not wait.
        drop(facade);
        if !self.stopping && self.total() < self.max {
            self.spawn(true);
        }
    }

    /// Retires idle executors whose worker died.
    fn retire_broken(&mut self) {
        let mut kept = VecDeque::with_capacity(self.available.len());
        let mut broken = Vec::new();
        for idle in self.available.drain(..) {
            if is_broken(&idle.facade.stats()) {
                broken.push(idle.facade);
            } else {
                kept.push_back(idle);
            }
        }
        self.available = kept;
        for facade in broken {
            self.retire(facade);
        }
    }

    /// Shuts down idle executors above the minimum that stayed idle for
    /// `idle_timeout`, the least recently used (at the front) first.
    fn shrink(&mut self, now: Instant) {
        while self.available.len() + self.leased.len() > self.min {
            let Some(front) = self.available.front() else {
                break;
            };
            let idle_long = now >= later(front.since, self.idle_timeout);
            if !idle_long || front.facade.stats().in_flight > 0 {
                break;
            }
            self.available.pop_front();
            self.shrunk += 1;
        }
    }

    /// Hands idle executors to waiting callers in order, starts executors for
    /// the rest while there is room, and turns away callers who would not
    /// wait.
    fn serve(&mut self, now: Instant) {
        // A caller whose deadline passed is told so (it may be waiting on
        // its answer still: its own timeout and ours race).
        self.waiters.retain(|w| {
            let expired = w.deadline.is_some_and(|d| d <= now);
            if expired {
                let _ = w.reply.send(Err(AcquireError::TimedOut {
                    waited: now.saturating_duration_since(w.asked),
                }));
            }
            !expired
        });
        while !self.waiters.is_empty() {
            let Some(idle) = self.available.pop_back() else {
                break;
            };
            if is_broken(&idle.facade.stats()) {
                self.retire(idle.facade);
                continue;
            }
            if let Some(waiter) = self.waiters.pop_front() {
                self.grant(waiter, idle.facade, now);
            }
        }
        if self.stopping {
            return;
        }
        while self.spawning < self.waiters.len() && self.total() < self.max {
            self.spawn(false);
        }
        // The first `spawning` callers are served by the executors being
        // started; a caller behind them who would not wait is turned away.
        let covered = self.spawning;
        let max = self.max;
        let mut position = 0;
        self.waiters.retain(|w| {
            let keep = w.wait || position < covered;
            position += 1;
            if !keep {
                let _ = w.reply.send(Err(AcquireError::NoneAvailable { max }));
            }
            keep
        });
    }

    fn grant(&mut self, waiter: Waiter<T>, facade: Arc<WorkingProcessFacade<T>>, now: Instant) {
        let id = self.next_lease;
        self.next_lease += 1;
        let soft = later(now, waiter.duration);
        let hard = later(soft, self.grace);
        let revoked = Arc::new(OnceLock::new());
        let lease = Lease {
            id,
            owner: waiter.owner.clone(),
            duration: waiter.duration,
            soft,
            hard,
            facade: facade.clone(),
            revoked: revoked.clone(),
            manager: self.tx.clone(),
        };
        self.leased.insert(
            id,
            Leased {
                facade,
                owner: waiter.owner,
                duration: waiter.duration,
                soft,
                hard,
                revoked,
            },
        );
        // If the caller gave up meanwhile, the lease is dropped here and its
        // release comes back through the channel.
        let _ = waiter.reply.send(Ok(lease));
    }

    fn spawn(&mut self, replacement: bool) {
        if let Some(tx) = &self.spawn_tx {
            if tx.send(replacement).is_ok() {
                self.spawning += 1;
            }
        }
    }

    /// Restores the minimum, unless a recent spawn failed.
    fn keep_minimum(&mut self, now: Instant) {
        if self.stopping || self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        while self.total() < self.min {
            let before = self.spawning;
            self.spawn(false);
            if self.spawning == before {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let leases = self.leased.values().map(|l| l.hard);
        let waiters = self.waiters.iter().filter_map(|w| w.deadline);
        let idle = (self.available.len() + self.leased.len() > self.min)
            .then(|| self.available.front())
            .flatten()
            .map(|i| later(i.since, self.idle_timeout));
        let retry = self.retry_at.filter(|_| self.total() < self.min);
        leases.chain(waiters).chain(idle).chain(retry).min()
    }

    fn snapshot(&self, now: Instant) -> PoolStats {
        let mut leases: Vec<LeaseInfo> = self
            .leased
            .iter()
            .map(|(id, l)| LeaseInfo {
                id: *id,
                owner: l.owner.clone(),
                worker_pid: l.facade.worker_pid(),
                seconds_to_soft_expiry: seconds_until(now, l.soft),
                seconds_to_hard_expiry: seconds_until(now, l.hard),
            })
            .collect();
        leases.sort_by_key(|l| l.id);
        PoolStats {
            started: true,
            stopped: self.stopping,
            min_executors: self.min,
            max_executors: self.max,
            available: self.available.len(),
            leased: self.leased.len(),
            total: self.available.len() + self.leased.len(),
            spawning: self.spawning,
            waiting: self.waiters.len(),
            retired: self.retired,
            replaced: self.replaced,
            revoked: self.revoked,
            shrunk: self.shrunk,
            spawn_failures: self.spawn_failures,
            leases,
        }
    }

    fn shutdown(mut self) -> PoolStats {
        self.stopping = true;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.reply.send(Err(AcquireError::Stopped));
        }
        for (_, lease) in self.leased.drain() {
            let _ = lease.revoked.set(Revoked::Stopped);
            lease.facade.terminate(format!(
                "the executor manager was stopped, which revoked the lease of {}",
                lease.owner
            ));
        }
        // Idle executors finish what they run (within their grace period).
        self.available.clear();
        // The spawner finishes the start it is in (`stop` joins it) and
        // takes no more requests.
        self.spawner_stop.store(true, Ordering::Release);
        self.spawn_tx = None;
        // Whatever arrived meanwhile: executors the spawner finished, callers
        // still asking. Later messages fail to send, which their senders
        // read as "stopped".
        let now = Instant::now();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Acquire { reply, .. } => {
                    let _ = reply.send(Err(AcquireError::Stopped));
                }
                Msg::Spawned { .. } => self.spawning = self.spawning.saturating_sub(1),
                Msg::Stats(reply) => {
                    let _ = reply.send(self.snapshot(now));
                }
                Msg::Release { .. } | Msg::Stop => {}
            }
        }
        self.spawning = 0;
        self.snapshot(now)
    }
}

/// The spawner thread: starts one executor per request and hands it to the
/// manager.
fn spawner<T: Task>(
    cfg: PoolBuilder<T>,
    requests: Receiver<bool>,
    manager: Sender<Msg<T>>,
    stopping: Arc<AtomicBool>,
) {
    for replacement in requests {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let result = cfg.spawn_executor();
        if manager
            .send(Msg::Spawned {
                result,
                replacement,
            })
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send() {
        fn is_send<X: Send>() {}
        fn is_sync<X: Sync>() {}
        is_send::<Lease<crate::simple::SimpleTask>>();
        is_sync::<Lease<crate::simple::SimpleTask>>();
        is_send::<LeasedExecutorManager<crate::simple::SimpleTask>>();
        is_sync::<LeasedExecutorManager<crate::simple::SimpleTask>>();
    }

    #[test]
    fn seconds_until_is_signed() {
        let now = Instant::now();
        assert!(seconds_until(now, now + Duration::from_secs(2)) > 1.9);
        assert!(seconds_until(now + Duration::from_secs(2), now) < -1.9);
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }
}
