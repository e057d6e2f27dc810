//! Respawn after a crash, the restart budget, opt-in retries, per-task
//! timeouts and recycling: each fault done for real.

mod common;

use std::time::Duration;

use common::{
    announcing_worker, kinds, process_exists, run_named, test_worker, wait_for_line, within,
};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CrashReason, NotRunReason, Outcome, RestartPolicy, UnavailableReason, WorkingProcessFacade,
};

fn t(name: &str) -> SimpleTask {
    SimpleTask::new(name, 0.0)
}

#[test]
fn restart_budget_exhausted_leaves_the_rest_not_run() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .restart(RestartPolicy::Limited {
                max_restarts: 2,
                window: Duration::from_secs(60),
            })
            .spawn()
            .expect("spawn");
        let records = run_named(&w, &["a", "crash", "b", "crash", "c", "crash", "d", "e"]);
        assert_eq!(
            kinds(&records),
            [
                "completed",
                "crashed",
                "completed",
                "crashed",
                "completed",
                "crashed",
                "not run",
                "not run"
            ]
        );
        match &records[6].outcome {
            Outcome::NotRun(NotRunReason::WorkerUnavailable(why)) => {
                assert!(
                    matches!(why, UnavailableReason::RestartBudgetExhausted { .. }),
                    "{why}"
                );
                assert!(
                    why.to_string().contains("restart budget exhausted"),
                    "{why}"
                )
            }
            other => panic!("expected WorkerUnavailable, got {other:?}"),
        }
        let stats = w.stats();
        assert_eq!((stats.restarts, stats.crashed, stats.not_run), (2, 3, 2));
    });
}

#[test]
fn retries_rerun_a_crashing_task_at_most_n_times() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .retries(2)
            .spawn()
            .expect("spawn");
        w.process_task(t("crash")).expect("accepted");
        w.process_task(t("after")).expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert!(matches!(records[0].outcome, Outcome::Crashed(_)));
        assert_eq!(
            records[1].outcome,
            Outcome::Completed("after solved after 0".into())
        );
        // First run plus two retries: three workers crashed on it.
        assert_eq!(w.stats().restarts, 3);
        assert_eq!(w.stats().crashed, 1);
    });
}

#[test]
fn hung_task_times_out_and_the_rest_continue_on_a_fresh_worker() {
    within(Duration::from_secs(30), || {
        let (cmd, lines) = announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .task_timeout(Duration::from_millis(300))
            .kill_grace(Duration::from_millis(100))
            .spawn()
            .expect("spawn");
        let first_pid = w.worker_pid().expect("running");
        w.process_task(t("before")).expect("accepted");
        w.process_task(SimpleTask::new("announce-hang", 3600.0))
            .expect("accepted");
        w.process_task(t("after")).expect("accepted");
        wait_for_line(&lines, "started announce-hang");
        let records = w.collect_tasks().expect("collect");
        assert!(records[0].outcome.is_completed());
        assert_eq!(
            records[1].outcome,
            Outcome::TimedOut(Duration::from_millis(300))
        );
        assert_eq!(
            records[2].outcome,
            Outcome::Completed("after solved after 0".into())
        );
        assert!(
            !process_exists(first_pid),
            "the hung worker was killed and reaped"
        );
        let stats = w.stats();
        assert_eq!((stats.timed_out, stats.restarts, stats.crashed), (1, 1, 0));
    });
}

#[test]
fn per_task_timeout_overrides_the_default() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .task_timeout(Duration::from_secs(3600))
            .kill_grace(Duration::from_millis(100))
            .spawn()
            .expect("spawn");
        let quick = w
            .submit_with_time_limit(SimpleTask::new("slow", 30.0), Duration::from_millis(200))
            .expect("accepted");
        assert_eq!(
            quick.wait(),
            Ok(Outcome::TimedOut(Duration::from_millis(200)))
        );
        let next = w.submit(t("next")).expect("accepted");
        assert!(next.wait().expect("outcome").is_completed());
        w.collect_tasks().expect("collect");
    });
}

#[test]
fn timeout_that_ignores_sigterm_is_killed() {
    within(Duration::from_secs(30), || {
        // A worker that ignores SIGTERM still dies: SIGKILL follows the
        // kill grace.
        let (cmd, lines) = announcing_worker();
        let w =
            WorkingProcessFacade::<SimpleTask>::builder(cmd.env("TEST_WORKER_IGNORE_TERM", "1"))
                .task_timeout(Duration::from_millis(200))
                .kill_grace(Duration::from_millis(200))
                .restart(RestartPolicy::Never)
                .spawn()
                .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let h = w
            .submit(SimpleTask::new("announce-hang", 3600.0))
            .expect("accepted");
        wait_for_line(&lines, "started announce-hang");
        assert_eq!(h.wait(), Ok(Outcome::TimedOut(Duration::from_millis(200))));
        w.collect_tasks().expect("collect");
        assert!(!process_exists(pid));
    });
}

#[test]
fn recycling_after_every_task_loses_and_reorders_nothing() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .max_tasks_per_worker(1)
            .spawn()
            .expect("spawn");
        for i in 0..20 {
            w.process_task(t(&format!("r{i}"))).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("r{i} solved after 0"))
            );
        }
        let stats = w.stats();
        assert_eq!(stats.recycles, 19);
        assert_eq!(stats.restarts, 0);
    });
}

#[test]
fn recycling_interleaved_with_a_crash() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .max_tasks_per_worker(2)
            .spawn()
            .expect("spawn");
        let records = run_named(&w, &["a", "b", "c", "crash", "d", "e", "f"]);
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
    });
}

