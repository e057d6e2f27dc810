//! Errors of the parent-side API. Each says what went wrong and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::task::ExitInfo;

/// A worker could not be started.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use worker_facade::{SpawnError, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// match WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("/no/such/worker")) {
///     Err(SpawnError::NotFound { path }) => eprintln!("build the worker first: {}", path.display()),
///     Err(other) => eprintln!("{other}"),
///     Ok(_) => {}
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// There is no file at the worker's path.
    #[error(
        "worker binary {} not found: build it, or pass the right path to WorkerCommand::new",
        path.display()
    )]
    NotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but may not be executed.
    #[error("worker binary {} is not executable: check its permissions (chmod +x)", path.display())]
    NotExecutable {
        /// The path that was tried.
        path: PathBuf,
    },
    /// Starting the process failed for another reason.
    #[error("could not start worker {}", path.display())]
    Start {
        /// The path that was tried.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A resource the facade needs (socket, pipe, thread, temporary
    /// directory) could not be created. Usually a descriptor or process limit.
    #[error("could not create the {what} for worker {}", path.display())]
    Resource {
        /// Which resource.
        what: &'static str,
        /// The worker's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The worker exited before completing the handshake. Its stderr tail
    /// usually says why; a worker that never calls `worker::serve` (or
    /// `run_if_worker`) ends up here too.
    #[error(
        "worker {} exited before the handshake: {status}{}",
        path.display(),
        tail_suffix(stderr_tail)
    )]
    ExitedEarly {
        /// The worker's path.
        path: PathBuf,
        /// How it exited.
        status: ExitInfo,
        /// Its last stderr lines.
        stderr_tail: Vec<String>,
    },
    /// The worker did not complete the handshake in time; it was killed.
    #[error(
        "worker {} did not complete the handshake within {timeout:?} and was killed{}",
        path.display(),
        tail_suffix(stderr_tail)
    )]
    HandshakeTimeout {
        /// The worker's path.
        path: PathBuf,
        /// The limit (see `WorkerCommand::handshake_timeout`).
        timeout: Duration,
        /// Its last stderr lines.
        stderr_tail: Vec<String>,
    },
    /// The worker speaks another protocol version: rebuild it against the same
    /// version of this crate as the parent.
    #[error(
        "worker {} speaks protocol {found} (crate {worker_version}), the parent speaks {expected} \
         (crate {}): rebuild the worker against the parent's worker-facade version",
        path.display(),
        env!("CARGO_PKG_VERSION")
    )]
    ProtocolMismatch {
        /// The worker's path.
        path: PathBuf,
        /// The parent's protocol version.
        expected: u32,
        /// The worker's protocol version.
        found: u32,
        /// The worker's crate version, as it reported it.
        worker_version: String,
    },
    /// The worker encodes tasks with another codec than the parent: one of
    /// them was built with worker-facade's `postcard` feature, the other
    /// without (see [`codec`](crate::codec)).
    #[error(
        "worker {} encodes tasks with {worker}, the parent with {parent}: build the worker and \
         the parent with the same worker-facade codec (the `postcard` feature on both, or on \
         neither)",
        path.display()
    )]
    CodecMismatch {
        /// The worker's path.
        path: PathBuf,
        /// The parent's codec ([`codec::NAME`](crate::codec::NAME)).
        parent: &'static str,
        /// The worker's codec.
        worker: String,
    },
    /// The program was started as a worker (by
    /// [`WorkerCommand::current_exe`](crate::WorkerCommand::current_exe))
    /// but made a facade instead of serving tasks: its `main` does not call
    /// [`worker::run_if_worker`](crate::worker::run_if_worker) first. Left
    /// alone, every worker would start the next one. Returned both inside
    /// the worker, by the facade it tried to make, and to the parent.
    #[error(
        "{} was started as a worker but made a facade instead of serving tasks: call \
         worker_facade::worker::run_if_worker(handler) first thing in main (or \
         worker::serve in a dedicated worker binary)",
        path.display()
    )]
    RunIfWorkerMissing {
        /// The worker's path.
        path: PathBuf,
    },
    /// The worker was built with other task or output types than this
    /// program: a stale binary, or another version of the type. Both would
    /// agree on the bytes and disagree on their meaning (fields in another
    /// order decode into each other), so the worker is refused.
    ///
    /// The shapes are serde's view of the types (field names and order,
    /// variants, primitive types), as `serde-reflection` traces them.
    #[error(
        "worker {} was built with another {role} type than this program: here `{}` is `{}`, in \
         the worker `{}` is `{}`; rebuild the worker from the same source as the parent",
        path.display(),
        parent.name,
        parent.shape,
        worker.name,
        worker.shape
    )]
    TypeMismatch {
        /// The worker's path.
        path: PathBuf,
        /// `"task"` or `"output"`: which of the two types differs.
        role: &'static str,
        /// The type in this program.
        parent: Box<TypeDescription>,
        /// The type in the worker.
        worker: Box<TypeDescription>,
    },
    /// The worker connected but its handshake was not valid.
    #[error("worker {} sent a bad handshake: {detail}", path.display())]
    BadHandshake {
        /// The worker's path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// One side's task or output type, as [`SpawnError::TypeMismatch`] shows it.
///
/// ```
/// use worker_facade::TypeDescription;
/// let t = TypeDescription::new("app::Frame", "Frame; Frame { width: U32, height: U32 }");
/// assert_eq!(t.name, "app::Frame");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeDescription {
    /// The type's Rust name (`std::any::type_name`).
    pub name: String,
    /// Its serde shape: the root format, then each named container with its
    /// fields in order (`Frame; Frame { width: U32, height: U32 }`).
    pub shape: String,
}

