//! A program that forgets `run_if_worker` (issue 8, "Faults it must
//! survive"). The test re-runs this test binary as its worker through
//! `WorkerCommand::current_exe()`, selecting the very test function that
//! made the facade, so the child does what a user's `main` without
//! `run_if_worker` would do: it makes a facade first thing. That must fail
//! in the child with `SpawnError::RunIfWorkerMissing` (which names
//! `run_if_worker`), the parent must get the same error, and there must be
//! no chain of processes: each process this test starts records its pid in
//! a file, and exactly one child ever ran.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::capture_lines;
use worker_facade::simple::SimpleTask;
use worker_facade::{SpawnError, WorkerCommand, WorkingProcessFacade};

/// This test's own name, to select it when the binary is re-run.
const NAME: &str = "a_worker_that_forgot_run_if_worker_refuses_to_make_a_facade";
/// The file in which every child appends its pid.
const PIDS_ENV: &str = "FORGOT_RUN_IF_WORKER_PIDS";

/// The libtest arguments that run only this (not ignored) test.
const ARGS: [&str; 5] = ["--exact", NAME, "--nocapture", "--test-threads=1", "-q"];

fn assert_names_run_if_worker(err: &SpawnError) {
    assert!(
        matches!(err, SpawnError::RunIfWorkerMissing { .. }),
        "expected RunIfWorkerMissing, got {err:?}"
    );
    assert!(err.to_string().contains("run_if_worker"), "{err}");
}

#[test]
fn a_worker_that_forgot_run_if_worker_refuses_to_make_a_facade() {
    let worker = worker_facade::worker::is_worker();
    let pids = match std::env::var_os(PIDS_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let dir = std::env::temp_dir().join(format!("wf-forgot-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            dir.join("pids")
        }
    };
    if worker {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pids)
            .expect("pids file");
        writeln!(f, "{}", std::process::id()).expect("record pid");
        // A safety net should the refusal ever break: a chain of test
        // binaries, each starting the next, stops here after a few.
        let depth = std::fs::read_to_string(&pids).map_or(0, |s| s.lines().count());
        if depth > 3 {
            #[allow(clippy::exit)] // a test binary re-run as a process of its own
            std::process::exit(3);
        }
    }
    // What a user's main does first when it forgot run_if_worker.
    let (cmd, lines) = capture_lines(
        WorkerCommand::current_exe()
            .args(ARGS)
            .env(PIDS_ENV, &pids)
            .handshake_timeout(Duration::from_secs(5)),
    );
    let spawned = common::within(Duration::from_secs(20), move || {
        WorkingProcessFacade::<SimpleTask>::spawn(cmd).map(|_| ())
    });
    let err = spawned.expect_err("a facade made by a worker that never served");
    assert_names_run_if_worker(&err);
    if worker {
        // The child: say so where the parent can see it, and end as a
        // user's main would.
        eprintln!("child {} got: {err}", std::process::id());
        return;
    }
    // The parent.
    let recorded = std::fs::read_to_string(&pids).unwrap_or_default();
    let children: Vec<&str> = recorded.lines().collect();
    assert_eq!(children.len(), 1, "processes started: {children:?}");
    assert_ne!(children[0], std::process::id().to_string());
    // The child's own attempt failed the same way (when it could still say
    // so: the parent kills it as soon as it hears the refusal).
    let mut heard = false;
    for l in lines.lock().expect("lines").iter() {
        if l.text.starts_with("child ") && l.text.contains(" got: ") {
            assert!(l.text.contains("run_if_worker"), "{}", l.text);
            heard = true;
        }
    }
    eprintln!("the child's own error reached its stderr before it was killed: {heard}");
    let _ = std::fs::remove_dir_all(pids.parent().expect("its dir"));
}
