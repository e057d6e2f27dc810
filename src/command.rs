//! [`WorkerCommand`]: which program to start as a worker, and how.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::console::Output;
use crate::wire::DEFAULT_MAX_FRAME;

/// The environment variable that tells a re-executed binary it is a worker.
/// Its value is the parent's PID. It carries no secret.
pub const WORKER_ENV: &str = "WORKER_FACADE_WORKER";

/// The environment variable that tells a worker which inherited descriptor
/// is its end of the socket to the parent. It carries no secret: the
/// descriptor exists only in the worker.
pub(crate) const WORKER_FD_ENV: &str = "WORKER_FACADE_FD";

/// The environment variable naming the inherited descriptor of the
/// worker's result ring (shared memory; see `ring.rs`).
pub(crate) const WORKER_RING_ENV: &str = "WORKER_FACADE_RING_FD";

/// The environment variable naming the inherited descriptor of the
/// facade's task region (shared memory, read-only; see `region.rs`). Unset
/// when the facade has none.
pub(crate) const WORKER_TASKS_ENV: &str = "WORKER_FACADE_TASKS_FD";

/// Describes how to start a worker process: the program, its arguments and
/// environment, where its output goes, and process limits.
///
/// A builder taken by value; pass it to
/// [`WorkingProcessFacade::spawn`](crate::WorkingProcessFacade::spawn).
///
/// ```
/// use std::time::Duration;
/// use worker_facade::{Output, WorkerCommand};
///
/// let cmd = WorkerCommand::new("target/debug/facade-worker")
///     .arg("--quiet")
///     .env("RUST_BACKTRACE", "1")
///     .handshake_timeout(Duration::from_secs(5))
///     .output(Output::Silent);
/// assert_eq!(cmd.program(), std::path::Path::new("target/debug/facade-worker"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a WorkerCommand does nothing until passed to WorkingProcessFacade::spawn"]
pub struct WorkerCommand {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) output: Output,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_frame: u32,
    pub(crate) core_dumps: bool,
    pub(crate) memory_limit: Option<u64>,
    /// For [`WorkerCommand::current_exe`]: the very program this process
    /// runs, opened from `/proc/self/exe`, so that a worker started after
    /// the binary was rebuilt, replaced or deleted still runs this build.
    pub(crate) image: Option<Arc<OwnedFd>>,
}

/// This process's own program, opened once (close-on-exec, numbered 6 or
/// above, `sys::spawn::FIRST_FREE`) from `/proc/self/exe`, which names the running image even after its file was
/// replaced or deleted.
fn running_image() -> Option<Arc<OwnedFd>> {
    static IMAGE: OnceLock<Option<Arc<OwnedFd>>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let image = OwnedFd::from(std::fs::File::open("/proc/self/exe").ok()?);
            // Numbered above the descriptors a spawned worker is given, so
            // that it can stay open until the worker's `exec` (`sys::spawn`).
            let image = crate::sys::dup_at_least(image.as_fd(), crate::sys::spawn::FIRST_FREE)
                .unwrap_or(image);
            Some(Arc::new(image))
        })
        .clone()
}

impl WorkerCommand {
    /// A worker that is the program at `program`: the stock `facade-worker`,
    /// or your own binary whose `main` calls
    /// [`worker::serve`](crate::worker::serve).
    pub fn new(program: impl AsRef<Path>) -> Self {
        WorkerCommand {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            output: Output::default(),
            handshake_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            core_dumps: false,
            memory_limit: None,
            image: None,
        }
    }

    /// A worker that is this very executable, re-executed. Its `main` must
    /// call [`worker::run_if_worker`](crate::worker::run_if_worker) first.
    /// None of the parent's arguments are forwarded.
    ///
    /// Falls back to `argv[0]` if the OS cannot name the current executable.
    ///
    /// Workers run the very program this process runs, even if its file is
    /// rebuilt, replaced or deleted meanwhile (a `cargo build` during a long
    /// run): it is executed through a descriptor of the running image
    /// (`/proc/self/exe`, opened once), never by its path again. The path
    /// still names it in errors and in the worker's `argv[0]`.
    pub fn current_exe() -> Self {
        let program = std::env::current_exe()
            .unwrap_or_else(|_| std::env::args_os().next().unwrap_or_default().into());
        let mut cmd = WorkerCommand::new(program);
        cmd.image = running_image();
        cmd
    }

    /// Adds an argument for the worker.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments for the worker.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the worker.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable from the worker's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Sets the worker's working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Where the worker's stdout and stderr go (default: [`Output::Prefixed`]).
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// How long the worker has to connect and say hello (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest frame either side accepts, in bytes (default 64 MiB). A
    /// task or result larger than this is refused with a clear outcome.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.max_frame = bytes.max(64);
        self
    }

    /// Whether a crashing worker may write a core dump (default `false`:
    /// crash reports carry the signal, and a crash loop cannot fill the disk).
    pub fn core_dumps(mut self, allow: bool) -> Self {
        self.core_dumps = allow;
        self
    }

    /// Caps the worker's address space (`RLIMIT_AS`), in bytes. An allocation
    /// beyond it fails inside the worker, which usually aborts it; the task it
    /// was running is then reported as crashed.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The program this command starts.
    pub fn program(&self) -> &Path {
        &self.program
    }
}
