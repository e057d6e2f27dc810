//! Output attributed to its task (issue 11, item 9): with
//! `Output::Capture`, every line carries the ID of the task that was
//! running when it was printed — exactly, also for lines printed as the
//! very last thing before the task ends, by `println!`, by a raw `write(2)`
//! on the descriptor, as a partial line without newline, or by a child
//! process of the handler — and never the next task's.
//!
//! The worker is this test binary re-run: `attribution_worker_main` prints
//! a line before serving, then serves [`handler`].

mod common;

use std::collections::HashMap;
use std::os::fd::AsFd;

use worker_facade::simple::SimpleTask;
use worker_facade::{OutputStream, TaskId, WorkerCommand, WorkingProcessFacade};

/// Prints four lines about the task, last thing before returning.
fn handler(t: SimpleTask) -> Result<String, String> {
    let name = &t.id;
    println!("out {name}");
    let raw = format!("raw {name}\n");
    nix::unistd::write(std::io::stdout().as_fd(), raw.as_bytes()).map_err(|e| e.to_string())?;
    if name.ends_with('0') {
        // A child of the handler writes to the same pipe.
        std::process::Command::new("sh")
            .args(["-c", "echo child $0", name])
            .status()
            .map_err(|e| e.to_string())?;
    }
    eprint!("partial {name}"); // no newline: the task ends mid-line
    Ok(name.clone())
}

#[test]
#[ignore = "not a test: the worker of the tests below"]
fn attribution_worker_main() {
    if worker_facade::worker::is_worker() {
        eprintln!("before any task");
        worker_facade::worker::serve(handler);
    }
}

#[test]
fn every_line_is_attributed_to_the_task_that_printed_it() {
    let _dog = common::watchdog("every_line_is_attributed");
    let (cmd, lines) = common::capture_lines(
        WorkerCommand::current_exe().args(common::libtest_args("attribution_worker_main")),
    );
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .workers(2)
        .spawn()
        .expect("spawn");
    let n = 300;
    let mut ids: HashMap<String, TaskId> = HashMap::new();
    for i in 0..n {
        let name = format!("t{i}");
        let id = w
            .process_task(SimpleTask::new(&name, 0.0))
            .expect("accepted");
        ids.insert(name, id);
    }
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), n);
    assert!(records.iter().all(|r| r.outcome.is_completed()));
    let lines = lines.lock().expect("lines");
    let mut checked = 0;
    for line in lines.iter() {
        if line.text == "before any task" {
            assert_eq!(line.task, None, "{line:?}");
            continue;
        }
        // The test harness of the re-run binary prints lines of its own.
        let Some((what, name)) = line.text.split_once(' ') else {
            continue;
        };
        let stream = match what {
            "out" | "raw" | "child" => OutputStream::Stdout,
            "partial" => OutputStream::Stderr,
            _ => continue,
        };
        let want = ids
            .get(name)
            .unwrap_or_else(|| panic!("no task {name}: {line:?}"));
        assert_eq!(line.task, Some(*want), "{line:?} belongs to {name}");
        assert_eq!(line.stream, stream, "{line:?}");
        checked += 1;
    }
    // 3 lines per task, and a child's line for every tenth.
    assert_eq!(checked, 3 * n + n / 10, "every line arrived");
    assert!(
        !lines.iter().any(|l| l.text.contains("WF:")),
        "no marker reached the user"
    );
}
