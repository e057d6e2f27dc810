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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::command::WorkerCommand;
use crate::error::SpawnError;
use crate::facade::WorkingProcessFacade;
use crate::joinable::{self, Joinable};
use crate::task::Task;

pub use builder::PoolBuilder;
pub use error::{AcquireError, LeaseError, PoolConfigError, PoolStartError};
pub use lease::Lease;
pub(crate) use lease::Revoked;
pub use stats::{LeaseInfo, PoolStats};

use manager::{LeaseReply, Manager, Msg, spawner};

#[cfg(doc)]
use crate::config::RestartPolicy;

/// The minimum executors, spawned by `start_async`'s helper thread.
type Started<T> = Result<Vec<WorkingProcessFacade<T>>, SpawnError>;

enum Phase<T: Task> {
    Idle,
    /// `start_async`: a helper thread (`wf-pool-start`) spawns the minimum
    /// executors; the manager's channel is made already, for their engines.
    Starting {
        helper: Joinable<Started<T>>,
        tx: Sender<Msg<T>>,
        rx: Receiver<Msg<T>>,
        /// Its future was dropped before it finished: the next `start`
        /// or `start_async` finishes it.
        abandoned: bool,
    },
    Running {
        tx: Sender<Msg<T>>,
        thread: Joinable<PoolStats>,
        spawner: Joinable<()>,
    },
    /// `stop_async`: told to stop; whoever sees both threads ended joins
    /// them (a sync `stop` joins them at once).
    Stopping {
        thread: Joinable<PoolStats>,
        spawner: Joinable<()>,
    },
    Stopped(PoolStats),
}

/// What `stop_async` waits for.
enum StopWait {
    /// A start under way (its helper thread).
    Start(joinable::Ended),
    /// The manager's and the spawner's threads.
    Threads([joinable::Ended; 2]),
}

/// Marks a `start_async` whose future was dropped before its executors were
/// up, so that the next start finishes it.
struct AbandonStart<'a, T: Task>(Option<&'a LeasedExecutorManager<T>>);

impl<T: Task> Drop for AbandonStart<'_, T> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            if let Phase::Starting { abandoned, .. } = &mut *pool.lock_phase() {
                *abandoned = true;
            }
        }
    }
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
/// # Async
///
/// Every call that waits has an async form that never blocks the thread
/// polling it and needs no particular runtime:
/// [`start_async`](Self::start_async),
/// [`acquire_async`](Self::acquire_async),
/// [`try_acquire_async`](Self::try_acquire_async),
/// [`acquire_timeout_async`](Self::acquire_timeout_async),
/// [`acquire_deadline_async`](Self::acquire_deadline_async) and
/// [`stop_async`](Self::stop_async). The manager's threads do the waiting;
/// the futures await their answers.
///
/// # Drop
///
/// Dropping a running manager calls [`stop`](Self::stop): leases still held
/// are revoked (their workers killed) and idle executors are shut down.
/// **The drop blocks the dropping thread** until the executors are down
/// (up to their grace period when a task runs). In async code, await
/// [`stop_async`](Self::stop_async) first: the drop then returns at once.
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
    /// The `pool` span its threads (and its executors' facades) run in.
    span: crate::trace::Span,
    /// Whether anyone waits for a lease (see [`manager::Demand`]).
    demand: Arc<manager::Demand>,
}

impl<T: Task> fmt::Debug for LeasedExecutorManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.lock_phase() {
            Phase::Idle => "not started",
            Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
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
    /// Blocks while the executors start (their handshakes); in async code
    /// use [`start_async`](Self::start_async).
    ///
    /// On error, every executor started so far is shut down again.
    ///
    /// # Errors
    ///
    /// [`PoolStartError`]: `AlreadyStarted`; `Stopped` (build a new pool);
    /// `Spawn` when one of the minimum executors could not be started (those
    /// started are shut down again); `Thread` when its threads could not be
    /// created.
    pub fn start(&self) -> Result<(), PoolStartError> {
        let mut phase = self.lock_phase();
        match &mut *phase {
            Phase::Running { .. } | Phase::Stopping { .. } => {
                return Err(PoolStartError::AlreadyStarted);
            }
            Phase::Starting { abandoned, .. } if !*abandoned => {
                return Err(PoolStartError::AlreadyStarted);
            }
            Phase::Stopped(_) => return Err(PoolStartError::Stopped),
            Phase::Starting { .. } => {
                // A dropped `start_async` left it: finish it here.
                return self.finish_start(&mut phase);
            }
            Phase::Idle => {}
        }
        let (tx, rx) = unbounded();
        // Dropping this vector on an early return shuts the executors down.
        let mut executors = Vec::with_capacity(self.cfg.min);
        for _ in 0..self.cfg.min {
            let executor = self.span.run(|| manager::spawn_executor(&self.cfg, &tx));
            executors.push(executor.map_err(PoolStartError::Spawn)?);
        }
        *phase = self.run_manager(executors, tx, rx)?;
        Ok(())
    }

