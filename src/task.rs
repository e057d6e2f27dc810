//! What travels to a worker and what comes back: the [`Task`] trait, task IDs,
//! and the [`Outcome`] every accepted task ends with.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A unit of work that can be sent to a worker process.
///
/// A task and its output travel through the [`codec`](crate::codec) (serde
/// with bincode 2, or postcard 1 with the `postcard` feature), so both must
/// implement `Serialize` and `DeserializeOwned`. Neither format is
/// self-describing, which rules out some serde attributes in task and
/// output types (details in the [`codec`](crate::codec) docs):
///
/// - `#[serde(skip_serializing_if = "...")]` would **silently corrupt
///   data** (the other side reads the next field in the skipped one's
///   place): encoding such a value is refused with a
///   [`CodecError::Unsupported`](crate::CodecError::Unsupported) naming the
///   field and the attribute;
/// - `#[serde(flatten)]` is refused when encoding, naming the attribute;
/// - `#[serde(untagged)]` and internally tagged (`#[serde(tag = "...")]`)
///   enums encode but do not decode: the task is
///   [`NotRun`](Outcome::NotRun) with
///   [`Undecodable`](NotRunReason::Undecodable), the text naming the likely
///   attribute.
///
/// Byte blobs (`Vec<u8>`, image data, serialized payloads) should be marked
/// `#[serde(with = "serde_bytes")]`: a plain `Vec<u8>` goes through serde
/// one byte at a time, in every format (13 times slower here for 1 MiB).
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
///     // The resized image: a byte blob, sent as one serde byte string.
///     type Output = serde_bytes::ByteBuf;
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// What the worker's handler returns for this task.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Whether the handshake checks that the worker's task and output types
    /// have the same serde shape as the parent's (field names and order,
    /// variants), refusing a stale worker with
    /// [`SpawnError::TypeMismatch`](crate::SpawnError::TypeMismatch).
    ///
    /// The check traces both types once per process, in the parent and in
    /// each worker, by running their `Deserialize` against
    /// `serde-reflection`'s tracer (never against a task's bytes). Set it to
    /// `false` for a hand-written `Deserialize` with side effects, or one
    /// that must not run in the parent at all.
    const SHAPE_CHECK: bool = true;
}

/// The ID the parent assigns to an accepted task: unique within the facade
/// that accepted it (or, for a [`GrindHandle`](crate::GrindHandle)'s item,
/// within its grinder).
///
/// IDs count up from 0 in the order the facade (or grinder) accepted them.
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
/// Its fields are public to read; it may gain fields, so outside this crate
/// it is built with [`exited`](Self::exited), [`killed`](Self::killed) or
/// [`unknown`](Self::unknown) and the `with_` methods (to test code of
/// yours that handles crash reports, say).
///
/// ```
/// use worker_facade::ExitInfo;
/// let exit = ExitInfo::killed(42, 6);
/// assert_eq!(exit.signal_name(), Some("SIGABRT"));
/// assert_eq!(exit.to_string(), "worker 42 killed by signal 6 (SIGABRT)");
/// assert_eq!(ExitInfo::exited(7, 3).code, Some(3));
/// assert_eq!(
///     ExitInfo::killed(42, 11).with_core_dumped(true).to_string(),
///     "worker 42 killed by signal 11 (SIGSEGV), core dumped"
/// );
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
/// Its fields are public to read; it may gain fields, so outside this crate
/// it is built with [`new`](Self::new) (or `Default`).
///
/// ```
/// use std::time::Duration;
/// use worker_facade::ResourceUsage;
/// let usage = ResourceUsage::new(2048, Duration::from_millis(30), Duration::from_millis(5));
/// assert_eq!(usage.to_string(), "max RSS 2048 KiB, CPU 30ms user + 5ms system");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
    /// CPU time in user mode.
    pub user_time: Duration,
    /// CPU time in the kernel.
    pub system_time: Duration,
}

