//! `LeasedExecutorManager`: leases, expiry, retirement, growth and shrinking,
//! and every error, with real worker processes (the stock `facade-worker`).
//!
//! Nothing here asserts on how long something took. Where a test must let
//! time pass (a lease's expiry, an idle timeout), it sleeps until the instant
//! has passed, and the manager settles every deadline that has passed before
//! it answers `stats()`, so the result does not depend on scheduling. Every
//! wait has a generous bound that only guards against a hang.

mod common;

use common::watchdog;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{
    AcquireError, LeaseError, LeasedExecutorManager, NotRunReason, Outcome, PoolConfigError,
    PoolStartError, WorkerCommand,
};

/// Only guards against a hang; nothing should come near it.
const HANG_GUARD: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(3600);

fn worker() -> WorkerCommand {
    common::stock_worker()
}

fn pool(min: usize, max: usize) -> LeasedExecutorManager<SimpleTask> {
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(min)
        .max_executors(max)
        .build()
        .expect("valid settings");
    pool.start().expect("pool starts");
    pool
}

fn outcome(handle: worker_facade::TaskHandle<String>) -> Outcome<String> {
    handle
        .wait_timeout(HANG_GUARD)
        .expect("outcome within the hang guard")
}

/// Sleeps until `instant` has passed (`sleep` never wakes early).
fn sleep_past(instant: Instant) {
    let now = Instant::now();
    thread::sleep(instant.saturating_duration_since(now) + Duration::from_millis(1));
}

#[test]
fn a_lease_runs_tasks_and_its_release_returns_the_executor() {
    let _watchdog = watchdog("a_lease_runs_tasks_and_its_release_returns_the_executor");
    let pool = pool(1, 1);
    let lease = pool
        .acquire_timeout(Duration::from_secs(60), "alice", HANG_GUARD)
        .expect("a lease");
    assert_eq!(lease.owner(), "alice");
    let pid = lease.worker_pid().expect("a running worker");
    let one = lease.submit(SimpleTask::new("one", 0.0)).expect("accepted");
    let two = lease
        .submit(SimpleTask::new("two", 0.01))
        .expect("accepted");
    assert_eq!(
        outcome(one),
        Outcome::Completed("one solved after 0".into())
    );
    assert_eq!(
        outcome(two),
        Outcome::Completed("two solved after 0.01".into())
    );

    let stats = pool.stats();
    assert_eq!((stats.available, stats.leased, stats.total), (0, 1, 1));
    assert_eq!(stats.leases.len(), 1);
    let info = &stats.leases[0];
    assert_eq!(info.owner, "alice");
    assert_eq!(info.worker_pid, Some(pid));
    assert!(info.seconds_to_soft_expiry > 0.0 && info.seconds_to_soft_expiry <= 60.0);
    assert!(info.seconds_to_hard_expiry > info.seconds_to_soft_expiry);

    lease.release();
    // The release is a message; the next acquire is answered after it.
    let again = pool
        .acquire_timeout(Duration::from_secs(60), "bob", HANG_GUARD)
        .expect("the same executor, released");
    assert_eq!(
        again.worker_pid(),
        Some(pid),
        "a healthy executor is reused"
    );
    drop(again); // released by Drop
    let stats = pool.stats();
    assert_eq!((stats.available, stats.leased, stats.retired), (1, 0, 0));
    pool.stop();
}

