//! The facade's core contract: the seed's usage, IDs matched to outcomes,
//! never blocking, collecting once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{stock_worker, within};
use worker_facade::simple::SimpleTask;
use worker_facade::{CollectError, Outcome, SubmitError, TaskId, WorkingProcessFacade};

#[test]
fn seed_usage_returns_results_matched_to_tasks() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let one = w
            .process_task(SimpleTask::new("one", 0.05))
            .expect("accepted");
        let two = w
            .process_task(SimpleTask::new("two", 0.1))
            .expect("accepted");
        assert_eq!((one, two), (TaskId::from_raw(0), TaskId::from_raw(1)));
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].id, one);
        assert_eq!(records[0].task, SimpleTask::new("one", 0.05));
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("one solved after 0.05".to_string())
        );
        assert_eq!(records[1].id, two);
        assert_eq!(
            records[1].outcome,
            Outcome::Completed("two solved after 0.1".to_string())
        );
    });
}

/// CI runs the suite once per codec and names the one it asked for in
/// `WORKER_FACADE_EXPECT_CODEC`: the build must really use it, in the parent
/// and in the stock worker binary (a worker of the other codec would be
/// refused at the handshake, `hostile::hello_from_a_worker_of_the_other_codec_is_a_codec_mismatch`).
#[test]
fn the_parent_and_the_stock_worker_use_the_codec_ci_asked_for() {
    if let Ok(expected) = std::env::var("WORKER_FACADE_EXPECT_CODEC") {
        assert_eq!(worker_facade::codec::NAME, expected);
    }
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        w.process_task(SimpleTask::new("codec", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(
            records[0].outcome,
            Outcome::Completed("codec solved after 0".to_string())
        );
    });
}

#[test]
fn hundred_thousand_tiny_tasks_all_matched() {
    within(Duration::from_secs(60), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let n = 100_000u64;
        for i in 0..n {
            let id = w
                .process_task(SimpleTask::new(format!("t{i}"), 0.0))
                .expect("accepted");
            assert_eq!(id.as_u64(), i);
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len() as u64, n);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.id.as_u64(), i as u64);
            assert_eq!(r.task.id, format!("t{i}"));
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("t{i} solved after 0"))
            );
        }
        let stats = w.stats();
        assert_eq!(stats.submitted, n);
        assert_eq!(stats.completed, n);
        assert_eq!(stats.in_flight, 0);
    });
}

#[test]
fn collect_twice_is_an_error_and_later_tasks_are_refused() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        w.process_task(SimpleTask::new("a", 0.0)).expect("accepted");
        assert_eq!(w.collect_tasks().expect("first collect").len(), 1);
        assert!(matches!(
            w.collect_tasks(),
            Err(CollectError::AlreadyCollected)
        ));
        assert!(w.is_closed());
        match w.process_task(SimpleTask::new("late", 0.0)) {
            Err(SubmitError::Closed(task)) => assert_eq!(task.id, "late"),
            other => panic!("expected Closed with the task back, got {other:?}"),
        }
    });
}

#[test]
fn collect_with_no_tasks_returns_empty() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        assert!(w.collect_tasks().expect("collect").is_empty());
    });
}

#[test]
fn eight_threads_submitting_each_task_answered_once() {
    within(Duration::from_secs(60), || {
        let w = Arc::new(WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn"));
        let per_thread = 2_000;
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            w.process_task(SimpleTask::new(format!("{t}-{i}"), 0.0))
                                .expect("accepted")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<TaskId> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("submitter"))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 8 * per_thread, "IDs are unique");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 8 * per_thread);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.id.as_u64(), i as u64, "submission order");
            assert_eq!(
                r.outcome,
                Outcome::Completed(format!("{} solved after 0", r.task.id))
            );
        }
    });
}

#[test]
fn submit_handle_delivers_while_work_continues() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let first = w.submit(SimpleTask::new("first", 0.0)).expect("accepted");
        w.process_task(SimpleTask::new("slow", 0.3))
            .expect("accepted");
        // The first outcome arrives before the slow task ends or anything is
        // collected.
        assert_eq!(
            first.wait().expect("outcome"),
            Outcome::Completed("first solved after 0".into())
        );
        let dropped = w
            .submit(SimpleTask::new("dropped-handle", 0.0))
            .expect("accepted");
        drop(dropped);
        let records = w.collect_tasks().expect("collect");
        // The handle's task went to its handle; the dropped handle's outcome
        // comes back in the records instead of being lost.
        let names: Vec<_> = records.iter().map(|r| r.task.id.as_str()).collect();
        assert_eq!(names, ["slow", "dropped-handle"]);
        assert!(records.iter().all(|r| r.outcome.is_completed()));
    });
}

#[test]
fn handles_are_futures_on_any_runtime() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let a = w.submit(SimpleTask::new("tokio", 0.0)).expect("accepted");
        let b = w.submit(SimpleTask::new("futures", 0.0)).expect("accepted");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let got = rt.block_on(async { a.await });
        assert_eq!(got, Ok(Outcome::Completed("tokio solved after 0".into())));
        let got = futures_executor::block_on(b.into_future_outcome());
        assert_eq!(got, Ok(Outcome::Completed("futures solved after 0".into())));
        w.collect_tasks().expect("collect");
    });
}

trait IntoFutureOutcome: std::future::IntoFuture + Sized {
    fn into_future_outcome(self) -> Self::IntoFuture {
        std::future::IntoFuture::into_future(self)
    }
}
impl<T: std::future::IntoFuture> IntoFutureOutcome for T {}

#[test]
fn handler_errors_and_panics_fail_only_their_task() {
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(common::test_worker()).expect("spawn");
        w.process_task(SimpleTask::new("fail", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("panic", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("after", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(
            records[0].outcome,
            Outcome::Failed("task fail refused".into())
        );
        match &records[1].outcome {
            Outcome::Failed(msg) => assert!(
                msg.contains("panicked") && msg.contains("handler panic for panic"),
                "{msg}"
            ),
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(
            records[2].outcome,
            Outcome::Completed("after solved after 0".into())
        );
        assert_eq!(w.stats().restarts, 0, "the worker survived");
    });
}

#[test]
fn process_task_bounded_refuses_when_the_bound_is_reached() {
    use nix::sys::signal::Signal;
    within(Duration::from_secs(30), || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .queue_bound(10)
            .spawn()
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        // A stopped worker answers nothing, so tasks stay in flight.
        common::signal(pid, Signal::SIGSTOP);
        for i in 0..10 {
            w.process_task_bounded(SimpleTask::new(format!("t{i}"), 0.0))
                .expect("below the bound");
        }
        match w.process_task_bounded(SimpleTask::new("one-too-many", 0.0)) {
            Err(SubmitError::Full(task)) => assert_eq!(task.id, "one-too-many"),
            other => panic!("expected Full, got {other:?}"),
        }
        // The old name forwards to it.
        #[allow(deprecated)]
        let old = w.try_process_task(SimpleTask::new("old-name", 0.0));
        match old {
            Err(SubmitError::Full(task)) => assert_eq!(task.id, "old-name"),
            other => panic!("expected Full, got {other:?}"),
        }
        // process_task stays unbounded.
        w.process_task(SimpleTask::new("unbounded", 0.0))
            .expect("accepted");
        common::signal(pid, Signal::SIGCONT);
        let records = w.collect_tasks().expect("collect");
        assert_eq!(records.len(), 11);
        assert!(records.iter().all(|r| r.outcome.is_completed()));
    });
}
