//! [`WorkGrinder`]: work from many callers, batched onto leased executors.
//!
//! # Design
//!
//! Callers (threads or async tasks, any runtime) hand items to one scheduler
//! thread (`wf-grinder`) through a channel and get a [`GrindHandle`] back at
//! once. The scheduler keeps the pending items in arrival order and cuts a
//! batch when `batch_size_threshold` items are pending or the oldest has
//! waited `max_wait` — a deadline on its channel wait, no sleeping. Batches go
//! to runner threads (`wf-grinder-runner-N`, one per executor the pool may
//! run), so several batches run at once on several executors. A runner leases
//! one executor per batch, queues the whole batch on it in one go, and hands
//! each item's result to its caller the moment the worker answers it.
//!
//! Every accepted item is answered exactly once: each carries a one-shot
//! reply that, if it were ever dropped unanswered, would answer
//! [`WorkError::Lost`] by itself.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, select, unbounded};

use crate::codec;
use crate::pool::{AcquireError, Lease, LeasedExecutorManager, Revoked};
use crate::task::{CrashInfo, NotRunReason, Outcome, Task};

/// An item goes to a worker at most this many times: once, plus re-runs
/// after a crash or an expired lease took down the executor before the item
/// started.
const MAX_DISPATCHES: u32 = 4;

/// Set in the acceptance counter once the grinder takes no more items.
const CLOSED: u64 = 1 << 63;

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const STOPPED: u8 = 3;

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
/// The defaults are the seed's: `max_wait` 10 s, `batch_size_threshold` 20,
/// `lease` 60 s, `owner_prefix` `"work-grinder"`.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
///
/// let pool = Arc::new(
///     LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker")).build()?,
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

    /// [`max_wait`](Self::max_wait) in seconds, as the seed takes it. Must be
    /// finite and more than zero.
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
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.as_secs_f64();
        self
    }

    /// [`lease`](Self::lease) in seconds, as the seed takes it. Must be
    /// finite and more than zero.
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

/// An item was refused; it is handed back.
///
/// ```
/// use worker_facade::{GrinderError, simple::SimpleTask};
/// let err = GrinderError::NotStarted(SimpleTask::new("early", 0.0));
/// assert!(err.to_string().contains("call start()"));
/// assert_eq!(err.into_task().id, "early");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum GrinderError<T> {
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

impl<T> GrinderError<T> {
    /// The item that was refused.
    pub fn into_task(self) -> T {
        match self {
            GrinderError::NotStarted(t) | GrinderError::Stopping(t) | GrinderError::Stopped(t) => t,
        }
    }
}

impl<T> fmt::Debug for GrinderError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrinderError::NotStarted(_) => "NotStarted(..)",
            GrinderError::Stopping(_) => "Stopping(..)",
            GrinderError::Stopped(_) => "Stopped(..)",
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
    /// The grinder was stopped with `cancel_pending` before the item went to
    /// a worker.
    #[error("the task was cancelled: the grinder was stopped with cancel_pending")]
    Cancelled,
    /// No executor could be leased for the item's batch.
    #[error("no executor could be leased for the task")]
    NoExecutor(#[source] AcquireError),
    /// The grinder ended without answering. A bug in worker-facade: please
    /// report it.
    #[error("the grinder ended without answering (a bug in worker-facade: please report it)")]
    Lost,
}

/// [`WorkGrinder::submit`] failed: the item was refused, or it ran and has
/// no result.
///
/// ```
/// use worker_facade::{GrindError, GrinderError, WorkError, simple::SimpleTask};
/// let refused: GrindError<SimpleTask> = GrindError::Refused(GrinderError::Stopped(SimpleTask::new("a", 0.0)));
/// assert!(refused.to_string().contains("stopped"));
/// let failed: GrindError<SimpleTask> = GrindError::Work(WorkError::Cancelled);
/// assert!(failed.to_string().contains("cancelled"));
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum GrindError<T> {
    /// The grinder did not take the item.
    #[error(transparent)]
    Refused(GrinderError<T>),
    /// The item was taken but has no result.
    #[error(transparent)]
    Work(WorkError),
}

impl<T> fmt::Debug for GrindError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrindError::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            GrindError::Work(e) => f.debug_tuple("Work").field(e).finish(),
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
    /// Items answered [`WorkError::Cancelled`].
    pub cancelled: u64,
    /// Items removed because their handle was dropped before they ran.
    pub removed: u64,
    /// Item re-runs after a crash or an expired lease.
    pub rerun: u64,
}

struct Settings {
    max_wait: Duration,
    threshold: usize,
    lease: Duration,
    owner_prefix: String,
    concurrency: usize,
    after_crash: AfterCrash,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    removed: AtomicU64,
    rerun: AtomicU64,
}

