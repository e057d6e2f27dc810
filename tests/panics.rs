//! Panics that tell you where (issue 11, item 7): a handler's panic comes
//! back as `Failed` with its message, file, line and column, and the worker
//! does not print the panic it caught; a panic it did not catch (on a
//! thread of the handler's own) is still printed.
//!
//! The worker is this test binary re-run: `panics_worker_main` serves
//! [`handler`].

mod common;

use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade};

/// The line of the `panic!` below, checked against the outcome.
const PANIC_LINE: u32 = line!() + 6;

/// `boom` panics in the handler; `thread-boom` panics on a thread the
/// handler starts (and joins); anything else answers `ok`.
fn handler(t: SimpleTask) -> Result<String, String> {
    match t.id.as_str() {
        "boom" => panic!("boom in {}", t.id),
        "thread-boom" => {
            let joined = std::thread::spawn(|| panic!("THREAD-PANIC-MARKER")).join();
            Ok(format!("thread panicked: {}", joined.is_err()))
        }
        _ => Ok("ok".into()),
    }
}

#[test]
#[ignore = "not a test: the worker of the tests below"]
fn panics_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(handler);
    }
}

fn worker() -> (WorkerCommand, common::Lines) {
    common::capture_lines(
        WorkerCommand::current_exe().args(common::libtest_args("panics_worker_main")),
    )
}

#[test]
fn a_handler_panic_reports_its_message_file_line_and_column_and_is_not_printed() {
    let (cmd, lines) = worker();
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    let records = common::run_named(&w, &["boom", "after"]);
    let Outcome::Failed(why) = &records[0].outcome else {
        panic!("expected Failed, got {:?}", records[0].outcome);
    };
    let site = format!("{}:{PANIC_LINE}:", file!());
    assert!(
        why.starts_with(&format!("the handler panicked at {site}")),
        "{why:?} should name {site}"
    );
    // The column of `panic!` in the line above: 19 characters in.
    assert!(why.contains(&format!("{site}19: boom in boom")), "{why:?}");
    assert_eq!(records[1].outcome, Outcome::Completed("ok".into()));
    let printed: Vec<String> = lines
        .lock()
        .expect("lines")
        .iter()
        .map(|l| l.text.clone())
        .collect();
    assert!(
        !printed.iter().any(|l| l.contains("boom in boom")),
        "the caught panic was printed: {printed:?}"
    );
}

#[test]
fn a_panic_the_worker_did_not_catch_is_still_printed() {
    let (cmd, lines) = worker();
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    let records = common::run_named(&w, &["thread-boom"]);
    assert_eq!(
        records[0].outcome,
        Outcome::Completed("thread panicked: true".into())
    );
    assert!(
        !common::pids_printing(&lines, "THREAD-PANIC-MARKER").is_empty(),
        "the handler's own thread's panic was not printed: {:?}",
        lines.lock().expect("lines")
    );
}
