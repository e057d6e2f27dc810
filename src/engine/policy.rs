//! What happens after a worker ends: the restart budget, retries of a task
//! that crashed its worker, and recycling. Plain data, tested without
//! processes; the engine asks, this answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::RestartPolicy;

/// The restart budget of one worker place: at most `max_restarts`
/// unplanned restarts within any sliding `window` (`Limited`), or at most
/// `max_consecutive` deaths with no progress between them
/// (`WhileProgressing`).
#[derive(Debug, Clone)]
pub(crate) struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    /// Deaths since the last answered task.
    in_a_row: u32,
}

/// The budget said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `RestartPolicy::Never`.
    Never,
    /// The budget of the window is used up.
    Exhausted { max_restarts: u32, window: Duration },
    /// Too many deaths in a row with no task answered.
    NoProgress { deaths: u32 },
}

impl RestartBudget {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            in_a_row: 0,
        }
    }

    /// A worker of this place answered a task: it makes progress.
    pub(crate) fn progress(&mut self) {
        self.in_a_row = 0;
    }

    /// Asks for one restart at `now`, and counts it if granted.
    pub(crate) fn charge(&mut self, now: Instant) -> Result<(), Refused> {
        match self.policy {
            RestartPolicy::Never => Err(Refused::Never),
            RestartPolicy::WhileProgressing { max_consecutive } => {
                self.in_a_row = self.in_a_row.saturating_add(1);
                if self.in_a_row > max_consecutive {
                    return Err(Refused::NoProgress {
                        deaths: self.in_a_row,
                    });
                }
                Ok(())
            }
            RestartPolicy::Limited {
                max_restarts,
                window,
            } => {
                while self
                    .recent
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > window)
                {
                    self.recent.pop_front();
                }
                if self.recent.len() >= max_restarts as usize {
                    return Err(Refused::Exhausted {
                        max_restarts,
                        window,
                    });
                }
                self.recent.push_back(now);
                Ok(())
            }
        }
    }
}

/// Whether a task that crashed its worker `attempts` times (this crash
/// included) runs again, with `retries` allowed.
pub(crate) fn retry(attempts: u32, retries: u32) -> bool {
    attempts <= retries
}

/// Whether a worker that was sent `sent` tasks is due for recycling.
pub(crate) fn recycle_due(sent: u64, max_tasks_per_worker: Option<u64>) -> bool {
    max_tasks_per_worker.is_some_and(|max| sent >= max)
}

/// The memory process `pid` holds of its own, in bytes: its resident
/// anonymous and file-backed pages (`RssAnon` + `RssFile` in
/// `/proc/<pid>/status`). Shared memory (`RssShmem`: the task region it
/// reads large tasks from, its result ring) is the parent's, and does not
/// count.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.trim().strip_suffix("kB")?.trim().parse().ok()
    };
    Some(
        kib("RssAnon:")?
            .saturating_add(kib("RssFile:")?)
            .saturating_mul(1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_slides_with_its_window() {
        let window = Duration::from_secs(10);
        let mut budget = RestartBudget::new(RestartPolicy::Limited {
            max_restarts: 2,
            window,
        });
        let t0 = Instant::now();
        assert_eq!(budget.charge(t0), Ok(()));
        assert_eq!(budget.charge(t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(
            budget.charge(t0 + Duration::from_secs(2)),
            Err(Refused::Exhausted {
                max_restarts: 2,
                window
            })
        );
        // The first restart leaves the window: one more is allowed.
        assert_eq!(budget.charge(t0 + Duration::from_secs(11)), Ok(()));
    }

    #[test]
    fn while_progressing_gives_up_only_on_deaths_in_a_row() {
        let mut budget = RestartBudget::new(RestartPolicy::WhileProgressing { max_consecutive: 2 });
        let now = Instant::now();
        // Many deaths, each after some progress: never gives up.
        for _ in 0..100 {
            assert_eq!(budget.charge(now), Ok(()));
            budget.progress();
        }
        assert_eq!(budget.charge(now), Ok(()));
        assert_eq!(budget.charge(now), Ok(()));
        assert_eq!(budget.charge(now), Err(Refused::NoProgress { deaths: 3 }));
    }

    #[test]
    fn never_restarts_and_huge_windows_do_not_overflow() {
        assert_eq!(
            RestartBudget::new(RestartPolicy::Never).charge(Instant::now()),
            Err(Refused::Never)
        );
        let mut budget = RestartBudget::new(RestartPolicy::Limited {
            max_restarts: 1,
            window: Duration::MAX,
        });
        assert!(budget.charge(Instant::now()).is_ok());
        assert!(budget.charge(Instant::now()).is_err());
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_bytes(std::process::id()).expect("statm");
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn retries_and_recycling_count_as_documented() {
        assert!(!retry(1, 0));
        assert!(retry(1, 1));
        assert!(!retry(2, 1));
        assert!(!recycle_due(5, None));
        assert!(recycle_due(1, Some(1)));
        assert!(!recycle_due(0, Some(1)));
    }
}
