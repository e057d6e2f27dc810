//! The recipes of the README's "Testing code that uses worker-facade", run
//! as a user would write them: a dedicated worker binary reached through
//! `CARGO_BIN_EXE_<name>`, and tests that re-run this binary as their own
//! worker through `testing::this_test()`, several at once on libtest's
//! threads.

use std::sync::{Arc, Mutex};

use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, WorkerCommand, WorkingProcessFacade, testing};

const TASKS: usize = 100;

fn handler(t: SimpleTask) -> Result<String, String> {
    Ok(t.solve())
}

/// Runs `TASKS` tasks on `cmd`'s worker; returns the worker's output lines.
fn run_tasks(cmd: WorkerCommand, tag: &str) -> Vec<String> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let cmd = cmd.output(Output::capture(move |line| {
        sink.lock().expect("lines").push(line.text);
    }));
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    for i in 0..TASKS {
        w.process_task(SimpleTask::new(format!("{tag}-{i}"), 0.001))
            .expect("accepted");
    }
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), TASKS);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.outcome,
            Outcome::Completed(format!("{tag}-{i} solved after 0.001")),
            "task {i}"
        );
    }
    let stats = w.stats();
    assert_eq!((stats.crashed, stats.restarts), (0, 0), "{stats:?}");
    let lines = lines.lock().expect("lines");
    lines.clone()
}

/// The sturdiest recipe: a `[[bin]]` whose `main` is `worker::serve`
/// (here the crate's own `facade-worker`), which cargo builds before the
/// tests and names in `CARGO_BIN_EXE_<name>`.
#[test]
fn a_dedicated_worker_binary_through_cargo_bin_exe() {
    let cmd = WorkerCommand::new(env!("CARGO_BIN_EXE_facade-worker"));
    run_tasks(cmd, "bin");
}

/// Each of these begins with `run_if_worker` and re-runs this binary as its
/// worker with only itself selected; libtest runs them at the same time.
macro_rules! test_that_is_its_own_worker {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            worker_facade::worker::run_if_worker(handler);

            let cmd = testing::this_test().expect("called on the test's own thread");
            let lines = run_tasks(cmd, stringify!($name));
            // libtest in the worker ran this test alone.
            assert!(
                lines.iter().any(|l| l == "running 1 test"),
                "the worker's libtest ran more than this test: {lines:?}"
            );
        }
    )*};
}

test_that_is_its_own_worker!(
    its_own_worker_a,
    its_own_worker_b,
    its_own_worker_c,
    its_own_worker_d
);

/// The same from a thread the test started, which has no test name: the
/// test names itself.
#[test]
fn a_test_names_itself_from_another_thread() {
    worker_facade::worker::run_if_worker(handler);

    let lines = std::thread::spawn(|| {
        assert!(testing::this_test().is_none(), "not a test's thread");
        run_tasks(
            testing::test_worker("a_test_names_itself_from_another_thread"),
            "named",
        )
    })
    .join()
    .expect("the thread");
    assert!(lines.iter().any(|l| l == "running 1 test"), "{lines:?}");
}
