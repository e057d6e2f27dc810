//! Fault injection: a worker that breaks the protocol on purpose (issue 3,
//! item 5).
//!
//! The hostile worker is this test binary re-executed (as rayon-core's crash
//! tests do): the ignored test `hostile_worker_main` acts as a worker when
//! the facade's marker variable is set, and `WF_HOSTILE_MODE` (set through
//! `WorkerCommand::env`) picks its misbehaviour. It speaks the wire protocol
//! by hand, from the format documented at the top of `src/wire.rs`, so it can
//! say things the library's own worker never would.
//!
//! Every test asserts what the parent observes: either the constructor fails
//! with a clear error, or every submitted task gets exactly one outcome; and
//! in both cases `collect_tasks` (or the constructor) returns within a
//! watchdog's bound, every worker started is reaped (no process, no zombie),
//! and no thread of the library panicked.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    NotRunReason, Outcome, Output, OutputLine, PROTOCOL_VERSION, RestartPolicy, SpawnError,
    TaskRecord, WorkerCommand, WorkingProcessFacade,
};

/// Picks the hostile worker's misbehaviour.
const MODE_ENV: &str = "WF_HOSTILE_MODE";
/// The payload of the OK frame in mode `ok-payload`, as hex.
const HEX_ENV: &str = "WF_HOSTILE_HEX";
/// The libtest arguments that run only `hostile_worker_main`.
const HARNESS_ARGS: [&str; 6] = [
    "--ignored",
    "--exact",
    "hostile_worker_main",
    "--nocapture",
    "--test-threads=1",
    "-q",
];
/// Every test body must finish within this, or it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The wire format, written from the documentation in src/wire.rs.

const MAGIC: u32 = 0x5746_4143; // "WFAC"
const KIND_TASK: u8 = 0x01;
const KIND_STOP: u8 = 0x02;
const KIND_HELLO: u8 = 0x10;
const KIND_STARTED: u8 = 0x11;
const KIND_OK: u8 = 0x12;
const KIND_BOOT: u8 = 0x20;
const TOKEN_LEN: usize = 16;

/// What the BOOT frame on stdin tells the worker (its options are skipped).
struct Boot {
    token: [u8; TOKEN_LEN],
    path: String,
}

/// Reads `BOOT = len:u32le 0x20 magic:u32le protocol:u32le token[16]
/// path_len:u16le path options` from stdin.
fn read_boot() -> Boot {
    let mut stdin = io::stdin().lock();
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len).expect("BOOT length on stdin");
    let len = u32::from_le_bytes(len) as usize;
    assert!(len <= 64 * 1024, "BOOT frame of {len} bytes");
    let mut body = vec![0u8; len];
    stdin.read_exact(&mut body).expect("BOOT body on stdin");
    assert_eq!(body[0], KIND_BOOT, "first frame on stdin is BOOT");
    let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(1), MAGIC, "BOOT magic");
    assert_eq!(word(5), PROTOCOL_VERSION, "BOOT protocol");
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&body[9..9 + TOKEN_LEN]);
    let at = 9 + TOKEN_LEN;
    let path_len = u16::from_le_bytes([body[at], body[at + 1]]) as usize;
    let path = String::from_utf8(body[at + 2..at + 2 + path_len].to_vec()).expect("UTF-8 path");
    Boot { token, path }
}

