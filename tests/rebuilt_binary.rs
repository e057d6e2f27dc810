//! A worker started after the program's binary was replaced or deleted (a
//! `cargo build` during a long run) still runs the program that is running:
//! `WorkerCommand::current_exe` executes the running image through a
//! descriptor, never by its path again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, WorkerCommand, WorkingProcessFacade};

const PARENT_ENV: &str = "WF_REBUILT_PARENT";

/// The parent, run from a copy of this test binary: its first worker
/// crashes; it says READY and waits for GO (meanwhile the test replaces the
/// copy with junk); then a task needs a replacement worker.
#[test]
#[ignore = "not a test: the parent side of the test below"]
fn rebuilt_parent_main() {
    if std::env::var_os(PARENT_ENV).is_none() {
        return;
    }
    let cmd = WorkerCommand::current_exe()
        .args(common::TEST_WORKER_ARGS)
        .output(Output::Silent);
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    let first = w.submit(SimpleTask::new("crash", 0.0)).expect("accepted");
    assert!(matches!(
        first.wait().expect("answered"),
        Outcome::Crashed(_)
    ));
    println!("READY");
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("GO");
    let after = w.submit(SimpleTask::new("after", 0.0)).expect("accepted");
    let outcome = after
        .wait_timeout(Duration::from_secs(20))
        .expect("answered");
    println!("RESULT {}", outcome.display_output());
    let pid = w.worker_pid().unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    println!("EXE {}", exe.display());
    w.collect_tasks().expect("collect");
}

#[test]
fn a_replacement_worker_runs_the_running_build_after_its_file_was_replaced() {
    common::within(Duration::from_secs(60), || {
        let dir = std::env::temp_dir().join(format!("wf-rebuilt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let copy = dir.join("program");
        std::fs::copy(std::env::current_exe().expect("test binary"), &copy).expect("copy");
        let mut parent = Command::new(&copy)
            .args(common::libtest_args("rebuilt_parent_main"))
            .env(PARENT_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the parent");
        let mut out = BufReader::new(parent.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.starts_with("READY") {
            line.clear();
            assert!(
                out.read_line(&mut line).expect("read") > 0,
                "the parent ended early"
            );
        }
        // The build is replaced: the file is gone, junk in its place.
        std::fs::remove_file(&copy).expect("remove");
        std::fs::write(&copy, "not a program\n").expect("junk");
        let mut stdin = parent.stdin.take().expect("stdin");
        writeln!(stdin, "GO").expect("go");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let status = parent.wait().expect("reap");
        assert!(status.success(), "{status}: {rest}");
        assert!(
            rest.contains("RESULT after solved after 0"),
            "the replacement ran the running build: {rest}"
        );
        assert!(
            rest.contains("(deleted)"),
            "it runs the old, deleted image: {rest}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