#[test]
fn every_acquire_error() {
    let _watchdog = watchdog("every_acquire_error");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(1)
        .max_executors(1)
        .build()
        .expect("valid settings");
    assert!(matches!(
        pool.try_acquire(Duration::from_secs(1), "early"),
        Err(AcquireError::NotStarted)
    ));
    pool.start().expect("starts");
    assert!(matches!(pool.start(), Err(PoolStartError::AlreadyStarted)));
    assert!(matches!(
        pool.try_acquire(Duration::ZERO, "zero"),
        Err(AcquireError::ZeroLease)
    ));

    let held = pool
        .acquire_timeout(Duration::from_secs(60), "holder", HANG_GUARD)
        .expect("the only executor");
    let none = pool.try_acquire(Duration::from_secs(1), "impatient");
    assert!(
        matches!(none, Err(AcquireError::NoneAvailable { max: 1 })),
        "{none:?}"
    );
    let timed_out =
        pool.acquire_timeout(Duration::from_secs(1), "patient", Duration::from_millis(50));
    assert!(
        matches!(timed_out, Err(AcquireError::TimedOut { .. })),
        "{timed_out:?}"
    );
    let msg = timed_out.expect_err("timed out").to_string();
    assert!(msg.contains("no executor became available"), "{msg}");

    pool.stop();
    assert!(matches!(
        pool.try_acquire(Duration::from_secs(1), "late"),
        Err(AcquireError::Stopped)
    ));
    assert!(matches!(pool.start(), Err(PoolStartError::Stopped)));
    // The lease held across the stop was revoked.
    assert!(held.is_revoked());
    let refused = held
        .submit(SimpleTask::new("after-stop", 0.0))
        .expect_err("revoked by stop");
    assert!(matches!(refused, LeaseError::Stopped(_)), "{refused:?}");
    assert_eq!(refused.into_task().id, "after-stop");
    assert!(pool.stats().stopped);
}

#[test]
fn inconsistent_settings_are_rejected() {
    let _watchdog = watchdog("inconsistent_settings_are_rejected");
    let err = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .max_executors(0)
        .build()
        .expect_err("no executors");
    assert_eq!(err, PoolConfigError::NoExecutors);
    let err = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(3)
        .max_executors(2)
        .build()
        .expect_err("min above max");
    assert_eq!(err, PoolConfigError::MinAboveMax { min: 3, max: 2 });
    assert!(
        err.to_string()
            .contains("min_executors (3) is above max_executors (2)")
    );
}

#[test]
fn a_missing_worker_fails_start_with_the_spawn_error() {
    let _watchdog = watchdog("a_missing_worker_fails_start_with_the_spawn_error");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::new(
        "/no/such/worker-facade-worker",
    ))
    .build()
    .expect("valid settings");
    let err = pool.start().expect_err("no such binary");
    assert!(matches!(err, PoolStartError::Spawn(_)), "{err:?}");
    assert!(!pool.is_started());
}

