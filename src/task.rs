//! What travels to a worker and what comes back: the [`Task`] trait, task IDs,
//! and the [`Outcome`] every accepted task ends with.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A unit of work that can be sent to a worker process.
///
/// A task and its output travel as serde/bincode, so both must implement
/// `Serialize` and `DeserializeOwned`. Bincode is not self-describing:
/// `#[serde(flatten)]`, `#[serde(untagged)]` and other features that need to
/// look at the data to decide its shape do not work.
///
/// # Example
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use worker_facade::Task;
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { path: String, width: u32 }
///
/// impl Task for Resize {
///     type Output = Vec<u8>;
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// What the worker's handler returns for this task.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// The ID the parent assigns to an accepted task; unique within one facade.
///
/// IDs count up from 0 in the order the facade accepted the tasks.
///
/// ```
/// use worker_facade::TaskId;
/// let id = TaskId::from_raw(7);
/// assert_eq!(id.as_u64(), 7);
/// assert_eq!(id.to_string(), "#7");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The raw number behind the ID.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Builds an ID from a raw number (for tests and lookups by number).
    pub fn from_raw(raw: u64) -> Self {
        TaskId(raw)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a worker process ended, read from its process status when it was reaped.
///
/// ```
/// use worker_facade::ExitInfo;
/// let exit = ExitInfo { pid: 42, code: None, signal: Some(6), core_dumped: false, usage: None };
/// assert_eq!(exit.signal_name(), Some("SIGABRT"));
/// assert_eq!(exit.to_string(), "worker 42 killed by signal 6 (SIGABRT)");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The worker's process ID.
    pub pid: u32,
    /// The exit code, when the worker exited by itself.
    pub code: Option<i32>,
    /// The signal number, when a signal ended the worker.
    pub signal: Option<i32>,
    /// Whether the kernel wrote a core dump.
    pub core_dumped: bool,
    /// What the worker used over its life, read when it was reaped.
    pub usage: Option<ResourceUsage>,
}

/// A worker's resource use over its life, from `wait4` when it was reaped.
///
/// ```
/// use std::time::Duration;
/// use worker_facade::ResourceUsage;
/// let usage = ResourceUsage {
///     max_rss_kib: 2048,
///     user_time: Duration::from_millis(30),
///     system_time: Duration::from_millis(5),
/// };
/// assert_eq!(usage.to_string(), "max RSS 2048 KiB, CPU 30ms user + 5ms system");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceUsage {
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
    /// CPU time in user mode.
    pub user_time: Duration,
    /// CPU time in the kernel.
    pub system_time: Duration,
}

impl fmt::Display for ResourceUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max RSS {} KiB, CPU {:?} user + {:?} system",
            self.max_rss_kib, self.user_time, self.system_time
        )
    }
}

impl ExitInfo {
    /// The signal's name (`"SIGKILL"`), when a known signal ended the worker.
    pub fn signal_name(&self) -> Option<&'static str> {
        let signal = nix::sys::signal::Signal::try_from(self.signal?).ok()?;
        Some(signal.as_str())
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "worker {} exited with code {}", self.pid, code)?,
            (None, Some(sig)) => {
                write!(f, "worker {} killed by signal {}", self.pid, sig)?;
                if let Some(name) = self.signal_name() {
                    write!(f, " ({name})")?;
                }
            }
            (None, None) => write!(f, "worker {} ended with an unknown status", self.pid)?,
        }
        if self.core_dumped {
            f.write_str(", core dumped")?;
        }
        Ok(())
    }
}

/// The report attached to a task whose worker died while running it.
///
/// Its `Display` gives the status and reason; the worker's resource use
/// (peak memory, CPU time) is in `exit.usage`.
///
/// ```
/// use worker_facade::{CrashInfo, ExitInfo};
/// let crash = CrashInfo {
///     exit: ExitInfo { pid: 42, code: None, signal: Some(9), core_dumped: false, usage: None },
///     reason: None,
///     stderr_tail: vec!["about to fail".into()],
/// };
/// assert!(crash.to_string().contains("SIGKILL"));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashInfo {
    /// The worker's process status.
    pub exit: ExitInfo,
    /// Why the parent ended the worker, when it did (a broken frame, a memory
    /// limit, a lease that expired); `None` when the worker died by itself.
    pub reason: Option<String>,
    /// The last lines the worker wrote to its stderr (empty when output is
    /// inherited rather than piped).
    pub stderr_tail: Vec<String>,
}

