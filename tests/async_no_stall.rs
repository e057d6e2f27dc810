//! Every call that waits has an async form that never stalls the runtime
//! polling it: each form is driven on a tokio current-thread runtime beside
//! a ticker task that ticks every 5 ms, and the ticker must never be late by
//! more than 50 ms — while real workers run, time out, get killed and are
//! reaped. The harness itself is checked first: a blocking call on the same
//! runtime makes the ticker late.
//!
//! The tests of this file run one at a time (a lock), so that one test's
//! processes cannot make another's ticker late on a small machine, and so
//! that counting this process's children is exact.

mod common;

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use common::{announcing_worker, child_pids, running, stock_worker, watchdog};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    AcquireError, CancelReason, CrashReason, ItemError, LeasedExecutorManager, NotRunReason,
    Outcome, WorkError, WorkGrinder, WorkerCommand, WorkingProcessFacade,
};

const TICK: Duration = Duration::from_millis(5);
const MAX_LATE: Duration = Duration::from_millis(50);
/// A task the stock worker sleeps through for a minute: only a kill ends it.
const LONG: f64 = 60.0;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ticks of a 5 ms ticker task, and the time span of each form driven
/// beside it.
struct Ticker {
    ticks: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    spans: Vec<(&'static str, Instant, Instant)>,
}

impl Ticker {
    /// Starts the ticker on the current runtime and waits for its first tick.
    async fn start() -> (Ticker, tokio::task::JoinHandle<()>) {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (armed_tx, armed) = tokio::sync::oneshot::channel();
        let task = {
            let ticks = ticks.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut armed_tx = Some(armed_tx);
                loop {
                    ticks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Instant::now());
                    if let Some(tx) = armed_tx.take() {
                        let _ = tx.send(());
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    tokio::time::sleep(TICK).await;
                }
            })
        };
        armed.await.expect("the ticker runs");
        let ticker = Ticker {
            ticks,
            stop,
            spans: Vec::new(),
        };
        (ticker, task)
    }

    /// Awaits `fut`, remembering when it ran.
    async fn form<R>(&mut self, name: &'static str, fut: impl IntoFuture<Output = R>) -> R {
        let start = Instant::now();
        let out = fut.await;
        self.spans.push((name, start, Instant::now()));
        out
    }

    /// Stops the ticker (its last tick comes after whatever stalled it
    /// last) and returns each form's worst lateness: the longest gap
    /// between two ticks around or inside the form, less the tick.
    async fn finish(self, task: tokio::task::JoinHandle<()>) -> Vec<(&'static str, Duration)> {
        self.stop.store(true, Ordering::Release);
        task.await.expect("the ticker ends");
        let ticks = self.ticks.lock().unwrap_or_else(PoisonError::into_inner);
        self.spans
            .iter()
            .map(|&(name, start, end)| {
                let worst = ticks
                    .windows(2)
                    .filter(|w| w[1] >= start && w[0] <= end)
                    .map(|w| w[1] - w[0])
                    .max()
                    .unwrap_or_default();
                (name, worst.saturating_sub(TICK))
            })
            .collect()
    }
}

/// Runs `body` on a fresh tokio current-thread runtime beside the ticker,
/// prints each form's worst lateness, and returns them.
fn on_ticking_runtime<F>(body: impl FnOnce(Ticker) -> F) -> Vec<(&'static str, Duration)>
where
    F: Future<Output = Ticker>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let late = runtime.block_on(async {
        let (ticker, task) = Ticker::start().await;
        let ticker = body(ticker).await;
        ticker.finish(task).await
    });
    for (name, late) in &late {
        eprintln!(
            "ticker lateness: {:>7.1} ms  {name}",
            late.as_secs_f64() * 1e3
        );
    }
    late
}

