//! The library's figures: each drives a `WorkingProcessFacade` whose worker
//! is this bench binary re-executed (`WorkerCommand::current_exe`).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use worker_facade::{
    Outcome, RestartPolicy, Task, WORKER_ENV, WorkerCommand, WorkingProcessFacade,
};

use super::stats::{self, percentile, settled_rss};
use super::tasks::{self, Blob, BlobSeq, Tiny};
use super::{KIND_ENV, PROBE_ENV, RAW_ENV};

/// The worker: this binary, serving `kind` (see `dispatch_child`).
pub(crate) fn command(kind: &str) -> WorkerCommand {
    WorkerCommand::current_exe()
        .env(KIND_ENV, kind)
        .env_remove(PROBE_ENV)
        .env_remove(RAW_ENV)
}

pub(crate) fn spawn_tiny() -> WorkingProcessFacade<Tiny> {
    WorkingProcessFacade::spawn(command("tiny")).expect("spawn worker")
}

fn signal(w: &WorkingProcessFacade<Tiny>, sig: Signal) {
    let pid = w.worker_pid().expect("a running worker");
    kill(Pid::from_raw(pid as i32), sig).expect("signal the worker");
}

fn check_tiny(records: &[worker_facade::TaskRecord<Tiny>], n: usize) {
    assert_eq!(records.len(), n, "one record per task");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.id.as_u64(), i as u64);
        match &r.outcome {
            Outcome::Completed(v) => assert_eq!(*v, tasks::solve_tiny(&r.task)),
            other => panic!("task {i}: {other:?}"),
        }
    }
}

/// `process_task` × n then `collect_tasks`, every outcome checked.
pub(crate) fn streaming(n: usize) -> Duration {
    let w = spawn_tiny();
    let t0 = Instant::now();
    for i in 0..n as u64 {
        w.process_task(Tiny::new(i)).expect("accepted");
    }
    let records = w.collect_tasks().expect("collect");
    let took = t0.elapsed();
    check_tiny(&records, n);
    took
}

/// Blobs of `size` bytes, `process_task` × n then `collect_tasks`. The
/// blobs are built before the clock starts (the raw side does not allocate
/// either).
pub(crate) fn streaming_blobs(n: usize, size: usize) -> Duration {
    stream_blobs(n, size, "blob", |id| Blob {
        id,
        data: vec![0xab; size],
    })
}

/// Like [`streaming_blobs`], with the bytes as a plain `Vec<u8>` (serde
/// encodes them one `u8` at a time).
pub(crate) fn streaming_blobs_seq(n: usize, size: usize) -> Duration {
    stream_blobs(n, size, "blobseq", |id| BlobSeq {
        id,
        data: vec![0xab; size],
    })
}

/// Streams `n` blobs of `size` bytes made by `make` to a worker of `kind`
/// and times the submissions and the collect; every blob must come back
/// with its size.
fn stream_blobs<T: Task<Output = u64>>(
    n: usize,
    size: usize,
    kind: &str,
    make: impl Fn(u64) -> T,
) -> Duration {
    let blobs: Vec<T> = (0..n as u64).map(make).collect();
    let w = WorkingProcessFacade::<T>::spawn(command(kind)).expect("spawn worker");
    let t0 = Instant::now();
    for b in blobs {
        w.process_task(b).expect("accepted");
    }
    let records = w.collect_tasks().expect("collect");
    let took = t0.elapsed();
    assert_eq!(records.len(), n);
    assert!(
        records
            .iter()
            .all(|r| r.outcome == Outcome::Completed(size as u64)),
        "every blob completed"
    );
    took
}

/// `submit(task)` then `handle.wait()`, one at a time, each timed.
pub(crate) fn round_trip(samples: usize) -> Vec<Duration> {
    let w = spawn_tiny();
    let mut out = Vec::with_capacity(samples);
    for i in 0..(samples + samples / 10) as u64 {
        let t0 = Instant::now();
        let h = w.submit(Tiny::new(i)).expect("accepted");
        let outcome = h.wait().expect("an outcome");
        let took = t0.elapsed();
        assert!(outcome.is_completed());
        if i >= (samples / 10) as u64 {
            out.push(took);
        }
    }
    let _ = w.collect_tasks();
    out
}

/// `WorkingProcessFacade::spawn` until it returns (worker connected and
/// handshake done). The drop is not timed.
pub(crate) fn spawn_ready() -> Duration {
    let t0 = Instant::now();
    let w = spawn_tiny();
    let took = t0.elapsed();
    drop(w);
    took
}

