//! One library thread per facade, whatever the number of its workers, and
//! N + 2 for a pool of N executors. Its own file (its own process), since it
//! counts this process's threads.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{stock_worker, watchdog};
use worker_facade::simple::SimpleTask;
use worker_facade::{LeasedExecutorManager, WorkingProcessFacade};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .expect("/proc/self/task")
}

#[test]
fn a_facade_costs_one_thread_with_one_worker_or_eight_and_a_pool_n_plus_two() {
    let _watchdog = watchdog("threads");
    let base = threads();
    for workers in [1, 8] {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .workers(workers)
            .spawn()
            .expect("spawn");
        assert_eq!(w.worker_pids().len(), workers);
        for i in 0..100 {
            w.process_task(SimpleTask::new(format!("t{i}"), 0.0))
                .expect("accepted");
        }
        // Counted while it works, not only while it is idle.
        assert_eq!(
            threads(),
            base + 1,
            "threads of a facade with {workers} workers"
        );
        let records = w.collect_tasks().expect("collect");
        assert!(records.iter().all(|r| r.outcome.is_completed()));
        assert_eq!(
            common::settled_threads(),
            base,
            "the engine thread is joined by collect"
        );
    }
    let n = 3;
    let pool = Arc::new(
        LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
            .min_executors(n)
            .max_executors(n)
            .build()
            .expect("pool"),
    );
    pool.start().expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pool.stats().available < n {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads(), base + n + 2, "a pool of {n}: {:?}", pool.stats());
    pool.stop();
    assert_eq!(
        common::settled_threads(),
        base,
        "everything joined after stop"
    );
}
