//! [`WorkingProcessFacade`]: worker processes behind a non-blocking handle.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::command::WorkerCommand;
use crate::completed::Completed;
use crate::config::{Config, RestartPolicy};
use crate::engine::{Command, Engine, Entry, Gather, Notify, Outbox, Reclaimed};
use crate::error::{CollectError, SpawnError, SubmitError};
use crate::guard::CollectOnDrop;
use crate::handle::TaskHandle;
use crate::joinable::{self, Joinable};
use crate::map::{Map, MapUnordered};
use crate::progress::ProgressCell;
use crate::region::{Span, Spilling, TaskRegion};
use crate::stats::{FacadeStats, StatsCells};
use crate::task::{CancelReason, CrashReason, Task, TaskId, TaskRecord};
use crate::wire::{self, KIND_TASK, PushError};

/// Set in the task counter once the facade accepts no more tasks.
const CLOSED: u64 = 1 << 63;

/// A thread's encoding buffer is kept between submissions up to this size.
const ENCODE_BUFFER_KEEP: usize = 64 * 1024;

thread_local! {
    /// Where a submitter encodes its task's frame (see `send`): reused, so
    /// a submission allocates nothing.
    static ENCODE_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The size of the last frame this thread encoded, if it was large.
    static LAST_LARGE_FRAME: Cell<usize> = const { Cell::new(0) };
}

/// Remembers the size of the frame this thread just encoded, for its next
/// one (see `encode_frame`); whether it was large.
fn remember_frame(len: usize) -> bool {
    let large = len >= crate::engine::LARGE_FRAME;
    let _ = LAST_LARGE_FRAME.try_with(|c| c.set(if large { len } else { 0 }));
    large
}

/// Why a task's frame could not be made (the task goes back to its caller
/// in the matching [`SubmitError`]).
enum Unencoded {
    Failed(String),
    TooLarge { len: usize, max: u32 },
}

impl Unencoded {
    fn panicked(panic: &(dyn std::any::Any + Send)) -> Self {
        Unencoded::Failed(format!(
            "its Serialize panicked: {}",
            crate::worker::panic_message(panic)
        ))
    }
}

/// Worker processes behind a handle: tasks go in without blocking, outcomes
/// come back matched to their IDs, and a crash of a worker never reaches the
/// caller.
///
/// Construction spawns the worker (or [`workers(n)`](FacadeBuilder::workers)
/// of them) and completes a handshake with each. One library thread serves
/// the facade whatever the number of workers; tasks go to whichever worker
/// is free.
/// [`process_task`](Self::process_task) queues a task and returns its ID at
/// once — whether the worker is busy, slow or dead.
/// [`collect_tasks`](Self::collect_tasks) sends the terminator behind every
/// queued task, waits for the worker to finish and exit, reaps it, and
/// returns one [`TaskRecord`] per accepted task, in submission order.
///
/// The facade is `Send + Sync`: share it by reference (or in an `Arc`)
/// between threads that submit concurrently.
///
/// # Drop
///
/// Unlike `std::process::Child`, dropping a facade never leaves a process
/// behind. Dropping an uncollected facade cancels every task that had not
/// started (also those already sent ahead to a worker: they are
/// [`NotRun`](crate::Outcome::NotRun) with
/// [`Cancelled`](crate::NotRunReason::Cancelled)), gives each worker the
/// grace period (default 5 s; a worker whose task timed out gets
/// [`kill_grace`](FacadeBuilder::kill_grace)) to finish what it is running,
/// then kills its process group, reaps it and joins the engine thread.
/// **The drop blocks the dropping thread for that** — up to the grace
/// period when a task is running. The outcomes of tasks without a
/// [`TaskHandle`] are discarded: use [`collect_on_drop`](Self::collect_on_drop)
/// to keep them. This also holds while unwinding from a panic.
///
/// In async code, end a facade with
/// [`collect_tasks_async`](Self::collect_tasks_async) (keeps every outcome)
/// or [`shutdown_async`](Self::shutdown_async) (what the drop does, awaited)
/// first: once either has resolved, the drop returns at once. Every other
/// call that waits has an async form too:
/// [`spawn_async`](FacadeBuilder::spawn_async),
/// [`collect_tasks_timeout_async`](Self::collect_tasks_timeout_async),
/// [`collect_tasks_deadline_async`](Self::collect_tasks_deadline_async), and
/// `.await` on a [`TaskHandle`]. None of them depends on a runtime.
///
/// # Example
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
/// w.process_task(SimpleTask::new("one", 0.1))?;
/// w.process_task(SimpleTask::new("two", 0.25))?;
/// for record in w.collect_tasks()? {
///     match record.outcome {
///         Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
///         other => println!("{} - {:?}", record.task.id, other),
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkingProcessFacade<T: Task> {
    tx: Outbox<T>,
    /// The process that made the facade (a fork of it must not use it).
    owner: u32,
    /// `sys::fork_generation()` when it was made: a cheaper fork check.
    forks: u64,
    max_frame: u32,
    /// The next task ID, with [`CLOSED`] set once submission is closed.
    counter: AtomicU64,
    collected: AtomicBool,
    bound: Option<u64>,
    stats: Arc<StatsCells>,
    engine: Mutex<Option<Joinable<()>>>,
    /// The `id` of its `facade` span.
    trace_id: u64,
    /// Set by the first `completed()`: the facade's own receiver, drained
    /// by `collect_tasks` so that a record nobody took is not lost.
    completed: std::sync::OnceLock<Completed<T>>,
    /// Where large tasks go instead of the socket, if anywhere.
    region: Option<Arc<TaskRegion>>,
}