/// The cost of each of `n` `process_task` calls on a live worker.
pub(crate) fn call_cost_live(n: usize) -> Vec<Duration> {
    let w = spawn_tiny();
    let costs = time_calls(&w, 0, n);
    let records = w.collect_tasks().expect("collect");
    check_tiny(&records, n);
    costs
}

/// The cost of each of `n` `process_task` calls once the worker was killed
/// with SIGKILL (no restart: every task is settled `NotRun` at once).
pub(crate) fn call_cost_dead(n: usize) -> Vec<Duration> {
    let w: WorkingProcessFacade<Tiny> = WorkingProcessFacade::<Tiny>::builder(command("tiny"))
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn worker");
    signal(&w, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.worker_pid().is_some() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(w.worker_pid().is_none(), "the worker is settled dead");
    let costs = time_calls(&w, 0, n);
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), n);
    assert!(
        records
            .iter()
            .all(|r| matches!(r.outcome, Outcome::NotRun(_))),
        "tasks sent to a dead worker are not run"
    );
    costs
}

fn time_calls(w: &WorkingProcessFacade<Tiny>, from: u64, n: usize) -> Vec<Duration> {
    // Touch the sample vector first so page faults stay out of the calls.
    let mut costs = vec![Duration::from_nanos(1); n];
    for (i, slot) in costs.iter_mut().enumerate() {
        let task = Tiny::new(from + i as u64);
        let t0 = Instant::now();
        let r = w.process_task(task);
        *slot = t0.elapsed();
        r.expect("accepted");
    }
    costs
}

/// The baseline of a `process_task` call: one send of the same task on an
/// unbounded crossbeam channel that another thread drains.
pub(crate) fn channel_send_cost(n: usize) -> Vec<Duration> {
    let (tx, rx) = unbounded::<(u64, Tiny)>();
    let drain = thread::spawn(move || rx.iter().count());
    let mut costs = vec![Duration::from_nanos(1); n];
    for (i, slot) in costs.iter_mut().enumerate() {
        let task = Tiny::new(i as u64);
        let t0 = Instant::now();
        let r = tx.send((i as u64, task));
        *slot = t0.elapsed();
        r.expect("sent");
    }
    drop(tx);
    assert_eq!(drain.join().expect("drain thread"), n);
    costs
}

/// From `kill -9` of a worker running a task, with 999 more queued behind
/// it, until every one of the 1,000 handles has its outcome. With
/// `restart`, the 999 go to a fresh worker and run; without, they are
/// `NotRun` at once.
pub(crate) fn kill_until_outcomes(restart: bool) -> Duration {
    let policy = if restart {
        RestartPolicy::default()
    } else {
        RestartPolicy::Never
    };
    let w: WorkingProcessFacade<Tiny> = WorkingProcessFacade::<Tiny>::builder(command("tiny"))
        .restart(policy)
        .spawn()
        .expect("spawn worker");
    let mut handles = vec![w.submit(Tiny::blocking(0)).expect("accepted")];
    for i in 1..1000 {
        handles.push(w.submit(Tiny::new(i)).expect("accepted"));
    }
    // Let the worker start the blocking task (a bench, not a test: no
    // handshake is exposed for "task started").
    thread::sleep(Duration::from_millis(10));
    let pid = w.worker_pid().expect("a running worker");
    let t0 = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
    let outcomes: Vec<_> = handles
        .into_iter()
        .map(|h| h.wait().expect("an outcome"))
        .collect();
    let took = t0.elapsed();
    assert!(
        matches!(outcomes[0], Outcome::Crashed(_)),
        "{:?}",
        outcomes[0]
    );
    if restart {
        assert!(outcomes[1..].iter().all(Outcome::is_completed));
    } else {
        assert!(
            outcomes[1..]
                .iter()
                .all(|o| matches!(o, Outcome::NotRun(_)))
        );
    }
    drop(w);
    took
}

/// What one memory probe measured (in a fresh process).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryProbe {
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
    pub(crate) tasks: u64,
    pub(crate) encoded: u64,
    /// p99 of the calls that filled the queue from 0 to `tasks`.
    pub(crate) p99_filling_ns: f64,
    /// p99 of 100k calls with `tasks` already queued.
    pub(crate) p99_deep_ns: f64,
    pub(crate) max_deep_ns: f64,
}

