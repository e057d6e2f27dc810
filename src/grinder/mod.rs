//! [`WorkGrinder`]: work from many callers, batched onto leased executors.
//!
//! # Design
//!
//! Callers (threads or async tasks, any runtime) hand items to one scheduler
//! thread (`wf-grinder`) through a channel and get a [`GrindHandle`] back at
//! once. The scheduler keeps the pending items in arrival order and cuts a
//! batch when `batch_size_threshold` items are pending or the oldest has
//! waited `max_wait` — a deadline on its channel wait, no sleeping. Up to
//! `concurrency` batches hold a place at once, each on its own executor: the
//! scheduler asks the pool for a lease for a batch (the answer is one more
//! channel in the same wait), and when it comes, queues the whole batch on
//! the executor in one go. No thread waits on a batch: each item's result
//! goes to its caller from the executor's engine thread the moment the
//! facade settles it (`flight.rs`). The last item to settle tells the
//! scheduler, which re-runs what did not run on a fresh executor, and
//! otherwise sends this executor the next batch at once if one is cut,
//! nobody else waits for the pool, the grinder is not cancelling, the
//! executor's worker was never lost and half the lease is left: the lease
//! is renewed (a new term, named for the new batch, written where the
//! pool's manager reads it without waking it), so each batch still has its
//! executor for `lease`, and the executor goes from batch to batch with two
//! thread hand-offs rather than three. Else the lease goes back to the
//! pool, which serves its callers in turn.
//!
//! A batch of more than one item goes in its executor's tray gathered: a
//! sleeping engine wakes once for it, not for its first item and again for
//! the rest (`flight.rs`).
//!
//! Every accepted item is answered exactly once: each carries a one-shot
//! reply that, if it were ever dropped unanswered, would answer
//! [`WorkError::Lost`] by itself.

mod builder;
mod error;
mod flight;
mod handle;
mod scheduler;
mod stats;

use crate::map::{GrindMap, GrindMapUnordered};
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::joinable::{self, Ended, Joinable};
use crate::pool::LeasedExecutorManager;
use crate::task::Task;

pub use builder::{AfterCrash, GrinderBuilder, GrinderConfigError};
pub use error::{EnqueueError, GrinderStartError, ItemError, StatsTimeout, WorkError};
#[allow(deprecated)]
pub use error::{GrindError, GrinderError};
pub use handle::GrindHandle;
pub use stats::GrinderStats;

use handle::Reply;
use scheduler::{Control, Item, Scheduler};
use stats::Counters;

/// Set in the acceptance counter once the grinder takes no more items.
const CLOSED: u64 = 1 << 63;

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const STOPPED: u8 = 3;

struct Settings {
    max_wait: Duration,
    threshold: usize,
    lease: Duration,
    owner_prefix: String,
    concurrency: usize,
    after_crash: AfterCrash,
    /// The `grinder` span its scheduler runs in.
    span: crate::trace::Span,
}

struct Channels<T: Task> {
    items: Sender<Item<T>>,
    control: Sender<Control>,
    cancels: Sender<u64>,
    /// Disconnected when the scheduler thread ends.
    finished: Receiver<()>,
    /// Set when the scheduler thread ends, for `stop_async`.
    ended: Ended,
}

