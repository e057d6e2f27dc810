//! Results as they complete, and map (issue 11, items 1 and 2).
//!
//! - `completed()` hands each record over as its task finishes, while work
//!   continues, and `collect_tasks` returns exactly the records no receiver
//!   took: each record once, none lost.
//! - `map` yields outcomes in input order with bounded look-ahead (an
//!   endless input works), `map_unordered` as they finish; both for the
//!   facade and the grinder; dropping a facade map cancels what it has in
//!   flight.
//!
//! The workers are the stock `facade-worker`: a task sleeps for its
//! `estimated_processing_time`, and one named `CRASH` aborts its worker.

mod common;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{
    CancelReason, ItemError, LeasedExecutorManager, NotRunReason, Outcome, WorkError, WorkGrinder,
    WorkingProcessFacade,
};

fn task(name: &str, seconds: f64) -> SimpleTask {
    SimpleTask::new(name, seconds)
}

fn facade(workers: usize) -> WorkingProcessFacade<SimpleTask> {
    WorkingProcessFacade::builder(common::stock_worker())
        .workers(workers)
        .spawn()
        .expect("spawn")
}

#[test]
fn completed_hands_each_record_over_while_a_slow_task_still_runs() {
    let _dog = common::watchdog("completed_hands_each_record_over");
    let w = facade(2);
    let done = w.completed();
    let slow = w.process_task(task("slow", 2.0)).expect("accepted");
    let started = Instant::now();
    // Once its task has run a while, nothing more is sent ahead to the
    // slow one's worker: the fast tasks all go to the other.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..10 {
        w.process_task(task(&format!("fast{i}"), 0.0))
            .expect("accepted");
    }
    let mut early = Vec::new();
    for _ in 0..10 {
        let record = done
            .recv_timeout(Duration::from_secs(20))
            .expect("a record");
        early.push(record);
    }
    // All ten fast records arrived while the slow task was still running.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        early
            .iter()
            .all(|r| r.id != slow && r.outcome.is_completed())
    );
    assert!(done.try_recv().is_none(), "the slow task is not done yet");
    // collect_tasks returns what no receiver took: only the slow one.
    let rest = w.collect_tasks().expect("collect");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, slow);
    assert_eq!(
        rest[0].outcome,
        Outcome::Completed("slow solved after 2".into())
    );
    assert!(done.recv().is_none(), "the receiver ends with the facade");
    assert!(done.is_ended());
}

#[test]
fn records_are_split_between_receiver_and_collect_each_exactly_once() {
    let _dog = common::watchdog("records_are_split");
    let w = facade(2);
    // Some finish before completed() is called: they are handed over too.
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        ids.insert(w.process_task(task(&format!("t{i}"), 0.0)).expect("ok"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let done = w.completed();
    for i in 20..40 {
        ids.insert(w.process_task(task(&format!("t{i}"), 0.0)).expect("ok"));
    }
    // A task with a live handle goes to its handle, never to either.
    let handled = w.submit(task("handled", 0.0)).expect("ok");
    let taken: Vec<_> = done.iter().take(25).collect();
    let rest = w.collect_tasks().expect("collect");
    let mut seen: Vec<_> = taken.iter().chain(&rest).map(|r| r.id).collect();
    seen.sort();
    assert_eq!(seen, ids.iter().copied().collect::<Vec<_>>(), "each once");
    assert_eq!(rest.len(), 15);
    assert!(rest.windows(2).all(|p| p[0].id < p[1].id), "in order");
    assert!(handled.wait().expect("outcome").is_completed());
}

#[test]
fn dropped_receivers_lose_nothing() {
    let w = facade(1);
    drop(w.completed());
    for i in 0..5 {
        w.process_task(task(&format!("t{i}"), 0.0)).expect("ok");
    }
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.outcome.is_completed()));
}

#[test]
fn completed_is_a_stream_on_a_current_thread_runtime() {
    let w = facade(1);
    let mut stream = w.completed().stream();
    for i in 0..3 {
        w.process_task(task(&format!("t{i}"), 0.0)).expect("ok");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let names = rt.block_on(async {
        let mut names = Vec::new();
        while names.len() < 3 {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
            });
            let record = tokio::time::timeout(Duration::from_secs(20), next)
                .await
                .expect("in time")
                .expect("a record");
            names.push(record.task.id);
        }
        names
    });
    assert_eq!(names, ["t0", "t1", "t2"]);
}

#[test]
fn map_yields_in_input_order_with_bounded_look_ahead_over_an_endless_input() {
    let _dog = common::watchdog("map_yields_in_input_order");
    let w = facade(2);
    // Endless: only what is taken (plus the look-ahead) is ever submitted.
    let endless = (0u64..).map(|i| task(&i.to_string(), if i % 7 == 0 { 0.02 } else { 0.0 }));
    let mut most_in_flight = 0;
    let mut outputs = Vec::new();
    for outcome in w.map(endless).ahead(8).take(200) {
        most_in_flight = most_in_flight.max(w.stats().in_flight);
        outputs.push(outcome.expect("accepted").completed().expect("completed"));
    }
    let want: Vec<String> = (0..200)
        .map(|i| format!("{i} solved after {}", if i % 7 == 0 { "0.02" } else { "0" }))
        .collect();
    assert_eq!(outputs, want);
    assert!(most_in_flight <= 8, "{most_in_flight} in flight");
    let s = w.stats();
    assert!(s.submitted <= 208, "submitted {}", s.submitted);
}

