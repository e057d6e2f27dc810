//! Every event and span the library emits through `tracing`, in one place,
//! so that the rest of the code says what happened in one line and the
//! catalogue below is what a user can filter on. Without the `tracing`
//! feature each function is empty and [`Span`] is a unit.
//!
//! Events have a stable name (`Metadata::name`), a target per layer
//! (`worker_facade::facade`, `::pool`, `::grinder`, `::output`) and fields,
//! never prose alone. Spans: `facade{id, program, workers}`,
//! `pool{id, min_executors, max_executors}`, `grinder{id, owner_prefix}`.
//! A span's parent is the span current where the object was made, so a
//! pool's executors' facades sit inside the pool's span, and a user's own
//! span around `spawn`/`build` names the object.

#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::console::OutputStream;
use crate::task::CrashInfo;

#[cfg(feature = "tracing")]
use tracing::{Level, event};

/// A number for each facade, pool and grinder, unique in the process, so
/// that two of them can be told apart in the spans.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// A facade's, pool's or grinder's span (a unit without the feature).
#[derive(Debug, Clone)]
pub(crate) struct Span {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl Span {
    /// Runs `f` inside the span (a library thread's whole life).
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(f)
        }
        #[cfg(not(feature = "tracing"))]
        {
            f()
        }
    }
}

pub(crate) fn facade_span(id: u64, program: &Path, workers: usize) -> Span {
    Span {
        #[cfg(feature = "tracing")]
        span: tracing::info_span!(
            target: "worker_facade::facade",
            "facade",
            id,
            program = %program.display(),
            workers
        ),
    }
}

pub(crate) fn pool_span(id: u64, min: usize, max: usize) -> Span {
    Span {
        #[cfg(feature = "tracing")]
        span: tracing::info_span!(
            target: "worker_facade::pool",
            "pool",
            id,
            min_executors = min,
            max_executors = max
        ),
    }
}

pub(crate) fn grinder_span(id: u64, owner_prefix: &str) -> Span {
    Span {
        #[cfg(feature = "tracing")]
        span: tracing::info_span!(target: "worker_facade::grinder", "grinder", id, owner_prefix),
    }
}

// ---- the facade's engine ------------------------------------------------

/// A worker process was started (its handshake follows).
pub(crate) fn worker_spawned(slot: usize, pid: u32, program: &Path) {
    #[cfg(feature = "tracing")]
    event!(name: "worker_spawned", target: "worker_facade::facade", Level::INFO,
        slot, pid, program = %program.display(), "worker spawned");
}

/// The worker just spawned replaces one that died (`restarts`: the
/// facade's count so far).
pub(crate) fn worker_restarted(slot: usize, pid: u32, restarts: u64) {
    #[cfg(feature = "tracing")]
    event!(name: "worker_restarted", target: "worker_facade::facade", Level::INFO,
        slot, pid, restarts, "worker restarted");
}

/// The worker just spawned replaces one recycled after
/// `max_tasks_per_worker` or `max_worker_rss`.
pub(crate) fn worker_recycled(slot: usize, pid: u32, recycles: u64) {
    #[cfg(feature = "tracing")]
    event!(name: "worker_recycled", target: "worker_facade::facade", Level::INFO,
        slot, pid, recycles, "worker recycled");
}

/// A worker failed its handshake (timed out, another protocol, a bad or
/// refused hello, exited first). With a socket pair per worker no other
/// process can connect, so this is also where a refused peer would show.
pub(crate) fn handshake_failed(slot: usize, pid: u32, error: &dyn std::error::Error) {
    #[cfg(feature = "tracing")]
    event!(name: "handshake_failed", target: "worker_facade::facade", Level::WARN,
        slot, pid, error = %error, "worker handshake failed");
}

/// A worker died without being asked to (a signal, an exit, or a fault the
/// parent ended it for: a broken protocol, a hang-up, its memory limit).
/// `task`: the task it was running, if any; `requeued`: the tasks it had
/// not started, handed to the next worker.
pub(crate) fn worker_crashed(slot: usize, crash: &CrashInfo, task: Option<u64>, requeued: usize) {
    #[cfg(feature = "tracing")]
    {
        let exit = &crash.exit;
        let reason = crash.reason.as_ref().map(tracing::field::display);
        let signal_name = exit
            .signal
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .map(|s| s.as_str());
        event!(name: "worker_crashed", target: "worker_facade::facade", Level::WARN,
            slot,
            pid = exit.pid,
            signal = exit.signal,
            signal_name,
            exit_code = exit.code,
            core_dumped = exit.core_dumped,
            task,
            requeued,
            reason,
            stderr_last = crash.stderr_tail.last().map(String::as_str),
            "worker crashed");
    }
}

/// The parent ended a worker for a reason that is not the worker's fault
/// (`terminate`, a revoked lease, a collect deadline, the drop's grace).
pub(crate) fn worker_killed(slot: usize, crash: &CrashInfo, task: Option<u64>) {
    #[cfg(feature = "tracing")]
    {
        let reason = crash.reason.as_ref().map(tracing::field::display);
        event!(name: "worker_killed", target: "worker_facade::facade", Level::INFO,
            slot, pid = crash.exit.pid, task, reason, "worker killed");
    }
}

