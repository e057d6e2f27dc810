//! Crashes, kills and unexpected exits: the worker's death is read from its
//! process status, the task it was running is blamed, nothing hangs.

mod common;

use std::time::{Duration, Instant};

use common::{
    announcing_worker, kinds, process_exists, run_named, signal, stock_worker, test_worker,
    wait_for_line, within,
};
use nix::sys::signal::Signal;
use worker_facade::simple::SimpleTask;
use worker_facade::{NotRunReason, Outcome, RestartPolicy, WorkingProcessFacade};

fn names(n: usize, prefix: &str) -> Vec<SimpleTask> {
    (0..n)
        .map(|i| SimpleTask::new(format!("{prefix}{i}"), 0.0))
        .collect()
}

#[test]
fn crash_task_without_restart_blames_it_and_leaves_the_rest_not_run() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        for t in names(5, "before") {
            w.process_task(t).expect("accepted");
        }
        w.process_task(SimpleTask::new("Crash", 0.0))
            .expect("accepted");
        for t in names(5, "after") {
            w.process_task(t).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 11);
        for r in &records[..5] {
            assert!(r.outcome.is_completed(), "{:?}", r.outcome);
        }
        match &records[5].outcome {
            Outcome::Crashed(crash) => {
                assert_eq!(crash.exit.pid, pid);
                assert_eq!(crash.exit.signal, Some(Signal::SIGABRT as i32));
                assert_eq!(crash.exit.signal_name(), Some("SIGABRT"));
                assert_eq!(crash.exit.code, None);
                // The reap's rusage: a running process has used memory.
                let usage = crash.exit.usage.expect("resource usage from wait4");
                assert!(usage.max_rss_kib > 0, "{usage}");
                assert!(
                    crash.stderr_tail.iter().any(|l| l.contains("freak out")),
                    "stderr tail: {:?}",
                    crash.stderr_tail
                );
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        for r in &records[6..] {
            match &r.outcome {
                Outcome::NotRun(NotRunReason::WorkerDied(crash)) => {
                    assert_eq!(crash.exit.signal, Some(Signal::SIGABRT as i32))
                }
                other => panic!("expected NotRun(WorkerDied), got {other:?}"),
            }
        }
        assert!(!process_exists(pid), "worker reaped");
        let stats = w.stats();
        assert_eq!((stats.completed, stats.crashed, stats.not_run), (5, 1, 5));
    });
}

#[test]
fn crash_task_with_default_restart_runs_the_rest_on_a_fresh_worker() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let first_pid = w.worker_pid().expect("running");
        let records = run_named(
            &w,
            &[
                "before0", "before1", "before2", "crash", "after0", "after1", "after2",
            ],
        );
        assert_eq!(
            kinds(&records),
            [
                "completed",
                "completed",
                "completed",
                "crashed",
                "completed",
                "completed",
                "completed"
            ]
        );
        // In order, on a new worker, and the crashing task was not re-run.
        for (i, r) in records[4..].iter().enumerate() {
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("after{i} solved after 0"))
            );
        }
        assert_eq!(w.stats().restarts, 1);
        assert_eq!(w.stats().crashed, 1);
        assert!(!process_exists(first_pid));
    });
}

#[test]
fn external_sigkill_mid_stream_is_reported_with_the_signal() {
    within(Duration::from_secs(30), || {
        let (cmd, lines) = announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let quick = w.submit(SimpleTask::new("quick", 0.0)).expect("accepted");
        let long = w
            .submit(SimpleTask::new("announce-long", 30.0))
            .expect("accepted");
        for t in names(100, "queued") {
            w.process_task(t).expect("accepted");
        }
        // The worker says when it is inside the long task: kill it there.
        wait_for_line(&lines, "started announce-long");
        signal(pid, Signal::SIGKILL);
        assert!(quick.wait().expect("outcome").is_completed());
        let t0 = Instant::now();
        match long.wait().expect("outcome") {
            Outcome::Crashed(crash) => {
                assert_eq!(crash.exit.signal, Some(Signal::SIGKILL as i32));
                assert_eq!(crash.exit.pid, pid);
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        let records = w.collect_tasks().expect("collect");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "prompt: {:?}",
            t0.elapsed()
        );
        assert_eq!(records.len(), 100);
        assert!(
            records
                .iter()
                .all(|r| matches!(r.outcome, Outcome::NotRun(NotRunReason::WorkerDied(_))))
        );
        assert!(!process_exists(pid));
    });
}

#[test]
fn worker_exiting_zero_unexpectedly_is_a_crash_of_its_task() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        w.process_task(SimpleTask::new("ok", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("exit0", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("never", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert!(records[0].outcome.is_completed());
        match &records[1].outcome {
            Outcome::Crashed(crash) => {
                assert_eq!(crash.exit.code, Some(0));
                assert_eq!(crash.exit.signal, None);
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        assert!(matches!(records[2].outcome, Outcome::NotRun(_)));
    });
}

#[test]
fn twenty_thousand_tasks_after_the_worker_was_killed_each_get_an_outcome() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        signal(pid, Signal::SIGKILL);
        while w.worker_pid().is_some() {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        for t in names(20_000, "late") {
            w.process_task(t)
                .expect("accepted even though the worker is dead");
        }
        let submit_time = t0.elapsed();
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 20_000);
        assert!(
            records
                .iter()
                .all(|r| matches!(&r.outcome, Outcome::NotRun(NotRunReason::WorkerDied(c)) if c.exit.signal == Some(9)))
        );
        // A hang guard, not a benchmark: 20k non-blocking calls are far below this.
        assert!(submit_time < Duration::from_secs(5), "{submit_time:?}");
    });
}
