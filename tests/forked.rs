//! A facade used in a process forked after the facade was made (issue 8,
//! "Faults it must survive"). The fork has a copy of the facade but not its
//! engine thread nor its workers: `process_task`, `submit` and
//! `collect_tasks` there must fail at once with `Forked` errors naming the
//! owner, dropping the copy must return without touching the workers, and
//! the parent's facade must go on working.
//!
//! The child reports what it saw through a pipe, then `_exit`s; the parent
//! waits for that report with a deadline, so a hang in the child fails the
//! test instead of hanging it.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{test_worker, within};
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe};
use worker_facade::simple::SimpleTask;
use worker_facade::{CollectError, Outcome, SubmitError, WorkingProcessFacade};

/// What the child does with its copy of the facade; one line per call.
fn in_the_child(w: WorkingProcessFacade<SimpleTask>, report: OwnedFd) -> ! {
    let mut out = String::new();
    match w.process_task(SimpleTask::new("from-fork", 0.0)) {
        Err(SubmitError::Forked { task, owner }) => {
            out += &format!("process_task Forked owner={owner} task={}\n", task.id)
        }
        other => out += &format!("process_task other {other:?}\n"),
    }
    match w.submit(SimpleTask::new("from-fork-2", 0.0)) {
        Err(e @ SubmitError::Forked { .. }) => {
            out += &format!("submit Forked {e}\n");
        }
        Err(e) => out += &format!("submit other {e:?}\n"),
        Ok(_) => out += "submit other Ok\n",
    }
    match w.collect_tasks() {
        Err(CollectError::Forked { owner }) => out += &format!("collect Forked owner={owner}\n"),
        other => out += &format!("collect other {:?}\n", other.map(|r| r.len())),
    }
    drop(w);
    out += "dropped\n";
    let bytes = out.as_bytes();
    // SAFETY: writes our own buffer to the pipe we own, then ends this
    // process without running the parent's destructors or atexit handlers
    // (this is a fork of a multi-threaded test process).
    unsafe {
        libc::write(report.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// Waits for the child's exit, at most 10 s (then kills it and fails).
fn reap_within(child: Pid) -> WaitStatus {
    let start = Instant::now();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive => {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    panic!("the forked child hung");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            status => return status,
        }
    }
}

#[test]
fn a_forked_copy_fails_clearly_and_the_parent_goes_on() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(test_worker()).expect("spawn");
        let pid = w.worker_pid().expect("running");
        assert!(
            w.submit(SimpleTask::new("before", 0.0))
                .expect("ok")
                .wait()
                .expect("outcome")
                .is_completed()
        );
        let (read, write) = pipe().expect("pipe");
        let me = std::process::id();
        // SAFETY: the child only calls into the facade (which checks its
        // owner first and takes no lock the parent's threads could hold
        // besides the allocator's, which glibc makes fork-safe), writes to
        // the pipe and `_exit`s.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(read);
                in_the_child(w, write)
            }
            ForkResult::Parent { child } => child,
        };
        drop(write);
        let status = reap_within(child);
        let mut report = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut report)
            .expect("read the report");
        assert_eq!(status, WaitStatus::Exited(child, 0), "{report}");
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines,
            [
                format!("process_task Forked owner={me} task=from-fork").as_str(),
                lines.get(1).copied().unwrap_or("submit missing"),
                format!("collect Forked owner={me}").as_str(),
                "dropped",
            ],
            "{report}"
        );
        assert!(lines[1].starts_with("submit Forked "), "{report}");
        assert!(lines[1].contains("fork"), "the error says why: {report}");
        assert!(
            lines[1].contains(&me.to_string()),
            "names the owner: {report}"
        );

        // The parent's facade and worker are untouched.
        assert_eq!(w.worker_pid(), Some(pid), "the same worker");
        let h = w.submit(SimpleTask::new("after", 0.0)).expect("accepted");
        assert_eq!(
            h.wait(),
            Ok(Outcome::Completed("after solved after 0".into()))
        );
        w.process_task(SimpleTask::new("last", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("last solved after 0".into())
        );
        assert_eq!(w.stats().restarts, 0);
    });
}