impl Counters {
    fn count<O>(&self, result: &Result<O, WorkError>) {
        let cell = match result {
            Ok(_) => &self.completed,
            Err(WorkError::Cancelled) => &self.cancelled,
            Err(_) => &self.failed,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }
}

/// An item's reply. If it is ever dropped unanswered it answers
/// [`WorkError::Lost`] itself, so no caller waits forever.
struct Reply<O>(Option<oneshot::Sender<Result<O, WorkError>>>);

impl<O> Reply<O> {
    fn send(mut self, counters: &Counters, result: Result<O, WorkError>) {
        counters.count(&result);
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }

    /// The caller dropped its handle.
    fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(WorkError::Lost));
        }
    }
}

struct Item<T: Task> {
    seq: u64,
    task: T,
    reply: Reply<T::Output>,
    enqueued: Instant,
    dispatches: u32,
}

struct Batch<T: Task> {
    number: u64,
    items: Vec<Item<T>>,
}

/// What the grinder and its runners tell the scheduler, besides items.
enum Control {
    Stop { expected: u64, cancel: bool },
    Stats(oneshot::Sender<GrinderStats>),
    BatchDone,
}

struct Channels<T: Task> {
    items: Sender<Item<T>>,
    control: Sender<Control>,
    cancels: Sender<u64>,
    /// Disconnected when the scheduler thread ends.
    finished: Receiver<()>,
}

/// Batches work from many callers onto executors leased from a
/// [`LeasedExecutorManager`] — the seed's `WorkGrinder`, in Rust.
///
/// A batch is dispatched when the oldest pending item has waited `max_wait`,
/// or as soon as `batch_size_threshold` items are pending. Each batch runs on
/// one leased executor, queued on it in one go; several batches run at once
/// on several executors. Each caller gets its own result as soon as the
/// worker answers it, not when the whole batch is done.
///
/// - [`enqueue`](Self::enqueue) returns a [`GrindHandle`] at once: `.await` it
///   in any async runtime, or [`wait`](GrindHandle::wait) on it.
/// - [`submit`](Self::submit) waits for the result.
/// - [`submit_from_thread`](Self::submit_from_thread) and
///   [`stats_from_thread`](Self::stats_from_thread) keep the seed's names.
///
/// Unlike the seed, there is no owning event loop: **every method works from
/// any thread and any runtime**, and the library depends on none.
///
/// A crash inside a batch fails only the item that was running; the items
/// behind it run again on a fresh executor (or are reported not run, see
/// [`AfterCrash`]). Dropping a [`GrindHandle`] before its batch is dispatched
/// removes the item.
///
/// # Drop
///
/// Dropping a running grinder calls [`stop(true)`](Self::stop): pending
/// items are answered [`WorkError::Cancelled`], and the drop waits for the
/// batches already on a worker (bounded by their lease).
///
/// # Example
///
/// ```no_run
/// use std::sync::Arc;
/// use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
///
/// let pool = Arc::new(
///     LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("target/debug/facade-worker"))
///         .max_executors(2)
///         .build()?,
/// );
/// pool.start()?;
/// let grinder = WorkGrinder::builder(pool.clone()).max_wait_seconds(0.05).build()?;
/// grinder.start()?;
///
/// // Blocking, from any thread:
/// println!("{}", grinder.submit(SimpleTask::new("one", 0.1))?);
/// // Or a handle, awaitable in any runtime:
/// let handle = grinder.enqueue(SimpleTask::new("two", 0.1))?;
/// println!("{}", handle.wait()?);
///
/// grinder.stop(false); // drains what is pending
/// pool.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkGrinder<T: Task> {
    manager: Arc<LeasedExecutorManager<T>>,
    settings: Arc<Settings>,
    phase: AtomicU8,
    /// Items accepted, with [`CLOSED`] set once no more are taken.
    accepted: AtomicU64,
    channels: OnceLock<Channels<T>>,
    /// The scheduler thread; the lock also serialises `start` and `stop`.
    life: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// The last figures, written by the scheduler as it ends.
    last: Arc<Mutex<Option<GrinderStats>>>,
}

impl<T: Task> fmt::Debug for WorkGrinder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase.load(Ordering::Acquire) {
            NOT_STARTED => "not started",
            RUNNING => "running",
            STOPPING => "stopping",
            _ => "stopped",
        };
        f.debug_struct("WorkGrinder")
            .field("phase", &phase)
            .field("max_wait", &self.settings.max_wait)
            .field("batch_size_threshold", &self.settings.threshold)
            .field("lease", &self.settings.lease)
            .field("owner_prefix", &self.settings.owner_prefix)
            .finish_non_exhaustive()
    }
}

impl<T: Task> WorkGrinder<T> {
    /// A builder with the seed's defaults, leasing from `manager`.
    pub fn builder(manager: Arc<LeasedExecutorManager<T>>) -> GrinderBuilder<T> {
        GrinderBuilder::new(manager)
    }

