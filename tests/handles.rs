//! The facade's `TaskHandle` and the grinder's `GrindHandle` are one
//! family: the same four waits with the same shapes (`Err(Timeout)` when
//! not yet), `id()` a `TaskId`, an outcome given once (asking again says it
//! was taken, not that something broke), and a drop that never cancels
//! (`cancel` does; `detach` says the drop is meant). Real worker processes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::watchdog;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    EnqueueError, ItemError, LeasedExecutorManager, Outcome, TaskId, WaitError, WorkError,
    WorkGrinder, WorkingProcessFacade,
};

const GUARD: Duration = Duration::from_secs(20);

fn t(name: &str, seconds: f64) -> SimpleTask {
    SimpleTask::new(name, seconds)
}

fn pool() -> Arc<LeasedExecutorManager<SimpleTask>> {
    let pool = LeasedExecutorManager::<SimpleTask>::builder(common::stock_worker())
        .min_executors(1)
        .max_executors(1)
        .build()
        .expect("pool settings");
    pool.start().expect("pool starts");
    Arc::new(pool)
}

fn grinder(
    pool: &Arc<LeasedExecutorManager<SimpleTask>>,
    max_wait: f64,
    threshold: usize,
) -> WorkGrinder<SimpleTask> {
    let g = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(max_wait)
        .batch_size_threshold(threshold)
        .build()
        .expect("grinder settings");
    g.start().expect("grinder starts");
    g
}

/// The text of an item's result, failing the test on anything else.
fn text(got: Result<Result<String, WorkError>, WaitError>) -> String {
    match got {
        Ok(Ok(text)) => text,
        other => panic!("expected a result, got {other:?}"),
    }
}

/// Polls `check` until it holds (a state the library reports, not a
/// guess about timing).
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn dropped_task_handles_let_their_tasks_run_and_collect_gets_the_outcomes() {
    let _dog = watchdog("dropped_task_handles");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(common::stock_worker()).expect("spawn");
    for i in 0..10 {
        let _ = w.submit(t(&format!("dropped{i}"), 0.0));
    }
    w.submit(t("detached", 0.0)).expect("accepted").detach();
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), 11);
    for r in &records {
        assert_eq!(
            r.outcome,
            Outcome::Completed(format!("{} solved after 0", r.task.id))
        );
    }
}

/// Was a race (1 run in 25 lost outcomes): a handle dropped just after its
/// outcome arrived, with no wait taking it, dropped the outcome with it.
/// Here the outcome has surely arrived before the drop.
#[test]
fn a_handle_dropped_after_its_outcome_arrived_gives_it_to_collect() {
    let _dog = watchdog("dropped_after_arrival");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(common::stock_worker()).expect("spawn");
    let handle = w.submit(t("arrived", 0.0)).expect("accepted");
    // Counted once delivered to the handle.
    while w.stats().completed < 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(handle);
    let future = w
        .submit(t("arrived too", 0.0))
        .expect("accepted")
        .into_future();
    while w.stats().completed < 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(future);
    let records = w.collect_tasks().expect("collect");
    let got: Vec<(&str, &Outcome<String>)> = records
        .iter()
        .map(|r| (r.task.id.as_str(), &r.outcome))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "arrived",
                &Outcome::Completed("arrived solved after 0".into())
            ),
            (
                "arrived too",
                &Outcome::Completed("arrived too solved after 0".into())
            ),
        ]
    );
}

#[test]
fn dropped_grind_handles_let_their_items_run() {
    let _dog = watchdog("dropped_grind_handles");
    let pool = pool();
    let g = grinder(&pool, 0.01, 5);
    // What used to run nothing: ten handles dropped at once.
    for i in 0..10 {
        let _ = g.enqueue(t(&format!("dropped{i}"), 0.0));
    }
    g.enqueue(t("detached", 0.0)).expect("accepted").detach();
    g.stop(false);
    let stats = g.stats();
    assert_eq!(
        (
            stats.completed,
            stats.removed,
            stats.cancelled,
            stats.failed
        ),
        (11, 0, 0, 0),
        "{stats:?}"
    );
    pool.stop();
}

#[test]
fn a_grind_handle_cancel_removes_an_item_waiting_for_a_lease() {
    let _dog = watchdog("grind_handle_cancel_waiting_for_a_lease");
    let pool = pool();
    // The pool's only executor is taken, so the item's batch leaves the
    // scheduler and waits in a runner for a lease.
    let holder = pool
        .acquire(Duration::from_secs(60), "holder")
        .expect("lease");
    let g = grinder(&pool, 3600.0, 1);
    let item = g.enqueue(t("cancelled", 0.0)).expect("accepted");
    until("the batch waits for a lease", || {
        let s = g.stats();
        s.pending == 0 && s.batches_in_flight == 1
    });
    item.cancel();
    drop(holder);
    let got = item.wait_timeout(GUARD);
    assert!(
        matches!(got, Ok(Err(WorkError::Cancelled))),
        "cancelled before it went to a worker, got {got:?}"
    );
    g.stop(false);
    let stats = g.stats();
    assert_eq!((stats.completed, stats.removed), (0, 1), "{stats:?}");
    // It never reached the executor.
    let lease = pool
        .acquire(Duration::from_secs(5), "check")
        .expect("lease");
    assert_eq!(lease.executor_stats().submitted, 0);
    lease.release();
    pool.stop();
}

