//! `WorkGrinder`: dispatch by size and by time, streaming, concurrency,
//! crashes, expired leases, stopping, every error, and 10,000 items from
//! threads and from two async runtimes, with real worker processes.
//!
//! Nothing here asserts on how long something took: hung items are ended by
//! a lease expiry or by stopping the pool, and every wait has a generous
//! bound that only guards against a hang.

mod common;

use common::watchdog;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{
    AcquireError, AfterCrash, EnqueueError, GrindHandle, GrinderBuilder, GrinderConfigError,
    GrinderStartError, ItemError, LeasedExecutorManager, NotRunReason, WaitError, WorkError,
    WorkGrinder, WorkerCommand,
};

const HANG_GUARD: Duration = Duration::from_secs(20);
const FOREVER: f64 = 3600.0;

/// A started grinder that dispatches only by size: `threshold` items, or
/// an hour's `max_wait`.
fn by_size(
    pool: &Arc<LeasedExecutorManager<SimpleTask>>,
    threshold: usize,
) -> WorkGrinder<SimpleTask> {
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(threshold)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    grinder
}

/// A one-executor pool that has not been started.
fn unstarted_pool() -> Arc<LeasedExecutorManager<SimpleTask>> {
    Arc::new(
        LeasedExecutorManager::<SimpleTask>::builder(worker())
            .max_executors(1)
            .build()
            .expect("valid pool settings"),
    )
}

fn worker() -> WorkerCommand {
    common::stock_worker()
}

fn pool(max: usize) -> Arc<LeasedExecutorManager<SimpleTask>> {
    pool_with_grace(max, Duration::from_secs(10))
}

fn pool_with_grace(max: usize, grace: Duration) -> Arc<LeasedExecutorManager<SimpleTask>> {
    let pool = LeasedExecutorManager::<SimpleTask>::builder(worker())
        .min_executors(1)
        .max_executors(max)
        .lease_grace(grace)
        .build()
        .expect("valid pool settings");
    pool.start().expect("pool starts");
    Arc::new(pool)
}

fn result(handle: &GrindHandle<String>) -> Result<String, WorkError> {
    handle
        .wait_timeout(HANG_GUARD)
        .expect("answered within the hang guard")
}

fn solved(id: &str) -> String {
    format!("{id} solved after 0")
}

/// A hung item ended by stopping the pool: killed while running, or — when
/// the worker had not yet reported starting it — re-queued and refused a new
/// lease.
fn assert_stopped_by_the_pool(result: Result<String, WorkError>) {
    match result {
        Err(WorkError::Crashed(crash)) => {
            let reason = crash.reason.map(|r| r.to_string()).unwrap_or_default();
            assert!(reason.contains("executor manager was stopped"), "{reason}");
        }
        Err(WorkError::NoExecutor(AcquireError::Stopped)) => {}
        other => panic!("expected the pool's stop to end it, got {other:?}"),
    }
}

#[test]
fn a_full_batch_is_dispatched_at_once() {
    let _watchdog = watchdog("a_full_batch_is_dispatched_at_once");
    let pool = pool(1);
    let grinder = by_size(&pool, 5);
    let mut handles: Vec<_> = (0..4)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("s{i}"), 0.0))
                .expect("accepted")
        })
        .collect();
    let stats = grinder.stats();
    assert_eq!(
        (stats.pending, stats.batches_dispatched),
        (4, 0),
        "{stats:?}"
    );
    assert!(stats.oldest_wait.is_some());
    handles.push(
        grinder
            .enqueue(SimpleTask::new("s4", 0.0))
            .expect("accepted"),
    );
    // max_wait is an hour: only the size can have dispatched them.
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(result(h).expect("completed"), solved(&format!("s{i}")));
    }
    let stats = grinder.stats();
    assert_eq!(
        (stats.batches_dispatched, stats.completed, stats.pending),
        (1, 5, 0)
    );
    assert_eq!(stats.batch_size_threshold, 5);
    grinder.stop(false);
    pool.stop();
}

