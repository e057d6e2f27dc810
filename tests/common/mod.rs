//! Shared by the integration tests: the stock worker's path, a test worker
//! made by re-running the test binary itself, a watchdog, and /proc helpers.
#![allow(dead_code, unreachable_pub, clippy::exit)]

pub mod hand_wire;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::Duration;

use worker_facade::simple::SimpleTask;
use worker_facade::{Output, OutputLine, WorkerCommand};

/// The stock worker, built by cargo before the tests.
pub fn stock_worker() -> WorkerCommand {
    WorkerCommand::new(env!("CARGO_BIN_EXE_facade-worker")).output(Output::Silent)
}

/// The libtest arguments that make a test binary run only its ignored test
/// `test`, such as a worker's main function.
pub const fn libtest_args(test: &str) -> [&str; 6] {
    [
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
}

/// The libtest arguments that run only [`worker_main`].
pub const TEST_WORKER_ARGS: [&str; 6] = libtest_args("common::worker_main");

/// This test binary re-executed as a worker running [`test_handler`]: it
/// runs only the ignored test below, which serves tasks.
pub fn test_worker() -> WorkerCommand {
    WorkerCommand::current_exe()
        .args(TEST_WORKER_ARGS)
        .output(Output::Silent)
}

/// The test worker's behaviour, chosen by the task's id:
/// `crash` aborts, `exit0` exits with code 0, `panic` panics in the handler,
/// `fail` returns an error, `hang` sleeps for an hour, `alloc` allocates
/// `estimated_processing_time` MiB, `leak...` allocates that much and keeps
/// it (printing `ran <id>`), `print:<text>` prints
/// the text on stdout and stderr (`late-print:<text>` does so 200 ms into
/// the task, and answers 200 ms later), `announce...` prints `started <id>` on
/// stderr and then works like the stock worker; anything else behaves like
/// the stock worker.
pub fn test_handler(t: SimpleTask) -> Result<String, String> {
    match t.id.as_str() {
        "exit0" => std::process::exit(0),
        "panic" => panic!("handler panic for {}", t.id),
        "fail" => Err(format!("task {} refused", t.id)),
        "hang" => {
            thread::sleep(Duration::from_secs(3600));
            Ok("woke".into())
        }
        id if id.starts_with("leak") => {
            // Allocate, touch and keep estimated_processing_time MiB.
            eprintln!("ran {id}");
            let bytes = (t.estimated_processing_time * 1024.0 * 1024.0) as usize;
            let kept: &'static mut [u8] = Box::leak(vec![1u8; bytes].into_boxed_slice());
            Ok(format!("leaked {}", kept.len()))
        }
        "alloc" => {
            // Allocate (and touch) estimated_processing_time MiB.
            let bytes = (t.estimated_processing_time * 1024.0 * 1024.0) as usize;
            let v = vec![1u8; bytes];
            Ok(format!(
                "allocated {}",
                v.iter().map(|&b| b as usize).sum::<usize>()
            ))
        }
        id if id.starts_with("announce") => {
            eprintln!("started {id}");
            Ok(t.solve())
        }
        id if id.starts_with("late-print:") => {
            // Prints its text on stdout and stderr mid-task: well after it
            // said it started, well before it answers.
            let text = &id["late-print:".len()..];
            thread::sleep(Duration::from_millis(200));
            println!("{text}");
            eprintln!("{text}");
            thread::sleep(Duration::from_millis(200));
            Ok(text.to_string())
        }
        id if id.starts_with("print:") => {
            let text = &id["print:".len()..];
            println!("{text}");
            eprintln!("{text}");
            Ok(text.to_string())
        }
        _ => Ok(t.solve()),
    }
}

#[test]
#[ignore = "not a test: the worker side of `test_worker()`"]
fn worker_main() {
    if worker_facade::worker::is_worker() {
        if std::env::var_os("TEST_WORKER_IGNORE_TERM").is_some() {
            // SAFETY: SIG_IGN installs no handler code; nothing else in this
            // process depends on SIGTERM's disposition.
            unsafe {
                let _ = nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGTERM,
                    nix::sys::signal::SigHandler::SigIgn,
                );
            }
        }
        worker_facade::worker::serve(test_handler);
        std::process::exit(0);
    }
}

/// A test worker whose output lines arrive on the returned channel, so a
/// test can wait for `started <id>` instead of sleeping.
pub fn announcing_worker() -> (WorkerCommand, mpsc::Receiver<String>) {
    lines_on_channel(test_worker())
}

/// `cmd` with the text of its output lines sent on the returned channel.
pub fn lines_on_channel(cmd: WorkerCommand) -> (WorkerCommand, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cmd = cmd.output(Output::capture(move |line| {
        let _ = tx.lock().map(|tx| tx.send(line.text));
    }));
    (cmd, rx)
}

