//! Huge durations everywhere a duration is taken (issue 8, "Faults it must
//! survive"): `Duration::MAX` and `u64::MAX` seconds for the task timeout, a
//! per-task limit, the grace period, the kill grace, the handshake timeout
//! and the collect timeout. `Instant + Duration` would overflow and panic;
//! the engine must treat such a limit as "none" instead: no panic, no lost
//! outcome, and a drop that still returns (the worker exits by itself).

mod common;

use std::time::{Duration, Instant};

use common::{library_panics, test_worker};
use worker_facade::simple::SimpleTask;
use worker_facade::{FacadeBuilder, Outcome, WorkingProcessFacade};

const HUGE: [Duration; 2] = [Duration::MAX, Duration::from_secs(u64::MAX)];

/// Fails instead of hanging, and fails if a thread of the library panicked.
fn within<R: Send + 'static>(body: impl FnOnce() -> R + Send + 'static) -> R {
    common::count_library_panics();
    let result = common::within(Duration::from_secs(30), body);
    assert_eq!(library_panics(), 0, "a thread of the library panicked");
    result
}

/// A facade with every duration set to `huge`.
fn huge_everywhere(huge: Duration) -> FacadeBuilder<SimpleTask> {
    WorkingProcessFacade::<SimpleTask>::builder(test_worker().handshake_timeout(huge))
        .task_timeout(huge)
        .grace_period(huge)
        .kill_grace(huge)
}

fn t(name: &str) -> SimpleTask {
    SimpleTask::new(name, 0.0)
}

#[test]
fn huge_durations_everywhere_lose_no_outcome() {
    within(|| {
        for huge in HUGE {
            let w = huge_everywhere(huge).spawn().expect("spawn");
            let handles: Vec<_> = (0..5)
                .map(|i| {
                    w.submit_with_time_limit(t(&format!("h{i}")), huge)
                        .expect("accepted")
                })
                .collect();
            for i in 0..5 {
                w.process_task(t(&format!("p{i}"))).expect("accepted");
            }
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(
                    h.wait_timeout(huge),
                    Ok(Outcome::Completed(format!("h{i} solved after 0")))
                );
            }
            let records = w.collect_tasks_timeout(huge).expect("collect");
            assert_eq!(records.len(), 5, "the handles took theirs");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(
                    r.outcome,
                    Outcome::Completed(format!("p{i} solved after 0"))
                );
            }
            let s = w.stats();
            assert_eq!((s.completed, s.in_flight), (10, 0), "{s:?}");
        }
    });
}

/// A crash under huge limits: the replacement's handshake deadline and the
/// restart bookkeeping must not overflow either.
#[test]
fn crash_and_restart_under_huge_durations() {
    within(|| {
        for huge in HUGE {
            let w = huge_everywhere(huge).spawn().expect("spawn");
            for name in ["a", "crash", "b"] {
                w.process_task(t(name)).expect("accepted");
            }
            let records = w.collect_tasks_timeout(huge).expect("collect");
            assert!(
                records[0].outcome.is_completed(),
                "{:?}",
                records[0].outcome
            );
            assert!(
                matches!(records[1].outcome, Outcome::Crashed(_)),
                "{:?}",
                records[1].outcome
            );
            assert_eq!(
                records[2].outcome,
                Outcome::Completed("b solved after 0".into())
            );
            assert_eq!(w.stats().restarts, 1);
        }
    });
}

/// A short per-task limit under a huge default and a huge kill grace: the
/// task times out; the worker (which dies of SIGTERM) is replaced.
#[test]
fn short_per_task_limit_under_huge_defaults_still_times_out() {
    within(|| {
        for huge in HUGE {
            let w = huge_everywhere(huge).spawn().expect("spawn");
            let limit = Duration::from_millis(200);
            let slow = w
                .submit_with_time_limit(SimpleTask::new("slow", 3600.0), limit)
                .expect("accepted");
            let next = w.submit(t("next")).expect("accepted");
            assert_eq!(slow.wait(), Ok(Outcome::TimedOut(limit)));
            assert_eq!(
                next.wait(),
                Ok(Outcome::Completed("next solved after 0".into()))
            );
            w.collect_tasks_timeout(huge).expect("collect");
        }
    });
}

/// Dropping a facade with a huge grace period: the worker is asked to stop,
/// exits by itself, and the drop returns.
#[test]
fn drop_with_huge_durations_returns_once_the_worker_exits() {
    within(|| {
        for huge in HUGE {
            let w = huge_everywhere(huge).spawn().expect("spawn");
            let pid = w.worker_pid().expect("running");
            let h = w.submit(SimpleTask::new("short", 0.2)).expect("accepted");
            w.process_task(t("queued")).expect("accepted");
            let started = Instant::now();
            drop(w);
            let took = started.elapsed();
            assert!(took < Duration::from_secs(10), "drop took {took:?}");
            assert!(!common::process_exists(pid), "worker {pid} reaped");
            // The running task finished within the (endless) grace period.
            let outcome = h.wait_timeout(Duration::from_secs(1));
            assert!(
                matches!(outcome, Ok(Outcome::Completed(_)) | Ok(Outcome::NotRun(_))),
                "{outcome:?}"
            );
        }
    });
}

/// `collect_tasks_timeout(Duration::MAX)` with a worker that is slow but
/// finishes: it is no deadline, the task completes.
#[test]
fn collect_with_a_huge_timeout_waits_for_the_work() {
    within(|| {
        for huge in HUGE {
            let w = WorkingProcessFacade::<SimpleTask>::spawn(test_worker()).expect("spawn");
            w.process_task(SimpleTask::new("slow", 0.3))
                .expect("accepted");
            let records = w.collect_tasks_timeout(huge).expect("collect");
            assert_eq!(
                records[0].outcome,
                Outcome::Completed("slow solved after 0.3".into())
            );
        }
    });
}
