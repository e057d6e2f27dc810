//! Errors of agents and clients. Each says what went wrong and what to do.

use std::io;

/// The server could not be reached or prepared.
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use worker_facade::simple::SimpleTask;
/// use worker_facade_nats::{ConnectError, RemoteFacade, StartError};
///
/// match RemoteFacade::<SimpleTask>::builder("nats://127.0.0.1:4222").start() {
///     Err(StartError::Connect(ConnectError::Unreachable { url, .. })) => {
///         eprintln!("start nats-server -js first ({url})")
///     }
///     Err(other) => eprintln!("{other}"),
///     Ok(_client) => {}
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No NATS server answered at this address.
    #[error(
        "could not reach a NATS server at {url}: start one (nats-server -js) or pass the right \
         address"
    )]
    Unreachable {
        /// The address tried.
        url: String,
        /// What the client library said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server runs without JetStream, which this crate needs.
    #[error("the NATS server at {url} has JetStream disabled: start it with -js")]
    NoJetStream {
        /// The server's address.
        url: String,
    },
    /// The stream, consumer or bucket could not be created or opened.
    #[error("could not open the {what} {name} on {url}")]
    Setup {
        /// Which object: `"stream"`, `"consumer"` or `"bucket"`.
        what: &'static str,
        /// Its name.
        name: String,
        /// The server's address.
        url: String,
        /// What the server said.
        #[source]
        source: async_nats::Error,
    },
    /// The thread that talks to the server could not be started.
    #[error("could not start the {what} thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A [`RemoteFacade`](crate::RemoteFacade) could not start or resume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The server could not be reached or prepared.
    #[error("could not connect to the server")]
    Connect(#[from] ConnectError),
    /// A job name must be 1 to 64 letters, digits, `-` or `_`.
    #[error("invalid job name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    InvalidJob(String),
    /// A job of this name already has tasks: pick another name, or resume it.
    #[error("job {0:?} already has tasks on the server: resume it, or choose another name")]
    JobExists(String),
    /// There is no task of this job on the server (never started, or expired).
    #[error("job {0:?} has no tasks on the server: it never started, or its tasks expired")]
    NoSuchJob(String),
    /// Reading the job back from the server failed.
    #[error("could not read job {job:?} back from the server: {detail}")]
    Resume {
        /// The job.
        job: String,
        /// What went wrong.
        detail: String,
    },
}

/// A task was refused by [`RemoteFacade`](crate::RemoteFacade). The task is
/// handed back.
///
/// ```
/// use worker_facade::simple::SimpleTask;
/// use worker_facade_nats::RemoteSubmitError;
///
/// let err = RemoteSubmitError::Closed(SimpleTask::new("late", 0.0));
/// assert_eq!(err.into_task().id, "late");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum RemoteSubmitError<T> {
    /// The client was collected or closed and accepts no more tasks.
    #[error("the client is collected or closed and accepts no more tasks")]
    Closed(T),
    /// The task, encoded, is larger than the server accepts in one message
    /// (its `max_payload`, 1 MB by default). Send a reference to the data
    /// (a path, a URL, an object-store key) instead of the data itself, or
    /// raise `max_payload` in the server's configuration.
    #[error(
        "the task is {size} bytes encoded, above the server's max_payload of {max} bytes: send a \
         reference to the data instead, or raise max_payload on the server"
    )]
    TooLarge {
        /// The task.
        task: T,
        /// Its encoded size.
        size: usize,
        /// The server's limit, less room for the headers.
        max: usize,
    },
    /// The task could not be serialized.
    #[error("the task could not be serialized: {reason}")]
    Unencodable {
        /// The task.
        task: T,
        /// The serializer's message.
        reason: String,
    },
}

impl<T> RemoteSubmitError<T> {
    /// The task that was refused.
    pub fn into_task(self) -> T {
        match self {
            RemoteSubmitError::Closed(task)
            | RemoteSubmitError::TooLarge { task, .. }
            | RemoteSubmitError::Unencodable { task, .. } => task,
        }
    }
}

impl<T> std::fmt::Debug for RemoteSubmitError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteSubmitError::Closed(_) => f.write_str("Closed(..)"),
            RemoteSubmitError::TooLarge { size, max, .. } => f
                .debug_struct("TooLarge")
                .field("size", size)
                .field("max", max)
                .finish_non_exhaustive(),
            RemoteSubmitError::Unencodable { reason, .. } => f
                .debug_struct("Unencodable")
                .field("reason", reason)
                .finish_non_exhaustive(),
        }
    }
}

/// [`collect_tasks`](crate::RemoteFacade::collect_tasks) could not return
/// the records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteCollectError {
    /// The records went to an earlier call.
    #[error("the tasks were already collected: collect_tasks returns the records once")]
    AlreadyCollected,
    /// The deadline passed and the server could not be reached to record the
    /// missing outcomes. Nothing is lost: resume the job later with
    /// [`RemoteBuilder::resume`](crate::RemoteBuilder::resume).
    #[error(
        "{pending} outcomes of job {job:?} did not arrive in time and the server could not be \
         reached to record them; resume the job later to collect them"
    )]
    Unreachable {
        /// The job, to resume.
        job: String,
        /// How many outcomes are missing.
        pending: usize,
    },
    /// The client's thread ended unexpectedly (a bug in this library: please
    /// report it). The tasks and outcomes stay on the server: resume the job.
    #[error("the client's thread ended unexpectedly; resume job {job:?} to collect its outcomes")]
    ClientGone {
        /// The job, to resume.
        job: String,
    },
}

/// An [`Agent`](crate::Agent) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The server could not be reached or prepared.
    #[error("could not connect to the server")]
    Connect(#[from] ConnectError),
    /// A local worker process could not be started.
    #[error("could not start the agent's local workers")]
    Workers(#[from] worker_facade::SpawnError),
}