    /// Like [`start`](Self::start), as a future that never blocks the
    /// thread polling it. The minimum executors are started by a short-lived
    /// helper thread (`wf-pool-start`, joined when the future resolves):
    /// spawning one is a handshake the caller would otherwise wait for.
    /// Meanwhile the pool is starting: `start` and `acquire` are refused
    /// ([`PoolStartError::AlreadyStarted`], [`AcquireError::NotStarted`]).
    ///
    /// Dropping the future before it resolves leaves the start to the next
    /// `start`/`start_async` (or `stop`) call, which finishes it.
    ///
    /// ```no_run
    /// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
    ///     .min_executors(2)
    ///     .build()?;
    /// pool.start_async().await?;
    /// assert_eq!(pool.stats().total, 2);
    /// pool.stop_async().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_async(&self) -> Result<(), PoolStartError> {
        let ended = {
            let mut phase = self.lock_phase();
            match &mut *phase {
                Phase::Running { .. } | Phase::Stopping { .. } => {
                    return Err(PoolStartError::AlreadyStarted);
                }
                Phase::Starting { abandoned, .. } if !*abandoned => {
                    return Err(PoolStartError::AlreadyStarted);
                }
                Phase::Stopped(_) => return Err(PoolStartError::Stopped),
                Phase::Starting {
                    helper, abandoned, ..
                } => {
                    *abandoned = false;
                    helper.ended()
                }
                Phase::Idle => {
                    let (tx, rx) = unbounded();
                    let cfg = self.cfg.clone();
                    let min = cfg.min;
                    let notify = tx.clone();
                    let span = self.span.clone();
                    let helper = joinable::spawn("wf-pool-start", move || {
                        // An early return drops (shuts down) the ones made.
                        span.run(|| {
                            (0..min)
                                .map(|_| manager::spawn_executor(&cfg, &notify))
                                .collect::<Result<Vec<_>, _>>()
                        })
                    })
                    .map_err(|e| PoolStartError::Thread("start helper", e))?;
                    let ended = helper.ended();
                    *phase = Phase::Starting {
                        helper,
                        tx,
                        rx,
                        abandoned: false,
                    };
                    ended
                }
            }
        };
        let mut guard = AbandonStart(Some(self));
        ended.wait().await;
        guard.0 = None;
        let mut phase = self.lock_phase();
        match &*phase {
            Phase::Starting { .. } => self.finish_start(&mut phase),
            // `stop` ran meanwhile and ended the start.
            _ => Err(PoolStartError::Stopped),
        }
    }

    /// Joins `start_async`'s helper and runs the manager with the executors
    /// it started, or goes back to idle with its error.
    fn finish_start(&self, phase: &mut Phase<T>) -> Result<(), PoolStartError> {
        let Phase::Starting { helper, tx, rx, .. } = std::mem::replace(phase, Phase::Idle) else {
            return Err(PoolStartError::AlreadyStarted);
        };
        let executors = match helper.join() {
            Ok(started) => started.map_err(PoolStartError::Spawn)?,
            Err(_) => {
                return Err(PoolStartError::Thread(
                    "start helper",
                    std::io::Error::other("the pool's start helper thread panicked"),
                ));
            }
        };
        *phase = self.run_manager(executors, tx, rx)?;
        Ok(())
    }

    /// Starts the spawner and manager threads over `executors`.
    fn run_manager(
        &self,
        executors: Vec<WorkingProcessFacade<T>>,
        tx: Sender<Msg<T>>,
        rx: Receiver<Msg<T>>,
    ) -> Result<Phase<T>, PoolStartError> {
        let executors = executors.into_iter().map(Arc::new).collect();
        let (spawn_tx, spawn_rx) = unbounded::<manager::Job<T>>();
        let stopping = Arc::new(AtomicBool::new(false));
        let spawner = {
            let cfg = self.cfg.clone();
            let tx = tx.clone();
            let stopping = stopping.clone();
            let span = self.span.clone();
            joinable::spawn("wf-pool-spawner", move || {
                span.run(|| spawner::<T>(cfg, spawn_rx, tx, stopping))
            })
            .map_err(|e| PoolStartError::Thread("spawner", e))?
        };
        let manager = Manager::new(
            &self.cfg,
            executors,
            rx,
            tx.clone(),
            spawn_tx,
            stopping,
            self.demand.clone(),
        );
        let span = self.span.clone();
        let thread = match joinable::spawn("wf-pool-manager", move || span.run(|| manager.run())) {
            Ok(thread) => thread,
            Err(e) => {
                // The closure, and with it the manager, its executors and the
                // spawner's request channel, is gone: the spawner ends.
                drop(tx);
                let _ = spawner.join();
                return Err(PoolStartError::Thread("manager", e));
            }
        };
        Ok(Phase::Running {
            tx,
            thread,
            spawner,
        })
    }

    /// Stops the manager: callers waiting for a lease get
    /// [`AcquireError::Stopped`], leases still held are revoked (their
    /// workers killed; their tasks get outcomes saying so), idle executors
    /// are shut down (each finishes the task it runs, within its grace
    /// period), and both of the manager's threads are joined. Blocks for
    /// all that; in async code use [`stop_async`](Self::stop_async).
    ///
    /// Idempotent. A manager that was never started is simply marked stopped.
    pub fn stop(&self) {
        let mut phase = self.lock_phase();
        let stats = match std::mem::replace(&mut *phase, Phase::Idle) {
            Phase::Idle => self.never_started(),
            Phase::Starting { helper, .. } => {
                // The executors it started are shut down with its result.
                let _ = helper.join();
                self.never_started()
            }
            Phase::Stopped(stats) => stats,
            Phase::Running {
                tx,
                thread,
                spawner,
            } => {
                let _ = tx.send(Msg::Stop);
                drop(tx);
                self.join_stopped(thread, spawner)
            }
            Phase::Stopping { thread, spawner } => self.join_stopped(thread, spawner),
        };
        *phase = Phase::Stopped(stats);
    }

    /// Like [`stop`](Self::stop), as a future that never blocks the thread
    /// polling it: the manager's threads revoke the leases and shut the
    /// executors down, and the future awaits their end, then joins them.
    /// Once it has resolved, dropping the manager does not block.
    ///
    /// Dropping the future before it resolves does not undo the stop: the
    /// next `stop`, `stop_async` or the manager's drop finishes it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker")).build()?;
    /// pool.start_async().await?;
    /// let lease = pool.acquire_async(Duration::from_secs(10), "me").await?;
    /// let handle = lease.submit(SimpleTask::new("one", 0.1))?;
    /// println!("{}", handle.await?);
    /// drop(lease);
    /// pool.stop_async().await;
    /// drop(pool); // returns at once
    /// # Ok(()) }
    /// ```
    pub async fn stop_async(&self) {
        loop {
            let wait = {
                let mut phase = self.lock_phase();
                match std::mem::replace(&mut *phase, Phase::Idle) {
                    Phase::Running {
                        tx,
                        thread,
                        spawner,
                    } => {
                        let _ = tx.send(Msg::Stop);
                        let ended = [thread.ended(), spawner.ended()];
                        *phase = Phase::Stopping { thread, spawner };
                        StopWait::Threads(ended)
                    }
                    Phase::Stopping { thread, spawner } => {
                        let ended = [thread.ended(), spawner.ended()];
                        *phase = Phase::Stopping { thread, spawner };
                        StopWait::Threads(ended)
                    }
                    starting @ Phase::Starting { .. } => {
                        let Phase::Starting { helper, .. } = &starting else {
                            unreachable!("matched just above")
                        };
                        let ended = helper.ended();
                        *phase = starting;
                        StopWait::Start(ended)
                    }
                    Phase::Idle => {
                        *phase = Phase::Stopped(self.never_started());
                        return;
                    }
                    stopped @ Phase::Stopped(_) => {
                        *phase = stopped;
                        return;
                    }
                }
            };
            match wait {
                StopWait::Start(ended) => {
                    // A start under way: let it finish (its executors up, or
                    // its error), then stop from wherever it led.
                    ended.wait().await;
                    let mut phase = self.lock_phase();
                    if let Phase::Starting { .. } = &*phase {
                        let _ = self.finish_start(&mut phase);
                    }
                }
                StopWait::Threads(ended) => {
                    for ended in ended {
                        ended.wait().await;
                    }
                    let mut phase = self.lock_phase();
                    if let Phase::Stopping { .. } = &*phase {
                        if let Phase::Stopping { thread, spawner } =
                            std::mem::replace(&mut *phase, Phase::Idle)
                        {
                            *phase = Phase::Stopped(self.join_stopped(thread, spawner));
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The figures of a manager that never ran.
    fn never_started(&self) -> PoolStats {
        PoolStats {
            min_executors: self.cfg.min,
            max_executors: self.cfg.max,
            stopped: true,
            ..PoolStats::default()
        }
    }

    /// Joins the manager thread (which revokes and shuts down) and then the
    /// spawner (which drops the executors); returns the final figures.
    fn join_stopped(&self, thread: Joinable<PoolStats>, spawner: Joinable<()>) -> PoolStats {
        let stats = thread.join().unwrap_or_else(|_| PoolStats {
            started: true,
            stopped: true,
            min_executors: self.cfg.min,
            max_executors: self.cfg.max,
            ..PoolStats::default()
        });
        // The manager dropped the spawner's request channel; an executor it
        // was still starting is shut down again.
        let _ = spawner.join();
        stats
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
    ///
    /// # Errors
    ///
    /// [`AcquireError`]: `NotStarted` before [`start`](Self::start), `Stopped`
    /// after [`stop`](Self::stop), `ZeroLease` for a zero `lease`, `Spawn` when
    /// the pool had room to grow and the new executor failed to start.
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
    ///
    /// # Errors
    ///
    /// [`AcquireError`]: `NotStarted` before [`start`](Self::start), `Stopped`
    /// after [`stop`](Self::stop), `ZeroLease` for a zero `lease`, `Spawn` when
    /// the pool had room to grow and the new executor failed to start; `NoneAvailable` when every executor is leased and the pool is at
    /// its maximum.
    pub fn try_acquire(
        &self,
        lease: Duration,
        owner: impl Into<String>,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with(lease, owner.into(), false, None)
    }

    /// Leases an executor for `lease`, waiting at most `timeout` for one to be
    /// free: [`AcquireError::TimedOut`] after that.
    ///
    /// # Errors
    ///
    /// [`AcquireError`]: `NotStarted` before [`start`](Self::start), `Stopped`
    /// after [`stop`](Self::stop), `ZeroLease` for a zero `lease`, `Spawn` when
    /// the pool had room to grow and the new executor failed to start; `TimedOut` when none was free in time.
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
    ///
    /// # Errors
    ///
    /// [`AcquireError`]: `NotStarted` before [`start`](Self::start), `Stopped`
    /// after [`stop`](Self::stop), `ZeroLease` for a zero `lease`, `Spawn` when
    /// the pool had room to grow and the new executor failed to start; `TimedOut` when none was free in time.
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

    /// Like [`acquire`](Self::acquire), as a future that never blocks the
    /// thread polling it: the manager thread finds (or starts) the executor,
    /// and the future awaits its answer. Works on any runtime. Dropping the
    /// future gives up; a lease granted after that goes back to the pool.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo(pool: &LeasedExecutorManager<SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// let lease = pool.acquire_async(Duration::from_secs(30), "report").await?;
    /// let outcome = lease.submit(SimpleTask::new("one", 0.1))?.await?;
    /// println!("{}", outcome.display_output());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_async(
        &self,
        lease: Duration,
        owner: impl Into<String>,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with_async(lease, owner.into(), true, None)
            .await
    }

    /// Like [`try_acquire`](Self::try_acquire), as a future (see
    /// [`acquire_async`](Self::acquire_async)): it resolves at once when
    /// every executor is leased and the pool is at its maximum, and after
    /// the new executor's start when the pool can grow.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{AcquireError, LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo(pool: &LeasedExecutorManager<SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// match pool.try_acquire_async(Duration::from_secs(30), "report").await {
    ///     Ok(lease) => println!("got {}", lease.id()),
    ///     Err(AcquireError::NoneAvailable { max }) => println!("all {max} are busy"),
    ///     Err(other) => return Err(other.into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn try_acquire_async(
        &self,
        lease: Duration,
        owner: impl Into<String>,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with_async(lease, owner.into(), false, None)
            .await
    }

    /// Like [`acquire_timeout`](Self::acquire_timeout), as a future (see
    /// [`acquire_async`](Self::acquire_async)): the manager answers
    /// [`AcquireError::TimedOut`] once `timeout` has passed.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo(pool: &LeasedExecutorManager<SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// let lease = pool
    ///     .acquire_timeout_async(Duration::from_secs(30), "report", Duration::from_secs(2))
    ///     .await?;
    /// # drop(lease);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_timeout`](Self::acquire_timeout).
    pub async fn acquire_timeout_async(
        &self,
        lease: Duration,
        owner: impl Into<String>,
        timeout: Duration,
    ) -> Result<Lease<T>, AcquireError> {
        let deadline = Instant::now().checked_add(timeout);
        self.acquire_with_async(lease, owner.into(), true, deadline)
            .await
    }

    /// Like [`acquire_deadline`](Self::acquire_deadline), as a future (see
    /// [`acquire_async`](Self::acquire_async)).
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// use worker_facade::{LeasedExecutorManager, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo(pool: &LeasedExecutorManager<SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// let until = Instant::now() + Duration::from_secs(2);
    /// let lease = pool.acquire_deadline_async(Duration::from_secs(30), "report", until).await?;
    /// # drop(lease);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_deadline`](Self::acquire_deadline).
    pub async fn acquire_deadline_async(
        &self,
        lease: Duration,
        owner: impl Into<String>,
        deadline: Instant,
    ) -> Result<Lease<T>, AcquireError> {
        self.acquire_with_async(lease, owner.into(), true, Some(deadline))
            .await
    }

    async fn acquire_with_async(
        &self,
        lease: Duration,
        owner: String,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Lease<T>, AcquireError> {
        let (reply, answer) = oneshot::channel();
        // The manager answers a deadline itself (`TimedOut`), so the
        // future needs no timer.
        self.ask(
            lease,
            owner,
            wait,
            deadline,
            LeaseReply::Future(Some(reply)),
        )?;
        answer.await.unwrap_or(Err(AcquireError::Stopped))
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
        let (reply, answer) = bounded(1);
        self.ask(lease, owner, wait, deadline, LeaseReply::Channel(reply))?;
        Ok(answer)
    }

    fn ask(
        &self,
        lease: Duration,
        owner: String,
        wait: bool,
        deadline: Option<Instant>,
        reply: LeaseReply<T>,
    ) -> Result<(), AcquireError> {
        if lease.is_zero() {
            return Err(AcquireError::ZeroLease);
        }
        let tx = match &*self.lock_phase() {
            Phase::Idle | Phase::Starting { .. } => return Err(AcquireError::NotStarted),
            Phase::Stopped(_) | Phase::Stopping { .. } => return Err(AcquireError::Stopped),
            Phase::Running { tx, .. } => tx.clone(),
        };
        // Counted before it is sent, so that it is never missed between
        // the send and the manager reading it.
        self.demand.sent.fetch_add(1, Ordering::AcqRel);
        let sent = tx.send(Msg::Acquire {
            owner,
            duration: lease,
            wait,
            deadline,
            reply,
        });
        if sent.is_err() {
            self.demand.sent.fetch_sub(1, Ordering::AcqRel);
            return Err(AcquireError::Stopped);
        }
        Ok(())
    }

    /// Whether a lease request waits, or is on its way, to be answered:
    /// whoever holds a lease and could use it for more should give it back
    /// instead.
    pub(crate) fn others_waiting(&self) -> bool {
        self.demand.waiting()
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
            Phase::Idle | Phase::Starting { .. } => {
                return PoolStats {
                    min_executors: self.cfg.min,
                    max_executors: self.cfg.max,
                    ..PoolStats::default()
                };
            }
            Phase::Stopped(stats) => return stats.clone(),
            Phase::Stopping { .. } => {
                return PoolStats {
                    started: true,
                    stopped: true,
                    min_executors: self.cfg.min,
                    max_executors: self.cfg.max,
                    ..PoolStats::default()
                };
            }
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
