//! Run crash-prone or CPU-heavy work in child worker processes, so that a
//! crash, abort, leak or hang in the work never takes the caller down.
//!
//! A [`WorkingProcessFacade`] spawns a worker process (or several), streams
//! tasks to it over a private socket without ever blocking the caller,
//! watches the worker's process status, and gives every accepted task
//! exactly one [`Outcome`]: completed, failed, crashed (with the signal or
//! exit code), not run, or timed out. One library thread serves a facade,
//! whatever the number of its workers.
//!
//! # Example
//!
//! ```
//! use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // In the worker, serve tasks and exit; in the parent, return at once.
//!     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
//!
//!     let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
//!     w.process_task(SimpleTask::new("one", 0.1))?;
//!     w.process_task(SimpleTask::new("two", 0.25))?;
//!     for record in w.collect_tasks()? {
//!         match record.outcome {
//!             Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
//!             other => println!("{} - {}", record.task.id, other),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Writing a worker
//!
//! Two ways, both running the same [`worker::serve`] loop:
//!
//! - **A dedicated binary** whose `main` is
//!   `worker_facade::worker::serve(handler)`; the parent starts it with
//!   [`WorkerCommand::new`]. The stock `facade-worker` binary of this crate is
//!   one, for [`simple::SimpleTask`].
//! - **The current executable, re-executed**: the first line of `main` is
//!   [`worker::run_if_worker`]`(handler)`, and the parent uses
//!   [`WorkerCommand::current_exe`]. No second binary to build or find.
//!
//! A task type implements [`Task`], naming its output type. Both travel as
//! serde values through the [`codec`]: bincode 2 by default, postcard 1
//! with the `postcard` feature.
//!
//! # Pools and batching
//!
//! - [`LeasedExecutorManager`]: a pool of worker processes (each one a
//!   facade) that callers lease for a bounded time. Past a lease's hard
//!   expiry its worker is killed and replaced; an executor whose worker
//!   crashed is retired, never handed out again, and replaced.
//! - [`WorkGrinder`]: the batcher of Python's `leasepool`, in front of the
//!   pool. Many callers — threads, or async tasks in any runtime — submit
//!   items; a batch leaves when the oldest item has waited `max_wait` or
//!   `batch_size_threshold` items are pending, runs on one leased executor,
//!   and each caller gets its own result as soon as the worker answers it.
//!   Batches run concurrently on several executors; a crash fails only the
//!   item that was running.
//!
//! ```
//! use std::sync::Arc;
//! use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand, simple::SimpleTask};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
//!
//!     let pool = Arc::new(
//!         LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe())
//!             .max_executors(2)
//!             .build()?,
//!     );
//!     pool.start()?;
//!     let grinder = WorkGrinder::builder(pool.clone()).max_wait_seconds(0.05).build()?;
//!     grinder.start()?;
//!     // From a plain thread: a handle to wait on. The outer `?` is the
//!     // waiting's error, the inner one the item's (a crash, say).
//!     println!("{}", grinder.submit_from_thread(SimpleTask::new("one", 0.1))?.wait()??);
//!     // In async code (any runtime): grinder.submit(task).await?
//!     let handle = grinder.enqueue(SimpleTask::new("two", 0.1))?; // a Future
//!     println!("{}", futures_executor::block_on(handle)??);
//!     grinder.stop(false);
//!     pool.stop();
//!     Ok(())
//! }
//! ```
//!
//! # Async
//!
//! The library has no runtime of its own and needs none: every call that
//! waits has an async form that never blocks the thread polling it, on any
//! runtime — [`FacadeBuilder::spawn_async`],
//! [`WorkingProcessFacade::collect_tasks_async`] (and its timeout and
//! deadline forms), [`WorkingProcessFacade::shutdown_async`],
//! [`LeasedExecutorManager::start_async`],
//! [`LeasedExecutorManager::acquire_async`] (and its `try_`, timeout and
//! deadline forms), [`LeasedExecutorManager::stop_async`],
//! [`WorkGrinder::submit`], [`WorkGrinder::stop_async`] — and task handles
//! are futures. The library's own threads do the waiting; the futures await
//! their answers. The `Drop` of a facade, a pool or a grinder waits for its
//! workers (up to the grace period): in async code, await the matching
//! `collect_tasks_async`, `shutdown_async` or `stop_async` first, after
//! which the drop returns at once.
//!
//! # Observability
//!
//! With the `tracing` feature (on by default) the library reports through
//! [`tracing`](https://docs.rs/tracing) — structured events with fields, in
//! spans that tell objects apart:
//!
//! - spans `facade{id, program, workers}`, `pool{id, min_executors,
//!   max_executors}`, `grinder{id, owner_prefix}`, each a child of the span
//!   current where the object was made (a pool's facades are inside the
//!   pool's span; wrap `spawn` or `build` in a span of yours to name them);
//!   the library's threads run inside them;
//! - target `worker_facade::facade`: `worker_spawned{slot, pid, program}`,
//!   `worker_restarted{pid, restarts}`, `worker_recycled{pid, recycles}`,
//!   `handshake_failed{pid, error}`, `worker_crashed{pid, signal,
//!   signal_name, exit_code, core_dumped, task, requeued, reason,
//!   stderr_last}`, `worker_killed{pid, task, reason}`,
//!   `task_timed_out{pid, task, limit_ms}`,
//!   `restart_budget_exhausted{slot, reason, gave_up}` and
//!   `facade_gave_up{reason}` (exactly when [`FacadeStats::gave_up`] is set);
//! - target `worker_facade::pool`: `lease_granted`, `lease_renewed` (a
//!   grinder's executor going straight to its next batch; both also with
//!   `duration_ms`), `lease_expired`,
//!   `lease_revoked{lease, owner, pid}`, `executor_retired{facade, why}`,
//!   `executor_started`, `executor_replaced{facade, pid}`,
//!   `executor_spawn_failed{error}`;
//! - target `worker_facade::grinder`: `batch_dispatched{batch, size,
//!   waited_ms}`;
//! - target `worker_facade::output`, with [`Output::Tracing`]: each line a
//!   worker prints, `worker_output{pid, task, stream, line}`.
//!
//! Event names are the events' `Metadata::name`. Without a subscriber the
//! cost is a disabled check per event; `default-features = false` removes
//! the dependency.
//!
//! # Codec limitations
//!
//! Neither bincode nor postcard is self-describing: `#[serde(flatten)]`,
//! `#[serde(untagged)]`, internally tagged enums, `skip_serializing_if` and
//! `deserialize_any` do not work in task or output types, and
//! `skip_serializing_if` would even corrupt data silently. Encoding refuses
//! `skip_serializing_if` and `flatten` with an error naming the attribute and
//! the field; a decode that needs `deserialize_any` names `untagged`. Mark
//! byte blobs `#[serde(with = "serde_bytes")]`: a plain `Vec<u8>` goes
//! through serde byte by byte. See [`codec`].
//!
//! # Feature flags
//!
//! - `bincode` (default): the wire codec is bincode 2.
//! - `postcard`: the wire codec is postcard 1 (wins over `bincode`; with
//!   `default-features = false` bincode is not built at all). Build the
//!   parent and its workers alike: the handshake refuses the other codec.
//! - `serde`: `Serialize`/`Deserialize` for the outcome types, to store or
//!   send them elsewhere.
//!
//! # Guarantees
//!
//! - Every accepted task gets exactly one outcome, delivered once.
//! - `process_task` never blocks and never panics.
//! - A worker's death is read from its process status at once (its pidfd
//!   becomes readable); the task it was running is `Crashed` with the signal
//!   or exit code and the tail of its stderr; tasks it had not started go to
//!   a fresh worker (see [`RestartPolicy`]).
//! - No process, zombie, thread, descriptor or file outlives the facade,
//!   also when it is dropped during a panic.
//! - Nobody else can reach a worker's socket: it is one end of a socket pair
//!   made before the spawn and inherited by the worker alone, with no name.
//! - The task's and the output's serde code (the caller's code) never runs
//!   where it could hurt the facade: a task is encoded on the submitting
//!   thread, an output decoded under `catch_unwind`, and a task decoded only
//!   in the worker, after it said it started it.
//!
//! # Platforms
//!
//! Linux 5.4 or later: workers are watched, signalled and reaped through
//! pidfds, so a recycled pid is never hit. `PR_SET_PDEATHSIG` takes a worker
//! down with its parent. On any other target the crate does not compile,
//! with one error that says so.

