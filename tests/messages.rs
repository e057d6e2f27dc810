//! What users read: an outcome of any output type prints its whole report
//! (a struct output that is not `Display` no longer hides a crash), and an
//! error about the frame size names the setting that raises it. Real
//! worker processes: this test binary re-executed as the worker.

mod common;

use serde::{Deserialize, Serialize};
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, SubmitError, Task, WorkerCommand, WorkingProcessFacade};

/// A task whose output is a struct, with no `Display`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Count {
    name: String,
    rows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    rows: usize,
    blob: Vec<u8>,
}

impl Task for Count {
    type Output = Report;
}

/// `crash` aborts; any other name answers a report of `rows` rows and as
/// many bytes.
fn count(t: Count) -> Result<Report, String> {
    if t.name == "crash" {
        eprintln!("about to abort");
        std::process::abort();
    }
    Ok(Report {
        rows: t.rows,
        blob: vec![7; t.rows],
    })
}

#[test]
#[ignore = "not a test: the worker side of `report_worker()`"]
#[allow(clippy::exit)] // a worker process ends here, as in common::worker_main
fn report_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(count);
        std::process::exit(0);
    }
}

fn report_worker() -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(common::libtest_args("report_worker_main"))
        .output(Output::Silent)
}

fn job(name: &str, rows: usize) -> Count {
    Count {
        name: name.into(),
        rows,
    }
}

#[test]
fn an_outcome_with_a_struct_output_displays_its_crash_report() {
    let _dog = common::watchdog("struct_outcome_display");
    let w = WorkingProcessFacade::<Count>::spawn(report_worker()).expect("spawn");
    w.process_task(job("fine", 3)).expect("accepted");
    w.process_task(job("crash", 0)).expect("accepted");
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), 2);

    let done = &records[0].outcome;
    assert!(done.is_completed(), "{done:?}");
    assert_eq!(done.to_string(), "completed");
    assert_eq!(
        done.display_with(|r, f| write!(f, "{} rows", r.rows))
            .to_string(),
        "3 rows"
    );

    let crashed = &records[1].outcome;
    let Outcome::Crashed(crash) = crashed else {
        panic!("expected a crash, got {crashed:?}");
    };
    let shown = crashed.to_string();
    assert_eq!(shown, format!("crashed: {crash}"));
    assert!(shown.contains("SIGABRT"), "{shown}");
    assert!(shown.contains(&crash.exit.pid.to_string()), "{shown}");
    assert!(shown.contains("about to abort"), "{shown}");
    // `display_with` shows the other variants as `Display` does.
    assert_eq!(
        crashed
            .display_with(|r, f| write!(f, "{} rows", r.rows))
            .to_string(),
        shown
    );
}

#[test]
fn a_task_above_the_frame_size_names_the_setting_that_raises_it() {
    let _dog = common::watchdog("task_too_large");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(common::stock_worker().max_frame_size(1024))
        .expect("spawn");
    let big = SimpleTask::new("x".repeat(4096), 0.0);
    match w.process_task(big) {
        Err(err @ SubmitError::TooLarge { .. }) => {
            let text = err.to_string();
            assert!(text.contains("WorkerCommand::max_frame_size"), "{text}");
            assert!(text.contains("1024 bytes"), "{text}");
            assert_eq!(err.into_task().id.len(), 4096);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(w.collect_tasks().expect("collect").is_empty());
}

#[test]
fn a_result_above_the_frame_size_names_the_setting_that_raises_it() {
    let _dog = common::watchdog("result_too_large");
    let w =
        WorkingProcessFacade::<Count>::spawn(report_worker().max_frame_size(4096)).expect("spawn");
    let h = w.submit(job("big", 10_000)).expect("accepted");
    match h.wait().expect("answered") {
        Outcome::Failed(why) => {
            assert!(why.contains("above the maximum frame size"), "{why}");
            assert!(why.contains("WorkerCommand::max_frame_size"), "{why}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The worker goes on.
    let ok = w.submit(job("small", 2)).expect("accepted");
    assert_eq!(
        ok.wait().expect("answered").completed(),
        Some(Report {
            rows: 2,
            blob: vec![7; 2]
        })
    );
}
