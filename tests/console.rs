//! The mutexed console: workers' output reaches the parent's stderr in whole
//! lines, prefixed with the worker's pid. The test re-runs this binary as the
//! parent so that it can read that parent's stderr.

mod common;

use std::process::Command;

use worker_facade::simple::SimpleTask;
use worker_facade::{WorkerCommand, WorkingProcessFacade};

#[test]
#[ignore = "not a test: the parent whose stderr prefixed_lines_are_whole reads"]
fn printing_parent_main() {
    let Some(worker) = std::env::var_os("PRINTING_PARENT_WORKER") else {
        return;
    };
    let cmd = || WorkerCommand::new(&worker).args(common::TEST_WORKER_ARGS);
    // Two workers printing long lines at once, plus the parent itself.
    let a = WorkingProcessFacade::<SimpleTask>::spawn(cmd()).expect("spawn");
    let b = WorkingProcessFacade::<SimpleTask>::spawn(cmd()).expect("spawn");
    let line_a = format!("print:{}", "a".repeat(3000));
    let line_b = format!("print:{}", "b".repeat(3000));
    for _ in 0..200 {
        a.process_task(SimpleTask::new(line_a.clone(), 0.0))
            .expect("accepted");
        b.process_task(SimpleTask::new(line_b.clone(), 0.0))
            .expect("accepted");
        eprintln!("parent line");
    }
    println!(
        "pids {} {}",
        a.worker_pid().expect("a"),
        b.worker_pid().expect("b")
    );
    a.collect_tasks().expect("collect");
    b.collect_tasks().expect("collect");
}

#[test]
fn prefixed_lines_are_whole_and_attributed() {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "printing_parent_main",
            "--nocapture",
            "-q",
        ])
        .env("PRINTING_PARENT_WORKER", &exe)
        .output()
        .expect("run parent");
    assert!(
        out.status.success(),
        "parent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .expect("parent printed the worker pids")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want_a = format!("[worker {}] {}", pids[0], "a".repeat(3000));
    let want_b = format!("[worker {}] {}", pids[1], "b".repeat(3000));
    let (mut seen_a, mut seen_b) = (0, 0);
    for line in stderr.lines() {
        if line.contains("aaaa") {
            assert_eq!(line, want_a, "a line was cut or mixed");
            seen_a += 1;
        } else if line.contains("bbbb") {
            assert_eq!(line, want_b, "a line was cut or mixed");
            seen_b += 1;
        }
    }
    // Each print task writes its line to the worker's stdout and stderr.
    assert_eq!((seen_a, seen_b), (400, 400));
}
