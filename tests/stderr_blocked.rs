//! Console output never holds up the engine (issue 8, "Faults it must
//! survive"). The parent's stderr is a pipe nobody reads, and its workers
//! print megabytes through the default `Output::Prefixed`: what stderr
//! cannot take must be dropped and counted, and `collect_tasks_timeout` and
//! `Drop` must still return on time. The same when the worker's own
//! descendants (a grandchild that escaped its process group with `setsid`)
//! hold its stdout and stderr open after it is gone.
//!
//! The parent is this test binary re-run (`blocked_parent_main`) with its
//! stderr piped and never read; it reports on stdout (elapsed times, the
//! outcomes, the counters), which the test reads with a deadline. Its
//! workers are this binary too (`chatty_worker_main`).
//!
//! Bounds are generous for a loaded 2-core CI machine: under 5 s where the
//! deadline or grace period is 1 s.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};

/// Picks what the re-run parent does.
const MODE_ENV: &str = "WF_BLOCKED_MODE";
/// Where the chatty worker writes the pid of each grandchild it starts.
const GRANDCHILD_ENV: &str = "WF_GRANDCHILD_FILE";
/// The bound on every collect and drop below.
const BOUND: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The worker.

/// `spew:N` prints N lines of 1,000 bytes on stdout and on stderr;
/// `spew-forever` never stops printing; `grandchild` starts `sleep 30` in a
/// session of its own, holding the worker's stdout and stderr, and records
/// its pid; `sleep:S` sleeps S seconds; anything else answers at once.
fn chatty(t: SimpleTask) -> Result<String, String> {
    let line = "y".repeat(1000);
    let spew = |n: u64| {
        let out = std::io::stdout();
        let err = std::io::stderr();
        for _ in 0..n {
            let _ = writeln!(out.lock(), "{line}");
            let _ = writeln!(err.lock(), "{line}");
        }
    };
    match t.id.as_str() {
        "spew-forever" => loop {
            spew(1000);
        },
        "grandchild" => {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("sleep");
            cmd.arg("30").stdin(Stdio::null());
            // SAFETY: setsid is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| e.to_string())?;
            let file = std::env::var(GRANDCHILD_ENV).map_err(|e| e.to_string())?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .map_err(|e| e.to_string())?;
            writeln!(f, "{}", child.id()).map_err(|e| e.to_string())?;
            Ok(format!("grandchild {}", child.id()))
        }
        id => {
            if let Some(n) = id.strip_prefix("spew:") {
                spew(n.parse().map_err(|_| "spew:N".to_string())?);
            } else if let Some(s) = id.strip_prefix("sleep:") {
                std::thread::sleep(Duration::from_secs(
                    s.parse().map_err(|_| "sleep:S".to_string())?,
                ));
            }
            Ok(id.to_string())
        }
    }
}

#[test]
#[ignore = "not a test: the worker of the parent below"]
fn chatty_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(chatty);
    }
}

// ---------------------------------------------------------------------------
// The parent, re-run with a stderr nobody reads. It must not write to its
// stderr itself: a panic's message would block there.

fn chatty_worker() -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(common::libtest_args("chatty_worker_main"))
        .output(Output::Prefixed)
}

fn facade(cmd: WorkerCommand) -> WorkingProcessFacade<SimpleTask> {
    WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .grace_period(Duration::from_secs(1))
        .spawn()
        .expect("spawn")
}

fn submit(w: &WorkingProcessFacade<SimpleTask>, names: &[&str]) {
    for name in names {
        w.process_task(SimpleTask::new(*name, 0.0))
            .expect("accepted");
    }
}

/// `key value` on stdout, for the test to read.
fn report(key: &str, value: impl std::fmt::Display) {
    println!("REPORT {key} {value}");
}

/// Collects with a 1 s deadline and reports how long that took, the
/// outcome kinds and the dropped lines.
fn timed_collect(label: &str, w: &WorkingProcessFacade<SimpleTask>) {
    let started = Instant::now();
    let records = w
        .collect_tasks_timeout(Duration::from_secs(1))
        .expect("collect");
    report(
        &format!("{label}-collect-ms"),
        started.elapsed().as_millis(),
    );
    let kinds: Vec<&str> = records.iter().map(|r| r.outcome.kind()).collect();
    report(&format!("{label}-kinds"), kinds.join(","));
    report(
        &format!("{label}-collect-dropped"),
        w.stats().output_lines_dropped,
    );
}

/// Drops `w` and reports how long that took.
fn timed_drop(label: &str, w: WorkingProcessFacade<SimpleTask>) {
    report(
        &format!("{label}-drop-dropped"),
        w.stats().output_lines_dropped,
    );
    let started = Instant::now();
    drop(w);
    report(&format!("{label}-drop-ms"), started.elapsed().as_millis());
}

/// Whether every grandchild recorded so far still runs (so nothing waited
/// for it to let go of the pipes).
fn report_grandchildren(label: &str) {
    let file = std::env::var(GRANDCHILD_ENV).expect("grandchild file");
    let pids: Vec<u32> = std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let alive = !pids.is_empty() && pids.iter().all(|&p| common::running(p));
    report(&format!("{label}-grandchildren-alive"), alive);
}