/// `len:u32le kind [id:u64le] payload`.
fn frame(kind: u8, id: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let len = 1 + if id.is_some() { 8 } else { 0 } + payload.len();
    let mut out = (len as u32).to_le_bytes().to_vec();
    out.push(kind);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// `HELLO = 0x10 magic:u32le protocol:u32le pid:u32le token[16] crate_version`.
fn hello(magic: u32, protocol: u32, token: &[u8; TOKEN_LEN], version: &str) -> Vec<u8> {
    let mut body = vec![KIND_HELLO];
    body.extend_from_slice(&magic.to_le_bytes());
    body.extend_from_slice(&protocol.to_le_bytes());
    body.extend_from_slice(&std::process::id().to_le_bytes());
    body.extend_from_slice(token);
    body.extend_from_slice(version.as_bytes());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// An output encoded as the codec does (bincode 2, standard configuration).
fn encoded(output: &str) -> Vec<u8> {
    bincode::serde::encode_to_vec(output, bincode::config::standard()).expect("encodes")
}

/// Reads one frame from the parent; `None` at the end of the stream.
fn read_frame(stream: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("reading from the parent: {e}"),
    }
    let len = u32::from_le_bytes(len) as usize;
    assert!((1..=64 << 20).contains(&len), "frame of {len} bytes");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("frame body");
    let kind = body.remove(0);
    Some((kind, body))
}

/// Waits for the parent's first TASK and returns its ID; exits on STOP or EOF.
fn first_task(stream: &mut UnixStream) -> u64 {
    match read_frame(stream) {
        Some((KIND_TASK, rest)) => u64::from_le_bytes(rest[..8].try_into().expect("task ID")),
        Some((KIND_STOP, _)) | None => exit(0),
        Some((kind, _)) => panic!("unexpected frame kind {kind:#04x} from the parent"),
    }
}

/// Reads every frame up to the parent's STOP, so that nothing is left unread
/// when the worker closes its end. (Closing a Unix socket with unread data
/// makes the peer's next read fail with ECONNRESET instead of a clean EOF.)
fn read_until_stop(stream: &mut UnixStream) {
    loop {
        match read_frame(stream) {
            Some((KIND_TASK, _)) => {}
            Some((KIND_STOP, _)) => return,
            Some((kind, _)) => panic!("unexpected frame kind {kind:#04x} from the parent"),
            None => panic!("the parent closed the socket before STOP"),
        }
    }
}

fn send(stream: &mut UnixStream, bytes: &[u8]) {
    // The parent may have hung up already; that is its right.
    let _ = stream.write_all(bytes);
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

#[allow(clippy::exit)] // a worker process ending itself, not the library
fn exit(code: i32) -> ! {
    std::process::exit(code)
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hostile worker. Every mode first says which it is on stderr (which
/// also tells the parent its pid), then reads the BOOT frame.
fn hostile(mode: &str) -> ! {
    if mode == "holder" {
        // Started by `escape-then-exit` outside the worker's process group,
        // holding the worker's socket and output pipes: outlive the worker.
        thread::sleep(Duration::from_secs(60));
        exit(0);
    }
    eprintln!("hostile worker: {mode}");
    // Die with the parent, whatever happens to the test.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let boot = read_boot();
    if mode == "no-connect" {
        sleep_forever();
    }
    let mut s = UnixStream::connect(&boot.path).expect("connect to the parent's socket");
    let token = boot.token;
    match mode {
        "silent" => sleep_forever(),
        "bad-protocol" => {
            send(
                &mut s,
                &hello(MAGIC, PROTOCOL_VERSION + 1000, &token, "hostile-9.9"),
            );
            sleep_forever()
        }
        "bad-token" => {
            let mut wrong = token;
            wrong[0] ^= 0xff;
            send(&mut s, &hello(MAGIC, PROTOCOL_VERSION, &wrong, "0.1.0"));
            sleep_forever()
        }
        "bad-magic" => {
            send(&mut s, &hello(!MAGIC, PROTOCOL_VERSION, &token, "0.1.0"));
            sleep_forever()
        }
        "huge-hello" => {
            // A handshake frame that claims ~3.75 GiB.
            send(&mut s, &0xF000_0000u32.to_le_bytes());
            sleep_forever()
        }
        _ => send(&mut s, &hello(MAGIC, PROTOCOL_VERSION, &token, "0.1.0")),
    }
    if mode == "exit-after-hello" {
        exit(0);
    }
    let id = first_task(&mut s);
    if mode == "escape-then-exit" {
        // A process outside our group inherits the socket (and our stdout
        // and stderr), so the worker's exit does not close them.
        nix::fcntl::fcntl(
            &s,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .expect("clear close-on-exec");
        // The worker exits at once: the holder is reaped by whoever adopts
        // it (the test process, a subreaper).
        #[allow(clippy::zombie_processes)]
        let holder = std::process::Command::new(std::env::current_exe().expect("current exe"))
            .args(HARNESS_ARGS)
            .env(MODE_ENV, "holder")
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the holder");
        eprintln!("HOLDER PID {}", holder.id());
        exit(0);
    }
    let started = frame(KIND_STARTED, Some(id), &[]);
    match mode {
        "oversized" => {
            // Claims ~4 GiB, far above any maximum frame size, then a few
            // bytes of the body.
            send(&mut s, &started);
            send(&mut s, &0xFFFF_FFF0u32.to_le_bytes());
            send(&mut s, &[KIND_OK; 16]);
            sleep_forever()
        }
        "truncated" => {
            // A frame of 100 bytes cut after 10, then EOF: the process exits.
            read_until_stop(&mut s);
            send(&mut s, &started);
            send(&mut s, &100u32.to_le_bytes());
            send(&mut s, &[KIND_OK; 10]);
            exit(0)
        }
        "partial-then-hang" => {
            // The same cut frame, but the worker stays alive, socket open.
            send(&mut s, &started);
            send(&mut s, &100u32.to_le_bytes());
            send(&mut s, &[KIND_OK; 10]);
            sleep_forever()
        }
        "ok-payload" => {
            let payload = from_hex(&std::env::var(HEX_ENV).expect("WF_HOSTILE_HEX"));
            send(&mut s, &started);
            send(&mut s, &frame(KIND_OK, Some(id), &payload));
            sleep_forever()
        }
        "started-then-junk" => {
            // STARTED and a frame of no known kind, in one write: the parent
            // reads both at once.
            let mut out = started;
            out.extend_from_slice(&frame(0x7f, Some(id), b"junk"));
            send(&mut s, &out);
            sleep_forever()
        }
        "unknown-id" => {
            send(&mut s, &started);
            send(&mut s, &frame(KIND_OK, Some(id + 1000), &encoded("forged")));
            sleep_forever()
        }
        "started-unknown" => {
            send(&mut s, &frame(KIND_STARTED, Some(id + 1000), &[]));
            sleep_forever()
        }
        "duplicate" => {
            send(&mut s, &started);
            send(&mut s, &frame(KIND_OK, Some(id), &encoded("first answer")));
            send(&mut s, &frame(KIND_OK, Some(id), &encoded("second answer")));
            sleep_forever()
        }
        "close-and-linger" => {
            read_until_stop(&mut s);
            send(&mut s, &started);
            let _ = s.shutdown(std::net::Shutdown::Both);
            drop(s);
            sleep_forever()
        }
        other => panic!("unknown hostile mode {other:?}"),
    }
}

#[test]
#[ignore = "not a test: the hostile worker, started in a child process by the tests below"]
fn hostile_worker_main() {
    if worker_facade::worker::is_worker() {
        let mode = std::env::var(MODE_ENV).expect("WF_HOSTILE_MODE is set by the parent");
        hostile(&mode);
    }
}

// ---------------------------------------------------------------------------
// The parent side.

/// Lines the hostile workers printed, with their pids.
type Lines = Arc<Mutex<Vec<OutputLine>>>;

/// This test binary as a hostile worker in `mode`, its output captured.
fn hostile_worker(mode: &str) -> (WorkerCommand, Lines) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let cmd = WorkerCommand::current_exe()
        .args(HARNESS_ARGS)
        .env(MODE_ENV, mode)
        .output(Output::capture(move |line| {
            sink.lock().expect("lines").push(line);
        }));
    (cmd, lines)
}

/// The pids of the hostile workers that announced themselves.
fn hostile_pids(lines: &Lines) -> BTreeSet<u32> {
    let pids: BTreeSet<u32> = lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.text.contains("hostile worker:"))
        .map(|l| l.pid)
        .collect();
    assert!(!pids.is_empty(), "no hostile worker announced itself");
    pids
}

/// The worker is neither running nor a zombie: it is no longer our child.
fn assert_reaped(pid: u32) {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => {}
        other => panic!("worker {pid} is still our child (running or a zombie): {other:?}"),
    }
    // Nothing is left in its process group either.
    assert_eq!(
        nix::sys::signal::killpg(Pid::from_raw(pid as i32), None),
        Err(Errno::ESRCH),
        "worker {pid}'s process group still has members"
    );
}

fn assert_all_reaped(lines: &Lines) {
    for pid in hostile_pids(lines) {
        assert_reaped(pid);
    }
}

/// Panics in the library's threads (all named `wf-...`), counted by a hook.
static LIBRARY_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Runs `body` on its own thread; fails the test if it takes longer than the
/// watchdog allows (instead of hanging CI) or if a thread of the library
/// panicked meanwhile.
fn within<R: Send + 'static>(body: impl FnOnce() -> R + Send + 'static) -> R {
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
    let (tx, rx) = mpsc::channel();
    let runner = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let _ = tx.send(body());
        })
        .expect("spawn the test body");
    let result = match rx.recv_timeout(WATCHDOG) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: the test body still runs after {WATCHDOG:?}: the parent hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match runner.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body ended without a result"),
        },
    };
    assert_eq!(
        LIBRARY_PANICS.load(SeqCst),
        0,
        "a thread of the library panicked"
    );
    result
}