/// Runs the memory probe in a fresh process (this binary with
/// [`PROBE_ENV`]), so that the RSS it reads is the facade's alone.
pub(crate) fn memory_probe() -> MemoryProbe {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .env(PROBE_ENV, "memory")
        .env_remove(RAW_ENV)
        .env_remove(WORKER_ENV)
        .output()
        .expect("run memory probe");
    assert!(
        out.status.success(),
        "memory probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("probe "))
        .expect("a probe line");
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    MemoryProbe {
        rss_before: v[0] as u64,
        rss_after: v[1] as u64,
        tasks: v[2] as u64,
        encoded: v[3] as u64,
        p99_filling_ns: v[4],
        p99_deep_ns: v[5],
        max_deep_ns: v[6],
    }
}

/// Number of tasks the memory probe queues.
pub(crate) const PROBE_TASKS: usize = 1_000_000;

/// The probe's side: queue 1 M tiny tasks into a facade whose worker is
/// stopped (SIGSTOP, so nothing drains), read the RSS before and after, time
/// every call and 100k more at that depth; print one `probe` line.
pub(crate) fn probe_main(which: &str) {
    if which == "rt" {
        return round_trip_probe();
    }
    if which == "ledger" {
        return ledger_probe();
    }
    assert_eq!(which, "memory", "unknown probe");
    let w: WorkingProcessFacade<Tiny> = WorkingProcessFacade::<Tiny>::builder(command("tiny"))
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn worker");
    signal(&w, Signal::SIGSTOP);
    let deep = 100_000;
    // Both sample vectors are touched before the first RSS reading.
    let mut filling = vec![Duration::from_nanos(1); PROBE_TASKS];
    let mut deeper = vec![Duration::from_nanos(1); deep];
    let before = settled_rss(Duration::from_millis(300));
    for (i, slot) in filling.iter_mut().enumerate() {
        let task = Tiny::new(i as u64);
        let t0 = Instant::now();
        let r = w.process_task(task);
        *slot = t0.elapsed();
        r.expect("accepted");
    }
    let after = settled_rss(Duration::from_secs(3));
    for (i, slot) in deeper.iter_mut().enumerate() {
        let task = Tiny::new((PROBE_TASKS + i) as u64);
        let t0 = Instant::now();
        let r = w.process_task(task);
        *slot = t0.elapsed();
        r.expect("accepted");
    }
    let encoded = bincode::serde::encode_to_vec(
        Tiny::new(PROBE_TASKS as u64 / 2),
        bincode::config::standard(),
    )
    .expect("encode")
    .len();
    let p99_fill = stats::ns(percentile(&mut filling, 99.0));
    let p99_deep = stats::ns(percentile(&mut deeper, 99.0));
    let max_deep = stats::ns(percentile(&mut deeper, 100.0));
    println!("probe {before} {after} {PROBE_TASKS} {encoded} {p99_fill} {p99_deep} {max_deep}");
    signal(&w, Signal::SIGCONT);
    w.terminate("memory probe over");
    let records = w.collect_tasks().expect("collect");
    assert_eq!(records.len(), PROBE_TASKS + deep);
}

/// Runs the round-trip pair (raw ping-pong, then submit → wait) in a fresh
/// process, which the report starts under `taskset -c 0`: every thread of
/// both sides on one CPU, so no cross-CPU wake-up is measured. Prints one
/// `probe` line: raw p50, raw p99, library p50, library p99 (µs), medians of
/// 3.
fn round_trip_probe() {
    let n: usize = std::env::var("WF_BENCH_RT_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let [r50, r99] = stats::median_of(3, || {
        let (a, b) = stats::p50_p99(&mut super::raw::pingpong(n));
        [stats::us(a), stats::us(b)]
    });
    let [l50, l99] = stats::median_of(3, || {
        let (a, b) = stats::p50_p99(&mut round_trip(n));
        [stats::us(a), stats::us(b)]
    });
    println!("probe {r50} {r99} {l50} {l99}");
}

