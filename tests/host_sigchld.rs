//! A host that sets SIGCHLD to `SIG_IGN` (issue 8, "Faults it must
//! survive"): the kernel then reaps every child at once and `waitid` finds
//! nothing. The facade must never take that for an exit status of its own
//! making, never signal the (maybe reused) pid or its group, and still give
//! every task exactly one outcome: the crashed task says the status was lost
//! because SIGCHLD is ignored, and later tasks run on a replacement.
//!
//! Process-global (a signal disposition), so this file is its own process.

mod common;

use std::sync::Once;
use std::time::Duration;

use common::{Foreign, gated, test_worker, wait_gone, within};
use nix::sys::signal::{SigHandler, Signal, signal};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CrashReason, FacadeStats, Outcome, StatusLost, TaskRecord, WorkingProcessFacade,
};

/// Every test of this file runs with SIGCHLD ignored.
fn ignore_sigchld() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }.expect("ignore SIGCHLD");
    });
}

fn t(name: &str) -> SimpleTask {
    SimpleTask::new(name, 0.0)
}

/// `record` is `Crashed` with the status marked lost because SIGCHLD is
/// ignored: no exit code, no signal.
fn assert_status_lost(record: &TaskRecord<SimpleTask>) {
    let Outcome::Crashed(crash) = &record.outcome else {
        panic!("expected Crashed, got {:?}", record.outcome);
    };
    assert_eq!(
        crash.reason,
        Some(CrashReason::StatusLost(StatusLost::SigchldIgnored)),
        "{crash}"
    );
    assert_eq!(crash.exit.code, None, "a made-up exit code: {crash}");
    assert_eq!(crash.exit.signal, None, "a made-up signal: {crash}");
    assert!(crash.to_string().contains("SIGCHLD"), "{crash}");
}

/// Exactly one outcome per task, and nothing in flight.
fn assert_one_outcome_each(stats: &FacadeStats, n: u64) {
    assert_eq!(stats.submitted, n, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(
        stats.completed + stats.failed + stats.crashed + stats.not_run + stats.timed_out,
        n,
        "{stats:?}"
    );
}

#[test]
fn worker_crash_mid_stream_reports_the_status_lost_and_the_rest_runs() {
    ignore_sigchld();
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(test_worker())
            .spawn()
            .expect("spawn");
        let first = w.worker_pid().expect("a worker runs");
        let names: Vec<String> = (0..20)
            .map(|i| {
                if i == 10 {
                    "crash".into()
                } else {
                    format!("t{i}")
                }
            })
            .collect();
        for name in &names {
            w.process_task(t(name)).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 20);
        for (i, r) in records.iter().enumerate() {
            if i == 10 {
                assert_status_lost(r);
                assert_eq!(r.outcome_pid(), Some(first));
            } else {
                assert_eq!(
                    r.outcome,
                    Outcome::Completed(format!("t{i} solved after 0")),
                    "task {i}"
                );
            }
        }
        let stats = w.stats();
        assert_one_outcome_each(&stats, 20);
        assert_eq!((stats.crashed, stats.restarts), (1, 1), "{stats:?}");
    });
}

/// The worker is killed while the engine is held (see [`common::Gate`]); the
/// kernel reaps it at once, and the test starts a process of its own, in its
/// own group, with the dead worker's pid if `ns_last_pid` allows. Only then
/// does the engine look. Whatever it does, that process must survive.
#[test]
fn a_process_started_after_the_worker_died_is_never_signalled() {
    ignore_sigchld();
    within(Duration::from_secs(30), || {
        let (cmd, gate) = gated(test_worker(), "started announce-hang");
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .spawn()
            .expect("spawn");
        w.process_task(t("before")).expect("accepted");
        w.process_task(SimpleTask::new("announce-hang", 3600.0))
            .expect("accepted");
        for i in 0..5 {
            w.process_task(t(&format!("after{i}"))).expect("accepted");
        }
        let pid = gate.wait_closed();
        common::signal(pid, Signal::SIGKILL);
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "the kernel reaped the worker"
        );
        let (reused, got_pid) = Foreign::sleep_with_pid(pid);
        let others: Vec<Foreign> = (0..4).map(|_| Foreign::sleep()).collect();
        eprintln!("worker pid {pid} reused by a foreign process: {got_pid}");
        gate.open();

        let records = w.collect_tasks().expect("collect");
        assert!(
            records[0].outcome.is_completed(),
            "{:?}",
            records[0].outcome
        );
        assert_status_lost(&records[1]);
        for r in &records[2..] {
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("{} solved after 0", r.task.id))
            );
        }
        let stats = w.stats();
        assert_one_outcome_each(&stats, 7);
        assert_eq!(stats.restarts, 1, "{stats:?}");
        assert!(
            reused.alive(),
            "the process that got pid {} (reused: {got_pid}) was signalled",
            reused.pid
        );
        for f in &others {
            assert!(f.alive(), "foreign process {} was signalled", f.pid);
        }
    });
}

/// The pid of the worker a crash report names.
trait CrashPid {
    fn outcome_pid(&self) -> Option<u32>;
}

impl CrashPid for TaskRecord<SimpleTask> {
    fn outcome_pid(&self) -> Option<u32> {
        match &self.outcome {
            Outcome::Crashed(crash) => Some(crash.exit.pid),
            _ => None,
        }
    }
}
