//! The worker side: what runs inside the child process.
//!
//! A worker is any binary that calls [`serve`] with a handler, or any binary
//! whose `main` begins with [`run_if_worker`] and is started by the parent
//! through [`WorkerCommand::current_exe`](crate::WorkerCommand::current_exe).
//!
//! The worker runs tasks one at a time, in the order they arrive. Before it
//! even decodes a task it tells the parent (so a crash is blamed on the
//! right task, also one that crashes while its `Deserialize` runs, and a
//! timeout counts from the start), and the result of each task is on the
//! wire before the next task starts, so a crash never loses a result that
//! was already computed. Both messages share one `write` call.
//!
//! The worker's socket is a descriptor inherited from the parent (named in
//! `WORKER_FACADE_FD`); it is checked to be a socket connected to the
//! parent process before anything is read from it.

use std::any::Any;
use std::collections::HashSet;
use std::fmt::Display;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, recv, send};

use crate::codec;
use crate::command::{WORKER_ENV, WORKER_FD_ENV, WORKER_RING_ENV, WORKER_TASKS_ENV};
use crate::error::SpawnError;
use crate::task::Task;
use crate::wire::{
    self, FrameReader, Hello, KIND_CANCEL, KIND_CANCEL_TASK, KIND_ERR, KIND_NOT_SERVING, KIND_OK,
    KIND_PROGRESS, KIND_SKIPPED, KIND_STARTED, KIND_STOP, KIND_TASK, KIND_TASK_AT,
    KIND_UNDECODABLE, KIND_WAKE, PROTOCOL_VERSION, PROTOCOL_WORD, PushError, WireError,
    WorkerOptions,
};

/// Set once this process serves tasks: from then on it may make facades of
/// its own (nested workers).
static SERVING: AtomicBool = AtomicBool::new(false);
/// Set once this process told its parent it made a facade instead of
/// serving.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);
/// Set by the first call of [`run_if_worker`] that serves.
static RUN_IF_WORKER_SERVES: AtomicBool = AtomicBool::new(false);

/// How often a worker busy with tasks already buffered looks at its socket
/// for a CANCEL (one non-blocking read at most this often; timed by the
/// coarse clock, so in fact once a scheduler tick, 1 to 10 ms).
const LOOK_AHEAD_EVERY: Duration = Duration::from_millis(1);

/// When a worker busy with buffered tasks last looked ahead at its socket,
/// by the clock it times that with.
///
/// Asked before every task, so it reads the coarse clock (a few
/// nanoseconds) rather than the precise one (tens in a VM, 3 % of a
/// worker's time on tiny tasks); the precise one where the kernel has no
/// coarse clock, or should it ever fail to answer.
enum LookAhead {
    Coarse(Duration),
    Precise(Instant),
}

impl LookAhead {
    fn new() -> Self {
        match crate::sys::coarse_clock() {
            Some(now) => LookAhead::Coarse(now),
            None => LookAhead::Precise(Instant::now()),
        }
    }

    /// Whether it is time to look again; if so, the clock starts over.
    fn due(&mut self) -> bool {
        match *self {
            LookAhead::Coarse(since) => match crate::sys::coarse_clock() {
                Some(now) if now.saturating_sub(since) < LOOK_AHEAD_EVERY => false,
                Some(now) => {
                    *self = LookAhead::Coarse(now);
                    true
                }
                None => {
                    *self = LookAhead::Precise(Instant::now());
                    true
                }
            },
            LookAhead::Precise(since) if since.elapsed() < LOOK_AHEAD_EVERY => false,
            LookAhead::Precise(_) => {
                *self = LookAhead::Precise(Instant::now());
                true
            }
        }
    }
}

/// Exit code of a worker that could not talk to its parent.
pub const EXIT_PROTOCOL_ERROR: i32 = 70;

/// Why [`try_serve`] stopped before the parent sent the terminator.
///
/// ```
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::{WorkerError, try_serve};
///
/// // Run by hand (as here), not by a facade: there is no parent to serve.
/// match try_serve(|t: SimpleTask| Ok::<_, String>(t.solve())) {
///     Ok(()) => {}
///     Err(WorkerError::NoBootstrap(_)) => eprintln!("start me through WorkingProcessFacade"),
///     Err(other) => panic!("{other}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// There was no socket to the parent, or it did not carry the parent's
    /// bootstrap message: this binary was not started by a
    /// `WorkingProcessFacade`.
    #[error(
        "no bootstrap message from a parent: this program is a worker-facade worker and must be \
         started by WorkingProcessFacade, not run by hand"
    )]
    NoBootstrap(#[source] WireError),
    /// The inherited socket to the parent is missing or not what it must be.
    #[error("could not take the socket to the parent")]
    Connect(#[source] io::Error),
    /// The parent's messages did not follow the protocol.
    #[error("broken connection to the parent")]
    Wire(#[from] WireError),
    /// The parent speaks another protocol version; the parent reports this too.
    #[error("the parent speaks protocol {parent}, this worker speaks {PROTOCOL_VERSION}")]
    ProtocolMismatch {
        /// The parent's version.
        parent: u32,
    },
    /// The parent encodes tasks with another codec (one of them was built
    /// with worker-facade's `postcard` feature, the other without); the
    /// parent reports this too.
    #[error(
        "the parent encodes tasks with {parent}, this worker with {}: build both with the same \
         worker-facade codec (the `postcard` feature on both, or on neither)",
        crate::codec::NAME
    )]
    CodecMismatch {
        /// The parent's codec.
        parent: String,
    },
}

