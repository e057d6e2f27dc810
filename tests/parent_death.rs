//! A worker never outlives its parent, even when the parent is SIGKILLed.
//! Its own file: the test re-runs this binary as the parent to kill.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::signal;
use nix::sys::signal::Signal;
use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};

/// Whether `pid` is gone or a zombie (reparented to an init that has not
/// reaped it yet).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
#[ignore = "not a test: the parent process that parent_sigkill_takes_the_worker_down kills"]
fn doomed_parent_main() {
    let Some(worker) = std::env::var_os("DOOMED_PARENT_WORKER") else {
        return;
    };
    let w = WorkingProcessFacade::<SimpleTask>::spawn(
        WorkerCommand::new(worker).output(Output::Silent),
    )
    .expect("spawn");
    // Busy worker: the kill lands mid-task.
    w.process_task(SimpleTask::new("long", 3600.0))
        .expect("accepted");
    println!("worker-pid {}", w.worker_pid().expect("running"));
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn parent_sigkill_takes_the_worker_down() {
    let mut parent = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "doomed_parent_main",
            "--nocapture",
            "-q",
        ])
        .env("DOOMED_PARENT_WORKER", env!("CARGO_BIN_EXE_facade-worker"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn parent");
    let stdout = parent.stdout.take().expect("piped");
    let mut worker_pid = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if let Some(pid) = line.strip_prefix("worker-pid ") {
            worker_pid = Some(pid.trim().parse::<u32>().expect("pid"));
            break;
        }
    }
    let worker_pid = worker_pid.expect("the parent reported its worker");
    assert!(!dead(worker_pid));
    signal(parent.id(), Signal::SIGKILL);
    parent.wait().expect("reap parent");
    let killed = Instant::now();
    // PR_SET_PDEATHSIG makes this immediate; the bound is a hang guard.
    while !dead(worker_pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "worker {worker_pid} outlived its SIGKILLed parent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