#[test]
fn map_puts_a_crash_in_its_place_and_runs_the_rest() {
    let w = facade(1);
    let tasks = ["a", "CRASH", "b", "c"].map(|n| task(n, 0.0));
    let outcomes: Vec<_> = w.map(tasks).map(|r| r.expect("accepted")).collect();
    assert_eq!(outcomes[0], Outcome::Completed("a solved after 0".into()));
    assert!(
        matches!(outcomes[1], Outcome::Crashed(_)),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2], Outcome::Completed("b solved after 0".into()));
    assert_eq!(outcomes[3], Outcome::Completed("c solved after 0".into()));
    assert!(w.collect_tasks().expect("collect").is_empty());
}

#[test]
fn map_unordered_yields_what_finishes_first_with_its_index() {
    let _dog = common::watchdog("map_unordered_yields_what_finishes_first");
    let w = facade(2);
    let tasks = (0..6).map(|i| task(&i.to_string(), if i == 0 { 1.0 } else { 0.0 }));
    // Two in flight at a time: the slow one holds one worker, and every
    // other task passes it on the other.
    let got: Vec<(usize, Outcome<String>)> = w
        .map_unordered(tasks)
        .ahead(2)
        .map(|(i, r)| (i, r.expect("accepted")))
        .collect();
    assert_eq!(got.len(), 6);
    assert_eq!(
        got.last().map(|g| g.0),
        Some(0),
        "the slow one last: {got:?}"
    );
    let indices: BTreeSet<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(indices, (0..6).collect());
    for (i, outcome) in &got {
        let secs = if *i == 0 { "1" } else { "0" };
        assert_eq!(
            *outcome,
            Outcome::Completed(format!("{i} solved after {secs}"))
        );
    }
}

#[test]
fn dropping_a_map_cancels_the_tasks_it_has_in_flight() {
    let _dog = common::watchdog("dropping_a_map_cancels");
    let w = facade(1);
    let mut map = w.map((0..100).map(|i| task(&i.to_string(), 0.3))).ahead(4);
    assert!(map.next().expect("one").expect("accepted").is_completed());
    drop(map);
    let records = w.collect_tasks().expect("collect");
    // Four were submitted, the first taken, three in flight at the drop;
    // none of the other 96 inputs was ever submitted. The three have their
    // records here, except one whose outcome reached the map before the
    // drop (on a slow machine): the map discards what it had not yielded.
    assert_eq!(w.stats().submitted, 4);
    assert!((2..=3).contains(&records.len()), "{records:?}");
    let cancelled = records
        .iter()
        .filter(|r| r.outcome == Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)))
        .count();
    assert!(cancelled >= 1, "{records:?}");
}

fn grinder() -> (
    Arc<LeasedExecutorManager<SimpleTask>>,
    WorkGrinder<SimpleTask>,
) {
    let pool = LeasedExecutorManager::<SimpleTask>::builder(common::stock_worker())
        .min_executors(1)
        .max_executors(2)
        .build()
        .expect("pool settings");
    pool.start().expect("pool starts");
    let pool = Arc::new(pool);
    let grinder = WorkGrinder::builder(pool.clone())
        .max_wait(Duration::from_millis(5))
        .build()
        .expect("grinder settings");
    grinder.start().expect("grinder starts");
    (pool, grinder)
}

#[test]
fn dropping_a_grinder_map_removes_the_items_not_yet_on_a_worker() {
    let _dog = common::watchdog("dropping_a_grinder_map");
    let pool = LeasedExecutorManager::<SimpleTask>::builder(common::stock_worker())
        .max_executors(1)
        .build()
        .expect("pool settings");
    pool.start().expect("pool starts");
    let pool = Arc::new(pool);
    // Batches of three, never by age: items 0 to 2 go to a worker together,
    // item 3 waits for two more that never come.
    let g = WorkGrinder::builder(pool.clone())
        .max_wait_seconds(3600.0)
        .batch_size_threshold(3)
        .build()
        .expect("grinder settings");
    g.start().expect("grinder starts");
    let mut map = g.map((0..100).map(|i| task(&i.to_string(), 0.0))).ahead(4);
    assert_eq!(
        map.next().expect("one").expect("completed"),
        "0 solved after 0"
    );
    drop(map);
    // Dropping a handle lets its item run; the map cancels explicitly, so
    // item 3 is removed, and the drain below finds nothing pending.
    g.stop(false);
    let stats = g.stats();
    assert_eq!(
        (stats.completed, stats.removed, stats.pending),
        (3, 1, 0),
        "{stats:?}"
    );
}

#[test]
fn grinder_map_yields_in_order_and_unordered_yields_every_index() {
    let _dog = common::watchdog("grinder_map");
    let (_pool, g) = grinder();
    let results: Vec<_> = g
        .map((0..300).map(|i| task(&i.to_string(), 0.0)))
        .ahead(50)
        .collect();
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().ok(), Some(&format!("{i} solved after 0")));
    }
    let tasks = ["x", "CRASH", "y"].map(|n| task(n, 0.0));
    let mut got: Vec<_> = g.map_unordered(tasks).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].1.as_ref().ok(),
        Some(&"x solved after 0".to_string())
    );
    assert!(
        matches!(&got[1].1, Err(ItemError::Work(WorkError::Crashed(_)))),
        "{:?}",
        got[1].1
    );
    assert_eq!(
        got[2].1.as_ref().ok(),
        Some(&"y solved after 0".to_string())
    );
    g.stop(false);
}