fn assert_never_late(late: &[(&'static str, Duration)]) {
    assert!(!late.is_empty(), "no form was measured");
    for (name, late) in late {
        assert!(
            *late <= MAX_LATE,
            "{name} stalled the runtime: the ticker was {late:?} late"
        );
    }
}

/// A future that can be moved to another thread (`tokio::spawn`).
fn send<F: Future + Send>(f: F) -> F {
    f
}

#[test]
fn the_ticker_sees_a_blocking_call() {
    let _watchdog = watchdog("the_ticker_sees_a_blocking_call");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        w.process_task(SimpleTask::new("slow", 0.4))
            .expect("accepted");
        t.form("blocking collect_tasks (the harness check)", async {
            let records = w.collect_tasks().expect("collect");
            assert!(records[0].outcome.is_completed());
        })
        .await;
        t
    });
    assert!(
        late[0].1 >= Duration::from_millis(300),
        "the ticker missed a 0.4 s blocking call: {late:?}"
    );
}

#[test]
fn facade_spawn_collect_and_drop_never_stall() {
    let _watchdog = watchdog("facade_spawn_collect_and_drop_never_stall");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        let w = t
            .form(
                "FacadeBuilder::spawn_async (2 workers)",
                send(
                    WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
                        .workers(2)
                        .spawn_async(),
                ),
            )
            .await
            .expect("spawn");
        let pids = w.worker_pids();
        assert_eq!(pids.len(), 2);
        let handle = w.submit(SimpleTask::new("handle", 0.2)).expect("accepted");
        for name in ["a", "b", "c"] {
            w.process_task(SimpleTask::new(name, 0.2))
                .expect("accepted");
        }
        let outcome = t.form("TaskHandle .await", handle).await;
        assert_eq!(
            outcome,
            Ok(Outcome::Completed("handle solved after 0.2".into()))
        );
        let records = t
            .form("collect_tasks_async", send(w.collect_tasks_async()))
            .await
            .expect("collect");
        let names: Vec<_> = records.iter().map(|r| r.task.id.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(records.iter().all(|r| r.outcome.is_completed()));
        assert!(pids.iter().all(|&pid| !running(pid)), "workers reaped");
        t.form("drop(facade) after collect_tasks_async", async { drop(w) })
            .await;
        t
    });
    assert_never_late(&late);
}

#[test]
fn collect_deadlines_kill_without_stalling() {
    let _watchdog = watchdog("collect_deadlines_kill_without_stalling");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        let w = t
            .form(
                "WorkingProcessFacade::spawn_async",
                WorkingProcessFacade::<SimpleTask>::spawn_async(stock_worker()),
            )
            .await
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        w.process_task(SimpleTask::new("hung", LONG))
            .expect("accepted");
        w.process_task(SimpleTask::new("behind", 0.0))
            .expect("accepted");
        let records = t
            .form(
                "collect_tasks_timeout_async (kills a hung worker)",
                w.collect_tasks_timeout_async(Duration::from_millis(300)),
            )
            .await
            .expect("collect");
        match &records[0].outcome {
            Outcome::Crashed(crash) => {
                assert_eq!(crash.reason, Some(CrashReason::CollectDeadline))
            }
            other => panic!("the hung task should have crashed: {other:?}"),
        }
        assert!(matches!(
            records[1].outcome,
            Outcome::NotRun(NotRunReason::DeadlineExpired)
        ));
        assert!(!running(pid), "the hung worker was killed and reaped");
        drop(w);

        let w = WorkingProcessFacade::<SimpleTask>::spawn_async(stock_worker())
            .await
            .expect("spawn");
        w.process_task(SimpleTask::new("quick", 0.1))
            .expect("accepted");
        let records = t
            .form(
                "collect_tasks_deadline_async",
                w.collect_tasks_deadline_async(Instant::now() + Duration::from_secs(30)),
            )
            .await
            .expect("collect");
        assert!(records[0].outcome.is_completed());
        t
    });
    assert_never_late(&late);
}

