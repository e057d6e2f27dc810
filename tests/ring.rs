//! The result ring (issue 9): a worker's messages travel through shared
//! memory, and every guarantee holds.
//!
//! - A worker SIGKILLed between any two steps of an append loses nothing it
//!   published: bytes copied but not published are not believed; bytes
//!   published but never announced with a WAKE are read after its death; a
//!   frame published in half is the running task's crash.
//! - A worker that scribbles over the region (a tail far beyond what the
//!   ring can hold) is killed and its tasks settled.
//! - A result larger than the ring still travels, as does a large task.
//! - An OK that also says the next task started (OK_STARTED, one frame
//!   for both) makes that task the running one: a death after it is that
//!   task's crash. One that names any other task, or no task, breaks the
//!   protocol.
//!
//! The hostile workers speak the protocol by hand (`common::hand_wire`);
//! the large-result worker is this test binary running the library's own
//! `serve`.

mod common;

use std::os::unix::net::UnixStream;

use common::hand_wire::{
    KIND_OK, KIND_OK_STARTED, KIND_STARTED, KIND_STOP, KIND_TASK, encoded, exit, frame,
    honest_hello, read_boot, read_frame, send, sleep_forever, task_id, with_ring,
};
use common::within;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CrashReason, NotRunReason, Outcome, RestartPolicy, TaskRecord, WorkerCommand,
    WorkingProcessFacade,
};

const MODE_ENV: &str = "WF_RING_MODE";

fn next_task(s: &mut UnixStream) -> u64 {
    loop {
        match read_frame(s) {
            Some((KIND_TASK, rest)) => return task_id(&rest),
            Some((KIND_STOP, _)) | None => exit(0),
            Some(_) => {}
        }
    }
}

fn answer(id: u64, text: &str) -> Vec<u8> {
    let mut out = frame(KIND_STARTED, Some(id), &[]);
    out.extend_from_slice(&frame(KIND_OK, Some(id), &encoded(text)));
    out
}

fn die() -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    sleep_forever()
}

/// An OK for `id` that says task `next` started, in one frame.
fn ok_started(id: u64, text: &str, next: u64) -> Vec<u8> {
    let mut payload = encoded(text);
    payload.extend_from_slice(&next.to_le_bytes());
    frame(KIND_OK_STARTED, Some(id), &payload)
}

/// Answers the first task honestly, then misbehaves with the second as
/// `mode` says.
fn hostile(mode: &str) -> ! {
    let boot = read_boot();
    let mut s = boot.connect();
    send(&mut s, &honest_hello(&boot.token));
    let first = next_task(&mut s);
    if let Some(merged) = mode.strip_prefix("ok-started-") {
        let second = next_task(&mut s);
        let third = next_task(&mut s);
        send(&mut s, &frame(KIND_STARTED, Some(first), &[]));
        match merged {
            // The first answered, the second started, in one frame; then
            // the worker dies.
            "then-killed" => send(&mut s, &ok_started(first, "first done", second)),
            // The first answered, and a start for the third, which is not
            // next.
            "out-of-order" => send(&mut s, &ok_started(first, "first done", third)),
            // The first answered, and the started task's ID cut short: the
            // 8 bytes the frame must end with are not all there.
            "cut-short" => send(
                &mut s,
                &frame(KIND_OK_STARTED, Some(first), &second.to_le_bytes()[..3]),
            ),
            other => panic!("unknown mode {other}"),
        }
        with_ring(|r| r.wait_drained());
        die()
    }
    send(&mut s, &answer(first, "first done"));
    let second = next_task(&mut s);
    match mode {
        // Both messages copied into the ring, TAIL never stored.
        "kill-before-tail" => {
            with_ring(|r| r.write_unpublished(&answer(second, "never published")));
            die()
        }
        // Published (TAIL stored) but the parent is never woken.
        "kill-before-wake" => {
            let bytes = answer(second, "second done");
            with_ring(|r| {
                r.write_unpublished(&bytes);
                let tail = r_tail_after(r, bytes.len());
                r.scribble_tail_silently(tail);
            });
            die()
        }
        // STARTED, then half of the result frame, published.
        "kill-mid-frame" => {
            let bytes = answer(second, "cut in half");
            let started = frame(KIND_STARTED, Some(second), &[]).len();
            let half = started + (bytes.len() - started) / 2;
            send(&mut s, &bytes[..half]);
            die()
        }
        // STARTED, then a TAIL claiming gigabytes unread.
        "scribble" => {
            send(&mut s, &frame(KIND_STARTED, Some(second), &[]));
            // Only once the parent has read the honest bytes.
            with_ring(|r| r.wait_drained());
            with_ring(|r| r.scribble_tail(&mut s, 1 << 40));
            sleep_forever()
        }
        other => panic!("unknown mode {other}"),
    }
}

fn r_tail_after(r: &common::hand_wire::Ring, n: usize) -> u64 {
    r.tail() + n as u64
}

#[test]
#[ignore = "not a test: the hostile worker of the tests below"]
fn ring_worker_main() {
    if worker_facade::worker::is_worker() {
        match std::env::var(MODE_ENV) {
            Ok(mode) => hostile(&mode),
            // The library's own worker: `big:<n>` answers n bytes.
            Err(_) => worker_facade::worker::serve(|t: SimpleTask| {
                Ok::<_, String>(match t.id.strip_prefix("big:") {
                    Some(n) => "r".repeat(n.parse().map_err(|_| "a size".to_string())?),
                    None => format!("{} ({} bytes of name)", t.id.len(), t.id.len()),
                })
            }),
        }
    }
}