impl ResourceUsage {
    /// Peak resident set size in KiB, and CPU time in user mode and in the
    /// kernel.
    pub fn new(max_rss_kib: u64, user_time: Duration, system_time: Duration) -> Self {
        ResourceUsage {
            max_rss_kib,
            user_time,
            system_time,
        }
    }
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
    /// Worker `pid` exited by itself with `code`.
    pub fn exited(pid: u32, code: i32) -> Self {
        ExitInfo {
            pid,
            code: Some(code),
            signal: None,
            core_dumped: false,
            usage: None,
        }
    }

    /// Worker `pid` was ended by signal number `signal`.
    pub fn killed(pid: u32, signal: i32) -> Self {
        ExitInfo {
            pid,
            code: None,
            signal: Some(signal),
            core_dumped: false,
            usage: None,
        }
    }

    /// Worker `pid` ended with a status nobody could read (see
    /// [`StatusLost`]).
    pub fn unknown(pid: u32) -> Self {
        ExitInfo {
            pid,
            code: None,
            signal: None,
            core_dumped: false,
            usage: None,
        }
    }

    /// The same status, saying whether the kernel wrote a core dump.
    pub fn with_core_dumped(mut self, core_dumped: bool) -> Self {
        self.core_dumped = core_dumped;
        self
    }

    /// The same status, with the worker's resource use.
    pub fn with_usage(mut self, usage: ResourceUsage) -> Self {
        self.usage = Some(usage);
        self
    }

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
/// (peak memory, CPU time) is in `exit.usage`. Its fields are public to
/// read; it may gain fields, so outside this crate it is built with
/// [`new`](Self::new) and the `with_` methods.
///
/// ```
/// use std::time::Duration;
/// use worker_facade::{CrashInfo, CrashReason, ExitInfo, TaskId};
/// let crash = CrashInfo::new(ExitInfo::killed(42, 9))
///     .with_reason(CrashReason::TaskTimedOut { task: TaskId::from_raw(3), limit: Duration::from_secs(2) })
///     .with_stderr_tail(["about to fail"]);
/// assert_eq!(
///     crash.to_string(),
///     "worker 42 killed by signal 9 (SIGKILL) (task #3 ran longer than 2s); \
///      last stderr line: \"about to fail\""
/// );
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashInfo {
    /// The worker's process status.
    pub exit: ExitInfo,
    /// Why the parent ended the worker, when it did (a broken frame, a memory
    /// limit, a lease that expired), or why its status is unknown; `None`
    /// when the worker died by itself.
    pub reason: Option<CrashReason>,
    /// The last lines the worker wrote to its stderr (empty when output is
    /// inherited rather than piped).
    pub stderr_tail: Vec<String>,
}

impl CrashInfo {
    /// A report of a worker that ended as `exit` says, by itself (no
    /// reason), with no stderr lines.
    pub fn new(exit: ExitInfo) -> Self {
        CrashInfo {
            exit,
            reason: None,
            stderr_tail: Vec::new(),
        }
    }

