//! What dropping a facade does (issue 8, "Faults it must survive"):
//!
//! - a worker whose task timed out is killed after `kill_grace`, not after
//!   the whole grace period, also when the drop comes while it runs or after
//!   the timeout, and also when the worker ignores SIGTERM;
//! - every task that has not started is cancelled, including the ones
//!   already sent ahead to the worker: they are
//!   `NotRun(Cancelled(FacadeDropped))` and never run (the worker prints a
//!   marker for each task it runs: none appears), while the task that was
//!   running says what became of it.

mod common;

use std::time::{Duration, Instant};

use common::{Lines, capture_lines, test_worker, within};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CancelReason, CrashReason, NotRunReason, Outcome, RestartPolicy, TaskHandle,
    WorkingProcessFacade,
};

/// Waits until a captured line equals `want`.
fn wait_for(lines: &Lines, want: &str) {
    let start = Instant::now();
    while !lines.lock().expect("lines").iter().any(|l| l.text == want) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker never printed {want:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A facade whose worker ignores SIGTERM, with a grace period of a minute,
/// a kill grace of 200 ms and a task timeout of 300 ms, running a task that
/// hangs; returns it once the worker has started that task.
fn hung_worker_ignoring_sigterm() -> (WorkingProcessFacade<SimpleTask>, TaskHandle<String>, u32) {
    let (cmd, lines) = capture_lines(test_worker().env("TEST_WORKER_IGNORE_TERM", "1"));
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .grace_period(Duration::from_secs(60))
        .kill_grace(Duration::from_millis(200))
        .task_timeout(Duration::from_millis(300))
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    let pid = w.worker_pid().expect("running");
    let h = w
        .submit(SimpleTask::new("announce-hang", 3600.0))
        .expect("accepted");
    wait_for(&lines, "started announce-hang");
    (w, h, pid)
}

/// Drops `w` and returns how long that took; checks the worker is reaped.
fn timed_drop(w: WorkingProcessFacade<SimpleTask>, pid: u32) -> Duration {
    let started = Instant::now();
    drop(w);
    let took = started.elapsed();
    assert!(!common::process_exists(pid), "worker {pid} was reaped");
    took
}

#[test]
fn drop_after_a_timeout_waits_the_kill_grace_not_the_grace_period() {
    within(Duration::from_secs(30), || {
        let (w, h, pid) = hung_worker_ignoring_sigterm();
        assert_eq!(
            h.wait_timeout(Duration::from_secs(10)),
            Ok(Outcome::TimedOut(Duration::from_millis(300)))
        );
        // SIGTERM was sent (and ignored); SIGKILL is due 200 ms later.
        let took = timed_drop(w, pid);
        eprintln!("drop after the timeout took {took:?}");
        assert!(took < Duration::from_secs(5), "drop took {took:?}");
    });
}

#[test]
fn drop_while_a_task_runs_into_its_timeout_waits_the_kill_grace() {
    within(Duration::from_secs(30), || {
        let (w, h, pid) = hung_worker_ignoring_sigterm();
        // Dropped while the task runs: it times out during the grace period.
        let took = timed_drop(w, pid);
        eprintln!("drop before the timeout took {took:?}");
        assert!(took < Duration::from_secs(5), "drop took {took:?}");
        assert_eq!(
            h.wait_timeout(Duration::from_secs(1)),
            Ok(Outcome::TimedOut(Duration::from_millis(300)))
        );
    });
}

/// When the 200 tasks are submitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Submitted {
    /// Right behind the long task, before it starts: the worker may read
    /// them together with it.
    Before,
    /// Once the long task runs: they reach the worker's socket (with the
    /// CANCEL behind them) while it is busy, and it reads them all at once
    /// when it is done.
    While,
}

/// Submits a long task that announces itself, and 200 tasks that print a
/// marker when they run; drops the facade once the long task started.
/// Checks that the 200 were cancelled, never run; returns the long task's
/// outcome.
fn drop_with_tasks_sent_ahead(long: f64, grace: Duration, when: Submitted) -> Outcome<String> {
    let (cmd, lines) = capture_lines(test_worker());
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .grace_period(grace)
        .spawn()
        .expect("spawn");
    let pid = w.worker_pid().expect("running");
    let long = w
        .submit(SimpleTask::new("announce-long", long))
        .expect("accepted");
    let submit_all = || -> Vec<_> {
        (0..200)
            .map(|i| {
                w.submit(SimpleTask::new(format!("print:marker-{i}"), 0.0))
                    .expect("accepted")
            })
            .collect()
    };
    let mut queued = Vec::new();
    if when == Submitted::Before {
        queued = submit_all();
    }
    wait_for(&lines, "started announce-long");
    if when == Submitted::While {
        queued = submit_all();
    }
    timed_drop(w, pid);
    let cancelled = Ok(Outcome::NotRun(NotRunReason::Cancelled(
        CancelReason::FacadeDropped,
    )));
    let not_cancelled: Vec<_> = queued
        .into_iter()
        .enumerate()
        .map(|(i, h)| (i, h.wait_timeout(Duration::from_secs(1))))
        .filter(|(_, outcome)| *outcome != cancelled)
        .collect();
    assert!(
        not_cancelled.is_empty(),
        "{} of the 200 were not cancelled: {:?}",
        not_cancelled.len(),
        &not_cancelled[..not_cancelled.len().min(3)]
    );
    let ran: Vec<String> = lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.text.starts_with("marker-"))
        .map(|l| l.text.clone())
        .collect();
    assert!(ran.is_empty(), "cancelled tasks ran: {ran:?}");
    long.wait_timeout(Duration::from_secs(1))
        .expect("the long task's outcome")
}

#[test]
fn drop_cancels_tasks_sent_ahead_and_lets_the_running_one_finish() {
    within(Duration::from_secs(30), || {
        let outcome = drop_with_tasks_sent_ahead(0.5, Duration::from_secs(10), Submitted::Before);
        assert_eq!(
            outcome,
            Outcome::Completed("announce-long solved after 0.5".into()),
            "finished within the grace period"
        );
    });
}

#[test]
fn drop_cancels_tasks_sent_ahead_and_kills_the_running_one_after_the_grace() {
    within(Duration::from_secs(30), || {
        let outcome =
            drop_with_tasks_sent_ahead(3600.0, Duration::from_millis(300), Submitted::Before);
        match outcome {
            Outcome::Crashed(crash) => {
                assert_eq!(crash.reason, Some(CrashReason::GracePeriodOver), "{crash}")
            }
            other => panic!("expected Crashed(GracePeriodOver), got {other:?}"),
        }
    });
}

/// The tasks reach the worker while it runs the long task; when it is done
/// it reads them and the CANCEL behind them in one go.
#[test]
fn drop_cancels_tasks_that_reached_the_worker_while_it_was_busy() {
    within(Duration::from_secs(30), || {
        let outcome = drop_with_tasks_sent_ahead(0.5, Duration::from_secs(10), Submitted::While);
        assert_eq!(
            outcome,
            Outcome::Completed("announce-long solved after 0.5".into()),
            "finished within the grace period"
        );
    });
}