/// A facade whose engine runs and whose first workers are in their
/// handshake, with the channel that says how it went. The receiver is
/// dropped first: the engine sees it closed when the facade's drop wakes it,
/// and stops the workers instead of finishing their handshake.
struct Launched<T: Task> {
    ready: oneshot::Receiver<Result<(), SpawnError>>,
    facade: WorkingProcessFacade<T>,
    /// The worker's program, for an error.
    path: PathBuf,
}

/// [`Launched`] in `spawn_async`, its receiver a future: fields dropped in
/// this order.
struct Handshake<T: Task> {
    ready: oneshot::AsyncReceiver<Result<(), SpawnError>>,
    facade: WorkingProcessFacade<T>,
}

impl<T: Task> fmt::Debug for WorkingProcessFacade<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkingProcessFacade")
            .field("stats", &self.stats())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Configures a [`WorkingProcessFacade`] before spawning it: how the facade
/// treats its workers (time limits, restarts, recycling, how many).
///
/// What each worker process is and may do is on the [`WorkerCommand`] the
/// builder was made from: the program and its environment, where its output
/// goes ([`output`](WorkerCommand::output)), the
/// [`handshake_timeout`](WorkerCommand::handshake_timeout), the
/// [`max_frame_size`](WorkerCommand::max_frame_size) of tasks and results,
/// the [`memory_limit`](WorkerCommand::memory_limit) and
/// [`core_dumps`](WorkerCommand::core_dumps). Errors about those name the
/// `WorkerCommand` setting.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::time::Duration;
/// use worker_facade::{RestartPolicy, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe())
///     .task_timeout(Duration::from_secs(30))
///     .restart(RestartPolicy::Never)
///     .grace_period(Duration::from_secs(1))
///     .spawn()?;
/// # Ok::<(), worker_facade::SpawnError>(())
/// ```
#[must_use = "a builder does nothing until .spawn() is called"]
pub struct FacadeBuilder<T: Task> {
    cfg: Config,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> fmt::Debug for FacadeBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FacadeBuilder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<T: Task> Clone for FacadeBuilder<T> {
    fn clone(&self) -> Self {
        FacadeBuilder {
            cfg: self.cfg.clone(),
            _task: PhantomData,
        }
    }
}

impl<T: Task> FacadeBuilder<T> {
    /// How long a worker gets to exit after the terminator once it has
    /// answered every task, or after the facade is dropped, before it is
    /// killed (default 5 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.cfg.grace = grace;
        self
    }

