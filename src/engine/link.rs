//! One worker, as the engine sees it: its process (pidfd), its socket, its
//! output pipes, the tasks it holds, and where it is in its life — a
//! [`Phase`], each carrying its own deadline.
//!
//! ```text
//!  spawn ──> Starting{deadline} ──HELLO──> Running ──STOP/CANCEL──> Stopping{kill_at}
//!               │                            │  │                       │
//!               │ timeout, bad hello         │  └─ socket ends ──> Hungup{kill_at}
//!               │                            │                          │
//!               └──────> Ending{why, kill_at} <── timeout, violation, terminate, deadline
//!                                  │
//!   (any phase) ── pidfd readable ─┴──> Exited{cause, drain_until} ── socket drained ──> settled
//! ```
//!
//! A link never decides a task's outcome: it reports what the worker said
//! ([`Said`]) and what ended it ([`Cause`]); the engine settles the ledger.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, send};

use super::outbound::{Frame, Held, Outgoing};
use crate::console::Console;
use crate::process::{Reaped, Spawned, WorkerChild};
use crate::task::CrashReason;
use crate::wire::{
    self, FrameReader, KIND_CANCEL, KIND_ERR, KIND_HELLO, KIND_NOT_SERVING, KIND_OK,
    KIND_OK_STARTED, KIND_PROGRESS, KIND_SKIPPED, KIND_STARTED, KIND_STOP, KIND_UNDECODABLE,
    KIND_WAKE, Next, PROTOCOL_VERSION, PROTOCOL_WORD, TOKEN_LEN,
};

/// Frames handled per readiness event, so one flooding worker cannot starve
/// the others (the wait is level-triggered: the rest comes next turn).
const FRAMES_PER_EVENT: usize = 4096;

/// Why a worker is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopWhy {
    /// It ran `max_tasks_per_worker` tasks: it is replaced.
    Recycle,
    /// `collect_tasks`: nothing more will come.
    Collect,
    /// The facade was dropped: CANCEL, nothing more starts.
    Drop,
    /// It grew past `max_worker_rss`: CANCEL (it starts nothing more of
    /// what it was sent, which goes to its replacement), then replaced.
    Outgrown,
}

impl StopWhy {
    /// Whether the worker is told CANCEL (start nothing more, exit) rather
    /// than STOP (finish everything sent, exit): leaving tasks unstarted is
    /// then as asked.
    fn cancels(self) -> bool {
        matches!(self, StopWhy::Drop | StopWhy::Outgrown)
    }
}

/// Why the handshake failed.
#[derive(Debug, Clone)]
pub(super) enum HandshakeFailure {
    Timeout,
    Protocol {
        found: u32,
        version: String,
    },
    /// The worker speaks this protocol version but encodes with the codec
    /// numbered `found`.
    Codec {
        found: u8,
    },
    Bad(String),
    /// The program was started as a worker but made a facade instead of
    /// serving.
    NotServing,
    /// The worker's task or output type has another shape than ours.
    Types(Box<crate::types::Mismatch>),
}

/// What ended a worker, as far as the parent knows.
#[derive(Debug, Clone)]
pub(super) enum Cause {
    /// It died or exited by itself.
    ByItself,
    /// It exited after being asked to stop, as asked.
    Stopped(StopWhy),
    /// The parent ended it, for this reason.
    Parent(CrashReason),
    /// The parent ended it because it was not needed any more (it was still
    /// starting when the work ran out): nothing to report, nothing charged.
    Unneeded,
    /// The handshake failed; the parent killed it.
    Handshake(HandshakeFailure),
    /// The parent stopped it to cancel the task it was running: replaced,
    /// not charged, not a lost worker.
    Cancelled,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Spawned; its HELLO must come before `deadline` (`None`: no limit).
    Starting { deadline: Option<Instant> },
    /// Handshake done; it takes tasks.
    Running,
    /// The terminator (STOP, or CANCEL on drop) is sent; it answers what it
    /// holds and exits. Killed at `kill_at`.
    Stopping {
        why: StopWhy,
        kill_at: Option<Instant>,
    },
    /// Its socket ended while the process runs: killed at `kill_at`
    /// unless it exits by itself first.
    Hungup { kill_at: Option<Instant> },
    /// The parent is ending it: SIGTERM or SIGKILL was sent, and `kill`
    /// says what comes next.
    Ending { cause: Cause, kill: Kill },
    /// The process has exited and is reaped; its socket is read to its end
    /// until `drain_until`.
    Exited {
        cause: Cause,
        reaped: Reaped,
        drain_until: Option<Instant>,
    },
}