    /// A grinder with the seed's defaults (`max_wait` 10 s, batches of 20,
    /// 60 s leases, owner prefix `"work-grinder"`).
    pub fn new(manager: Arc<LeasedExecutorManager<T>>) -> Self {
        let settings = Settings {
            max_wait: Duration::from_secs(10),
            threshold: 20,
            lease: Duration::from_secs(60),
            owner_prefix: "work-grinder".into(),
            // A pool's maximum is at least 1 (its builder checks).
            concurrency: manager.max_executors().max(1),
            after_crash: AfterCrash::default(),
        };
        Self::with_settings(manager, settings)
    }

    fn with_settings(manager: Arc<LeasedExecutorManager<T>>, settings: Settings) -> Self {
        WorkGrinder {
            manager,
            settings: Arc::new(settings),
            phase: AtomicU8::new(NOT_STARTED),
            accepted: AtomicU64::new(0),
            channels: OnceLock::new(),
            life: Mutex::new(None),
            counters: Arc::new(Counters::default()),
            last: Arc::new(Mutex::new(None)),
        }
    }

    fn lock_life(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the scheduler and runner threads. The executor manager must be
    /// started already.
    pub fn start(&self) -> Result<(), GrinderStartError> {
        let mut life = self.lock_life();
        match self.phase.load(Ordering::Acquire) {
            NOT_STARTED => {}
            STOPPED => return Err(GrinderStartError::Stopped),
            _ => return Err(GrinderStartError::AlreadyStarted),
        }
        if !self.manager.is_started() {
            return Err(GrinderStartError::ManagerNotStarted);
        }
        let (items_tx, items) = unbounded();
        let (control_tx, control) = unbounded();
        let (cancels_tx, cancels) = unbounded();
        let (finished_tx, finished) = unbounded::<()>();
        let (ready_tx, ready) = oneshot::channel();
        let scheduler = Scheduler {
            settings: self.settings.clone(),
            manager: self.manager.clone(),
            items,
            control,
            control_tx: control_tx.clone(),
            cancels,
            pending: BTreeMap::new(),
            received: 0,
            stop: None,
            cancelling: false,
            batches: None,
            cancel: None,
            runners: Vec::new(),
            dispatched: 0,
            done: 0,
            counters: self.counters.clone(),
            last: self.last.clone(),
            _finished: finished_tx,
        };
        let thread = thread::Builder::new()
            .name("wf-grinder".into())
            .spawn(move || scheduler.run(ready_tx))
            .map_err(GrinderStartError::Thread)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(GrinderStartError::Thread(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(GrinderStartError::Thread(io::Error::other(
                    "the grinder's scheduler thread ended while starting",
                )));
            }
        }
        // Only `start` sets it, once, under the lock, while NOT_STARTED.
        let _ = self.channels.set(Channels {
            items: items_tx,
            control: control_tx,
            cancels: cancels_tx,
            finished,
        });
        *life = Some(thread);
        self.phase.store(RUNNING, Ordering::Release);
        Ok(())
    }

    /// Stops taking work, then either drains — dispatches every pending item
    /// at once, without waiting for `max_wait` — (`cancel_pending = false`),
    /// or answers every item not yet on a worker [`WorkError::Cancelled`]
    /// (`cancel_pending = true`; this also stops batches waiting for a
    /// lease). Waits for the batches already on a worker, then for the
    /// grinder's threads to end.
    ///
    /// Calling it again (say, with `cancel_pending = true` while a drain is
    /// under way) is fine. A grinder that was never started is just marked
    /// stopped.
    pub fn stop(&self, cancel_pending: bool) {
        let thread = {
            let mut life = self.lock_life();
            self.begin_stop_locked(cancel_pending);
            life.take()
        };
        match thread {
            Some(thread) => {
                let _ = thread.join();
            }
            None => {
                if let Some(channels) = self.channels.get() {
                    // Another `stop` is joining; wait for the thread to end.
                    let _ = channels.finished.recv();
                }
            }
        }
        self.phase.store(STOPPED, Ordering::Release);
    }

    /// Starts stopping, like [`stop`](Self::stop), without waiting. From
    /// here on, new items are refused with [`GrinderError::Stopping`] until
    /// `stop` has finished, and with [`GrinderError::Stopped`] after.
    pub fn begin_stop(&self, cancel_pending: bool) {
        let _life = self.lock_life();
        self.begin_stop_locked(cancel_pending);
    }

    fn begin_stop_locked(&self, cancel: bool) {
        match self.phase.load(Ordering::Acquire) {
            NOT_STARTED => {
                self.accepted.fetch_or(CLOSED, Ordering::AcqRel);
                self.phase.store(STOPPED, Ordering::Release);
            }
            RUNNING | STOPPING => {
                self.phase.store(STOPPING, Ordering::Release);
                let expected = self.accepted.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
                if let Some(channels) = self.channels.get() {
                    let _ = channels.control.send(Control::Stop { expected, cancel });
                }
            }
            _ => {}
        }
    }

    /// Queues `task` and returns a handle to its result at once. The handle
    /// is a `Future` (any runtime) and has a blocking
    /// [`wait`](GrindHandle::wait). Never blocks.
    ///
    /// Refused, with the task handed back, before [`start`](Self::start),
    /// while stopping and after [`stop`](Self::stop).
    pub fn enqueue(&self, task: T) -> Result<GrindHandle<T::Output>, GrinderError<T>> {
        let Some(channels) = self.channels.get() else {
            return Err(match self.phase.load(Ordering::Acquire) {
                STOPPED => GrinderError::Stopped(task),
                _ => GrinderError::NotStarted(task),
            });
        };
        let seq = self.accepted.fetch_add(1, Ordering::AcqRel);
        if seq & CLOSED != 0 {
            return Err(match self.phase.load(Ordering::Acquire) {
                STOPPED => GrinderError::Stopped(task),
                _ => GrinderError::Stopping(task),
            });
        }
        // From here the item is accepted; the scheduler waits for every
        // accepted item before it ends, so the send below cannot fail unless
        // the scheduler thread panicked.
        let (reply, rx) = oneshot::async_channel();
        let item = Item {
            seq,
            task,
            reply: Reply(Some(reply)),
            enqueued: Instant::now(),
            dispatches: 0,
        };
        match channels.items.send(item) {
            Ok(()) => Ok(GrindHandle {
                seq,
                rx: Some(rx),
                cancels: channels.cancels.clone(),
            }),
            Err(crossbeam_channel::SendError(mut item)) => {
                item.reply.0 = None;
                Err(GrinderError::Stopped(item.task))
            }
        }
    }

    /// The seed's thread-safe submission: the same as
    /// [`enqueue`](Self::enqueue), which already works from any thread.
    pub fn submit_from_thread(&self, task: T) -> Result<GrindHandle<T::Output>, GrinderError<T>> {
        self.enqueue(task)
    }

    /// Queues `task` and blocks until its result is in. In async code,
    /// `grinder.enqueue(task)?.await` is the non-blocking form.
    pub fn submit(&self, task: T) -> Result<T::Output, GrindError<T>> {
        self.enqueue(task)
            .map_err(GrindError::Refused)?
            .wait()
            .map_err(GrindError::Work)
    }

    /// A snapshot: started, stopping, pending, oldest wait, the thresholds,
    /// batches dispatched and in flight, items completed and failed. Works
    /// from any thread, before `start` and after `stop` too.
    pub fn stats(&self) -> GrinderStats {
        match self.stats_until(None) {
            Ok(stats) => stats,
            // Without a deadline there is no timeout.
            Err(_) => self.idle_stats(),
        }
    }

    /// The seed's thread-safe stats: the same data as
    /// [`stats`](Self::stats), waiting at most `timeout` for the scheduler's
    /// answer (`None`: as long as it takes).
    pub fn stats_from_thread(
        &self,
        timeout: Option<Duration>,
    ) -> Result<GrinderStats, StatsTimeout> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.stats_until(deadline.map(|d| (d, timeout.unwrap_or_default())))
    }

