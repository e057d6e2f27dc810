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

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use common::hand_wire::{
    KIND_CANCEL, KIND_OK, KIND_PROGRESS, KIND_STARTED, KIND_STOP, KIND_TASK, MAGIC, PROTOCOL,
    PROTOCOL_OTHER_CODEC, close_and_linger, decoded, encoded, exit, frame, from_hex, hello,
    honest_hello, length_claim, read_boot, read_frame, send, sleep_forever, task_id, to_hex,
};
use common::{Lines, capture_lines, library_panics, pids_printing, vm_peak};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    NotRunReason, Outcome, PROTOCOL_VERSION, RestartPolicy, SpawnError, TaskRecord, WorkerCommand,
    WorkingProcessFacade,
};

/// Picks the hostile worker's misbehaviour.
const MODE_ENV: &str = "WF_HOSTILE_MODE";
/// The payload of the OK frame in mode `ok-payload`, as hex.
const HEX_ENV: &str = "WF_HOSTILE_HEX";
/// The libtest arguments that run only `hostile_worker_main`.
const HARNESS_ARGS: [&str; 6] = common::libtest_args("hostile_worker_main");
/// Every test body must finish within this, or it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The worker side, on the wire format of tests/common/hand_wire.rs.

/// Waits for the parent's first TASK and returns its ID; exits on STOP or EOF.
fn first_task(stream: &mut UnixStream) -> u64 {
    match read_frame(stream) {
        Some((KIND_TASK, rest)) => task_id(&rest),
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
    let mut s = boot.connect();
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
        "other-codec" => {
            send(&mut s, &hello(MAGIC, PROTOCOL_OTHER_CODEC, &token, "0.1.0"));
            sleep_forever()
        }
        "bad-token" => {
            let mut wrong = token;
            wrong[0] ^= 0xff;
            send(&mut s, &hello(MAGIC, PROTOCOL, &wrong, "0.1.0"));
            sleep_forever()
        }
        "bad-magic" => {
            send(&mut s, &hello(!MAGIC, PROTOCOL, &token, "0.1.0"));
            sleep_forever()
        }
        "huge-hello" => {
            // A handshake frame that claims ~3.75 GiB.
            send(&mut s, &0xF000_0000u32.to_le_bytes());
            sleep_forever()
        }
        _ => send(&mut s, &honest_hello(&token)),
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
            // A bad result for the first task, honest ones for the rest.
            let payload = from_hex(&std::env::var(HEX_ENV).expect("WF_HOSTILE_HEX"));
            send(&mut s, &started);
            send(&mut s, &frame(KIND_OK, Some(id), &payload));
            loop {
                match read_frame(&mut s) {
                    Some((KIND_TASK, rest)) => {
                        let id = task_id(&rest);
                        let task: SimpleTask = decoded(&rest[8..]);
                        let mut out = frame(KIND_STARTED, Some(id), &[]);
                        out.extend_from_slice(&frame(KIND_OK, Some(id), &encoded(&task.solve())));
                        send(&mut s, &out);
                    }
                    Some((KIND_STOP | KIND_CANCEL, _)) | None => exit(0),
                    Some((kind, _)) => panic!("unexpected frame kind {kind:#04x}"),
                }
            }
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
        "progress-other" => {
            // Progress for a task it is not running.
            send(&mut s, &started);
            send(
                &mut s,
                &frame(KIND_PROGRESS, Some(id + 1), &encoded("forged")),
            );
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
            close_and_linger(s)
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

/// This test binary as a hostile worker in `mode`, its output captured.
fn hostile_worker(mode: &str) -> (WorkerCommand, Lines) {
    capture_lines(
        WorkerCommand::current_exe()
            .args(HARNESS_ARGS)
            .env(MODE_ENV, mode),
    )
}

/// The pids of the hostile workers that announced themselves.
fn hostile_pids(lines: &Lines) -> BTreeSet<u32> {
    let pids = pids_printing(lines, "hostile worker:");
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

/// Runs `body` under [`common::within`]'s watchdog; also fails the test if a
/// thread of the library panicked meanwhile.
fn within<R: Send + 'static>(body: impl FnOnce() -> R + Send + 'static) -> R {
    common::count_library_panics();
    let result = common::within(WATCHDOG, body);
    assert_eq!(library_panics(), 0, "a thread of the library panicked");
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
    submit_and_collect(&w, &lines, n)
}

/// Submits `n` tasks to `w` and collects them, checking the bookkeeping (see
/// [`run_hostile`]) and that every hostile worker in `lines` was reaped.
fn submit_and_collect(
    w: &WorkingProcessFacade<SimpleTask>,
    lines: &Lines,
    n: usize,
) -> Vec<TaskRecord<SimpleTask>> {
    for t in tasks(n) {
        w.process_task(t).expect("accepted");
    }
    let records = w.collect_tasks().expect("collect_tasks");
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
    assert_all_reaped(lines);
    records
}

/// The first task is blamed (its worker killed for a reason mentioning
/// `why`) and every other one never ran, for the same reason.
fn assert_first_killed_rest_not_run(records: &[TaskRecord<SimpleTask>], why: &str) {
    assert_killed_for(&records[0].outcome, why);
    for r in &records[1..] {
        assert_not_run_worker_died(&r.outcome, why);
    }
}

/// No task ran: the worker exited by itself with code 0.
fn assert_none_run_after_exit_0(records: &[TaskRecord<SimpleTask>]) {
    for r in records {
        let Outcome::NotRun(NotRunReason::WorkerDied(crash)) = &r.outcome else {
            panic!("expected NotRun(WorkerDied), got {:?}", r.outcome);
        };
        assert_eq!(crash.exit.code, Some(0), "{crash}");
    }
}

/// The task's outcome is `Crashed` by a worker the parent killed (SIGKILL)
/// for a reason mentioning `why`.
fn assert_killed_for(outcome: &Outcome<String>, why: &str) {
    let Outcome::Crashed(crash) = outcome else {
        panic!("expected Crashed ({why}), got {outcome:?}");
    };
    assert_eq!(crash.exit.signal, Some(Signal::SIGKILL as i32), "{crash}");
    let reason = crash
        .reason
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

/// The task never ran because its worker died (for a reason mentioning `why`).
fn assert_not_run_worker_died(outcome: &Outcome<String>, why: &str) {
    let Outcome::NotRun(NotRunReason::WorkerDied(crash)) = outcome else {
        panic!("expected NotRun(WorkerDied), got {outcome:?}");
    };
    let reason = crash
        .reason
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
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
        assert_first_killed_rest_not_run(&records, "exceeds the maximum frame size");
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
        let reason = crash
            .reason
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
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
        let w = WorkingProcessFacade::<SimpleTask>::builder(common::stock_worker())
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
        let records = submit_and_collect(&w, &lines, 2);
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
    });
}

/// The worker answers task 0 with `payload` as its OK frame's payload and
/// the others honestly: task 0 fails as undecodable, and that costs nothing
/// else (a result that does not decode is that task's failure, like a
/// handler error: the worker keeps running and task 1 completes on it).
fn assert_undecodable_result_is_refused(payload: &[u8]) {
    let (cmd, lines) = hostile_worker("ok-payload");
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd.env(HEX_ENV, to_hex(payload)))
        .restart(RestartPolicy::Never)
        .grace_period(Duration::from_secs(2))
        .spawn()
        .expect("the hostile worker completes the handshake");
    let pid = w.worker_pid().expect("a worker runs");
    let records = submit_and_collect(&w, &lines, 3);
    assert!(
        matches!(&records[0].outcome, Outcome::Failed(why) if why.contains("could not be decoded")),
        "expected Failed, got {:?}",
        records[0].outcome
    );
    for r in &records[1..] {
        assert_eq!(
            r.outcome,
            Outcome::Completed(format!("{} solved after 0", r.task.id))
        );
    }
    assert_eq!(w.stats().restarts, 0, "{:?}", w.stats());
    assert_eq!(
        hostile_pids(&lines),
        BTreeSet::from([pid]),
        "one worker did it all"
    );
}

#[test]
fn undecodable_result_fails_only_its_task() {
    // 0xff is not a valid length prefix in bincode, nor four of them (a
    // varint that does not end) in postcard.
    within(|| assert_undecodable_result_is_refused(&[0xff; 4]));
}

#[test]
fn result_that_is_not_utf8_fails_only_its_task() {
    // A 2-byte string whose bytes are not UTF-8.
    within(|| assert_undecodable_result_is_refused(&[0x02, 0xc3, 0x28]));
}

/// A string length of 2^62 bytes claimed in a payload of 9 bytes.
#[test]
fn result_claiming_a_huge_length_does_not_take_the_parent_down() {
    within(|| assert_undecodable_result_is_refused(&length_claim(1 << 62)));
}

/// The same with a length above `isize::MAX`: the reader thread panics with
/// "capacity overflow", never reports the socket closed, and the facade
/// waits forever for a worker that sleeps.
#[test]
fn result_claiming_a_length_above_isize_max_does_not_hang_the_parent() {
    within(|| assert_undecodable_result_is_refused(&length_claim(u64::MAX)));
}

/// The worker said it started task 0, then broke the protocol: task 0 was
/// running, so it is the one blamed (`Crashed`), not reported as never run
/// (which would also hand it to the next worker when restarts are on).
#[test]
fn started_then_junk_in_one_read_blames_the_started_task() {
    within(|| {
        let records = run_hostile("started-then-junk", 2, |c| c);
        assert_first_killed_rest_not_run(&records, "unexpected message kind 0x7f");
    });
}

#[test]
fn result_for_an_unknown_task_id_kills_the_worker() {
    within(|| {
        let records = run_hostile("unknown-id", 3, |c| c);
        assert_first_killed_rest_not_run(&records, "unknown or already answered");
    });
}

#[test]
fn progress_for_a_task_it_is_not_running_kills_the_worker() {
    within(|| {
        let records = run_hostile("progress-other", 2, |c| c);
        assert_first_killed_rest_not_run(&records, "which it is not running");
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
        assert_first_killed_rest_not_run(&records, "closed its connection but kept running");
    });
}

#[test]
fn worker_that_exits_0_right_after_the_handshake_leaves_every_task_not_run() {
    within(|| {
        let records = run_hostile("exit-after-hello", 3, |c| c);
        assert_none_run_after_exit_0(&records);
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
        let records = submit_and_collect(&w, &lines, 2);
        assert_none_run_after_exit_0(&records);
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
        let records = submit_and_collect(&w, &lines, 4);
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

/// A hostile worker in `mode` fails a handshake of 1.5 s by timing out.
fn handshake_timeout(mode: &str) -> SpawnError {
    let timeout = Duration::from_millis(1500);
    let err = failed_spawn(mode, timeout);
    assert!(
        matches!(&err, SpawnError::HandshakeTimeout { timeout: t, .. } if *t == timeout),
        "{err:?}"
    );
    err
}

/// A hostile worker in `mode` is refused for a bad handshake whose detail
/// mentions `what`.
fn assert_bad_handshake(mode: &str, what: &str) {
    let err = failed_spawn(mode, Duration::from_secs(10));
    assert!(
        matches!(&err, SpawnError::BadHandshake { detail, .. } if detail.contains(what)),
        "{err:?}"
    );
}

#[test]
fn worker_that_never_connects_is_a_handshake_timeout() {
    within(|| {
        let err = handshake_timeout("no-connect");
        assert!(err.to_string().contains("handshake"), "{err}");
    });
}

#[test]
fn worker_that_connects_but_never_says_hello_is_a_handshake_timeout() {
    within(|| handshake_timeout("silent"));
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

/// A worker built with the other codec (worker-facade's `postcard` feature on
/// one side only) is refused by name, before any task could be misread.
#[test]
fn hello_from_a_worker_of_the_other_codec_is_a_codec_mismatch() {
    within(|| {
        let err = failed_spawn("other-codec", Duration::from_secs(10));
        match &err {
            SpawnError::CodecMismatch { parent, worker, .. } => {
                assert_eq!(*parent, worker_facade::codec::NAME);
                let other = if parent.starts_with("postcard") {
                    "bincode 2"
                } else {
                    "postcard 1"
                };
                assert_eq!(worker, other);
            }
            other => panic!("expected CodecMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("`postcard` feature"), "{err}");
    });
}

#[test]
fn hello_with_a_wrong_token_is_refused() {
    within(|| assert_bad_handshake("bad-token", "token"));
}

#[test]
fn hello_with_a_bad_magic_value_is_refused() {
    within(|| assert_bad_handshake("bad-magic", "magic"));
}

#[test]
fn handshake_frame_claiming_gibibytes_is_refused_without_allocating_it() {
    within(|| {
        let before = vm_peak();
        assert_bad_handshake("huge-hello", "bytes");
        let grown = vm_peak().saturating_sub(before);
        assert!(grown < 2 << 30, "peak virtual memory grew by {grown} bytes");
    });
}