/// What follows for a worker the parent is ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// SIGKILL was sent: nothing more to do but wait for the exit.
    Sent,
    /// SIGTERM was sent; SIGKILL follows at this time.
    At(Instant),
    /// SIGTERM was sent and no SIGKILL is scheduled (`kill_grace` of
    /// `Duration::MAX`); a later deadline (a drop's grace) may bring one.
    Unscheduled,
}

impl Kill {
    fn at(self) -> Option<Instant> {
        match self {
            Kill::At(at) => Some(at),
            Kill::Sent | Kill::Unscheduled => None,
        }
    }
}

/// How often the exit of a worker that cannot be reaped yet (a tracer
/// holds its zombie) is looked at again, and for how long.
const EXIT_RETRY: Duration = Duration::from_millis(20);
const UNREAPABLE_LIMIT: Duration = Duration::from_secs(1);
/// Bytes of tasks sent to a worker and not yet started, at most (at least
/// one task always goes): about what its read buffer holds, so that a
/// CANCEL behind them is seen before any of them starts.
pub(super) const AHEAD_BYTES: usize = 48 * 1024;

/// One message from the worker, checked against what it holds.
#[derive(Debug)]
pub(super) enum Said<'a> {
    Hello,
    Started(u64),
    /// A result for the task at the front; its payload still encoded.
    Ok(u64, &'a [u8]),
    /// [`Said::Ok`], then [`Said::Started`] for the task named last.
    OkStarted(u64, &'a [u8], u64),
    Err(u64, &'a [u8]),
    Undecodable(u64, &'a [u8]),
    /// It skipped a task the parent cancelled before it started.
    Skipped(u64),
    /// The running task reported progress; the value still encoded.
    Progress(u64, &'a [u8]),
    /// On the socket: the ring has news.
    Wake,
}

/// Why the worker wakes a sleeping parent for each STARTED (see `ring.rs`,
/// STARTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Starts {
    /// It does not: a STARTED is read with the result.
    Quiet,
    /// For the link's life: a time limit, or several workers.
    Always,
    /// While a task the worker may hold is cancelled: a start that crosses
    /// the cancel must be seen, so that the task is stopped.
    WhileCancelled,
}

/// Who may write to a worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// The engine, from the link's queue.
    Engine,
    /// A submitter is writing a task through the lane, and may not be done.
    Submitter,
}

pub(super) struct Link {
    pub(super) generation: u32,
    child: WorkerChild,
    /// The socket, read through its frame buffer; `None` once it ended or
    /// the worker broke the protocol (nothing more it says is believed).
    reader: Option<FrameReader<UnixStream>>,
    /// Bytes queued for the socket and not yet written.
    out: Outgoing,
    /// Whether writing failed (the worker hung up): nothing more is queued.
    write_failed: bool,
    /// Who writes to the socket now.
    writes: Writes,
    /// Whether, and why, its STARTEDs wake a sleeping parent.
    starts: Starts,
    /// The frame a submitter writes through the lane, for its rest.
    submitter_frame: Vec<u8>,
    /// The duplicate of the socket the lane writes through.
    lane_socket: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Whether the socket is registered for writability (the engine keeps
    /// this in step with its epoll registration).
    pub(super) out_armed: bool,
    pub(super) console: Console,
    token: [u8; TOKEN_LEN],
    /// The maximum frame size after the handshake.
    max_frame: u32,
    /// The worker's result ring, read through a frame buffer of its own;
    /// `None` once its stream ended or broke the protocol.
    ring: Option<FrameReader<crate::ring::RingReader>>,
    /// This program's task and output types, which the worker's must match.
    types: std::sync::Arc<crate::types::Signature>,
    pub(super) phase: Phase,
    /// Tasks sent and not yet answered, oldest first.
    pub(super) inflight: VecDeque<u64>,
    /// Their frames, for the next worker if this one dies first.
    held: Held,
    /// The task it said it started, and when.
    pub(super) running: Option<(u64, Instant)>,
    /// Tasks sent over its life (for recycling).
    pub(super) sent: u64,
    /// When the handshake completed.
    pub(super) ready_at: Option<Instant>,
    /// Sizes of the tasks sent and not yet started, in order, and their sum.
    ahead: VecDeque<usize>,
    pub(super) ahead_bytes: usize,
    /// Since when its pidfd says it exited but it cannot be reaped.
    unreaped_since: Option<Instant>,
    /// Descriptors closed by the link, kept until the engine has taken them
    /// out of its epoll set (a descriptor dropped while registered stays
    /// registered if a forked copy of this process holds it).
    pub(super) graveyard: Vec<std::os::fd::OwnedFd>,
}

impl Link {
    pub(super) fn new(
        spawned: Spawned,
        generation: u32,
        max_frame: u32,
        output: crate::console::Output,
        handshake: Option<Instant>,
        types: std::sync::Arc<crate::types::Signature>,
    ) -> Link {
        let pid = spawned.child.pid();
        Link {
            generation,
            child: spawned.child,
            // The HELLO (with the type shapes) may be larger than a tiny
            // maximum frame; the limit applies once it is read.
            reader: Some(FrameReader::new(
                spawned.socket,
                max_frame.max(wire::HANDSHAKE_MAX),
            )),
            max_frame,
            ring: Some(FrameReader::new(spawned.ring, max_frame)),
            out: Outgoing::default(),
            write_failed: false,
            writes: Writes::Engine,
            starts: Starts::Quiet,
            submitter_frame: Vec::new(),
            lane_socket: None,
            out_armed: false,
            console: Console::new(pid, spawned.stdout, spawned.stderr, output),
            token: spawned.token,
            types,
            phase: Phase::Starting {
                deadline: handshake,
            },
            inflight: VecDeque::new(),
            held: Held::default(),
            running: None,
            sent: 0,
            ready_at: None,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
            unreaped_since: None,
            graveyard: Vec::new(),
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub(super) fn pidfd(&self) -> BorrowedFd<'_> {
        self.child.pidfd()
    }

    pub(super) fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.reader.as_ref().map(|r| r.get_ref().as_fd())
    }

    /// Whether it can be given tasks now.
    pub(super) fn takes_tasks(&self) -> bool {
        matches!(self.phase, Phase::Running) && !self.write_failed
    }

    pub(super) fn is_exited(&self) -> bool {
        matches!(self.phase, Phase::Exited { .. })
    }

    /// Whether it is done: exited and nothing more to read.
    pub(super) fn is_settleable(&self) -> bool {
        matches!(self.phase, Phase::Exited { .. }) && self.reader.is_none()
    }

    /// Queues task `id`'s frame for the worker, and holds a copy until it
    /// is answered.
    pub(super) fn send_task(&mut self, id: u64, frame: Frame<'_>) {
        if !self.write_failed {
            self.out.push(&frame);
        }
        self.hold(id, &frame);
    }

    /// Records a task its submitter writes to this worker's socket itself
    /// (through the lane), as [`Link::send_task`] would have sent it.
    /// Nothing else is written to the socket until
    /// [`submitter_done`](Link::submitter_done) says how that write went.
    pub(super) fn sent_directly(&mut self, id: u64, frame: &[u8]) {
        self.writes = Writes::Submitter;
        self.submitter_frame.clear();
        self.submitter_frame.extend_from_slice(frame);
        self.hold(id, &Frame::Small(frame));
    }

    /// The submitter's write is over: whole, or `short` of its frame, whose
    /// rest goes before anything queued meanwhile.
    pub(super) fn submitter_done(&mut self, short: Option<usize>) {
        if self.writes != Writes::Submitter {
            return;
        }
        self.writes = Writes::Engine;
        if let Some(rest) = short.and_then(|n| self.submitter_frame.get(n..)) {
            if !rest.is_empty() && !self.write_failed {
                self.out.push_front(rest);
            }
        }
    }

    /// Whether the engine may write to the socket now (no submitter is
    /// writing through the lane).
    pub(super) fn engine_writes(&self) -> bool {
        self.writes == Writes::Engine
    }

    /// A duplicate of the socket for the lane (made once), through which a
    /// submitter writes; `None` once the socket is closed.
    pub(super) fn lane_socket(&mut self) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
        if self.lane_socket.is_none() {
            let copy = self.reader.as_ref()?.get_ref().try_clone().ok()?;
            self.lane_socket = Some(std::sync::Arc::new(copy.into()));
        }
        self.lane_socket.clone()
    }

    /// Task `id`, whose `frame` was sent, is the worker's until answered.
    fn hold(&mut self, id: u64, frame: &Frame<'_>) {
        self.held.push(frame);
        self.inflight.push_back(id);
        self.sent += 1;
        self.ahead.push_back(frame.len());
        self.ahead_bytes += frame.len();
    }

    /// Closes the socket (the engine takes it out of its epoll set first).
    fn close_socket(&mut self) {
        self.lane_socket = None;
        self.ring = None;
        if let Some(reader) = self.reader.take() {
            self.graveyard
                .push(std::os::fd::OwnedFd::from(reader.into_inner()));
        }
    }

    /// Queues a frame for the worker.
    pub(super) fn queue(&mut self, frame: &[u8]) {
        if !self.write_failed {
            self.out.push(&Frame::Small(frame));
        }
    }

    /// Bytes queued and not yet written.
    pub(super) fn unsent(&self) -> usize {
        self.out.unsent()
    }

    /// Writes as much of the queue as the socket takes now. `MSG_NOSIGNAL`:
    /// a dead worker is an error here, never a SIGPIPE for the host.
    pub(super) fn flush(&mut self) {
        if self.writes == Writes::Submitter {
            return; // its frame may not be whole yet
        }
        let fd = match &self.reader {
            Some(r) if !self.write_failed => r.get_ref().as_raw_fd(),
            _ => {
                // The socket is gone: nothing queued can reach the worker.
                self.write_failed = true;
                self.out.clear();
                return;
            }
        };
        while self.out.unsent() > 0 {
            match send(
                fd,
                self.out.next(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.out.advance(n),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => {
                    // The worker stopped reading: what it said is still
                    // read, but nothing more reaches it, so it must exit by
                    // itself soon or be ended.
                    self.write_failed = true;
                    self.out.clear();
                    if matches!(self.phase, Phase::Running | Phase::Stopping { .. }) {
                        self.phase = Phase::Hungup {
                            kill_at: Instant::now().checked_add(EOF_LIMIT),
                        };
                    }
                    return;
                }
            }
        }
    }

    /// Reads the worker's messages, handing each to `on` (which returns
    /// `Err` to say the message broke the protocol). A broken protocol ends
    /// the worker; the end of its stream moves it on as its phase says.
    ///
    /// The socket carries the handshake, then only WAKE frames; everything
    /// else comes through the result ring, which is read after the socket
    /// (so that its last bytes are read after the socket ended) and only
    /// once the handshake is done.
    pub(super) fn read(
        &mut self,
        now: Instant,
        mut on: impl FnMut(&mut LinkTasks<'_>, Said<'_>) -> Result<(), String>,
    ) {
        let starting = matches!(self.phase, Phase::Starting { .. });
        let mut hello_now = false;
        let mut stop = None;
        let mut socket_ended = false;
        let mut tasks = LinkTasks {
            inflight: &mut self.inflight,
            held: &mut self.held,
            running: &mut self.running,
            ahead: &mut self.ahead,
            ahead_bytes: &mut self.ahead_bytes,
            now,
        };
        if let Some(reader) = self.reader.as_mut() {
            for _ in 0..FRAMES_PER_EVENT {
                let frame = match reader.try_next_frame() {
                    Ok(Next::Frame(frame)) => frame,
                    Ok(Next::Pending) => break,
                    Ok(Next::End) => {
                        socket_ended = true;
                        break;
                    }
                    Err(e) => {
                        stop = Some(ReadEnd::Violation(crate::worker::error_chain(&e)));
                        break;
                    }
                };
                let said = match parse(&frame, &self.token, &self.types) {
                    Ok(said) => said,
                    Err(Parsed::Violation(v)) => {
                        stop = Some(ReadEnd::Violation(v));
                        break;
                    }
                    Err(Parsed::Handshake(failure)) => {
                        stop = Some(ReadEnd::Handshake(failure));
                        break;
                    }
                };
                match (&said, starting && !hello_now) {
                    (Said::Hello, true) => {
                        hello_now = true;
                        reader.set_max(self.max_frame);
                    }
                    (_, true) => {
                        stop = Some(ReadEnd::Handshake(HandshakeFailure::Bad(format!(
                            "{said:?} before the handshake"
                        ))));
                        break;
                    }
                    (Said::Wake, false) => {}
                    (_, false) => {
                        stop = Some(ReadEnd::Violation(format!(
                            "{said:?} on the socket, where only wakes may come"
                        )));
                        break;
                    }
                }
                // A wake says "look at the ring", which is read below in
                // any case: no second read of the socket just to hear that
                // it would block (a level-triggered epoll reports whatever
                // follows, the end of the stream included).
                if !starting && !reader.has_buffered_frame() {
                    break;
                }
            }
            reader.shrink();
        }
        if stop.is_none() && (!starting || hello_now) {
            if let Some(ring) = self.ring.as_mut() {
                if socket_ended || self.reader.is_none() {
                    ring.get_mut().end();
                }
                let mut ring_ended = false;
                for _ in 0..FRAMES_PER_EVENT {
                    let frame = match ring.try_next_frame() {
                        Ok(Next::Frame(frame)) => frame,
                        Ok(Next::Pending) => break,
                        Ok(Next::End) => {
                            ring_ended = true;
                            break;
                        }
                        Err(e) => {
                            stop = Some(ReadEnd::Violation(crate::worker::error_chain(&e)));
                            break;
                        }
                    };
                    let said = match parse(&frame, &self.token, &self.types) {
                        Ok(Said::Hello | Said::Wake) => {
                            stop = Some(ReadEnd::Violation(
                                "a handshake message in the result ring".into(),
                            ));
                            break;
                        }
                        Ok(said) => said,
                        Err(Parsed::Violation(v)) => {
                            stop = Some(ReadEnd::Violation(v));
                            break;
                        }
                        Err(Parsed::Handshake(_)) => {
                            stop = Some(ReadEnd::Violation(
                                "a handshake message in the result ring".into(),
                            ));
                            break;
                        }
                    };
                    if let Err(v) = on(&mut tasks, said) {
                        stop = Some(ReadEnd::Violation(v));
                        break;
                    }
                }
                ring.shrink();
                if ring_ended && stop.is_none() {
                    stop = Some(ReadEnd::Eof);
                }
            }
        } else if socket_ended && stop.is_none() {
            stop = Some(ReadEnd::Eof);
        }
        if hello_now {
            self.phase = Phase::Running;
            self.ready_at = Some(now);
        }
        match stop {
            None => {}
            Some(ReadEnd::Eof) => {
                self.close_socket();
                self.on_hangup(now);
            }
            Some(ReadEnd::Handshake(failure)) => {
                self.close_socket();
                self.end(Cause::Handshake(failure));
            }
            Some(ReadEnd::Violation(violation)) => {
                self.close_socket();
                match &mut self.phase {
                    Phase::Starting { .. } => {
                        self.end(Cause::Handshake(HandshakeFailure::Bad(violation)));
                    }
                    // Exited by itself, and what it left behind breaks the
                    // protocol (a frame cut short): that is why it died, in
                    // whichever order the exit and the last bytes were seen.
                    Phase::Exited { cause, .. } if matches!(cause, Cause::ByItself) => {
                        *cause = Cause::Parent(CrashReason::ProtocolViolation(violation));
                    }
                    _ => self.end(Cause::Parent(CrashReason::ProtocolViolation(violation))),
                }
            }
        }
    }

    /// Buffers of the large frames answered since the last call.
    pub(super) fn take_spent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.held.spent)
    }

    /// Whether the result ring holds bytes not read yet.
    pub(super) fn ring_has_data(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.get_ref().has_data())
    }

    /// Tells the worker the parent is about to sleep; `true` if its ring
    /// has data already (the parent must not sleep then).
    pub(super) fn park(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.get_ref().park())
    }

    /// Asks the worker to wake a sleeping parent for each STARTED too, for
    /// `why` (a time limit runs from the start the parent sees; a cancel
    /// must see a start that crosses it).
    pub(super) fn watch_starts(&mut self, why: Starts) {
        if self.starts == Starts::Always || self.starts == why {
            return;
        }
        self.starts = why;
        if let Some(r) = &self.ring {
            r.get_ref().watch_starts(true);
        }
    }

    /// Back to quiet STARTEDs if they were watched only for cancels and no
    /// cancelled task is in flight any more (`cancelled_in_flight`).
    pub(super) fn settle_starts(
        &mut self,
        cancelled_in_flight: impl FnOnce(&VecDeque<u64>) -> bool,
    ) {
        if self.starts != Starts::WhileCancelled || cancelled_in_flight(&self.inflight) {
            return;
        }
        self.starts = Starts::Quiet;
        if let Some(r) = &self.ring {
            r.get_ref().watch_starts(false);
        }
    }

    pub(super) fn unpark(&self) {
        if let Some(r) = &self.ring {
            r.get_ref().unpark();
        }
    }

    /// The socket ended while the process may still run.
    fn on_hangup(&mut self, now: Instant) {
        match &self.phase {
            // Running, or stopping with tasks unanswered: it is hanging up
            // on its work. Stopping with nothing left is done as asked and
            // exits within its grace period.
            Phase::Running => {
                self.phase = Phase::Hungup {
                    kill_at: now.checked_add(EOF_LIMIT),
                };
            }
            // After CANCEL, hanging up with unstarted tasks is as asked.
            Phase::Stopping { why, .. } if !self.inflight.is_empty() && !why.cancels() => {
                self.phase = Phase::Hungup {
                    kill_at: now.checked_add(EOF_LIMIT),
                };
            }
            // Starting: it is exiting, or fails its handshake at the
            // deadline.
            _ => {}
        }
    }

    /// The parent ends the worker now (SIGKILL). The first reason given is
    /// kept.
    pub(super) fn end(&mut self, cause: Cause) {
        match &mut self.phase {
            Phase::Exited { .. } => return,
            Phase::Ending { kill, .. } => {
                // Already ending, gently: now sooner.
                *kill = Kill::Sent;
            }
            _ => {
                self.phase = Phase::Ending {
                    cause,
                    kill: Kill::Sent,
                };
            }
        }
        self.child.signal(Signal::SIGKILL);
    }

    /// Asks the worker not to start task `id`, which it holds.
    pub(super) fn cancel_task(&mut self, id: u64) {
        let mut frame = Vec::with_capacity(13);
        wire::push_bare(&mut frame, wire::KIND_CANCEL_TASK, Some(id));
        self.queue(&frame);
    }

    /// The parent ends the worker gently: SIGTERM now, SIGKILL at
    /// `kill_at` (`None`: not scheduled, the worker's own time).
    pub(super) fn end_gently(&mut self, cause: Cause, kill_at: Option<Instant>) {
        if matches!(self.phase, Phase::Exited { .. } | Phase::Ending { .. }) {
            return;
        }
        self.child.signal(Signal::SIGTERM);
        let kill = match kill_at {
            Some(at) => Kill::At(at),
            None => Kill::Unscheduled,
        };
        self.phase = Phase::Ending { cause, kill };
    }

    /// Whether the running task's time limit still counts (not once the
    /// worker is being ended or has hung up).
    pub(super) fn watches_time_limits(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Stopping { .. })
    }

    /// Asks the worker to stop: STOP behind what it holds (collect,
    /// recycling), or CANCEL (drop: nothing more starts). `grace` counts
    /// once it holds nothing (STOP) or at once (CANCEL).
    pub(super) fn stop(&mut self, why: StopWhy, now: Instant, grace: Duration) {
        match &mut self.phase {
            Phase::Starting { .. } => self.end(Cause::Unneeded),
            Phase::Running => {
                let (kind, kill_at) = match why {
                    _ if why.cancels() => (KIND_CANCEL, now.checked_add(grace)),
                    _ if self.inflight.is_empty() => (KIND_STOP, now.checked_add(grace)),
                    _ => (KIND_STOP, None),
                };
                let mut frame = Vec::with_capacity(5);
                wire::push_bare(&mut frame, kind, None);
                self.queue(&frame);
                self.phase = Phase::Stopping { why, kill_at };
            }
            Phase::Stopping {
                why: current,
                kill_at,
            } => {
                if why == StopWhy::Drop && *current != StopWhy::Drop {
                    let mut frame = Vec::with_capacity(5);
                    wire::push_bare(&mut frame, KIND_CANCEL, None);
                    let deadline = now.checked_add(grace);
                    *kill_at = match (*kill_at, deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    *current = StopWhy::Drop;
                    self.queue(&frame);
                }
            }
            // Being ended gently (a timeout): the drop's grace bounds it too.
            Phase::Ending { kill, .. } if why == StopWhy::Drop => {
                if let Some(deadline) = now.checked_add(grace) {
                    *kill = match *kill {
                        Kill::At(at) => Kill::At(at.min(deadline)),
                        Kill::Unscheduled => Kill::At(deadline),
                        Kill::Sent => Kill::Sent,
                    };
                }
            }
            Phase::Hungup { .. } | Phase::Ending { .. } | Phase::Exited { .. } => {}
        }
    }

    /// After a result: a stopping worker that holds nothing more gets its
    /// grace period from now.
    pub(super) fn on_answered(&mut self, now: Instant, grace: Duration) {
        if let Phase::Stopping { kill_at, .. } = &mut self.phase {
            if self.inflight.is_empty() && kill_at.is_none() {
                *kill_at = now.checked_add(grace);
            }
        }
    }

    /// The earliest deadline of its phase.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Starting { deadline } => *deadline,
            Phase::Running => None,
            Phase::Stopping { kill_at, .. } | Phase::Hungup { kill_at } => *kill_at,
            Phase::Ending { kill, .. } => kill.at(),
            Phase::Exited { drain_until, .. } => *drain_until,
        };
        let retry = self
            .unreaped_since
            .and_then(|_| Instant::now().checked_add(EXIT_RETRY));
        match (phase, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on a deadline of its phase that has passed.
    pub(super) fn on_deadline(&mut self, now: Instant, drain: Duration) {
        if self.unreaped_since.is_some() {
            self.on_exit(now, drain);
        }
        let due = |at: &Option<Instant>| at.is_some_and(|at| now >= at);
        match &mut self.phase {
            Phase::Starting { deadline } if due(deadline) => {
                self.end(Cause::Handshake(HandshakeFailure::Timeout));
            }
            Phase::Stopping { why, kill_at } if due(kill_at) => {
                let cause = if *why == StopWhy::Drop && !self.inflight.is_empty() {
                    Cause::Parent(CrashReason::GracePeriodOver)
                } else {
                    Cause::Stopped(*why)
                };
                self.end(cause);
            }
            Phase::Hungup { kill_at } if due(kill_at) => {
                self.end(Cause::Parent(CrashReason::ConnectionClosed));
            }
            Phase::Ending { kill, .. } if due(&kill.at()) => {
                *kill = Kill::Sent;
                self.child.signal(Signal::SIGKILL);
            }
            Phase::Exited { drain_until, .. } if due(drain_until) => {
                // Something outside the worker's process group holds the
                // socket open: what it has not said by now is not coming.
                self.close_socket();
            }
            _ => {}
        }
    }

    /// The pidfd became readable: reaps the worker and moves to `Exited`.
    /// `drain` bounds how long the socket is still read. A worker that has
    /// exited but cannot be reaped (a tracer holds its zombie) is looked at
    /// again every [`EXIT_RETRY`], and given up on, its status unknown,
    /// after [`UNREAPABLE_LIMIT`].
    pub(super) fn on_exit(&mut self, now: Instant, drain: Duration) {
        let reaped = match self.child.try_reap() {
            Some(reaped) => reaped,
            None => {
                let since = *self.unreaped_since.get_or_insert(now);
                // Its children (and the tracer, if it is one of them) go.
                self.child.signal(Signal::SIGKILL);
                if now.saturating_duration_since(since) < UNREAPABLE_LIMIT {
                    return;
                }
                self.child.abandon()
            }
        };
        self.unreaped_since = None;
        let cause = match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Ending { cause, .. } => cause,
            Phase::Stopping { why, .. } if self.inflight.is_empty() => Cause::Stopped(why),
            // After CANCEL it leaves the tasks it held unstarted: as asked.
            Phase::Stopping { why, .. } if why.cancels() && self.running.is_none() => {
                Cause::Stopped(why)
            }
            _ => Cause::ByItself,
        };
        self.phase = Phase::Exited {
            cause,
            reaped,
            drain_until: now.checked_add(drain),
        };
    }

    /// Everything the worker's end left: its cause, status, and output.
    /// Whether its pidfd is still watched (not once it exited).
    pub(super) fn watches_exit(&self) -> bool {
        self.unreaped_since.is_none() && !self.is_exited()
    }

    pub(super) fn into_end(mut self, sink: &mut crate::console::Sink<'_>) -> End {
        let (tail, alloc_failed) = self.console.finish(sink);
        let phase = std::mem::replace(&mut self.phase, Phase::Running);
        let (cause, reaped) = match phase {
            Phase::Exited { cause, reaped, .. } => (cause, reaped),
            other => {
                // Not exited: a teardown. Kill and reap it now.
                let cause = match other {
                    Phase::Ending { cause, .. } => cause,
                    _ => Cause::Unneeded,
                };
                let reaped = self.child.kill_and_reap().unwrap_or(Reaped {
                    exit: crate::task::ExitInfo {
                        pid: self.child.pid(),
                        code: None,
                        signal: None,
                        core_dumped: false,
                        usage: None,
                    },
                    lost: None,
                });
                (cause, reaped)
            }
        };
        End {
            cause,
            reaped,
            stderr_tail: tail,
            alloc_failed,
            inflight: std::mem::take(&mut self.inflight),
            frames: std::mem::take(&mut self.held).into_frames(),
            running: self.running.map(|(id, _)| id),
            ready: self.ready_at.is_some(),
        }
    }
}

