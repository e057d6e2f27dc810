//! Decoder fuzzing through the public surface (issue 3, item 9): a worker
//! that completes the handshake honestly and then writes arbitrary bytes
//! never makes the parent panic, hang, allocate what a frame claims, or lose
//! a task's outcome.
//!
//! The frame reader itself is `pub(crate)`; its own property tests live in
//! `src/wire.rs`. Here each case spawns a worker — this test binary
//! re-executed (the ignored test `decoder_worker_main`), which speaks the wire
//! protocol by hand from the format documented in `src/wire.rs` — so the
//! number of cases is kept small.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use proptest::prelude::*;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    Output, OutputLine, PROTOCOL_VERSION, RestartPolicy, WorkerCommand, WorkingProcessFacade,
};

/// The bytes the worker writes after the handshake, as hex.
const HEX_ENV: &str = "WF_FUZZ_HEX";
/// What the worker does after writing them: `exit` or `close` (close the
/// socket and keep running).
const END_ENV: &str = "WF_FUZZ_END";
/// The parent's maximum frame size in these tests.
const MAX_FRAME: u32 = 1024;
/// Tasks submitted per case.
const TASKS: usize = 3;
/// Every case must finish within this, or it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The worker side, written from the documentation in src/wire.rs.

const MAGIC: u32 = 0x5746_4143; // "WFAC"
const KIND_TASK: u8 = 0x01;
const KIND_STOP: u8 = 0x02;
const KIND_HELLO: u8 = 0x10;
const KIND_STARTED: u8 = 0x11;
const KIND_OK: u8 = 0x12;
const KIND_ERR: u8 = 0x13;
const KIND_BOOT: u8 = 0x20;
const TOKEN_LEN: usize = 16;

/// Reads `BOOT = len:u32le 0x20 magic:u32le protocol:u32le token[16]
/// path_len:u16le path options` from stdin: the token and the socket path.
fn read_boot() -> ([u8; TOKEN_LEN], String) {
    let mut stdin = io::stdin().lock();
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len).expect("BOOT length on stdin");
    let len = u32::from_le_bytes(len) as usize;
    assert!(len <= 64 * 1024, "BOOT frame of {len} bytes");
    let mut body = vec![0u8; len];
    stdin.read_exact(&mut body).expect("BOOT body on stdin");
    assert_eq!(body[0], KIND_BOOT, "first frame on stdin is BOOT");
    assert_eq!(body[1..5], MAGIC.to_le_bytes(), "BOOT magic");
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&body[9..9 + TOKEN_LEN]);
    let at = 9 + TOKEN_LEN;
    let path_len = u16::from_le_bytes([body[at], body[at + 1]]) as usize;
    let path = String::from_utf8(body[at + 2..at + 2 + path_len].to_vec()).expect("UTF-8 path");
    (token, path)
}

