//! The pool and grinder figures (issue 5, targets 8 and 9): a
//! `LeasedExecutorManager` of tiny-task workers (this bench binary
//! re-executed), used through its leases or through a `WorkGrinder`. Only
//! the crate's public API.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use worker_facade::{LeasedExecutorManager, Outcome, WorkGrinder};

use super::library::command;
use super::tasks::{self, Tiny};

/// Long enough that no lease expires during a measurement.
const LEASE: Duration = Duration::from_secs(600);

/// A started pool of exactly `workers` executors (all spawned by `start`,
/// so no measurement includes a spawn).
pub(crate) fn pool(workers: usize) -> Arc<LeasedExecutorManager<Tiny>> {
    let pool = LeasedExecutorManager::<Tiny>::builder(command("tiny"))
        .min_executors(workers)
        .max_executors(workers)
        .build()
        .expect("pool settings");
    pool.start().expect("start pool");
    Arc::new(pool)
}

/// A started grinder on `pool`.
fn grinder(
    pool: &Arc<LeasedExecutorManager<Tiny>>,
    max_wait: Duration,
    threshold: usize,
    concurrency: usize,
) -> Arc<WorkGrinder<Tiny>> {
    let g = WorkGrinder::builder(pool.clone())
        .max_wait(max_wait)
        .batch_size_threshold(threshold)
        .concurrency(concurrency)
        .lease(LEASE)
        .build()
        .expect("grinder settings");
    g.start().expect("start grinder");
    Arc::new(g)
}

/// `total` tiny tasks from `submitters` concurrent async tasks on a 2-thread
/// tokio runtime, each enqueueing one item and awaiting its result before
/// the next, through a grinder (`max_wait` 1 ms, batches of `threshold`,
/// `workers` batches at once) on a pool of `workers`. Returns the time from
/// the first enqueue until every result is in; every result is checked.
pub(crate) fn throughput(
    workers: usize,
    submitters: usize,
    total: usize,
    threshold: usize,
) -> Duration {
    let pool = pool(workers);
    let g = grinder(&pool, Duration::from_millis(1), threshold, workers);
    let submit_to = g.clone();
    let took = async_submitters(submitters, total, move |task| {
        let g = submit_to.clone();
        async move {
            let got = g.enqueue(task).expect("accepted").await;
            got.expect("waited once").expect("a result")
        }
    });
    g.stop(false);
    pool.stop();
    took
}

/// `total` tiny tasks from `submitters` concurrent async tasks on a
/// 2-thread tokio runtime, each handing one task to `call` and awaiting
/// its result before the next. Returns the time from the first call until
/// every result is in; every result is checked.
fn async_submitters<F, Fut>(submitters: usize, total: usize, call: F) -> Duration
where
    F: Fn(Tiny) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let per = total.div_ceil(submitters);
    let t0 = Instant::now();
    let done: usize = rt.block_on(async {
        let joins: Vec<_> = (0..submitters)
            .map(|s| {
                let call = call.clone();
                tokio::spawn(async move {
                    let first = (s * per) as u64;
                    let last = ((s + 1) * per).min(total) as u64;
                    for id in first..last {
                        let task = Tiny::new(id);
                        let want = tasks::solve_tiny(&task);
                        assert_eq!(call(task).await, want);
                    }
                    (last.saturating_sub(first)) as usize
                })
            })
            .collect();
        let mut done = 0;
        for j in joins {
            done += j.await.expect("submitter");
        }
        done
    });
    let took = t0.elapsed();
    assert_eq!(done, total, "every item answered");
    drop(rt);
    took
}

/// One caller submitting one item at a time through a grinder with
/// `max_wait` (default batch threshold) on a pool of 2: each `submit` →
/// result timed, after a warm-up of a tenth.
pub(crate) fn latency(max_wait: Duration, samples: usize) -> Vec<Duration> {
    let pool = pool(2);
    let g = grinder(&pool, max_wait, 20, 2);
    let mut out = Vec::with_capacity(samples);
    for i in 0..(samples + samples / 10) as u64 {
        let task = Tiny::new(i);
        let want = tasks::solve_tiny(&task);
        let t0 = Instant::now();
        let got = futures_executor::block_on(g.submit(task)).expect("a result");
        let took = t0.elapsed();
        assert_eq!(got, want);
        if i >= (samples / 10) as u64 {
            out.push(took);
        }
    }
    g.stop(false);
    pool.stop();
    out
}

/// `total` tiny tasks spread over `workers` leases of a pool of `workers`:
/// one thread per lease submits its share, then waits for every handle.
/// The leases are taken before the clock starts.
pub(crate) fn leases(workers: usize, total: usize) -> Duration {
    let pool = pool(workers);
    let leases: Vec<_> = (0..workers)
        .map(|i| pool.acquire(LEASE, format!("bench-{i}")).expect("a lease"))
        .collect();
    let per = total.div_ceil(workers);
    let t0 = Instant::now();
    let done: usize = thread::scope(|scope| {
        let joins: Vec<_> = leases
            .iter()
            .enumerate()
            .map(|(i, lease)| {
                scope.spawn(move || {
                    let first = (i * per) as u64;
                    let last = ((i + 1) * per).min(total) as u64;
                    let handles: Vec<_> = (first..last)
                        .map(|id| lease.submit(Tiny::new(id)).expect("accepted"))
                        .collect();
                    for (id, h) in (first..).zip(handles) {
                        let want = tasks::solve_tiny(&Tiny::new(id));
                        assert_eq!(h.wait().expect("an outcome"), Outcome::Completed(want));
                    }
                    (last.saturating_sub(first)) as usize
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().expect("lessee")).sum()
    });
    let took = t0.elapsed();
    assert_eq!(done, total, "every task answered");
    drop(leases);
    pool.stop();
    took
}

/// The grinder's ceiling: the same `submitters` async tasks, one item
/// each at a time, straight on one `workers(workers)` facade (no batching,
/// no leases). Returns the time until every result is in; each is checked.
pub(crate) fn facade_throughput(workers: usize, submitters: usize, total: usize) -> Duration {
    let w = Arc::new(
        worker_facade::WorkingProcessFacade::<Tiny>::builder(command("tiny"))
            .workers(workers)
            .spawn()
            .expect("spawn workers"),
    );
    async_submitters(submitters, total, move |task| {
        let w = w.clone();
        async move {
            match w.submit(task).expect("accepted").await {
                Ok(Outcome::Completed(got)) => got,
                other => panic!("expected a result, got {other:?}"),
            }
        }
    })
}