/// Output lines captured with the pids of the workers that printed them.
pub type Lines = Arc<Mutex<Vec<OutputLine>>>;

/// `cmd` with its output lines collected in the returned list.
pub fn capture_lines(cmd: WorkerCommand) -> (WorkerCommand, Lines) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let cmd = cmd.output(Output::capture(move |line| {
        sink.lock().expect("lines").push(line);
    }));
    (cmd, lines)
}

/// The pids of the workers that printed a line containing `marker`.
pub fn pids_printing(lines: &Lines, marker: &str) -> BTreeSet<u32> {
    lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.text.contains(marker))
        .map(|l| l.pid)
        .collect()
}

/// The stock worker behind a shell script `dir/name` that counts its starts
/// (in `dir/count`) and runs `on_start` first, with the start's number in
/// `$n`: a worker command whose later starts fail or are slow.
pub fn counted_starts_worker(dir: &std::path::Path, name: &str, on_start: &str) -> WorkerCommand {
    std::fs::create_dir_all(dir).expect("dir");
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(($(cat \"$WF_DIR/count\" 2>/dev/null || echo 0) + 1))\n\
             echo $n > \"$WF_DIR/count\"\n\
             {on_start}\n\
             exec \"$WF_WORKER\"\n"
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    WorkerCommand::new(&script)
        .env("WF_DIR", dir)
        .env("WF_WORKER", env!("CARGO_BIN_EXE_facade-worker"))
        .output(Output::Silent)
}

/// Waits (at most 20 s) until `n` workers printed a line containing
/// `marker`, and returns their pids.
pub fn wait_for_printers(lines: &Lines, marker: &str, n: usize) -> BTreeSet<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pids = pids_printing(lines, marker);
        if pids.len() >= n {
            return pids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} workers printed {marker:?}",
            pids.len()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for a line equal to `want`, skipping others.
pub fn wait_for_line(rx: &mpsc::Receiver<String>, want: &str) {
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == want => return,
            Ok(_) => continue,
            Err(e) => panic!("no line {want:?} from the worker: {e}"),
        }
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`,
/// instead of hanging CI.
pub fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let worker = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(r) => {
            worker.join().expect("test thread");
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test body still running after {limit:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("sender dropped without sending"),
        },
    }
}

/// Panics in the library's threads (all named `wf-...`), counted by a hook
/// that [`count_library_panics`] installs.
static LIBRARY_PANICS: AtomicUsize = AtomicUsize::new(0);

/// From now on, counts the panics of the library's threads.
pub fn count_library_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current()
                .name()
                .is_some_and(|name| name.starts_with("wf-"))
            {
                LIBRARY_PANICS.fetch_add(1, SeqCst);
            }
            previous(info);
        }));
    });
}

/// How many threads of the library panicked since [`count_library_panics`].
pub fn library_panics() -> usize {
    LIBRARY_PANICS.load(SeqCst)
}

/// Peak virtual memory of this process, in bytes.
pub fn vm_peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmPeak")
        * 1024
}

/// Whether a process with this pid exists (a zombie counts as existing).
pub fn process_exists(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// PIDs of our direct children (zombies included).
pub fn child_pids() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the last ')' : state ppid ...
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let mut fields = rest.split_whitespace();
            let _state = fields.next();
            if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(me) {
                out.push(pid);
            }
        }
    }
    out
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// Aborts the test binary if the test it guards is still running after a
/// minute, so that a hang fails loudly instead of stalling CI. For tests whose
/// body must stay on the test thread (unlike [`within`]).
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

pub fn watchdog(test: &'static str) -> Watchdog {
    let (done, wait) = mpsc::channel::<()>();
    let thread = thread::Builder::new()
        .name(format!("watchdog-{test}"))
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(60))
            {
                eprintln!("watchdog: {test} hung for 60 s; aborting");
                std::process::abort();
            }
        })
        .expect("watchdog thread");
    Watchdog {
        done: Some(done),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Submits a zero-second task per name, collects, and returns the records.
pub fn run_named(
    w: &worker_facade::WorkingProcessFacade<SimpleTask>,
    names: &[&str],
) -> Vec<worker_facade::TaskRecord<SimpleTask>> {
    for name in names {
        w.process_task(SimpleTask::new(*name, 0.0))
            .expect("accepted");
    }
    w.collect_tasks().expect("collect")
}

/// The outcome kinds of `records`, in order.
pub fn kinds(records: &[worker_facade::TaskRecord<SimpleTask>]) -> Vec<&'static str> {
    records.iter().map(|r| r.outcome.kind()).collect()
}

// ---------------------------------------------------------------------------
// Foreign processes and a gated engine (tests/host_*.rs, tests/host_sigpipe.rs,
// tests/parent_death_group.rs).

/// A field of `/proc/<pid>/stat`, counted from the state (field 3) as 0.
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(index).map(str::to_string)
}

/// The state letter of `pid` (`R`, `S`, `Z`...), `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// The process group of `pid`.
pub fn proc_pgid(pid: u32) -> Option<u32> {
    stat_field(pid, 2)?.parse().ok()
}

/// When `pid` started, in clock ticks after boot: with the pid, it names one
/// process even if the number is reused.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 19)?.parse().ok()
}

/// Whether `pid` is running (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// The live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| proc_pgid(pid) == Some(pgid) && running(pid))
        .collect()
}

/// Asks the kernel to give the next new process of this pid namespace the
/// pid `pid` (if it is free), by writing `/proc/sys/kernel/ns_last_pid`
/// (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). `false` if not allowed.
pub fn force_next_pid(pid: u32) -> bool {
    std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).is_ok()
}

