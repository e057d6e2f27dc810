//! The engine: one thread per facade, whatever the number of workers.
//!
//! It waits in one `epoll_wait` on everything it owns — each worker's
//! socket, pidfd and output pipes, and an eventfd for callers — with the
//! nearest deadline as the timeout. Spawning and the handshake are phases of
//! a worker's [`link::Link`], never a blocking call here. The ledger and the
//! policies are plain data beside it. See `README.md` in this folder for how
//! a task and a death flow through it.

mod inbox;
mod lane;
use lane::{Direct, Seen};
mod ledger;
mod link;
mod outbound;
mod policy;
mod queue;
mod spans;

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use inbox::{Batch, Inbox, Mail};
pub(crate) use inbox::{Gather, LARGE_FRAME, Outbox, inbox};
pub(crate) use ledger::Entry;
use ledger::Ledger;
pub(crate) use ledger::{Notify, Reclaimed};
use link::{Cause, End, HandshakeFailure, Link, LinkTasks, Said, Starts, StopWhy};
use policy::{Refused, RestartBudget};
use queue::{Queue, Taken};

use crate::codec;
use crate::config::{Config, RestartPolicy};
use crate::console::{Sink, StderrQueue};
use crate::error::SpawnError;
use crate::stats::StatsCells;
use crate::task::{
    CancelReason, CrashInfo, CrashReason, NotRunReason, Outcome, Task, TaskRecord,
    UnavailableReason,
};
use crate::trace;

/// Tasks sent ahead to one worker and not yet answered, at most, with one
/// worker: keeps the socket busy without moving the whole queue into kernel
/// buffers, so a respawn has little to resend.
const WINDOW: usize = 1024;
/// The same with several workers, for tasks that take a few microseconds:
/// enough to keep each worker busy between two turns of the loop.
const SHARED_WINDOW: usize = 64;
/// With several workers, a worker is sent no more than about this much work
/// ahead (by the tasks' average run time), and nothing more once its
/// running task has run this long: tasks go to whichever worker is free
/// rather than queueing behind a slow one.
const AHEAD: Duration = Duration::from_millis(1);
/// Bytes queued for one worker's socket beyond which no more tasks are
/// added (at least one task always goes).
const OUT_LIMIT: usize = 4 << 20;
/// After a worker exits, how long its socket is still read (only reached
/// when something outside its process group holds the socket open).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Commands taken per turn of the loop, to batch the writes they cause.
const COMMAND_BATCH: usize = 4096;
/// Room an emptied tray keeps for the next one, in tasks and frame bytes:
/// a stream's trays, which hold what came in during one turn, vary from a
/// few to some 30,000 tiny tasks on a 2-core machine (1.5 MiB and about
/// 1 MiB). A tray that must grow past them again costs its submitter
/// page faults; an idle facade keeps no more than two of each.
const KEPT_TRAY_TASKS: usize = 1 << 15;
const KEPT_TRAY_BYTES: usize = 1 << 20;
/// How often lines waiting for a stderr that cannot be watched are retried.
const STDERR_RETRY: Duration = Duration::from_millis(5);
/// How long the engine's end waits for stderr to take the last lines.
const STDERR_LAST_WAIT: Duration = Duration::from_millis(100);

/// What callers send the engine, besides tasks (which come through the
/// inbox's tray).
pub(crate) enum Command<T: Task> {
    Collect {
        expected: u64,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Vec<TaskRecord<T>>>,
    },
    /// The facade is being dropped: cancel what has not started, stop the
    /// workers within the grace period.
    Shutdown,
    /// Kill the workers now; nothing runs on this facade again.
    Terminate {
        crash: CrashReason,
        cancel: CancelReason,
    },
    /// Cancel one task: not started, it never will; running, its worker is
    /// stopped and replaced.
    Cancel { id: u64 },
    /// Hand every record no handle takes to this channel, as it settles.
    Completed(flume::Sender<TaskRecord<T>>),
}

/// Where the facade is in its life.
enum Lifecycle<T: Task> {
    Open,
    Collecting {
        expected: u64,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Vec<TaskRecord<T>>>,
    },
    Dropped,
}

/// Why a slot's last worker ended, for the restart and recycle counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Restart,
    Recycle,
}

/// One of the facade's `workers(n)` places.
struct Slot {
    budget: RestartBudget,
    link: Option<Link>,
    /// Set when this place will never run a worker again.
    retired: Option<NotRunReason>,
    generation: u32,
    replace: Option<Replace>,
    /// A worker of this place has completed its handshake (it may have
    /// died since: the start still succeeded).
    handshaken: bool,
}

/// How the engine waits for its stderr to take queued lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StderrWatch {
    /// Nothing queued.
    Idle,
    /// Registered in the epoll for writability.
    Epoll,
    /// Not pollable by epoll: try again at this time.
    Retry(Instant),
}

/// What one epoll token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Waker,
    Stderr,
    Socket,
    Pidfd,
    Pipe(usize),
}

const WAKER_TOKEN: u64 = 0;
const STDERR_TOKEN: u64 = 5;

fn token(slot: usize, generation: u32, source: Source) -> u64 {
    let kind = match source {
        Source::Waker => return WAKER_TOKEN,
        Source::Stderr => return STDERR_TOKEN,
        Source::Socket => 1,
        Source::Pidfd => 2,
        Source::Pipe(0) => 3,
        Source::Pipe(_) => 4,
    };
    ((slot as u64) << 40) | ((generation as u64) << 8) | kind
}

fn untoken(token: u64) -> (usize, u32, Source) {
    if token == WAKER_TOKEN {
        return (0, 0, Source::Waker);
    }
    if token == STDERR_TOKEN {
        return (0, 0, Source::Stderr);
    }
    let source = match token & 0xff {
        1 => Source::Socket,
        2 => Source::Pidfd,
        3 => Source::Pipe(0),
        _ => Source::Pipe(1),
    };
    (
        (token >> 40) as usize,
        ((token >> 8) & 0xffff_ffff) as u32,
        source,
    )
}