/// Ends a worker whose serving failed: says why on stderr, and exits with
/// [`EXIT_PROTOCOL_ERROR`].
fn exit_if_failed(served: Result<(), WorkerError>) {
    if let Err(err) = served {
        eprintln!(
            "worker-facade worker {}: {}",
            std::process::id(),
            error_chain(&err)
        );
        // A worker is a process of its own; ending it is its entry point's job.
        #[allow(clippy::exit)]
        std::process::exit(EXIT_PROTOCOL_ERROR);
    }
}

/// Serves tasks of type `T` with `handler` until the parent sends the
/// terminator or goes away, then returns. Call it from `main` of a dedicated
/// worker binary.
///
/// The handler's `Err` becomes [`Outcome::Failed`](crate::Outcome::Failed)
/// with the error's `Display` text. A panic in the handler becomes `Failed`
/// with the panic's message, file, line and column (`the handler panicked at
/// src/main.rs:10:5: boom`, and a backtrace when `RUST_BACKTRACE` is set in
/// the worker), and the worker goes on with the next task. A panic the worker
/// catches is not printed: it is the task's outcome. Panics it cannot catch
/// (on a thread the handler started) still go to the panic hook that was
/// installed before serving.
///
/// If the worker cannot talk to its parent (it was run by hand, or the parent
/// broke the protocol), the error is printed to stderr and the process exits
/// with [`EXIT_PROTOCOL_ERROR`]. Use [`try_serve`] to handle that yourself.
///
/// ```no_run
/// // no_run: this is a worker binary's whole main. Run by hand rather than
/// // by a facade, it explains that and exits with code 70, which a doctest
/// // counts as a failure. worker-bin/main.rs is this program, and every
/// // test that uses the stock worker runs it.
/// use worker_facade::simple::SimpleTask;
///
/// fn main() {
///     worker_facade::worker::serve(|t: SimpleTask| Ok::<_, String>(t.solve()))
/// }
/// ```
pub fn serve<T, F, E>(handler: F)
where
    T: Task,
    F: FnMut(T) -> Result<T::Output, E>,
    E: Display,
{
    exit_if_failed(try_serve(handler));
}

