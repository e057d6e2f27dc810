//! Messages longer than the maximum frame (issue 8, "Faults it must
//! survive"): a handler error or panic message of 5 KB under
//! `max_frame_size(4096)` is reported `Failed` with the message cut to fit,
//! and the worker lives on (the same process answers the next task, no
//! restart). At the minimum frame size (`max_frame_size(0)` clamps to 64
//! bytes), even the library's own "result too large" message must fit.
//!
//! The worker is this test binary re-run: `truncation_worker_main` serves
//! [`handler`].

mod common;

use std::time::Duration;

use common::within;
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, TaskRecord, WorkerCommand, WorkingProcessFacade};

const ERR_PREFIX: &str = "ERROR-PREFIX:";
const PANIC_PREFIX: &str = "PANIC-PREFIX:";

/// `long-error` and `long-panic` fail with about 5 KB of text,
/// `multibyte-error` with 6,000 bytes of two-byte characters, `big-result`
/// returns 200 bytes; anything else answers `<id> from <pid>`.
fn handler(t: SimpleTask) -> Result<String, String> {
    match t.id.as_str() {
        "long-error" => Err(format!("{ERR_PREFIX}{}", "e".repeat(5000))),
        "long-panic" => panic!("{PANIC_PREFIX}{}", "p".repeat(5000)),
        "multibyte-error" => Err("é".repeat(3000)),
        "big-result" => Ok("r".repeat(200)),
        id => Ok(format!("{id} from {}", std::process::id())),
    }
}

#[test]
#[ignore = "not a test: the worker of the tests below"]
fn truncation_worker_main() {
    if worker_facade::worker::is_worker() {
        // Quiet panics: the long one would fill the captured stderr.
        std::panic::set_hook(Box::new(|_| {}));
        worker_facade::worker::serve(handler);
    }
}

fn worker(max_frame: u32) -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(common::libtest_args("truncation_worker_main"))
        .output(Output::Silent)
        .max_frame_size(max_frame)
}

/// Runs the named tasks and checks that one worker, never restarted,
/// answered them all; returns the records.
fn run(max_frame: u32, names: &[&str]) -> Vec<TaskRecord<SimpleTask>> {
    let w = WorkingProcessFacade::<SimpleTask>::spawn(worker(max_frame)).expect("spawn");
    let pid = w.worker_pid().expect("a worker runs");
    let records = common::run_named(&w, names);
    for r in &records {
        if r.task.id.starts_with("ping") {
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("{} from {pid}", r.task.id)),
                "the first worker answered"
            );
        }
    }
    let s = w.stats();
    assert_eq!((s.restarts, s.crashed, s.not_run), (0, 0, 0), "{s:?}");
    records
}

fn failed(record: &TaskRecord<SimpleTask>) -> &str {
    match &record.outcome {
        Outcome::Failed(why) => why,
        other => panic!("{}: expected Failed, got {other:?}", record.task.id),
    }
}

#[test]
fn a_5_kb_error_or_panic_under_a_4096_byte_frame_is_truncated_and_the_worker_survives() {
    within(Duration::from_secs(30), || {
        let names = [
            "long-error",
            "ping1",
            "long-panic",
            "ping2",
            "multibyte-error",
            "ping3",
        ];
        let records = run(4096, &names);

        let error = failed(&records[0]);
        assert!(error.len() <= 4096, "{} bytes", error.len());
        assert!(
            error.len() >= 3000,
            "cut far too short: {} bytes",
            error.len()
        );
        assert!(error.starts_with(ERR_PREFIX), "{:?}", &error[..40]);
        assert!(error.bytes().skip(ERR_PREFIX.len()).all(|b| b == b'e'));

        let panic = failed(&records[2]);
        assert!(panic.len() <= 4096, "{} bytes", panic.len());
        assert!(
            panic.len() >= 3000,
            "cut far too short: {} bytes",
            panic.len()
        );
        assert!(panic.contains(PANIC_PREFIX), "{:?}", &panic[..60]);
        assert!(panic.contains("panicked"), "{:?}", &panic[..60]);

        // Cut at a character boundary: still whole characters.
        let multibyte = failed(&records[4]);
        assert!(multibyte.len() <= 4096, "{} bytes", multibyte.len());
        assert!(multibyte.len() >= 3000, "{} bytes", multibyte.len());
        assert!(multibyte.chars().all(|c| c == 'é'));
    });
}

#[test]
fn at_the_minimum_frame_size_a_result_too_large_is_a_short_failure() {
    within(Duration::from_secs(30), || {
        let records = run(0, &["big-result", "ping1", "long-error", "ping2"]);
        for i in [0, 2] {
            let why = failed(&records[i]);
            assert!(why.len() <= 64, "{} bytes: {why:?}", why.len());
            assert!(!why.is_empty(), "an empty message");
        }
        assert!(
            failed(&records[0]).contains("result"),
            "{:?}",
            failed(&records[0])
        );
        assert!(failed(&records[2]).starts_with(ERR_PREFIX));
    });
}
