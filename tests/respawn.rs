//! Starting a replacement worker never holds the facade up: its handshake
//! is a phase of the engine's loop, so a collect deadline, `terminate` and
//! the other workers' tasks are served while it starts.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{NotRunReason, Outcome, WorkerCommand, WorkingProcessFacade};

/// A worker whose starts after the first take `slow` seconds before they
/// run the stock worker: a replacement with a slow handshake.
fn slow_replacements(dir: &Path, slow: f64) -> WorkerCommand {
    common::counted_starts_worker(
        dir,
        "slow-worker",
        &format!("if [ \"$n\" -gt 1 ]; then sleep {slow}; fi"),
    )
}

/// Waits until the facade's first worker crashed (its replacement then
/// starts as soon as work waits).
fn wait_for_crash(w: &WorkingProcessFacade<SimpleTask>) {
    let t0 = Instant::now();
    while w.stats().crashed == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no crash");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wf-respawn-{name}-{}", std::process::id()))
}

#[test]
fn a_collect_deadline_is_honoured_while_a_replacement_is_in_its_handshake() {
    common::within(Duration::from_secs(60), || {
        let d = dir("collect");
        let w = WorkingProcessFacade::<SimpleTask>::builder(slow_replacements(&d, 10.0))
            .spawn()
            .expect("the first start is quick");
        w.process_task(SimpleTask::new("crash", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("behind", 0.0))
            .expect("accepted");
        // Wait until the crash is in and the replacement is starting.
        wait_for_crash(&w);
        let asked = Instant::now();
        let records = w
            .collect_tasks_timeout(Duration::from_millis(100))
            .expect("collect");
        let took = asked.elapsed();
        // The replacement sleeps 10 s before its handshake: the deadline,
        // not the handshake, decided.
        assert!(took < Duration::from_secs(5), "collect took {took:?}");
        assert!(matches!(records[0].outcome, Outcome::Crashed(_)));
        assert_eq!(
            records[1].outcome,
            Outcome::NotRun(NotRunReason::DeadlineExpired)
        );
        let _ = std::fs::remove_dir_all(&d);
    });
}

#[test]
fn terminate_is_honoured_while_a_replacement_is_in_its_handshake() {
    common::within(Duration::from_secs(60), || {
        let d = dir("terminate");
        let w = WorkingProcessFacade::<SimpleTask>::builder(slow_replacements(&d, 10.0))
            .spawn()
            .expect("the first start is quick");
        w.process_task(SimpleTask::new("crash", 0.0))
            .expect("accepted");
        let behind = w.submit(SimpleTask::new("behind", 0.0)).expect("accepted");
        wait_for_crash(&w);
        let asked = Instant::now();
        w.terminate("enough");
        let outcome = behind
            .wait_timeout(Duration::from_secs(5))
            .expect("answered");
        assert!(
            matches!(outcome, Outcome::NotRun(NotRunReason::Cancelled(_))),
            "{outcome:?}"
        );
        let records = w.collect_tasks().expect("collect");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(records.len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    });
}

#[test]
fn other_workers_serve_while_one_replacement_starts() {
    common::within(Duration::from_secs(60), || {
        let d = dir("others");
        // The second start (the replacement of the crashed worker) is slow;
        // the first two starts are the two workers.
        let w = WorkingProcessFacade::<SimpleTask>::builder(slow_replacements(&d, 0.0))
            .workers(2)
            .spawn()
            .expect("spawn");
        let _ = std::fs::write(d.join("count"), "100");
        std::fs::write(
            d.join("slow-worker"),
            "#!/bin/sh\nsleep 10\nexec \"$WF_WORKER\"\n",
        )
        .expect("make later starts slow");
        w.process_task(SimpleTask::new("crash", 0.0))
            .expect("accepted");
        wait_for_crash(&w);
        let asked = Instant::now();
        let handles: Vec<_> = (0..20)
            .map(|i| {
                w.submit(SimpleTask::new(format!("t{i}"), 0.0))
                    .expect("accepted")
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(
                h.wait_timeout(Duration::from_secs(20)).expect("answered"),
                Outcome::Completed(format!("t{i} solved after 0"))
            );
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "served by the surviving worker while the other starts: {:?}",
            asked.elapsed()
        );
        w.terminate("done");
        let _ = w.collect_tasks();
        let _ = std::fs::remove_dir_all(&d);
    });
}