/// What a link's end leaves for the engine to settle.
#[derive(Debug)]
pub(super) struct End {
    pub(super) cause: Cause,
    pub(super) reaped: Reaped,
    pub(super) stderr_tail: Vec<String>,
    pub(super) alloc_failed: bool,
    /// Tasks sent and never answered, oldest first.
    pub(super) inflight: VecDeque<u64>,
    /// Their frames, back to back, in the same order.
    pub(super) frames: Vec<u8>,
    /// The one among them it had started.
    pub(super) running: Option<u64>,
    /// Whether it ever completed the handshake.
    pub(super) ready: bool,
}

/// A link's task bookkeeping, handed to the engine with each message.
pub(super) struct LinkTasks<'a> {
    pub(super) inflight: &'a mut VecDeque<u64>,
    held: &'a mut Held,
    pub(super) running: &'a mut Option<(u64, Instant)>,
    ahead: &'a mut VecDeque<usize>,
    ahead_bytes: &'a mut usize,
    pub(super) now: Instant,
}

impl LinkTasks<'_> {
    /// A STARTED for the task at the front, when none runs.
    pub(super) fn start(&mut self, id: u64) -> Result<(), String> {
        if self.inflight.front() != Some(&id) || self.running.is_some() {
            return Err(format!("worker reported starting task #{id} out of order"));
        }
        *self.running = Some((id, self.now));
        self.not_ahead();
        Ok(())
    }

    /// The task at the front started (or was skipped): not ahead any more.
    fn not_ahead(&mut self) {
        if let Some(len) = self.ahead.pop_front() {
            *self.ahead_bytes -= len;
        }
    }

    /// A SKIPPED for the task at the front.
    pub(super) fn skip(&mut self, id: u64) -> Result<(), String> {
        if self.inflight.front() != Some(&id) || self.running.is_some() {
            return Err(format!("worker skipped task #{id} out of order"));
        }
        self.inflight.pop_front();
        self.held.pop();
        self.not_ahead();
        Ok(())
    }

    /// An answer for the task at the front; how long it ran, when the
    /// worker said it started it.
    pub(super) fn answer(&mut self, id: u64) -> Result<Option<Duration>, String> {
        if self.inflight.front() != Some(&id) {
            return Err(format!(
                "worker sent a result for unknown or already answered task #{id}"
            ));
        }
        self.inflight.pop_front();
        self.held.pop();
        let ran = self
            .running
            .take()
            .map(|(_, started)| self.now.saturating_duration_since(started));
        if ran.is_none() {
            // Answered without a STARTED (a lenient peer): not ahead either.
            self.not_ahead();
        }
        Ok(ran)
    }
}