fn tasks(n: usize) -> Vec<SimpleTask> {
    (0..n)
        .map(|i| SimpleTask::new(format!("t{i}"), 0.0))
        .collect()
}

/// Spawns a facade on a hostile worker with no restarts, submits `n` tasks
/// and collects them. Checks the bookkeeping: one record per task, in order,
/// counters that add up, nothing in flight, every worker reaped.
fn run_hostile(
    mode: &str,
    n: usize,
    configure: impl FnOnce(WorkerCommand) -> WorkerCommand,
) -> Vec<TaskRecord<SimpleTask>> {
    let (cmd, lines) = hostile_worker(mode);
    let w = WorkingProcessFacade::<SimpleTask>::builder(configure(cmd))
        .restart(RestartPolicy::Never)
        .grace_period(Duration::from_secs(2))
        .spawn()
        .expect("the hostile worker completes the handshake");
    for t in tasks(n) {
        w.process_task(t).expect("accepted");
    }
    let records = w.collect_tasks().expect("collect_tasks");
    check_records(&w, &records, n);
    assert_all_reaped(&lines);
    records
}

fn check_records(
    w: &WorkingProcessFacade<SimpleTask>,
    records: &[TaskRecord<SimpleTask>],
    n: usize,
) {
    assert_eq!(records.len(), n, "one record per accepted task");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.id.as_u64(), i as u64, "records in submission order");
        assert_eq!(r.task.id, format!("t{i}"), "the original task handed back");
    }
    let s = w.stats();
    assert_eq!(s.submitted, n as u64);
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(
        s.completed + s.failed + s.crashed + s.not_run + s.timed_out,
        n as u64,
        "exactly one outcome per task: {s:?}"
    );
}