#[test]
fn an_outcome_already_taken_says_so_on_both_handles() {
    let _dog = watchdog("already_taken");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(common::stock_worker()).expect("spawn");
    let h = w.submit(t("once", 0.0)).expect("accepted");
    assert!(h.wait_timeout(GUARD).expect("answered").is_completed());
    assert_eq!(h.try_wait(), Err(WaitError::AlreadyTaken));
    assert_eq!(
        h.wait_deadline(Instant::now() + GUARD),
        Err(WaitError::AlreadyTaken)
    );
    let err = h.wait().expect_err("taken");
    assert_eq!(err, WaitError::AlreadyTaken);
    let message = err.to_string();
    assert!(
        message.contains("already taken from this handle"),
        "{message}"
    );
    for wrong in ["bug", "report", "supervisor", "ended"] {
        assert!(!message.contains(wrong), "{message}");
    }

    let pool = pool();
    let g = grinder(&pool, 0.01, 1);
    let mut item = g.enqueue(t("once", 0.0)).expect("accepted");
    assert_eq!(text(item.wait_timeout(GUARD)), "once solved after 0");
    assert_eq!(item.try_wait().err(), Some(WaitError::AlreadyTaken));
    assert_eq!(
        item.wait_timeout(GUARD).err(),
        Some(WaitError::AlreadyTaken)
    );
    // Awaited after a wait took it, too: not `WorkError::Lost`.
    assert_eq!(
        futures_executor::block_on(&mut item).err(),
        Some(WaitError::AlreadyTaken)
    );
    assert_eq!(item.wait().err(), Some(WaitError::AlreadyTaken));
    g.stop(false);
    pool.stop();
}

#[test]
fn both_handles_wait_with_the_same_shapes_and_ids() {
    let _dog = watchdog("same_shapes");
    let w = WorkingProcessFacade::<SimpleTask>::spawn(common::stock_worker()).expect("spawn");
    let first = w.process_task(t("plain", 0.0)).expect("accepted");
    let slow = w.submit(t("slow", 0.5)).expect("accepted");
    let id: TaskId = slow.id();
    assert_eq!(id.as_u64(), first.as_u64() + 1);
    assert_eq!(slow.try_wait(), Err(WaitError::Timeout));
    assert_eq!(
        slow.wait_timeout(Duration::from_millis(1)),
        Err(WaitError::Timeout)
    );
    assert!(slow.wait().expect("answered").is_completed());

    let pool = pool();
    // Never dispatched by age, and not full: the items stay pending.
    let g = grinder(&pool, 3600.0, 3);
    let a = g.enqueue(t("a", 0.0)).expect("accepted");
    let b = g.submit_from_thread(t("b", 0.0)).expect("accepted");
    let (ia, ib): (TaskId, TaskId) = (a.id(), b.id());
    assert_eq!((ia.as_u64(), ib.as_u64()), (0, 1));
    assert_eq!(a.try_wait().err(), Some(WaitError::Timeout));
    assert_eq!(
        b.wait_timeout(Duration::from_millis(1)).err(),
        Some(WaitError::Timeout)
    );
    assert_eq!(
        a.wait_deadline(Instant::now() + Duration::from_millis(1))
            .err(),
        Some(WaitError::Timeout)
    );
    g.stop(false); // drains
    assert_eq!(text(a.wait()), "a solved after 0");
    assert_eq!(text(futures_executor::block_on(b)), "b solved after 0");
    pool.stop();
}

#[test]
fn dropping_the_submit_future_cancels_its_item() {
    let _dog = watchdog("submit_future_dropped");
    let pool = pool();
    let g = grinder(&pool, 3600.0, 2);
    {
        // Polled once (so the item is queued), then dropped.
        let mut submit = Box::pin(g.submit(t("abandoned", 0.0)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(submit.as_mut().poll(&mut cx).is_pending());
    }
    let kept = g.enqueue(t("kept", 0.0)).expect("accepted");
    g.stop(false);
    assert_eq!(text(kept.wait()), "kept solved after 0");
    let stats = g.stats();
    assert_eq!((stats.completed, stats.removed), (1, 1), "{stats:?}");
    pool.stop();
}

#[test]
#[allow(deprecated)]
fn the_old_error_names_still_name_the_new_types() {
    let refused: worker_facade::GrinderError<SimpleTask> = EnqueueError::Stopped(t("x", 0.0));
    let old: worker_facade::GrindError<SimpleTask> = worker_facade::GrindError::Refused(refused);
    assert!(matches!(old, ItemError::Refused(EnqueueError::Stopped(_))));
}
