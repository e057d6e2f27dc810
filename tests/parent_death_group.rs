//! A parent SIGKILLed at a bad moment (issue 8, "Faults it must survive"):
//!
//! - while its worker has children of its own (started by the handler, in
//!   the worker's process group): the worker and its whole process group
//!   must be gone within 1 s;
//! - in the middle of a handshake (a worker that reads its bootstrap and
//!   never says hello): nothing may be left on the filesystem, neither then
//!   nor during the handshake. `TMPDIR` and `XDG_RUNTIME_DIR` point parent
//!   and worker at a fresh directory that must stay empty.
//!
//! The parent is this test binary re-run (`doomed_group_parent_main`); it
//! reports on stdout. Its workers are this binary too.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{group_members, proc_pgid, running};
use nix::sys::signal::Signal;
use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};

const MODE_ENV: &str = "WF_DOOMED_MODE";

// ---------------------------------------------------------------------------
// The workers.

/// `spawn:N` starts N `sleep 60` children in the worker's process group
/// and answers their pids; `hang` says `started hang` on stderr and sleeps.
fn group_handler(t: SimpleTask) -> Result<String, String> {
    if let Some(n) = t.id.strip_prefix("spawn:") {
        let n: usize = n.parse().map_err(|_| "spawn:N")?;
        let mut pids = Vec::new();
        for _ in 0..n {
            let child = Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            pids.push(child.id().to_string());
        }
        return Ok(pids.join(" "));
    }
    if t.id == "hang" {
        eprintln!("started hang");
        std::thread::sleep(Duration::from_secs(3600));
    }
    Ok(t.id)
}

#[test]
#[ignore = "not a test: the worker whose children share its process group"]
fn group_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(group_handler);
    }
}

/// Reads its bootstrap, says who it is, and never says hello.
#[test]
#[ignore = "not a test: a worker that never completes its handshake"]
fn slow_hello_worker_main() {
    if worker_facade::worker::is_worker() {
        // Die with the parent, whatever the library does.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let _boot = common::hand_wire::read_boot();
        eprintln!("slow worker {}", std::process::id());
        common::hand_wire::sleep_forever();
    }
}

// ---------------------------------------------------------------------------
// The parent to kill.

fn report(key: &str, value: impl std::fmt::Display) {
    println!("REPORT {key} {value}");
}

#[test]
#[ignore = "not a test: the parent process that the tests below SIGKILL"]
fn doomed_group_parent_main() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    match mode.as_str() {
        "children" => {
            let (cmd, lines) = common::lines_on_channel(
                WorkerCommand::current_exe().args(common::libtest_args("group_worker_main")),
            );
            let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
            let pid = w.worker_pid().expect("running");
            let children = w
                .submit(SimpleTask::new("spawn:3", 0.0))
                .expect("accepted")
                .wait()
                .expect("outcome")
                .completed()
                .expect("children started");
            w.process_task(SimpleTask::new("hang", 0.0))
                .expect("accepted");
            common::wait_for_line(&lines, "started hang");
            report("worker", pid);
            report("children", children);
            report("ready", "");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "handshake" => {
            let cmd = WorkerCommand::current_exe()
                .args(common::libtest_args("slow_hello_worker_main"))
                .handshake_timeout(Duration::from_secs(600))
                .output(Output::capture(|line| report("line", line.text)));
            report("spawning", "");
            let result = WorkingProcessFacade::<SimpleTask>::spawn(cmd);
            report("panic", format!("the handshake ended: {:?}", result.err()));
        }
        other => report("panic", format!("unknown mode {other}")),
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// The re-run parent in `mode`, and its reports as they come.
fn start_parent(mode: &str, tmp: Option<&Path>) -> (Child, mpsc::Receiver<(String, String)>) {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(common::libtest_args("doomed_group_parent_main"))
        .env(MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(dir) = tmp {
        cmd.env("TMPDIR", dir).env("XDG_RUNTIME_DIR", dir);
    }
    let mut parent = cmd.spawn().expect("start the parent");
    let stdout = parent.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("REPORT ") {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                if tx.send((k.to_string(), v.to_string())).is_err() {
                    break;
                }
            }
        }
    });
    (parent, rx)
}

