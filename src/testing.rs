//! Testing code that uses worker-facade with `cargo test`.
//!
//! A test binary is a program like any other, so a test can re-execute it
//! as its worker ([`WorkerCommand::current_exe`]). But libtest's binary, run
//! again with no arguments, runs *every* test, each on a thread of its own:
//! every test of the binary would run inside each worker, and those that
//! begin with [`run_if_worker`](crate::worker::run_if_worker) would race to
//! serve. Two ways that work:
//!
//! - **A dedicated worker binary** (the sturdiest, for integration tests in
//!   `tests/`): add a `[[bin]]` whose `main` is
//!   [`worker::serve`](crate::worker::serve)`(handler)`, and spawn it with
//!   `WorkerCommand::new(env!("CARGO_BIN_EXE_<name>"))`. Cargo builds the
//!   binary before the tests and sets that variable for integration tests.
//! - **This test binary, running only this test**: the test's first line is
//!   `run_if_worker(handler)`, and it spawns [`this_test`]`()`, which re-runs
//!   the binary with libtest told to run that one test (`--exact`). In the
//!   worker the test starts, serves, and the process exits; no other test
//!   runs there. This works for unit tests in `src/` too.
//!
//! ```ignore
//! // ignore: a #[test] inside a doctest is never run; this test runs, for
//! // real, as tests/testing_recipe.rs (its_own_worker_a to _d).
//! use worker_facade::{Outcome, WorkingProcessFacade, simple::SimpleTask, testing};
//!
//! #[test]
//! fn solves_in_a_worker() {
//!     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
//!
//!     let cmd = testing::this_test().expect("called on a test's own thread");
//!     let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
//!     w.process_task(SimpleTask::new("one", 0.0)).expect("accepted");
//!     let records = w.collect_tasks().expect("collect");
//!     assert_eq!(records[0].outcome, Outcome::Completed("one solved after 0".into()));
//! }
//! ```
//!
//! The worker's libtest prints its `running 1 test` line to the worker's
//! stdout, which the facade shows prefixed like any worker output; use
//! [`Output::Silent`](crate::Output::Silent) or
//! [`Output::Capture`](crate::Output::Capture) to keep it out of the test's
//! output.

use crate::command::WorkerCommand;

/// A worker that is this test binary, re-run with libtest told to run only
/// the test that calls this, or `None` when not called on a test's own
/// thread.
///
/// libtest runs each test on a thread named after the test
/// (`module::test_name`, what `--exact` selects); this reads that name, so
/// call it from the test's body, not from a thread it started (there, use
/// [`test_worker`] with the name). The test must begin with
/// [`run_if_worker`](crate::worker::run_if_worker): in the worker, that is
/// where it serves and exits. See the [module docs](self).
///
/// ```
/// // A doctest's `main` is not a libtest test.
/// assert!(worker_facade::testing::this_test().is_none());
/// ```
pub fn this_test() -> Option<WorkerCommand> {
    let thread = std::thread::current();
    match thread.name() {
        None | Some("main") => None,
        Some(name) => Some(test_worker(name)),
    }
}

/// A worker that is this test binary, re-run with libtest told to run only
/// the test named `test` (its full path, as `cargo test` prints it, such as
/// `tests::solves_in_a_worker`), ignored or not, with its output shown.
/// That test must begin with
/// [`run_if_worker`](crate::worker::run_if_worker).
///
/// ```
/// let cmd = worker_facade::testing::test_worker("tests::solves_in_a_worker");
/// assert_eq!(cmd.program(), std::env::current_exe()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn test_worker(test: &str) -> WorkerCommand {
    WorkerCommand::current_exe().args([
        test,
        "--exact",
        "--include-ignored",
        // Its prints reach the worker's real stdout and stderr, and so the
        // parent (libtest would capture them, and they would die with the
        // worker).
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
}