impl TypeDescription {
    /// A description from a name and a shape.
    pub fn new(name: impl Into<String>, shape: impl Into<String>) -> Self {
        TypeDescription {
            name: name.into(),
            shape: shape.into(),
        }
    }
}

fn tail_suffix(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n  {}", tail.join("\n  "))
    }
}

/// A task was refused. The task is handed back.
///
/// ```
/// use worker_facade::{SubmitError, simple::SimpleTask};
/// let err = SubmitError::Closed(SimpleTask::new("late", 0.0));
/// assert_eq!(err.into_task().id, "late");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The facade was collected or closed: it accepts no more tasks.
    #[error("the facade is collected or closed and accepts no more tasks")]
    Closed(T),
    /// The bounded queue is full (only from `process_task_bounded`): wait for
    /// outcomes to come back, then try again.
    #[error("the facade's queue is full; retry once outcomes have come back")]
    Full(T),
    /// The task could not be encoded: its `Serialize` returned an error or
    /// panicked. Nothing was sent.
    #[error("the task could not be encoded: {reason}")]
    Unencodable {
        /// The task, handed back.
        task: T,
        /// What the encoder said, or the panic message.
        reason: String,
    },
    /// The task encodes to more bytes than the maximum frame size, which
    /// [`WorkerCommand::max_frame_size`](crate::WorkerCommand::max_frame_size)
    /// raises (the command, not the facade's builder, carries it: both
    /// sides of the socket enforce it).
    #[error(
        "the task encodes to {len} bytes, above the maximum frame size of {max} bytes: raise it \
         with WorkerCommand::max_frame_size, or send a reference to the data instead"
    )]
    TooLarge {
        /// The task, handed back.
        task: T,
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The facade was made in another process: this one is a `fork` of it,
    /// and a facade's engine and workers belong to the process that made
    /// it. Make a new facade in this process.
    #[error(
        "this facade belongs to the process that made it (pid {owner}); this process is a fork \
         of it: make a new facade here"
    )]
    Forked {
        /// The task, handed back.
        task: T,
        /// The process that made the facade.
        owner: u32,
    },
}

impl<T> SubmitError<T> {
    /// The task that was refused.
    pub fn into_task(self) -> T {
        match self {
            SubmitError::Closed(t) | SubmitError::Full(t) => t,
            SubmitError::Unencodable { task, .. }
            | SubmitError::TooLarge { task, .. }
            | SubmitError::Forked { task, .. } => task,
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("Closed(..)"),
            SubmitError::Full(_) => f.write_str("Full(..)"),
            SubmitError::Unencodable { reason, .. } => f
                .debug_struct("Unencodable")
                .field("reason", reason)
                .finish_non_exhaustive(),
            SubmitError::TooLarge { len, max, .. } => f
                .debug_struct("TooLarge")
                .field("len", len)
                .field("max", max)
                .finish_non_exhaustive(),
            SubmitError::Forked { owner, .. } => f
                .debug_struct("Forked")
                .field("owner", owner)
                .finish_non_exhaustive(),
        }
    }
}

/// `collect_tasks` could not return the records.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// # use worker_facade::{CollectError, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// # let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe()).unwrap();
/// w.collect_tasks().unwrap();
/// assert!(matches!(w.collect_tasks(), Err(CollectError::AlreadyCollected)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// `collect_tasks` was already called on this facade; the records went to
    /// that call.
    #[error("the tasks were already collected: collect_tasks returns the records once")]
    AlreadyCollected,
    /// The facade's engine thread ended unexpectedly (a bug in this
    /// library: please report it). The workers have been killed.
    #[error("the facade's engine thread ended unexpectedly; the outcomes are lost")]
    SupervisorGone,
    /// The facade was made in another process: this one is a `fork` of it.
    #[error(
        "this facade belongs to the process that made it (pid {owner}); this process is a fork \
         of it and cannot collect its tasks"
    )]
    Forked {
        /// The process that made the facade.
        owner: u32,
    },
}

/// Waiting on a handle failed: the error of every handle's waiting methods
/// ([`TaskHandle`](crate::TaskHandle), [`GrindHandle`](crate::GrindHandle)),
/// about the waiting only — what the task did is in the value waited for.
///
/// ```
/// use worker_facade::WaitError;
/// assert_eq!(WaitError::Timeout.to_string(), "the task's outcome did not arrive in time");
/// assert!(WaitError::AlreadyTaken.to_string().contains("already taken from this handle"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The outcome has not arrived yet (`try_wait`) or before the deadline;
    /// the handle can wait again.
    #[error("the task's outcome did not arrive in time")]
    Timeout,
    /// The outcome was already taken from this handle, by the `try_wait`,
    /// timed wait or `.await` that returned it: a handle gives its outcome
    /// once.
    #[error(
        "the task's outcome was already taken from this handle: a handle gives its outcome once, \
         to the try_wait, timed wait or .await that returned it"
    )]
    AlreadyTaken,
    /// The outcome can never arrive: what was to deliver it ended without
    /// answering (a bug in this library: please report it).
    #[error(
        "the task's outcome can never arrive: the engine that was to deliver it ended without \
         answering"
    )]
    Disconnected,
}