#[test]
fn the_oldest_item_waiting_max_wait_dispatches_a_batch() {
    let _watchdog = watchdog("the_oldest_item_waiting_max_wait_dispatches_a_batch");
    let pool = pool(1);
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait(Duration::from_millis(20))
        .batch_size_threshold(1000)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let handles: Vec<_> = (0..3)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("t{i}"), 0.0))
                .expect("accepted")
        })
        .collect();
    // 3 items never reach a threshold of 1000: only time dispatches them.
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(result(h).expect("completed"), solved(&format!("t{i}")));
    }
    let stats = grinder.stats();
    assert!(stats.batches_dispatched >= 1 && stats.batches_dispatched <= 3);
    assert_eq!(stats.completed, 3);
    assert_eq!(stats.max_wait, Duration::from_millis(20));
    grinder.stop(false);
    pool.stop();
}

#[test]
fn each_result_is_forwarded_before_its_batch_ends() {
    let _watchdog = watchdog("each_result_is_forwarded_before_its_batch_ends");
    let pool = pool(1);
    let grinder = by_size(&pool, 2);
    let quick = grinder
        .enqueue(SimpleTask::new("quick", 0.0))
        .expect("accepted");
    let hung = grinder
        .enqueue(SimpleTask::new("hung", FOREVER))
        .expect("accepted");
    // One batch, one executor: the hung item never finishes, yet the quick
    // one is answered.
    assert_eq!(result(&quick).expect("completed"), solved("quick"));
    assert_eq!(hung.try_wait().err(), Some(WaitError::Timeout));
    assert_eq!(grinder.stats().batches_in_flight, 1);
    // Stopping the pool revokes the batch's lease and kills the worker.
    pool.stop();
    assert_stopped_by_the_pool(result(&hung));
    grinder.stop(false);
}

#[test]
fn batches_run_concurrently_on_several_executors() {
    let _watchdog = watchdog("batches_run_concurrently_on_several_executors");
    let pool = pool(2);
    let grinder = by_size(&pool, 1);
    let hung = grinder
        .enqueue(SimpleTask::new("hung", FOREVER))
        .expect("accepted");
    let quick = grinder
        .enqueue(SimpleTask::new("quick", 0.0))
        .expect("accepted");
    // The first batch holds one executor forever; the second runs beside it.
    assert_eq!(result(&quick).expect("completed"), solved("quick"));
    // With one executor the quick item would wait forever behind the hung
    // one; it completed, so it ran on a second executor.
    let stats = pool.stats();
    assert!(
        stats.leased >= 1,
        "the hung batch still holds its lease: {stats:?}"
    );
    pool.stop();
    assert_stopped_by_the_pool(result(&hung));
    grinder.stop(false);
}

#[test]
fn with_fewer_places_than_executors_a_waiting_batch_leaves_the_spare_one_to_others() {
    let _watchdog =
        watchdog("with_fewer_places_than_executors_a_waiting_batch_leaves_the_spare_one_to_others");
    let pool = pool(2);
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(1)
        .concurrency(1)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let hung = grinder
        .enqueue(SimpleTask::new("hung", FOREVER))
        .expect("accepted");
    let waiting = grinder
        .enqueue(SimpleTask::new("waiting", 0.0))
        .expect("accepted");
    let give_up = std::time::Instant::now() + HANG_GUARD;
    while grinder.stats().batches_in_flight < 2 {
        assert!(std::time::Instant::now() < give_up, "both batches cut");
        thread::sleep(Duration::from_millis(5));
    }
    // The one place is taken by the hung batch; the second batch waits for
    // it, and holds no lease meanwhile: the pool's second executor is free.
    let other = pool
        .try_acquire(Duration::from_secs(60), "other")
        .expect("the spare executor is not held by the grinder");
    assert_eq!(waiting.try_wait().err(), Some(WaitError::Timeout));
    other.release();
    pool.stop();
    assert_stopped_by_the_pool(result(&hung));
    assert_stopped_by_the_pool(result(&waiting));
    grinder.stop(false);
}

