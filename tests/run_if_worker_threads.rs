//! Tests that each begin with `run_if_worker` and spawn
//! `WorkerCommand::current_exe()` as it is (no test selected): the worker,
//! this binary run again, starts every test at once on libtest's threads,
//! and each reaches `run_if_worker`. Only the first serves; the others wait
//! for the process to end. They used to try to serve too, fail to take the
//! socket, and exit with code 70 under the first one's tasks, which came
//! back crashed. (`testing::this_test()` is the better recipe: there the
//! worker runs one test only. This file is alone with the naive one.)

use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, WorkerCommand, WorkingProcessFacade};

fn handler(t: SimpleTask) -> Result<String, String> {
    Ok(t.solve())
}

macro_rules! naive_test {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            worker_facade::worker::run_if_worker(handler);

            let w = WorkingProcessFacade::<SimpleTask>::spawn(
                WorkerCommand::current_exe().output(Output::Silent),
            )
            .expect("spawn");
            // Long enough for the worker's other test threads to reach
            // run_if_worker while this one serves.
            for i in 0..200 {
                w.process_task(SimpleTask::new(format!("t{i}"), 0.001))
                    .expect("accepted");
            }
            let records = w.collect_tasks().expect("collect");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(
                    r.outcome,
                    Outcome::Completed(format!("t{i} solved after 0.001")),
                    "task {i}"
                );
            }
            let stats = w.stats();
            assert_eq!((stats.crashed, stats.restarts), (0, 0), "{stats:?}");
        }
    )*};
}

naive_test!(naive_a, naive_b, naive_c, naive_d);