/// Like [`serve`], but returns the error instead of exiting.
///
/// ```
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::{WorkerError, try_serve};
///
/// fn main() -> Result<(), WorkerError> {
///     match try_serve(|t: SimpleTask| Ok::<_, String>(t.solve())) {
///         // Run by hand (as this doctest is): say so, and end quietly.
///         Err(WorkerError::NoBootstrap(e)) => {
///             eprintln!("not started by a facade: {e}");
///             Ok(())
///         }
///         other => other,
///     }
/// }
/// ```
///
/// # Errors
///
/// [`WorkerError`]: `NoBootstrap` when this process was not started by a
/// facade; `Connect` when its socket to the parent is missing; `Wire` or
/// `ProtocolMismatch` when the parent's messages do not follow this
/// worker's protocol.
pub fn try_serve<T, F, E>(mut handler: F) -> Result<(), WorkerError>
where
    T: Task,
    F: FnMut(T) -> Result<T::Output, E>,
    E: Display,
{
    try_serve_with_progress(|task, _: &Progress<'_>| handler(task))
}

/// Like [`serve`], with a handler that can report progress (or partial
/// results) of the running task through [`Progress`]; the parent sees them
/// on the task's handle.
///
/// ```no_run
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::Progress;
///
/// fn main() {
///     worker_facade::worker::serve_with_progress(|t: SimpleTask, progress: &Progress| {
///         for step in 0..10u32 {
///             progress.report(&step);
///         }
///         Ok::<_, String>(t.solve())
///     })
/// }
/// ```
pub fn serve_with_progress<T, F, E>(handler: F)
where
    T: Task,
    F: FnMut(T, &Progress<'_>) -> Result<T::Output, E>,
    E: Display,
{
    exit_if_failed(try_serve_with_progress(handler));
}

/// Like [`run_if_worker`], with a handler that can report progress through
/// [`Progress`] (see [`serve_with_progress`]).
///
/// ```no_run
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::Progress;
///
/// fn main() {
///     worker_facade::worker::run_if_worker_with_progress(|t: SimpleTask, p: &Progress| {
///         p.report("half way");
///         Ok::<_, String>(t.solve())
///     });
///     // Only the parent gets here.
/// }
/// ```
pub fn run_if_worker_with_progress<T, F, E>(handler: F)
where
    T: Task,
    F: FnMut(T, &Progress<'_>) -> Result<T::Output, E>,
    E: Display,
{
    if is_worker() {
        serve_with_progress(handler);
        #[allow(clippy::exit)]
        std::process::exit(0);
    }
}

/// Like [`try_serve`], with a handler that can report progress.
///
/// ```no_run
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::{Progress, try_serve_with_progress};
///
/// fn main() -> Result<(), worker_facade::worker::WorkerError> {
///     try_serve_with_progress(|t: SimpleTask, p: &Progress| {
///         p.report(&0.5f64);
///         Ok::<_, String>(t.solve())
///     })
/// }
/// ```
///
/// # Errors
///
/// As [`try_serve`].
pub fn try_serve_with_progress<T, F, E>(mut handler: F) -> Result<(), WorkerError>
where
    T: Task,
    F: FnMut(T, &Progress<'_>) -> Result<T::Output, E>,
    E: Display,
{
    SERVING.store(true, SeqCst);
    let (stream, options) = connect::<T>()?;
    let _watch = watch_parent(options.parent_pid);
    let max = options.max_frame;
    let mut reader = FrameReader::new(&stream, max);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let outlet = std::cell::RefCell::new(Outlet::new(&stream, &options)?);
    let mut look_ahead = LookAhead::new();
    // The parent encoded every task from a `T`: a type whose shape holds no
    // length is decoded without the codec's limit (see `types::Lengths`).
    let limit = crate::types::Signature::lengths_of::<T>().task.trusted();
    // The task region, mapped now (its descriptor closed at once).
    let tasks = Tasks::open();
    // What the parent cancelled, seen ahead of the tasks it concerns.
    let mut cancel_all = false;
    let mut cancelled: HashSet<u64> = HashSet::new();
    // Where the last task's OK frame starts in `out`, while unsent: the
    // next task's STARTED can travel in it.
    let mut last_ok: Option<usize> = None;
    loop {
        // Never block on a read with results unsent.
        if !out.is_empty() && !reader.has_buffered_frame() {
            outlet.borrow_mut().send(&out)?;
            out.clear();
            last_ok = None;
        }
        // Tasks already buffered do not start once the parent cancelled
        // them: look at the socket now and then, without blocking.
        if reader.has_buffered_frame() && look_ahead.due() {
            let fd = stream.as_raw_fd();
            let _ = reader.read_ahead(|buf| match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => Ok(n),
                Err(nix::errno::Errno::EAGAIN) => Ok(0),
                Err(e) => Err(e.into()),
            });
        }
        // Before acting on the next frame, everything that came with it is
        // looked at: a CANCEL read together with the tasks it cancels wins.
        if !reader.has_buffered_frame() && !reader.wait_for_frame()? {
            return Ok(()); // the parent went away
        }
        reader.scan_buffered(|kind, rest| match kind {
            KIND_CANCEL => cancel_all = true,
            KIND_CANCEL_TASK => {
                if let Some(id) = rest.get(..8).and_then(|b| b.try_into().ok()) {
                    cancelled.insert(u64::from_le_bytes(id));
                }
            }
            _ => {}
        });
        if cancel_all {
            outlet.borrow_mut().send(&out)?;
            return Ok(());
        }
        let Some(frame) = reader.next_frame()? else {
            // The parent went away: nothing left to do.
            return Ok(());
        };
        match frame.kind {
            KIND_TASK | KIND_TASK_AT => {
                let (id, payload) = frame.id_and_payload()?;
                let at = match frame.kind {
                    KIND_TASK_AT => Some(wire::task_at(payload)?),
                    _ => None,
                };
                // (Most often empty: no hashing then.)
                if !cancelled.is_empty() && cancelled.remove(&id) {
                    wire::push_bare(&mut out, KIND_SKIPPED, Some(id));
                    continue;
                }
                // The previous result and this STARTED leave in one write,
                // before the task is even decoded: a crash from here on is
                // this task's. In one frame, when the result is an OK that
                // nothing followed: a stream's parent reads one frame per
                // task, not two.
                let start_only = out.is_empty();
                let merged = last_ok
                    .take()
                    .is_some_and(|at| wire::mark_next_started(&mut out, at, id, max));
                if !merged {
                    wire::push_bare(&mut out, KIND_STARTED, Some(id));
                }
                outlet.borrow_mut().send_start(&out, start_only)?;
                out.clear();
                if options.mark_output {
                    mark_output(id);
                }
                // A large task is decoded in place from the task region,
                // long before it is answered (region.rs, step 4): the loan
                // ends with the decode.
                let decoded = match at {
                    None => caught(|| codec::decode_with::<T>(payload, limit)),
                    Some((offset, len)) => {
                        let lent = tasks.with_task(offset, len, |bytes| {
                            caught(|| codec::decode_with::<T>(bytes, limit))
                        });
                        match lent {
                            Ok(decoded) => decoded,
                            Err(why) => {
                                push_message(&mut out, KIND_UNDECODABLE, id, &why, max);
                                continue;
                            }
                        }
                    }
                };
                let task = match decoded {
                    Ok(Ok(task)) => task,
                    Ok(Err(e)) => {
                        push_message(&mut out, KIND_UNDECODABLE, id, &error_chain(&e), max);
                        continue;
                    }
                    Err(panic) => {
                        let why = format!("its Deserialize {panic}");
                        push_message(&mut out, KIND_UNDECODABLE, id, &why, max);
                        continue;
                    }
                };
                let progress = Progress::new(&outlet, id, max);
                let result = caught(|| handler(task, &progress));
                // The last value reported goes before the result.
                out.extend_from_slice(&progress.into_pending());
                match result {
                    Ok(Ok(output)) => {
                        last_ok = Some(out.len());
                        push_output::<T>(&mut out, id, &output, max);
                    }
                    Ok(Err(e)) => push_message(&mut out, KIND_ERR, id, &e.to_string(), max),
                    Err(panic) => {
                        push_message(&mut out, KIND_ERR, id, &format!("the handler {panic}"), max)
                    }
                }
            }
            // Seen by the scan above already; the task may have run.
            KIND_CANCEL_TASK => {
                if let Ok((id, _)) = frame.id_and_payload() {
                    cancelled.remove(&id);
                }
            }
            KIND_STOP | KIND_CANCEL => {
                outlet.borrow_mut().send(&out)?;
                return Ok(());
            }
            other => {
                return Err(WireError::Malformed(format!(
                    "unexpected message kind {other:#04x} from the parent"
                ))
                .into());
            }
        }
        reader.shrink();
    }
}

/// If this process was started as a worker by
/// [`WorkerCommand::current_exe`](crate::WorkerCommand::current_exe), serves
/// tasks with `handler` and exits; otherwise returns at once.
///
/// Call it first thing in `main`, before anything that should only happen in
/// the parent:
///
/// ```
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
///
///     // Only the parent gets here.
///     let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
///     w.process_task(SimpleTask::new("one", 0.1))?;
///     for record in w.collect_tasks()? {
///         println!("{} - {:?}", record.task.id, record.outcome);
///     }
///     Ok(())
/// }
/// ```
///
/// The marker is the environment variable [`WORKER_ENV`].
/// Processes the worker itself starts inherit it unless the worker removes it
/// from their environment.
///
/// In a worker, only the first call serves. A call from another thread
/// meanwhile (tests that each begin with `run_if_worker` run on threads of
/// their own) waits until the process ends, which it does when serving ends:
/// it neither serves a second time nor ends the worker under the first.
/// For tests, see [`testing`](crate::testing).
///
/// # With an async runtime
///
/// Call it in a plain `fn main`, *before* building the runtime, not inside
/// `#[tokio::main]`: there the worker would serve from inside the runtime,
/// and a handler that runs async code with a runtime of its own (`block_on`)
/// panics on every task ("Cannot start a runtime from within a runtime").
///
/// ```
/// use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // First: in the worker, this serves tasks and exits. The handler may
///     // run async code on a runtime of its own: it is not inside one.
///     worker_facade::worker::run_if_worker(|t: SimpleTask| {
///         let rt = tokio::runtime::Builder::new_current_thread()
///             .build()
///             .map_err(|e| e.to_string())?;
///         Ok::<_, String>(rt.block_on(async { t.solve() }))
///     });
///
///     // Only the parent gets here, and builds its runtime.
///     let runtime = tokio::runtime::Runtime::new()?;
///     runtime.block_on(async {
///         let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
///         let handle = w.submit(SimpleTask::new("one", 0.0)).map_err(|e| e.to_string())?;
///         assert_eq!(handle.await?, Outcome::Completed("one solved after 0".into()));
///         Ok(())
///     })
/// }
/// ```
///
/// `examples/tokio_main.rs` is the same shape, whole.
pub fn run_if_worker<T, F, E>(handler: F)
where
    T: Task,
    F: FnMut(T) -> Result<T::Output, E>,
    E: Display,
{
    if is_worker() {
        if RUN_IF_WORKER_SERVES.swap(true, SeqCst) {
            // Another thread of this worker serves: the process ends when it
            // is done, and this thread with it.
            loop {
                std::thread::park();
            }
        }
        serve(handler);
        // The worker's work is done; it must not go on into the parent's main.
        #[allow(clippy::exit)]
        std::process::exit(0);
    }
}

/// Whether this process was started as a worker by a facade.
///
/// ```
/// // A test binary is not a worker.
/// assert!(!worker_facade::worker::is_worker());
/// ```
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// The number of the inherited socket descriptor, from the environment.
fn inherited_fd() -> Option<i32> {
    std::env::var(WORKER_FD_ENV).ok()?.trim().parse().ok()
}

/// Takes the inherited socket, reads the BOOT frame, applies its limits and
/// says hello.
fn connect<T: Task>() -> Result<(UnixStream, WorkerOptions), WorkerError> {
    let no_socket = |detail: String| {
        WorkerError::NoBootstrap(WireError::Malformed(format!(
            "{detail} (the variable {WORKER_FD_ENV} names the socket a parent hands its worker)"
        )))
    };
    let fd = inherited_fd().ok_or_else(|| no_socket(format!("{WORKER_FD_ENV} is not set")))?;
    let fd = crate::sys::take_inherited_socket(fd)
        .map_err(|e| no_socket(format!("descriptor {fd}: {e}")))?;
    let stream = UnixStream::from(fd);
    // The peer must be our parent: a descriptor number is no proof.
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| WorkerError::Connect(e.into()))?;
    if peer.pid() as u32 != nix::unistd::getppid().as_raw() as u32 {
        return Err(WorkerError::Connect(io::Error::other(format!(
            "the inherited socket's peer is process {}, not the parent",
            peer.pid()
        ))));
    }
    let boot = {
        let mut boot_reader = FrameReader::new(&stream, 64 * 1024);
        let frame = boot_reader
            .next_frame()
            .map_err(WorkerError::NoBootstrap)?
            .ok_or(WorkerError::NoBootstrap(WireError::Truncated {
                got: 0,
                want: 4,
            }))?;
        let boot = wire::decode_bootstrap(&frame).map_err(WorkerError::NoBootstrap)?;
        if boot_reader.has_buffered_frame() {
            return Err(WorkerError::NoBootstrap(WireError::Malformed(
                "the parent sent more than the bootstrap before the handshake".into(),
            )));
        }
        boot
    };
    if let Some(options) = &boot.options {
        apply_limits(options);
    }
    let mut said = Hello {
        protocol: PROTOCOL_WORD,
        pid: std::process::id(),
        token: boot.token,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        types: Some((*crate::types::Signature::of::<T>()).clone()),
    };
    let mut hello = Vec::new();
    wire::push_hello(&mut hello, &said);
    if hello.len() > wire::HANDSHAKE_MAX as usize {
        // Shapes too large to send (a type with thousands of fields): the
        // parent then checks nothing rather than refusing the worker.
        said.types = None;
        hello.clear();
        wire::push_hello(&mut hello, &said);
    }
    (&stream).write_all(&hello).map_err(WorkerError::Connect)?;
    match boot.options {
        Some(options) => Ok((stream, options)),
        None => match wire::split_protocol_word(boot.protocol) {
            (PROTOCOL_VERSION, codec) => Err(WorkerError::CodecMismatch {
                parent: wire::codec_name(codec),
            }),
            (parent, _) => Err(WorkerError::ProtocolMismatch { parent }),
        },
    }
}

/// Refuses to make a facade in a process started as a worker that has not
/// started serving: its `main` forgot [`run_if_worker`], and would start
/// the next worker, and that one the next. Tells the parent too (once), so
/// that its constructor's error says the same.
pub(crate) fn refuse_unserved_worker(path: &Path) -> Result<(), SpawnError> {
    if !is_worker() || SERVING.load(SeqCst) {
        return Ok(());
    }
    if !ANNOUNCED.swap(true, SeqCst) {
        if let Some(fd) = inherited_fd().and_then(crate::sys::borrow_open_fd) {
            let mut frame = Vec::with_capacity(5);
            wire::push_bare(&mut frame, KIND_NOT_SERVING, None);
            let _ = send(
                fd.as_raw_fd(),
                &frame,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
        }
    }
    Err(SpawnError::RunIfWorkerMissing {
        path: path.to_path_buf(),
    })
}

/// Core dumps off unless allowed, the memory cap, and death with the parent.
fn apply_limits(options: &WorkerOptions) {
    use nix::sys::resource::{Resource, setrlimit};
    if !options.core_dumps {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    }
    if let Some(limit) = options.memory_limit {
        let _ = setrlimit(Resource::RLIMIT_AS, limit, limit);
    }
}

/// Takes this worker's whole process group down when its parent dies, even
/// by SIGKILL: a thread waits on a pidfd of the parent, and kills the group
/// (the worker and the children it started) the moment the parent is gone.
/// `PR_SET_PDEATHSIG` would kill the worker alone, first, and leave its
/// children behind; it is only the fallback when the watch cannot start.
///
/// # Drop
///
/// Stops the watch and joins its thread (when serving ends normally).
struct ParentWatch {
    stop: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ParentWatch {
    fn drop(&mut self) {
        drop(self.stop.take()); // the watch sees its pipe close
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch_parent(parent_pid: u32) -> Option<ParentWatch> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpgrp, getpid, getppid};
    let fallback = || {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        None
    };
    let Ok(parent) = crate::sys::pidfd_open(parent_pid) else {
        return fallback();
    };
    let Ok((stop_rx, stop_tx)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return fallback();
    };
    let end_everything = || {
        // Our own group only when we lead it (the facade starts every
        // worker in a group of its own); never someone else's.
        if getpgrp() == getpid() {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
        let _ = kill(getpid(), Signal::SIGKILL);
    };
    let thread = std::thread::Builder::new()
        .name("wf-parent-watch".into())
        .spawn(move || {
            // The parent may have died before its pidfd was opened.
            if getppid() != Pid::from_raw(parent_pid as i32) {
                end_everything();
            }
            loop {
                let mut fds = [
                    PollFd::new(std::os::fd::AsFd::as_fd(&parent), PollFlags::POLLIN),
                    PollFd::new(std::os::fd::AsFd::as_fd(&stop_rx), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                    Ok(_) => {}
                }
                let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
                if ready(1) {
                    return; // serving ended
                }
                if ready(0) {
                    end_everything();
                }
            }
        });
    match thread {
        Ok(thread) => Some(ParentWatch {
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Err(_) => fallback(),
    }
}

fn push_output<T: Task>(out: &mut Vec<u8>, id: u64, output: &T::Output, max: u32) {
    let start = out.len();
    let pushed = caught(|| {
        wire::push_frame(out, KIND_OK, Some(id), max, |o| {
            codec::encode_into(output, o)
        })
    });
    if pushed.is_err() {
        // The panic left a frame half written: take it out whole.
        out.truncate(start);
    }
    match pushed {
        Ok(Ok(())) => {}
        Ok(Err(PushError::Fill(e))) => push_message(
            out,
            KIND_ERR,
            id,
            &format!(
                "the worker could not encode the result: {}",
                error_chain(&e)
            ),
            max,
        ),
        Ok(Err(PushError::TooLarge { len, max: limit })) => push_message(
            out,
            KIND_ERR,
            id,
            &format!(
                "the result is {len} bytes, above the maximum frame size of {limit} bytes \
                 (raise it with WorkerCommand::max_frame_size)"
            ),
            max,
        ),
        Err(panic) => push_message(
            out,
            KIND_ERR,
            id,
            &format!("the result's Serialize {panic}"),
            max,
        ),
    }
}

/// Marks the start of task `id` in this process's stdout and stderr: what
/// the previous task left in Rust's or C's buffers goes out first, then a
/// marker line the parent strips. Pipes are FIFO for every writer, so each
/// line the parent reads after the marker was written after this point.
fn mark_output(id: u64) {
    let _ = io::stdout().flush();
    crate::sys::flush_c_stdio();
    let mut mark = Vec::with_capacity(32);
    mark.extend_from_slice(wire::OUTPUT_MARK);
    mark.extend_from_slice(id.to_string().as_bytes());
    mark.extend_from_slice(b"\x1f\n");
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        // A pipe the parent closed: the line is lost, as any would be.
        // Rust programs ignore SIGPIPE, so this is EPIPE, not a signal.
        let _ = nix::unistd::write(fd, &mark);
    }
}

/// How often a task's progress is sent to the parent at most; a value
/// reported sooner waits for the next report or the task's end.
const PROGRESS_EVERY: Duration = Duration::from_millis(1);

/// The running task's way to report progress or partial results to the
/// parent, handed to a handler given to [`serve_with_progress`] or
/// [`run_if_worker_with_progress`].
///
/// A value is any `Serialize` type; the parent reads it as the type it asks
/// for ([`TaskHandle::progress`](crate::TaskHandle::progress), or the
/// callback of
/// [`submit_with_progress`](crate::WorkingProcessFacade::submit_with_progress)).
/// Cheap enough to call in a loop: at most one value a millisecond is sent
/// (one `write`); a value reported sooner is kept, replaced by the next,
/// and sent with the next report after the millisecond or just before the
/// task's result. Only the latest value counts; none is ever queued.
///
/// ```
/// use worker_facade::worker::Progress;
///
/// fn handler(n: u64, progress: &Progress) -> Result<u64, String> {
///     let mut sum = 0;
///     for i in 0..n {
///         sum += i;
///         progress.report(&(i, n)); // done i of n
///     }
///     Ok(sum)
/// }
/// # let _ = handler;
/// ```
pub struct Progress<'a> {
    outlet: &'a std::cell::RefCell<Outlet<'a>>,
    id: u64,
    max: u32,
    state: std::cell::RefCell<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    last_sent: Option<Instant>,
    /// The latest value's frame, not yet sent.
    pending: Vec<u8>,
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("task", &self.id).finish()
    }
}

impl<'a> Progress<'a> {
    fn new(outlet: &'a std::cell::RefCell<Outlet<'a>>, id: u64, max: u32) -> Self {
        Progress {
            outlet,
            id,
            max,
            state: Default::default(),
        }
    }

    /// The ID the parent gave the running task.
    pub fn task_id(&self) -> crate::TaskId {
        crate::TaskId::from_raw(self.id)
    }

    /// Reports `value` as the task's latest progress. A value that cannot
    /// be encoded, or is larger than the maximum frame, is dropped.
    pub fn report<P: serde::Serialize + ?Sized>(&self, value: &P) {
        let mut state = self.state.borrow_mut();
        state.pending.clear();
        let pushed = caught(|| {
            wire::push_frame(
                &mut state.pending,
                KIND_PROGRESS,
                Some(self.id),
                self.max,
                |o| codec::encode_into(value, o),
            )
        });
        if !matches!(pushed, Ok(Ok(()))) {
            state.pending.clear();
            return;
        }
        let now = Instant::now();
        if state
            .last_sent
            .is_some_and(|at| now.saturating_duration_since(at) < PROGRESS_EVERY)
        {
            return; // kept for later
        }
        // A failed send means the parent went away: the serving loop sees
        // it at its next read. (`report` is called from the handler, while
        // the serving loop does not hold the outlet.)
        if let Ok(mut outlet) = self.outlet.try_borrow_mut() {
            let _ = outlet.send(&state.pending);
        }
        state.pending.clear();
        state.last_sent = Some(now);
    }

    fn into_pending(self) -> Vec<u8> {
        self.state.into_inner().pending
    }
}

/// The facade's task region, as this worker sees it (see `region.rs`).
enum Tasks {
    Mapped(crate::region::TaskView),
    /// None was handed down, or it could not be mapped: a large task (the
    /// parent sends none then) is answered undecodable with this reason.
    Missing(String),
}

impl Tasks {
    /// Maps the region the parent handed down, if any, and closes its
    /// descriptor (the mapping stays).
    fn open() -> Self {
        if std::env::var_os(WORKER_TASKS_ENV).is_none() {
            return Tasks::Missing("the facade has no task region".into());
        }
        match open_task_region() {
            Ok(view) => Tasks::Mapped(view),
            Err(e) => Tasks::Missing(format!("the task region could not be mapped: {e}")),
        }
    }

    /// Runs `f` on the large task at `offset` (`len` bytes), in place.
    fn with_task<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl for<'a> FnOnce(&'a [u8]) -> R,
    ) -> Result<R, String> {
        match self {
            Tasks::Mapped(view) => view.with_task(offset, len, f),
            Tasks::Missing(why) => Err(why.clone()),
        }
    }
}

/// Maps the task region whose descriptor the parent handed down.
fn open_task_region() -> io::Result<crate::region::TaskView> {
    let number = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
    };
    let fd = number(WORKER_TASKS_ENV)
        .ok_or_else(|| io::Error::other(format!("{WORKER_TASKS_ENV} is not a number")))?;
    if number(WORKER_FD_ENV) == Some(fd) {
        return Err(io::Error::other(format!(
            "{WORKER_TASKS_ENV} names the socket's descriptor"
        )));
    }
    let fd = crate::sys::take_inherited_region(fd, crate::sys::Inherited::Tasks)?;
    crate::region::TaskView::open(fd.as_fd())
}

/// Where the worker's messages to its parent go: the result ring (see
/// `ring.rs`), with a WAKE on the socket when the parent sleeps.
pub(crate) struct Outlet<'a> {
    ring: crate::ring::RingWriter,
    socket: &'a UnixStream,
    parent: u32,
}

impl<'a> Outlet<'a> {
    fn new(socket: &'a UnixStream, options: &WorkerOptions) -> Result<Self, WorkerError> {
        let bad =
            |e: io::Error| WorkerError::Connect(io::Error::other(format!("result ring: {e}")));
        let fd = std::env::var(WORKER_RING_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad(io::Error::other(format!("{WORKER_RING_ENV} is not set"))))?;
        let fd = crate::sys::take_inherited_region(fd, crate::sys::Inherited::Ring).map_err(bad)?;
        let map = crate::sys::SharedMap::map(fd.as_fd(), crate::ring::REGION_LEN).map_err(bad)?;
        Ok(Outlet {
            ring: crate::ring::RingWriter::new(map).map_err(bad)?,
            socket,
            parent: options.parent_pid,
        })
    }

    /// Publishes `bytes` (whole frames) to the parent.
    fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.publish(bytes, false)
    }

    /// Publishes `bytes`, which end with a task's STARTED, to the parent.
    /// A STARTED alone (`start_only`) wakes the parent only if it watches
    /// starts.
    fn send_start(&mut self, bytes: &[u8], start_only: bool) -> Result<(), WireError> {
        self.publish(bytes, start_only)
    }

    fn publish(&mut self, bytes: &[u8], start_only: bool) -> Result<(), WireError> {
        let fd = self.socket.as_raw_fd();
        let parent = self.parent;
        // `len = 1, kind = WAKE`: built once, not on every wake.
        const WAKE: [u8; 5] = [1, 0, 0, 0, KIND_WAKE];
        let mut wake = || {
            // Full socket: wakes are waiting already.
            let _ = send(fd, &WAKE, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
        };
        let mut parent_gone = || nix::unistd::getppid().as_raw() as u32 != parent;
        self.ring
            .send(bytes, start_only, &mut wake, &mut parent_gone)
            .map_err(WireError::Io)
    }
}

/// A panic caught in the worker: its message and where it happened.
struct Caught {
    message: String,
    site: Option<PanicSite>,
}

/// Where a caught panic happened, recorded by the worker's panic hook.
struct PanicSite {
    file: String,
    line: u32,
    column: u32,
    /// Captured when `RUST_BACKTRACE` asks for it (`Backtrace::capture`).
    backtrace: Option<String>,
}

/// Reads like Rust's own report: `panicked at src/main.rs:10:5: boom`,
/// then the backtrace if one was captured.
impl Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.site {
            Some(site) => {
                write!(
                    f,
                    "panicked at {}:{}:{}: {}",
                    site.file, site.line, site.column, self.message
                )?;
                if let Some(trace) = &site.backtrace {
                    write!(f, "\nstack backtrace:\n{trace}")?;
                }
                Ok(())
            }
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

std::thread_local! {
    /// Set while this thread runs user code under [`caught`].
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The site of the last panic [`caught`] is about to catch.
    static SITE: std::cell::RefCell<Option<PanicSite>> = const { std::cell::RefCell::new(None) };
}

/// Runs user code (the handler, a `Deserialize`, a `Serialize`), catching a
/// panic with its message and site. The panic is not printed: it is the
/// task's outcome, and a worker printing every caught panic would flood the
/// parent's stderr. Panics elsewhere (another thread of the handler's, or
/// outside [`caught`]) go to the hook that was installed before.
fn caught<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    install_panic_hook();
    // Restored after: `caught` nests (a progress value's Serialize runs
    // inside the handler's).
    let was = CATCHING.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|panic| Caught {
        message: panic_message(&*panic),
        site: SITE.with(|s| s.borrow_mut().take()),
    })
}