#[test]
fn a_hung_worker_whose_lease_expires_is_killed_and_replaced() {
    let _watchdog = watchdog("a_hung_worker_whose_lease_expires_is_killed_and_replaced");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(1)
        .max_executors(1)
        .lease_grace(Duration::from_millis(100))
        .build()
        .expect("valid settings");
    pool.start().expect("starts");
    let lease = pool
        .acquire_timeout(Duration::from_secs(1), "sleepy", HANG_GUARD)
        .expect("a lease");
    let old_pid = lease.worker_pid();
    let hung = lease
        .submit(SimpleTask::new("hung", LONG.as_secs_f64()))
        .expect("accepted");
    let behind = lease
        .submit(SimpleTask::new("behind", 0.0))
        .expect("accepted");

    // The hard expiry kills the worker; both tasks are answered, saying why.
    match outcome(hung) {
        Outcome::Crashed(crash) => {
            let reason = crash
                .reason
                .clone()
                .expect("the parent says why it killed the worker")
                .to_string();
            assert!(reason.contains("lease of sleepy expired"), "{reason}");
            assert_eq!(crash.exit.signal, Some(9), "{crash}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    match outcome(behind) {
        Outcome::NotRun(NotRunReason::Cancelled(why)) => {
            let why = why.to_string();
            assert!(why.contains("lease of sleepy expired"), "{why}")
        }
        other => panic!("expected not run, got {other:?}"),
    }
    assert!(lease.is_revoked() && lease.is_expired());
    let refused = lease
        .submit(SimpleTask::new("late", 0.0))
        .expect_err("the lease was revoked");
    assert!(
        matches!(refused, LeaseError::Expired { revoked: true, .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("was revoked"));

    // Replaced: the only slot is free again, with a fresh worker.
    let fresh = pool
        .acquire_timeout(Duration::from_secs(60), "next", HANG_GUARD)
        .expect("a replacement executor");
    assert_ne!(fresh.worker_pid(), old_pid);
    let stats = pool.stats();
    assert_eq!((stats.revoked, stats.retired, stats.replaced), (1, 1, 1));
    drop(lease);
    drop(fresh);
    pool.stop();
}

#[test]
fn soft_expiry_refuses_new_work_and_lets_running_work_finish() {
    let _watchdog = watchdog("soft_expiry_refuses_new_work_and_lets_running_work_finish");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(1)
        .max_executors(1)
        .lease_grace(LONG)
        .build()
        .expect("valid settings");
    pool.start().expect("starts");
    let lease = pool
        .acquire_timeout(Duration::from_secs(1), "soft", HANG_GUARD)
        .expect("a lease");
    let running = lease
        .submit(SimpleTask::new("running", 0.0))
        .expect("accepted");
    sleep_past(lease.soft_expiry());

    assert!(lease.is_expired() && !lease.is_revoked());
    let refused = lease
        .submit(SimpleTask::new("late", 0.0))
        .expect_err("past the soft expiry");
    assert!(
        matches!(refused, LeaseError::Expired { revoked: false, .. }),
        "{refused:?}"
    );
    assert_eq!(
        outcome(running),
        Outcome::Completed("running solved after 0".into())
    );
    let stats = pool.stats();
    assert_eq!(stats.leases.len(), 1);
    assert!(stats.leases[0].seconds_to_soft_expiry < 0.0);
    assert!(stats.leases[0].seconds_to_hard_expiry > 0.0);
    assert_eq!(stats.revoked, 0);
    drop(lease);
    pool.stop();
}

#[test]
fn a_crashed_executor_is_retired_and_replaced() {
    let _watchdog = watchdog("a_crashed_executor_is_retired_and_replaced");
    let pool = pool(1, 1);
    let lease = pool
        .acquire_timeout(Duration::from_secs(60), "crasher", HANG_GUARD)
        .expect("a lease");
    let old_pid = lease.worker_pid();
    let crash = lease
        .submit(SimpleTask::new("crash", 0.0))
        .expect("accepted");
    let behind = lease
        .submit(SimpleTask::new("behind", 0.0))
        .expect("accepted");
    match outcome(crash) {
        Outcome::Crashed(info) => assert_eq!(info.exit.signal, Some(6), "{info}"),
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(matches!(
        outcome(behind),
        Outcome::NotRun(NotRunReason::WorkerDied(_))
    ));
    lease.release();

    let fresh = pool
        .acquire_timeout(Duration::from_secs(60), "next", HANG_GUARD)
        .expect("a replacement executor");
    assert_ne!(
        fresh.worker_pid(),
        old_pid,
        "the crashed executor is never handed out again"
    );
    let done = fresh.submit(SimpleTask::new("ok", 0.0)).expect("accepted");
    assert!(outcome(done).is_completed());
    let stats = pool.stats();
    assert_eq!((stats.retired, stats.replaced, stats.revoked), (1, 1, 0));
    drop(fresh);
    pool.stop();
}

#[test]
fn the_pool_grows_on_demand_and_shrinks_when_idle() {
    let _watchdog = watchdog("the_pool_grows_on_demand_and_shrinks_when_idle");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(0)
        .max_executors(2)
        .idle_timeout(Duration::from_millis(100))
        .build()
        .expect("valid settings");
    pool.start().expect("starts");
    assert_eq!(pool.stats().total, 0);
    // `try_acquire` waits for a start while the pool has room to grow.
    let a = pool
        .try_acquire(Duration::from_secs(60), "a")
        .expect("grows to 1");
    let b = pool
        .try_acquire(Duration::from_secs(60), "b")
        .expect("grows to 2");
    assert_ne!(a.worker_pid(), b.worker_pid());
    assert!(matches!(
        pool.try_acquire(Duration::from_secs(60), "c"),
        Err(AcquireError::NoneAvailable { max: 2 })
    ));
    assert_eq!(pool.stats().total, 2);
    drop(a);
    drop(b);
    // Answered after both releases (one channel, in order), so both
    // executors are idle since before `released`; once the idle timeout has
    // passed from there, the next answer reflects the shrink.
    let stats = pool.stats();
    let released = Instant::now();
    assert_eq!(stats.leased, 0);
    sleep_past(released + Duration::from_millis(100));
    let stats = pool.stats();
    assert_eq!((stats.total, stats.shrunk), (0, 2), "{stats:?}");
    pool.stop();
}

#[test]
fn stop_revokes_leases_and_turns_waiters_away() {
    let _watchdog = watchdog("stop_revokes_leases_and_turns_waiters_away");
    let pool = Arc::new(pool(1, 1));
    let lease = pool
        .acquire_timeout(Duration::from_secs(60), "holder", HANG_GUARD)
        .expect("a lease");
    let hung = lease
        .submit(SimpleTask::new("hung", LONG.as_secs_f64()))
        .expect("accepted");
    // A caller waiting for the only executor: whether its request reaches
    // the manager before or after the stop, it hears "stopped".
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let pool = pool.clone();
        thread::Builder::new()
            .name("waiter".into())
            .spawn(move || {
                let _ = tx.send(pool.acquire(Duration::from_secs(60), "waiter"));
            })
            .expect("thread")
    };
    pool.stop();
    let waited = rx.recv_timeout(HANG_GUARD).expect("the waiter is answered");
    assert!(matches!(waited, Err(AcquireError::Stopped)), "{waited:?}");
    waiter.join().expect("waiter thread");
    // Killed while running it, or (if the worker had not reported starting
    // it yet) before: either way the outcome says the manager stopped.
    let why = match outcome(hung) {
        Outcome::Crashed(crash) => crash.reason.map(|r| r.to_string()).unwrap_or_default(),
        Outcome::NotRun(NotRunReason::Cancelled(why)) => why.to_string(),
        other => panic!("expected a crash or not run, got {other:?}"),
    };
    assert!(why.contains("executor manager was stopped"), "{why}");
    assert!(lease.is_revoked());
    let stats = pool.stats();
    assert!(stats.stopped);
    assert_eq!(
        (stats.leased, stats.available, stats.leases.len()),
        (0, 0, 0)
    );
}

#[test]
fn sixteen_threads_share_two_executors() {
    let _watchdog = watchdog("sixteen_threads_share_two_executors");
    let pool = Arc::new(pool(1, 2));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let pool = pool.clone();
            thread::Builder::new()
                .name(format!("lessee-{t}"))
                .spawn(move || {
                    let lease = pool
                        .acquire_timeout(Duration::from_secs(60), format!("lessee-{t}"), HANG_GUARD)
                        .expect("a lease");
                    let handles: Vec<_> = (0..5)
                        .map(|i| {
                            lease
                                .submit(SimpleTask::new(format!("{t}-{i}"), 0.0))
                                .expect("accepted")
                        })
                        .collect();
                    handles
                        .into_iter()
                        .enumerate()
                        .map(|(i, h)| {
                            assert_eq!(
                                outcome(h),
                                Outcome::Completed(format!("{t}-{i} solved after 0"))
                            );
                        })
                        .count()
                })
                .expect("thread")
        })
        .collect();
    let done: usize = threads.into_iter().map(|t| t.join().expect("lessee")).sum();
    assert_eq!(done, 80);
    let stats = pool.stats();
    assert_eq!(stats.leased, 0);
    assert!(stats.total <= 2 && stats.total >= 1, "{stats:?}");
    assert_eq!(stats.retired, 0);
    pool.stop();
}

/// Our child processes whose environment holds `marker`.
fn children_marked(marker: &str) -> std::collections::BTreeSet<u32> {
    common::child_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
        })
        .filter(|pid| {
            // Not a zombie.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                == Some(false)
        })
        .collect()
}