/// The task's outcome is `Crashed` by a worker the parent killed (SIGKILL)
/// for a reason mentioning `why`.
fn assert_killed_for(outcome: &Outcome<String>, why: &str) {
    let Outcome::Crashed(crash) = outcome else {
        panic!("expected Crashed ({why}), got {outcome:?}");
    };
    assert_eq!(crash.exit.signal, Some(Signal::SIGKILL as i32), "{crash}");
    let reason = crash.reason.as_deref().unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

/// The task never ran because its worker died (for a reason mentioning `why`).
fn assert_not_run_worker_died(outcome: &Outcome<String>, why: &str) {
    let Outcome::NotRun(NotRunReason::WorkerDied(crash)) = outcome else {
        panic!("expected NotRun(WorkerDied), got {outcome:?}");
    };
    let reason = crash.reason.as_deref().unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

/// Peak virtual memory of this process, in bytes.
fn vm_peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmPeak:"))
        .expect("VmPeak line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmPeak value");
    kib * 1024
}

// ---------------------------------------------------------------------------
// Frames after the handshake.

#[test]
fn frame_longer_than_the_maximum_is_refused_without_allocating_it() {
    within(|| {
        let before = vm_peak();
        let records = run_hostile("oversized", 3, |c| c);
        // The frame claimed ~4 GiB: had the parent allocated it, even lazily,
        // its peak address space would have grown by that much.
        let grown = vm_peak().saturating_sub(before);
        assert!(grown < 2 << 30, "peak virtual memory grew by {grown} bytes");
        assert_killed_for(&records[0].outcome, "exceeds the maximum frame size");
        for r in &records[1..] {
            assert_not_run_worker_died(&r.outcome, "exceeds the maximum frame size");
        }
    });
}

#[test]
fn frame_longer_than_a_small_configured_maximum_is_refused() {
    within(|| {
        let records = run_hostile("oversized", 2, |c| c.max_frame_size(1024));
        assert_killed_for(&records[0].outcome, "maximum frame size of 1024 bytes");
        assert_not_run_worker_died(&records[1].outcome, "exceeds the maximum frame size");
    });
}

#[test]
fn truncated_frame_then_eof_blames_the_running_task() {
    within(|| {
        let records = run_hostile("truncated", 3, |c| c);
        let Outcome::Crashed(crash) = &records[0].outcome else {
            panic!("expected Crashed, got {:?}", records[0].outcome);
        };
        // The worker exited by itself, with code 0, after cutting the frame.
        assert_eq!(crash.exit.code, Some(0), "{crash}");
        let reason = crash.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("middle of a frame"), "{reason:?}");
        for r in &records[1..] {
            assert_not_run_worker_died(&r.outcome, "middle of a frame");
        }
    });
}

