//! A host that runs its own `waitpid(-1)` reaper thread (issue 8, "Faults it
//! must survive"), as some libraries and init-like programs do: it reaps the
//! facade's workers before the facade can. The facade must never take that
//! for an exit status, never signal the (maybe reused) pid or its group, and
//! still give every task exactly one outcome: the crashed task says another
//! part of the program reaped the worker, and later tasks run on a
//! replacement.
//!
//! To make the race deterministic, the engine is held (see [`common::Gate`])
//! from the moment the worker announces its death until the reaper has
//! reaped it and the test has started its own processes (one of them with
//! the dead worker's pid when `ns_last_pid` is writable).
//!
//! Process-global (a thread that reaps every child), so this file is its
//! own process.

mod common;

use std::collections::BTreeSet;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use common::{Foreign, gated, test_worker, within};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use worker_facade::simple::SimpleTask;
use worker_facade::{CrashReason, Outcome, StatusLost, TaskRecord, WorkingProcessFacade};

/// The pids the host's reaper reaped.
static REAPED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Starts the host's reaper: a thread that reaps any child, forever.
fn start_reaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::Builder::new()
            .name("host-reaper".into())
            .spawn(|| {
                loop {
                    match waitpid(None, None) {
                        Ok(status) => {
                            if let Some(pid) = status.pid() {
                                if !matches!(status, WaitStatus::StillAlive) {
                                    REAPED.lock().expect("reaped").insert(pid.as_raw() as u32);
                                }
                            }
                        }
                        Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => {}
                    }
                }
            })
            .expect("reaper thread");
    });
}

/// Waits until the host's reaper reaped `pid`.
fn wait_reaped(pid: u32) {
    let start = Instant::now();
    while !REAPED.lock().expect("reaped").contains(&pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the host's reaper never reaped worker {pid}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `record` is `Crashed` with the status marked lost because someone else
/// reaped the worker: no exit code, no signal.
fn assert_reaped_elsewhere(record: &TaskRecord<SimpleTask>, pid: u32) {
    let Outcome::Crashed(crash) = &record.outcome else {
        panic!("expected Crashed, got {:?}", record.outcome);
    };
    assert_eq!(
        crash.reason,
        Some(CrashReason::StatusLost(StatusLost::ReapedElsewhere)),
        "{crash}"
    );
    assert_eq!(crash.exit.pid, pid, "{crash}");
    assert_eq!(crash.exit.code, None, "a made-up exit code: {crash}");
    assert_eq!(crash.exit.signal, None, "a made-up signal: {crash}");
    assert!(crash.to_string().contains("reaped"), "{crash}");
}

/// Runs `before`, `names`... with the worker dying of the task at index
/// `dying` (which prints `marker` first); while the engine is held, waits
/// for the host's reaper, then starts foreign processes (one with the dead
/// worker's pid, if possible); then collects. Checks every outcome and that
/// every foreign process survived.
fn run_with_a_reaped_death(
    names: &[&str],
    dying: usize,
    marker: &'static str,
    kill: bool,
) -> Vec<TaskRecord<SimpleTask>> {
    start_reaper();
    let (cmd, gate) = gated(test_worker(), marker);
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .spawn()
        .expect("spawn");
    for name in names {
        let seconds = if name.starts_with("announce") {
            3600.0
        } else {
            0.0
        };
        w.process_task(SimpleTask::new(*name, seconds))
            .expect("accepted");
    }
    let pid = gate.wait_closed();
    if kill {
        common::signal(pid, Signal::SIGKILL);
    }
    wait_reaped(pid);
    let (reused, got_pid) = Foreign::sleep_with_pid(pid);
    let others: Vec<Foreign> = (0..4).map(|_| Foreign::sleep()).collect();
    eprintln!("worker pid {pid} reused by a foreign process: {got_pid}");
    gate.open();

    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), names.len());
    for (i, r) in records.iter().enumerate() {
        if i == dying {
            assert_reaped_elsewhere(r, pid);
        } else {
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("{} solved after 0", r.task.id)),
                "task {i}"
            );
        }
    }
    let stats = w.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(
        (stats.completed, stats.crashed, stats.restarts),
        (names.len() as u64 - 1, 1, 1),
        "{stats:?}"
    );
    assert!(
        reused.alive(),
        "the process that got pid {} (the worker's: {got_pid}) was signalled",
        reused.pid
    );
    for f in &others {
        assert!(f.alive(), "foreign process {} was signalled", f.pid);
    }
    records
}

#[test]
fn worker_crash_mid_stream_reaped_by_the_host_reports_the_status_lost() {
    within(Duration::from_secs(30), || {
        // SimpleTask's crash prints "freak out" on stderr, then aborts.
        let names = ["a", "b", "c", "crash", "d", "e", "f"];
        run_with_a_reaped_death(&names, 3, "freak out", false);
    });
}

#[test]
fn worker_killed_and_reaped_by_the_host_never_gets_its_pid_signalled() {
    within(Duration::from_secs(30), || {
        let names = ["a", "announce-hang", "b", "c"];
        run_with_a_reaped_death(&names, 1, "started announce-hang", true);
    });
}
