//! The library's `tracing` events and spans, captured by a small
//! hand-written subscriber and asserted on their fields: a crash (pid,
//! signal, the task it ran) and the restart after it, a failed handshake, a
//! spent restart budget agreeing with `FacadeStats::gave_up`, a timeout, a
//! recycle, leases expiring and revoked, executors retired and replaced,
//! batches, the workers' output as events — and the spans that tell two
//! facades, pools or grinders apart. Real workers, real signals.
//!
//! Each test runs inside its own `test{case}` span: the library's spans
//! are children of the span current where the object was made, so a test
//! picks out its own events by that ancestor while others run beside it.
#![cfg(feature = "tracing")]

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use common::{stock_worker, test_worker, watchdog};
use worker_facade::simple::SimpleTask;
use worker_facade::{
    LeasedExecutorManager, Output, RestartPolicy, SpawnError, WorkGrinder, WorkerCommand,
    WorkingProcessFacade,
};

type Fields = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct SpanData {
    name: &'static str,
    fields: Fields,
    parent: Option<u64>,
}

/// One captured event: its name, target, level and fields, and its spans
/// from the innermost out.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    target: String,
    level: Level,
    fields: Fields,
    spans: Vec<SpanData>,
}

impl Captured {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The innermost span called `name`.
    fn span(&self, name: &str) -> Option<&SpanData> {
        self.spans.iter().find(|s| s.name == name)
    }

    fn in_case(&self, case: &str) -> bool {
        self.span("test")
            .is_some_and(|s| s.fields.get("case").map(String::as_str) == Some(case))
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<HashMap<u64, SpanData>>,
    events: Mutex<Vec<Captured>>,
    next: AtomicU64,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct FieldsOf<'a>(&'a mut Fields);

impl Visit for FieldsOf<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

/// Records every span and event, with nothing filtered out.
#[derive(Clone)]
struct Capture(Arc<Store>);

impl Capture {
    fn current(&self) -> Option<u64> {
        ENTERED.with(|e| e.borrow().last().copied())
    }

    fn chain(&self, mut next: Option<u64>) -> Vec<SpanData> {
        let spans = self.0.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        while let Some(id) = next {
            let Some(span) = spans.get(&id) else { break };
            out.push(span.clone());
            next = span.parent;
        }
        out
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut FieldsOf(&mut fields));
        let parent = if attrs.is_contextual() {
            self.current()
        } else {
            attrs.parent().map(Id::into_u64)
        };
        let data = SpanData {
            name: attrs.metadata().name(),
            fields,
            parent,
        };
        self.0
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, data);
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(data) = spans.get_mut(&span.into_u64()) {
            values.record(&mut FieldsOf(&mut data.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsOf(&mut fields));
        let parent = if event.is_contextual() {
            self.current()
        } else {
            event.parent().map(Id::into_u64)
        };
        let meta = event.metadata();
        let captured = Captured {
            name: meta.name(),
            target: meta.target().into(),
            level: *meta.level(),
            fields,
            spans: self.chain(parent),
        };
        self.0
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(captured);
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut entered = e.borrow_mut();
            if let Some(at) = entered.iter().rposition(|&s| s == span.into_u64()) {
                entered.remove(at);
            }
        });
    }
}

/// The process's subscriber, installed once: the library's events come
/// from its own threads, so a thread-local default would miss them.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture(Arc::new(Store::default()));
        tracing::subscriber::set_global_default(capture.clone())
            .expect("the only subscriber of this test binary");
        capture
    })
}

/// The events named `name` from test `case`, in order.
fn events(case: &str, name: &str) -> Vec<Captured> {
    capture()
        .0
        .events
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|e| e.name == name && e.in_case(case))
        .cloned()
        .collect()
}

fn one(case: &str, name: &str) -> Captured {
    let mut found = events(case, name);
    assert_eq!(found.len(), 1, "one {name} event in {case}: {found:#?}");
    found.remove(0)
}

/// Runs `f` inside the span `test{case}`.
fn in_case<R>(case: &str, f: impl FnOnce() -> R) -> R {
    capture();
    tracing::info_span!("test", case).in_scope(f)
}