pub(crate) struct Engine<T: Task> {
    cfg: Config,
    stats: Arc<StatsCells>,
    inbox: Inbox<T>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    /// What the last wait returned, as (token, flags).
    ready: Vec<(u64, EpollFlags)>,
    ledger: Ledger<T>,
    /// Accepted tasks not yet sent to a worker, in order.
    queue: Queue,
    /// The inbox's tray, swapped in each turn (its buffers reused).
    spare: Batch<T>,
    /// Commands taken in this turn (the buffer reused).
    commands: Vec<Command<T>>,
    received: u64,
    /// Answers read from the workers.
    answers: u64,
    /// `received + answers` when the engine last waited.
    seen_at_wait: u64,
    slots: Vec<Slot>,
    window: usize,
    /// The tasks' average run time (exponentially weighted), for how far
    /// ahead several workers are sent work.
    service: Option<Duration>,
    /// Set when no worker will run again; later tasks get this reason.
    dead: Option<NotRunReason>,
    /// The task a submitter wrote through the lane, while the engine does
    /// not know yet that the whole frame reached the worker.
    lane_task: Option<(Direct, u64)>,
    lifecycle: Lifecycle<T>,
    /// While the first workers start: where the constructor waits.
    startup: Option<oneshot::Sender<Result<(), SpawnError>>>,
    /// The first start-up failure; the others are then stopped.
    startup_failed: Option<SpawnError>,
    /// Workers' lines waiting for this process's stderr.
    stderr: StderrQueue,
    stderr_watch: StderrWatch,
    /// This program's task and output types, checked at each handshake.
    types: Arc<crate::types::Signature>,
    /// How an output from a worker is decoded: without the codec's limit
    /// only when the output's type cannot hold a length (a hostile worker's
    /// bytes then have none to claim).
    output_limit: codec::Limit,
    /// Runs progress callbacks, off the engine.
    progress: crate::progress::ProgressThread,
    /// The facade's task region, which every worker inherits.
    region: Option<Arc<crate::region::TaskRegion>>,
    /// The spans of accepted large tasks whose frames may still be sent.
    spans: spans::Spans,
}

