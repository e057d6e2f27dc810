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

mod builder;
mod error;
mod lease;
mod manager;
mod stats;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::command::WorkerCommand;
use crate::facade::WorkingProcessFacade;
use crate::task::Task;

pub use builder::PoolBuilder;
pub use error::{AcquireError, LeaseError, PoolConfigError, PoolStartError};
pub use lease::Lease;
pub(crate) use lease::Revoked;
pub use stats::{LeaseInfo, PoolStats};

use manager::{Manager, Msg, spawner};

#[cfg(doc)]
use crate::config::RestartPolicy;

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
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
///
/// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe())
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
        let (tx, rx) = unbounded();
        // Dropping this vector on an early return shuts the executors down.
        let mut executors = Vec::with_capacity(self.cfg.min);
        for _ in 0..self.cfg.min {
            executors.push(Arc::new(
                manager::spawn_executor(&self.cfg, &tx).map_err(PoolStartError::Spawn)?,
            ));
        }
        let (spawn_tx, spawn_rx) = unbounded::<manager::Job<T>>();
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
        let manager = Manager::new(&self.cfg, executors, rx, tx.clone(), spawn_tx, stopping);
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
}
