//! The worker side: what runs inside the child process.
//!
//! A worker is any binary that calls [`serve`] with a handler, or any binary
//! whose `main` begins with [`run_if_worker`] and is started by the parent
//! through [`WorkerCommand::current_exe`](crate::WorkerCommand::current_exe).
//!
//! The worker runs tasks one at a time, in the order they arrive. Before it
//! starts a task it tells the parent (so a crash is blamed on the right task
//! and a timeout counts from the start), and the result of each task is on
//! the wire before the next task starts, so a crash never loses a result that
//! was already computed. Both messages share one `write` call.

use std::any::Any;
use std::fmt::Display;
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use interprocess::os::unix::uds_local_socket as uds;

use crate::codec;
use crate::command::WORKER_ENV;
use crate::task::Task;
use crate::wire::{
    self, FrameReader, Hello, KIND_ERR, KIND_OK, KIND_STARTED, KIND_STOP, KIND_TASK,
    PROTOCOL_VERSION, PushError, WireError, WorkerOptions,
};

/// Exit code of a worker that could not talk to its parent.
pub const EXIT_PROTOCOL_ERROR: i32 = 70;

/// Why [`try_serve`] stopped before the parent sent the terminator.
///
/// ```no_run
/// use worker_facade::simple::SimpleTask;
/// use worker_facade::worker::{WorkerError, try_serve};
///
/// match try_serve(|t: SimpleTask| Ok::<_, String>(t.solve())) {
///     Ok(()) => {}
///     Err(WorkerError::NoBootstrap(_)) => eprintln!("start me through WorkingProcessFacade"),
///     Err(other) => eprintln!("{other}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Stdin did not carry the parent's bootstrap message: this binary was not
    /// started by a `WorkingProcessFacade`.
    #[error(
        "no bootstrap message on stdin: this program is a worker-facade worker and must be \
         started by WorkingProcessFacade, not run by hand"
    )]
    NoBootstrap(#[source] WireError),
    /// Connecting to the parent's socket failed.
    #[error("could not connect to the parent's socket")]
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
}