/// A worker that dies with tasks still unread in its socket makes the kernel
/// reset the connection: after the last byte the worker wrote, the parent's
/// read fails with ECONNRESET instead of returning EOF. That is an ordinary
/// end of stream: the crash below is the worker's own (SIGABRT), not a
/// connection the parent found broken.
#[test]
fn crash_with_tasks_unread_is_not_blamed_on_the_connection() {
    within(|| {
        let cmd = WorkerCommand::new(env!("CARGO_BIN_EXE_facade-worker")).output(Output::Silent);
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        // While the first task sleeps, ~200 KiB of tasks queue up behind the
        // crash: more than the worker reads at once (64 KiB).
        w.process_task(SimpleTask::new("slow", 0.3))
            .expect("accepted");
        w.process_task(SimpleTask::new("crash", 0.0))
            .expect("accepted");
        let padding = "x".repeat(200);
        for i in 0..1000 {
            w.process_task(SimpleTask::new(format!("q{i}-{padding}"), 0.0))
                .expect("accepted");
        }
        let records = w.collect_tasks().expect("collect_tasks");
        assert_eq!(records.len(), 1002);
        assert!(
            records[0].outcome.is_completed(),
            "{:?}",
            records[0].outcome
        );
        let Outcome::Crashed(crash) = &records[1].outcome else {
            panic!("expected Crashed, got {:?}", records[1].outcome);
        };
        assert_eq!(crash.exit.signal, Some(Signal::SIGABRT as i32), "{crash}");
        assert_eq!(crash.reason, None, "the worker died by itself: {crash}");
        for r in &records[2..] {
            assert!(
                matches!(r.outcome, Outcome::NotRun(NotRunReason::WorkerDied(_))),
                "{:?}",
                r.outcome
            );
        }
    });
}