impl<T: Task> Engine<T> {
    pub(crate) fn new(
        cfg: Config,
        inbox: Inbox<T>,
        stats: Arc<StatsCells>,
        region: Option<Arc<crate::region::TaskRegion>>,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            inbox.waker().fd(),
            // Edge-triggered: each write is an event of its own, so the
            // engine never reads the counter back (one system call less
            // per wake; see `Waker::wake`).
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, WAKER_TOKEN),
        )?;
        let n = cfg.workers.max(1);
        let slots = (0..n)
            .map(|_| Slot {
                budget: RestartBudget::new(cfg.restart),
                link: None,
                retired: None,
                generation: 0,
                replace: None,
                handshaken: false,
            })
            .collect();
        let lengths = crate::types::Signature::lengths_of::<T>();
        Ok(Engine {
            window: if n == 1 { WINDOW } else { SHARED_WINDOW },
            service: None,
            cfg,
            stats,
            inbox,
            epoll,
            events: vec![EpollEvent::empty(); 64],
            ready: Vec::with_capacity(64),
            ledger: Ledger::new(),
            queue: Queue::default(),
            spare: Batch::default(),
            commands: Vec::new(),
            received: 0,
            answers: 0,
            seen_at_wait: 0,
            slots,
            dead: None,
            lane_task: None,
            lifecycle: Lifecycle::Open,
            startup: None,
            startup_failed: None,
            stderr: StderrQueue::default(),
            stderr_watch: StderrWatch::Idle,
            types: crate::types::Signature::of::<T>(),
            output_limit: lengths.output.untrusted(),
            progress: crate::progress::ProgressThread::default(),
            region,
            spans: spans::Spans::default(),
        })
    }

    /// Starts every worker and runs until the facade is collected or
    /// dropped. `ready` hears once every first worker completed its
    /// handshake, or why one could not (the others are then killed and
    /// reaped before it hears).
    pub(crate) fn run(mut self, ready: oneshot::Sender<Result<(), SpawnError>>) {
        crate::sys::block_sigpipe_in_this_thread();
        self.startup = Some(ready);
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if let Err(e) = self.spawn_into(slot, now) {
                self.fail_startup(e, now);
                break;
            }
        }
        while self.turn() {}
    }

    /// One turn of the loop; `false` once the engine's work is over.
    fn turn(&mut self) -> bool {
        let now = Instant::now();
        self.read_inbox(now);
        self.ledger.reclaim();
        self.on_deadlines(now);
        self.settle_links(now);
        if !self.check_startup() {
            return false;
        }
        self.ensure_workers(now);
        self.dispatch(now);
        self.flush_all();
        self.flush_stderr(now);
        if self.finished() {
            self.last_stderr();
            return false;
        }
        self.wait();
        true
    }

    fn read_inbox(&mut self, now: Instant) {
        if self.startup.is_some() {
            return; // the constructor has not returned: nobody can send yet
        }
        // Commands first, then the tasks: a command about a task was sent
        // after the task was in the tray, so the task is taken with it.
        let mut commands = std::mem::take(&mut self.commands);
        let mut closed = false;
        for _ in 0..COMMAND_BATCH {
            match self.inbox.try_recv() {
                Mail::Command(cmd) => commands.push(cmd),
                Mail::Empty => break,
                Mail::Closed => {
                    closed = true;
                    break;
                }
            }
        }
        // The tasks a command may be about must be taken, even if a
        // submitter holds the tray this instant.
        self.take_tasks(!commands.is_empty() || closed);
        for cmd in commands.drain(..) {
            self.on_command(cmd, now);
        }
        self.commands = commands;
        if closed {
            self.on_drop(now);
        }
    }

    /// Accepts the tasks submitted since the last turn (`wait`: even if
    /// that means waiting for a submitter to let go of the tray).
    fn take_tasks(&mut self, wait: bool) {
        let mut batch = std::mem::take(&mut self.spare);
        self.inbox.take(&mut batch, wait);
        let Batch { frames, tasks } = &mut batch;
        let mut at = 0;
        for sub in tasks.drain(..) {
            self.received += 1;
            let (id, entry, rare) = sub.into_parts();
            let frame_at = at;
            if rare.own_frame.is_none() {
                at += crate::wire::own_frame_len(frames.get(at..).unwrap_or_default());
            }
            if !self.ledger.accept(id, entry) {
                continue;
            }
            if let Some(reason) = &self.dead {
                let reason = reason.clone();
                self.finish(id, Outcome::NotRun(reason));
                continue;
            }
            if let Some(span) = rare.span {
                self.spans.keep(id, span);
            }
            match (rare.own_frame, rare.direct) {
                (Some(frame), _) => self.queue.push_back_owned(frame),
                (None, Some(direct)) => {
                    let frame = &frames[frame_at..at];
                    match self
                        .slots
                        .get_mut(direct.slot)
                        .and_then(|s| s.link.as_mut())
                    {
                        Some(link) if link.generation == direct.generation => {
                            link.sent_directly(id, frame);
                            self.lane_task = Some((direct, id));
                        }
                        // Not reached: the lane closes before a link can
                        // change. Should it be, the task is sent again.
                        _ => self.queue.push_back(frame),
                    }
                }
                (None, None) => self.queue.push_back(&frames[frame_at..at]),
            }
        }
        frames.clear();
        // A burst's buffers are not kept for ever, but a stream's are: a
        // tray grown from nothing again costs its submitter page faults.
        frames.shrink_to(KEPT_TRAY_BYTES);
        tasks.shrink_to(KEPT_TRAY_TASKS);
        self.spare = batch;
    }

    fn on_command(&mut self, cmd: Command<T>, now: Instant) {
        match cmd {
            Command::Collect {
                expected,
                deadline,
                reply,
            } => {
                if matches!(self.lifecycle, Lifecycle::Open) {
                    self.lifecycle = Lifecycle::Collecting {
                        expected,
                        deadline,
                        reply,
                    };
                }
            }
            Command::Shutdown => self.on_drop(now),
            Command::Cancel { id } => self.cancel(id, now),
            Command::Completed(sink) => self.ledger.set_sink(sink),
            Command::Terminate { crash, cancel } => {
                self.set_dead(NotRunReason::Cancelled(cancel));
                for slot in &mut self.slots {
                    if let Some(link) = slot.link.as_mut() {
                        link.end(Cause::Parent(crash.clone()));
                    }
                }
            }
        }
    }

    /// Cancels task `id`: taken out of the queue; or, held by a worker, the
    /// worker is asked to skip it; or, running, its worker is stopped
    /// (SIGTERM, then SIGKILL after `kill_grace`) and replaced, uncharged.
    fn cancel(&mut self, id: u64, now: Instant) {
        if self.ledger.get(id).is_none() {
            return; // settled already, or never accepted
        }
        let Some(link) = self
            .slots
            .iter_mut()
            .filter_map(|s| s.link.as_mut())
            .find(|l| l.inflight.contains(&id))
        else {
            // Queued: its frame stays, skipped when its turn comes.
            self.finish(
                id,
                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)),
            );
            return;
        };
        if link.running.is_some_and(|(running, _)| running == id) {
            let kill_at = now.checked_add(self.cfg.term_grace);
            link.end_gently(Cause::Cancelled, kill_at);
            self.finish(
                id,
                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)),
            );
        } else {
            // Its STARTED must wake us from now on: a start that crosses
            // this request is otherwise seen only with the task's result.
            link.watch_starts(Starts::WhileCancelled);
            link.cancel_task(id);
            // If the worker starts it before it reads the request.
            self.ledger.mark_cancelled(id);
        }
    }

    /// The facade is gone: nothing new will come, nothing queued will start.
    fn on_drop(&mut self, now: Instant) {
        if matches!(self.lifecycle, Lifecycle::Dropped) {
            return;
        }
        // Tasks sent before the drop are already in the tray.
        self.take_tasks(true);
        self.lifecycle = Lifecycle::Dropped;
        self.set_dead(NotRunReason::Cancelled(CancelReason::FacadeDropped));
        let grace = self.cfg.grace;
        for slot in &mut self.slots {
            if let Some(link) = slot.link.as_mut() {
                link.stop(StopWhy::Drop, now, grace);
            }
        }
    }

    fn set_dead(&mut self, reason: NotRunReason) {
        for id in self.queue.drain_ids() {
            self.spans.forget(id);
            self.finish(id, Outcome::NotRun(reason.clone()));
        }
        self.dead.get_or_insert(reason);
    }

    /// Records a task's one outcome (a second one is ignored).
    fn finish(&mut self, id: u64, outcome: Outcome<T::Output>) {
        settle(&mut self.ledger, &self.stats, id, outcome);
    }

    fn on_deadlines(&mut self, now: Instant) {
        if let Lifecycle::Collecting {
            deadline: Some(deadline),
            ..
        } = &self.lifecycle
        {
            if now >= *deadline && self.dead.is_none() {
                self.set_dead(NotRunReason::DeadlineExpired);
                for slot in &mut self.slots {
                    if let Some(link) = slot.link.as_mut() {
                        link.end(Cause::Parent(CrashReason::CollectDeadline));
                    }
                }
            }
        }
        let mut timed_out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(link) = slot.link.as_mut() else {
                continue;
            };
            link.on_deadline(now, DRAIN_LIMIT);
            if link.is_exited() {
                // Reaped (see the Pidfd event): no longer a running pid.
                self.stats.set_pid(i, 0);
            }
            bury(&self.epoll, link);
            if let Some((id, limit)) = running_over_limit(link, &self.ledger, &self.cfg, now) {
                timed_out.push((i, id, limit));
            }
        }
        for (i, id, limit) in timed_out {
            self.finish(id, Outcome::TimedOut(limit));
            let kill_at = now.checked_add(self.cfg.term_grace);
            if let Some(link) = self.slots[i].link.as_mut() {
                trace::task_timed_out(i, link.pid(), id, limit);
                link.end_gently(
                    Cause::Parent(CrashReason::TaskTimedOut {
                        task: crate::task::TaskId(id),
                        limit,
                    }),
                    kill_at,
                );
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
        if let Lifecycle::Collecting { deadline, .. } = &self.lifecycle {
            if self.dead.is_none() {
                consider(*deadline);
            }
        }
        for link in self.slots.iter().filter_map(|s| s.link.as_ref()) {
            consider(link.deadline());
            consider(task_deadline(link, &self.ledger, &self.cfg));
        }
        if let StderrWatch::Retry(at) = self.stderr_watch {
            consider(Some(at));
        }
        next
    }

    /// Writes the queued lines stderr takes now, and watches it for the
    /// rest.
    fn flush_stderr(&mut self, now: Instant) {
        if let StderrWatch::Retry(at) = self.stderr_watch {
            if now < at {
                return;
            }
        }
        self.stderr.flush(&self.stats.output_dropped);
        let stderr = std::io::stderr();
        let fd = stderr.as_fd();
        self.stderr_watch = match (self.stderr.is_empty(), self.stderr_watch) {
            (true, StderrWatch::Epoll) => {
                let _ = self.epoll.delete(fd);
                StderrWatch::Idle
            }
            (true, _) => StderrWatch::Idle,
            (false, StderrWatch::Epoll) => StderrWatch::Epoll,
            (false, _) => {
                let event = EpollEvent::new(EpollFlags::EPOLLOUT, STDERR_TOKEN);
                match self.epoll.add(fd, event) {
                    Ok(()) => StderrWatch::Epoll,
                    Err(_) => StderrWatch::Retry(now + STDERR_RETRY),
                }
            }
        };
    }

    /// At the end: gives stderr a moment to take the last lines, then
    /// drops (and counts) what is left.
    fn last_stderr(&mut self) {
        let until = Instant::now() + STDERR_LAST_WAIT;
        while !self.stderr.is_empty() && Instant::now() < until {
            self.stderr.flush(&self.stats.output_dropped);
            if self.stderr.is_empty() {
                break;
            }
            let stderr = std::io::stderr();
            let mut fds = [nix::poll::PollFd::new(
                stderr.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10u8));
        }
        if self.stderr_watch == StderrWatch::Epoll {
            let _ = self.epoll.delete(std::io::stderr().as_fd());
        }
        self.stderr_watch = StderrWatch::Idle;
        let left = self.stderr.clear();
        self.stats.output_dropped.fetch_add(left, Relaxed);
    }

    /// Waits for the next event or deadline, and handles what came.
    fn wait(&mut self) {
        let timeout = match self.next_deadline() {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Round up: waking a little early would spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            }
            None => EpollTimeout::NONE,
        };
        // While tasks or answers stream, look again at once rather than
        // sleep: every submitter or worker that finds the engine parked pays
        // a system call to wake it. One turn with nothing new, and it parks.
        // (One task or answer is a round trip, not a stream: sleeping at
        // once lets the worker have the CPU they may share.)
        let seen = self.received + self.answers;
        let streaming = seen > self.seen_at_wait + 1;
        self.seen_at_wait = seen;
        // Workers wake a parked parent only: say so, and do not sleep if a
        // ring got news meanwhile.
        let mut news = streaming;
        if !streaming {
            // Idle now, or nearly: a burst's table goes (a stream's, never
            // empty while large, stays). Not while a collect waits for its
            // workers to exit: it ends the engine, and the table with it,
            // after the reply.
            if matches!(self.lifecycle, Lifecycle::Open) {
                self.ledger.release_room();
            }
            for slot in &self.slots {
                if let Some(link) = &slot.link {
                    news |= link.park();
                }
            }
        }
        let timeout = if !news && self.inbox.park() {
            self.open_lane();
            timeout
        } else {
            EpollTimeout::ZERO
        };
        let n = loop {
            match self.epoll.wait(&mut self.events, timeout) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break 0,
            }
        };
        // Before any event is handled: a task a submitter wrote to a worker
        // is in the ledger before that worker's answer is read.
        match self.inbox.lane().observe() {
            Seen::Unused => {}
            seen => {
                self.take_tasks(true);
                match seen {
                    Seen::Whole => self.lane_written(None),
                    Seen::Short(n) => self.lane_written(Some(n)),
                    Seen::Claimed | Seen::Unused => {}
                }
            }
        }
        let now = Instant::now();
        // Copied out (the handlers need `self`), into a buffer kept across
        // turns: no allocation per wait.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events[..n].iter().map(|e| (e.data(), e.events())));
        for &(data, flags) in &ready {
            let (slot, generation, source) = untoken(data);
            match source {
                // Woken by a caller: this turn looks at the inbox.
                Source::Waker => {}
                // Writable again: the next turn's flush writes.
                Source::Stderr => {}
                _ => self.on_ready(slot, generation, source, flags, now),
            }
        }
        self.ready = ready;
        self.inbox.unpark();
        // Every ring is drained on every turn, woken or not: a busy parent
        // is never woken, so it must look.
        for i in 0..self.slots.len() {
            let Some(link) = &self.slots[i].link else {
                continue;
            };
            link.unpark();
            if link.ring_has_data() {
                let generation = link.generation;
                self.on_ready(i, generation, Source::Socket, EpollFlags::EPOLLIN, now);
            }
        }
        self.check_lane_task();
        let Engine { slots, ledger, .. } = self;
        for link in slots.iter_mut().filter_map(|s| s.link.as_mut()) {
            link.settle_starts(|inflight| {
                inflight
                    .iter()
                    .any(|id| ledger.get(*id).is_some_and(|e| e.cancelled()))
            });
        }
    }

    /// The submitter of the task written through the lane said how its
    /// write went: whole, or `short` of it (then the rest is written first).
    fn lane_written(&mut self, short: Option<usize>) {
        let Some((direct, _)) = self.lane_task.take() else {
            return;
        };
        if let Some(link) = self.slots[direct.slot].link.as_mut() {
            if link.generation == direct.generation {
                link.submitter_done(short);
            }
        }
    }

    /// Settles the lane's task once its frame is known whole without its
    /// submitter's word: the worker said something about it (so it read
    /// it), or the worker is gone (then it no longer matters).
    fn check_lane_task(&mut self) {
        let Some((direct, id)) = self.lane_task else {
            return;
        };
        let settled = match self.slots[direct.slot].link.as_mut() {
            Some(link) if link.generation == direct.generation => {
                let read =
                    link.running.is_some_and(|(r, _)| r == id) || !link.inflight.contains(&id);
                // A stopping worker's STOP waits for the submitter's word:
                // only a worker that can no longer read ends the wait.
                if read || link.socket().is_none() || link.is_exited() {
                    link.submitter_done(None);
                    true
                } else {
                    false
                }
            }
            _ => true,
        };
        if settled {
            self.inbox.lane().settle();
            self.lane_task = None;
        }
    }

    /// Opens the direct lane (see [`lane`]) to a worker that holds no task,
    /// when nothing else waits and no task's time would go unwatched.
    fn open_lane(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Open)
            || self.lane_task.is_some()
            || self.startup.is_some()
            || self.dead.is_some()
            || !self.queue.is_empty()
            || self.cfg.task_timeout.is_some()
            || self.cfg.max_tasks_per_worker.is_some()
        {
            return;
        }
        let idle = self.slots.iter_mut().enumerate().find_map(|(i, slot)| {
            let link = slot.link.as_mut()?;
            let idle = link.takes_tasks() && link.inflight.is_empty() && link.unsent() == 0;
            let direct = Direct {
                slot: i,
                generation: link.generation,
            };
            Some((direct, link.lane_socket().filter(|_| idle)?))
        });
        if let Some((direct, socket)) = idle {
            self.inbox.lane().open(socket, direct);
        }
    }

    fn on_ready(
        &mut self,
        slot: usize,
        generation: u32,
        source: Source,
        flags: EpollFlags,
        now: Instant,
    ) {
        let Engine {
            slots,
            ledger,
            stats,
            cfg,
            epoll,
            stderr,
            service,
            progress,
            answers,
            inbox,
            spans,
            output_limit,
            ..
        } = self;
        let Some((link, budget)) = slots
            .get_mut(slot)
            .and_then(|s| Some((s.link.as_mut()?, &mut s.budget)))
            .filter(|(l, _)| l.generation == generation)
        else {
            return; // from a worker already settled
        };
        match source {
            Source::Socket => {
                if flags.contains(EpollFlags::EPOLLOUT) {
                    link.flush();
                }
                if flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                {
                    let mut settled = Vec::new();
                    let mut ran = Vec::new();
                    let mut started = Vec::new();
                    link.read(now, |tasks, said| {
                        match said {
                            Said::Started(id) | Said::OkStarted(_, _, id) => started.push(id),
                            Said::Progress(id, bytes) => {
                                if tasks.running.is_none_or(|(r, _)| r != id) {
                                    return Err(format!(
                                        "progress for task #{id}, which it is not running"
                                    ));
                                }
                                let cell = ledger.get(id).and_then(|e| e.progress());
                                if let Some(cell) = cell {
                                    if cell.store(bytes) {
                                        progress.notify(cell.clone());
                                    }
                                }
                                return Ok(());
                            }
                            _ => {}
                        }
                        on_said::<T>(tasks, said, &mut settled, &mut ran, *output_limit)
                    });
                    for d in ran {
                        *service = Some(match *service {
                            Some(avg) => (avg * 7 + d) / 8,
                            None => d,
                        });
                    }
                    link.on_answered(now, cfg.grace);
                    if !settled.is_empty() {
                        budget.progress();
                        // Recycled when it grew too large: it answers what
                        // it holds, exits, and is replaced.
                        if let Some(max) = cfg.max_worker_rss {
                            if policy::resident_bytes(link.pid()).is_some_and(|rss| rss > max) {
                                link.stop(StopWhy::Outgrown, now, cfg.grace);
                            }
                        }
                    }
                    *answers += settled.len() as u64;
                    for buffer in link.take_spent() {
                        inbox.recycle(buffer);
                    }
                    for (id, outcome) in settled {
                        // Answered or skipped: the worker reads its frame
                        // no more.
                        spans.forget(id);
                        settle(ledger, stats, id, outcome);
                    }
                    // A task cancelled while its request was on the way,
                    // started anyway (and not finished by now): stop it.
                    for id in started {
                        if ledger.get(id).is_some_and(|e| e.cancelled())
                            && link.running.is_some_and(|(r, _)| r == id)
                        {
                            link.end_gently(Cause::Cancelled, now.checked_add(cfg.term_grace));
                            let outcome =
                                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested));
                            settle(ledger, stats, id, outcome);
                        }
                    }
                }
                rearm_socket(epoll, slot, link);
            }
            Source::Pidfd => {
                // Readable once, for good: from now on the link's own retry
                // deadline looks again if it cannot be reaped yet (a tracer
                // holds the zombie).
                let _ = epoll.delete(link.pidfd());
                link.on_exit(now, DRAIN_LIMIT);
                if link.is_exited() {
                    // Reaped: its pid may be anyone's now. It must not be
                    // published as running while the socket still drains.
                    stats.set_pid(slot, 0);
                }
            }
            Source::Pipe(stream) => {
                let mut sink = Sink {
                    stderr,
                    dropped: &stats.output_dropped,
                };
                let _ = link.console.on_readable(stream, &mut sink);
            }
            Source::Waker | Source::Stderr => {}
        }
        bury(epoll, link);
    }

    /// Settles every worker that has exited and whose socket is drained.
    fn settle_links(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if !self.slots[i]
                .link
                .as_ref()
                .is_some_and(|l| l.is_settleable())
            {
                continue;
            }
            let Some(mut link) = self.slots[i].link.take() else {
                continue;
            };
            self.stats.set_pid(i, 0);
            self.deregister(&mut link);
            let mut sink = Sink {
                stderr: &mut self.stderr,
                dropped: &self.stats.output_dropped,
            };
            let end = link.into_end(&mut sink);
            self.settle_end(i, end, now);
        }
    }

    fn deregister(&self, link: &mut Link) {
        bury(&self.epoll, link);
        if link.watches_exit() {
            let _ = self.epoll.delete(link.pidfd());
        }
        if let Some(fd) = link.socket() {
            let _ = self.epoll.delete(fd);
        }
        for stream in 0..2 {
            if let Some(fd) = link.console.pipe(stream) {
                let _ = self.epoll.delete(fd);
            }
        }
    }

    /// What a worker's end means for its tasks and its place.
    fn settle_end(&mut self, slot: usize, end: End, now: Instant) {
        let reason = match &end.cause {
            Cause::Parent(r) => Some(r.clone()),
            _ => None,
        }
        .or(end.reaped.lost.map(CrashReason::StatusLost))
        .or_else(|| {
            let by_itself = matches!(end.cause, Cause::ByItself);
            let bytes = self.cfg.command.memory_limit?;
            (by_itself && end.alloc_failed).then_some(CrashReason::MemoryLimit { bytes })
        });
        let crash = CrashInfo {
            exit: end.reaped.exit.clone(),
            reason,
            stderr_tail: end.stderr_tail.clone(),
        };
        if !end.ready {
            let err = spawn_error(&self.cfg, &end, crash);
            if !matches!(end.cause, Cause::Unneeded) {
                trace::handshake_failed(slot, end.reaped.exit.pid, &err);
            }
            if self.startup.is_some() {
                self.fail_startup(err, now);
            } else if !matches!(end.cause, Cause::Unneeded) {
                self.retire(
                    slot,
                    NotRunReason::WorkerUnavailable(UnavailableReason::SpawnFailed(
                        crate::worker::error_chain(&err),
                    )),
                );
            }
            return;
        }
        self.slots[slot].handshaken = true;
        // The task it was running crashed it; the ones it never started go
        // to the next worker.
        let mut unstarted = Vec::new();
        let mut frames = Vec::new();
        let mut at = 0;
        for id in end.inflight.iter().copied() {
            let rest = end.frames.get(at..).unwrap_or_default();
            let frame = &rest[..crate::wire::own_frame_len(rest)];
            at += frame.len();
            if self.ledger.get(id).is_none() {
                self.spans.forget(id);
                continue; // settled already (timed out, cancelled)
            }
            if Some(id) == end.running {
                let Some(attempts) = self.ledger.crashed_once_more(id) else {
                    continue;
                };
                if !(policy::retry(attempts, self.cfg.retries) && self.dead.is_none()) {
                    self.spans.forget(id);
                    self.finish(id, Outcome::Crashed(Box::new(crash.clone())));
                    continue;
                }
                // opt-in retry, bounded
            }
            unstarted.push(id);
            frames.extend_from_slice(frame);
        }
        match &end.cause {
            Cause::ByItself => trace::worker_crashed(slot, &crash, end.running, unstarted.len()),
            Cause::Parent(r) if r.is_worker_fault() => {
                trace::worker_crashed(slot, &crash, end.running, unstarted.len())
            }
            Cause::Parent(CrashReason::TaskTimedOut { .. }) => {} // said when it timed out
            Cause::Parent(_) => trace::worker_killed(slot, &crash, end.running),
            _ => {}
        }
        match &self.dead {
            Some(reason) => {
                let reason = reason.clone();
                for id in unstarted {
                    self.spans.forget(id);
                    self.finish(id, Outcome::NotRun(reason.clone()));
                }
            }
            None => self.queue.push_front(frames, unstarted.len()),
        }
        if matches!(end.cause, Cause::Cancelled) {
            // Stopped to cancel its task: replaced, whatever the policy.
            self.slots[slot].replace = Some(Replace::Restart);
            return;
        }
        let clean = matches!(end.cause, Cause::Stopped(_));
        if !clean && !matches!(end.cause, Cause::Unneeded) {
            self.stats.workers_lost.fetch_add(1, Relaxed);
            if let Some(notify) = &self.cfg.on_worker_lost {
                // The pool's code, not the user's; still, never the engine's end.
                let _ = catch_unwind(AssertUnwindSafe(|| (notify.0)()));
            }
        }
        if clean {
            if matches!(
                end.cause,
                Cause::Stopped(StopWhy::Recycle | StopWhy::Outgrown)
            ) {
                self.slots[slot].replace = Some(Replace::Recycle);
            }
            return;
        }
        if self.dead.is_some() || matches!(end.cause, Cause::Unneeded) {
            return;
        }
        let charge = match &end.cause {
            Cause::ByItself => true,
            Cause::Parent(r) => r.is_worker_fault(),
            _ => false,
        };
        if self.cfg.restart == RestartPolicy::Never {
            self.retire(slot, NotRunReason::WorkerDied(Box::new(crash)));
            return;
        }
        if charge {
            match self.slots[slot].budget.charge(now) {
                Ok(()) => {}
                Err(Refused::Never) => {
                    self.retire(slot, NotRunReason::WorkerDied(Box::new(crash)));
                    return;
                }
                Err(Refused::NoProgress { deaths }) => {
                    trace::restart_budget_exhausted(
                        slot,
                        &format_args!("{deaths} deaths in a row with no task answered"),
                        self.last_place(slot),
                    );
                    self.retire(
                        slot,
                        NotRunReason::WorkerUnavailable(UnavailableReason::NoProgress {
                            deaths,
                            last_crash: Box::new(crash),
                        }),
                    );
                    return;
                }
                Err(Refused::Exhausted {
                    max_restarts,
                    window,
                }) => {
                    trace::restart_budget_exhausted(
                        slot,
                        &format_args!("{max_restarts} restarts within {window:?}"),
                        self.last_place(slot),
                    );
                    self.retire(
                        slot,
                        NotRunReason::WorkerUnavailable(
                            UnavailableReason::RestartBudgetExhausted {
                                max_restarts,
                                window,
                                last_crash: Box::new(crash),
                            },
                        ),
                    );
                    return;
                }
            }
        }
        self.slots[slot].replace = Some(Replace::Restart);
    }

    /// This place never runs a worker again; when no place is left, no task
    /// will run.
    fn retire(&mut self, slot: usize, reason: NotRunReason) {
        self.slots[slot].retired.get_or_insert(reason.clone());
        if self.slots.iter().all(|s| s.retired.is_some()) {
            self.stats.gave_up.store(true, Relaxed);
            trace::facade_gave_up(&reason);
            self.set_dead(reason);
        }
    }

    /// Whether retiring `slot` leaves no place that may run a worker.
    fn last_place(&self, slot: usize) -> bool {
        self.slots
            .iter()
            .enumerate()
            .all(|(i, s)| i == slot || s.retired.is_some())
    }

    fn fail_startup(&mut self, err: SpawnError, _now: Instant) {
        if self.startup_failed.is_none() {
            self.startup_failed = Some(err);
        }
        for slot in &mut self.slots {
            if let Some(link) = slot.link.as_mut() {
                link.end(Cause::Unneeded);
            }
        }
    }

    /// During start-up: answers the constructor once every worker is ready,
    /// or once every worker is gone after a failure. `false` when the
    /// engine must end (start-up failed).
    fn check_startup(&mut self) -> bool {
        if self.startup.is_none() {
            return true;
        }
        if self.startup_failed.is_some() {
            if self.slots.iter().any(|s| s.link.is_some()) {
                return true; // still reaping the others
            }
            if let (Some(ready), Some(err)) = (self.startup.take(), self.startup_failed.take()) {
                let _ = ready.send(Err(err));
            }
            return false;
        }
        if self.startup.as_ref().is_some_and(|r| r.is_closed()) {
            // Nobody waits for the start (a dropped `spawn_async`).
            self.abandon_startup();
            return true;
        }
        // A worker that completed its handshake and died before this turn
        // (settled already, its place maybe retired) counts as started: the
        // constructor must not wait for it for ever.
        let all_ready = self
            .slots
            .iter()
            .all(|s| s.handshaken || s.link.as_ref().is_some_and(|l| l.ready_at.is_some()));
        if all_ready {
            if let Some(ready) = self.startup.take() {
                if ready.send(Ok(())).is_err() {
                    // The constructor is gone (it panicked, or its future
                    // was dropped): stop.
                    self.abandon_startup();
                }
            }
        }
        true
    }

    /// The constructor gave up: the workers are ended, unneeded, and the
    /// engine ends once they are reaped.
    fn abandon_startup(&mut self) {
        self.startup = None;
        self.lifecycle = Lifecycle::Dropped;
        self.set_dead(NotRunReason::Cancelled(CancelReason::FacadeDropped));
        for slot in &mut self.slots {
            if let Some(link) = slot.link.as_mut() {
                link.end(Cause::Unneeded);
            }
        }
    }

    fn spawn_into(&mut self, slot: usize, now: Instant) -> Result<(), SpawnError> {
        let tasks = self.region.as_ref().map(|r| r.fd());
        let spawned = crate::process::spawn(&self.cfg.command, tasks)?;
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        let mut link = Link::new(
            spawned,
            generation,
            self.cfg.command.max_frame,
            self.cfg.command.output.clone(),
            now.checked_add(self.cfg.command.handshake_timeout),
            self.types.clone(),
        );
        // When a task started matters at once: a time limit runs from it,
        // and with several workers, dispatch sends nothing ahead to a
        // worker whose task has run for a while.
        if self.cfg.task_timeout.is_some() || self.slots.len() > 1 {
            link.watch_starts(Starts::Always);
        }
        let resource = |source: nix::errno::Errno| SpawnError::Resource {
            what: "event registration",
            path: self.cfg.command.program.clone(),
            source: source.into(),
        };
        let add = |fd: BorrowedFd<'_>, source: Source| {
            self.epoll.add(
                fd,
                EpollEvent::new(EpollFlags::EPOLLIN, token(slot, generation, source)),
            )
        };
        add(link.pidfd(), Source::Pidfd).map_err(resource)?;
        if let Some(fd) = link.socket() {
            add(fd, Source::Socket).map_err(resource)?;
        }
        for stream in 0..2 {
            if let Some(fd) = link.console.pipe(stream) {
                add(fd, Source::Pipe(stream)).map_err(resource)?;
            }
        }
        self.stats.set_pid(slot, link.pid());
        trace::worker_spawned(slot, link.pid(), &self.cfg.command.program);
        match self.slots[slot].replace.take() {
            Some(Replace::Restart) => {
                let n = self.stats.restarts.fetch_add(1, Relaxed) + 1;
                trace::worker_restarted(slot, link.pid(), n);
            }
            Some(Replace::Recycle) => {
                let n = self.stats.recycles.fetch_add(1, Relaxed) + 1;
                trace::worker_recycled(slot, link.pid(), n);
            }
            None => {}
        }
        self.slots[slot].link = Some(link);
        Ok(())
    }

    /// Starts a replacement in every free place while work is waiting.
    fn ensure_workers(&mut self, now: Instant) {
        let (ledger, spans) = (&self.ledger, &mut self.spans);
        self.queue
            .prune(|id| ledger.get(id).is_some(), |id| spans.forget(id));
        if self.dead.is_some() || self.queue.is_empty() {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.link.is_some() || s.retired.is_some() {
                continue;
            }
            if let Err(err) = self.spawn_into(slot, now) {
                self.retire(
                    slot,
                    NotRunReason::WorkerUnavailable(UnavailableReason::SpawnFailed(
                        crate::worker::error_chain(&err),
                    )),
                );
            }
            if self.dead.is_some() {
                return;
            }
        }
    }

    /// Hands queued tasks to free workers, one at a time in turn, up to each
    /// one's window; then the terminator once nothing else will come.
    fn dispatch(&mut self, now: Instant) {
        let grace = self.cfg.grace;
        let per_worker = self.cfg.max_tasks_per_worker;
        let shared = self.slots.len() > 1;
        // With several workers: about `AHEAD` of work per worker, at least
        // the one it runs; unknown run times count as long.
        let ahead = match self.service {
            Some(avg) if shared => {
                let per_task = avg.max(Duration::from_micros(1));
                (AHEAD.as_nanos() / per_task.as_nanos()).clamp(1, self.window as u128) as usize
            }
            _ if shared => 1,
            _ => self.window,
        };
        // Each task goes to the least loaded worker that may take it, so an
        // idle worker is always served before work is sent ahead to a busy
        // one (a slow task does not gather a queue while others wait).
        while let Some((id, frame_len)) = self.queue.front() {
            match self.ledger.get(id) {
                None => {
                    self.queue.pop_front(); // cancelled while it waited
                    self.spans.forget(id);
                    continue;
                }
                // Cancelled while a worker held it, and back here because
                // that worker died before it started: it never runs.
                Some(entry) if entry.cancelled() => {
                    self.queue.pop_front();
                    self.spans.forget(id);
                    self.finish(
                        id,
                        Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)),
                    );
                    continue;
                }
                Some(_) => {}
            }
            let mut best: Option<(usize, usize)> = None;
            for (i, slot) in self.slots.iter().enumerate() {
                let Some(link) = slot.link.as_ref() else {
                    continue;
                };
                let window = match link.running {
                    Some((_, started))
                        if shared && now.saturating_duration_since(started) > AHEAD =>
                    {
                        1
                    }
                    _ => ahead,
                };
                let load = link.inflight.len();
                if !link.takes_tasks()
                    || load >= window
                    || (link.unsent() >= OUT_LIMIT && link.unsent() > 0)
                    // Little enough sent ahead that a CANCEL behind it is
                    // seen by the worker before any of it starts.
                    || (link.ahead_bytes > 0
                        && link.ahead_bytes + frame_len > link::AHEAD_BYTES)
                {
                    continue;
                }
                if best.is_none_or(|(_, least)| load < least) {
                    best = Some((i, load));
                }
            }
            let Some((i, _)) = best else {
                break;
            };
            let Some(link) = self.slots[i].link.as_mut() else {
                break;
            };
            let Some(taken) = self.queue.pop_front() else {
                break;
            };
            let owned;
            let frame = match taken {
                Taken::Owned(v) if v.len() >= outbound::SHARED_FRAME => {
                    outbound::Frame::Large(Arc::new(v))
                }
                Taken::Owned(v) => {
                    owned = v;
                    outbound::Frame::Small(&owned)
                }
                Taken::Borrowed(b) => outbound::Frame::Small(b),
            };
            if self.ledger.get(id).is_some_and(|e| e.timeout().is_some()) {
                link.watch_starts(Starts::Always);
            }
            link.send_task(id, frame);
            if policy::recycle_due(link.sent, per_worker) {
                link.stop(StopWhy::Recycle, now, grace);
            }
        }
        let collecting = match &self.lifecycle {
            Lifecycle::Collecting { expected, .. } => self.received >= *expected,
            _ => false,
        };
        if collecting && self.queue.is_empty() {
            for slot in &mut self.slots {
                if let Some(link) = slot.link.as_mut() {
                    link.stop(StopWhy::Collect, now, grace);
                }
            }
        }
    }

    fn flush_all(&mut self) {
        let Engine { slots, epoll, .. } = self;
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(link) = slot.link.as_mut() {
                if link.unsent() > 0 {
                    link.flush();
                    rearm_socket(epoll, i, link);
                }
            }
        }
    }

    /// Whether the engine's work is over (and, for a collect, replies).
    fn finished(&mut self) -> bool {
        if self.startup.is_some() || self.slots.iter().any(|s| s.link.is_some()) {
            return false;
        }
        match &self.lifecycle {
            Lifecycle::Open => false,
            Lifecycle::Dropped => true,
            Lifecycle::Collecting { expected, .. } => {
                if self.received < *expected || !self.queue.is_empty() {
                    return false;
                }
                let records = self.ledger.take_records();
                if let Lifecycle::Collecting { reply, .. } =
                    std::mem::replace(&mut self.lifecycle, Lifecycle::Dropped)
                {
                    let _ = reply.send(records);
                }
                true
            }
        }
    }
}

