//! Starting, dropping and scoping a facade: clear start-up errors, nothing
//! left behind, outcomes never lost.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{child_pids, process_exists, stock_worker, test_worker, within};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CancelReason, CrashReason, NotRunReason, Outcome, Output, OutputStream, RestartPolicy,
    SpawnError, WorkerCommand, WorkingProcessFacade,
};

#[test]
fn missing_binary_is_a_clear_error() {
    let err =
        WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("/no/such/worker-binary"))
            .expect_err("must fail");
    assert!(matches!(&err, SpawnError::NotFound { path } if path.ends_with("worker-binary")));
    assert!(err.to_string().contains("/no/such/worker-binary"), "{err}");
}

#[test]
fn non_executable_binary_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("wf-test-noexec-{}", std::process::id()));
    std::fs::write(&path, b"not a program").expect("write");
    let err = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new(&path))
        .expect_err("must fail");
    std::fs::remove_file(&path).expect("cleanup");
    assert!(matches!(err, SpawnError::NotExecutable { .. }), "{err:?}");
}

#[test]
fn worker_exiting_before_handshake_reports_status_and_stderr() {
    let cmd = WorkerCommand::new("/bin/sh")
        .args(["-c", "echo 'cannot load model' >&2; exit 3"])
        .output(Output::Silent);
    let err = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect_err("must fail");
    match &err {
        SpawnError::ExitedEarly {
            path,
            status,
            stderr_tail,
        } => {
            assert_eq!(path.to_str(), Some("/bin/sh"));
            assert_eq!(status.code, Some(3));
            assert_eq!(stderr_tail, &vec!["cannot load model".to_string()]);
        }
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("exited with code 3") && text.contains("cannot load model"),
        "{text}"
    );
}

#[test]
fn handshake_timeout_kills_the_silent_worker() {
    within(Duration::from_secs(20), || {
        let cmd = WorkerCommand::new("/bin/sh")
            .args(["-c", "echo waiting >&2; exec sleep 30"])
            .handshake_timeout(Duration::from_millis(300))
            .output(Output::Silent);
        let before = child_pids();
        let err = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect_err("must time out");
        match &err {
            SpawnError::HandshakeTimeout {
                timeout,
                stderr_tail,
                ..
            } => {
                assert_eq!(*timeout, Duration::from_millis(300));
                assert_eq!(stderr_tail, &vec!["waiting".to_string()]);
            }
            other => panic!("expected HandshakeTimeout, got {other:?}"),
        }
        // Other tests of this binary start children at the same time: a
        // leak of this one is a child named `sleep` (its worker after the
        // exec; the name stays on a zombie too). No other test here runs
        // `sleep`.
        let leaked: Vec<_> = child_pids()
            .into_iter()
            .filter(|p| !before.contains(p))
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sleep\n")
            })
            .collect();
        assert!(leaked.is_empty(), "children left: {leaked:?}");
    });
}

#[test]
fn drop_without_collect_leaves_no_process() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .grace_period(Duration::from_millis(200))
            .spawn()
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let handle = w.submit(SimpleTask::new("running", 0.0)).expect("accepted");
        w.process_task(SimpleTask::new("queued", 10.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("queued2", 0.0))
            .expect("accepted");
        assert!(handle.wait().expect("outcome").is_completed());
        assert!(process_exists(pid));
        drop(w);
        assert!(
            !process_exists(pid),
            "worker {pid} still exists (zombie or orphan)"
        );
    });
}

#[test]
fn drop_cancels_tasks_that_had_not_started() {
    within(Duration::from_secs(30), || {
        let (cmd, lines) = common::announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .grace_period(Duration::from_millis(200))
            .spawn()
            .expect("spawn");
        let long = w
            .submit(SimpleTask::new("announce-long", 30.0))
            .expect("accepted");
        // Many behind it: most never reach the worker's socket window.
        let rest: Vec<_> = (0..3000)
            .map(|i| {
                w.submit(SimpleTask::new(format!("t{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        // Drop only once the worker is inside the long task.
        common::wait_for_line(&lines, "started announce-long");
        drop(w);
        // The running task is killed after the grace period; the rest never ran.
        assert!(matches!(long.wait().expect("outcome"), Outcome::Crashed(_)));
        let last = rest
            .into_iter()
            .last()
            .expect("some")
            .wait()
            .expect("outcome");
        assert!(matches!(last, Outcome::NotRun(_)), "{last:?}");
    });
}

#[test]
fn guard_delivers_records_on_drop() {
    within(Duration::from_secs(30), || {
        let (tx, rx) = mpsc::channel();
        {
            let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker())
                .expect("spawn")
                .collect_on_drop(move |records| {
                    let _ = tx.send(records);
                });
            w.process_task(SimpleTask::new("a", 0.0)).expect("accepted");
            w.process_task(SimpleTask::new("b", 0.0)).expect("accepted");
        }
        let records = rx.recv().expect("sink called").expect("collected");
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.outcome.is_completed()));
    });
}

#[test]
fn guard_delivers_records_during_a_panic() {
    within(Duration::from_secs(30), || {
        let (tx, rx) = mpsc::channel();
        let pid = Arc::new(Mutex::new(0));
        let pid_in = pid.clone();
        let result = std::panic::catch_unwind(move || {
            let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker())
                .expect("spawn")
                .collect_on_drop(move |records| {
                    let _ = tx.send(records);
                });
            *pid_in.lock().expect("lock") = w.worker_pid().expect("running");
            w.process_task(SimpleTask::new("before-panic", 0.0))
                .expect("accepted");
            panic!("caller panics with work in flight");
        });
        assert!(result.is_err());
        let records = rx
            .recv()
            .expect("sink called during unwind")
            .expect("collected");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("before-panic solved after 0".into())
        );
        assert!(!process_exists(*pid.lock().expect("lock")));
    });
}

