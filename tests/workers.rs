//! Several workers behind one facade (`FacadeBuilder::workers(n)`): tasks go
//! to whichever worker is free, records still come back in submission
//! order, a crash blames only the task its own worker was running and
//! replaces only that worker, and recycling counts per worker.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{capture_lines, pids_printing, signal, test_worker, within};
use nix::sys::signal::Signal;
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, WorkingProcessFacade};

const WATCHDOG: Duration = Duration::from_secs(60);

fn solved(r: &worker_facade::TaskRecord<SimpleTask>) -> Outcome<String> {
    Outcome::Completed(r.task.solve())
}

#[test]
fn four_workers_share_the_work_and_collect_keeps_submission_order() {
    within(WATCHDOG, || {
        let (cmd, lines) = capture_lines(test_worker());
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .workers(4)
            .spawn()
            .expect("spawn four workers");
        let pids: BTreeSet<u32> = w.worker_pids().into_iter().collect();
        assert_eq!(pids.len(), 4, "{pids:?}");
        // Uneven durations, so that completion order differs from submission
        // order; each task names itself on stderr to show who ran it.
        for i in 0..80 {
            let t = (i % 7) as f64 * 0.002;
            w.process_task(SimpleTask::new(format!("announce-{i}"), t))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 80);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.id.as_u64(), i as u64, "submission order");
            assert_eq!(r.outcome, solved(r));
        }
        let ran: BTreeSet<u32> = pids_printing(&lines, "started announce-");
        assert!(
            ran.len() >= 2 && ran.is_subset(&pids),
            "work spread over the workers: {ran:?} of {pids:?}"
        );
        assert_eq!(w.stats().restarts, 0);
    });
}

#[test]
fn a_crash_in_one_of_four_workers_blames_only_its_task_and_replaces_only_it() {
    within(WATCHDOG, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .workers(4)
            .spawn()
            .expect("spawn");
        let before: BTreeSet<u32> = w.worker_pids().into_iter().collect();
        for i in 0..200 {
            let id = if i == 100 {
                "crash".to_string()
            } else {
                format!("t{i}")
            };
            w.process_task(SimpleTask::new(id, 0.001))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        for (i, r) in records.iter().enumerate() {
            if i == 100 {
                let Outcome::Crashed(crash) = &r.outcome else {
                    panic!("task 100 should have crashed: {:?}", r.outcome);
                };
                assert_eq!(crash.exit.signal_name(), Some("SIGABRT"), "{crash}");
                assert!(before.contains(&crash.exit.pid), "one of the four crashed");
            } else {
                assert_eq!(r.outcome, solved(r), "task {i}");
            }
        }
        let stats = w.stats();
        assert_eq!((stats.crashed, stats.completed), (1, 199), "{stats:?}");
        assert_eq!(stats.restarts, 1, "only the crashed worker was replaced");
    });
}

#[test]
fn kill_9_of_two_workers_at_once_loses_nothing_else() {
    within(WATCHDOG, || {
        let (cmd, lines) = capture_lines(test_worker());
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .workers(4)
            .spawn()
            .expect("spawn");
        // Four long tasks, one per worker, then short ones behind them.
        let long: Vec<_> = (0..4)
            .map(|i| {
                w.submit(SimpleTask::new(format!("announce-long-{i}"), 30.0))
                    .expect("accepted")
            })
            .collect();
        let short: Vec<_> = (0..40)
            .map(|i| {
                w.submit(SimpleTask::new(format!("s{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        // Wait until all four long tasks run, then kill two of their workers.
        let running = common::wait_for_printers(&lines, "started announce-long-", 4);
        let victims: Vec<u32> = running.iter().copied().take(2).collect();
        for pid in &victims {
            signal(*pid, Signal::SIGKILL);
        }
        // The short tasks are answered by the survivors and the replacements.
        for (i, h) in short.into_iter().enumerate() {
            let outcome = h.wait_timeout(Duration::from_secs(20)).expect("answered");
            assert_eq!(outcome, Outcome::Completed(format!("s{i} solved after 0")));
        }
        // Exactly the two killed workers' long tasks crashed, with SIGKILL.
        w.terminate("test over");
        let mut killed = BTreeSet::new();
        for h in long {
            match h.wait_timeout(Duration::from_secs(20)).expect("answered") {
                Outcome::Crashed(crash) if crash.exit.signal == Some(9) => {
                    if crash.reason.is_none() {
                        killed.insert(crash.exit.pid);
                    }
                }
                other => panic!("a long task ends crashed: {other:?}"),
            }
        }
        let victims: BTreeSet<u32> = victims.into_iter().collect();
        assert_eq!(killed, victims, "the two killed by us, by the test");
        assert_eq!(w.stats().restarts, 2, "{:?}", w.stats());
    });
}

#[test]
fn recycling_after_every_task_with_three_workers_loses_and_reorders_nothing() {
    within(WATCHDOG, || {
        let (cmd, lines) = capture_lines(test_worker());
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .workers(3)
            .max_tasks_per_worker(1)
            .spawn()
            .expect("spawn");
        for i in 0..30 {
            w.process_task(SimpleTask::new(format!("announce-{i}"), 0.0))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 30);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.id.as_u64(), i as u64);
            assert_eq!(r.outcome, solved(r));
        }
        // One task per worker: thirty different workers ran them.
        assert_eq!(pids_printing(&lines, "started announce-").len(), 30);
        let stats = w.stats();
        assert_eq!(stats.restarts, 0, "{stats:?}");
        assert!(stats.recycles >= 27, "{stats:?}");
    });
}

#[test]
fn a_task_timeout_in_one_worker_leaves_the_others_running() {
    within(WATCHDOG, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .workers(2)
            .task_timeout(Duration::from_millis(300))
            .kill_grace(Duration::from_millis(100))
            .spawn()
            .expect("spawn");
        w.process_task(SimpleTask::new("hang", 0.0))
            .expect("accepted");
        for i in 0..50 {
            w.process_task(SimpleTask::new(format!("t{i}"), 0.001))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(
            records[0].outcome,
            Outcome::TimedOut(Duration::from_millis(300))
        );
        for r in &records[1..] {
            assert_eq!(r.outcome, solved(r));
        }
    });
}

#[test]
fn short_tasks_do_not_wait_behind_a_long_one_while_another_worker_is_free() {
    within(WATCHDOG, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .workers(2)
            .spawn()
            .expect("spawn");
        let long = w.submit(SimpleTask::new("hang", 0.0)).expect("accepted");
        let short: Vec<_> = (0..20)
            .map(|i| {
                w.submit(SimpleTask::new(format!("s{i}"), 0.01))
                    .expect("accepted")
            })
            .collect();
        for (i, h) in short.into_iter().enumerate() {
            let outcome = h
                .wait_timeout(Duration::from_secs(20))
                .expect("answered while the long task runs");
            assert_eq!(
                outcome,
                Outcome::Completed(format!("s{i} solved after 0.01"))
            );
        }
        assert!(long.try_wait().is_err(), "the long task still runs");
        w.terminate("done");
        assert!(matches!(
            long.wait().expect("answered"),
            Outcome::Crashed(_)
        ));
    });
}