/// Batches work from many callers onto executors leased from a
/// [`LeasedExecutorManager`] — Python `leasepool`'s `WorkGrinder`, in Rust.
///
/// A batch is dispatched when the oldest pending item has waited `max_wait`,
/// or as soon as `batch_size_threshold` items are pending. Each batch runs on
/// one leased executor, queued on it in one go; several batches run at once
/// on several executors. Each caller gets its own result as soon as the
/// worker answers it, not when the whole batch is done.
///
/// - [`submit`](Self::submit) queues and awaits the result (async).
/// - [`enqueue`](Self::enqueue) queues and returns a [`GrindHandle`] at once:
///   `.await` it in any async runtime, or [`wait`](GrindHandle::wait) on it.
/// - [`submit_from_thread`](Self::submit_from_thread) is for plain threads:
///   the same handle, to [`wait`](GrindHandle::wait) on;
///   [`stats_from_thread`](Self::stats_from_thread) likewise.
///
/// Unlike `leasepool`'s, there is no owning event loop: **every method works from
/// any thread and any runtime**, and the library depends on none.
///
/// A crash inside a batch fails only the item that was running; the items
/// behind it run again on a fresh executor (or are reported not run, see
/// [`AfterCrash`]). Dropping a [`GrindHandle`] does not cancel its item (it
/// runs, its result discarded), as for a facade's
/// [`TaskHandle`](crate::TaskHandle); [`GrindHandle::cancel`] removes an
/// item that has not gone to a worker yet.
///
/// # Drop
///
/// Dropping a running grinder calls [`stop(true)`](Self::stop): pending
/// items are answered [`WorkError::Cancelled`], and **the drop blocks the
/// dropping thread** while the batches already on a worker finish (bounded
/// by their lease). In async code, await
/// [`stop_async`](Self::stop_async) first: the drop then returns at once.
/// (The grinder holds the pool in an `Arc`: if it holds the last one, the
/// pool's drop follows, which blocks too — stop the pool with
/// [`stop_async`](LeasedExecutorManager::stop_async) as well.)
///
/// # Example
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::sync::Arc;
/// use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
///
/// let pool = Arc::new(
///     LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe())
///         .max_executors(2)
///         .build()?,
/// );
/// pool.start()?;
/// let grinder = WorkGrinder::builder(pool.clone()).max_wait_seconds(0.05).build()?;
/// grinder.start()?;
///
/// // From a plain thread: a handle to wait on.
/// println!("{}", grinder.submit_from_thread(SimpleTask::new("one", 0.1))?.wait()??);
/// // In async code, on any runtime:
/// let text = futures_executor::block_on(grinder.submit(SimpleTask::new("two", 0.1)))?;
/// println!("{text}");
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
    life: Mutex<Option<Joinable<()>>>,
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
    /// A builder with `leasepool`'s defaults, leasing from `manager`.
    pub fn builder(manager: Arc<LeasedExecutorManager<T>>) -> GrinderBuilder<T> {
        GrinderBuilder::new(manager)
    }

    /// A grinder with `leasepool`'s defaults (`max_wait` 10 s, batches of 20,
    /// 60 s leases, owner prefix `"work-grinder"`).
    pub fn new(manager: Arc<LeasedExecutorManager<T>>) -> Self {
        let settings = Settings {
            max_wait: Duration::from_secs(10),
            threshold: 20,
            lease: Duration::from_secs(60),
            span: crate::trace::grinder_span(crate::trace::next_id(), "work-grinder"),
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

    fn lock_life(&self) -> MutexGuard<'_, Option<Joinable<()>>> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the scheduler thread. The executor manager must be started
    /// already.
    ///
    /// # Errors
    ///
    /// [`GrinderStartError`]: `AlreadyStarted`; `Stopped` (build a new
    /// grinder); `ManagerNotStarted` (start the pool first); `Thread` when its
    /// thread could not be created.
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
        let scheduler = Scheduler::new(
            self,
            items,
            control,
            control_tx.clone(),
            cancels,
            finished_tx,
        );
        let span = self.settings.span.clone();
        let thread = joinable::spawn("wf-grinder", move || span.run(|| scheduler.run()))
            .map_err(GrinderStartError::Thread)?;
        // Only `start` sets it, once, under the lock, while NOT_STARTED.
        let _ = self.channels.set(Channels {
            items: items_tx,
            control: control_tx,
            cancels: cancels_tx,
            finished,
            ended: thread.ended(),
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
    /// grinder's thread to end: this blocks; in async code use
    /// [`stop_async`](Self::stop_async).
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

    /// Like [`stop`](Self::stop), as a future that never blocks the thread
    /// polling it: the grinder's thread drains or cancels and waits for the
    /// batches on workers, and the future awaits its end, then joins it. Once it has resolved, dropping the grinder does not block.
    ///
    /// Stopping starts at the first poll; dropping the future then does
    /// not undo it (the grinder's drop or a later `stop` finishes it).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = Arc::new(LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new("facade-worker")).build()?);
    /// pool.start_async().await?;
    /// let grinder = WorkGrinder::builder(pool.clone()).max_wait_seconds(0.05).build()?;
    /// grinder.start()?;
    /// let handle = grinder.enqueue(SimpleTask::new("one", 0.5))?;
    /// grinder.stop_async(false).await; // drains: "one" runs
    /// assert!(matches!(handle.await, Ok(Ok(_))));
    /// drop(grinder); // returns at once
    /// pool.stop_async().await;
    /// # Ok(()) }
    /// ```
    pub async fn stop_async(&self, cancel_pending: bool) {
        let ended = {
            let life = self.lock_life();
            self.begin_stop_locked(cancel_pending);
            match &*life {
                Some(thread) => Some(thread.ended()),
                // Not started, or another `stop` is joining it.
                None => self.channels.get().map(|c| c.ended.clone()),
            }
        };
        if let Some(ended) = ended {
            ended.wait().await;
        }
        let thread = self.lock_life().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.phase.store(STOPPED, Ordering::Release);
    }

    /// Starts stopping, like [`stop`](Self::stop), without waiting. From
    /// here on, new items are refused with [`EnqueueError::Stopping`] until
    /// `stop` has finished, and with [`EnqueueError::Stopped`] after.
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
    ///
    /// # Errors
    ///
    /// [`EnqueueError`], the task handed back: `NotStarted` before
    /// [`start`](Self::start), `Stopping` while [`stop`](Self::stop) runs,
    /// `Stopped` after it.
    pub fn enqueue(&self, task: T) -> Result<GrindHandle<T::Output>, EnqueueError<T>> {
        let Some(channels) = self.channels.get() else {
            return Err(match self.phase.load(Ordering::Acquire) {
                STOPPED => EnqueueError::Stopped(task),
                _ => EnqueueError::NotStarted(task),
            });
        };
        let seq = self.accepted.fetch_add(1, Ordering::AcqRel);
        if seq & CLOSED != 0 {
            return Err(match self.phase.load(Ordering::Acquire) {
                STOPPED => EnqueueError::Stopped(task),
                _ => EnqueueError::Stopping(task),
            });
        }
        // From here the item is accepted; the scheduler waits for every
        // accepted item before it ends, so the send below cannot fail unless
        // the scheduler thread panicked.
        let (reply, handle) = Reply::new(seq, channels.cancels.clone());
        let item = Item {
            seq,
            task,
            reply,
            enqueued: Instant::now(),
            dispatches: 0,
        };
        match channels.items.send(item) {
            Ok(()) => Ok(handle),
            Err(crossbeam_channel::SendError(mut item)) => {
                item.reply.disarm();
                Err(EnqueueError::Stopped(item.task))
            }
        }
    }

    /// Submission for plain threads: queues `task` and returns its
    /// [`GrindHandle`], whose [`wait`](GrindHandle::wait) blocks the thread
    /// until the result is in (`leasepool`'s `submit_from_thread`,
    /// which returns a `concurrent.futures.Future`). The same as
    /// [`enqueue`](Self::enqueue), which already works from any thread.
    ///
    /// ```no_run
    /// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// use worker_facade::simple::SimpleTask;
    /// let text = grinder.submit_from_thread(SimpleTask::new("one", 0.1))?.wait()??;
    /// println!("{text}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    pub fn submit_from_thread(&self, task: T) -> Result<GrindHandle<T::Output>, EnqueueError<T>> {
        self.enqueue(task)
    }

    /// Runs every item of `tasks` and yields their results in input order,
    /// streaming: at most [`DEFAULT_AHEAD`](crate::map::DEFAULT_AHEAD) items
    /// (or [`GrindMap::ahead`]) are queued or running at once, so the input
    /// may be endless. Each result is what [`submit`](Self::submit) would
    /// return. See [`GrindMap`].
    pub fn map<I>(&self, tasks: I) -> GrindMap<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
    {
        GrindMap::new(self, tasks.into_iter())
    }

    /// Like [`map`](Self::map), yielding each result as soon as its item
    /// finishes, with the item's index in the input.
    pub fn map_unordered<I>(&self, tasks: I) -> GrindMapUnordered<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
    {
        GrindMapUnordered::new(self, tasks.into_iter())
    }

    /// Queues `task` and awaits its result — `leasepool`'s
    /// `await grinder.submit(...)`. Never blocks the thread polling it;
    /// works on any runtime. The task is queued at the first poll.
    ///
    /// Dropping the future before it resolves cancels the item, as dropping
    /// a future cancels its work in async Rust: an item not yet on a worker
    /// never runs (see [`GrindHandle::cancel`]). To let it run anyway, use
    /// [`enqueue`](Self::enqueue) and [`detach`](GrindHandle::detach) or
    /// await the handle. From a plain thread, use
    /// [`submit_from_thread`](Self::submit_from_thread) and wait on the
    /// handle.
    ///
    /// ```no_run
    /// # async fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) -> Result<(), Box<dyn std::error::Error>> {
    /// use worker_facade::simple::SimpleTask;
    /// let text = grinder.submit(SimpleTask::new("one", 0.1)).await?;
    /// println!("{text}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ItemError::Refused`] with the task handed back, as
    /// [`enqueue`](Self::enqueue) refuses it; [`ItemError::Work`] when the
    /// item ran (or was meant to) and has no result.
    pub async fn submit(&self, task: T) -> Result<T::Output, ItemError<T>> {
        let mut pending = CancelOnDrop(self.enqueue(task).map_err(ItemError::Refused)?);
        match (&mut pending.0).await {
            Ok(result) => result.map_err(ItemError::Work),
            // A fresh handle awaited once: its reply answers `Lost` itself
            // if it is ever dropped, so this is that case.
            Err(_) => Err(ItemError::Work(WorkError::Lost)),
        }
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

    /// `leasepool`'s thread-safe stats: the same data as
    /// [`stats`](Self::stats), waiting at most `timeout` for the scheduler's
    /// answer (`None`: as long as it takes).
    ///
    /// # Errors
    ///
    /// [`StatsTimeout`] when the grinder did not answer within `timeout`.
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

/// The handle `submit` awaits: cancels its item if the future is dropped
/// before the result was taken.
struct CancelOnDrop<O>(GrindHandle<O>);

impl<O> Drop for CancelOnDrop<O> {
    fn drop(&mut self) {
        if !self.0.is_taken() {
            self.0.cancel();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_unpin() {
        fn is<X: Send + Unpin + Future>() {}
        is::<GrindHandle<String>>();
        fn shared<X: Send + Sync>() {}
        shared::<WorkGrinder<crate::simple::SimpleTask>>();
    }
}