#[test]
fn batches_on_one_executor_follow_each_other_and_each_item_is_answered() {
    let _watchdog = watchdog("batches_on_one_executor_follow_each_other_and_each_item_is_answered");
    // One executor, one place: each batch after the first goes to the
    // executor as the batch before it lands.
    let pool = pool(1);
    let grinder = by_size(&pool, 2);
    let ids: Vec<String> = (0..40).map(|i| format!("item-{i}")).collect();
    let handles: Vec<_> = ids
        .iter()
        .map(|id| grinder.enqueue(SimpleTask::new(id, 0.0)).expect("accepted"))
        .collect();
    for (id, handle) in ids.iter().zip(&handles) {
        assert_eq!(result(handle).expect("completed"), solved(id));
    }
    grinder.stop(false);
    let stats = grinder.stats();
    assert_eq!(
        (
            stats.batches_dispatched,
            stats.batches_in_flight,
            stats.completed
        ),
        (20, 0, 40),
        "{stats:?}"
    );
    assert_eq!(pool.stats().leased, 0, "every batch's lease went back");
    pool.stop();
}

#[test]
fn an_executor_goes_straight_to_the_next_batch_on_its_lease_renewed_for_each() {
    let _watchdog =
        watchdog("an_executor_goes_straight_to_the_next_batch_on_its_lease_renewed_for_each");
    // Eight batches of two 0.1 s items, all cut at once: 1.6 s of work on
    // one executor, under a 1 s lease with 0.2 s of grace. Without a new
    // term for each batch, the lease would be revoked mid-way.
    let pool = pool_with_grace(1, Duration::from_millis(200));
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(2)
        .lease_seconds(1.0)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let handles: Vec<_> = (0..16)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("r{i}"), 0.1))
                .expect("accepted")
        })
        .collect();
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(
            result(handle).expect("completed, never expired"),
            format!("r{i} solved after 0.1")
        );
    }
    grinder.stop(false);
    let stats = pool.stats();
    assert_eq!(
        (stats.granted, stats.renewed, stats.revoked, stats.leased),
        (1, 7, 0, 0),
        "one lease, renewed for each batch after the first, given back at the end"
    );
    pool.stop();
}

