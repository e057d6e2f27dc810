//! The supervisor: one thread per facade that owns every task and the worker.
//!
//! All state lives on this thread, so there are no locks around it. Callers
//! talk to it through a channel of [`Command`]s; the worker's threads (reader,
//! writer, monitor) talk to it through a channel of [`Event`]s, each tagged
//! with the worker's generation so that a late event from a replaced worker is
//! ignored. Timers (task timeouts, grace periods) are deadlines on the
//! channel wait: no thread sleeps.
//!
//! A worker's end is decided by two facts, both required before its tasks are
//! settled: the monitor saw the process exit, and the reader drained the
//! socket to its end. Only then do we know which results made it out. The
//! task the worker had reported as started, with no result, crashed it;
//! tasks it never started go to the next worker, or are reported not run.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, unbounded};
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, send};

use crate::codec;
use crate::config::{Config, RestartPolicy};
use crate::error::SpawnError;
use crate::process::WorkerProcess;
use crate::stats::StatsCells;
use crate::task::{CrashInfo, NotRunReason, Outcome, Task, TaskId, TaskRecord};
use crate::wire::{
    self, FrameReader, KIND_ERR, KIND_OK, KIND_STARTED, KIND_STOP, KIND_TASK, PushError,
};

/// Tasks sent to a worker and not yet answered, at most. Keeps the socket
/// busy without moving the whole queue into kernel buffers, so a respawn has
/// little to resend.
const WINDOW: usize = 1024;
/// A batch is handed to the writer once it holds this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// The largest batch buffer kept for reuse (one 1 MiB task fits).
const SPARE_LIMIT: usize = 4 << 20;
/// After the worker exits, how long the reader may take to drain the socket
/// before we cut it (only reached when something outside the worker's
/// process group holds the socket open).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// After the socket closes (or a write fails) while the worker still runs,
/// how long we wait for it to exit by itself before calling it broken.
const EOF_LIMIT: Duration = Duration::from_millis(250);
/// Commands handled per wake-up before dispatching, to batch writes.
const COMMAND_BATCH: usize = 4096;

/// What callers send the supervisor.
pub(crate) enum Command<T: Task> {
    Task(Submission<T>),
    Collect {
        expected: u64,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Vec<TaskRecord<T>>>,
    },
    /// The facade is being dropped: cancel what has not started, stop the
    /// worker within the grace period.
    Shutdown,
    /// Kill the worker now; nothing runs on this facade again.
    Terminate {
        reason: String,
    },
}

pub(crate) struct Submission<T: Task> {
    pub(crate) id: u64,
    pub(crate) task: T,
    pub(crate) notify: Option<oneshot::Sender<Outcome<T::Output>>>,
    pub(crate) timeout: Option<Duration>,
}

/// What a worker's threads tell the supervisor.
enum Event<O> {
    Started {
        generation: u64,
        id: u64,
    },
    Done {
        generation: u64,
        id: u64,
        result: Result<O, String>,
    },
    ReaderClosed {
        generation: u64,
        error: Option<String>,
    },
    WriterFailed {
        generation: u64,
    },
    Exited {
        generation: u64,
    },
    /// Everything one `read` of the socket brought, in order.
    Batch(Vec<Event<O>>),
}

/// A pending `collect_tasks`: how many tasks it waits for, its deadline, and
/// where the records go.
struct CollectRequest<T: Task> {
    expected: u64,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Vec<TaskRecord<T>>>,
}

enum Got<T: Task> {
    Event(Event<T::Output>),
    Command(Command<T>),
    Disconnected,
    Nothing,
}

/// An accepted task, kept small: a million queued tasks cost their own size
/// plus a word each. Outcomes, per-task timeouts and retry counts live in
/// side tables, paid for only by the tasks that have them.
struct Entry<T: Task> {
    task: T,
    notify: Option<oneshot::Sender<Outcome<T::Output>>>,
}

/// Why the last worker ended, for the restart and recycle counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Restart,
    Recycle,
}

