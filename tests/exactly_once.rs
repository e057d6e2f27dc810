//! Property: whatever mix of tasks, crashes, hangs, timeouts and external
//! kills, every accepted task gets exactly one outcome that fits what the
//! task did, and `collect_tasks` returns (a watchdog fails a hang).

mod common;

use std::time::Duration;

use common::{test_worker, within};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proptest::prelude::*;
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, RestartPolicy, WorkingProcessFacade};

#[derive(Debug, Clone)]
enum Step {
    Task(&'static str),
    /// SIGKILL the current worker, if one is running.
    Kill,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Task("ok")),
        2 => Just(Step::Task("fail")),
        1 => Just(Step::Task("panic")),
        2 => Just(Step::Task("crash")),
        1 => Just(Step::Task("exit0")),
        1 => Just(Step::Task("hang")),
        2 => Just(Step::Kill),
    ]
}

fn fits(kind: &str, outcome: &Outcome<String>) -> bool {
    // Any task may be NotRun (its worker died first, the budget ran out) or
    // Crashed (an external kill landed while it ran).
    if matches!(outcome, Outcome::NotRun(_) | Outcome::Crashed(_)) {
        return true;
    }
    match kind {
        "ok" => outcome == &Outcome::Completed("ok solved after 0".into()),
        "fail" => outcome == &Outcome::Failed("task fail refused".into()),
        "panic" => matches!(outcome, Outcome::Failed(m) if m.contains("panicked")),
        "hang" => outcome == &Outcome::TimedOut(Duration::from_millis(500)),
        _ => false, // crash and exit0 can only crash or not run
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn every_task_gets_exactly_one_fitting_outcome(
        steps in prop::collection::vec(step(), 1..40),
        restart in any::<bool>(),
    ) {
        let steps2 = steps.clone();
        let (kinds, records, stats) = within(Duration::from_secs(60), move || {
            let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker().env("RUST_BACKTRACE", "0"))
                .task_timeout(Duration::from_millis(500))
                .kill_grace(Duration::from_millis(50))
                .restart(if restart {
                    RestartPolicy::Limited { max_restarts: 4, window: Duration::from_secs(60) }
                } else {
                    RestartPolicy::Never
                })
                .spawn()
                .expect("spawn");
            let mut kinds = Vec::new();
            for step in steps2 {
                match step {
                    Step::Task(kind) => {
                        w.process_task(SimpleTask::new(kind, 0.0)).expect("accepted");
                        kinds.push(kind);
                    }
                    Step::Kill => {
                        if let Some(pid) = w.worker_pid() {
                            // The worker may die and be reaped between
                            // reading its pid and the kill (a crash task, or
                            // the previous Kill step): then there is nothing
                            // to kill, which is this step's "if one is
                            // running". Any other error fails the case.
                            match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                                Ok(()) | Err(Errno::ESRCH) => {}
                                Err(e) => panic!("kill {pid}: {e}"),
                            }
                        }
                    }
                }
            }
            let records = w.collect_tasks().expect("collect");
            (kinds, records, w.stats())
        });
        prop_assert_eq!(records.len(), kinds.len());
        for (i, (record, kind)) in records.iter().zip(&kinds).enumerate() {
            prop_assert_eq!(record.id.as_u64(), i as u64);
            prop_assert_eq!(record.task.id.as_str(), *kind);
            prop_assert!(fits(kind, &record.outcome), "task {} ({}): {:?}", i, kind, record.outcome);
        }
        prop_assert_eq!(stats.submitted, kinds.len() as u64);
        prop_assert_eq!(stats.in_flight, 0);
        prop_assert_eq!(
            stats.completed + stats.failed + stats.crashed + stats.not_run + stats.timed_out,
            kinds.len() as u64
        );
    }
}
