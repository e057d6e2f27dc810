//! Progress from a running task (issue 11, item 8): a long task's reports
//! reach its handle (the latest value) and its callback (off the engine)
//! while it runs; a flood of reports is coalesced, not queued; the last
//! value reported before the result is never lost; a worker that reports
//! progress for a task it is not running is a protocol violation.
//!
//! The worker is this test binary re-run: `progress_worker_main` serves
//! [`handler`].

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::worker::Progress;
use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade};

/// `steps`: reports 1..=10 with 50 ms between them; `flood`: reports
/// 0..200,000 as fast as it can; anything else answers at once.
fn handler(t: SimpleTask, progress: &Progress) -> Result<String, String> {
    match t.id.as_str() {
        "steps" => {
            for step in 1..=10u32 {
                progress.report(&step);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok("stepped".into())
        }
        "flood" => {
            for i in 0..200_000u64 {
                progress.report(&i);
            }
            Ok("flooded".into())
        }
        _ => Ok(format!("{} at once", t.id)),
    }
}

#[test]
#[ignore = "not a test: the worker of the tests below"]
fn progress_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve_with_progress(handler);
    }
}

fn worker() -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(common::libtest_args("progress_worker_main"))
        .output(worker_facade::Output::Silent)
}

#[test]
fn a_long_task_reports_progress_to_its_handle_and_callback_while_it_runs() {
    let _dog = common::watchdog("a_long_task_reports_progress");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(worker()).expect("spawn");
    let seen = Arc::new(Mutex::new(Vec::<(u32, String)>::new()));
    let sink = seen.clone();
    let handle = w
        .submit_with_progress(SimpleTask::new("steps", 0.0), move |step: u32| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            sink.lock().expect("seen").push((step, thread));
        })
        .expect("accepted");
    // While it runs, the handle shows a value between the first and last.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mid = loop {
        if let Some(step) = handle.progress::<u32>() {
            if (2..10).contains(&step) {
                break step;
            }
        }
        assert!(Instant::now() < deadline, "no progress seen while running");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        handle.try_wait().is_err(),
        "step {mid} was seen while the task still ran"
    );
    let outcome = handle
        .wait_timeout(Duration::from_secs(10))
        .expect("outcome");
    assert_eq!(outcome, Outcome::Completed("stepped".into()));
    assert_eq!(handle.progress::<u32>(), Some(10), "the last value is kept");
    assert_eq!(handle.progress_count(), 10);
    // Collecting joins the progress thread: every callback has run.
    assert!(w.collect_tasks().expect("collect").is_empty());
    let seen = seen.lock().expect("seen");
    let steps: Vec<u32> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        steps,
        (1..=10).collect::<Vec<_>>(),
        "50 ms apart: none coalesced"
    );
    assert!(seen.iter().all(|s| s.1 == "wf-progress"), "{seen:?}");
}

#[test]
fn a_flood_of_reports_is_coalesced_and_the_last_one_arrives() {
    let _dog = common::watchdog("a_flood_of_reports_is_coalesced");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(worker()).expect("spawn");
    let calls = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sink = calls.clone();
    let handle = w
        .submit_with_progress(SimpleTask::new("flood", 0.0), move |i: u64| {
            // A slow callback: values arriving meanwhile replace each other.
            std::thread::sleep(Duration::from_millis(2));
            sink.lock().expect("calls").push(i);
        })
        .expect("accepted");
    let outcome = handle
        .wait_timeout(Duration::from_secs(30))
        .expect("outcome");
    assert_eq!(outcome, Outcome::Completed("flooded".into()));
    assert_eq!(handle.progress::<u64>(), Some(199_999));
    let sent = handle.progress_count();
    assert!(
        (1..200_000).contains(&sent),
        "{sent} of 200,000 reports were sent: at most one a millisecond"
    );
    drop(w); // joins the progress thread
    let calls = calls.lock().expect("calls");
    assert_eq!(calls.last(), Some(&199_999), "the callback saw the last");
    assert!(calls.len() as u64 <= sent);
    assert!(
        calls.windows(2).all(|p| p[0] < p[1]),
        "never an older value"
    );
}

#[test]
fn tasks_without_progress_are_unaffected_and_have_none() {
    let w = WorkingProcessFacade::<SimpleTask>::spawn(worker()).expect("spawn");
    let handle = w.submit(SimpleTask::new("quick", 0.0)).expect("accepted");
    let outcome = handle
        .wait_timeout(Duration::from_secs(10))
        .expect("outcome");
    assert_eq!(outcome, Outcome::Completed("quick at once".into()));
    assert_eq!(handle.progress::<u32>(), None);
    assert_eq!(handle.progress_count(), 0);
}