#[test]
fn a_caller_waiting_for_the_pool_gets_the_executor_before_the_grinders_next_batch() {
    let _watchdog =
        watchdog("a_caller_waiting_for_the_pool_gets_the_executor_before_the_grinders_next_batch");
    let pool = pool(1);
    let grinder = by_size(&pool, 1);
    let first = grinder
        .enqueue(SimpleTask::new("first", 0.4))
        .expect("accepted");
    let give_up = std::time::Instant::now() + HANG_GUARD;
    while pool.stats().leased < 1 {
        assert!(
            std::time::Instant::now() < give_up,
            "the first batch leased"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Another caller asks for the one executor while the grinder holds it.
    let other = {
        let pool = pool.clone();
        thread::spawn(move || {
            let lease = pool
                .acquire(Duration::from_secs(60), "other")
                .expect("leased after the grinder's batch");
            let got = std::time::Instant::now();
            thread::sleep(Duration::from_millis(300));
            drop(lease);
            got
        })
    };
    while pool.stats().waiting < 1 {
        assert!(
            std::time::Instant::now() < give_up,
            "the other caller waits"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Cut while the first runs: it waits for the executor, behind the
    // other caller.
    let second = grinder
        .enqueue(SimpleTask::new("second", 0.0))
        .expect("accepted");
    assert_eq!(result(&first).expect("completed"), "first solved after 0.4");
    assert_eq!(result(&second).expect("completed"), solved("second"));
    let second_done = std::time::Instant::now();
    let other_got = other.join().expect("the other caller");
    assert!(
        second_done >= other_got + Duration::from_millis(250),
        "the second batch ran only once the other caller was done with the executor"
    );
    grinder.stop(false);
    let stats = pool.stats();
    assert_eq!((stats.granted, stats.renewed), (3, 0), "{stats:?}");
    pool.stop();
}

#[test]
fn a_renewed_lease_is_revoked_at_the_end_of_its_new_term_not_its_first() {
    let _watchdog = watchdog("a_renewed_lease_is_revoked_at_the_end_of_its_new_term_not_its_first");
    // Batch 1 (0.3 s) runs on a 1 s lease with 0.2 s of grace, so its first
    // term ends at 1.2 s at the earliest. Batch 2 (hung) goes straight onto
    // the same executor, the lease renewed as batch 1 lands (0.7 s of its
    // term left, more than half): the new term ends 1.2 s after that, at
    // 1.5 s at the earliest. The pool's manager, which never heard of the
    // renewal, must read it when the first term would have ended.
    let pool = pool_with_grace(1, Duration::from_millis(200));
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(1)
        .lease_seconds(1.0)
        .owner_prefix("renewed")
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let t0 = Instant::now();
    let first = grinder
        .enqueue(SimpleTask::new("first", 0.3))
        .expect("accepted");
    let hung = grinder
        .enqueue(SimpleTask::new("hung", FOREVER))
        .expect("accepted");
    assert_eq!(result(&first).expect("completed"), "first solved after 0.3");
    match result(&hung) {
        Err(WorkError::LeaseExpired { owner, crash }) => {
            assert_eq!(
                owner, "renewed-2",
                "the renewal named the lease for batch 2"
            );
            assert!(crash.is_some(), "it was running when its worker was killed");
        }
        other => panic!("expected lease-expired, got {other:?}"),
    }
    let revoked_after = t0.elapsed();
    assert!(
        revoked_after >= Duration::from_millis(1450),
        "revoked after {revoked_after:?}: by the first term (1.2 s), not the renewed one (1.5 s)"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.granted, stats.renewed, stats.revoked),
        (1, 1, 1),
        "{stats:?}"
    );
    grinder.stop(false);
    pool.stop();
}

#[test]
fn a_hung_item_whose_lease_expires_is_killed_and_answered_lease_expired() {
    let _watchdog =
        watchdog("a_hung_item_whose_lease_expires_is_killed_and_answered_lease_expired");
    let pool = pool_with_grace(1, Duration::from_millis(200));
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(3)
        .lease_seconds(1.0)
        .owner_prefix("sleepy")
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let hung = grinder
        .enqueue(SimpleTask::new("hung", FOREVER))
        .expect("accepted");
    let after: Vec<_> = (0..2)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("after-{i}"), 0.0))
                .expect("accepted")
        })
        .collect();
    match result(&hung) {
        Err(WorkError::LeaseExpired { owner, crash }) => {
            assert_eq!(owner, "sleepy-1");
            let crash = crash.expect("it was running when the worker was killed");
            assert_eq!(crash.exit.signal, Some(9), "{crash}");
            assert!(
                crash
                    .reason
                    .map(|r| r.to_string())
                    .unwrap_or_default()
                    .contains("lease of sleepy-1 expired")
            );
        }
        other => panic!("expected lease-expired, got {other:?}"),
    }
    // The items behind it never started; they ran again on a fresh executor.
    for (i, h) in after.iter().enumerate() {
        assert_eq!(result(h).expect("re-run"), solved(&format!("after-{i}")));
    }
    let stats = grinder.stats();
    assert_eq!((stats.completed, stats.failed, stats.rerun), (2, 1, 2));
    let pool_stats = pool.stats();
    assert_eq!(pool_stats.revoked, 1);
    assert!(pool_stats.retired >= 1);
    grinder.stop(false);
    pool.stop();
}

#[test]
fn a_crash_fails_only_the_crashing_item_and_the_rest_run_again() {
    let _watchdog = watchdog("a_crash_fails_only_the_crashing_item_and_the_rest_run_again");
    let pool = pool(1);
    let grinder = by_size(&pool, 4);
    let ids = ["a", "crash", "b", "c"];
    let handles: Vec<_> = ids
        .iter()
        .map(|id| {
            grinder
                .enqueue(SimpleTask::new(*id, 0.0))
                .expect("accepted")
        })
        .collect();
    assert_eq!(
        result(&handles[0]).expect("ran before the crash"),
        solved("a")
    );
    match result(&handles[1]) {
        Err(WorkError::Crashed(crash)) => assert_eq!(crash.exit.signal, Some(6), "{crash}"),
        other => panic!("expected a crash, got {other:?}"),
    }
    assert_eq!(result(&handles[2]).expect("re-run"), solved("b"));
    assert_eq!(result(&handles[3]).expect("re-run"), solved("c"));
    let stats = grinder.stats();
    assert_eq!((stats.completed, stats.failed, stats.rerun), (3, 1, 2));
    // The crashed executor was retired and replaced.
    let pool_stats = pool.stats();
    assert_eq!(pool_stats.retired, 1);
    assert_eq!(pool_stats.replaced, 1);
    grinder.stop(false);
    pool.stop();
}