impl<T: Task> Drop for Engine<T> {
    /// A panic in the engine (a bug) still leaves no process behind: every
    /// link's `Drop` kills and reaps its worker. Submissions are refused
    /// from now on, and the lane lets go of any socket it names.
    fn drop(&mut self) {
        drop(self.inbox.close());
        self.inbox.lane().settle();
        for slot in &mut self.slots {
            slot.link = None;
        }
    }
}

/// Records a task's one outcome in the ledger and counts it (a second one
/// is ignored, and not counted).
fn settle<T: Task>(
    ledger: &mut Ledger<T>,
    stats: &StatsCells,
    id: u64,
    outcome: Outcome<T::Output>,
) {
    // Counted before the outcome reaches its handle: stats read after a
    // `wait` returned count it.
    ledger.settle_with(id, outcome, |outcome| {
        stats.counter(outcome).fetch_add(1, Relaxed);
    });
}

/// Takes the descriptors a link closed out of the epoll set, then drops
/// them. (Dropped while registered, a descriptor a forked copy of this
/// process still holds would stay registered, and ready, forever.)
fn bury(epoll: &Epoll, link: &mut Link) {
    let closed: Vec<_> = std::mem::take(&mut link.graveyard)
        .into_iter()
        .chain(link.console.take_closed())
        .collect();
    for fd in closed {
        let _ = epoll.delete(&fd);
    }
}

