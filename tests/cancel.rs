//! Cancelling one task: before it starts (queued in the parent, or already
//! sent ahead to a worker) it never starts; while it runs, its worker is
//! stopped and replaced without charging the restart budget, and the rest
//! carries on.

mod common;

use std::time::{Duration, Instant};

use common::{capture_lines, pids_printing, test_worker, within};
use worker_facade::simple::SimpleTask;
use worker_facade::{CancelReason, NotRunReason, Outcome, RestartPolicy, WorkingProcessFacade};

const WATCHDOG: Duration = Duration::from_secs(60);

fn cancelled() -> Outcome<String> {
    Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested))
}

/// A facade of one test worker, whose printed lines are captured.
fn one_captured_worker() -> (WorkingProcessFacade<SimpleTask>, common::Lines) {
    let (cmd, lines) = capture_lines(test_worker());
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .spawn()
        .expect("spawn");
    (w, lines)
}

/// Waits until a worker printed `started <id>`, and returns its pid.
fn started(lines: &common::Lines, id: &str) -> u32 {
    let pids = common::wait_for_printers(lines, &format!("started {id}"), 1);
    pids.into_iter().next().unwrap_or_default()
}

#[test]
fn a_task_sent_ahead_to_a_worker_is_skipped_and_the_worker_goes_on() {
    within(WATCHDOG, || {
        let (w, lines) = one_captured_worker();
        let first = w
            .submit(SimpleTask::new("announce-first", 0.5))
            .expect("accepted");
        let behind: Vec<_> = (0..10)
            .map(|i| {
                w.submit(SimpleTask::new(format!("announce-{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        let pid = started(&lines, "announce-first");
        // Task 5 is in the worker's buffer by now (one worker: a deep window).
        behind[5].cancel();
        for (i, h) in behind.into_iter().enumerate() {
            let outcome = h.wait_timeout(Duration::from_secs(20)).expect("answered");
            if i == 5 {
                assert_eq!(outcome, cancelled());
            } else {
                assert_eq!(
                    outcome,
                    Outcome::Completed(format!("announce-{i} solved after 0"))
                );
            }
        }
        assert!(first.wait().expect("answered").is_completed());
        w.collect_tasks().expect("collect");
        assert!(
            pids_printing(&lines, "started announce-5").is_empty(),
            "it never started"
        );
        assert_eq!(pids_printing(&lines, "started announce-9"), [pid].into());
        assert_eq!(w.stats().restarts, 0, "the worker was not stopped");
    });
}

#[test]
fn a_running_task_on_one_of_four_workers_is_cancelled_without_charging_the_budget() {
    within(WATCHDOG, || {
        let (cmd, lines) = capture_lines(test_worker());
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .workers(4)
            // No restart allowed: a cancel must not count as one.
            .restart(RestartPolicy::Limited {
                max_restarts: 0,
                window: Duration::from_secs(60),
            })
            .kill_grace(Duration::from_millis(200))
            .spawn()
            .expect("spawn");
        let long: Vec<_> = (0..4)
            .map(|i| {
                w.submit(SimpleTask::new(format!("announce-long-{i}"), 30.0))
                    .expect("accepted")
            })
            .collect();
        let victim = started(&lines, "announce-long-0");
        for i in 1..4 {
            started(&lines, &format!("announce-long-{i}"));
        }
        let short: Vec<_> = (0..20)
            .map(|i| {
                w.submit(SimpleTask::new(format!("s{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        let asked = Instant::now();
        long[0].cancel();
        let mut long = long.into_iter();
        let first = long.next().expect("four");
        assert_eq!(
            first
                .wait_timeout(Duration::from_secs(20))
                .expect("answered"),
            cancelled()
        );
        // Its worker is stopped: SIGTERM, then SIGKILL.
        while common::process_exists(victim) {
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "worker not stopped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The short tasks run on the fresh worker that took its place.
        for (i, h) in short.into_iter().enumerate() {
            assert_eq!(
                h.wait_timeout(Duration::from_secs(20)).expect("answered"),
                Outcome::Completed(format!("s{i} solved after 0"))
            );
        }
        let stats = w.stats();
        assert_eq!(stats.crashed, 0, "{stats:?}");
        assert_eq!(w.worker_pids().len(), 4, "the place was refilled");
        w.terminate("over");
        for h in long {
            assert!(matches!(h.wait().expect("answered"), Outcome::Crashed(_)));
        }
    });
}

#[test]
fn a_task_queued_in_the_parent_is_cancelled_by_id() {
    within(WATCHDOG, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .workers(2)
            .spawn()
            .expect("spawn");
        // Both workers busy: with several workers nothing waits behind a
        // running task, so the rest stays queued in the parent.
        w.process_task(SimpleTask::new("a", 0.3)).expect("accepted");
        w.process_task(SimpleTask::new("b", 0.3)).expect("accepted");
        let ids: Vec<_> = (0..5)
            .map(|i| {
                w.process_task(SimpleTask::new(format!("q{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        w.cancel(ids[2]);
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 7);
        for r in &records {
            if r.id == ids[2] {
                assert_eq!(r.outcome, cancelled());
            } else {
                assert!(r.outcome.is_completed(), "{:?}", r.outcome);
            }
        }
    });
}

#[test]
fn cancelling_a_finished_task_changes_nothing() {
    within(WATCHDOG, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .spawn()
            .expect("spawn");
        let id = w
            .process_task(SimpleTask::new("done", 0.0))
            .expect("accepted");
        let h = w.submit(SimpleTask::new("marker", 0.0)).expect("accepted");
        assert!(h.wait().expect("answered").is_completed());
        w.cancel(id);
        let records = w.collect_tasks().expect("collect");
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("done solved after 0".into())
        );
        assert_eq!(w.stats().restarts, 0);
    });
}

/// A cancel that reaches the engine just after the worker read its task,
/// but before the engine saw the task start, still stops it: the worker's
/// STARTED must wake the engine then (found by review: with a STARTED that
/// woke nobody, such a task ran to completion).
#[test]
fn a_cancel_that_crosses_the_start_still_stops_the_task() {
    within(Duration::from_secs(120), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .kill_grace(Duration::from_millis(20))
            .spawn()
            .expect("spawn");
        let mut ran = Vec::new();
        for i in 0..400u64 {
            // The engine parks with the worker idle (and the lane open).
            std::thread::sleep(Duration::from_millis(2));
            let handle = w
                .submit(SimpleTask::new(format!("t{i}"), 0.5))
                .expect("accepted");
            // Land the cancel at a different point of the start each time.
            let spin = Duration::from_micros((i % 100) * 10);
            let t0 = Instant::now();
            while t0.elapsed() < spin {}
            handle.cancel();
            let outcome = handle
                .wait_timeout(Duration::from_secs(10))
                .expect("answered");
            match outcome {
                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)) => {}
                Outcome::Completed(_) => ran.push((i, spin)),
                other => panic!("t{i}: {other:?}"),
            }
        }
        assert!(
            ran.is_empty(),
            "cancelled tasks that ran to completion: {ran:?}"
        );
    });
}

/// A task cancelled while its worker held it, and sent back to the queue
/// when that worker died before starting it, is not run by the next
/// worker: its outcome is the cancel.
#[test]
fn a_cancelled_task_whose_worker_died_is_not_run_by_the_next() {
    use nix::sys::signal::Signal;
    within(WATCHDOG, || {
        let (w, lines) = one_captured_worker();
        let first = w
            .submit(SimpleTask::new("announce-first", 5.0))
            .expect("accepted");
        let behind = w
            .submit(SimpleTask::new("announce-behind", 0.0))
            .expect("accepted");
        let pid = started(&lines, "announce-first");
        // Sent ahead (one worker: a deep window), not started: cancelled
        // while the worker holds it, then the worker dies before it could
        // read the request.
        behind.cancel();
        common::signal(pid, Signal::SIGKILL);
        assert!(matches!(
            first.wait().expect("answered"),
            Outcome::Crashed(_)
        ));
        assert_eq!(
            behind
                .wait_timeout(Duration::from_secs(20))
                .expect("answered"),
            cancelled()
        );
        w.collect_tasks().expect("collect");
        assert!(
            pids_printing(&lines, "started announce-behind").is_empty(),
            "no worker started it"
        );
    });
}