    /// The same report, saying why the parent ended the worker.
    pub fn with_reason(mut self, reason: CrashReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The same report, with the last lines the worker wrote to stderr
    /// (oldest first).
    pub fn with_stderr_tail<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stderr_tail = lines.into_iter().map(Into::into).collect();
        self
    }
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

/// Why the parent ended a worker, or why a worker's exit status is unknown.
/// Carried by [`CrashInfo::reason`].
///
/// ```
/// use std::time::Duration;
/// use worker_facade::{CrashReason, TaskId};
/// let why = CrashReason::TaskTimedOut { task: TaskId::from_raw(3), limit: Duration::from_secs(2) };
/// assert_eq!(why.to_string(), "task #3 ran longer than 2s");
/// assert!(!why.is_worker_fault());
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrashReason {
    /// A task ran longer than its limit; the worker was stopped for it.
    TaskTimedOut {
        /// The task that ran too long.
        task: TaskId,
        /// Its limit.
        limit: Duration,
    },
    /// The worker broke the wire protocol (a malformed, oversized or
    /// unexpected frame); what was wrong.
    ProtocolViolation(String),
    /// The worker closed its connection but kept running.
    ConnectionClosed,
    /// The deadline of `collect_tasks_timeout`/`collect_tasks_deadline`
    /// passed.
    CollectDeadline,
    /// The facade was dropped and the worker did not finish its task within
    /// the grace period.
    GracePeriodOver,
    /// The worker died of a failed allocation under its memory limit
    /// (`RLIMIT_AS`).
    MemoryLimit {
        /// The limit, in bytes.
        bytes: u64,
    },
    /// A lease on the worker expired (see
    /// [`LeasedExecutorManager`](crate::LeasedExecutorManager)).
    LeaseExpired(String),
    /// [`terminate`](crate::WorkingProcessFacade::terminate) was called,
    /// with this reason.
    Terminated(String),
    /// The worker's exit status is unknown: another part of this program
    /// reaped it first.
    StatusLost(StatusLost),
}

impl CrashReason {
    /// Whether the worker itself was at fault (it broke the protocol, hung
    /// up, or ran out of memory), as opposed to being stopped by a time
    /// limit or by the caller.
    pub fn is_worker_fault(&self) -> bool {
        matches!(
            self,
            CrashReason::ProtocolViolation(_)
                | CrashReason::ConnectionClosed
                | CrashReason::MemoryLimit { .. }
        )
    }
}

impl fmt::Display for CrashReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashReason::TaskTimedOut { task, limit } => {
                write!(f, "task {task} ran longer than {limit:?}")
            }
            CrashReason::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CrashReason::ConnectionClosed => {
                f.write_str("the worker closed its connection but kept running")
            }
            CrashReason::CollectDeadline => f.write_str("collect_tasks deadline passed"),
            CrashReason::GracePeriodOver => {
                f.write_str("the facade was dropped and the grace period ran out")
            }
            CrashReason::MemoryLimit { bytes } => {
                write!(f, "memory limit of {bytes} bytes (RLIMIT_AS) exceeded")
            }
            CrashReason::LeaseExpired(why) | CrashReason::Terminated(why) => f.write_str(why),
            CrashReason::StatusLost(lost) => write!(f, "exit status unknown: {lost}"),
        }
    }
}

/// Why a worker's exit status could not be read.
///
/// ```
/// use worker_facade::StatusLost;
/// assert!(StatusLost::SigchldIgnored.to_string().contains("SIGCHLD"));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusLost {
    /// This program ignores SIGCHLD (`SIG_IGN` or `SA_NOCLDWAIT`), so the
    /// kernel discards the status of every child.
    SigchldIgnored,
    /// Something else in this program reaped the worker (a `waitpid(-1)`
    /// loop, for example).
    ReapedElsewhere,
    /// The worker exited but could not be reaped: another process (a
    /// debugger or tracer) holds its status.
    Unreapable,
}

impl fmt::Display for StatusLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StatusLost::SigchldIgnored => {
                "SIGCHLD is ignored in this program, so the kernel discarded the status"
            }
            StatusLost::ReapedElsewhere => {
                "another part of this program reaped the worker (waitpid on any child)"
            }
            StatusLost::Unreapable => {
                "the worker exited but a tracer holds its status; it was left to the tracer"
            }
        })
    }
}

/// Why a task never ran.
///
/// ```
/// use worker_facade::{CancelReason, NotRunReason};
/// let reason = NotRunReason::Cancelled(CancelReason::FacadeDropped);
/// assert_eq!(reason.to_string(), "cancelled: the facade was dropped");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotRunReason {
    /// The worker died before it started this task, and no replacement ran it.
    WorkerDied(Box<CrashInfo>),
    /// The work was cancelled before it started.
    Cancelled(CancelReason),
    /// A deadline passed before the task started.
    DeadlineExpired,
    /// No worker could run it: the restart budget was exhausted, or a
    /// replacement worker failed to start.
    WorkerUnavailable(UnavailableReason),
    /// The worker could not decode the task (its `Deserialize` failed or
    /// panicked there): the handler never saw it. Usually the parent and the
    /// worker were built with different versions of the task type.
    Undecodable(String),
}

impl fmt::Display for NotRunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRunReason::WorkerDied(crash) => write!(f, "worker died before it started: {crash}"),
            NotRunReason::Cancelled(why) => write!(f, "cancelled: {why}"),
            NotRunReason::DeadlineExpired => f.write_str("deadline expired before it started"),
            NotRunReason::WorkerUnavailable(why) => write!(f, "no worker available: {why}"),
            NotRunReason::Undecodable(why) => {
                write!(f, "the worker could not decode the task: {why}")
            }
        }
    }
}