/// Starts the round-trip probe pinned to CPU 0 with `taskset`; `None` when
/// taskset is missing or fails.
pub(crate) fn pinned_round_trip(samples: usize) -> Option<[f64; 4]> {
    let out = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(std::env::current_exe().ok()?)
        .env(PROBE_ENV, "rt")
        .env("WF_BENCH_RT_SAMPLES", samples.to_string())
        .env_remove(RAW_ENV)
        .env_remove(WORKER_ENV)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("probe "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
}

/// Runs the ledger probe in a fresh process: `n` submit + wait on one
/// facade, never collected, and the RSS growth over them. Returns (RSS
/// growth in bytes, seconds taken).
pub(crate) fn ledger_probe_run(n: usize) -> (u64, f64) {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .env(PROBE_ENV, "ledger")
        .env("WF_BENCH_LEDGER_TASKS", n.to_string())
        .env_remove(RAW_ENV)
        .env_remove(WORKER_ENV)
        .output()
        .expect("run ledger probe");
    assert!(
        out.status.success(),
        "ledger probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("probe "))
        .expect("a probe line")
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    (v[1].max(v[0]) as u64 - v[0] as u64, v[2])
}

/// The ledger probe's side: submits in waves of 1,024 handles and waits for
/// each, so nothing is pending between waves; prints `probe before after
/// seconds`. The first 100k tasks warm the allocator before the first
/// reading.
fn ledger_probe() {
    let n: usize = std::env::var("WF_BENCH_LEDGER_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let w = spawn_tiny();
    let wave = |from: usize, to: usize| {
        let mut i = from;
        while i < to {
            let end = (i + 1024).min(to);
            let handles: Vec<_> = (i..end)
                .map(|k| w.submit(Tiny::new(k as u64)).expect("accepted"))
                .collect();
            for (k, h) in (i..end).zip(handles) {
                match h.wait().expect("outcome") {
                    Outcome::Completed(v) => assert_eq!(v, tasks::solve_tiny(&Tiny::new(k as u64))),
                    other => panic!("task {k}: {other:?}"),
                }
            }
            i = end;
        }
    };
    let warm = 100_000.min(n);
    wave(0, warm);
    let before = settled_rss(Duration::from_millis(300));
    let t0 = Instant::now();
    wave(warm, n);
    let took = t0.elapsed().as_secs_f64();
    let after = settled_rss(Duration::from_secs(2));
    println!("probe {before} {after} {took}");
    let records = w.collect_tasks().expect("collect");
    assert!(records.is_empty(), "every outcome went to its handle");
}

/// `tasks` CPU-bound tasks of `micros` µs each on a facade with `workers`
/// workers; the time from the first submission to the collected records.
pub(crate) fn spin_throughput(workers: usize, tasks: usize, micros: u64) -> Duration {
    let w = WorkingProcessFacade::<tasks::Spin>::builder(command("spin"))
        .workers(workers)
        .spawn()
        .expect("spawn workers");
    let t0 = Instant::now();
    for _ in 0..tasks {
        w.process_task(tasks::Spin { micros }).expect("accepted");
    }
    let records = w.collect_tasks().expect("collect");
    let took = t0.elapsed();
    assert!(records.iter().all(|r| r.outcome.is_completed()));
    took
}

/// Library threads of a facade with `workers` workers, read from
/// `/proc/self/task` while it works.
pub(crate) fn threads_of_facade(workers: usize) -> usize {
    let count = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let base = count();
    let w = WorkingProcessFacade::<Tiny>::builder(command("tiny"))
        .workers(workers)
        .spawn()
        .expect("spawn workers");
    for i in 0..1000 {
        w.process_task(Tiny::new(i)).expect("accepted");
    }
    let during = count();
    w.collect_tasks().expect("collect");
    during - base
}

/// A pool of two whose idle executor's worker is `kill -9`ed: the time
/// until a new worker process runs in its place, with nobody calling the
/// pool meanwhile (the executor's engine tells the manager). Watches this
/// process's children.
pub(crate) fn pool_replaces_killed_executor() -> Duration {
    use worker_facade::LeasedExecutorManager;
    let children = || -> std::collections::BTreeSet<u32> {
        let me = std::process::id();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s.rsplit_once(')')?.1.trim_start().to_string();
                        let mut f = rest.split_whitespace();
                        let state = f.next()?.to_string();
                        let ppid: u32 = f.next()?.parse().ok()?;
                        Some(ppid == me && state != "Z")
                    })
                    .unwrap_or(false)
            })
            .collect()
    };
    let pool = LeasedExecutorManager::<Tiny>::builder(command("tiny"))
        .min_executors(2)
        .max_executors(2)
        .build()
        .expect("pool");
    pool.start().expect("start");
    let before = children();
    let victim = *before.iter().next().expect("a worker");
    let t0 = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill");
    loop {
        let now = children();
        if now.len() == before.len() && !now.contains(&victim) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not replaced");
        std::hint::spin_loop();
    }
    let took = t0.elapsed();
    pool.stop();
    took
}
