//! Decoder fuzzing through the public surface (issue 3, item 9): a worker
//! that completes the handshake honestly and then writes arbitrary bytes
//! never makes the parent panic, hang, allocate what a frame claims, or lose
//! a task's outcome. The bytes go where a worker's messages go after its
//! HELLO: into its result ring (issue 9), published and announced with a
//! WAKE as the library's worker does (on the socket, where only WAKEs may
//! come, the first frame would end the worker and nothing after it would
//! be parsed).
//!
//! The frame reader itself is `pub(crate)`; its own property tests live in
//! `src/wire.rs`. Here each case spawns a worker — this test binary
//! re-executed (the ignored test `decoder_worker_main`), which speaks the wire
//! protocol by hand from the format documented in `src/wire.rs` — so the
//! number of cases is kept small.

mod common;

use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::hand_wire::{
    KIND_ERR, KIND_OK, KIND_OK_STARTED, KIND_STARTED, KIND_STOP, KIND_TASK, close_and_linger,
    encoded, exit, from_hex, honest_hello, length_claim, read_boot, to_hex, try_read_frame,
};
use common::{capture_lines, count_library_panics, library_panics, pids_printing, vm_peak};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use proptest::prelude::*;
use worker_facade::simple::SimpleTask;
use worker_facade::{RestartPolicy, WorkerCommand, WorkingProcessFacade};

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
// The worker side, on the wire format of tests/common/hand_wire.rs.

/// Waits until the parent has sent every task of the case (or its STOP, or
/// EOF), so that what follows does not depend on timing.
fn wait_for_the_tasks(stream: &mut UnixStream) {
    let mut seen = 0;
    while seen < TASKS {
        match try_read_frame(stream) {
            Ok((KIND_TASK, _)) => seen += 1,
            Ok((KIND_STOP, _)) | Err(_) => return,
            Ok((kind, _)) => panic!("unexpected frame kind {kind:#04x} from the parent"),
        }
    }
}

fn decoder_worker() -> ! {
    eprintln!("fuzz worker");
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let bytes = from_hex(&std::env::var(HEX_ENV).expect("WF_FUZZ_HEX"));
    let end = std::env::var(END_ENV).expect("WF_FUZZ_END");
    let boot = read_boot();
    let mut s = boot.connect();
    // As the library's worker: the HELLO on the socket, everything after
    // it through the result ring.
    common::hand_wire::send(&mut s, &honest_hello(&boot.token));
    wait_for_the_tasks(&mut s);
    common::hand_wire::send(&mut s, &bytes);
    match end.as_str() {
        "exit" => exit(0),
        "close" => close_and_linger(s),
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

// ---------------------------------------------------------------------------
// The parent side.

/// One case: a facade on a worker that writes `bytes` after the handshake
/// and the first task, then `end`s. Returns an error message on failure.
fn run_case(bytes: Vec<u8>, end: &'static str) -> Result<(), String> {
    let (cmd, lines) = capture_lines(
        WorkerCommand::current_exe()
            .args(common::libtest_args("decoder_worker_main"))
            .env(HEX_ENV, to_hex(&bytes))
            .env(END_ENV, end)
            .max_frame_size(MAX_FRAME),
    );
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
    let pids = pids_printing(&lines, "fuzz worker");
    if pids.len() != 1 {
        return Err(format!("expected one worker, saw {pids:?}"));
    }
    for pid in pids {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => {}
            other => return Err(format!("worker {pid} not reaped: {other:?}")),
        }
    }
    if library_panics() != 0 {
        return Err("a thread of the library panicked".into());
    }
    Ok(())
}

/// A frame with a correct or slightly wrong length field.
fn frame(kind: u8, id: u64, payload: &[u8], skew: i64) -> Vec<u8> {
    let mut out = common::hand_wire::frame(kind, Some(id), payload);
    let len = (9 + payload.len() as i64 + skew).max(0) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Arbitrary payload bytes, or a length claim of the codec in use (of up
/// to 2^64 bytes) with a few bytes after it: the codec must refuse a huge
/// claimed length, not allocate it.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(len, tail)| [length_claim(len), tail].concat()),
    ]
}

/// What the worker writes: an honest start (the first `k` tasks answered),
/// then messages that look like the worker's often enough to reach past the
/// length check — starts and results for IDs near the real ones, results
/// that do not decode, frames of any kind with lengths that are sometimes
/// off — mixed with raw noise and huge length claims.
fn worker_bytes() -> impl Strategy<Value = Vec<u8>> {
    // As the library's worker streams: STARTED and OK, or an OK that
    // carries the next task's start (OK_STARTED) when it is about to run.
    let honest = (0..=TASKS as u64, any::<bool>()).prop_map(|(k, merged)| {
        let mut out = Vec::new();
        for id in 0..k {
            if !merged || id == 0 {
                out.extend(frame(KIND_STARTED, id, &[], 0));
            }
            let answer = encoded(&format!("answer {id}"));
            if merged && id + 1 < k {
                let with_next = [answer, (id + 1).to_le_bytes().to_vec()].concat();
                out.extend(frame(KIND_OK_STARTED, id, &with_next, 0));
            } else {
                out.extend(frame(KIND_OK, id, &answer, 0));
            }
        }
        out
    });
    let id = prop_oneof![4 => 0..TASKS as u64 + 1, 1 => any::<u64>()];
    let message = prop_oneof![
        3 => id.clone().prop_map(|id| frame(KIND_STARTED, id, &[], 0)),
        3 => (id.clone(), "[a-z ]{0,12}").prop_map(|(id, s)| frame(KIND_OK, id, &encoded(&s), 0)),
        1 => (id.clone(), payload()).prop_map(|(id, p)| frame(KIND_OK, id, &p, 0)),
        1 => (id.clone(), payload()).prop_map(|(id, p)| frame(KIND_ERR, id, &p, 0)),
        2 => (id.clone(), "[a-z ]{0,12}", id.clone()).prop_map(|(id, s, next)| {
            frame(KIND_OK_STARTED, id, &[encoded(&s), next.to_le_bytes().to_vec()].concat(), 0)
        }),
        1 => (id.clone(), payload()).prop_map(|(id, p)| frame(KIND_OK_STARTED, id, &p, 0)),
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