/// Registers the socket for writability only while bytes wait for it.
fn rearm_socket(epoll: &Epoll, slot: usize, link: &mut Link) {
    // Not while a submitter writes through the lane: the engine could not
    // write anyway, and a writable socket would wake it at once, again.
    let want = link.unsent() > 0 && link.engine_writes();
    if want == link.out_armed {
        return;
    }
    let Some(fd) = link.socket() else {
        return;
    };
    let mut flags = EpollFlags::EPOLLIN;
    if want {
        flags |= EpollFlags::EPOLLOUT;
    }
    let mut event = EpollEvent::new(flags, token(slot, link.generation, Source::Socket));
    if epoll.modify(fd, &mut event).is_ok() {
        link.out_armed = want;
    }
}

/// Applies one message of a worker to its tasks; the outcomes it settles go
/// to `settled`.
fn on_said<T: Task>(
    tasks: &mut LinkTasks<'_>,
    said: Said<'_>,
    settled: &mut Vec<(u64, Outcome<T::Output>)>,
    ran: &mut Vec<Duration>,
    limit: codec::Limit,
) -> Result<(), String> {
    let mut answer = |tasks: &mut LinkTasks<'_>, id| -> Result<(), String> {
        ran.extend(tasks.answer(id)?);
        Ok(())
    };
    match said {
        Said::Hello | Said::Wake | Said::Progress(..) => Ok(()),
        Said::Started(id) => tasks.start(id),
        Said::Ok(id, payload) => {
            answer(tasks, id)?;
            settled.push((id, decode_output::<T>(payload, limit)));
            Ok(())
        }
        // Exactly an OK, then a STARTED.
        Said::OkStarted(id, payload, next) => {
            on_said::<T>(tasks, Said::Ok(id, payload), settled, ran, limit)?;
            tasks.start(next)
        }
        Said::Err(id, message) => {
            answer(tasks, id)?;
            settled.push((
                id,
                Outcome::Failed(String::from_utf8_lossy(message).into_owned()),
            ));
            Ok(())
        }
        Said::Skipped(id) => {
            tasks.skip(id)?;
            settled.push((
                id,
                Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Requested)),
            ));
            Ok(())
        }
        Said::Undecodable(id, message) => {
            answer(tasks, id)?;
            settled.push((
                id,
                Outcome::NotRun(NotRunReason::Undecodable(
                    String::from_utf8_lossy(message).into_owned(),
                )),
            ));
            Ok(())
        }
    }
}