    /// Between SIGTERM and SIGKILL when a task times out (default 500 ms).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.cfg.term_grace = grace;
        self
    }

    /// What to do when a worker dies unexpectedly (default: restart while
    /// workers make progress, [`RestartPolicy::WhileProgressing`] with 5).
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.cfg.restart = policy;
        self
    }

    /// Re-run a task that crashed its worker, at most `retries` times
    /// (default 0: a crashing task is reported, never retried).
    pub fn retries(mut self, retries: u32) -> Self {
        self.cfg.retries = retries;
        self
    }

    /// A time limit for each task, counted from the moment the worker starts
    /// it (default: none). A task over its limit is
    /// [`TimedOut`](crate::Outcome::TimedOut); its worker is killed and the
    /// tasks behind it go to a fresh one.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.cfg.task_timeout = Some(limit);
        self
    }

    /// How many worker processes the facade runs (default 1). Tasks go to
    /// whichever is free; a crash blames only the task its own worker was
    /// running and replaces only that worker; the restart budget and
    /// recycling count per worker. Still one library thread.
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.workers = n.max(1);
        self
    }

    /// Recycle a worker whose resident memory is above `bytes` after a
    /// task: it finishes what it was sent, exits, and a fresh one takes its
    /// place (no task lost, none run twice). Its own memory: resident
    /// anonymous and file-backed pages, read from `/proc/<pid>/status`
    /// after each answer (not the shared memory it reads large tasks from). Unlike
    /// [`WorkerCommand::memory_limit`](crate::WorkerCommand::memory_limit),
    /// which crashes a worker that goes past it, this is for workers that
    /// leak slowly.
    pub fn max_worker_rss(mut self, bytes: u64) -> Self {
        self.cfg.max_worker_rss = Some(bytes);
        self
    }

    /// Replace the worker with a fresh one after it has run `n` tasks.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.cfg.max_tasks_per_worker = Some(n.max(1));
        self
    }

    /// The size of the shared memory through which large tasks (16 KiB
    /// and more, encoded) reach the workers, instead of being copied
    /// through the socket twice (default 32 MiB; 0 for none).
    ///
    /// It is address space until tasks use it: a page costs memory once a
    /// task has been in it, and stays with the facade until its drop. The
    /// lowest free pages are used first, so a facade that never has more
    /// than a few large tasks in flight uses only a few pages. When it is
    /// full, large tasks go through the socket as small ones do; nothing
    /// is ever refused for it. Workers map it read-only and cannot change
    /// it; each can read all of it (the large tasks of the facade's other
    /// workers too, and bytes of tasks already answered), as it could read
    /// a shared input file. Less than a page means none; so does a
    /// [`memory_limit`](WorkerCommand::memory_limit) (the mapping would
    /// count against it), or a kernel that cannot seal one.
    ///
    /// ```no_run
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # fn main() -> Result<(), worker_facade::SpawnError> {
    /// let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
    ///     .large_task_region(256 << 20) // tasks of tens of MiB
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn large_task_region(mut self, bytes: usize) -> Self {
        self.cfg.task_region = bytes;
        self
    }

    /// Bounds the tasks in flight for
    /// [`process_task_bounded`](WorkingProcessFacade::process_task_bounded),
    /// which refuses with [`SubmitError::Full`] beyond it.
    /// [`process_task`](WorkingProcessFacade::process_task) stays unbounded.
    pub fn queue_bound(mut self, n: usize) -> Self {
        self.cfg.queue_bound = Some(n.max(1));
        self
    }

    /// Calls `notify` (on the engine's thread) each time a worker ends
    /// without being asked to. For the pool.
    pub(crate) fn on_worker_lost(mut self, notify: impl Fn() + Send + Sync + 'static) -> Self {
        self.cfg.on_worker_lost = Some(crate::config::OnWorkerLost(Arc::new(notify)));
        self
    }

    /// Spawns the worker and completes the handshake. Blocks until every
    /// worker has said hello (or failed to); in async code use
    /// [`spawn_async`](Self::spawn_async).
    ///
    /// # Errors
    ///
    /// [`SpawnError`], naming the worker's path, its exit status and the tail of
    /// its stderr where there is one: the binary is missing (`NotFound`) or not
    /// executable, the worker exited or stayed silent during the handshake
    /// (`ExitedEarly`, `HandshakeTimeout`), it speaks another protocol or was
    /// built with other task types (`ProtocolMismatch`, `TypeMismatch`), or a
    /// descriptor or thread could not be created (`Resource`).
    pub fn spawn(self) -> Result<WorkingProcessFacade<T>, SpawnError> {
        let launched = WorkingProcessFacade::launch(self.cfg)?;
        let answer = launched.ready.recv();
        launched
            .facade
            .started(answer.map_err(|_| ()), launched.path)
    }

    /// Like [`spawn`](Self::spawn), as a future that never blocks the
    /// thread polling it: the engine thread spawns the workers and does the
    /// handshakes, and the future awaits its answer. Works on any runtime.
    ///
    /// Nothing starts until the future is first polled. Dropping it before
    /// it resolves stops the workers it started (they are killed and
    /// reaped, which the drop waits for: a few milliseconds).
    ///
    /// ```no_run
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
    ///     .workers(2)
    ///     .spawn_async()
    ///     .await?;
    /// w.process_task(SimpleTask::new("one", 0.1))?;
    /// let records = w.collect_tasks_async().await?;
    /// assert_eq!(records.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_async(self) -> Result<WorkingProcessFacade<T>, SpawnError> {
        let launched = WorkingProcessFacade::launch(self.cfg)?;
        // Kept whole while awaiting, so that a future dropped here drops
        // the receiver before the facade (see `Launched`).
        let mut waiting = Handshake {
            ready: std::future::IntoFuture::into_future(launched.ready),
            facade: launched.facade,
        };
        let answer = (&mut waiting.ready).await;
        let facade = waiting.facade;
        if !matches!(answer, Ok(Ok(()))) {
            // The engine ends by itself after a failed start: wait for
            // that here rather than in the facade's drop.
            facade.join_engine_async().await;
        }
        facade.started(answer.map_err(|_| ()), launched.path)
    }
}

impl<T: Task> WorkingProcessFacade<T> {
    /// Spawns the worker described by `command` with default settings and
    /// completes the handshake (protocol version, worker pid).
    ///
    /// Errors name the path, the worker's exit status and the tail of its
    /// stderr: see [`SpawnError`].
    ///
    /// # Errors
    ///
    /// As [`FacadeBuilder::spawn`].
    pub fn spawn(command: WorkerCommand) -> Result<Self, SpawnError> {
        Self::builder(command).spawn()
    }

    /// A builder for settings beyond the defaults.
    pub fn builder(command: WorkerCommand) -> FacadeBuilder<T> {
        FacadeBuilder {
            cfg: Config::new(command),
            _task: PhantomData,
        }
    }