#[test]
fn truncated_frame_from_a_live_worker_ends_with_the_task_timeout() {
    within(|| {
        let (cmd, lines) = hostile_worker("partial-then-hang");
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .restart(RestartPolicy::Never)
            .task_timeout(Duration::from_secs(1))
            .kill_grace(Duration::from_millis(200))
            .spawn()
            .expect("spawn");
        for t in tasks(2) {
            w.process_task(t).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect_tasks");
        check_records(&w, &records, 2);
        assert_eq!(
            records[0].outcome,
            Outcome::TimedOut(Duration::from_secs(1))
        );
        assert!(
            matches!(
                records[1].outcome,
                Outcome::NotRun(NotRunReason::WorkerDied(_))
            ),
            "{:?}",
            records[1].outcome
        );
        assert_all_reaped(&lines);
    });
}

#[test]
fn undecodable_result_fails_the_task_and_kills_the_worker() {
    within(|| {
        // 0xff is not a valid bincode length prefix.
        let records = run_hostile("ok-payload", 2, |c| c.env(HEX_ENV, "ffffffff"));
        let Outcome::Failed(why) = &records[0].outcome else {
            panic!("expected Failed, got {:?}", records[0].outcome);
        };
        assert!(why.contains("could not be decoded"), "{why:?}");
        assert_not_run_worker_died(&records[1].outcome, "could not be decoded");
    });
}

#[test]
fn result_that_is_not_utf8_fails_the_task_and_kills_the_worker() {
    within(|| {
        // A 2-byte string whose bytes are not UTF-8.
        let records = run_hostile("ok-payload", 2, |c| c.env(HEX_ENV, "02c328"));
        assert!(
            matches!(&records[0].outcome, Outcome::Failed(why) if why.contains("could not be decoded")),
            "{:?}",
            records[0].outcome
        );
        assert_not_run_worker_died(&records[1].outcome, "could not be decoded");
    });
}

/// bincode's varint prefix 253 announces a u64 length; this one claims 2^62
/// bytes in a 9-byte payload.
#[test]
fn result_claiming_a_huge_length_does_not_take_the_parent_down() {
    within(|| {
        let mut payload = vec![253u8];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let records = run_hostile("ok-payload", 2, |c| c.env(HEX_ENV, to_hex(&payload)));
        assert!(
            matches!(&records[0].outcome, Outcome::Failed(why) if why.contains("could not be decoded")),
            "{:?}",
            records[0].outcome
        );
        assert_not_run_worker_died(&records[1].outcome, "could not be decoded");
    });
}

/// The same with a length above `isize::MAX`: the reader thread panics with
/// "capacity overflow", never reports the socket closed, and the facade
/// waits forever for a worker that sleeps.
#[test]
fn result_claiming_a_length_above_isize_max_does_not_hang_the_parent() {
    within(|| {
        let mut payload = vec![253u8];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        let records = run_hostile("ok-payload", 2, |c| c.env(HEX_ENV, to_hex(&payload)));
        assert!(
            matches!(&records[0].outcome, Outcome::Failed(why) if why.contains("could not be decoded")),
            "{:?}",
            records[0].outcome
        );
        assert_not_run_worker_died(&records[1].outcome, "could not be decoded");
    });
}

/// The worker said it started task 0, then broke the protocol: task 0 was
/// running, so it is the one blamed (`Crashed`), not reported as never run
/// (which would also hand it to the next worker when restarts are on).
#[test]
fn started_then_junk_in_one_read_blames_the_started_task() {
    within(|| {
        let records = run_hostile("started-then-junk", 2, |c| c);
        assert_killed_for(&records[0].outcome, "unexpected message kind 0x7f");
        assert_not_run_worker_died(&records[1].outcome, "unexpected message kind 0x7f");
    });
}

#[test]
fn result_for_an_unknown_task_id_kills_the_worker() {
    within(|| {
        let records = run_hostile("unknown-id", 3, |c| c);
        assert_killed_for(&records[0].outcome, "unknown or already answered");
        for r in &records[1..] {
            assert_not_run_worker_died(&r.outcome, "unknown or already answered");
        }
    });
}

#[test]
fn started_for_an_unknown_task_id_kills_the_worker() {
    within(|| {
        let records = run_hostile("started-unknown", 2, |c| c);
        // Task 0 was sent but never reported started: it did not run.
        for r in &records {
            assert_not_run_worker_died(&r.outcome, "out of order");
        }
    });
}

#[test]
fn duplicate_result_is_delivered_once_and_kills_the_worker() {
    within(|| {
        let records = run_hostile("duplicate", 3, |c| c);
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("first answer".to_string()),
            "the first answer counts, the duplicate does not"
        );
        for r in &records[1..] {
            assert_not_run_worker_died(&r.outcome, "unknown or already answered");
        }
    });
}