/// Decodes a result, with the user's `Deserialize` kept from hurting the
/// engine: an error or a panic fails that task alone.
fn decode_output<T: Task>(payload: &[u8], limit: codec::Limit) -> Outcome<T::Output> {
    match catch_unwind(AssertUnwindSafe(|| {
        codec::decode_with::<T::Output>(payload, limit)
    })) {
        Ok(Ok(output)) => Outcome::Completed(output),
        Ok(Err(e)) => Outcome::Failed(format!(
            "the worker's result could not be decoded: {}",
            crate::worker::error_chain(&e)
        )),
        Err(panic) => Outcome::Failed(format!(
            "decoding the worker's result panicked: {}",
            crate::worker::panic_message(&*panic)
        )),
    }
}

/// The time limit of the task `link` runs, and when it ends.
fn task_deadline<T: Task>(link: &Link, ledger: &Ledger<T>, cfg: &Config) -> Option<Instant> {
    if !link.watches_time_limits() {
        return None;
    }
    let (id, started) = link.running?;
    let limit = ledger.get(id)?.timeout().or(cfg.task_timeout)?;
    started.checked_add(limit)
}

fn running_over_limit<T: Task>(
    link: &Link,
    ledger: &Ledger<T>,
    cfg: &Config,
    now: Instant,
) -> Option<(u64, Duration)> {
    let at = task_deadline(link, ledger, cfg)?;
    if now < at {
        return None;
    }
    let (id, _) = link.running?;
    let limit = ledger.get(id)?.timeout().or(cfg.task_timeout)?;
    Some((id, limit))
}