#[test]
#[ignore = "not a test: the parent that the tests below re-run with a blocked stderr"]
fn blocked_parent_main() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    std::panic::set_hook(Box::new(|info| println!("REPORT panic {info}")));
    match mode.as_str() {
        "spew" => {
            // A collect deadline while the worker never stops printing.
            let w = facade(chatty_worker());
            submit(&w, &["spew:2000", "spew-forever"]);
            timed_collect("spew", &w);
            // A drop while it never stops printing.
            let w = facade(chatty_worker());
            submit(&w, &["spew:2000", "spew-forever", "after"]);
            std::thread::sleep(Duration::from_millis(300));
            timed_drop("spew", w);
        }
        "descendants" => {
            // The worker's grandchild holds its pipes; the worker is
            // killed at the collect deadline.
            let w = facade(chatty_worker());
            submit(&w, &["grandchild", "spew:100", "sleep:30"]);
            timed_collect("killed", &w);
            report_grandchildren("killed");
            // The worker exits by itself after STOP.
            let w = facade(chatty_worker());
            submit(&w, &["grandchild", "spew:100", "done"]);
            timed_collect("stopped", &w);
            report_grandchildren("stopped");
            // Dropped while the worker sleeps: killed after the grace.
            let w = facade(chatty_worker());
            submit(&w, &["grandchild", "spew:100", "sleep:30"]);
            std::thread::sleep(Duration::from_millis(300));
            timed_drop("dropped", w);
            report_grandchildren("dropped");
        }
        other => report("panic", format!("unknown mode {other}")),
    }
    report("done", "");
}

// ---------------------------------------------------------------------------
// The tests.

/// Runs the parent in `mode` with its stderr piped and never read; returns
/// its reports. Fails if it does not finish within a minute.
fn run_parent(mode: &str, grandchildren: Option<&std::path::Path>) -> BTreeMap<String, String> {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(common::libtest_args("blocked_parent_main"))
        .env(MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(file) = grandchildren {
        cmd.env(GRANDCHILD_ENV, file);
    }
    let mut parent = cmd.spawn().expect("start the parent");
    // Held open and never read: the parent's stderr fills up and stays full.
    let _unread_stderr = parent.stderr.take().expect("piped");
    let stdout = parent.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reports = BTreeMap::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let Some(rest) = line.strip_prefix("REPORT ") else {
                    continue;
                };
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                assert_ne!(key, "panic", "the parent panicked: {value}");
                if key == "done" {
                    break;
                }
                reports.insert(key.to_string(), value.to_string());
            }
            Err(e) => {
                let _ = parent.kill();
                let _ = parent.wait();
                panic!("the parent hung or died ({e}); reports so far: {reports:?}");
            }
        }
    }
    let status = parent.wait().expect("reap the parent");
    assert!(status.success(), "the parent failed: {status}; {reports:?}");
    eprintln!("{mode}: {reports:?}");
    reports
}

fn millis(reports: &BTreeMap<String, String>, key: &str) -> Duration {
    let ms: u64 = reports
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {reports:?}"))
        .parse()
        .expect("milliseconds");
    Duration::from_millis(ms)
}

fn number(reports: &BTreeMap<String, String>, key: &str) -> u64 {
    reports
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {reports:?}"))
        .parse()
        .expect("a number")
}

fn assert_bounded(reports: &BTreeMap<String, String>, key: &str) {
    let took = millis(reports, key);
    assert!(
        took < BOUND,
        "{key}: {took:?} (bound {BOUND:?}); {reports:?}"
    );
}

#[test]
fn collect_and_drop_return_on_time_while_stderr_is_never_read() {
    let reports = run_parent("spew", None);
    assert_bounded(&reports, "spew-collect-ms");
    assert_bounded(&reports, "spew-drop-ms");
    assert_eq!(reports["spew-kinds"], "completed,crashed", "{reports:?}");
    assert!(
        number(&reports, "spew-collect-dropped") > 0,
        "lines stderr could not take were dropped and counted: {reports:?}"
    );
    assert!(number(&reports, "spew-drop-dropped") > 0, "{reports:?}");
}

#[test]
fn collect_and_drop_are_bounded_while_a_grandchild_holds_the_worker_pipes() {
    let dir = std::env::temp_dir().join(format!("wf-grandchild-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("pids");
    let reports = run_parent("descendants", Some(&file));
    // The grandchildren escaped every kill: end them here.
    for pid in std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    for label in ["killed", "stopped"] {
        assert_bounded(&reports, &format!("{label}-collect-ms"));
        assert_eq!(
            reports[&format!("{label}-grandchildren-alive")],
            "true",
            "{reports:?}"
        );
    }
    assert_bounded(&reports, "dropped-drop-ms");
    assert_eq!(
        reports["dropped-grandchildren-alive"], "true",
        "{reports:?}"
    );
    assert_eq!(
        reports["killed-kinds"], "completed,completed,crashed",
        "{reports:?}"
    );
    assert_eq!(
        reports["stopped-kinds"], "completed,completed,completed",
        "{reports:?}"
    );
}