fn run(mode: &str) -> Vec<TaskRecord<SimpleTask>> {
    let cmd = WorkerCommand::current_exe()
        .args(common::libtest_args("ring_worker_main"))
        .env(MODE_ENV, mode)
        .output(worker_facade::Output::Silent);
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    for name in ["first", "second", "third"] {
        w.process_task(SimpleTask::new(name, 0.0))
            .expect("accepted");
    }
    w.collect_tasks().expect("collect")
}

fn assert_first_done(records: &[TaskRecord<SimpleTask>]) {
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].outcome, Outcome::Completed("first done".into()));
}

/// The second task was running when its worker died (`why` it counts as
/// started), and the third, never started, did not run.
fn assert_second_crashed_third_not_run(records: &[TaskRecord<SimpleTask>], why: &str) {
    assert!(
        matches!(&records[1].outcome, Outcome::Crashed(_)),
        "{why}: {:?}",
        records[1].outcome
    );
    assert!(
        matches!(
            records[2].outcome,
            Outcome::NotRun(NotRunReason::WorkerDied(_))
        ),
        "{:?}",
        records[2].outcome
    );
}

#[test]
fn killed_before_its_tail_store_the_unpublished_answer_is_not_believed() {
    within(std::time::Duration::from_secs(30), || {
        let records = run("kill-before-tail");
        assert_first_done(&records);
        // Its STARTED was never published: the second task did not start.
        for r in &records[1..] {
            assert!(
                matches!(r.outcome, Outcome::NotRun(NotRunReason::WorkerDied(_))),
                "{:?}",
                r.outcome
            );
        }
    });
}

#[test]
fn killed_after_publishing_without_a_wake_loses_no_published_answer() {
    within(std::time::Duration::from_secs(30), || {
        let records = run("kill-before-wake");
        assert_first_done(&records);
        assert_eq!(records[1].outcome, Outcome::Completed("second done".into()));
        assert!(
            matches!(
                records[2].outcome,
                Outcome::NotRun(NotRunReason::WorkerDied(_))
            ),
            "{:?}",
            records[2].outcome
        );
    });
}

#[test]
fn killed_mid_frame_the_running_task_is_the_crash() {
    within(std::time::Duration::from_secs(30), || {
        let records = run("kill-mid-frame");
        assert_first_done(&records);
        assert_second_crashed_third_not_run(&records, "its STARTED was whole");
    });
}

#[test]
fn a_worker_scribbling_over_its_ring_is_killed_and_its_tasks_settled() {
    within(std::time::Duration::from_secs(30), || {
        let records = run("scribble");
        assert_first_done(&records);
        assert_second_crashed_third_not_run(&records, "its STARTED was read");
        let why = violation(&records[1].outcome);
        assert!(why.contains("shared memory"), "{why}");
    });
}

#[test]
fn an_ok_that_says_the_next_task_started_makes_a_death_after_it_that_tasks_crash() {
    within(std::time::Duration::from_secs(30), || {
        let records = run("ok-started-then-killed");
        assert_first_done(&records);
        assert_second_crashed_third_not_run(&records, "it started in the first's frame");
    });
}

/// The protocol violation that ended the worker, from the outcome of a
/// task it held.
fn violation(outcome: &Outcome<String>) -> String {
    let crash = match outcome {
        Outcome::Crashed(crash) => crash,
        Outcome::NotRun(NotRunReason::WorkerDied(crash)) => crash,
        other => panic!("expected a crash, got {other:?}"),
    };
    match &crash.reason {
        Some(CrashReason::ProtocolViolation(why)) => why.clone(),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[test]
fn an_ok_that_starts_a_task_out_of_order_or_names_none_breaks_the_protocol() {
    within(std::time::Duration::from_secs(30), || {
        for (mode, says) in [
            ("ok-started-out-of-order", "out of order"),
            ("ok-started-cut-short", "without the started task's ID"),
        ] {
            let records = run(mode);
            assert_eq!(records.len(), 3, "{mode}");
            // The answer in a frame that breaks the protocol is believed
            // only if the frame could be read: the out-of-order one could.
            // The cut one could not, and the first task was running.
            let broken = if mode == "ok-started-out-of-order" {
                assert_first_done(&records);
                &records[1..]
            } else {
                assert!(
                    matches!(records[0].outcome, Outcome::Crashed(_)),
                    "{:?}",
                    records[0].outcome
                );
                &records[..]
            };
            for r in broken {
                assert!(!r.outcome.is_completed(), "{mode}: {:?}", r.outcome);
                let why = violation(&r.outcome);
                assert!(why.contains(says), "{mode}: {why}");
            }
        }
    });
}

#[test]
fn results_and_tasks_larger_than_the_ring_still_travel() {
    within(std::time::Duration::from_secs(30), || {
        let cmd = WorkerCommand::current_exe()
            .args(common::libtest_args("ring_worker_main"))
            .output(worker_facade::Output::Silent);
        let w = WorkingProcessFacade::<SimpleTask>::spawn(cmd).expect("spawn");
        let three_mib = 3 << 20;
        w.process_task(SimpleTask::new(format!("big:{three_mib}"), 0.0))
            .expect("accepted");
        let long_name = "n".repeat(2 << 20);
        w.process_task(SimpleTask::new(long_name.clone(), 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("small", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        match &records[0].outcome {
            Outcome::Completed(text) => {
                assert_eq!(text.len(), three_mib);
                assert!(text.bytes().all(|b| b == b'r'));
            }
            other => panic!("{other:?}"),
        }
        let n = long_name.len();
        assert_eq!(
            records[1].outcome,
            Outcome::Completed(format!("{n} ({n} bytes of name)"))
        );
        assert_eq!(
            records[2].outcome,
            Outcome::Completed("5 (5 bytes of name)".into())
        );
        assert_eq!(w.stats().restarts, 0);
    });
}