#[test]
fn shutdown_async_gives_the_grace_period_without_stalling() {
    let _watchdog = watchdog("shutdown_async_gives_the_grace_period_without_stalling");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        // What `drop(facade)` with a task running does, awaited: the running
        // task finishes within the grace period, the queued one never starts.
        let (cmd, lines) = announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .grace_period(Duration::from_secs(5))
            .spawn_async()
            .await
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let running_task = w
            .submit(SimpleTask::new("announce-running", 0.5))
            .expect("accepted");
        let queued = w.submit(SimpleTask::new("queued", 0.5)).expect("accepted");
        started(&lines, "announce-running").await;
        t.form(
            "shutdown_async (a task running, grace period)",
            send(w.shutdown_async()),
        )
        .await;
        assert!(!running(pid), "the worker was reaped");
        assert_eq!(
            running_task.await,
            Ok(Outcome::Completed(
                "announce-running solved after 0.5".into()
            ))
        );
        assert_eq!(
            queued.await,
            Ok(Outcome::NotRun(NotRunReason::Cancelled(
                CancelReason::FacadeDropped
            )))
        );

        // Past the grace period the running task is killed.
        let (cmd, lines) = announcing_worker();
        let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
            .grace_period(Duration::from_millis(300))
            .spawn_async()
            .await
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let hung = w
            .submit(SimpleTask::new("announce-hung", LONG))
            .expect("accepted");
        started(&lines, "announce-hung").await;
        t.form(
            "shutdown_async (a hung task, killed after the grace)",
            w.shutdown_async(),
        )
        .await;
        assert!(!running(pid), "the hung worker was killed and reaped");
        match hung.await {
            Ok(Outcome::Crashed(crash)) => {
                assert_eq!(crash.reason, Some(CrashReason::GracePeriodOver))
            }
            other => panic!("the hung task should have been killed: {other:?}"),
        }

        // The guard's async finish.
        let guard = WorkingProcessFacade::<SimpleTask>::spawn_async(stock_worker())
            .await
            .expect("spawn")
            .collect_on_drop(|_| panic!("finish_async takes the records, not the sink"));
        guard
            .process_task(SimpleTask::new("guarded", 0.3))
            .expect("accepted");
        let records = t
            .form("CollectOnDrop::finish_async", send(guard.finish_async()))
            .await
            .expect("collect");
        assert!(records[0].outcome.is_completed());
        t
    });
    assert_never_late(&late);
}

/// Waits, without blocking the runtime, for the test worker's line saying
/// it started task `id`.
async fn started(lines: &mpsc::Receiver<String>, id: &str) {
    let want = format!("started {id}");
    loop {
        match lines.try_recv() {
            Ok(line) if line == want => return,
            Ok(_) => {}
            Err(mpsc::TryRecvError::Empty) => tokio::time::sleep(TICK).await,
            Err(mpsc::TryRecvError::Disconnected) => panic!("the worker's output ended"),
        }
    }
}

#[test]
fn a_spawn_async_given_up_stops_its_worker_without_stalling() {
    let _watchdog = watchdog("a_spawn_async_given_up_stops_its_worker_without_stalling");
    let _one = one_at_a_time();
    assert!(child_pids().is_empty(), "no child before the test");
    let late = on_ticking_runtime(|mut t| async move {
        // A program that never says hello: the handshake would take its
        // whole 10 s timeout. The caller gives up after 200 ms.
        let silent = WorkerCommand::new("/bin/sleep").args(["60"]);
        let spawn = WorkingProcessFacade::<SimpleTask>::spawn_async(silent);
        let given_up = t
            .form(
                "spawn_async dropped by a timeout mid-handshake",
                tokio::time::timeout(Duration::from_millis(200), spawn),
            )
            .await;
        assert!(
            given_up.is_err(),
            "the silent worker never completes its handshake"
        );
        t
    });
    assert_never_late(&late);
    assert_eq!(
        child_pids(),
        Vec::<u32>::new(),
        "the silent worker was reaped"
    );
}