impl fmt::Display for CrashInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.exit)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        if let Some(last) = self.stderr_tail.last() {
            write!(f, "; last stderr line: {last:?}")?;
        }
        Ok(())
    }
}

/// Why a task never ran.
///
/// ```
/// use worker_facade::NotRunReason;
/// let reason = NotRunReason::Cancelled("facade dropped".into());
/// assert_eq!(reason.to_string(), "cancelled: facade dropped");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRunReason {
    /// The worker died before it started this task, and no replacement ran it.
    WorkerDied(CrashInfo),
    /// The work was cancelled before it started.
    Cancelled(String),
    /// A deadline passed before the task started.
    DeadlineExpired,
    /// The task could not be sent: it failed to encode, or was larger than
    /// the maximum frame size.
    Unsendable(String),
    /// No worker could run it: the restart budget was exhausted, or a
    /// replacement worker failed to start.
    WorkerUnavailable(String),
}

impl fmt::Display for NotRunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRunReason::WorkerDied(crash) => write!(f, "worker died before it started: {crash}"),
            NotRunReason::Cancelled(why) => write!(f, "cancelled: {why}"),
            NotRunReason::DeadlineExpired => f.write_str("deadline expired before it started"),
            NotRunReason::Unsendable(why) => write!(f, "could not be sent: {why}"),
            NotRunReason::WorkerUnavailable(why) => write!(f, "no worker available: {why}"),
        }
    }
}

/// How a task ended. Every accepted task gets exactly one.
///
/// ```
/// use worker_facade::Outcome;
/// let done: Outcome<String> = Outcome::Completed("ok".into());
/// assert!(done.is_completed());
/// assert_eq!(done.completed(), Some("ok".to_string()));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<O> {
    /// The handler returned this output.
    Completed(O),
    /// The handler returned an error, or panicked, and the worker survived.
    Failed(String),
    /// The worker process died while running this task.
    Crashed(CrashInfo),
    /// The task never ran.
    NotRun(NotRunReason),
    /// The task ran longer than this limit; its worker was killed.
    TimedOut(Duration),
}

impl<O> Outcome<O> {
    /// `true` for [`Outcome::Completed`].
    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Completed(_))
    }

    /// The output of a completed task, `None` otherwise.
    pub fn completed(self) -> Option<O> {
        match self {
            Outcome::Completed(output) => Some(output),
            _ => None,
        }
    }

    /// A short name of the variant, for logs and stats: `"completed"`,
    /// `"failed"`, `"crashed"`, `"not run"` or `"timed out"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::Crashed(_) => "crashed",
            Outcome::NotRun(_) => "not run",
            Outcome::TimedOut(_) => "timed out",
        }
    }
}

impl<O: fmt::Display> fmt::Display for Outcome<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed(output) => write!(f, "{output}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::Crashed(crash) => write!(f, "crashed: {crash}"),
            Outcome::NotRun(why) => write!(f, "not run: {why}"),
            Outcome::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
        }
    }
}

/// One accepted task with its outcome, as returned by
/// [`collect_tasks`](crate::WorkingProcessFacade::collect_tasks).
///
/// ```
/// use worker_facade::{Outcome, TaskId, TaskRecord, simple::SimpleTask};
/// let record = TaskRecord {
///     id: TaskId::from_raw(0),
///     task: SimpleTask::new("one", 0.0),
///     outcome: Outcome::Completed("one solved after 0".to_string()),
/// };
/// assert_eq!(record.task.id, "one");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
// `Task` already requires serde for the task and its output.
#[cfg_attr(feature = "serde", serde(bound = ""))]
#[derive(Debug, Clone)]
pub struct TaskRecord<T: Task> {
    /// The ID [`process_task`](crate::WorkingProcessFacade::process_task) returned.
    pub id: TaskId,
    /// The original task, handed back.
    pub task: T,
    /// How it ended.
    pub outcome: Outcome<T::Output>,
}
