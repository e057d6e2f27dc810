//! The demonstration task of the Python `multiprocessing` queue-consumer
//! pattern this crate comes from: sleep a while, then say so. Handled by
//! the stock `facade-worker` binary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::Task;

/// A task that "works" by sleeping `estimated_processing_time` seconds and
/// returns `"<id> solved after <t>"`. A task whose id is `crash` (any case)
/// aborts the worker process, to show what a crash looks like — that is the
/// point of it.
///
/// ```
/// use worker_facade::simple::SimpleTask;
/// let t = SimpleTask::new("one", 0.0);
/// assert_eq!(t.solve(), "one solved after 0");
/// assert!(SimpleTask::new("CRASH", 0.0).is_crash());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimpleTask {
    /// The task's name (not the parent-assigned [`TaskId`](crate::TaskId)).
    pub id: String,
    /// How long the work takes, in seconds.
    pub estimated_processing_time: f64,
}

impl Task for SimpleTask {
    type Output = String;
}

impl SimpleTask {
    /// A task named `id` that takes `seconds`.
    pub fn new(id: impl Into<String>, seconds: f64) -> Self {
        SimpleTask {
            id: id.into(),
            estimated_processing_time: seconds,
        }
    }

    /// Whether this task crashes its worker (its id is `crash`, any case).
    pub fn is_crash(&self) -> bool {
        self.id.eq_ignore_ascii_case("crash")
    }

    /// Does the work: aborts the process for a `crash` task, otherwise
    /// sleeps and returns `"<id> solved after <t>"`. Call it in a worker only.
    pub fn solve(&self) -> String {
        if self.is_crash() {
            eprintln!("task {:?}: freak out", self.id);
            std::process::abort();
        }
        let t = self.estimated_processing_time;
        if t.is_finite() && t > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(t));
        }
        format!("{} solved after {}", self.id, t)
    }
}