/// After the socket closes while the worker still runs, how long it has to
/// exit by itself before it is called broken.
const EOF_LIMIT: Duration = Duration::from_millis(250);

enum ReadEnd {
    Eof,
    Violation(String),
    Handshake(HandshakeFailure),
}

enum Parsed {
    Violation(String),
    Handshake(HandshakeFailure),
}

fn parse<'a>(
    frame: &wire::Frame<'a>,
    token: &[u8; TOKEN_LEN],
    types: &crate::types::Signature,
) -> Result<Said<'a>, Parsed> {
    let with_id = |frame: &wire::Frame<'a>| {
        frame
            .id_and_payload()
            .map_err(|e| Parsed::Violation(e.to_string()))
    };
    match frame.kind {
        KIND_HELLO => {
            let hello = wire::decode_hello(frame)
                .map_err(|e| Parsed::Handshake(HandshakeFailure::Bad(e.to_string())))?;
            match wire::split_protocol_word(hello.protocol) {
                _ if hello.protocol == PROTOCOL_WORD => {}
                (PROTOCOL_VERSION, found) => {
                    return Err(Parsed::Handshake(HandshakeFailure::Codec { found }));
                }
                (found, _) => {
                    return Err(Parsed::Handshake(HandshakeFailure::Protocol {
                        found,
                        version: hello.crate_version,
                    }));
                }
            }
            if &hello.token != token {
                return Err(Parsed::Handshake(HandshakeFailure::Bad(
                    "wrong handshake token".into(),
                )));
            }
            if let Some(m) = hello.types.as_ref().and_then(|w| types.mismatch(w)) {
                return Err(Parsed::Handshake(HandshakeFailure::Types(Box::new(m))));
            }
            Ok(Said::Hello)
        }
        KIND_NOT_SERVING => Err(Parsed::Handshake(HandshakeFailure::NotServing)),
        KIND_STARTED => match with_id(frame)? {
            (id, []) => Ok(Said::Started(id)),
            (id, _) => Err(Parsed::Violation(format!(
                "STARTED for task #{id} with a payload"
            ))),
        },
        KIND_OK => with_id(frame).map(|(id, p)| Said::Ok(id, p)),
        KIND_OK_STARTED => {
            let (id, rest) = with_id(frame)?;
            match rest.split_last_chunk::<8>() {
                Some((payload, next)) => {
                    Ok(Said::OkStarted(id, payload, u64::from_le_bytes(*next)))
                }
                None => Err(Parsed::Violation(format!(
                    "OK_STARTED for task #{id} without the started task's ID"
                ))),
            }
        }
        KIND_ERR => with_id(frame).map(|(id, p)| Said::Err(id, p)),
        KIND_UNDECODABLE => with_id(frame).map(|(id, p)| Said::Undecodable(id, p)),
        KIND_PROGRESS => with_id(frame).map(|(id, p)| Said::Progress(id, p)),
        KIND_WAKE if frame.rest.is_empty() => Ok(Said::Wake),
        KIND_SKIPPED => match with_id(frame)? {
            (id, []) => Ok(Said::Skipped(id)),
            (id, _) => Err(Parsed::Violation(format!(
                "SKIPPED for task #{id} with a payload"
            ))),
        },
        other => Err(Parsed::Violation(format!(
            "unexpected message kind {other:#04x}"
        ))),
    }
}