/// `HELLO = 0x10 magic:u32le protocol:u32le pid:u32le token[16] crate_version`.
fn hello(token: &[u8; TOKEN_LEN]) -> Vec<u8> {
    let mut body = vec![KIND_HELLO];
    body.extend_from_slice(&MAGIC.to_le_bytes());
    body.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    body.extend_from_slice(&std::process::id().to_le_bytes());
    body.extend_from_slice(token);
    body.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Waits until the parent has sent every task of the case (or its STOP, or
/// EOF), so that what follows does not depend on timing.
fn wait_for_the_tasks(stream: &mut UnixStream) {
    let mut seen = 0;
    while seen < TASKS {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        match body.first() {
            Some(&KIND_TASK) => seen += 1,
            Some(&KIND_STOP) => return,
            other => panic!("unexpected frame {other:?} from the parent"),
        }
    }
}

#[allow(clippy::exit)] // a worker process ending itself, not the library
fn decoder_worker() -> ! {
    eprintln!("fuzz worker");
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let bytes = from_hex(&std::env::var(HEX_ENV).expect("WF_FUZZ_HEX"));
    let end = std::env::var(END_ENV).expect("WF_FUZZ_END");
    let (token, path) = read_boot();
    let mut s = UnixStream::connect(&path).expect("connect to the parent's socket");
    s.write_all(&hello(&token)).expect("HELLO");
    wait_for_the_tasks(&mut s);
    let _ = s.write_all(&bytes);
    match end.as_str() {
        "exit" => std::process::exit(0),
        "close" => {
            let _ = s.shutdown(std::net::Shutdown::Both);
            drop(s);
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        other => panic!("unknown end {other:?}"),
    }
}

#[test]
#[ignore = "not a test: the worker side of the property test below"]
fn decoder_worker_main() {
    if worker_facade::worker::is_worker() {
        decoder_worker();
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

// ---------------------------------------------------------------------------
// The parent side.

/// Panics in the library's threads (all named `wf-...`), counted by a hook.
static LIBRARY_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_library_panics() {
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

/// Peak virtual memory of this process, in bytes.
fn vm_peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmPeak")
        * 1024
}

/// One case: a facade on a worker that writes `bytes` after the handshake
/// and the first task, then `end`s. Returns an error message on failure.
fn run_case(bytes: Vec<u8>, end: &'static str) -> Result<(), String> {
    let lines: Arc<Mutex<Vec<OutputLine>>> = Arc::default();
    let sink = lines.clone();
    let cmd = WorkerCommand::current_exe()
        .args([
            "--ignored",
            "--exact",
            "decoder_worker_main",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(HEX_ENV, to_hex(&bytes))
        .env(END_ENV, end)
        .max_frame_size(MAX_FRAME)
        .output(Output::capture(move |line| {
            sink.lock().expect("lines").push(line);
        }));
    let (tx, rx) = mpsc::channel();
    // The body runs on its own thread so that a hang fails the case.
    thread::Builder::new()
        .name("fuzz-case".into())
        .spawn(move || {
            let result = (|| {
                let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
                    .restart(RestartPolicy::Never)
                    .grace_period(Duration::from_secs(2))
                    .spawn()
                    .map_err(|e| format!("spawn: {e}"))?;
                for i in 0..TASKS {
                    w.process_task(SimpleTask::new(format!("t{i}"), 0.0))
                        .map_err(|e| format!("process_task: {e}"))?;
                }
                let records = w.collect_tasks().map_err(|e| format!("collect: {e}"))?;
                let stats = w.stats();
                Ok::<_, String>((records, stats))
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| format!("spawn the case thread: {e}"))?;
    let (records, stats) = match rx.recv_timeout(WATCHDOG) {
        Ok(result) => result?,
        Err(_) => return Err(format!("collect_tasks hung for {WATCHDOG:?}")),
    };
    if records.len() != TASKS {
        return Err(format!("{} records for {TASKS} tasks", records.len()));
    }
    for (i, r) in records.iter().enumerate() {
        if r.id.as_u64() != i as u64 || r.task.id != format!("t{i}") {
            return Err(format!("record {i} is {:?}", r.id));
        }
    }
    let settled = stats.completed + stats.failed + stats.crashed + stats.not_run + stats.timed_out;
    if settled != TASKS as u64 || stats.in_flight != 0 {
        return Err(format!("not exactly one outcome per task: {stats:?}"));
    }
    let pids: BTreeSet<u32> = lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.text.contains("fuzz worker"))
        .map(|l| l.pid)
        .collect();
    if pids.len() != 1 {
        return Err(format!("expected one worker, saw {pids:?}"));
    }
    for pid in pids {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => {}
            other => return Err(format!("worker {pid} not reaped: {other:?}")),
        }
    }
    if LIBRARY_PANICS.load(SeqCst) != 0 {
        return Err("a thread of the library panicked".into());
    }
    Ok(())
}

/// A frame with a correct or slightly wrong length field.
fn frame(kind: u8, id: u64, payload: &[u8], skew: i64) -> Vec<u8> {
    let len = (9 + payload.len() as i64 + skew).max(0) as u32;
    let mut out = len.to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An output encoded as the codec does (bincode 2, standard configuration).
fn encoded(output: &str) -> Vec<u8> {
    bincode::serde::encode_to_vec(output, bincode::config::standard()).expect("encodes")
}

/// Arbitrary payload bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    // Including first bytes 252 and 253, bincode's "a u32 / u64 length
    // follows": the codec must refuse a huge claimed length, not allocate it.
    proptest::collection::vec(any::<u8>(), 0..48)
}

/// What the worker writes: an honest start (the first `k` tasks answered),
/// then messages that look like the worker's often enough to reach past the
/// length check — starts and results for IDs near the real ones, results
/// that do not decode, frames of any kind with lengths that are sometimes
/// off — mixed with raw noise and huge length claims.
fn worker_bytes() -> impl Strategy<Value = Vec<u8>> {
    let honest = (0..=TASKS as u64).prop_map(|k| {
        let mut out = Vec::new();
        for id in 0..k {
            out.extend(frame(KIND_STARTED, id, &[], 0));
            out.extend(frame(KIND_OK, id, &encoded(&format!("answer {id}")), 0));
        }
        out
    });
    let id = prop_oneof![4 => 0..TASKS as u64 + 1, 1 => any::<u64>()];
    let message = prop_oneof![
        3 => id.clone().prop_map(|id| frame(KIND_STARTED, id, &[], 0)),
        3 => (id.clone(), "[a-z ]{0,12}").prop_map(|(id, s)| frame(KIND_OK, id, &encoded(&s), 0)),
        1 => (id.clone(), payload()).prop_map(|(id, p)| frame(KIND_OK, id, &p, 0)),
        1 => (id.clone(), payload()).prop_map(|(id, p)| frame(KIND_ERR, id, &p, 0)),
        1 => (any::<u8>(), id, payload(), -3i64..4)
            .prop_map(|(kind, id, p, skew)| frame(kind, id, &p, skew)),
        1 => proptest::collection::vec(any::<u8>(), 0..32),
        1 => (MAX_FRAME + 1..=u32::MAX).prop_map(|len| len.to_le_bytes().to_vec()),
    ];
    (honest, proptest::collection::vec(message, 0..6))
        .prop_map(|(honest, tail)| [honest, tail.concat()].concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case spawns a process.
        cases: 24,
        max_shrink_iters: 64,
        // A hang costs a watchdog period per shrink step: bound the search.
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_after_the_handshake_leave_every_task_with_one_outcome(
        bytes in worker_bytes(),
        end in prop_oneof![Just("exit"), Just("close")],
    ) {
        count_library_panics();
        let before = vm_peak();
        let result = run_case(bytes, end);
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
        // Length claims up to 4 GiB were refused, not allocated.
        let grown = vm_peak().saturating_sub(before);
        prop_assert!(grown < 2 << 30, "peak virtual memory grew by {} bytes", grown);
    }
}
