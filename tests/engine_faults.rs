//! Faults found by an adversarial review of the event loop, each once a
//! bug and now a regression test: a worker that stops reading, a zombie a
//! tracer holds, a descendant flooding the worker's stdout, a host thread
//! holding std's stderr lock, descriptors a fork keeps open, large tasks
//! sent ahead of a drop's CANCEL, a second `try_serve`, an unlimited
//! `kill_grace`, and a worker reaped before its pidfd opened. The doc of
//! each test says what used to happen.
#![allow(clippy::unwrap_used, clippy::exit)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::hand_wire::{
    KIND_TASK, frame, honest_hello, read_boot, read_frame, send, sleep_forever,
};
use nix::libc;
use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};

const MODE_ENV: &str = "WF_REVIEW_MODE";
const ARGS: [&str; 6] = common::libtest_args("review_worker_main");

fn wait_task(stream: &mut UnixStream) -> u64 {
    loop {
        match read_frame(stream) {
            Some((KIND_TASK, rest)) => return common::hand_wire::task_id(&rest),
            Some(_) => continue,
            None => std::process::exit(0),
        }
    }
}

#[test]
#[ignore = "worker side"]
fn review_worker_main() {
    if !worker_facade::worker::is_worker() {
        return;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mode = std::env::var(MODE_ENV).unwrap();
    eprintln!("review worker: {mode} {}", std::process::id());
    let boot = read_boot();
    let mut s = boot.connect();
    // "shut-rd" stops reading before its HELLO, so that every write the
    // parent makes fails. Shut down after it, a task the parent wrote in
    // between would sit unread in a live worker's socket: a worker hung
    // before its first task, which collect_tasks() waits for like any hang.
    if mode == "shut-rd" {
        s.shutdown(std::net::Shutdown::Read).unwrap();
    }
    send(&mut s, &honest_hello(&boot.token));
    match mode.as_str() {
        // Stops reading but keeps its socket and stays alive.
        "shut-rd" => sleep_forever(),
        // Hangs up after the first task, lingers.
        "linger" => {
            wait_task(&mut s);
            common::hand_wire::close_and_linger(s);
        }
        // After the first task: a grandchild in its own session ptrace-seizes
        // this worker and never waits; the worker then exits.
        "traced" => {
            wait_task(&mut s);
            let me = std::process::id() as libc::pid_t;
            // SAFETY: test code; the child only makes raw syscalls.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe {
                    libc::setsid();
                    let r = libc::ptrace(libc::PTRACE_SEIZE, me, 0, 0);
                    if r != 0 {
                        libc::_exit(9);
                    }
                    libc::sleep(30);
                    libc::_exit(0);
                }
            }
            eprintln!("tracer {pid}");
            thread::sleep(Duration::from_millis(300));
            std::process::exit(3);
        }
        // Answers every task with OK after STARTED.
        "echo" => loop {
            let id = wait_task(&mut s);
            send(
                &mut s,
                &frame(common::hand_wire::KIND_STARTED, Some(id), &[]),
            );
            send(
                &mut s,
                &frame(
                    common::hand_wire::KIND_OK,
                    Some(id),
                    &common::hand_wire::encoded("ok"),
                ),
            );
        },
        // After the first task: a grandchild in its own session floods the
        // worker's stdout pipe forever; the worker exits.
        "yes" => {
            wait_task(&mut s);
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("yes");
            cmd.stdin(Stdio::null());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap();
            std::fs::write(
                std::env::var("WF_REVIEW_PIDFILE").unwrap(),
                child.id().to_string(),
            )
            .unwrap();
            std::process::exit(1);
        }
        other => panic!("mode {other}"),
    }
}

fn review(mode: &str) -> (WorkerCommand, common::Lines) {
    common::capture_lines(WorkerCommand::current_exe().args(ARGS).env(MODE_ENV, mode))
}

fn engine_cpu_ticks() -> std::collections::BTreeMap<String, u64> {
    let mut ticks = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = e.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() == "wf-engine" {
            // A thread that ended meanwhile has no stat any more.
            let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            let t = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            ticks.insert(p.display().to_string(), t);
        }
    }
    ticks
}