/// The constructor's error for a worker that never completed its handshake.
fn spawn_error(cfg: &Config, end: &End, crash: CrashInfo) -> SpawnError {
    use crate::error::TypeDescription;
    let path = cfg.command.program.clone();
    match &end.cause {
        Cause::Handshake(HandshakeFailure::Timeout) => SpawnError::HandshakeTimeout {
            path,
            timeout: cfg.command.handshake_timeout,
            stderr_tail: crash.stderr_tail,
        },
        Cause::Handshake(HandshakeFailure::Protocol { found, version }) => {
            SpawnError::ProtocolMismatch {
                path,
                expected: crate::wire::PROTOCOL_VERSION,
                found: *found,
                worker_version: version.clone(),
            }
        }
        Cause::Handshake(HandshakeFailure::Codec { found }) => SpawnError::CodecMismatch {
            path,
            parent: crate::codec::NAME,
            worker: crate::wire::codec_name(*found),
        },
        Cause::Handshake(HandshakeFailure::Bad(detail)) => SpawnError::BadHandshake {
            path,
            detail: detail.clone(),
        },
        Cause::Handshake(HandshakeFailure::NotServing) => SpawnError::RunIfWorkerMissing { path },
        Cause::Handshake(HandshakeFailure::Types(m)) => SpawnError::TypeMismatch {
            path,
            role: m.role,
            parent: Box::new(TypeDescription::new(
                m.parent.name.clone(),
                m.parent.shape.clone().unwrap_or_default(),
            )),
            worker: Box::new(TypeDescription::new(
                m.worker.name.clone(),
                m.worker.shape.clone().unwrap_or_default(),
            )),
        },
        _ => SpawnError::ExitedEarly {
            path,
            status: crash.exit,
            stderr_tail: crash.stderr_tail,
        },
    }
}

impl<T: Task> std::fmt::Debug for Engine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.slots.len())
            .field("queued", &self.queue.len())
            .field("pending", &self.ledger.pending())
            .finish()
    }
}