/// Why a task was cancelled before it started.
///
/// ```
/// use worker_facade::CancelReason;
/// assert_eq!(CancelReason::Terminated("shutting down".into()).to_string(), "shutting down");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The facade was dropped before the task started.
    FacadeDropped,
    /// The caller cancelled it ([`TaskHandle::cancel`](crate::TaskHandle::cancel)
    /// or [`WorkingProcessFacade::cancel`](crate::WorkingProcessFacade::cancel)):
    /// before it started, or while it ran (its worker was then stopped and
    /// replaced).
    Requested,
    /// [`terminate`](crate::WorkingProcessFacade::terminate) was called,
    /// with this reason.
    Terminated(String),
    /// A lease on the facade's worker expired.
    LeaseExpired(String),
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::FacadeDropped => f.write_str("the facade was dropped"),
            CancelReason::Requested => f.write_str("the caller cancelled it"),
            CancelReason::Terminated(why) | CancelReason::LeaseExpired(why) => f.write_str(why),
        }
    }
}

/// Why no worker was available to run a task.
///
/// ```
/// use worker_facade::UnavailableReason;
/// let why = UnavailableReason::SpawnFailed("worker binary not found".into());
/// assert!(why.to_string().contains("could not be started"));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// Workers kept crashing: the restart budget was used up.
    RestartBudgetExhausted {
        /// Restarts allowed within one window.
        max_restarts: u32,
        /// The window.
        window: Duration,
        /// The last crash.
        last_crash: Box<CrashInfo>,
    },
    /// A replacement worker could not be started; the error's text.
    SpawnFailed(String),
    /// Delivered this many times to agents of a cluster (see the
    /// `worker-facade-nats` crate), each of which died or lost its
    /// connection before recording an outcome: the task is given up.
    AttemptsExhausted {
        /// The limit of deliveries.
        max_attempts: u32,
        /// The delivery that gave up.
        delivered: u64,
    },
    /// The agent that received it refused it: it speaks another protocol
    /// version, or serves another task type; what it said.
    Refused(String),
    /// An outcome was recorded but could not be read back; what was wrong.
    OutcomeUnreadable(String),
    /// Workers died this many times in a row without answering a task
    /// (see [`RestartPolicy::WhileProgressing`](crate::RestartPolicy::WhileProgressing)).
    NoProgress {
        /// Deaths in a row.
        deaths: u32,
        /// The last crash.
        last_crash: Box<CrashInfo>,
    },
}

impl fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnavailableReason::RestartBudgetExhausted {
                max_restarts,
                window,
                last_crash,
            } => write!(
                f,
                "restart budget exhausted ({max_restarts} restarts within {window:?}); \
                 last crash: {last_crash}"
            ),
            UnavailableReason::SpawnFailed(why) => {
                write!(f, "a replacement worker could not be started: {why}")
            }
            UnavailableReason::AttemptsExhausted {
                max_attempts,
                delivered,
            } => write!(
                f,
                "given up after {max_attempts} attempts: the agents holding it died or lost \
                 their connection each time (delivery {delivered})"
            ),
            UnavailableReason::Refused(why) => write!(f, "refused by the agent: {why}"),
            UnavailableReason::OutcomeUnreadable(why) => {
                write!(f, "the recorded outcome could not be read: {why}")
            }
            UnavailableReason::NoProgress { deaths, last_crash } => write!(
                f,
                "workers died {deaths} times in a row without answering a task; \
                 last crash: {last_crash}"
            ),
        }
    }
}