/// A task ran past its limit: its worker gets SIGTERM, then SIGKILL after
/// `kill_grace`, and is replaced.
pub(crate) fn task_timed_out(slot: usize, pid: u32, task: u64, limit: Duration) {
    #[cfg(feature = "tracing")]
    event!(name: "task_timed_out", target: "worker_facade::facade", Level::WARN,
        slot, pid, task, limit_ms = limit.as_millis() as u64, "task timed out; killing its worker");
}

/// A worker place ran out of its restart budget (`reason` says which) and
/// is retired; `gave_up` says whether that was the facade's last place, as
/// [`FacadeStats::gave_up`](crate::FacadeStats::gave_up) says from then on.
pub(crate) fn restart_budget_exhausted(slot: usize, reason: &dyn std::fmt::Display, gave_up: bool) {
    #[cfg(feature = "tracing")]
    event!(name: "restart_budget_exhausted", target: "worker_facade::facade", Level::ERROR,
        slot, reason = %reason, gave_up, "restart budget exhausted");
}

/// Every worker place is retired: no task runs on this facade again
/// ([`FacadeStats::gave_up`](crate::FacadeStats::gave_up) is set).
pub(crate) fn facade_gave_up(reason: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    event!(name: "facade_gave_up", target: "worker_facade::facade", Level::ERROR,
        reason = %reason, "no worker will run again");
}

/// A line a worker printed, with [`Output::Tracing`](crate::Output::Tracing).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn output_line(pid: u32, task: Option<u64>, stream: OutputStream, line: &str) {
    #[cfg(feature = "tracing")]
    {
        let stream = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        event!(name: "worker_output", target: "worker_facade::output", Level::INFO,
            pid, task, stream, line);
    }
}

// ---- the pool ------------------------------------------------------------

/// A lease was granted.
pub(crate) fn lease_granted(lease: u64, owner: &str, pid: Option<u32>, duration: Duration) {
    #[cfg(feature = "tracing")]
    event!(name: "lease_granted", target: "worker_facade::pool", Level::DEBUG,
        lease, owner, pid, duration_ms = duration.as_millis() as u64, "lease granted");
}

/// A lease's holder started its term again (a grinder's next batch).
pub(crate) fn lease_renewed(lease: u64, owner: &str, pid: Option<u32>, duration: Duration) {
    #[cfg(feature = "tracing")]
    event!(name: "lease_renewed", target: "worker_facade::pool", Level::DEBUG,
        lease, owner, pid, duration_ms = duration.as_millis() as u64, "lease renewed");
}

/// A lease passed its hard expiry: revoked, its worker killed.
pub(crate) fn lease_expired(lease: u64, owner: &str, pid: Option<u32>) {
    #[cfg(feature = "tracing")]
    event!(name: "lease_expired", target: "worker_facade::pool", Level::WARN,
        lease, owner, pid, "lease expired; revoked and its worker killed");
}

/// The pool was stopped while a lease was held: revoked, its worker killed.
pub(crate) fn lease_revoked(lease: u64, owner: &str, pid: Option<u32>) {
    #[cfg(feature = "tracing")]
    event!(name: "lease_revoked", target: "worker_facade::pool", Level::WARN,
        lease, owner, pid, "lease revoked by stop");
}

/// An executor was taken out of service for good (`facade`: its span's id).
pub(crate) fn executor_retired(facade: u64, why: &'static str) {
    #[cfg(feature = "tracing")]
    event!(name: "executor_retired", target: "worker_facade::pool", Level::INFO,
        facade, why, "executor retired");
}

/// A new executor is up; `replacement`: it replaces a retired one.
pub(crate) fn executor_started(facade: u64, pid: Option<u32>, replacement: bool) {
    #[cfg(feature = "tracing")]
    if replacement {
        event!(name: "executor_replaced", target: "worker_facade::pool", Level::INFO,
            facade, pid, "executor replaced");
    } else {
        event!(name: "executor_started", target: "worker_facade::pool", Level::DEBUG,
            facade, pid, "executor started");
    }
}

/// Starting an executor failed (retried with a back-off).
pub(crate) fn executor_spawn_failed(error: &dyn std::error::Error) {
    #[cfg(feature = "tracing")]
    event!(name: "executor_spawn_failed", target: "worker_facade::pool", Level::WARN,
        error = %error, "executor could not be started");
}

// ---- the grinder ---------------------------------------------------------

/// A batch left: `size` items, the oldest of which waited `waited`.
pub(crate) fn batch_dispatched(batch: u64, size: usize, waited: Duration) {
    #[cfg(feature = "tracing")]
    event!(name: "batch_dispatched", target: "worker_facade::grinder", Level::DEBUG,
        batch, size, waited_ms = waited.as_secs_f64() * 1e3, "batch dispatched");
}