/// Wraps the panic hook once per process: a panic under [`caught`] records
/// its site for the outcome; any other goes to the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(|c| c.get()) {
                return previous(info);
            }
            let site = info.location().map(|at| {
                let trace = std::backtrace::Backtrace::capture();
                PanicSite {
                    file: at.file().to_string(),
                    line: at.line(),
                    column: at.column(),
                    backtrace: (trace.status() == std::backtrace::BacktraceStatus::Captured)
                        .then(|| trace.to_string()),
                }
            });
            SITE.with(|s| *s.borrow_mut() = site);
        }));
    });
}

/// Appends an ERR or UNDECODABLE frame. The text is the handler's or ours;
/// it is cut to fit the frame limit (and 16 KiB), never refused: a message
/// too long for the frame must not cost the worker.
fn push_message(out: &mut Vec<u8>, kind: u8, id: u64, message: &str, max: u32) {
    // The body is the kind byte, the 8-byte ID and the text.
    let room = (max as usize).saturating_sub(9).min(16 * 1024);
    let message = truncate_utf8(message, room);
    wire::push_bare_with(out, kind, id, message.as_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The look-ahead comes due once its interval (and, on the coarse
    /// clock, a tick: at most 10 ms) has passed, and not again at once.
    #[test]
    fn the_look_ahead_comes_due_after_its_interval_and_starts_over() {
        let mut look = LookAhead::new();
        assert!(
            matches!(look, LookAhead::Coarse(_)),
            "Linux has had CLOCK_MONOTONIC_COARSE since 2.6.32"
        );
        std::thread::sleep(LOOK_AHEAD_EVERY + Duration::from_millis(25));
        assert!(look.due(), "due once the interval and a tick have passed");
        assert!(!look.due(), "the clock started over");
    }
}