#[test]
fn worker_that_closes_its_socket_but_keeps_running_is_killed() {
    within(|| {
        let records = run_hostile("close-and-linger", 3, |c| c);
        assert_killed_for(
            &records[0].outcome,
            "closed its connection but kept running",
        );
        for r in &records[1..] {
            assert_not_run_worker_died(&r.outcome, "closed its connection but kept running");
        }
    });
}

#[test]
fn worker_that_exits_0_right_after_the_handshake_leaves_every_task_not_run() {
    within(|| {
        let records = run_hostile("exit-after-hello", 3, |c| c);
        for r in &records {
            let Outcome::NotRun(NotRunReason::WorkerDied(crash)) = &r.outcome else {
                panic!("expected NotRun(WorkerDied), got {:?}", r.outcome);
            };
            assert_eq!(crash.exit.code, Some(0), "{crash}");
        }
    });
}

/// The worker hands its socket and output pipes to a process outside its
/// process group, then exits: the kill of the group cannot reach that
/// process, and the socket does not reach EOF. The parent stops waiting for
/// the socket shortly after the exit instead of hanging until the holder
/// lets go (it sleeps for a minute, beyond the watchdog).
#[test]
fn worker_exit_is_settled_while_an_escaped_grandchild_holds_its_socket() {
    within(|| {
        // Adopt the holder once the worker is gone, so that it can be reaped
        // here rather than left to an init that may not reap (some
        // containers' pid 1 does not). Only this test leaves orphans behind.
        nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
        let (cmd, lines) = hostile_worker("escape-then-exit");
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .restart(RestartPolicy::Never)
            .spawn()
            .expect("spawn");
        for t in tasks(2) {
            w.process_task(t).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect_tasks");
        check_records(&w, &records, 2);
        for r in &records {
            let Outcome::NotRun(NotRunReason::WorkerDied(crash)) = &r.outcome else {
                panic!("expected NotRun(WorkerDied), got {:?}", r.outcome);
            };
            assert_eq!(crash.exit.code, Some(0), "{crash}");
        }
        assert_all_reaped(&lines);
        let holder: i32 = lines
            .lock()
            .expect("lines")
            .iter()
            .find_map(|l| l.text.strip_prefix("HOLDER PID ")?.parse().ok())
            .expect("the worker started a holder");
        // The holder is still there (so the parent did not wait for it);
        // end it now.
        let holder = Pid::from_raw(holder);
        assert_eq!(
            nix::sys::signal::kill(holder, Signal::SIGKILL),
            Ok(()),
            "the holder was alive"
        );
        // Adopted by us when the worker died: reap it.
        let _ = waitpid(holder, None);
    });
}

/// Each replacement misbehaves on its first task too: every task it touches
/// is blamed once, never retried, and past the restart budget the rest is
/// `NotRun` — no crash loop, no hang.
#[test]
fn each_broken_worker_is_replaced_until_the_restart_budget_runs_out() {
    within(|| {
        let (cmd, lines) = hostile_worker("oversized");
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .restart(RestartPolicy::Limited {
                max_restarts: 2,
                window: Duration::from_secs(600),
            })
            .spawn()
            .expect("spawn");
        for t in tasks(4) {
            w.process_task(t).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect_tasks");
        check_records(&w, &records, 4);
        for r in &records[..3] {
            assert_killed_for(&r.outcome, "exceeds the maximum frame size");
        }
        assert!(
            matches!(
                records[3].outcome,
                Outcome::NotRun(NotRunReason::WorkerUnavailable(_))
            ),
            "{:?}",
            records[3].outcome
        );
        assert_eq!(w.stats().restarts, 2);
        assert_eq!(hostile_pids(&lines).len(), 3, "three workers started");
        assert_all_reaped(&lines);
    });
}

// ---------------------------------------------------------------------------
// The handshake.

/// Spawns a hostile worker that must fail the handshake; returns the error
/// after checking the worker was reaped.
fn failed_spawn(mode: &str, handshake: Duration) -> SpawnError {
    let (cmd, lines) = hostile_worker(mode);
    let started = Instant::now();
    let result = WorkingProcessFacade::<SimpleTask>::builder(cmd.handshake_timeout(handshake))
        .restart(RestartPolicy::Never)
        .spawn();
    let took = started.elapsed();
    let err = match result {
        Ok(_) => panic!("the hostile worker ({mode}) passed the handshake"),
        Err(e) => e,
    };
    assert!(
        took < handshake + Duration::from_secs(10),
        "the constructor took {took:?}"
    );
    assert_all_reaped(&lines);
    err
}

#[test]
fn worker_that_never_connects_is_a_handshake_timeout() {
    within(|| {
        let timeout = Duration::from_millis(1500);
        let err = failed_spawn("no-connect", timeout);
        assert!(
            matches!(&err, SpawnError::HandshakeTimeout { timeout: t, .. } if *t == timeout),
            "{err:?}"
        );
        assert!(err.to_string().contains("handshake"), "{err}");
    });
}

#[test]
fn worker_that_connects_but_never_says_hello_is_a_handshake_timeout() {
    within(|| {
        let timeout = Duration::from_millis(1500);
        let err = failed_spawn("silent", timeout);
        assert!(
            matches!(&err, SpawnError::HandshakeTimeout { timeout: t, .. } if *t == timeout),
            "{err:?}"
        );
    });
}

#[test]
fn hello_with_another_protocol_version_is_a_protocol_mismatch() {
    within(|| {
        let err = failed_spawn("bad-protocol", Duration::from_secs(10));
        match &err {
            SpawnError::ProtocolMismatch {
                expected,
                found,
                worker_version,
                ..
            } => {
                assert_eq!(*expected, PROTOCOL_VERSION);
                assert_eq!(*found, PROTOCOL_VERSION + 1000);
                assert_eq!(worker_version, "hostile-9.9");
            }
            other => panic!("expected ProtocolMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("rebuild the worker"), "{err}");
    });
}

#[test]
fn hello_with_a_wrong_token_is_refused() {
    within(|| {
        let err = failed_spawn("bad-token", Duration::from_secs(10));
        assert!(
            matches!(&err, SpawnError::BadHandshake { detail, .. } if detail.contains("token")),
            "{err:?}"
        );
    });
}

#[test]
fn hello_with_a_bad_magic_value_is_refused() {
    within(|| {
        let err = failed_spawn("bad-magic", Duration::from_secs(10));
        assert!(
            matches!(&err, SpawnError::BadHandshake { detail, .. } if detail.contains("magic")),
            "{err:?}"
        );
    });
}

#[test]
fn handshake_frame_claiming_gibibytes_is_refused_without_allocating_it() {
    within(|| {
        let before = vm_peak();
        let err = failed_spawn("huge-hello", Duration::from_secs(10));
        assert!(
            matches!(&err, SpawnError::BadHandshake { detail, .. } if detail.contains("bytes")),
            "{err:?}"
        );
        let grown = vm_peak().saturating_sub(before);
        assert!(grown < 2 << 30, "peak virtual memory grew by {grown} bytes");
    });
}