/// CPU ticks the engine threads alive at both readings used in between
/// (other tests of this binary start and end engines meanwhile).
fn engine_ticks_between(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> u64 {
    after
        .iter()
        .filter_map(|(tid, t)| Some(t.saturating_sub(*before.get(tid)?)))
        .sum()
}

/// Was a bug: a worker that shuts down its read side makes every write fail
/// (EPIPE -> `write_failed`), but the link stays `Running` with tasks in
/// `inflight` that never reached it, and STOP is never queued. Nothing ends
/// the link: `collect_tasks()` waits forever.
#[test]
fn a_worker_that_stops_reading_is_ended_and_collect_returns() {
    let (cmd, _lines) = review("shut-rd");
    // No restarts: one such worker shows it (each would be ended alike).
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .restart(worker_facade::RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    w.process_task(SimpleTask::new("a", 0.0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        let r = w.collect_tasks().map(|r| common::kinds(&r));
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(6));
    eprintln!("after {:?}: {got:?}", t0.elapsed());
    assert!(
        got.is_ok(),
        "collect_tasks() still waiting after 6 s for a worker that stopped reading"
    );
    // The task never reached it: not run.
    assert!(
        matches!(&got, Ok(Ok(kinds)) if kinds == &["not run"]),
        "{got:?}"
    );
}

/// Was a bug: the engine closes the socket (`reader = None`) and pipes
/// (`pipes[stream] = None`) without `EPOLL_CTL_DEL`. If the open file
/// description survives elsewhere (the host forked after making the
/// facade), the registration stays, level-triggered, on a hung-up socket:
/// the engine spins at 100% CPU while idle.
#[test]
fn closed_descriptors_leave_epoll_even_when_a_fork_holds_them() {
    closed_fd_case(true);
}

/// Control for the test above: the same without the fork stays idle.
#[test]
fn an_idle_engine_uses_no_cpu() {
    closed_fd_case(false);
}

fn closed_fd_case(fork: bool) {
    let (cmd, _lines) = review("linger");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    // SAFETY: the child only sleeps and exits.
    let child = if fork { unsafe { libc::fork() } } else { -1 };
    if child == 0 {
        unsafe {
            libc::sleep(6);
            libc::_exit(0);
        }
    }
    let h = w.submit(SimpleTask::new("a", 0.0)).unwrap();
    let out = h.wait();
    eprintln!("outcome: {out:?}");
    thread::sleep(Duration::from_millis(500)); // settled, idle, no worker
    let before = engine_cpu_ticks();
    thread::sleep(Duration::from_secs(2));
    let used = engine_ticks_between(&before, &engine_cpu_ticks());
    let hz = 100;
    eprintln!(
        "engine used {used} ticks ({} ms) of 2000 ms while idle",
        used * 1000 / hz
    );
    if child > 0 {
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    drop(w);
    assert!(used < 20, "idle engine spun: {used} ticks in 2 s");
}

/// Was a bug: a pidfd that is readable while `waitid(WNOHANG)` says "running"
/// (the worker is a zombie held by a ptracer outside its group) is
/// deleted and re-added every turn: a busy loop, and the link never
/// settles, so a collect deadline and Drop do not return.
#[test]
fn a_zombie_held_by_a_tracer_neither_spins_nor_blocks_a_collect_deadline() {
    let (cmd, lines) = review("traced");
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .restart(worker_facade::RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    w.process_task(SimpleTask::new("a", 0.0)).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let before = engine_cpu_ticks();
    thread::sleep(Duration::from_secs(1));
    let used = engine_ticks_between(&before, &engine_cpu_ticks());
    eprintln!("engine: {used} ticks in 1 s");
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        let r = w
            .collect_tasks_timeout(Duration::from_millis(500))
            .map(|r| common::kinds(&r));
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    eprintln!(
        "collect_tasks_timeout(500ms) after {:?}: {got:?}",
        t0.elapsed()
    );
    let tracer: Option<i32> = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.text.strip_prefix("tracer ").map(|p| p.parse().unwrap()));
    eprintln!("tracer: {tracer:?}");
    if let Some(t) = tracer {
        unsafe { libc::kill(t, libc::SIGKILL) };
    }
    let _ = rx.recv_timeout(Duration::from_secs(5));
    assert!(used < 20, "engine spun: {used} ticks in 1 s");
    assert!(
        got.is_ok(),
        "collect_tasks_timeout(500ms) not back after 5 s"
    );
}

const PARENT_ENV: &str = "WF_REVIEW_PARENT";

/// The re-run parent with a stderr pipe nobody reads: another host thread
/// is blocked in eprintln! (holding std's stderr lock); the engine's
/// StderrQueue::flush takes `stderr.lock()` and blocks behind it.
#[test]
#[ignore = "parent side"]
fn review_blocked_parent_main() {
    if std::env::var_os(PARENT_ENV).is_none() {
        return;
    }
    // Fill the pipe and block holding the stderr lock.
    thread::spawn(|| {
        let big = "z".repeat(1 << 20);
        eprintln!("{big}");
    });
    thread::sleep(Duration::from_millis(300));
    let cmd = common::test_worker().output(Output::Prefixed);
    let t0 = Instant::now();
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    println!("spawned after {:?}", t0.elapsed());
    w.process_task(SimpleTask::new("print:hello", 0.0)).unwrap();
    let t1 = Instant::now();
    let r = w.collect_tasks_timeout(Duration::from_secs(1));
    println!(
        "collected after {:?}: {:?}",
        t1.elapsed(),
        r.map(|r| r.len())
    );
    std::process::exit(0);
}

#[test]
fn a_host_thread_holding_the_stderr_lock_never_blocks_the_engine() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(common::libtest_args("review_blocked_parent_main"))
        .env(PARENT_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()) // never read
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.starts_with("collected");
                seen.push(l);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    eprintln!("parent said: {seen:?}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.starts_with("collected")),
        "the engine hung behind the host's stderr lock: {seen:?}"
    );
}

/// Was a bug: the worker's CANCEL look-ahead only sees frames already in its
/// 64 KiB read buffer (`read_ahead` returns 0 when it is full). With large
/// tasks sent ahead, the CANCEL a drop sends sits behind them in the
/// kernel, the sent-ahead tasks keep starting during the grace period, and
/// the one running when it ends is Crashed (issue 8 says: NotRun(Cancelled)).
#[test]
fn large_tasks_sent_ahead_are_cancelled_by_a_drop() {
    let w = WorkingProcessFacade::<SimpleTask>::builder(common::test_worker())
        .grace_period(Duration::from_secs(2))
        .spawn()
        .expect("spawn");
    let pad = "p".repeat(8000);
    let handles: Vec<_> = (0..60)
        .map(|i| {
            w.submit(SimpleTask::new(format!("{i}-{pad}"), 0.05))
                .unwrap()
        })
        .collect();
    thread::sleep(Duration::from_millis(120)); // first tasks running
    let t0 = Instant::now();
    drop(w);
    let took = t0.elapsed();
    let kinds: Vec<String> = handles
        .into_iter()
        .map(|h| match h.wait() {
            Ok(o) => format!("{o:?}").split('(').next().unwrap().to_string(),
            Err(e) => format!("err {e:?}"),
        })
        .collect();
    let completed = kinds.iter().filter(|k| *k == "Completed").count();
    let crashed = kinds.iter().filter(|k| *k == "Crashed").count();
    eprintln!("drop took {took:?}; completed {completed}, crashed {crashed}, kinds {kinds:?}");
    assert!(
        completed <= 5 && crashed == 0,
        "sent-ahead tasks ran after drop: completed {completed}, crashed {crashed}, drop {took:?}"
    );
}

#[test]
#[ignore = "worker side"]
fn review_twice_main() {
    if !worker_facade::worker::is_worker() {
        return;
    }
    use std::os::fd::AsRawFd;
    let first = worker_facade::worker::try_serve(common::test_handler);
    let want: i32 = std::env::var("WORKER_FACADE_FD").unwrap().parse().unwrap();
    let mut keep = Vec::new();
    let a = loop {
        let (a, b) = UnixStream::pair().unwrap();
        if a.as_raw_fd() == want {
            keep.push(b);
            break a;
        }
        if b.as_raw_fd() == want {
            keep.push(a);
            break b;
        }
        keep.push(a);
        keep.push(b);
        assert!(keep.len() < 100);
    };
    let fd = a.as_raw_fd();
    let second = worker_facade::worker::try_serve(common::test_handler);
    // SAFETY: F_GETFD only reads the descriptor table.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    eprintln!(
        "twice: first {first:?}; my socket fd {fd} open after second try_serve: {open}; second {second:?}"
    );
    std::mem::forget(a); // do not close a descriptor we may no longer own
    std::process::exit(0);
}

/// Was a bug (I/O safety): `take_inherited_socket`'s SAFETY says "the caller
/// removes the variable naming it", but nobody removes WORKER_FACADE_FD. A
/// second `try_serve` (safe API) takes ownership of whatever now has that
/// number and closes it: here the caller's own UnixStream.
#[test]
fn a_second_try_serve_never_closes_a_descriptor_it_does_not_own() {
    let (cmd, lines) = common::capture_lines(
        WorkerCommand::current_exe().args(common::libtest_args("review_twice_main")),
    );
    let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
    w.process_task(SimpleTask::new("a", 0.0)).unwrap();
    let _ = w.collect_tasks().unwrap();
    let said: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.text.clone())
        .collect();
    eprintln!("{said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("open after second try_serve: true")),
        "{said:?}"
    );
}

/// Was a bug: `Console::finish` (called from `settle_links` -> `into_end`) loops
/// `while on_readable() && readable_now()`: a descendant that escaped the
/// process group (setsid) and keeps writing to the worker's stdout keeps
/// the engine in that loop forever: no collect deadline, no Drop.
#[test]
fn a_grandchild_flooding_stdout_cannot_hold_up_collect() {
    let pidfile = std::env::temp_dir().join(format!("wf-review-yes-{}", std::process::id()));
    let cmd = WorkerCommand::current_exe()
        .args(ARGS)
        .env(MODE_ENV, "yes")
        .env("WF_REVIEW_PIDFILE", &pidfile)
        .output(Output::Silent);
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .restart(worker_facade::RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    w.process_task(SimpleTask::new("a", 0.0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        let r = w
            .collect_tasks_timeout(Duration::from_secs(1))
            .map(|r| common::kinds(&r));
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(6));
    eprintln!(
        "collect_tasks_timeout(1 s) after {:?}: {got:?}",
        t0.elapsed()
    );
    let yes: Option<i32> = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    eprintln!("flooder: {yes:?}");
    if let Some(p) = yes {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(&pidfile);
    let after = rx.recv_timeout(Duration::from_secs(5));
    eprintln!("after killing the flooder: {after:?}");
    assert!(got.is_ok(), "collect_tasks_timeout(1 s) not back after 6 s");
}

/// Was a bug: `kill_grace(Duration::MAX)` makes `end_gently` store
/// `kill_at: None`, which for `Ending` also means "SIGKILL already sent":
/// a timed-out task's worker that ignores SIGTERM is never killed, and
/// `Drop` (whose `stop` is a no-op on `Ending`) waits forever.
#[test]
fn drop_bounds_a_timed_out_worker_that_ignores_sigterm_under_unlimited_kill_grace() {
    let cmd = common::test_worker().env("TEST_WORKER_IGNORE_TERM", "1");
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .task_timeout(Duration::from_millis(200))
        .kill_grace(Duration::MAX)
        .grace_period(Duration::from_millis(500))
        .spawn()
        .expect("spawn");
    let pid = w.worker_pid();
    let h = w.submit(SimpleTask::new("hang", 0.0)).unwrap();
    eprintln!("outcome: {:?}", h.wait());
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        drop(w);
        let _ = tx.send(());
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    eprintln!("drop after {:?}: {got:?}", t0.elapsed());
    if let Some(p) = pid {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    let _ = rx.recv_timeout(Duration::from_secs(5));
    assert!(got.is_ok(), "Drop not back after 5 s (grace 500 ms)");
}

const SIGIGN_ENV: &str = "WF_REVIEW_SIGIGN";

#[test]
#[ignore = "parent side"]
fn review_sigign_parent_main() {
    if std::env::var_os(SIGIGN_ENV).is_none() {
        return;
    }
    // SAFETY: SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut pidfd_errors = 0;
    let mut other = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..300 {
        match WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("/bin/true")) {
            Ok(_) => *other.entry("ok".into()).or_default() += 1,
            Err(e) => {
                let s = e.to_string();
                if s.contains("pidfd") {
                    pidfd_errors += 1;
                } else {
                    *other.entry(s.chars().take(60).collect()).or_default() += 1;
                }
            }
        }
    }
    println!("pidfd errors: {pidfd_errors}; other: {other:?}");
    std::process::exit(0);
}

/// Was a race: under SIGCHLD=SIG_IGN (or a host waitpid(-1) reaper) a
/// worker that exits at once is reaped before `pidfd_open(pid)`: spawn then
/// says "Linux 5.3 or later is needed" and `child.kill()` signals a pid we
/// no longer own.
#[test]
fn a_worker_reaped_before_its_pidfd_opens_is_an_early_exit_never_signalled() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(common::libtest_args("review_sigign_parent_main"))
        .env(SIGIGN_ENV, "1")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("pidfd errors"))
        .unwrap_or("none")
        .to_string();
    eprintln!("{line}");
    assert!(line.starts_with("pidfd errors: 0;"), "{line}");
}