#[test]
fn a_killed_idle_executor_is_replaced_without_anyone_calling_the_pool() {
    let _watchdog = watchdog("a_killed_idle_executor_is_replaced_without_anyone_calling_the_pool");
    let marker = "WF_POOL_TEST=min-restore";
    let pool = LeasedExecutorManager::<SimpleTask>::builder(
        common::test_worker().env("WF_POOL_TEST", "min-restore"),
    )
    .min_executors(2)
    .max_executors(2)
    .build()
    .expect("valid settings");
    pool.start().expect("pool starts");
    let before = children_marked(marker);
    assert_eq!(before.len(), 2, "{before:?}");
    let victim = *before.iter().next().expect("a worker");
    let killed_at = Instant::now();
    common::signal(victim, nix::sys::signal::Signal::SIGKILL);
    // Nobody calls the pool: its executor's engine tells the manager.
    let after = loop {
        let now = children_marked(marker);
        if now.len() == 2 && !now.contains(&victim) {
            break now;
        }
        assert!(killed_at.elapsed() < HANG_GUARD, "not replaced: {now:?}");
        thread::sleep(Duration::from_millis(1));
    };
    eprintln!("replaced in {:?}", killed_at.elapsed());
    assert_eq!(
        after.intersection(&before).count(),
        1,
        "only the killed one replaced"
    );
    // The replacement runs (it may still be in its handshake): now ask.
    let mut stats = pool.stats();
    while stats.replaced == 0 && killed_at.elapsed() < HANG_GUARD {
        thread::sleep(Duration::from_millis(1));
        stats = pool.stats();
    }
    assert_eq!((stats.retired, stats.replaced), (1, 1), "{stats:?}");
    let lease = pool
        .acquire(Duration::from_secs(10), "after")
        .expect("lease");
    assert!(outcome(lease.submit(SimpleTask::new("x", 0.0)).expect("accepted")).is_completed());
    drop(lease);
    pool.stop();
}