#[test]
fn memory_limit_crash_names_the_limit() {
    within(Duration::from_secs(30), || {
        let limit = 512 * 1024 * 1024;
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker().memory_limit(limit))
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        w.process_task(SimpleTask::new("alloc", 1.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("alloc", 2048.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(
            records[0].outcome,
            Outcome::Completed(format!("allocated {}", 1024 * 1024))
        );
        match &records[1].outcome {
            Outcome::Crashed(crash) => {
                assert_eq!(
                    crash.reason,
                    // (tail shown on failure)
                    Some(CrashReason::MemoryLimit { bytes: 536870912 }),
                    "stderr tail: {:?}",
                    crash.stderr_tail
                );
                assert_eq!(crash.exit.signal_name(), Some("SIGABRT"));
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
    });
}

#[test]
fn the_default_policy_keeps_going_through_crashes_among_healthy_tasks() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .spawn()
            .expect("spawn");
        // 8 crashing chunks spread over 400 healthy ones, as a long job has.
        let names: Vec<String> = (0..408)
            .map(|i| {
                if i % 51 == 25 {
                    "crash".to_string()
                } else {
                    format!("chunk{i}")
                }
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let records = run_named(&w, &names);
        let crashed = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Crashed(_)))
            .count();
        let completed = records.iter().filter(|r| r.outcome.is_completed()).count();
        assert_eq!((crashed, completed), (8, 400), "{:?}", w.stats());
        let stats = w.stats();
        assert!(!stats.gave_up, "{stats:?}");
        assert_eq!(stats.restarts, 8);
    });
}

#[test]
fn the_default_policy_gives_up_on_workers_that_crash_on_everything() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .spawn()
            .expect("spawn");
        let records = run_named(
            &w,
            &[
                "ok", "crash", "crash", "crash", "crash", "crash", "crash", "crash", "late",
            ],
        );
        // One death, then five more in a row without progress are allowed.
        assert_eq!(
            kinds(&records),
            [
                "completed",
                "crashed",
                "crashed",
                "crashed",
                "crashed",
                "crashed",
                "crashed",
                "not run",
                "not run"
            ]
        );
        match &records[7].outcome {
            Outcome::NotRun(NotRunReason::WorkerUnavailable(UnavailableReason::NoProgress {
                deaths,
                ..
            })) => assert_eq!(*deaths, 6),
            other => panic!("expected NoProgress, got {other:?}"),
        }
        assert!(w.stats().gave_up, "{:?}", w.stats());
    });
}

#[test]
fn a_worker_past_its_rss_limit_is_recycled_losing_and_rerunning_nothing() {
    within(Duration::from_secs(60), || {
        let (cmd, lines) = common::capture_lines(test_worker());
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .max_worker_rss(150 << 20)
            .spawn()
            .expect("spawn");
        // Each task leaks 40 MiB on purpose; each is announced by the worker
        // that runs it, so a task run twice would show.
        let handles: Vec<_> = (0..10)
            .map(|i| {
                w.submit(SimpleTask::new(format!("leak-{i}"), 40.0))
                    .expect("accepted")
            })
            .collect();
        for h in handles {
            let outcome = h.wait_timeout(Duration::from_secs(30)).expect("answered");
            assert_eq!(outcome, Outcome::Completed(format!("leaked {}", 40 << 20)));
        }
        w.collect_tasks().expect("collect");
        let stats = w.stats();
        // Under 150 MiB fit 3 leaks of 40 MiB; the 4th is the one that
        // goes past, and one more may have started before the worker saw
        // it was to stop: at most 5 per worker.
        let per_worker = |pid: u32| {
            lines
                .lock()
                .expect("lines")
                .iter()
                .filter(|l| l.pid == pid && l.text.starts_with("ran leak-"))
                .count()
        };
        let workers = common::pids_printing(&lines, "ran leak-");
        assert!(workers.len() >= 2, "{workers:?} {stats:?}");
        for &pid in &workers {
            assert!(per_worker(pid) <= 5, "worker {pid} ran {}", per_worker(pid));
        }
        assert!(stats.recycles >= 1, "{stats:?}");
        assert_eq!((stats.restarts, stats.crashed), (0, 0), "{stats:?}");
        let ran = lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.text.starts_with("ran leak-"))
            .count();
        assert_eq!(ran, 10, "each task ran once");
    });
}

#[test]
fn a_task_submitted_to_an_idle_worker_that_dies_before_reading_it_runs_on_the_next() {
    use nix::sys::signal::Signal;
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .spawn()
            .expect("spawn");
        // One round trip: the worker is idle and the engine asleep, so the
        // next task is written to the worker's socket by its submitter.
        let warm = w
            .submit(t("warm"))
            .expect("accepted")
            .wait()
            .expect("outcome");
        assert!(warm.is_completed(), "{warm:?}");
        let pid = w.worker_pid().expect("a worker runs");
        common::signal(pid, Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(50));
        let handle = w.submit(t("unread")).expect("accepted");
        // It never reads the task: it never started it, so the task is the
        // next worker's, and no crash is charged to it.
        common::signal(pid, Signal::SIGKILL);
        let outcome = handle.wait().expect("outcome");
        assert!(outcome.is_completed(), "{outcome:?}");
        let next = w.worker_pid().expect("a replacement runs");
        assert_ne!(next, pid);
        let stats = w.stats();
        assert_eq!((stats.restarts, stats.crashed, stats.completed), (1, 0, 2));
        // Each outcome went to its handle: nothing is left for a collect.
        assert!(w.collect_tasks().expect("collect").is_empty());
    });
}