#[test]
fn a_crash_is_an_event_with_pid_signal_and_task_and_the_restart_follows() {
    let _watchdog =
        watchdog("a_crash_is_an_event_with_pid_signal_and_task_and_the_restart_follows");
    let case = "crash";
    let (w, first_pid, crash_id, records) = in_case(case, || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let first_pid = w.worker_pid().expect("running");
        w.process_task(SimpleTask::new("before", 0.0))
            .expect("accepted");
        let crash_id = w
            .process_task(SimpleTask::new("crash", 0.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("after", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        (w, first_pid, crash_id, records)
    });
    assert_eq!(
        common::kinds(&records),
        ["completed", "crashed", "completed"]
    );

    let spawned = events(case, "worker_spawned");
    assert_eq!(spawned.len(), 2, "{spawned:#?}");
    assert_eq!(
        spawned[0].field("pid"),
        Some(first_pid.to_string().as_str())
    );
    assert_eq!(
        spawned[0].field("program"),
        Some(env!("CARGO_BIN_EXE_facade-worker"))
    );
    let second_pid = spawned[1].field("pid").expect("a pid").to_string();
    assert_ne!(second_pid, first_pid.to_string());

    let crashed = one(case, "worker_crashed");
    assert_eq!(crashed.level, Level::WARN);
    assert_eq!(crashed.target, "worker_facade::facade");
    assert_eq!(crashed.field("pid"), Some(first_pid.to_string().as_str()));
    assert_eq!(crashed.field("signal"), Some("6"));
    assert_eq!(crashed.field("signal_name"), Some("SIGABRT"));
    assert_eq!(
        crashed.field("task"),
        Some(crash_id.as_u64().to_string().as_str())
    );
    assert_eq!(
        crashed.field("requeued"),
        Some("1"),
        "'after' went to the next worker"
    );
    assert_eq!(crashed.field("exit_code"), None);

    let restarted = one(case, "worker_restarted");
    assert_eq!(restarted.field("pid"), Some(second_pid.as_str()));
    assert_eq!(restarted.field("restarts"), Some("1"));
    assert_eq!(w.stats().restarts, 1);

    // Every event of the engine sits in the facade's span.
    let facade = crashed.span("facade").expect("the facade's span");
    assert_eq!(
        facade.fields.get("program").map(String::as_str),
        Some(env!("CARGO_BIN_EXE_facade-worker"))
    );
    assert_eq!(facade.fields.get("workers").map(String::as_str), Some("1"));
    let id = facade.fields.get("id").cloned();
    assert!(
        spawned
            .iter()
            .chain([&restarted])
            .all(|e| { e.span("facade").and_then(|s| s.fields.get("id").cloned()) == id })
    );
    // Not a give-up, and the stats agree.
    assert!(events(case, "facade_gave_up").is_empty());
    assert!(!w.stats().gave_up);
}

#[test]
fn two_facades_are_told_apart_by_their_spans() {
    let _watchdog = watchdog("two_facades_are_told_apart_by_their_spans");
    let case = "two facades";
    let pids = in_case(case, || {
        let a = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        let b = WorkingProcessFacade::<SimpleTask>::spawn(stock_worker()).expect("spawn");
        (a.worker_pid(), b.worker_pid())
    });
    let spawned = events(case, "worker_spawned");
    assert_eq!(spawned.len(), 2);
    let ids: Vec<_> = spawned
        .iter()
        .map(|e| e.span("facade").expect("span").fields["id"].clone())
        .collect();
    assert_ne!(ids[0], ids[1]);
    let by_pid: Vec<_> = spawned
        .iter()
        .map(|e| e.field("pid").map(String::from))
        .collect();
    assert_eq!(
        by_pid,
        [pids.0.map(|p| p.to_string()), pids.1.map(|p| p.to_string())]
    );
}

#[test]
fn a_failed_handshake_is_an_event_with_the_pid_and_the_error() {
    let _watchdog = watchdog("a_failed_handshake_is_an_event_with_the_pid_and_the_error");
    let case = "handshake";
    // A program that never says hello. (With a socket pair per worker no
    // other process can connect: a refused peer can only be this.)
    let err = in_case(case, || {
        let silent = WorkerCommand::new("/bin/sleep")
            .args(["60"])
            .handshake_timeout(Duration::from_millis(200));
        WorkingProcessFacade::<SimpleTask>::spawn(silent).expect_err("no hello")
    });
    assert!(matches!(err, SpawnError::HandshakeTimeout { .. }), "{err}");
    let spawned = one(case, "worker_spawned");
    let failed = one(case, "handshake_failed");
    assert_eq!(failed.level, Level::WARN);
    assert_eq!(failed.field("pid"), spawned.field("pid"));
    assert_eq!(failed.field("error"), Some(err.to_string().as_str()));
    assert!(failed.span("facade").is_some());
}

#[test]
fn a_spent_restart_budget_is_an_event_and_stats_say_gave_up_too() {
    let _watchdog = watchdog("a_spent_restart_budget_is_an_event_and_stats_say_gave_up_too");
    let case = "budget";
    let w = in_case(case, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .restart(RestartPolicy::Limited {
                max_restarts: 1,
                window: Duration::from_secs(600),
            })
            .spawn()
            .expect("spawn");
        for id in ["crash", "crash", "never"] {
            w.process_task(SimpleTask::new(id, 0.0)).expect("accepted");
        }
        let records = w.collect_tasks().expect("collect");
        assert_eq!(common::kinds(&records), ["crashed", "crashed", "not run"]);
        w
    });
    assert_eq!(events(case, "worker_crashed").len(), 2);
    assert_eq!(events(case, "worker_restarted").len(), 1);
    let spent = one(case, "restart_budget_exhausted");
    assert_eq!(spent.level, Level::ERROR);
    assert_eq!(spent.field("slot"), Some("0"));
    assert_eq!(spent.field("gave_up"), Some("true"));
    assert!(
        spent
            .field("reason")
            .is_some_and(|r| r.contains("1 restarts"))
    );
    let gave_up = one(case, "facade_gave_up");
    assert!(gave_up.field("reason").is_some());
    assert!(w.stats().gave_up, "stats and tracing agree");
}

#[test]
fn a_timeout_and_a_recycle_are_events() {
    let _watchdog = watchdog("a_timeout_and_a_recycle_are_events");
    let case = "timeout";
    let hung = in_case(case, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .task_timeout(Duration::from_millis(200))
            .kill_grace(Duration::from_millis(100))
            .spawn()
            .expect("spawn");
        let hung = w
            .process_task(SimpleTask::new("hung", 60.0))
            .expect("accepted");
        w.process_task(SimpleTask::new("next", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert_eq!(common::kinds(&records), ["timed out", "completed"]);
        hung
    });
    let spawned = events(case, "worker_spawned");
    let timed_out = one(case, "task_timed_out");
    assert_eq!(
        timed_out.field("task"),
        Some(hung.as_u64().to_string().as_str())
    );
    assert_eq!(timed_out.field("limit_ms"), Some("200"));
    assert_eq!(timed_out.field("pid"), spawned[0].field("pid"));
    assert_eq!(
        one(case, "worker_restarted").field("pid"),
        spawned[1].field("pid")
    );
    assert!(
        events(case, "worker_crashed").is_empty(),
        "a timeout is not a crash"
    );

    let case = "recycle";
    in_case(case, || {
        let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
            .max_tasks_per_worker(1)
            .spawn()
            .expect("spawn");
        for id in ["one", "two"] {
            w.process_task(SimpleTask::new(id, 0.0)).expect("accepted");
        }
        assert_eq!(w.collect_tasks().expect("collect").len(), 2);
        assert_eq!(w.stats().recycles, 1);
    });
    let spawned = events(case, "worker_spawned");
    assert_eq!(spawned.len(), 2);
    let recycled = one(case, "worker_recycled");
    assert_eq!(recycled.field("pid"), spawned[1].field("pid"));
    assert_eq!(recycled.field("recycles"), Some("1"));
    assert!(events(case, "worker_restarted").is_empty());
}

#[test]
fn output_tracing_turns_each_line_into_an_event_with_pid_and_task() {
    let _watchdog = watchdog("output_tracing_turns_each_line_into_an_event_with_pid_and_task");
    let case = "output";
    let (pid, id) = in_case(case, || {
        let w = WorkingProcessFacade::<SimpleTask>::spawn(test_worker().output(Output::Tracing))
            .expect("spawn");
        let pid = w.worker_pid().expect("running");
        let id = w
            .process_task(SimpleTask::new("late-print:hello there", 0.0))
            .expect("accepted");
        let records = w.collect_tasks().expect("collect");
        assert!(records[0].outcome.is_completed());
        (pid, id)
    });
    let lines: Vec<_> = events(case, "worker_output")
        .into_iter()
        .filter(|e| e.field("line") == Some("hello there"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let mut streams: Vec<_> = lines
        .iter()
        .map(|e| e.field("stream").unwrap_or("?"))
        .collect();
    streams.sort_unstable();
    assert_eq!(streams, ["stderr", "stdout"]);
    for line in &lines {
        assert_eq!(line.target, "worker_facade::output");
        assert_eq!(line.level, Level::INFO);
        assert_eq!(line.field("pid"), Some(pid.to_string().as_str()));
        assert_eq!(line.field("task"), Some(id.as_u64().to_string().as_str()));
        assert!(line.span("facade").is_some());
    }
}

#[test]
fn leases_expiring_executors_replaced_and_batches_are_events_in_their_pools_spans() {
    let _watchdog =
        watchdog("leases_expiring_executors_replaced_and_batches_are_events_in_their_pools_spans");
    let case = "pool";
    let pid = in_case(case, || {
        let pool = LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
            .max_executors(1)
            .lease_grace(Duration::from_millis(100))
            .build()
            .expect("valid settings");
        pool.start().expect("starts");
        let lease = pool
            .acquire(Duration::from_millis(200), "expiring")
            .expect("leased");
        let pid = lease.worker_pid();
        let hung = lease
            .submit(SimpleTask::new("hung", 60.0))
            .expect("accepted");
        assert!(!hung.wait().expect("an outcome").is_completed());
        // The manager replaces the executor at once; wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pool.stats().replaced == 0 {
            assert!(std::time::Instant::now() < deadline, "no replacement");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(lease);
        pool.stop();
        pid
    });
    let granted = one(case, "lease_granted");
    assert_eq!(granted.field("owner"), Some("expiring"));
    let expired = one(case, "lease_expired");
    assert_eq!(expired.field("owner"), Some("expiring"));
    assert_eq!(expired.field("lease"), granted.field("lease"));
    assert_eq!(
        expired.field("pid").map(String::from),
        pid.map(|p| p.to_string())
    );
    let retired = one(case, "executor_retired");
    assert_eq!(retired.field("why"), Some("lease expired"));
    let replaced = one(case, "executor_replaced");
    assert_ne!(replaced.field("facade"), retired.field("facade"));
    // The killed worker is reported by its facade, inside the pool's span.
    let killed = one(case, "worker_killed");
    assert_eq!(
        killed.field("pid").map(String::from),
        pid.map(|p| p.to_string())
    );
    let pool_span = expired.span("pool").expect("the pool's span");
    assert_eq!(
        killed.span("pool").map(|s| &s.fields["id"]),
        Some(&pool_span.fields["id"])
    );
    assert_eq!(
        killed.span("facade").map(|s| &s.fields["id"]),
        retired.fields.get("facade")
    );

    let case = "stopped with a lease";
    in_case(case, || {
        let pool = LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
            .max_executors(1)
            .build()
            .expect("valid settings");
        pool.start().expect("starts");
        let _lease = pool
            .acquire(Duration::from_secs(60), "held")
            .expect("leased");
        pool.stop();
    });
    let revoked = one(case, "lease_revoked");
    assert_eq!(revoked.field("owner"), Some("held"));
    let other = revoked.span("pool").expect("span").fields["id"].clone();
    assert_ne!(other, pool_span.fields["id"], "two pools, two spans");

    let case = "grinder";
    in_case(case, || {
        let pool = Arc::new(
            LeasedExecutorManager::<SimpleTask>::builder(stock_worker())
                .max_executors(1)
                .build()
                .expect("valid settings"),
        );
        pool.start().expect("starts");
        let grinder = WorkGrinder::builder(pool.clone())
            .max_wait_seconds(3600.0)
            .batch_size_threshold(3)
            .owner_prefix("thumbnails")
            .build()
            .expect("valid settings");
        grinder.start().expect("starts");
        let handles: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|id| grinder.enqueue(SimpleTask::new(id, 0.0)).expect("accepted"))
            .collect();
        for handle in handles {
            handle.wait().expect("waited once").expect("completed");
        }
        grinder.stop(false);
        pool.stop();
    });
    let batch = one(case, "batch_dispatched");
    assert_eq!(batch.field("size"), Some("3"));
    assert_eq!(batch.field("batch"), Some("1"));
    assert!(batch.field("waited_ms").is_some());
    let grinder = batch.span("grinder").expect("the grinder's span");
    assert_eq!(
        grinder.fields.get("owner_prefix").map(String::as_str),
        Some("thumbnails")
    );
    let leased = one(case, "lease_granted");
    assert_eq!(leased.field("owner"), Some("thumbnails-1"));
}