#[test]
fn after_a_crash_the_rest_can_be_reported_not_run() {
    let _watchdog = watchdog("after_a_crash_the_rest_can_be_reported_not_run");
    let pool = pool(1);
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(FOREVER)
        .batch_size_threshold(3)
        .after_crash(AfterCrash::ReportNotRun)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    let crash = grinder
        .enqueue(SimpleTask::new("crash", 0.0))
        .expect("accepted");
    let mut rest: Vec<_> = (0..2)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("r{i}"), 0.0))
                .expect("accepted")
        })
        .collect();
    assert!(matches!(result(&crash), Err(WorkError::Crashed(_))));
    for h in &mut rest {
        match result(h) {
            Err(WorkError::NotRun(reason)) if matches!(*reason, NotRunReason::WorkerDied(_)) => {}
            other => panic!("expected not run, got {other:?}"),
        }
    }
    assert_eq!(grinder.stats().rerun, 0);
    grinder.stop(false);
    pool.stop();
}

/// A started grinder holding five pending items named `<prefix>0..5`: no
/// batch leaves by itself (a huge threshold, an hour's `max_wait`).
fn five_pending(
    prefix: &str,
) -> (
    Arc<LeasedExecutorManager<SimpleTask>>,
    WorkGrinder<SimpleTask>,
    Vec<GrindHandle<String>>,
) {
    let pool = pool(1);
    let grinder = by_size(&pool, 1000);
    let handles = (0..5)
        .map(|i| {
            grinder
                .enqueue(SimpleTask::new(format!("{prefix}{i}"), 0.0))
                .expect("accepted")
        })
        .collect();
    (pool, grinder, handles)
}

#[test]
fn stop_drains_pending_items_by_default() {
    let _watchdog = watchdog("stop_drains_pending_items_by_default");
    let (pool, grinder, handles) = five_pending("d");
    assert_eq!(grinder.stats().pending, 5);
    grinder.stop(false);
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            h.wait().expect("waited once").expect("drained"),
            solved(&format!("d{i}"))
        );
    }
    let stats = grinder.stats();
    assert!(stats.stopped && !stats.started && !stats.stopping);
    assert_eq!(
        (stats.completed, stats.pending, stats.batches_in_flight),
        (5, 0, 0)
    );
    pool.stop();
}

#[test]
fn stop_with_cancel_cancels_pending_items() {
    let _watchdog = watchdog("stop_with_cancel_cancels_pending_items");
    let (pool, grinder, handles) = five_pending("c");
    grinder.stop(true);
    for h in handles {
        assert!(matches!(h.wait(), Ok(Err(WorkError::Cancelled))));
    }
    let stats = grinder.stats();
    assert_eq!(
        (stats.cancelled, stats.completed, stats.batches_dispatched),
        (5, 0, 0)
    );
    pool.stop();
}

#[test]
fn submitting_before_start_while_stopping_and_after_stop_is_refused() {
    let _watchdog = watchdog("submitting_before_start_while_stopping_and_after_stop_is_refused");
    let pool = unstarted_pool();
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(0.01)
        .build()
        .expect("valid settings");
    let refused = grinder
        .enqueue(SimpleTask::new("early", 0.0))
        .expect_err("not started");
    assert!(matches!(refused, EnqueueError::NotStarted(_)));
    assert_eq!(refused.into_task().id, "early");
    assert!(matches!(
        futures_executor::block_on(grinder.submit(SimpleTask::new("early", 0.0))),
        Err(ItemError::Refused(EnqueueError::NotStarted(_)))
    ));
    assert!(!grinder.stats().started);
    // The pool must run first.
    assert!(matches!(
        grinder.start(),
        Err(GrinderStartError::ManagerNotStarted)
    ));
    pool.start().expect("pool starts");
    grinder.start().expect("starts");
    assert!(matches!(
        grinder.start(),
        Err(GrinderStartError::AlreadyStarted)
    ));
    assert_eq!(
        futures_executor::block_on(grinder.submit(SimpleTask::new("ok", 0.0))).expect("completed"),
        solved("ok")
    );

    grinder.begin_stop(false);
    let refused = grinder
        .submit_from_thread(SimpleTask::new("meanwhile", 0.0))
        .expect_err("stopping");
    assert!(matches!(refused, EnqueueError::Stopping(_)), "{refused:?}");
    assert!(grinder.stats().stopping);
    grinder.stop(false);
    let refused = grinder
        .enqueue(SimpleTask::new("late", 0.0))
        .expect_err("stopped");
    assert!(matches!(refused, EnqueueError::Stopped(_)), "{refused:?}");
    assert!(refused.to_string().contains("stopped"));
    assert!(matches!(grinder.start(), Err(GrinderStartError::Stopped)));
    pool.stop();
}