#[test]
fn pool_forms_never_stall() {
    let _watchdog = watchdog("pool_forms_never_stall");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        let pool = LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
            .min_executors(1)
            .max_executors(2)
            .build()
            .expect("valid settings");
        t.form(
            "LeasedExecutorManager::start_async",
            send(pool.start_async()),
        )
        .await
        .expect("starts");
        assert_eq!(pool.stats().total, 1);
        let lease = t
            .form(
                "acquire_async (an idle executor)",
                send(pool.acquire_async(Duration::from_secs(30), "first")),
            )
            .await
            .expect("leased");
        let handle = lease
            .submit(SimpleTask::new("leased", 0.2))
            .expect("accepted");
        let second = t
            .form(
                "acquire_async (the pool starts an executor)",
                pool.acquire_async(Duration::from_secs(30), "second"),
            )
            .await
            .expect("leased");
        assert_ne!(second.worker_pid(), lease.worker_pid());
        let refused = t
            .form(
                "try_acquire_async (the pool is full)",
                pool.try_acquire_async(Duration::from_secs(30), "third"),
            )
            .await;
        assert!(matches!(
            refused,
            Err(AcquireError::NoneAvailable { max: 2 })
        ));
        let timed_out = t
            .form(
                "acquire_timeout_async (times out after 300 ms)",
                pool.acquire_timeout_async(
                    Duration::from_secs(30),
                    "fourth",
                    Duration::from_millis(300),
                ),
            )
            .await;
        assert!(
            matches!(timed_out, Err(AcquireError::TimedOut { .. })),
            "{timed_out:?}"
        );
        assert_eq!(
            t.form("Lease's TaskHandle .await", handle).await,
            Ok(Outcome::Completed("leased solved after 0.2".into()))
        );
        drop(lease);
        let again = t
            .form(
                "acquire_deadline_async (a released executor)",
                pool.acquire_deadline_async(
                    Duration::from_secs(30),
                    "fifth",
                    Instant::now() + Duration::from_secs(30),
                ),
            )
            .await
            .expect("leased");
        drop(again);
        // A lease still held, running a task, when the pool stops: revoked.
        let hung = second
            .submit(SimpleTask::new("hung", LONG))
            .expect("accepted");
        let pid = second.worker_pid().expect("running");
        t.form(
            "stop_async (a lease held, a task running)",
            send(pool.stop_async()),
        )
        .await;
        assert!(!running(pid), "the leased worker was killed and reaped");
        assert!(second.is_revoked());
        match hung.await {
            Ok(Outcome::Crashed(crash)) => {
                assert!(matches!(crash.reason, Some(CrashReason::Terminated(_))))
            }
            Ok(Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Terminated(_)))) => {}
            other => panic!("the revoked lease's task: {other:?}"),
        }
        assert!(pool.stats().stopped);
        drop(second);
        t.form("drop(pool) after stop_async", async { drop(pool) })
            .await;
        t
    });
    assert_never_late(&late);
}