    /// The figures, with the lifecycle flags read from the phase (the one
    /// source of truth: `stopping` lasts until `stop` has returned, even if
    /// the scheduler has already ended).
    fn stats_until(
        &self,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<GrinderStats, StatsTimeout> {
        let mut stats = self.raw_stats(deadline)?;
        let phase = self.phase.load(Ordering::Acquire);
        stats.started = matches!(phase, RUNNING | STOPPING);
        stats.stopping = phase == STOPPING;
        stats.stopped = phase == STOPPED;
        Ok(stats)
    }

    fn raw_stats(
        &self,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<GrinderStats, StatsTimeout> {
        let Some(channels) = self.channels.get() else {
            return Ok(self.idle_stats());
        };
        if self.phase.load(Ordering::Acquire) != STOPPED {
            let (reply, answer) = oneshot::channel();
            if channels.control.send(Control::Stats(reply)).is_ok() {
                let got = match deadline {
                    None => answer.recv().ok(),
                    Some((deadline, timeout)) => match answer.recv_deadline(deadline) {
                        Ok(stats) => Some(stats),
                        Err(oneshot::RecvTimeoutError::Timeout) => {
                            return Err(StatsTimeout(timeout));
                        }
                        Err(oneshot::RecvTimeoutError::Disconnected) => None,
                    },
                };
                if let Some(stats) = got {
                    return Ok(stats);
                }
            }
        }
        // The scheduler has ended; it left its last figures.
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(last.unwrap_or_else(|| self.idle_stats()))
    }

    fn idle_stats(&self) -> GrinderStats {
        let phase = self.phase.load(Ordering::Acquire);
        GrinderStats {
            stopped: phase == STOPPED,
            max_wait: self.settings.max_wait,
            batch_size_threshold: self.settings.threshold,
            lease: self.settings.lease,
            ..GrinderStats::default()
        }
    }
}

impl<T: Task> Drop for WorkGrinder<T> {
    fn drop(&mut self) {
        if self.phase.load(Ordering::Acquire) != STOPPED {
            self.stop(true);
        }
    }
}

/// The result of one item given to a [`WorkGrinder`], delivered as soon as
/// the worker answers it.
///
/// It is a `Future` that works in any async runtime (`handle.await`), and it
/// can be waited on from a plain thread: [`wait`](Self::wait),
/// [`try_wait`](Self::try_wait), [`wait_timeout`](Self::wait_timeout),
/// [`wait_deadline`](Self::wait_deadline).
///
/// # Drop
///
/// Dropping the handle before its item is dispatched removes the item: it
/// never runs. Dropped later, the item runs and its result is discarded.
///
/// ```
/// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
/// use worker_facade::simple::SimpleTask;
///
/// let handle = grinder.enqueue(SimpleTask::new("one", 0.1))?;
/// let text = futures_executor::block_on(handle)?; // or handle.wait()?, or .await
/// println!("{text}");
/// # Ok(()) }
/// ```
#[must_use = "dropping the handle before dispatch removes the item"]
pub struct GrindHandle<O> {
    seq: u64,
    /// `None` once the result was taken (or while dropping).
    rx: Option<oneshot::AsyncReceiver<Result<O, WorkError>>>,
    cancels: Sender<u64>,
}

impl<O> fmt::Debug for GrindHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrindHandle")
            .field("id", &self.seq)
            .field("answered", &self.rx.is_none())
            .finish()
    }
}

