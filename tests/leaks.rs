//! Nothing leaks: after 200 facades are created, used, crashed, killed and
//! dropped, this process has the threads, descriptors, children and files
//! it had before (the facades make no file at all: the worker's socket is a
//! socket pair). Its own file (its own process), since it counts
//! process-wide resources.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{child_pids, signal, stock_worker, within};
use nix::sys::signal::Signal;
use worker_facade::simple::SimpleTask;
use worker_facade::{RestartPolicy, WorkingProcessFacade};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The entries of a directory.
fn entries(base: &Path) -> BTreeSet<String> {
    std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn use_one(i: usize, base: &Path) {
    let builder = WorkingProcessFacade::<SimpleTask>::builder(stock_worker().env("TMPDIR", base))
        .grace_period(Duration::from_millis(100));
    let builder = if i % 2 == 0 {
        builder.restart(RestartPolicy::Never)
    } else {
        builder
    };
    let w = builder.spawn().expect("spawn");
    let h = w.submit(SimpleTask::new("a", 0.0)).expect("accepted");
    match i % 4 {
        0 => {
            w.process_task(SimpleTask::new("crash", 0.0))
                .expect("accepted");
            w.process_task(SimpleTask::new("b", 0.0)).expect("accepted");
            assert_eq!(w.collect_tasks().expect("collect").len(), 2);
        }
        1 => {
            assert!(h.wait().expect("outcome").is_completed());
            signal(w.worker_pid().expect("running"), Signal::SIGKILL);
            w.process_task(SimpleTask::new("b", 0.0)).expect("accepted");
            w.collect_tasks().expect("collect");
            return;
        }
        2 => {
            w.process_task(SimpleTask::new("long", 30.0))
                .expect("accepted");
            // dropped uncollected, mid-task
        }
        _ => {
            w.collect_tasks().expect("collect");
        }
    }
    drop(h);
}

#[test]
fn two_hundred_facades_leave_nothing_behind() {
    within(Duration::from_secs(120), || {
        // Warm up once: the first use may initialise process-wide state.
        // The workers' temporary directory is one of this test's own, so
        // that other processes' files cannot be mistaken for leaks.
        let base = std::env::temp_dir().join(format!("wf-leaks-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("temporary directory");
        let ours = |name: &String| name.starts_with("wf-") && !name.starts_with("wf-leaks-");
        let temp_before: BTreeSet<String> = entries(&std::env::temp_dir())
            .into_iter()
            .filter(ours)
            .collect();
        use_one(3, &base);
        let threads = common::settled_threads();
        let fds = count("/proc/self/fd");
        let children = child_pids();
        for i in 0..200 {
            use_one(i, &base);
        }
        // The watchdog thread of `within` is the same one throughout.
        assert_eq!(common::settled_threads(), threads, "threads");
        assert_eq!(count("/proc/self/fd"), fds, "descriptors");
        assert_eq!(child_pids(), children, "child processes (zombies included)");
        let left = entries(&base);
        assert!(left.is_empty(), "files left: {left:?}");
        let temp_after: BTreeSet<String> = entries(&std::env::temp_dir())
            .into_iter()
            .filter(ours)
            .collect();
        assert_eq!(
            temp_after, temp_before,
            "files of ours in the temporary directory"
        );
        std::fs::remove_dir(&base).expect("empty, so removable");
    });
}
