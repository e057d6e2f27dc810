//! Counters of one facade, readable at any time from any thread.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// A snapshot of a facade's counters.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// # use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// # let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe()).unwrap();
/// let stats = w.stats();
/// println!("{} in flight, {} restarts", stats.in_flight, stats.restarts);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FacadeStats {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks that completed.
    pub completed: u64,
    /// Tasks whose handler failed or panicked.
    pub failed: u64,
    /// Tasks that crashed their worker.
    pub crashed: u64,
    /// Tasks that never ran.
    pub not_run: u64,
    /// Tasks that exceeded their time limit.
    pub timed_out: u64,
    /// Accepted tasks without an outcome yet.
    pub in_flight: u64,
    /// Workers started to replace one that crashed, hung, broke the
    /// protocol, or was stopped to cancel its running task (recycling after
    /// `max_tasks_per_worker` is counted apart).
    pub restarts: u64,
    /// Workers started to replace one that reached `max_tasks_per_worker`.
    pub recycles: u64,
    /// Large tasks accepted with their bytes in the task region (shared
    /// memory; see
    /// [`large_task_region`](crate::FacadeBuilder::large_task_region)),
    /// which their worker reads them from, rather than sent through the
    /// socket.
    pub shared_tasks: u64,
    /// Whether the facade gave up: every worker place ran out of its restart
    /// budget or failed to start a replacement, so no task will run on it
    /// again (its tasks are `NotRun(WorkerUnavailable)`).
    pub gave_up: bool,
    /// Lines the workers printed that were dropped: the parent's stderr
    /// could not take them without blocking (a pipe nobody reads), or a
    /// capture callback panicked.
    pub output_lines_dropped: u64,
    /// The first running worker's PID, if one is running (all of them:
    /// [`WorkingProcessFacade::worker_pids`](crate::WorkingProcessFacade::worker_pids)).
    pub worker_pid: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct StatsCells {
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) crashed: AtomicU64,
    pub(crate) not_run: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) recycles: AtomicU64,
    pub(crate) shared_tasks: AtomicU64,
    pub(crate) output_dropped: AtomicU64,
    /// Workers that ended without being asked to.
    pub(crate) workers_lost: AtomicU64,
    pub(crate) gave_up: AtomicBool,
    /// The pid of each worker place, 0 when none runs there.
    pub(crate) pids: Box<[AtomicU32]>,
}

impl StatsCells {
    pub(crate) fn new(workers: usize) -> Self {
        StatsCells {
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            not_run: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
            shared_tasks: AtomicU64::new(0),
            output_dropped: AtomicU64::new(0),
            workers_lost: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
            pids: (0..workers.max(1)).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub(crate) fn set_pid(&self, slot: usize, pid: u32) {
        if let Some(cell) = self.pids.get(slot) {
            cell.store(pid, Relaxed);
        }
    }

    /// The pids of the running workers, in the order of their places.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .iter()
            .map(|p| p.load(Relaxed))
            .filter(|&p| p != 0)
            .collect()
    }

    pub(crate) fn finished(&self) -> u64 {
        self.completed.load(Relaxed)
            + self.failed.load(Relaxed)
            + self.crashed.load(Relaxed)
            + self.not_run.load(Relaxed)
            + self.timed_out.load(Relaxed)
    }

    /// Accepted tasks without an outcome yet (what `process_task_bounded` bounds).
    pub(crate) fn in_flight(&self) -> u64 {
        // Outcomes first, then `submitted`: a task counted finished was
        // counted submitted before, so this cannot underflow in practice.
        let finished = self.finished();
        self.submitted.load(Relaxed).saturating_sub(finished)
    }

    pub(crate) fn snapshot(&self) -> FacadeStats {
        let in_flight = self.in_flight();
        let submitted = self.submitted.load(Relaxed);
        let pid = self.pids().first().copied().unwrap_or(0);
        FacadeStats {
            submitted,
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            crashed: self.crashed.load(Relaxed),
            not_run: self.not_run.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            in_flight,
            restarts: self.restarts.load(Relaxed),
            recycles: self.recycles.load(Relaxed),
            shared_tasks: self.shared_tasks.load(Relaxed),
            output_lines_dropped: self.output_dropped.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            worker_pid: (pid != 0).then_some(pid),
        }
    }

    /// The counter an outcome of this kind adds to.
    pub(crate) fn counter<O>(&self, outcome: &crate::task::Outcome<O>) -> &AtomicU64 {
        use crate::task::Outcome::*;
        match outcome {
            Completed(_) => &self.completed,
            Failed(_) => &self.failed,
            Crashed(_) => &self.crashed,
            NotRun(_) => &self.not_run,
            TimedOut(_) => &self.timed_out,
        }
    }
}