/// Wakes a thread parked in [`GrindHandle::wait`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl<O> GrindHandle<O> {
    /// The item's number, unique within its grinder (in acceptance order).
    pub fn id(&self) -> u64 {
        self.seq
    }

    /// Blocks until the result is in. ([`WorkError::Lost`] if
    /// [`try_wait`](Self::try_wait) or a timed wait already took it.)
    pub fn wait(mut self) -> Result<O, WorkError> {
        self.block(None).unwrap_or(Err(WorkError::Lost))
    }

    /// The result if it is in, `None` if not yet (or if it was taken).
    pub fn try_wait(&mut self) -> Option<Result<O, WorkError>> {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_result(&mut cx)
    }

    /// Waits at most `timeout`; `None` if the result is not in by then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<O, WorkError>> {
        self.block(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline`; `None` if the result is not in by then.
    pub fn wait_deadline(&mut self, deadline: Instant) -> Option<Result<O, WorkError>> {
        self.block(Some(deadline))
    }

    fn poll_result(&mut self, cx: &mut Context<'_>) -> Option<Result<O, WorkError>> {
        let rx = self.rx.as_mut()?;
        match Pin::new(rx).poll(cx) {
            Poll::Ready(result) => {
                self.rx = None;
                Some(result.unwrap_or(Err(WorkError::Lost)))
            }
            Poll::Pending => None,
        }
    }

    /// Parks the thread until the reply wakes it (or the deadline passes).
    fn block(&mut self, deadline: Option<Instant>) -> Option<Result<O, WorkError>> {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            self.rx.as_ref()?;
            if let Some(result) = self.poll_result(&mut cx) {
                return Some(result);
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

impl<O> Future for GrindHandle<O> {
    type Output = Result<O, WorkError>;

    /// Polling again after the result was returned gives
    /// `Err(WorkError::Lost)`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.rx.is_none() {
            return Poll::Ready(Err(WorkError::Lost));
        }
        match self.poll_result(cx) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl<O> Drop for GrindHandle<O> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            // The receiver goes first, so that the scheduler, told below,
            // finds the item's reply closed even if the item reaches it
            // after this message.
            drop(rx);
            let _ = self.cancels.send(self.seq);
        }
    }
}

/// What woke the scheduler.
enum Got<T: Task> {
    Item(Item<T>),
    Control(Control),
    Cancel(u64),
    Gone,
    Nothing,
}

/// The scheduler thread's state. Nothing here is shared.
struct Scheduler<T: Task> {
    settings: Arc<Settings>,
    manager: Arc<LeasedExecutorManager<T>>,
    items: Receiver<Item<T>>,
    control: Receiver<Control>,
    /// For the runners' `BatchDone`.
    control_tx: Sender<Control>,
    cancels: Receiver<u64>,
    /// Pending items by acceptance number: the first is the oldest.
    pending: BTreeMap<u64, Item<T>>,
    received: u64,
    /// Set by `stop`: how many items were accepted in all.
    stop: Option<u64>,
    cancelling: bool,
    batches: Option<Sender<Batch<T>>>,
    /// Dropped to tell the runners to cancel.
    cancel: Option<Sender<()>>,
    runners: Vec<JoinHandle<()>>,
    dispatched: u64,
    done: u64,
    counters: Arc<Counters>,
    last: Arc<Mutex<Option<GrinderStats>>>,
    /// Dropped when this thread ends, which wakes every `stop` waiting.
    _finished: Sender<()>,
}

impl<T: Task> Scheduler<T> {
    fn run(mut self, ready: oneshot::Sender<Result<(), io::Error>>) {
        if let Err(e) = self.start_runners() {
            self.end();
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        loop {
            self.dispatch_ready(Instant::now());
            if self.finished() {
                break;
            }
            self.wait_and_handle();
        }
        self.end();
    }

    fn start_runners(&mut self) -> io::Result<()> {
        let (batches_tx, batches) = unbounded();
        let (cancel_tx, cancel) = unbounded();
        self.batches = Some(batches_tx);
        self.cancel = Some(cancel_tx);
        for n in 0..self.settings.concurrency {
            let runner = Runner {
                manager: self.manager.clone(),
                settings: self.settings.clone(),
                batches: batches.clone(),
                cancel: cancel.clone(),
                control: self.control_tx.clone(),
                counters: self.counters.clone(),
            };
            let handle = thread::Builder::new()
                .name(format!("wf-grinder-runner-{n}"))
                .spawn(move || runner.run())?;
            self.runners.push(handle);
        }
        Ok(())
    }

    /// Lets the runners finish, joins them and leaves the last figures.
    fn end(&mut self) {
        self.batches = None;
        for runner in self.runners.drain(..) {
            let _ = runner.join();
        }
        let mut stats = self.snapshot(Instant::now());
        stats.started = false;
        stats.stopping = false;
        stats.stopped = true;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    fn finished(&self) -> bool {
        self.stop.is_some_and(|expected| self.received >= expected)
            && self.pending.is_empty()
            && self.done >= self.dispatched
    }

    fn wait_and_handle(&mut self) {
        let deadline = self.next_deadline();
        let got = {
            let mut sel = Select::new();
            let items = sel.recv(&self.items);
            let control = sel.recv(&self.control);
            let cancels = sel.recv(&self.cancels);
            let op = match deadline {
                Some(d) => sel.select_deadline(d).ok(),
                None => Some(sel.select()),
            };
            match op {
                None => Got::Nothing,
                Some(op) if op.index() == items => {
                    op.recv(&self.items).map_or(Got::Gone, Got::Item)
                }
                Some(op) if op.index() == control => {
                    op.recv(&self.control).map_or(Got::Gone, Got::Control)
                }
                Some(op) if op.index() == cancels => {
                    op.recv(&self.cancels).map_or(Got::Gone, Got::Cancel)
                }
                Some(_) => Got::Nothing,
            }
        };
        self.on(got);
        // Take whatever else is waiting, so one batch carries many items.
        loop {
            let got = match self.items.try_recv() {
                Ok(item) => Got::Item(item),
                Err(_) => match self.cancels.try_recv() {
                    Ok(seq) => Got::Cancel(seq),
                    Err(_) => match self.control.try_recv() {
                        Ok(c) => Got::Control(c),
                        Err(_) => break,
                    },
                },
            };
            self.on(got);
        }
    }

    fn on(&mut self, got: Got<T>) {
        match got {
            Got::Item(item) => self.on_item(item),
            Got::Cancel(seq) => {
                if self.pending.remove(&seq).is_some() {
                    self.counters.removed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Got::Control(Control::Stop { expected, cancel }) => {
                // The first stop counted the accepted items; a later one (say, to
                // cancel a drain) also counts the refused attempts in between.
                self.stop.get_or_insert(expected);
                if cancel && !self.cancelling {
                    self.cancelling = true;
                    // Runners cancel the batches not yet on a worker.
                    self.cancel = None;
                    for (_, item) in std::mem::take(&mut self.pending) {
                        item.reply.send(&self.counters, Err(WorkError::Cancelled));
                    }
                }
            }
            Got::Control(Control::Stats(reply)) => {
                // Items and dropped handles from before the question count:
                // take them first.
                while let Ok(item) = self.items.try_recv() {
                    self.on_item(item);
                }
                while let Ok(seq) = self.cancels.try_recv() {
                    self.on(Got::Cancel(seq));
                }
                let _ = reply.send(self.snapshot(Instant::now()));
            }
            Got::Control(Control::BatchDone) => self.done += 1,
            Got::Gone => {
                // The grinder is gone without stopping (it cannot be: its
                // drop stops it). Cancel what is left rather than spin.
                let received = self.received;
                self.on(Got::Control(Control::Stop {
                    expected: received,
                    cancel: true,
                }));
            }
            Got::Nothing => {}
        }
    }

    fn on_item(&mut self, item: Item<T>) {
        self.received += 1;
        if item.reply.is_closed() {
            self.counters.removed.fetch_add(1, Ordering::Relaxed);
        } else if self.cancelling {
            item.reply.send(&self.counters, Err(WorkError::Cancelled));
        } else {
            self.pending.insert(item.seq, item);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.stop.is_some() {
            return None;
        }
        let (_, oldest) = self.pending.first_key_value()?;
        Some(
            oldest
                .enqueued
                .checked_add(self.settings.max_wait)
                .unwrap_or(oldest.enqueued),
        )
    }

    /// Cuts batches: full ones while enough items are pending, and one of
    /// what is there once the oldest item has waited `max_wait` (or at once
    /// when draining).
    fn dispatch_ready(&mut self, now: Instant) {
        let threshold = self.settings.threshold;
        let flush = self.stop.is_some();
        loop {
            let Some((_, oldest)) = self.pending.first_key_value() else {
                return;
            };
            let due = flush
                || oldest
                    .enqueued
                    .checked_add(self.settings.max_wait)
                    .is_none_or(|d| now >= d);
            if self.pending.len() < threshold && !due {
                return;
            }
            let mut items = Vec::with_capacity(threshold.min(self.pending.len()));
            while items.len() < threshold {
                let Some((_, item)) = self.pending.pop_first() else {
                    break;
                };
                if item.reply.is_closed() {
                    self.counters.removed.fetch_add(1, Ordering::Relaxed);
                } else {
                    items.push(item);
                }
            }
            if items.is_empty() {
                continue;
            }
            self.dispatched += 1;
            let batch = Batch {
                number: self.dispatched,
                items,
            };
            let sent = self.batches.as_ref().map(|tx| tx.send(batch));
            if !matches!(sent, Some(Ok(()))) {
                // No runner is left (they only end when told to): the items'
                // replies answer `Lost` as they drop.
                self.done += 1;
            }
        }
    }

    fn snapshot(&self, now: Instant) -> GrinderStats {
        let c = &self.counters;
        GrinderStats {
            started: true,
            stopping: self.stop.is_some(),
            stopped: false,
            pending: self.pending.len(),
            oldest_wait: self
                .pending
                .values()
                .map(|i| i.enqueued)
                .min()
                .map(|t| now.saturating_duration_since(t)),
            max_wait: self.settings.max_wait,
            batch_size_threshold: self.settings.threshold,
            lease: self.settings.lease,
            batches_dispatched: self.dispatched,
            batches_in_flight: self.dispatched.saturating_sub(self.done),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            rerun: c.rerun.load(Ordering::Relaxed),
        }
    }
}

/// Why a runner has no lease.
enum NoLease {
    Cancelled,
    Failed(AcquireError),
}

/// An item queued on a leased executor.
struct Sent<T: Task> {
    seq: u64,
    reply: Reply<T::Output>,
    enqueued: Instant,
    dispatches: u32,
    /// The task, encoded, to run it again if the executor dies before it
    /// starts (only with `AfterCrash::Rerun`).
    copy: Option<Vec<u8>>,
    handle: crate::handle::TaskHandle<T::Output>,
}

/// Tells the scheduler a batch is over when dropped.
struct BatchDone<'a>(&'a Sender<Control>);

impl Drop for BatchDone<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(Control::BatchDone);
    }
}

/// A runner thread: runs one batch at a time on one leased executor.
struct Runner<T: Task> {
    manager: Arc<LeasedExecutorManager<T>>,
    settings: Arc<Settings>,
    batches: Receiver<Batch<T>>,
    /// Disconnected once `stop(cancel_pending = true)` ran.
    cancel: Receiver<()>,
    control: Sender<Control>,
    counters: Arc<Counters>,
}

impl<T: Task> Runner<T> {
    fn run(self) {
        for batch in self.batches.iter() {
            // Reported even if the batch panics (a bug): the scheduler must
            // not wait for it forever, and its items answer `Lost` as they
            // drop.
            let _done = BatchDone(&self.control);
            self.run_batch(batch);
        }
    }

    fn cancelled(&self) -> bool {
        matches!(self.cancel.try_recv(), Err(TryRecvError::Disconnected))
    }

    fn answer(&self, reply: Reply<T::Output>, result: Result<T::Output, WorkError>) {
        reply.send(&self.counters, result);
    }

    fn run_batch(&self, batch: Batch<T>) {
        let owner = format!("{}-{}", self.settings.owner_prefix, batch.number);
        let mut items = batch.items;
        loop {
            let before = items.len();
            items.retain(|item| !item.reply.is_closed());
            let removed = (before - items.len()) as u64;
            self.counters.removed.fetch_add(removed, Ordering::Relaxed);
            if items.is_empty() {
                return;
            }
            if self.cancelled() {
                return self.fail_all(items, WorkError::Cancelled);
            }
            let lease = match self.lease(&owner) {
                Ok(lease) => lease,
                Err(NoLease::Cancelled) => return self.fail_all(items, WorkError::Cancelled),
                Err(NoLease::Failed(e)) => return self.fail_all(items, WorkError::NoExecutor(e)),
            };
            items = self.run_on(&lease, items);
            // Released before the re-run asks for a fresh executor.
            drop(lease);
            self.counters
                .rerun
                .fetch_add(items.len() as u64, Ordering::Relaxed);
        }
    }

    fn fail_all(&self, items: Vec<Item<T>>, error: WorkError) {
        for item in items {
            self.answer(item.reply, Err(error.clone()));
        }
    }

    /// Waits for a lease, or for `stop(cancel_pending = true)`.
    fn lease(&self, owner: &str) -> Result<Lease<T>, NoLease> {
        let answer = self
            .manager
            .request(self.settings.lease, owner.to_string(), true, None)
            .map_err(NoLease::Failed)?;
        // A lease granted after we stop listening is dropped with `answer`
        // and goes back to the pool.
        select! {
            recv(answer) -> got => match got {
                Ok(Ok(lease)) => Ok(lease),
                Ok(Err(e)) => Err(NoLease::Failed(e)),
                Err(_) => Err(NoLease::Failed(AcquireError::Stopped)),
            },
            recv(self.cancel) -> _ => Err(NoLease::Cancelled),
        }
    }

    /// Queues every item on the lease's executor at once, then forwards each
    /// result as it arrives. Returns the items to run again.
    fn run_on(&self, lease: &Lease<T>, items: Vec<Item<T>>) -> Vec<Item<T>> {
        let rerun = self.settings.after_crash == AfterCrash::Rerun;
        let mut sent: Vec<Sent<T>> = Vec::with_capacity(items.len());
        let mut again = Vec::new();
        for item in items {
            let dispatches = item.dispatches + 1;
            let copy = (rerun && dispatches < MAX_DISPATCHES)
                .then(|| {
                    let mut out = Vec::new();
                    codec::encode_into(&item.task, &mut out).ok().map(|()| out)
                })
                .flatten();
            match lease.submit(item.task) {
                Ok(handle) => sent.push(Sent {
                    seq: item.seq,
                    reply: item.reply,
                    enqueued: item.enqueued,
                    dispatches,
                    copy,
                    handle,
                }),
                // The lease expired before its batch was even queued (a lease
                // far too short) or the manager stopped.
                Err(refused) => {
                    let error = match &refused {
                        crate::pool::LeaseError::Stopped(_) => {
                            WorkError::NoExecutor(AcquireError::Stopped)
                        }
                        _ => WorkError::LeaseExpired {
                            owner: lease.owner().to_string(),
                            crash: None,
                        },
                    };
                    if dispatches < MAX_DISPATCHES {
                        again.push(Item {
                            seq: item.seq,
                            task: refused.into_task(),
                            reply: item.reply,
                            enqueued: item.enqueued,
                            dispatches,
                        });
                    } else {
                        self.answer(item.reply, Err(error));
                    }
                }
            }
        }
        for s in sent {
            let outcome = s.handle.wait();
            let result = match outcome {
                Ok(Outcome::Completed(output)) => Ok(output),
                Ok(Outcome::Failed(message)) => Err(WorkError::Failed(message)),
                Ok(Outcome::TimedOut(limit)) => Err(WorkError::TimedOut(limit)),
                Ok(Outcome::Crashed(crash)) => Err(match lease.revocation() {
                    Some(Revoked::Expired) => WorkError::LeaseExpired {
                        owner: lease.owner().to_string(),
                        crash: Some(Box::new(crash)),
                    },
                    _ => WorkError::Crashed(Box::new(crash)),
                }),
                Ok(Outcome::NotRun(reason)) => {
                    let retryable = matches!(
                        reason,
                        NotRunReason::WorkerDied(_)
                            | NotRunReason::Cancelled(_)
                            | NotRunReason::WorkerUnavailable(_)
                    );
                    let task = s
                        .copy
                        .as_deref()
                        .filter(|_| retryable)
                        .and_then(|bytes| codec::decode::<T>(bytes).ok());
                    if let Some(task) = task {
                        again.push(Item {
                            seq: s.seq,
                            task,
                            reply: s.reply,
                            enqueued: s.enqueued,
                            dispatches: s.dispatches,
                        });
                        continue;
                    }
                    Err(match (lease.revocation(), reason) {
                        (Some(Revoked::Expired), NotRunReason::Cancelled(_)) => {
                            WorkError::LeaseExpired {
                                owner: lease.owner().to_string(),
                                crash: None,
                            }
                        }
                        (_, reason) => WorkError::NotRun(Box::new(reason)),
                    })
                }
                Err(_) => Err(WorkError::Lost),
            };
            self.answer(s.reply, result);
        }
        again
    }
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

    #[test]
    fn handles_are_send_and_unpin() {
        fn is<X: Send + Unpin + Future>() {}
        is::<GrindHandle<String>>();
        fn shared<X: Send + Sync>() {}
        shared::<WorkGrinder<crate::simple::SimpleTask>>();
    }

    #[test]
    fn a_dropped_reply_answers_lost() {
        let (tx, rx) = oneshot::channel::<Result<String, WorkError>>();
        drop(Reply(Some(tx)));
        assert!(matches!(rx.recv(), Ok(Err(WorkError::Lost))));
    }
}