/// A process the test started itself (`sleep 30`, in its own process
/// group), named by pid and start time so that a reused pid is never
/// mistaken for it. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct Foreign {
    pub pid: u32,
    start: Option<u64>,
    child: std::process::Child,
}

impl Foreign {
    /// Starts `sleep 30` in a process group of its own.
    pub fn sleep() -> Foreign {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start sleep");
        let pid = child.id();
        Foreign {
            pid,
            start: proc_start_time(pid),
            child,
        }
    }

    /// Starts `sleep 30`, trying (up to 50 times) to make it reuse `pid`
    /// through `ns_last_pid`. Returns it and whether it got that pid.
    pub fn sleep_with_pid(pid: u32) -> (Foreign, bool) {
        for _ in 0..50 {
            if !force_next_pid(pid) {
                break;
            }
            let f = Foreign::sleep();
            if f.pid == pid {
                return (f, true);
            }
            // Someone else took the pid first: try again.
        }
        (Foreign::sleep(), false)
    }

    /// Whether this very process still runs (it was not signalled).
    pub fn alive(&self) -> bool {
        running(self.pid) && proc_start_time(self.pid) == self.start
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        // With SIGCHLD ignored or a host reaper this fails: nothing to reap.
        let _ = self.child.wait();
    }
}

/// Holds a facade's engine thread still: the worker's output goes through
/// a capture callback (which runs on the engine thread) that, on the first
/// line containing a marker, reports the worker's pid and then blocks until
/// the gate opens. Meanwhile the test can kill the worker, let someone
/// else reap it and start processes, all before the engine can look.
pub struct Gate {
    announced: Mutex<mpsc::Receiver<u32>>,
    open: Mutex<Option<mpsc::Sender<()>>>,
}

/// `cmd` with its output going through a [`Gate`] that closes on the first
/// line containing `marker`.
pub fn gated(cmd: WorkerCommand, marker: &'static str) -> (WorkerCommand, Arc<Gate>) {
    let (announce, announced) = mpsc::channel();
    let (open, wait) = mpsc::channel::<()>();
    let gate = Arc::new(Gate {
        announced: Mutex::new(announced),
        open: Mutex::new(Some(open)),
    });
    let once = std::sync::atomic::AtomicBool::new(false);
    let announce = Mutex::new(announce);
    let wait = Mutex::new(wait);
    let cmd = cmd.output(Output::capture(move |line| {
        if line.text.contains(marker) && !once.swap(true, SeqCst) {
            let _ = announce.lock().map(|a| a.send(line.pid));
            // Blocks the engine until `open` (or the gate is dropped).
            let _ = wait.lock().map(|w| w.recv_timeout(Duration::from_secs(30)));
        }
    }));
    (cmd, gate)
}

impl Gate {
    /// Waits until the engine is held; returns the pid of the worker that
    /// printed the marker.
    pub fn wait_closed(&self) -> u32 {
        self.announced
            .lock()
            .expect("gate")
            .recv_timeout(Duration::from_secs(20))
            .expect("the worker printed the marker")
    }

    /// Lets the engine go on.
    pub fn open(&self) {
        drop(self.open.lock().expect("gate").take());
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// Waits until `pid` is no longer running (gone or a zombie), at most
/// `limit`; returns how long it took, or `None` if it still runs.
pub fn wait_not_running(pid: u32, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    while running(pid) {
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(1));
    }
    Some(start.elapsed())
}

/// Waits until `pid` is gone from `/proc` altogether (reaped), at most
/// `limit`.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while process_exists(pid) {
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// This process's threads, counted once none of the library's (named
/// `wf-…`) is left, or after 2 s if one is. A joined thread can still be
/// listed for a moment: `pthread_join` returns when the thread has cleared
/// its ID, a little before the kernel removes it from `/proc/self/task`.
pub fn settled_threads() -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let ours_left = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|name| name.starts_with("wf-"))
                })
            })
            .unwrap_or(false)
    };
    while ours_left() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}
