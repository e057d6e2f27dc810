//! Many async callers share two worker processes through a `WorkGrinder`.
//!
//! Run it with `cargo run --example grinder`. The workers are this very
//! executable, re-executed (`WorkerCommand::current_exe`), so nothing else
//! needs to be built first.
//!
//! 500 tokio tasks each submit a few items and await their results. The
//! grinder batches them (a batch leaves when 25 items are pending or the
//! oldest has waited 20 ms), leases an executor from the pool for each batch,
//! and answers every caller on its own. One caller sends a task that aborts
//! its worker: only that item fails; the items queued behind it run again on
//! a fresh worker, and the crashed one is retired and replaced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{LeasedExecutorManager, WorkGrinder, WorkerCommand};

const CALLERS: usize = 500;
const ITEMS_PER_CALLER: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a re-executed worker this serves tasks and exits; here it returns.
    worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));

    let pool = Arc::new(
        LeasedExecutorManager::<SimpleTask>::builder(WorkerCommand::current_exe())
            .min_executors(1)
            .max_executors(2)
            .lease_grace(Duration::from_secs(5))
            .build()?,
    );
    pool.start()?;
    let grinder = Arc::new(
        WorkGrinder::builder(pool.clone())
            .max_wait(Duration::from_millis(20))
            .batch_size_threshold(25)
            .lease_seconds(30.0)
            .owner_prefix("example")
            .build()?,
    );
    grinder.start()?;

    // Any runtime works; the library depends on none.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let started = Instant::now();
    let outcomes = runtime.block_on(async {
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let grinder = grinder.clone();
                tokio::spawn(async move {
                    let mut outcomes = Vec::with_capacity(ITEMS_PER_CALLER);
                    for item in 0..ITEMS_PER_CALLER {
                        let id = if caller == 77 && item == 0 {
                            "crash".to_string() // aborts whichever worker runs it
                        } else {
                            format!("caller{caller}-item{item}")
                        };
                        // Queues the item and awaits its result: the
                        // result, or why there is none (refused, or the
                        // item's own failure).
                        let outcome = grinder.submit(SimpleTask::new(id, 0.001)).await;
                        outcomes.push(outcome);
                    }
                    outcomes
                })
            })
            .collect();
        // The grinder answers from any thread, at any time.
        let busy = grinder.stats();
        println!(
            "while busy: {} pending (oldest waited {:?}), {} batches dispatched, {} in flight",
            busy.pending, busy.oldest_wait, busy.batches_dispatched, busy.batches_in_flight
        );
        let mut all = Vec::with_capacity(CALLERS * ITEMS_PER_CALLER);
        for caller in callers {
            match caller.await {
                Ok(outcomes) => all.extend(outcomes),
                Err(e) => eprintln!("a caller task failed: {e}"),
            }
        }
        all
    });
    let elapsed = started.elapsed();

    let mut completed = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(_) => completed += 1,
            Err(e) => println!("one item failed, as planned: {e}"),
        }
    }
    println!(
        "{completed} of {} items completed in {elapsed:.2?}",
        outcomes.len()
    );
    if let Some(Ok(sample)) = outcomes.first() {
        println!("first result: {sample}");
    }

    grinder.stop(false);
    let g = grinder.stats();
    println!(
        "grinder: {} batches, {} completed, {} failed, {} re-run; max_wait {:?}, batch size {}, lease {:?}",
        g.batches_dispatched,
        g.completed,
        g.failed,
        g.rerun,
        g.max_wait,
        g.batch_size_threshold,
        g.lease
    );
    let p = pool.stats();
    println!(
        "pool: {} executors ({} available, {} leased), {} retired, {} replaced",
        p.total, p.available, p.leased, p.retired, p.replaced
    );
    pool.stop();
    Ok(())
}
