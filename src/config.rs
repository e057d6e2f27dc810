//! Settings of a facade beyond how its worker is started.

use std::time::Duration;

use crate::command::WorkerCommand;

/// What a facade does when its worker dies unexpectedly.
///
/// The task the worker was running is reported as crashed either way and is
/// never re-run unless [`retries`](crate::FacadeBuilder::retries) asks for it.
///
/// ```
/// use std::time::Duration;
/// use worker_facade::RestartPolicy;
///
/// let policy = RestartPolicy::Limited { max_restarts: 3, window: Duration::from_secs(10) };
/// assert_ne!(policy, RestartPolicy::Never);
/// assert_eq!(RestartPolicy::default(), RestartPolicy::WhileProgressing { max_consecutive: 5 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// No replacement: tasks that had not started are reported
    /// [`NotRun`](crate::Outcome::NotRun), and so is every later task.
    Never,
    /// Start a fresh worker for the tasks that had not started as long as
    /// workers make progress: give up only after `max_consecutive` deaths in
    /// a row with no task answered between them (a worker that cannot start
    /// its work, or crashes on everything). A job with a few crashing tasks
    /// among many healthy ones never gives up. The default, with 5.
    /// Timeouts, cancellations and recycling do not count. Counted per
    /// worker place (see [`FacadeBuilder::workers`](crate::FacadeBuilder::workers)).
    WhileProgressing {
        /// Deaths in a row, with no task answered between them, after which
        /// the worker place gives up.
        max_consecutive: u32,
    },
    /// Start a fresh worker for the tasks that had not started, at most
    /// `max_restarts` times within any `window`; past that budget the rest is
    /// `NotRun`. Timeouts and recycling do not count against the budget.
    Limited {
        /// Restarts allowed within one window.
        max_restarts: u32,
        /// The sliding window.
        window: Duration,
    },
}

impl Default for RestartPolicy {
    /// Restart while workers make progress; give up after 5 deaths in a row
    /// with no task answered between them.
    fn default() -> Self {
        RestartPolicy::WhileProgressing { max_consecutive: 5 }
    }
}

/// Called by the engine each time one of its workers ends in a way that was
/// not asked for (a crash, a kill, a time limit, a broken protocol): how a
/// pool hears that an executor broke, pushed rather than polled.
#[derive(Clone)]
pub(crate) struct OnWorkerLost(pub(crate) std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnWorkerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnWorkerLost(..)")
    }
}

/// Everything an engine needs to know, fixed at construction.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) command: WorkerCommand,
    pub(crate) grace: Duration,
    pub(crate) term_grace: Duration,
    pub(crate) restart: RestartPolicy,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) max_worker_rss: Option<u64>,
    pub(crate) queue_bound: Option<usize>,
    pub(crate) workers: usize,
    pub(crate) on_worker_lost: Option<OnWorkerLost>,
    /// Bytes of the task region (0: none).
    pub(crate) task_region: usize,
}

/// The task region's size unless the builder says otherwise: room for a
/// few dozen large tasks in flight, and no memory until they use it.
pub(crate) const TASK_REGION: usize = 32 << 20;

impl Config {
    pub(crate) fn new(command: WorkerCommand) -> Self {
        Config {
            command,
            grace: Duration::from_secs(5),
            term_grace: Duration::from_millis(500),
            restart: RestartPolicy::default(),
            retries: 0,
            task_timeout: None,
            max_tasks_per_worker: None,
            max_worker_rss: None,
            queue_bound: None,
            workers: 1,
            on_worker_lost: None,
            task_region: TASK_REGION,
        }
    }
}