    /// Starts the engine thread, which spawns the workers; does not wait
    /// for their handshakes.
    fn launch(cfg: Config) -> Result<Launched<T>, SpawnError> {
        let path = cfg.command.program.clone();
        crate::worker::refuse_unserved_worker(&path)?;
        let resource = |what: &'static str, source: std::io::Error| SpawnError::Resource {
            what,
            path: path.clone(),
            source,
        };
        let (tx, inbox) = crate::engine::inbox().map_err(|e| resource("engine waker", e))?;
        let stats = Arc::new(StatsCells::new(cfg.workers));
        let bound = cfg.queue_bound.map(|b| b as u64);
        let max_frame = cfg.command.max_frame;
        let trace_id = crate::trace::next_id();
        let span = crate::trace::facade_span(trace_id, &path, cfg.workers);
        // Before the first spawn, so that every worker inherits it. Only an
        // optimisation: where the kernel cannot make one, there is none. A
        // worker with a memory limit gets none either: its mapping would
        // count against the limit.
        let region = match cfg.task_region {
            _ if cfg.command.memory_limit.is_some() => None,
            0 => None,
            len => TaskRegion::create(len).ok(),
        };
        let engine = Engine::new(cfg, inbox, stats.clone(), region.clone())
            .map_err(|e| resource("event loop", e))?;
        let (ready_tx, ready) = oneshot::channel();
        // Workers are spawned from this long-lived thread: PR_SET_PDEATHSIG
        // fires when the *thread* that forked the worker ends, so spawning
        // from the caller's (maybe short-lived) thread would kill the worker
        // with it. Its whole life runs in the facade's span.
        let thread = joinable::spawn("wf-engine", move || span.run(|| engine.run(ready_tx)))
            .map_err(|e| resource("engine thread", e))?;
        let facade = WorkingProcessFacade {
            tx,
            owner: std::process::id(),
            forks: crate::sys::fork_generation(),
            max_frame,
            counter: AtomicU64::new(0),
            collected: AtomicBool::new(false),
            bound,
            stats,
            engine: Mutex::new(Some(thread)),
            trace_id,
            completed: std::sync::OnceLock::new(),
            region,
        };
        Ok(Launched {
            ready,
            facade,
            path,
        })
    }

    /// The facade once its engine answered the start (`Err(())`: it ended
    /// without answering, a bug). A failed facade is dropped here: its
    /// engine has ended, so that only joins it.
    fn started(
        self,
        answer: Result<Result<(), SpawnError>, ()>,
        path: PathBuf,
    ) -> Result<Self, SpawnError> {
        match answer {
            Ok(Ok(())) => Ok(self),
            Ok(Err(e)) => Err(e),
            Err(()) => Err(SpawnError::Resource {
                what: "engine thread",
                path,
                source: std::io::Error::other("the engine thread panicked while starting"),
            }),
        }
    }

    /// Queues `task` for the worker and returns its ID. Never blocks: not
    /// when the worker is busy, not when its socket is full, not when it is
    /// dead (the task then still gets an outcome). Unbounded: for
    /// backpressure, see [`process_task_bounded`](Self::process_task_bounded).
    ///
    /// # Errors
    ///
    /// The task is handed back in the [`SubmitError`]: `Closed` once the
    /// facade is collected, `Unencodable` if its `Serialize` failed,
    /// `TooLarge` above [`WorkerCommand::max_frame_size`], `Forked` in a
    /// forked copy of the process that made the facade.
    pub fn process_task(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        self.send(task, None, None, None)
    }

    /// Like [`process_task`](Self::process_task), but bounded: refuses with
    /// [`SubmitError::Full`] when the tasks in flight (accepted, without an
    /// outcome yet) reach the [`queue_bound`](FacadeBuilder::queue_bound).
    /// Never blocks. Without a `queue_bound`, the same as `process_task`.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Full`] at the bound, with the task handed back; the
    /// others as [`process_task`](Self::process_task).
    pub fn process_task_bounded(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        if let Some(bound) = self.bound {
            if self.stats.in_flight() >= bound {
                return Err(SubmitError::Full(task));
            }
        }
        self.send(task, None, None, None)
    }

    /// The old name of [`process_task_bounded`](Self::process_task_bounded).
    ///
    /// # Errors
    ///
    /// As [`process_task_bounded`](Self::process_task_bounded).
    #[deprecated(note = "renamed to process_task_bounded, which says what it bounds")]
    pub fn try_process_task(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        self.process_task_bounded(task)
    }

    /// Queues `task` and returns a [`TaskHandle`] that receives its outcome
    /// as soon as the worker answers, while other work continues. The outcome
    /// goes to the handle, not to `collect_tasks` (unless the handle was
    /// dropped by then).
    ///
    /// # Errors
    ///
    /// As [`process_task`](Self::process_task).
    pub fn submit(&self, task: T) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.submit_observed(task, None, None)
    }

    /// Like [`submit`](Self::submit), with a limit on how long this task may
    /// run once its worker has started it (overriding
    /// [`task_timeout`](FacadeBuilder::task_timeout)): past it, the task is
    /// [`TimedOut`](crate::Outcome::TimedOut) and its worker is stopped.
    /// This is not a limit on waiting: for that, use the handle's
    /// [`wait_timeout`](TaskHandle::wait_timeout).
    ///
    /// # Errors
    ///
    /// As [`process_task`](Self::process_task).
    pub fn submit_with_time_limit(
        &self,
        task: T,
        limit: Duration,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.submit_observed(task, Some(limit), None)
    }

    /// The old name of [`submit_with_time_limit`](Self::submit_with_time_limit)
    /// (`None`: [`submit`](Self::submit)).
    ///
    /// # Errors
    ///
    /// As [`process_task`](Self::process_task).
    #[deprecated(
        note = "renamed to submit_with_time_limit: the duration limits how long the task may \
                run, not how long to wait for it"
    )]
    pub fn submit_with_timeout(
        &self,
        task: T,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.submit_observed(task, timeout, None)
    }

    /// [`submit`](Self::submit) with an optional run-time limit (for the
    /// pool's leases).
    pub(crate) fn submit_limited(
        &self,
        task: T,
        limit: Option<Duration>,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.submit_observed(task, limit, None)
    }

    /// Like [`submit`](Self::submit), calling `on_progress` with each
    /// progress value the running task reports through
    /// [`worker::Progress`](crate::worker::Progress) (decoded as `P`; one
    /// that does not decode is skipped). The callback runs on the facade's
    /// `wf-progress` thread, never on its engine; while it runs, newer values
    /// replace each other, so a slow callback sees the latest, not a
    /// backlog. The latest value is also on the handle
    /// ([`TaskHandle::progress`]).
    ///
    /// ```
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    /// use worker_facade::worker::{Progress, run_if_worker_with_progress};
    ///
    /// run_if_worker_with_progress(|t: SimpleTask, progress: &Progress| {
    ///     for percent in [25u8, 50, 75, 100] {
    ///         progress.report(&percent);
    ///     }
    ///     Ok::<_, String>(t.solve())
    /// });
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    /// let handle = w.submit_with_progress(SimpleTask::new("job", 0.0), |p: u8| println!("{p}%"))?;
    /// handle.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`process_task`](Self::process_task).
    pub fn submit_with_progress<P, F>(
        &self,
        task: T,
        on_progress: F,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>>
    where
        P: serde::de::DeserializeOwned,
        F: Fn(P) + Send + Sync + 'static,
    {
        self.submit_observed(task, None, Some(crate::progress::typed(on_progress)))
    }

    fn submit_observed(
        &self,
        task: T,
        timeout: Option<Duration>,
        callback: Option<crate::progress::Callback>,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        let (notify, rx) = oneshot::channel();
        let cell = Arc::new(ProgressCell::new(callback));
        let id = self.send(
            task,
            Some(Notify::Handle(notify)),
            timeout,
            Some(cell.clone()),
        )?;
        let tx = self.tx.clone();
        let cancel = Arc::new(move |id| {
            let _ = tx.send(Command::Cancel { id });
        });
        Ok(TaskHandle::new(id, rx, cancel, cell))
    }

    /// Cancels task `id` (see [`TaskHandle::cancel`] for what happens).
    /// Never blocks; an ID that is unknown or already finished changes
    /// nothing. Useful for tasks sent with
    /// [`process_task`](Self::process_task), which have no handle.
    ///
    /// ```
    /// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    /// let id = w.process_task(SimpleTask::new("slow", 60.0))?;
    /// w.cancel(id);
    /// let records = w.collect_tasks()?;
    /// println!("{}", records[0].outcome);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, id: TaskId) {
        let _ = self.tx.send(Command::Cancel { id: id.0 });
    }

    /// Like [`submit_with_time_limit`](Self::submit_with_time_limit), for a pool
    /// or grinder that runs a task elsewhere when it did not run here: the
    /// outcome comes with the task handed back when it is `NotRun`.
    pub(crate) fn submit_reclaim(
        &self,
        task: T,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<Reclaimed<T>>, SubmitError<T>> {
        let (notify, rx) = oneshot::channel();
        self.send(task, Some(Notify::Reclaim(notify)), timeout, None)?;
        Ok(rx)
    }

    /// Gathers the submissions made until the guard is dropped into one
    /// wake of the engine, and none of them goes by the direct lane: for a
    /// batch submitted in one go (a grinder's), so that a sleeping engine
    /// and its worker wake once for the batch, not for its first task and
    /// again for the rest. It holds for every submitter of this facade
    /// while it is open (see `Outbox::gather`).
    pub(crate) fn gather(&self) -> Gather<'_, T> {
        self.tx.gather()
    }

    fn send(
        &self,
        task: T,
        notify: Option<Notify<T>>,
        timeout: Option<Duration>,
        progress: Option<Arc<ProgressCell>>,
    ) -> Result<TaskId, SubmitError<T>> {
        if crate::sys::fork_generation() != self.forks && std::process::id() != self.owner {
            return Err(SubmitError::Forked {
                task,
                owner: self.owner,
            });
        }
        if self.is_closed() {
            return Err(SubmitError::Closed(task));
        }
        // Encoded here, on the caller's thread, outside every lock: the
        // task's `Serialize` is the caller's code, and a slow or panicking
        // one delays or fails only this call. Into this thread's buffer,
        // reused (no allocation per task): taken out of its cell, so that a
        // `Serialize` that itself submits finds it empty and uses a fresh
        // one, and put back after. The ID is patched in once assigned.
        let mut frame = ENCODE_BUFFER.try_with(Cell::take).unwrap_or_default();
        let sent = self.encode_and_submit(&mut frame, task, notify, timeout, progress);
        frame.clear();
        if frame.capacity() <= ENCODE_BUFFER_KEEP {
            let _ = ENCODE_BUFFER.try_with(|cell| cell.set(frame));
        }
        sent
    }

    /// [`send`](Self::send)'s work, with `frame` the buffer to encode into.
    fn encode_and_submit(
        &self,
        frame: &mut Vec<u8>,
        task: T,
        notify: Option<Notify<T>>,
        timeout: Option<Duration>,
        progress: Option<Arc<ProgressCell>>,
    ) -> Result<TaskId, SubmitError<T>> {
        let span = match self.encode_frame(frame, &task) {
            Ok(span) => span,
            Err(Unencoded::Failed(reason)) => {
                return Err(SubmitError::Unencodable { task, reason });
            }
            Err(Unencoded::TooLarge { len, max }) => {
                return Err(SubmitError::TooLarge { task, len, max });
            }
        };
        let entry = Entry::new(task, notify, timeout, progress);
        let assign = || {
            let id = self.counter.fetch_add(1, Ordering::AcqRel);
            (id & CLOSED == 0).then_some(id)
        };
        // Counted before the engine can settle it.
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let shared = span.is_some();
        match self.tx.submit(frame, entry, span, assign) {
            Ok(id) => {
                if shared {
                    self.stats.shared_tasks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(TaskId(id))
            }
            Err(entry) => {
                self.stats.submitted.fetch_sub(1, Ordering::Relaxed);
                Err(SubmitError::Closed(entry.task))
            }
        }
    }

    /// Encodes `task`'s frame into `frame`: a TASK frame, or a TASK_AT
    /// frame with the span of the task region that holds its payload. The
    /// task's `Serialize` runs once.
    ///
    /// A thread whose last task was large encodes the next one straight
    /// into a span as large, if one is free (no copy of its own, no page
    /// of fresh memory); pages it did not need go back at once. A task
    /// larger than the guess spills the rest into a buffer, and a small one
    /// goes through the socket; either is then handled the usual way. The
    /// usual way encodes into `frame`, and a large payload is copied into
    /// the region if a span is free; when none is, the whole frame goes
    /// through the socket.
    fn encode_frame(&self, frame: &mut Vec<u8>, task: &T) -> Result<Option<Span>, Unencoded> {
        let last = LAST_LARGE_FRAME.try_with(Cell::get).unwrap_or(0);
        let guess = last.saturating_sub(wire::FRAME_HEADER);
        let region = self.region.as_ref().filter(|_| guess > 0);
        if let Some(span) = region.and_then(|r| r.reserve(guess)) {
            let mut out = Spilling::new(span);
            let encoded =
                catch_unwind(AssertUnwindSafe(|| crate::codec::encode_to(task, &mut out)));
            match encoded {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Unencoded::Failed(crate::worker::error_chain(&e))),
                Err(panic) => return Err(Unencoded::panicked(&*panic)),
            }
            let (mut span, spill) = out.into_parts();
            let payload = span.len() as usize + spill.len();
            let body = 1 + 8 + payload;
            if body > self.max_frame as usize {
                return Err(Unencoded::TooLarge {
                    len: body,
                    max: self.max_frame,
                });
            }
            let whole = wire::FRAME_HEADER + payload;
            let large = remember_frame(whole);
            frame.clear();
            if large && spill.is_empty() {
                span.trim();
                wire::push_task_at(frame, 0, span.offset(), span.len());
                return Ok(Some(span));
            }
            // Small after all, or larger than the guess: the whole frame.
            if whole > frame.capacity() {
                *frame = self.tx.large_buffer(whole);
            }
            let copied = wire::push_frame(frame, KIND_TASK, Some(0), self.max_frame, |out| {
                span.read_into(out);
                out.extend_from_slice(&spill);
                Ok::<(), std::convert::Infallible>(())
            });
            match copied {
                Ok(()) => {}
                Err(PushError::TooLarge { len, max }) => {
                    return Err(Unencoded::TooLarge { len, max });
                }
                Err(PushError::Fill(never)) => match never {},
            }
            drop(span);
            return Ok(if large { self.share(frame) } else { None });
        }
        // A large frame leaves with its buffer: the next one starts from
        // nothing, so room for one as large as the last is made at once
        // rather than by doubling (a copy each time).
        if last > frame.capacity() {
            *frame = self.tx.large_buffer(last);
        }
        frame.clear();
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            wire::push_frame(frame, KIND_TASK, Some(0), self.max_frame, |out| {
                crate::codec::encode_into(task, out)
            })
        }));
        match encoded {
            Ok(Ok(())) => {}
            Ok(Err(PushError::Fill(e))) => {
                return Err(Unencoded::Failed(crate::worker::error_chain(&e)));
            }
            Ok(Err(PushError::TooLarge { len, max })) => {
                return Err(Unencoded::TooLarge { len, max });
            }
            Err(panic) => return Err(Unencoded::panicked(&*panic)),
        }
        let large = remember_frame(frame.len());
        Ok(if large { self.share(frame) } else { None })
    }

    /// Moves the payload of the large TASK frame in `frame` into a free
    /// span of the task region, leaving a TASK_AT frame in its place; `None`
    /// (and `frame` as it was) when the facade has no region or no span is
    /// free.
    fn share(&self, frame: &mut Vec<u8>) -> Option<Span> {
        let span = self.region.as_ref()?.store(wire::frame_payload(frame))?;
        let encoded = std::mem::take(frame);
        wire::push_task_at(frame, 0, span.offset(), span.len());
        self.tx.recycle(encoded);
        Some(span)
    }

    /// Closes submission, sends the terminator behind every queued task,
    /// waits for the worker to finish them and exit, reaps it, and returns
    /// one record per accepted task in submission order, except the tasks
    /// whose outcome went elsewhere: to a live [`TaskHandle`] (from
    /// [`submit`](Self::submit) or [`map`](Self::map)), or to a
    /// [`completed`](Self::completed) receiver that took it.
    ///
    /// Waits as long as the tasks take (bound them with
    /// [`task_timeout`](FacadeBuilder::task_timeout), or use
    /// [`collect_tasks_timeout`](Self::collect_tasks_timeout)). A dead worker
    /// does not make it wait. A second call returns
    /// [`CollectError::AlreadyCollected`].
    ///
    /// # Errors
    ///
    /// [`CollectError::AlreadyCollected`] on a second call (the records went to
    /// the first); [`CollectError::Forked`] in a forked copy of the process that
    /// made the facade; [`CollectError::SupervisorGone`] if the engine thread
    /// ended unexpectedly (a bug).
    pub fn collect_tasks(&self) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect(None)
    }

    /// Like [`collect_tasks`](Self::collect_tasks), but once `timeout` has
    /// passed the worker is killed: the task it was running is reported
    /// crashed, and the tasks that had not started
    /// [`NotRun`](crate::Outcome::NotRun) with
    /// [`DeadlineExpired`](crate::NotRunReason::DeadlineExpired).
    ///
    /// # Errors
    ///
    /// As [`collect_tasks`](Self::collect_tasks); the deadline passing is not
    /// an error (the records say what it cost).
    pub fn collect_tasks_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect(Instant::now().checked_add(timeout))
    }

    /// Like [`collect_tasks_timeout`](Self::collect_tasks_timeout), with a
    /// deadline.
    ///
    /// # Errors
    ///
    /// As [`collect_tasks_timeout`](Self::collect_tasks_timeout).
    pub fn collect_tasks_deadline(
        &self,
        deadline: Instant,
    ) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect(Some(deadline))
    }

    /// Like [`collect_tasks`](Self::collect_tasks), as a future that never
    /// blocks the thread polling it: the engine thread drains and reaps
    /// the workers, and the future awaits its answer and the engine's end.
    /// Works on any runtime. Once it has resolved, dropping the facade does
    /// not block.
    ///
    /// Submission closes at the first poll. Dropping the future before it
    /// resolves does not stop the collect: the workers still finish the
    /// queued tasks, their records are discarded, and the facade's drop then
    /// waits for the engine as usual.
    ///
    /// ```no_run
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn_async(WorkerCommand::new("facade-worker")).await?;
    /// w.process_task(SimpleTask::new("one", 0.5))?;
    /// for record in w.collect_tasks_async().await? {
    ///     println!("{} - {}", record.task.id, record.outcome.display_output());
    /// }
    /// drop(w); // returns at once: the engine has ended
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`collect_tasks`](Self::collect_tasks).
    pub async fn collect_tasks_async(&self) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect_async(None).await
    }

    /// Like [`collect_tasks_timeout`](Self::collect_tasks_timeout), as a
    /// future (see [`collect_tasks_async`](Self::collect_tasks_async)): the
    /// engine kills the workers once `timeout` has passed, so the future
    /// resolves soon after it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn_async(WorkerCommand::new("facade-worker")).await?;
    /// w.process_task(SimpleTask::new("slow", 60.0))?;
    /// let records = w.collect_tasks_timeout_async(Duration::from_millis(200)).await?;
    /// assert!(matches!(records[0].outcome, worker_facade::Outcome::Crashed(_)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`collect_tasks_timeout`](Self::collect_tasks_timeout).
    pub async fn collect_tasks_timeout_async(
        &self,
        timeout: Duration,
    ) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect_async(Instant::now().checked_add(timeout))
            .await
    }

    /// Like [`collect_tasks_deadline`](Self::collect_tasks_deadline), as a
    /// future (see [`collect_tasks_async`](Self::collect_tasks_async)).
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn_async(WorkerCommand::new("facade-worker")).await?;
    /// w.process_task(SimpleTask::new("one", 0.1))?;
    /// let records = w
    ///     .collect_tasks_deadline_async(Instant::now() + Duration::from_secs(5))
    ///     .await?;
    /// assert!(records[0].outcome.is_completed());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`collect_tasks_timeout`](Self::collect_tasks_timeout).
    pub async fn collect_tasks_deadline_async(
        &self,
        deadline: Instant,
    ) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.collect_async(Some(deadline)).await
    }

    /// [`spawn`](Self::spawn) as a future: shorthand for
    /// `builder(command).spawn_async()` (see
    /// [`FacadeBuilder::spawn_async`]).
    ///
    /// ```no_run
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), worker_facade::SpawnError> {
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn_async(WorkerCommand::new("facade-worker")).await?;
    /// w.shutdown_async().await;
    /// # Ok(()) }
    /// ```
    pub fn spawn_async(
        command: WorkerCommand,
    ) -> impl Future<Output = Result<Self, SpawnError>> + Send + 'static {
        Self::builder(command).spawn_async()
    }

    /// What dropping the facade does — cancel every task that has not
    /// started, give the running ones the grace period, then kill, reap and
    /// join — as a future that never blocks the thread polling it. Use it
    /// in async code instead of letting the facade drop. The outcomes of
    /// tasks without a [`TaskHandle`] are discarded, as on drop (collect to
    /// keep them).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::new("facade-worker"))
    ///     .grace_period(Duration::from_secs(1))
    ///     .spawn_async()
    ///     .await?;
    /// let running = w.submit(SimpleTask::new("long", 0.5))?;
    /// let queued = w.submit(SimpleTask::new("queued", 0.5))?;
    /// w.shutdown_async().await; // about 0.5 s, awaited
    /// assert!(running.await?.is_completed());
    /// assert!(matches!(queued.await?, Outcome::NotRun(_)));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown_async(self) {
        if std::process::id() != self.owner {
            return; // a fork: its drop forgets the engine (see `Drop`)
        }
        if !self.collected.load(Ordering::Acquire) {
            self.counter.fetch_or(CLOSED, Ordering::AcqRel);
            let _ = self.tx.send(Command::Shutdown);
        }
        self.join_engine_async().await;
        // The drop finds the engine joined: nothing left to wait for.
    }

    fn collect(&self, deadline: Option<Instant>) -> Result<Vec<TaskRecord<T>>, CollectError> {
        let records = match self.begin_collect(deadline)? {
            Some(records) => records.recv().map_err(|_| CollectError::SupervisorGone),
            None => Err(CollectError::SupervisorGone),
        };
        self.join_engine();
        records.map(|r| self.with_untaken(r))
    }

    async fn collect_async(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Vec<TaskRecord<T>>, CollectError> {
        let records = match self.begin_collect(deadline)? {
            Some(records) => records.await.map_err(|_| CollectError::SupervisorGone),
            None => Err(CollectError::SupervisorGone),
        };
        self.join_engine_async().await;
        records.map(|r| self.with_untaken(r))
    }

    /// Closes submission and asks the engine to collect; the records come
    /// on the receiver (`None`: the engine is gone).
    #[allow(clippy::type_complexity)]
    fn begin_collect(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<oneshot::Receiver<Vec<TaskRecord<T>>>>, CollectError> {
        if std::process::id() != self.owner {
            return Err(CollectError::Forked { owner: self.owner });
        }
        if self.collected.swap(true, Ordering::AcqRel) {
            return Err(CollectError::AlreadyCollected);
        }
        let expected = self.counter.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let (reply, records) = oneshot::channel();
        let sent = self.tx.send(Command::Collect {
            expected,
            deadline,
            reply,
        });
        Ok(sent.ok().map(|()| records))
    }

    /// Adds the records the `completed()` channel still holds: the engine
    /// put each one there before it replied to the collect.
    fn with_untaken(&self, mut records: Vec<TaskRecord<T>>) -> Vec<TaskRecord<T>> {
        if let Some(completed) = self.completed.get() {
            let before = records.len();
            records.extend(completed.drain());
            if records.len() > before {
                records.sort_unstable_by_key(|r| r.id);
            }
        }
        records
    }

    /// Runs every task of `tasks` and yields their outcomes in input order,
    /// streaming: at most [`DEFAULT_AHEAD`](crate::map::DEFAULT_AHEAD) tasks
    /// (or [`Map::ahead`]) are in flight, so the input may be endless. See
    /// [`Map`]; [`map_unordered`](Self::map_unordered) yields them as they
    /// finish. Outcomes go to the map, not to `collect_tasks`.
    pub fn map<I>(&self, tasks: I) -> Map<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
    {
        Map::new(self, tasks.into_iter())
    }

    /// Like [`map`](Self::map), yielding each outcome as soon as its task
    /// finishes, with the task's index in the input.
    pub fn map_unordered<I>(&self, tasks: I) -> MapUnordered<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T>,
    {
        MapUnordered::new(self, tasks.into_iter())
    }

    /// A receiver of records as their tasks finish, while work continues:
    /// see [`Completed`]. Every record no [`TaskHandle`] takes goes there
    /// from now on (with those that finished already), and
    /// [`collect_tasks`](Self::collect_tasks) then returns only the records
    /// no receiver took. Each call returns a receiver of the same records;
    /// each record reaches one of them.
    pub fn completed(&self) -> Completed<T> {
        self.completed
            .get_or_init(|| {
                let (sink, rx) = flume::unbounded();
                // A facade already collected has no engine: the receiver
                // then ends at once, and collect_tasks had every record.
                let _ = self.tx.send(Command::Completed(sink));
                Completed::new(rx)
            })
            .clone()
    }

    /// Returns a guard that derefs to this facade and collects on drop,
    /// handing the records (or the error) to `sink` — also while unwinding
    /// from a panic. See [`CollectOnDrop`].
    pub fn collect_on_drop<F>(self, sink: F) -> CollectOnDrop<T>
    where
        F: FnOnce(Result<Vec<TaskRecord<T>>, CollectError>) + Send + 'static,
    {
        CollectOnDrop::new(self, Box::new(sink))
    }

    /// Kills the worker now, without waiting for its tasks. The task it was
    /// running is reported [`Crashed`](crate::Outcome::Crashed) with `reason`;
    /// every task not yet started, and every task submitted later, is
    /// [`NotRun`](crate::Outcome::NotRun) with
    /// [`Cancelled`](crate::NotRunReason::Cancelled)`(reason)`. No worker is
    /// started again. `collect_tasks` still returns every record.
    ///
    /// This is how a lease that expired is revoked.
    pub fn terminate(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.terminate_for(
            CrashReason::Terminated(reason.clone()),
            CancelReason::Terminated(reason),
        );
    }

    /// [`terminate`](Self::terminate) with typed reasons (a pool revoking an
    /// expired lease).
    pub(crate) fn terminate_for(&self, crash: CrashReason, cancel: CancelReason) {
        let _ = self.tx.send(Command::Terminate { crash, cancel });
    }

    /// Whether the facade still accepts tasks.
    pub fn is_closed(&self) -> bool {
        self.counter.load(Ordering::Acquire) & CLOSED != 0
    }

    /// A snapshot of the counters: submitted, completed, failed, crashed,
    /// in flight, restarts, the first worker's pid.
    pub fn stats(&self) -> FacadeStats {
        self.stats.snapshot()
    }

    /// The first running worker's process ID, if one is running.
    pub fn worker_pid(&self) -> Option<u32> {
        self.stats.pids().first().copied()
    }

    /// The process IDs of the running workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.stats.pids()
    }

    /// The `id` field of this facade's `facade` span.
    pub(crate) fn trace_id(&self) -> u64 {
        self.trace_id
    }

    /// How many workers ended without being asked to (crashed, killed,
    /// timed out, broke the protocol).
    pub(crate) fn workers_lost(&self) -> u64 {
        self.stats.workers_lost.load(Ordering::Acquire)
    }

    fn join_engine(&self) {
        let handle = self
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Awaits the engine thread's end, then joins it (at once). The handle
    /// stays in place while waiting, so a dropped future leaves it to the
    /// facade's drop.
    async fn join_engine_async(&self) {
        let ended = {
            let engine = self.engine.lock().unwrap_or_else(PoisonError::into_inner);
            engine.as_ref().map(Joinable::ended)
        };
        if let Some(ended) = ended {
            ended.wait().await;
        }
        self.join_engine();
    }
}

impl<T: Task> Drop for WorkingProcessFacade<T> {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            // A fork: the engine thread and the workers exist only in the
            // process that made the facade. Nothing here to stop or join.
            if let Some(handle) = self
                .engine
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                std::mem::forget(handle);
            }
            return;
        }
        if !self.collected.load(Ordering::Acquire) {
            self.counter.fetch_or(CLOSED, Ordering::AcqRel);
            let _ = self.tx.send(Command::Shutdown);
        }
        self.join_engine();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn facade_is_send_and_sync() {
        fn is<X: Send + Sync>() {}
        is::<super::WorkingProcessFacade<crate::simple::SimpleTask>>();
    }
}