/// The current worker and everything about it.
struct Live {
    generation: u64,
    proc: WorkerProcess,
    writer_tx: Option<Sender<Vec<u8>>>,
    /// Batches handed to the writer thread and not yet written. While it is
    /// zero the supervisor writes to the socket itself, saving a hand-off.
    writer_pending: Arc<AtomicUsize>,
    /// A batch buffer written out directly, kept for the next batch.
    spare: Vec<u8>,
    threads: Vec<JoinHandle<()>>,
    inflight: VecDeque<u64>,
    running: Option<(u64, Instant)>,
    sent: u64,
    stop_sent: bool,
    recycling: bool,
    exited: bool,
    reader_done: bool,
    /// Why the parent killed it, when it did.
    broken: Option<String>,
    /// The kill was a task timeout (not counted against the restart budget).
    timed_out: bool,
    drain_deadline: Option<Instant>,
    kill_deadline: Option<Instant>,
    suspect_deadline: Option<Instant>,
}

impl Live {
    /// Sends bytes to the worker, in order. When the writer thread has
    /// nothing pending, as much as the socket takes now is written here
    /// (`MSG_DONTWAIT`); the rest goes to the writer thread, which may block.
    fn send(&mut self, mut bytes: Vec<u8>) {
        let Some(tx) = &self.writer_tx else {
            return;
        };
        if self.writer_pending.load(Ordering::Acquire) == 0 {
            let fd = self.proc.stream.as_raw_fd();
            let mut written = 0;
            while written < bytes.len() {
                match send(
                    fd,
                    &bytes[written..],
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ) {
                    Ok(n) => written += n,
                    Err(nix::errno::Errno::EINTR) => {}
                    // Full (or broken: the writer thread will report it).
                    Err(_) => break,
                }
            }
            if written == bytes.len() {
                bytes.clear();
                if bytes.capacity() <= SPARE_LIMIT {
                    self.spare = bytes;
                }
                return;
            }
            bytes.drain(..written);
        }
        self.writer_pending.fetch_add(1, Ordering::AcqRel);
        if tx.send(bytes).is_err() {
            self.writer_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn kill(&mut self, reason: impl Into<String>) {
        if self.broken.is_none() {
            self.broken = Some(reason.into());
        }
        self.proc.signal(Signal::SIGKILL);
    }

    /// Ends everything: the worker, its group, its threads. Returns what the
    /// reap learned (`None` if it was reaped already).
    fn teardown(&mut self) -> Option<crate::process::Reaped> {
        self.writer_tx = None;
        let reaped = self.proc.reap();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        reaped
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub(crate) struct Supervisor<T: Task> {
    cfg: Config,
    stats: Arc<StatsCells>,
    cmds: Receiver<Command<T>>,
    cmds_open: bool,
    events_tx: Sender<Event<T::Output>>,
    events: Receiver<Event<T::Output>>,
    entries: Vec<Option<Entry<T>>>,
    /// Outcomes by task ID, grown as they arrive.
    outcomes: Vec<Option<Outcome<T::Output>>>,
    /// Per-task time limits that differ from the facade's.
    timeouts: HashMap<u64, Duration>,
    /// Runs of tasks that crashed their worker, for `retries`.
    attempts: HashMap<u64, u32>,
    received: u64,
    queue: VecDeque<u64>,
    live: Option<Live>,
    next_gen: u64,
    restarts: VecDeque<Instant>,
    replace: Option<Replace>,
    /// Set when no worker will run again; later tasks get this reason.
    dead: Option<NotRunReason>,
    collect: Option<CollectRequest<T>>,
    shutting_down: bool,
}

impl<T: Task> Supervisor<T> {
    pub(crate) fn new(cfg: Config, cmds: Receiver<Command<T>>, stats: Arc<StatsCells>) -> Self {
        let (events_tx, events) = unbounded();
        Supervisor {
            cfg,
            stats,
            cmds,
            cmds_open: true,
            events_tx,
            events,
            entries: Vec::new(),
            outcomes: Vec::new(),
            timeouts: HashMap::new(),
            attempts: HashMap::new(),
            received: 0,
            queue: VecDeque::new(),
            live: None,
            next_gen: 0,
            restarts: VecDeque::new(),
            replace: None,
            dead: None,
            collect: None,
            shutting_down: false,
        }
    }

    /// Starts a worker with its reader and writer threads.
    pub(crate) fn spawn_worker(&mut self) -> Result<(), SpawnError> {
        let generation = self.next_gen;
        self.next_gen += 1;
        let events = self.events_tx.clone();
        let proc = WorkerProcess::spawn(&self.cfg.command, &self.stats.refused, move || {
            let _ = events.send(Event::Exited { generation });
        })?;
        let pid = proc.pid;
        let resource = |what: &'static str, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| SpawnError::Resource { what, path, source }
        };
        let program = self.cfg.command.program.clone();
        let read_half = proc
            .stream
            .try_clone()
            .map_err(resource("socket reader", &program))?;
        let write_half = proc
            .stream
            .try_clone()
            .map_err(resource("socket writer", &program))?;
        let mut live = Live {
            generation,
            proc,
            writer_tx: None,
            writer_pending: Arc::new(AtomicUsize::new(0)),
            spare: Vec::new(),
            threads: Vec::with_capacity(2),
            inflight: VecDeque::new(),
            running: None,
            sent: 0,
            stop_sent: false,
            recycling: false,
            exited: false,
            reader_done: false,
            broken: None,
            timed_out: false,
            drain_deadline: None,
            kill_deadline: None,
            suspect_deadline: None,
        };
        // From here `live` tears the worker down if a thread cannot start.
        let max = self.cfg.command.max_frame;
        let events = self.events_tx.clone();
        live.threads.push(
            thread::Builder::new()
                .name(format!("wf-reader-{pid}"))
                .spawn(move || {
                    let closed = events.clone();
                    let run = || read_results::<T::Output>(read_half, max, generation, events);
                    if catch_unwind(AssertUnwindSafe(run)).is_err() {
                        // A bug, but the supervisor must still hear the
                        // reader is gone, or the worker's tasks never settle.
                        let _ = closed.send(Event::ReaderClosed {
                            generation,
                            error: Some("the reader thread panicked".into()),
                        });
                    }
                })
                .map_err(resource("reader thread", &program))?,
        );
        let (writer_tx, writer_rx) = unbounded::<Vec<u8>>();
        let events = self.events_tx.clone();
        let pending = live.writer_pending.clone();
        live.threads.push(
            thread::Builder::new()
                .name(format!("wf-writer-{pid}"))
                .spawn(move || {
                    let failed = events.clone();
                    let run = || write_frames(write_half, writer_rx, &pending, generation, events);
                    if catch_unwind(AssertUnwindSafe(run)).is_err() {
                        let _ = failed.send(Event::WriterFailed { generation });
                    }
                })
                .map_err(resource("writer thread", &program))?,
        );
        live.writer_tx = Some(writer_tx);
        self.stats.worker_pid.store(pid, Relaxed);
        match self.replace.take() {
            Some(Replace::Restart) => {
                self.stats.restarts.fetch_add(1, Relaxed);
            }
            Some(Replace::Recycle) => {
                self.stats.recycles.fetch_add(1, Relaxed);
            }
            None => {}
        }
        self.live = Some(live);
        Ok(())
    }

    /// The supervisor's loop; returns once the facade is collected or dropped.
    pub(crate) fn run(mut self) {
        loop {
            let now = Instant::now();
            self.on_timers(now);
            self.settle_worker();
            self.ensure_worker();
            self.dispatch();
            if self.finished() {
                return;
            }
            self.wait_and_handle();
        }
    }

    fn wait_and_handle(&mut self) {
        let deadline = self.next_deadline();
        let got = {
            let mut sel = Select::new();
            let events_index = sel.recv(&self.events);
            let cmds_index = self.cmds_open.then(|| sel.recv(&self.cmds));
            let op = match deadline {
                Some(d) => sel.select_deadline(d).ok(),
                None => Some(sel.select()),
            };
            match op {
                None => Got::Nothing,
                Some(op) if op.index() == events_index => {
                    op.recv(&self.events).map_or(Got::Nothing, Got::Event)
                }
                Some(op) if Some(op.index()) == cmds_index => {
                    op.recv(&self.cmds).map_or(Got::Disconnected, Got::Command)
                }
                Some(_) => Got::Nothing,
            }
        };
        match got {
            Got::Event(ev) => self.on_event(ev),
            Got::Command(cmd) => self.on_command(cmd),
            Got::Disconnected => self.on_shutdown(),
            Got::Nothing => {}
        }
        // Take whatever else is waiting, so one dispatch carries many tasks.
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
        }
        for _ in 0..COMMAND_BATCH {
            if !self.cmds_open {
                break;
            }
            match self.cmds.try_recv() {
                Ok(cmd) => self.on_command(cmd),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => self.on_shutdown(),
            }
        }
    }

    fn on_command(&mut self, cmd: Command<T>) {
        match cmd {
            Command::Task(sub) => {
                self.received += 1;
                let id = sub.id as usize;
                if self.entries.len() <= id {
                    self.entries.resize_with(id + 1, || None);
                }
                self.entries[id] = Some(Entry {
                    task: sub.task,
                    notify: sub.notify,
                });
                if let Some(limit) = sub.timeout {
                    self.timeouts.insert(sub.id, limit);
                }
                match &self.dead {
                    Some(reason) => {
                        let reason = reason.clone();
                        self.finish(sub.id, Outcome::NotRun(reason));
                    }
                    None => self.queue.push_back(sub.id),
                }
            }
            Command::Collect {
                expected,
                deadline,
                reply,
            } => {
                self.collect = Some(CollectRequest {
                    expected,
                    deadline,
                    reply,
                });
            }
            Command::Shutdown => self.on_shutdown(),
            Command::Terminate { reason } => {
                self.set_dead(NotRunReason::Cancelled(reason.clone()));
                if let Some(live) = self.live.as_mut() {
                    live.kill(reason);
                }
            }
        }
    }

    /// The facade is gone: nothing new will come, nothing queued will start.
    fn on_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        // Tasks sent before the shutdown are already in the channel.
        while let Ok(cmd) = self.cmds.try_recv() {
            self.on_command(cmd);
        }
        self.cmds_open = false;
        self.shutting_down = true;
        self.set_dead(NotRunReason::Cancelled("the facade was dropped".into()));
        let grace = self.cfg.grace;
        if let Some(live) = self.live.as_mut() {
            live.kill_deadline = Some(Instant::now() + grace);
        }
    }

    fn set_dead(&mut self, reason: NotRunReason) {
        for id in std::mem::take(&mut self.queue) {
            self.finish(id, Outcome::NotRun(reason.clone()));
        }
        self.dead.get_or_insert(reason);
    }

    fn on_event(&mut self, ev: Event<T::Output>) {
        let now = Instant::now();
        let ev = match ev {
            Event::Batch(events) => {
                for ev in events {
                    self.on_event(ev);
                }
                return;
            }
            ev => ev,
        };
        let generation = match &ev {
            Event::Batch(_) => return,
            Event::Started { generation, .. }
            | Event::Done { generation, .. }
            | Event::ReaderClosed { generation, .. }
            | Event::WriterFailed { generation }
            | Event::Exited { generation } => *generation,
        };
        let Some(live) = self.live.as_mut().filter(|l| l.generation == generation) else {
            return; // from a worker already settled
        };
        match ev {
            Event::Started { id, .. } => {
                if live.inflight.front() != Some(&id) || live.running.is_some() {
                    live.kill(format!(
                        "protocol violation: worker reported starting task #{id} out of order"
                    ));
                } else {
                    live.running = Some((id, now));
                }
            }
            Event::Done { id, result, .. } => {
                if live.inflight.front() != Some(&id) {
                    live.kill(format!(
                        "protocol violation: worker sent a result for unknown or already answered task #{id}"
                    ));
                    return;
                }
                live.inflight.pop_front();
                live.running = None;
                if live.stop_sent && live.inflight.is_empty() && live.kill_deadline.is_none() {
                    live.kill_deadline = Some(now + self.cfg.grace);
                }
                let outcome = match result {
                    Ok(output) => Outcome::Completed(output),
                    Err(message) => Outcome::Failed(message),
                };
                self.finish(id, outcome);
            }
            Event::ReaderClosed { error, .. } => {
                live.reader_done = true;
                match error {
                    Some(error) => live.kill(format!("broken connection: {error}")),
                    None if !live.exited => {
                        live.suspect_deadline.get_or_insert(now + EOF_LIMIT);
                    }
                    None => {}
                }
            }
            Event::WriterFailed { .. } => {
                if !live.exited {
                    live.suspect_deadline.get_or_insert(now + EOF_LIMIT);
                }
            }
            Event::Batch(_) => {}
            Event::Exited { .. } => {
                live.exited = true;
                // The worker's own children could hold the socket open.
                live.proc.signal(Signal::SIGKILL);
                if !live.reader_done {
                    live.drain_deadline = Some(now + DRAIN_LIMIT);
                }
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if let Some(CollectRequest {
            deadline: Some(deadline),
            ..
        }) = &self.collect
        {
            if now >= *deadline && self.dead.is_none() {
                self.set_dead(NotRunReason::DeadlineExpired);
                if let Some(live) = self.live.as_mut() {
                    live.kill("collect_tasks deadline passed");
                }
            }
        }
        let timeout_hit = self.live.as_ref().and_then(|live| {
            let (id, started) = live.running?;
            let limit = self.timeout_of(id)?;
            (live.broken.is_none() && now >= started + limit).then_some((id, limit))
        });
        if let Some((id, limit)) = timeout_hit {
            self.finish(id, Outcome::TimedOut(limit));
            let term_grace = self.cfg.term_grace;
            if let Some(live) = self.live.as_mut() {
                live.broken = Some(format!("task #{id} ran longer than {limit:?}"));
                live.timed_out = true;
                live.proc.signal(Signal::SIGTERM);
                live.kill_deadline = Some(now + term_grace);
            }
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.exited {
            if !live.reader_done && live.drain_deadline.is_some_and(|d| now >= d) {
                // Something outside the process group holds the socket open.
                let _ = live.proc.stream.shutdown(std::net::Shutdown::Both);
                live.reader_done = true;
            }
            return;
        }
        if live.kill_deadline.is_some_and(|d| now >= d) {
            live.kill_deadline = None;
            live.proc.signal(Signal::SIGKILL);
        }
        if live.suspect_deadline.is_some_and(|d| now >= d) {
            live.suspect_deadline = None;
            if live.stop_sent && live.inflight.is_empty() {
                live.kill_deadline.get_or_insert(now + self.cfg.grace);
            } else {
                live.kill("the worker closed its connection but kept running");
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        if let Some(collect) = &self.collect {
            if self.dead.is_none() {
                consider(collect.deadline);
            }
        }
        if let Some(live) = &self.live {
            if live.exited {
                consider(live.drain_deadline.filter(|_| !live.reader_done));
            } else {
                consider(live.kill_deadline);
                consider(live.suspect_deadline);
                if live.broken.is_none() {
                    if let Some((id, started)) = live.running {
                        consider(self.timeout_of(id).map(|l| started + l));
                    }
                }
            }
        }
        next
    }

    /// Settles a worker that has exited and whose socket is drained.
    fn settle_worker(&mut self) {
        if !self
            .live
            .as_ref()
            .is_some_and(|l| l.exited && l.reader_done)
        {
            return;
        }
        let Some(mut live) = self.live.take() else {
            return;
        };
        self.stats.worker_pid.store(0, Relaxed);
        let reaped = live.teardown();
        let reaped = reaped.unwrap_or_else(|| crate::process::Reaped {
            exit: crate::process::exit_info(live.proc.pid, None),
            stderr_tail: Vec::new(),
            alloc_failed: false,
        });
        let reason = live
            .broken
            .clone()
            .or_else(|| self.memory_limit_reason(reaped.alloc_failed));
        let crash = CrashInfo {
            exit: reaped.exit,
            reason,
            stderr_tail: reaped.stderr_tail,
        };
        let clean = live.stop_sent && live.inflight.is_empty() && live.broken.is_none();
        let running = live.running.map(|(id, _)| id);
        let mut unstarted = Vec::new();
        for id in std::mem::take(&mut live.inflight) {
            if Some(id) != running {
                unstarted.push(id);
                continue;
            }
            if self.has_outcome(id) {
                continue; // timed out already, or delivered
            }
            let attempts = self.attempts.entry(id).or_insert(0);
            *attempts += 1;
            if *attempts <= self.cfg.retries && self.dead.is_none() {
                unstarted.push(id); // opt-in retry, bounded
            } else {
                self.finish(id, Outcome::Crashed(crash.clone()));
            }
        }
        // Unstarted work goes back to the front of the queue, in order.
        for id in unstarted.into_iter().rev() {
            self.queue.push_front(id);
        }
        if clean {
            if live.recycling {
                self.replace = Some(Replace::Recycle);
            }
            return;
        }
        if self.dead.is_some() {
            let reason = self.dead.clone();
            if let Some(reason) = reason {
                self.set_dead(reason);
            }
            return;
        }
        match self.cfg.restart {
            RestartPolicy::Never => self.set_dead(NotRunReason::WorkerDied(crash)),
            RestartPolicy::Limited {
                max_restarts,
                window,
            } => {
                if !live.timed_out {
                    let now = Instant::now();
                    while self
                        .restarts
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > window)
                    {
                        self.restarts.pop_front();
                    }
                    if self.restarts.len() >= max_restarts as usize {
                        self.set_dead(NotRunReason::WorkerUnavailable(format!(
                            "restart budget exhausted ({max_restarts} restarts within {window:?}); \
                             last crash: {crash}"
                        )));
                        return;
                    }
                    self.restarts.push_back(now);
                }
                self.replace = Some(Replace::Restart);
            }
        }
    }

    /// When the worker has a memory limit and died of a failed allocation
    /// (Rust's allocator prints "memory allocation of N bytes failed" before
    /// aborting), say so.
    fn memory_limit_reason(&self, alloc_failed: bool) -> Option<String> {
        let limit = self.cfg.command.memory_limit?;
        alloc_failed.then(|| format!("memory limit of {limit} bytes (RLIMIT_AS) exceeded"))
    }

    /// Starts a replacement when work is waiting and none is running.
    fn ensure_worker(&mut self) {
        if self.live.is_some() || self.dead.is_some() || self.queue.is_empty() {
            return;
        }
        if let Err(err) = self.spawn_worker() {
            self.set_dead(NotRunReason::WorkerUnavailable(format!(
                "a replacement worker could not be started: {}",
                crate::worker::error_chain(&err)
            )));
        }
    }

    /// Moves queued tasks to the worker, up to the window, and the terminator
    /// when nothing else will come.
    fn dispatch(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.stop_sent || live.broken.is_some() || live.exited || live.writer_tx.is_none() {
            return;
        }
        let max_frame = self.cfg.command.max_frame;
        let per_worker = self.cfg.max_tasks_per_worker;
        let mut batch = std::mem::take(&mut live.spare);
        let mut unsendable = Vec::new();
        while live.inflight.len() < WINDOW && per_worker.is_none_or(|m| live.sent < m) {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get(id as usize).and_then(|e| e.as_ref()) else {
                continue;
            };
            match wire::push_frame(&mut batch, KIND_TASK, Some(id), max_frame, |out| {
                codec::encode_into(&entry.task, out)
            }) {
                Ok(()) => {
                    live.inflight.push_back(id);
                    live.sent += 1;
                }
                Err(PushError::Fill(e)) => unsendable.push((
                    id,
                    format!("the task could not be encoded: {}", crate::worker::error_chain(&e)),
                )),
                Err(PushError::TooLarge { len, max }) => unsendable.push((
                    id,
                    format!("the task encodes to {len} bytes, above the maximum frame size of {max} bytes"),
                )),
            }
            if batch.len() >= BATCH_BYTES {
                live.send(std::mem::take(&mut batch));
            }
        }
        let recycle = per_worker.is_some_and(|m| live.sent >= m);
        let collecting = self
            .collect
            .as_ref()
            .is_some_and(|c| self.received >= c.expected)
            && self.queue.is_empty();
        if recycle || collecting || self.shutting_down {
            wire::push_bare(&mut batch, KIND_STOP, None);
            live.stop_sent = true;
            live.recycling = recycle && !collecting && !self.shutting_down;
            if live.inflight.is_empty() && live.kill_deadline.is_none() {
                live.kill_deadline = Some(Instant::now() + self.cfg.grace);
            }
        }
        if batch.is_empty() {
            live.spare = batch;
        } else {
            live.send(batch);
        }
        for (id, why) in unsendable {
            self.finish(id, Outcome::NotRun(NotRunReason::Unsendable(why)));
        }
    }

    /// Records a task's one outcome: to its handle if it has a live one,
    /// otherwise for `collect_tasks`. A second outcome is ignored.
    fn finish(&mut self, id: u64, outcome: Outcome<T::Output>) {
        if self.has_outcome(id) {
            return;
        }
        let Some(entry) = self.entries.get_mut(id as usize).and_then(|e| e.as_mut()) else {
            return;
        };
        self.stats.count(&outcome);
        self.timeouts.remove(&id);
        self.attempts.remove(&id);
        let outcome = match entry.notify.take() {
            Some(tx) => match tx.send(outcome) {
                Ok(()) => {
                    // Delivered: the task is done with.
                    self.entries[id as usize] = None;
                    return;
                }
                Err(back) => back.into_inner(),
            },
            None => outcome,
        };
        let slot = id as usize;
        if self.outcomes.len() <= slot {
            self.outcomes.resize_with(slot + 1, || None);
        }
        self.outcomes[slot] = Some(outcome);
    }

    /// Whether task `id` has had its outcome (or was never accepted).
    fn has_outcome(&self, id: u64) -> bool {
        let slot = id as usize;
        !matches!(self.entries.get(slot), Some(Some(_)))
            || matches!(self.outcomes.get(slot), Some(Some(_)))
    }

    /// The time limit of task `id`: its own, or the facade's.
    fn timeout_of(&self, id: u64) -> Option<Duration> {
        self.timeouts.get(&id).copied().or(self.cfg.task_timeout)
    }

    /// Whether the supervisor's work is over (and, for a collect, replies).
    fn finished(&mut self) -> bool {
        if self.live.is_some() {
            return false;
        }
        if self.shutting_down {
            return true;
        }
        let ready = self
            .collect
            .as_ref()
            .is_some_and(|c| self.received >= c.expected && self.queue.is_empty());
        if !ready {
            return false;
        }
        let Some(CollectRequest { reply, .. }) = self.collect.take() else {
            return false;
        };
        let mut outcomes = std::mem::take(&mut self.outcomes).into_iter();
        let records = std::mem::take(&mut self.entries)
            .into_iter()
            .enumerate()
            .filter_map(|(id, entry)| {
                let outcome = outcomes.next().flatten();
                let entry = entry?;
                Some(TaskRecord {
                    id: TaskId(id as u64),
                    task: entry.task,
                    outcome: outcome.unwrap_or_else(|| {
                        Outcome::NotRun(NotRunReason::Cancelled(
                            "no outcome was recorded (a bug in worker-facade)".into(),
                        ))
                    }),
                })
            })
            .collect();
        let _ = reply.send(records);
        true
    }
}

/// The writer thread: writes each batch whole, in order, blocking while the
/// worker does not read. `MSG_NOSIGNAL`: a dead worker is an error here, never
/// a SIGPIPE for the host program.
fn write_frames<O>(
    stream: UnixStream,
    batches: Receiver<Vec<u8>>,
    pending: &AtomicUsize,
    generation: u64,
    events: Sender<Event<O>>,
) {
    let fd = stream.as_raw_fd();
    for batch in batches {
        let mut written = 0;
        while written < batch.len() {
            match send(fd, &batch[written..], MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => written += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    let _ = events.send(Event::WriterFailed { generation });
                    return;
                }
            }
        }
        pending.fetch_sub(1, Ordering::Release);
    }
}

/// The reader thread: decodes the worker's frames into events until the
/// socket ends or breaks the protocol.
///
/// Events are sent in one batch per `read` of the socket, not one per frame.
/// A STARTED is held back while the next frame is already buffered: when
/// that frame is the same task's result, the STARTED is dropped, halving the
/// events for short tasks. Everything is sent before the reader blocks, so a
/// crash or a timeout still finds the task marked as running.
fn read_results<O: serde::de::DeserializeOwned>(
    stream: UnixStream,
    max: u32,
    generation: u64,
    events: Sender<Event<O>>,
) {
    let mut reader = FrameReader::new(stream, max);
    let mut started: Option<u64> = None;
    let mut batch: Vec<Event<O>> = Vec::new();
    let error = loop {
        if !reader.has_buffered_frame() {
            if let Some(id) = started.take() {
                batch.push(Event::Started { generation, id });
            }
            if !batch.is_empty() && !send_batch(&events, &mut batch) {
                break None;
            }
        }
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(e) => break Some(crate::worker::error_chain(&e)),
        };
        let (id, payload) = match frame.id_and_payload() {
            Ok(parts) => parts,
            Err(e) => break Some(e.to_string()),
        };
        if let Some(held) = started.take() {
            let answers_held = held == id && matches!(frame.kind, KIND_OK | KIND_ERR);
            if !answers_held {
                batch.push(Event::Started {
                    generation,
                    id: held,
                });
            }
        }
        match frame.kind {
            KIND_STARTED if payload.is_empty() => started = Some(id),
            KIND_OK => match codec::decode::<O>(payload) {
                Ok(output) => batch.push(Event::Done {
                    generation,
                    id,
                    result: Ok(output),
                }),
                Err(e) => {
                    let why = format!(
                        "the worker's result could not be decoded: {}",
                        crate::worker::error_chain(&e)
                    );
                    batch.push(Event::Done {
                        generation,
                        id,
                        result: Err(why.clone()),
                    });
                    break Some(why);
                }
            },
            KIND_ERR => batch.push(Event::Done {
                generation,
                id,
                result: Err(String::from_utf8_lossy(payload).into_owned()),
            }),
            other => break Some(format!("unexpected message kind {other:#04x}")),
        }
        reader.shrink();
    };
    if let Some(id) = started {
        batch.push(Event::Started { generation, id });
    }
    batch.push(Event::ReaderClosed { generation, error });
    send_batch(&events, &mut batch);
}

/// Sends the batched events (one event alone, unwrapped). `false` when the
/// supervisor is gone.
fn send_batch<O>(events: &Sender<Event<O>>, batch: &mut Vec<Event<O>>) -> bool {
    let event = if batch.len() == 1 {
        batch.pop()
    } else {
        Some(Event::Batch(std::mem::take(batch)))
    };
    match event {
        Some(event) => events.send(event).is_ok(),
        None => true,
    }
}