#![deny(missing_docs)]

// One sentence on another target, instead of dozens of errors from system
// calls that do not exist there: everything else is Linux only.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "worker-facade runs on Linux only (5.4 or later): it watches, signals and reaps its worker \
     processes through pidfds, which other systems do not have; build it for a Linux target"
);

/// Keeps every item it is given to Linux, where the crate builds.
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(target_os = "linux")] $item )* };
}

linux_only! {
    pub mod codec;
    mod command;
    mod completed;
    mod config;
    mod console;
    mod engine;
    mod error;
    mod facade;
    mod grinder;
    mod guard;
    mod handle;
    mod joinable;
    pub mod map;
    mod pool;
    mod process;
    mod progress;
    mod region;
    mod ring;
    mod stats;
    mod sys;
    mod task;
    mod trace;
    mod types;
    mod wire;

    pub mod simple;
    pub mod testing;
    pub mod worker;

    pub use codec::CodecError;
    pub use command::{WORKER_ENV, WorkerCommand};
    pub use completed::{Completed, CompletedStream};
    pub use config::RestartPolicy;
    pub use console::{Output, OutputLine, OutputStream};
    pub use error::{CollectError, SpawnError, SubmitError, TypeDescription, WaitError};
    pub use facade::{FacadeBuilder, WorkingProcessFacade};
    pub use grinder::{
        AfterCrash, EnqueueError, GrindHandle, GrinderBuilder, GrinderConfigError,
        GrinderStartError, GrinderStats, ItemError, StatsTimeout, WorkError, WorkGrinder,
    };
    #[allow(deprecated)]
    pub use grinder::{GrindError, GrinderError};
    pub use guard::CollectOnDrop;
    pub use handle::{TaskFuture, TaskHandle};
    pub use map::{GrindMap, GrindMapUnordered, Map, MapUnordered};
    pub use pool::{
        AcquireError, Lease, LeaseError, LeaseInfo, LeasedExecutorManager, PoolBuilder,
        PoolConfigError, PoolStartError, PoolStats,
    };
    pub use stats::FacadeStats;
    pub use task::{
        CancelReason, CrashInfo, CrashReason, ExitInfo, NotRunReason, Outcome, ResourceUsage,
        StatusLost, Task, TaskId, TaskRecord, UnavailableReason,
    };
    pub use wire::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION, WireError};
}

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