#[test]
fn zero_negative_and_non_finite_settings_are_rejected() {
    let _watchdog = watchdog("zero_negative_and_non_finite_settings_are_rejected");
    let pool = unstarted_pool();
    let build = |f: fn(GrinderBuilder<SimpleTask>) -> GrinderBuilder<SimpleTask>| {
        f(WorkGrinder::builder(pool.clone()))
            .build()
            .map(|_| ())
            .expect_err("rejected")
    };
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = WorkGrinder::builder(pool.clone())
            .max_wait_seconds(bad)
            .build()
            .map(|_| ())
            .expect_err("max_wait rejected");
        assert!(
            matches!(err, GrinderConfigError::MaxWait(_)),
            "{bad}: {err:?}"
        );
        let err = WorkGrinder::builder(pool.clone())
            .lease_seconds(bad)
            .build()
            .map(|_| ())
            .expect_err("lease rejected");
        assert!(
            matches!(err, GrinderConfigError::Lease(_)),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(
        build(|b| b.max_wait(Duration::ZERO)),
        GrinderConfigError::MaxWait(0.0)
    );
    assert_eq!(
        build(|b| b.batch_size_threshold(0)),
        GrinderConfigError::BatchSizeThreshold
    );
    assert_eq!(build(|b| b.concurrency(0)), GrinderConfigError::Concurrency);
    let msg = build(|b| b.lease_seconds(-2.0)).to_string();
    assert!(
        msg.contains("lease must be a finite number of seconds greater than 0"),
        "{msg}"
    );
    // The seed's defaults are valid.
    let grinder = WorkGrinder::builder(pool.clone())
        .build()
        .expect("defaults");
    let stats = grinder.stats();
    assert_eq!(stats.max_wait, Duration::from_secs(10));
    assert_eq!(stats.batch_size_threshold, 20);
    assert_eq!(stats.lease, Duration::from_secs(60));
}

#[test]
fn cancelling_a_handle_before_dispatch_removes_its_item() {
    let _watchdog = watchdog("cancelling_a_handle_before_dispatch_removes_its_item");
    let pool = pool(1);
    let grinder = by_size(&pool, 1000);
    let cancelled = grinder
        .enqueue(SimpleTask::new("cancelled", 0.0))
        .expect("accepted");
    let kept = grinder
        .enqueue(SimpleTask::new("kept", 0.0))
        .expect("accepted");
    cancelled.cancel();
    let stats = grinder.stats();
    assert_eq!((stats.pending, stats.removed), (1, 1), "{stats:?}");
    assert!(matches!(
        cancelled.try_wait(),
        Ok(Err(WorkError::Cancelled))
    ));
    grinder.stop(false);
    assert_eq!(
        kept.wait().expect("waited once").expect("drained"),
        solved("kept")
    );
    let stats = grinder.stats();
    assert_eq!((stats.completed, stats.removed), (1, 1));
    // The cancelled item never reached a worker.
    assert_eq!(pool.stats().retired, 0);
    pool.stop();
}

#[test]
fn stats_from_thread_matches_stats() {
    let _watchdog = watchdog("stats_from_thread_matches_stats");
    let pool = pool(1);
    let grinder = Arc::new(
        WorkGrinder::builder(pool.clone())
            .max_wait_seconds(FOREVER)
            .batch_size_threshold(1000)
            .build()
            .expect("valid settings"),
    );
    grinder.start().expect("starts");
    let _pending = grinder
        .enqueue(SimpleTask::new("p", 0.0))
        .expect("accepted");
    let other = {
        let grinder = grinder.clone();
        thread::Builder::new()
            .name("stats-reader".into())
            .spawn(move || {
                grinder
                    .stats_from_thread(Some(HANG_GUARD))
                    .expect("answered")
            })
            .expect("thread")
    };
    let from_thread = other.join().expect("stats thread");
    assert_eq!(from_thread.pending, 1);
    assert!(from_thread.started);
    assert_eq!(grinder.stats().pending, 1);
    grinder.stop(true);
    pool.stop();
}

const TOTAL: usize = 10_000;

fn stress_grinder(pool: &Arc<LeasedExecutorManager<SimpleTask>>) -> Arc<WorkGrinder<SimpleTask>> {
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait(Duration::from_millis(5))
        .batch_size_threshold(100)
        .build()
        .expect("valid settings");
    grinder.start().expect("starts");
    Arc::new(grinder)
}

/// Every item answered once, with its own result.
fn check_all_answered(results: Vec<(String, Result<String, WorkError>)>) {
    assert_eq!(results.len(), TOTAL);
    let mut seen = HashSet::new();
    for (id, result) in results {
        assert_eq!(result.expect("completed"), solved(&id));
        assert!(seen.insert(id), "answered twice");
    }
}

#[test]
fn ten_thousand_items_from_sixteen_threads_each_answered_once() {
    let _watchdog = watchdog("ten_thousand_items_from_sixteen_threads_each_answered_once");
    let pool = pool(2);
    let grinder = stress_grinder(&pool);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let grinder = grinder.clone();
            thread::Builder::new()
                .name(format!("caller-{t}"))
                .spawn(move || {
                    let handles: Vec<_> = (0..TOTAL / 16)
                        .map(|i| {
                            let id = format!("{t}-{i}");
                            let h = grinder
                                .submit_from_thread(SimpleTask::new(id.clone(), 0.0))
                                .expect("accepted");
                            (id, h)
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|(id, h)| (id, result(&h)))
                        .collect::<Vec<_>>()
                })
                .expect("thread")
        })
        .collect();
    let results = threads
        .into_iter()
        .flat_map(|t| t.join().expect("caller thread"))
        .collect();
    check_all_answered(results);
    grinder.stop(false);
    let stats = grinder.stats();
    assert_eq!((stats.completed, stats.failed), (TOTAL as u64, 0));
    pool.stop();
}