/// A waiting caller is not failed by a replacement's failed start: that
/// start was not for it; it gets a start of its own.
#[test]
fn a_failed_replacement_does_not_fail_a_caller_waiting_for_a_lease() {
    let _watchdog = watchdog("a_failed_replacement_does_not_fail_a_caller_waiting_for_a_lease");
    let dir = std::env::temp_dir().join(format!("wf-pool-flaky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // The 2nd start (the replacement) fails after a moment; the others run
    // the stock worker.
    let cmd = common::counted_starts_worker(
        &dir,
        "flaky-worker",
        "if [ \"$n\" = 2 ]; then sleep 0.3; echo 'start 2 fails' >&2; exit 3; fi",
    );
    let pool = Arc::new(
        LeasedExecutorManager::<SimpleTask>::builder(cmd)
            .min_executors(1)
            .max_executors(1)
            .build()
            .expect("valid settings"),
    );
    pool.start().expect("start 1 succeeds");
    let first = pool
        .acquire(Duration::from_secs(30), "first")
        .expect("lease");
    let pid = first.worker_pid().expect("running");
    common::signal(pid, nix::sys::signal::Signal::SIGKILL);
    let h = first.submit(SimpleTask::new("x", 0.0)).expect("accepted");
    assert!(!outcome(h).is_completed());
    // Released broken: retired, and its replacement (start 2) begins.
    drop(first);
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || pool.acquire(Duration::from_secs(30), "waiter"))
    };
    let lease = waiter
        .join()
        .expect("waiter thread")
        .expect("the waiter gets a lease despite the failed replacement");
    assert!(outcome(lease.submit(SimpleTask::new("y", 0.0)).expect("accepted")).is_completed());
    drop(lease);
    let stats = pool.stats();
    assert!(stats.spawn_failures >= 1, "{stats:?}");
    pool.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