#[test]
fn grinder_forms_never_stall() {
    let _watchdog = watchdog("grinder_forms_never_stall");
    let _one = one_at_a_time();
    let late = on_ticking_runtime(|mut t| async move {
        let pool = Arc::new(
            LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
                .min_executors(1)
                .max_executors(2)
                .build()
                .expect("valid settings"),
        );
        pool.start_async().await.expect("starts");
        let grinder = Arc::new(
            WorkGrinder::builder(pool.clone())
                .max_wait_seconds(0.02)
                .batch_size_threshold(4)
                .build()
                .expect("valid settings"),
        );
        grinder.start().expect("starts");
        let text = t
            .form(
                "WorkGrinder::submit (awaits the result)",
                send(grinder.submit(SimpleTask::new("one", 0.2))),
            )
            .await
            .expect("completed");
        assert_eq!(text, "one solved after 0.2");
        // Many async callers at once, each awaiting its own result.
        let callers: Vec<_> = (0..12)
            .map(|i| {
                let grinder = grinder.clone();
                tokio::spawn(async move {
                    let id = format!("item-{i}");
                    let text = grinder.submit(SimpleTask::new(&id, 0.05)).await;
                    (id, text)
                })
            })
            .collect();
        t.form("12 concurrent submits", async {
            for caller in callers {
                let (id, text) = caller.await.expect("caller");
                assert_eq!(text.expect("completed"), format!("{id} solved after 0.05"));
            }
        })
        .await;
        let handle = grinder
            .enqueue(SimpleTask::new("queued", 0.5))
            .expect("accepted");
        t.form(
            "stop_async(false) (drains a 0.5 s item)",
            send(grinder.stop_async(false)),
        )
        .await;
        assert_eq!(
            handle.await.expect("waited once").expect("drained"),
            "queued solved after 0.5"
        );
        assert!(grinder.stats().stopped);
        assert!(matches!(
            grinder.submit(SimpleTask::new("late", 0.0)).await,
            Err(ItemError::Refused(_))
        ));
        t.form("drop(grinder) after stop_async", async { drop(grinder) })
            .await;

        // Cancelling what is pending.
        let grinder = WorkGrinder::builder(pool.clone())
            .max_wait_seconds(3600.0)
            .batch_size_threshold(100)
            .build()
            .expect("valid settings");
        grinder.start().expect("starts");
        let pending = grinder
            .enqueue(SimpleTask::new("pending", 0.0))
            .expect("accepted");
        t.form(
            "stop_async(true) (cancels the pending)",
            grinder.stop_async(true),
        )
        .await;
        assert!(matches!(pending.await, Ok(Err(WorkError::Cancelled))));
        drop(grinder);
        t.form("pool stop_async after the grinders", pool.stop_async())
            .await;
        t.form("drop(pool) after stop_async", async { drop(pool) })
            .await;
        t
    });
    assert_never_late(&late);
}

/// The same forms on a second, unrelated executor: `futures::executor`.
#[test]
fn the_async_forms_run_on_futures_executor_too() {
    let _watchdog = watchdog("the_async_forms_run_on_futures_executor_too");
    let _one = one_at_a_time();
    futures_executor::block_on(async {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .workers(2)
            .spawn_async()
            .await
            .expect("spawn");
        w.process_task(SimpleTask::new("one", 0.1))
            .expect("accepted");
        w.process_task(SimpleTask::new("hung", LONG))
            .expect("accepted");
        let records = w
            .collect_tasks_timeout_async(Duration::from_millis(500))
            .await
            .expect("collect");
        assert!(records[0].outcome.is_completed());
        assert!(matches!(records[1].outcome, Outcome::Crashed(_)));

        let pool = Arc::new(
            LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
                .max_executors(1)
                .build()
                .expect("valid settings"),
        );
        pool.start_async().await.expect("starts");
        let lease = pool
            .acquire_async(Duration::from_secs(30), "futures")
            .await
            .expect("leased");
        let outcome = lease
            .submit(SimpleTask::new("leased", 0.0))
            .expect("accepted")
            .await;
        assert_eq!(
            outcome,
            Ok(Outcome::Completed("leased solved after 0".into()))
        );
        drop(lease);
        let grinder = WorkGrinder::builder(pool.clone())
            .max_wait_seconds(0.01)
            .build()
            .expect("valid settings");
        grinder.start().expect("starts");
        assert_eq!(
            grinder
                .submit(SimpleTask::new("ground", 0.0))
                .await
                .expect("completed"),
            "ground solved after 0"
        );
        grinder.stop_async(false).await;
        pool.stop_async().await;
        assert!(pool.stats().stopped);
    });
    assert!(child_pids().is_empty(), "every worker was reaped");
}
