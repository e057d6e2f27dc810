//! Shared by the bench binaries: the task types, the child-process entry
//! points (facade worker, raw-socket child, memory probe), the raw baselines,
//! the library figures and small statistics helpers.
//!
//! Every bench binary is also its own worker and its own raw child: the first
//! line of its `main` is [`dispatch_child`], which serves tasks (through
//! `worker_facade::worker::run_if_worker`) or plays the raw peer and exits
//! when the process was started as one, and returns at once otherwise.

pub(crate) mod grinder;
pub(crate) mod library;
pub(crate) mod raw;
pub(crate) mod stats;
pub(crate) mod tasks;

use worker_facade::worker;

use tasks::{Blob, BlobSeq, Spin, Tiny};

/// Which handler a re-executed worker serves (set with `WorkerCommand::env`).
pub(crate) const KIND_ENV: &str = "WF_BENCH_KIND";
/// Set on a raw-socket child: which side of which baseline to play.
pub(crate) const RAW_ENV: &str = "WF_BENCH_RAW";
/// Set on a probe child: a measurement that needs a fresh process (RSS).
pub(crate) const PROBE_ENV: &str = "WF_BENCH_PROBE";

/// When this process is a facade worker, a raw child or a probe, does that
/// job and exits; otherwise returns at once. Call it first in `main`.
///
/// A facade worker is recognised by `run_if_worker` itself (the marker
/// `WORKER_FACADE_WORKER`); `WorkerCommand::current_exe` forwards none of
/// cargo's arguments (`--bench`), so the worker never reaches criterion's or
/// the report's argument parsing.
pub(crate) fn dispatch_child() {
    if worker::is_worker() {
        match std::env::var(KIND_ENV).as_deref() {
            Ok("blob") => worker::run_if_worker(|b: Blob| Ok::<_, String>(b.data.len() as u64)),
            Ok("blobseq") => {
                worker::run_if_worker(|b: BlobSeq| Ok::<_, String>(b.data.len() as u64))
            }
            Ok("spin") => worker::run_if_worker(|t: Spin| Ok::<_, String>(tasks::solve_spin(&t))),
            _ => worker::run_if_worker(|t: Tiny| Ok::<_, String>(tasks::solve_tiny(&t))),
        }
    }
    if let Ok(mode) = std::env::var(RAW_ENV) {
        raw::child_main(&mode);
        exit(0);
    }
    if let Ok(probe) = std::env::var(PROBE_ENV) {
        library::probe_main(&probe);
        exit(0);
    }
}

/// Ends a child process once its job is done: it must never go on into the
/// parent's `main` (criterion, the report).
pub(crate) fn exit(code: i32) -> ! {
    #[allow(clippy::exit)]
    std::process::exit(code)
}