#[test]
fn guard_finish_returns_records_instead() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker())
            .expect("spawn")
            .collect_on_drop(|_| panic!("the sink must not run after finish"));
        w.process_task(SimpleTask::new("a", 0.0)).expect("accepted");
        assert_eq!(w.finish().expect("collected").len(), 1);
    });
}

#[test]
fn facade_made_on_a_thread_that_exits_keeps_its_worker() {
    within(Duration::from_secs(30), || {
        // PR_SET_PDEATHSIG follows the thread that spawned the worker: the
        // facade spawns from its own long-lived thread, so this must work.
        let w = std::thread::spawn(|| {
            WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
                .restart(RestartPolicy::Never)
                .spawn()
                .expect("spawn")
        })
        .join()
        .expect("thread");
        // The creating thread has exited: a death signal tied to it would
        // have been sent by now.
        let pid = w.worker_pid().expect("running");
        w.process_task(SimpleTask::new("still-here", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert!(
            records[0].outcome.is_completed(),
            "{:?}",
            records[0].outcome
        );
        assert_eq!(w.stats().restarts, 0);
        assert!(!process_exists(pid));
    });
}

#[test]
fn output_lines_arrive_whole_and_attributed() {
    within(Duration::from_secs(30), || {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let cmd = test_worker().output(Output::capture(move |line| {
            sink.lock().expect("lock").push(line);
        }));
        let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
        let pid = w.worker_pid().expect("running");
        let long = "x".repeat(100_000);
        w.process_task(SimpleTask::new(format!("print:{long}"), 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("print:hello world", 0.0))
            .expect("accepted");
        w.collect_tasks().expect("collect");
        let lines = lines.lock().expect("lock");
        let ours: Vec<_> = lines
            .iter()
            .filter(|l| l.text == "hello world" || l.text.starts_with('x'))
            .collect();
        assert!(ours.iter().all(|l| l.pid == pid));
        let hello: Vec<_> = ours
            .iter()
            .filter(|l| l.text == "hello world")
            .map(|l| l.stream)
            .collect();
        assert!(hello.contains(&OutputStream::Stdout) && hello.contains(&OutputStream::Stderr));
        // A 100 kB line is handed on in 64 KiB pieces at most, never mixed.
        let xs: usize = ours
            .iter()
            .filter(|l| l.stream == OutputStream::Stdout && l.text.starts_with('x'))
            .map(|l| {
                assert!(l.text.bytes().all(|b| b == b'x'));
                l.text.len()
            })
            .sum();
        assert_eq!(xs, 100_000);
    });
}

#[test]
fn terminate_kills_now_and_cancels_the_rest() {
    within(Duration::from_secs(30), || {
        let (cmd, lines) = common::announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
        let pid = w.worker_pid().expect("running");
        let running = w
            .submit(SimpleTask::new("announce-long", 30.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("queued", 0.0))
            .expect("accepted");
        common::wait_for_line(&lines, "started announce-long");
        w.terminate("lease expired");
        match running.wait().expect("outcome") {
            Outcome::Crashed(crash) => assert_eq!(
                crash.reason,
                Some(CrashReason::Terminated("lease expired".into()))
            ),
            other => panic!("expected Crashed, got {other:?}"),
        }
        w.process_task(SimpleTask::new("after", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        for r in &records {
            assert_eq!(
                r.outcome,
                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Terminated(
                    "lease expired".into()
                )))
            );
        }
        assert_eq!(records.len(), 2);
        assert!(!process_exists(pid));
    });
}