/// Reads reports until `until` returns a value; kills the parent and fails
/// after 30 s.
fn read_until<R>(
    parent: &mut Child,
    rx: &mpsc::Receiver<(String, String)>,
    reports: &mut BTreeMap<String, String>,
    mut until: impl FnMut(&str, &str) -> Option<R>,
) -> R {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((k, v)) => {
                if k == "panic" {
                    let _ = parent.kill();
                    let _ = parent.wait();
                    panic!("the parent failed: {v}");
                }
                if let Some(r) = until(&k, &v) {
                    return r;
                }
                reports.insert(k, v);
            }
            Err(e) => {
                let _ = parent.kill();
                let _ = parent.wait();
                panic!("no report from the parent ({e}); so far: {reports:?}");
            }
        }
    }
}

fn sigkill(parent: &mut Child) {
    common::signal(parent.id(), Signal::SIGKILL);
    parent.wait().expect("reap the parent");
}

#[test]
fn parent_sigkill_takes_the_worker_and_its_whole_group_down_within_1_s() {
    let (mut parent, rx) = start_parent("children", None);
    let mut reports = BTreeMap::new();
    read_until(&mut parent, &rx, &mut reports, |k, _| {
        (k == "ready").then_some(())
    });
    let worker: u32 = reports["worker"].parse().expect("pid");
    let children: Vec<u32> = reports["children"]
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(children.len(), 3);
    for &c in &children {
        assert!(running(c), "child {c} runs");
        assert_eq!(
            proc_pgid(c),
            Some(worker),
            "child {c} is in the worker's group"
        );
    }

    sigkill(&mut parent);
    let killed = Instant::now();
    let mut gone_after = None;
    let mut worker_gone_after = None;
    while killed.elapsed() < Duration::from_secs(5) {
        if worker_gone_after.is_none() && !running(worker) {
            worker_gone_after = Some(killed.elapsed());
        }
        if !running(worker) && group_members(worker).is_empty() {
            gone_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let worker_gone = !running(worker);
    let left = group_members(worker);
    // Clean up before asserting: the group may have outlived everything.
    if !left.is_empty() {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGKILL);
    }
    eprintln!(
        "after the parent's SIGKILL: worker gone after {worker_gone_after:?}; \
         group gone after {gone_after:?}; members left after 5 s: {left:?}"
    );
    let took = gone_after.unwrap_or_else(|| {
        panic!(
            "5 s after the parent's SIGKILL: worker {worker} gone: {worker_gone}; \
             its group still has {left:?} (its children: {children:?})"
        )
    });
    assert!(
        took < Duration::from_secs(1),
        "the group was gone after {took:?}"
    );
}

/// Every entry under `dir`, recursively.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        out.push(e.path().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(entries(&e.path()));
        }
    }
    out
}

#[test]
fn parent_sigkill_mid_handshake_leaves_nothing_on_the_filesystem() {
    let tmp = std::env::temp_dir().join(format!("wf-doomed-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("fresh dir");
    let (mut parent, rx) = start_parent("handshake", Some(&tmp));
    let mut reports = BTreeMap::new();
    let worker: u32 = read_until(&mut parent, &rx, &mut reports, |k, v| {
        (k == "line")
            .then(|| v.strip_prefix("slow worker ")?.parse().ok())
            .flatten()
    });
    assert!(reports.contains_key("spawning"), "{reports:?}");
    // Mid-handshake: the worker has read its bootstrap, the parent waits.
    let during = entries(&tmp);
    sigkill(&mut parent);
    // The worker dies with its parent (it asked for that itself).
    let gone = common::wait_not_running(worker, Duration::from_secs(5));
    if gone.is_none() {
        common::signal(worker, Signal::SIGKILL);
    }
    let after = entries(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        gone.is_some(),
        "the slow worker {worker} outlived its parent"
    );
    assert!(during.is_empty(), "left during the handshake: {during:?}");
    assert!(after.is_empty(), "left after the parent's death: {after:?}");
}