/// How a task ended. Every accepted task gets exactly one.
///
/// More variants may come: a `match` outside this crate needs a `_` arm
/// (or an `other =>` arm, as below).
///
/// ```
/// use worker_facade::Outcome;
/// let done: Outcome<String> = Outcome::Completed("ok".into());
/// assert!(done.is_completed());
/// assert_eq!(done.completed(), Some("ok".to_string()));
/// ```
///
/// # Display
///
/// `Display` works for any output type: it gives `completed` for
/// [`Completed`](Self::Completed) and the whole report for the rest
/// (`crashed: worker 42 killed by signal 6 (SIGABRT); last stderr line:
/// ...`), so printing an outcome never needs the output to be printable.
/// To print the output too, use [`display_output`](Self::display_output)
/// when it implements `Display`, or [`display_with`](Self::display_with)
/// to say how.
///
/// ```
/// use worker_facade::{CrashInfo, ExitInfo, Outcome};
///
/// #[derive(Debug)]
/// struct Report { rows: usize }
///
/// let crashed: Outcome<Report> = Outcome::Crashed(CrashInfo::new(ExitInfo::killed(42, 6)).into());
/// assert_eq!(crashed.to_string(), "crashed: worker 42 killed by signal 6 (SIGABRT)");
///
/// let done = Outcome::Completed(Report { rows: 3 });
/// assert_eq!(done.to_string(), "completed");
/// let shown = done.display_with(|report, f| write!(f, "{} rows", report.rows));
/// assert_eq!(shown.to_string(), "3 rows");
///
/// let text: Outcome<String> = Outcome::Completed("one solved after 1".into());
/// assert_eq!(text.display_output().to_string(), "one solved after 1");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome<O> {
    /// The handler returned this output.
    Completed(O),
    /// The handler returned an error, or panicked, and the worker survived.
    Failed(String),
    /// The worker process died while running this task. Boxed, so that
    /// every outcome does not pay for a crash report's room.
    Crashed(Box<CrashInfo>),
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

    /// Displays the outcome with the output of a completed task written by
    /// `write` (the other variants as [`Display`](#display) writes them).
    pub fn display_with<'a, F>(&'a self, write: F) -> impl fmt::Display + 'a
    where
        F: Fn(&O, &mut fmt::Formatter<'_>) -> fmt::Result + 'a,
    {
        DisplayWith {
            outcome: self,
            write,
        }
    }

    /// Displays the outcome with the output of a completed task itself
    /// (`one solved after 1`) instead of `completed`; the other variants as
    /// [`Display`](#display) writes them.
    pub fn display_output(&self) -> impl fmt::Display + '_
    where
        O: fmt::Display,
    {
        self.display_with(|output, f| output.fmt(f))
    }

    /// Writes every variant but `Completed`.
    fn fmt_report(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed(_) => f.write_str("completed"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::Crashed(crash) => write!(f, "crashed: {crash}"),
            Outcome::NotRun(why) => write!(f, "not run: {why}"),
            Outcome::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
        }
    }
}

/// What [`Outcome::display_with`] returns.
struct DisplayWith<'a, O, F> {
    outcome: &'a Outcome<O>,
    write: F,
}

impl<O, F> fmt::Display for DisplayWith<'_, O, F>
where
    F: Fn(&O, &mut fmt::Formatter<'_>) -> fmt::Result,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            Outcome::Completed(output) => (self.write)(output, f),
            other => other.fmt_report(f),
        }
    }
}

/// `completed` for [`Outcome::Completed`], whatever the output type; the
/// whole report for the other variants. See [`Outcome`'s docs](Outcome#display).
impl<O> fmt::Display for Outcome<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_report(f)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record the ledger keeps pays for the largest outcome, so the
    /// rare crash reports are boxed: an outcome of a word-sized output is a
    /// few words, not a crash report's 120 bytes.
    #[test]
    fn an_outcome_is_a_few_words() {
        println!(
            "Outcome<u64> {} B, NotRunReason {} B, CrashInfo {} B, TaskRecord<u64 task> {} B",
            std::mem::size_of::<Outcome<u64>>(),
            std::mem::size_of::<NotRunReason>(),
            std::mem::size_of::<CrashInfo>(),
            std::mem::size_of::<TaskRecord<Word>>(),
        );
        assert!(std::mem::size_of::<Outcome<u64>>() <= 40);
        assert!(std::mem::size_of::<NotRunReason>() <= 40);
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Word(u64);
    impl Task for Word {
        type Output = u64;
    }
}
