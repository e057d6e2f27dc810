//! Bad results (issue 8, "Faults it must survive"): an output type whose
//! `Deserialize` errs for some values and panics for others. The worker
//! encodes those values without trouble; the parent cannot decode them.
//! Eight such results among a hundred good ones must cost eight `Failed`
//! outcomes and nothing else: no restart, one worker for everything, no
//! good task run twice (the worker prints a line for each task it runs,
//! and each appears once), every good result delivered.
//!
//! The worker is this test binary re-run: `bad_results_worker_main` serves
//! [`handler`].

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{capture_lines, pids_printing, within};
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use worker_facade::{Outcome, Task, TaskHandle, WorkerCommand, WorkingProcessFacade};

/// A value whose `Deserialize` fails with an error.
const ERRS: u64 = u64::MAX - 1;
/// A value whose `Deserialize` panics.
const PANICS: u64 = u64::MAX - 2;

/// The inputs whose results are poison: four that err, four that panic.
const POISON_ERR: [u32; 4] = [3, 27, 50, 98];
const POISON_PANIC: [u32; 4] = [11, 12, 64, 99];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Double(u32);

/// `2n` for input `n`, or a poison value.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Verdict(u64);

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            ERRS => Err(D::Error::custom("this verdict is poison (error)")),
            PANICS => panic!("this verdict is poison (panic)"),
            v => Ok(Verdict(v)),
        }
    }
}

impl Task for Double {
    type Output = Verdict;
}

fn handler(Double(n): Double) -> Result<Verdict, String> {
    eprintln!("ran {n}");
    Ok(if POISON_ERR.contains(&n) {
        Verdict(ERRS)
    } else if POISON_PANIC.contains(&n) {
        Verdict(PANICS)
    } else {
        Verdict(2 * n as u64)
    })
}

#[test]
#[ignore = "not a test: the worker of the test below"]
fn bad_results_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(handler);
    }
}

#[test]
fn eight_poison_results_among_good_ones_cost_eight_failures_and_nothing_else() {
    within(Duration::from_secs(30), || {
        let (cmd, lines) = capture_lines(
            WorkerCommand::current_exe().args(common::libtest_args("bad_results_worker_main")),
        );
        let w = WorkingProcessFacade::<Double>::spawn(cmd).expect("spawn");
        let pid = w.worker_pid().expect("running");
        // Even inputs through handles, odd ones through collect_tasks.
        let mut handles: Vec<(u32, TaskHandle<Verdict>)> = Vec::new();
        for n in 0..100u32 {
            if n % 2 == 0 {
                handles.push((n, w.submit(Double(n)).expect("accepted")));
            } else {
                w.process_task(Double(n)).expect("accepted");
            }
        }
        let mut outcomes: BTreeMap<u32, Outcome<Verdict>> = BTreeMap::new();
        for (n, h) in handles {
            outcomes.insert(n, h.wait().expect("an outcome"));
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 50);
        for r in records {
            outcomes.insert(r.task.0, r.outcome);
        }
        assert_eq!(outcomes.len(), 100);

        for (n, outcome) in &outcomes {
            if POISON_ERR.contains(n) {
                assert!(
                    matches!(outcome, Outcome::Failed(why)
                        if why.contains("decode") && why.contains("poison (error)")),
                    "{n}: {outcome:?}"
                );
            } else if POISON_PANIC.contains(n) {
                assert!(
                    matches!(outcome, Outcome::Failed(why)
                        if why.contains("panicked") && why.contains("poison (panic)")),
                    "{n}: {outcome:?}"
                );
            } else {
                assert_eq!(outcome, &Outcome::Completed(Verdict(2 * *n as u64)), "{n}");
            }
        }
        let s = w.stats();
        assert_eq!(
            (s.completed, s.failed, s.crashed, s.not_run, s.restarts),
            (92, 8, 0, 0, 0),
            "{s:?}"
        );
        // One worker ran everything, each task once.
        assert_eq!(pids_printing(&lines, "ran "), [pid].into());
        let mut runs: BTreeMap<u32, usize> = BTreeMap::new();
        for l in lines.lock().expect("lines").iter() {
            if let Some(n) = l.text.strip_prefix("ran ") {
                *runs.entry(n.parse().expect("a number")).or_default() += 1;
            }
        }
        assert_eq!(runs.len(), 100, "every task ran");
        assert!(runs.values().all(|&c| c == 1), "a task ran twice: {runs:?}");
    });
}