/// Serves tasks of type `T` with `handler` until the parent sends the
/// terminator or goes away, then returns. Call it from `main` of a dedicated
/// worker binary.
///
/// The handler's `Err` becomes [`Outcome::Failed`](crate::Outcome::Failed)
/// with the error's `Display` text; a panic in the handler becomes `Failed`
/// with the panic message, and the worker goes on with the next task.
///
/// If the worker cannot talk to its parent (it was run by hand, or the parent
/// broke the protocol), the error is printed to stderr and the process exits
/// with [`EXIT_PROTOCOL_ERROR`]. Use [`try_serve`] to handle that yourself.
///
/// ```no_run
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
    if let Err(err) = try_serve(handler) {
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

/// Like [`serve`], but returns the error instead of exiting.
///
/// ```no_run
/// use worker_facade::simple::SimpleTask;
///
/// fn main() -> Result<(), worker_facade::worker::WorkerError> {
///     worker_facade::worker::try_serve(|t: SimpleTask| Ok::<_, String>(t.solve()))
/// }
/// ```
pub fn try_serve<T, F, E>(mut handler: F) -> Result<(), WorkerError>
where
    T: Task,
    F: FnMut(T) -> Result<T::Output, E>,
    E: Display,
{
    let (stream, options) = connect()?;
    let max = options.max_frame;
    let mut reader = FrameReader::new(&stream, max);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut writer = &stream;
    loop {
        // Never block on a read with results unsent.
        if !out.is_empty() && !reader.has_buffered_frame() {
            writer.write_all(&out).map_err(WireError::Io)?;
            out.clear();
        }
        let Some(frame) = reader.next_frame()? else {
            // The parent went away: nothing left to do.
            return Ok(());
        };
        match frame.kind {
            KIND_TASK => {
                let (id, payload) = frame.id_and_payload()?;
                let task = match codec::decode::<T>(payload) {
                    Ok(task) => task,
                    Err(e) => {
                        push_error(
                            &mut out,
                            id,
                            &format!("the worker could not decode the task: {}", error_chain(&e)),
                        );
                        continue;
                    }
                };
                // The previous result and this STARTED leave in one write,
                // before the task runs.
                wire::push_bare(&mut out, KIND_STARTED, Some(id));
                writer.write_all(&out).map_err(WireError::Io)?;
                out.clear();
                match catch_unwind(AssertUnwindSafe(|| handler(task))) {
                    Ok(Ok(output)) => push_output::<T>(&mut out, id, &output, max),
                    Ok(Err(e)) => push_error(&mut out, id, &e.to_string()),
                    Err(panic) => push_error(
                        &mut out,
                        id,
                        &format!("the handler panicked: {}", panic_message(&*panic)),
                    ),
                }
            }
            KIND_STOP => {
                writer.write_all(&out).map_err(WireError::Io)?;
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
/// ```no_run
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// fn main() {
///     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
///
///     // Only the parent gets here.
///     let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe()).unwrap();
///     w.process_task(SimpleTask::new("one", 0.1)).unwrap();
///     for record in w.collect_tasks().unwrap() {
///         println!("{} - {:?}", record.task.id, record.outcome);
///     }
/// }
/// ```
///
/// The marker is the environment variable [`WORKER_ENV`].
/// Processes the worker itself starts inherit it unless the worker removes it
/// from their environment.
pub fn run_if_worker<T, F, E>(handler: F)
where
    T: Task,
    F: FnMut(T) -> Result<T::Output, E>,
    E: Display,
{
    if is_worker() {
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

/// Reads the bootstrap from stdin, applies its limits, connects and says hello.
fn connect() -> Result<(uds::Stream, WorkerOptions), WorkerError> {
    let stdin = io::stdin();
    let mut boot_reader = FrameReader::new(stdin.lock(), 64 * 1024);
    let frame = boot_reader
        .next_frame()
        .map_err(WorkerError::NoBootstrap)?
        .ok_or(WorkerError::NoBootstrap(WireError::Truncated {
            got: 0,
            want: 4,
        }))?;
    let boot = wire::decode_bootstrap(&frame).map_err(WorkerError::NoBootstrap)?;

    if let Some(options) = &boot.options {
        apply_limits(options);
    }
    let name = boot
        .socket_path
        .as_str()
        .to_fs_name::<GenericFilePath>()
        .map_err(WorkerError::Connect)?;
    let stream = uds::Stream::connect(name).map_err(WorkerError::Connect)?;
    let mut hello = Vec::new();
    wire::push_hello(
        &mut hello,
        &Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            token: boot.token,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    );
    (&stream).write_all(&hello).map_err(WorkerError::Connect)?;
    match boot.options {
        Some(options) => Ok((stream, options)),
        None => Err(WorkerError::ProtocolMismatch {
            parent: boot.protocol,
        }),
    }
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
    // The parent's supervisor thread spawned us and lives as long as its
    // facade, so this fires when the parent process dies, even by SIGKILL.
    // (PR_SET_PDEATHSIG follows the *thread* that forked; see DESIGN.md.)
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
}

fn push_output<T: Task>(out: &mut Vec<u8>, id: u64, output: &T::Output, max: u32) {
    match wire::push_frame(out, KIND_OK, Some(id), max, |o| {
        codec::encode_into(output, o)
    }) {
        Ok(()) => {}
        Err(PushError::Fill(e)) => push_error(
            out,
            id,
            &format!(
                "the worker could not encode the result: {}",
                error_chain(&e)
            ),
        ),
        Err(PushError::TooLarge { len, max }) => push_error(
            out,
            id,
            &format!("the result is {len} bytes, above the maximum frame size of {max} bytes"),
        ),
    }
}

fn push_error(out: &mut Vec<u8>, id: u64, message: &str) {
    // Error texts are ours or the handler's; cut them to fit any frame limit.
    let message = truncate_utf8(message, 16 * 1024);
    let pushed = wire::push_frame(out, KIND_ERR, Some(id), u32::MAX, |o| {
        o.extend_from_slice(message.as_bytes());
        Ok::<(), ()>(())
    });
    debug_assert!(pushed.is_ok());
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