#[test]
fn ten_thousand_items_from_a_thousand_tokio_tasks_each_answered_once() {
    let _watchdog = watchdog("ten_thousand_items_from_a_thousand_tokio_tasks_each_answered_once");
    let pool = pool(2);
    let grinder = stress_grinder(&pool);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|t| {
                let grinder = grinder.clone();
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(TOTAL / 1000);
                    for i in 0..TOTAL / 1000 {
                        let id = format!("{t}-{i}");
                        let handle = grinder
                            .enqueue(SimpleTask::new(id.clone(), 0.0))
                            .expect("accepted");
                        out.push((id, handle.await.expect("awaited once")));
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::with_capacity(TOTAL);
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        all
    });
    check_all_answered(results);
    grinder.stop(false);
    assert_eq!(grinder.stats().completed, TOTAL as u64);
    pool.stop();
}

/// Polls every future until all are done: `join_all` without futures-util.
struct JoinAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

// Only boxed (pinned) futures and plain outputs inside.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut pending = false;
        for (slot, out) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
    }
}

fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> JoinAll<F> {
    let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let outputs = futures.iter().map(|_| None).collect();
    JoinAll { futures, outputs }
}

#[test]
fn ten_thousand_items_from_a_thousand_futures_executor_tasks_each_answered_once() {
    let _watchdog =
        watchdog("ten_thousand_items_from_a_thousand_futures_executor_tasks_each_answered_once");
    let pool = pool(2);
    let grinder = stress_grinder(&pool);
    let tasks = (0..1000).map(|t| {
        let grinder = grinder.clone();
        async move {
            let mut out = Vec::with_capacity(TOTAL / 1000);
            for i in 0..TOTAL / 1000 {
                let id = format!("{t}-{i}");
                let handle = grinder
                    .enqueue(SimpleTask::new(id.clone(), 0.0))
                    .expect("accepted");
                out.push((id, handle.await.expect("awaited once")));
            }
            out
        }
    });
    let results = futures_executor::block_on(join_all(tasks))
        .into_iter()
        .flatten()
        .collect();
    check_all_answered(results);
    grinder.stop(false);
    assert_eq!(grinder.stats().completed, TOTAL as u64);
    pool.stop();
}
