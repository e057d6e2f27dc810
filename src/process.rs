//! Starting, watching, signalling and reaping one worker process.
//!
//! The life of a worker, as this module sees it:
//!
//! 1. A private directory (mode 0700, random name) gets a listening local
//!    socket (`interprocess`).
//! 2. The worker is spawned in its own process group with its stdin, stdout
//!    and stderr piped. Rust opens every descriptor close-on-exec, so the
//!    worker inherits nothing else of ours.
//! 3. The socket path and a one-time token go to the worker over its stdin
//!    (never argv or the environment, where `ps` and `/proc` show them).
//! 4. A monitor thread blocks in `waitid(WEXITED | WNOWAIT)`: it *observes*
//!    the death without reaping, so the pid stays ours until the owner
//!    reaps it, and a kill can never hit a recycled pid.
//! 5. The parent accepts with a deadline while watching for the death, and
//!    takes a connection only from the worker's process group and our uid,
//!    with the right token. The socket file and directory are removed as
//!    soon as the worker is connected.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use interprocess::local_socket::traits::{Listener as _, StreamCommon as _};
use interprocess::local_socket::{
    GenericFilePath, ListenerNonblockingMode, ListenerOptions, ToFsName,
};
use interprocess::os::unix::uds_local_socket as uds;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::command::{WORKER_ENV, WorkerCommand};
use crate::console::Pump;
use crate::error::SpawnError;
use crate::task::{ExitInfo, ResourceUsage};
use crate::wire::{self, Bootstrap, KIND_HELLO, PROTOCOL_VERSION, TOKEN_LEN, WorkerOptions};

/// A live (or dead but not yet reaped) worker process.
///
/// Dropping it kills the process group and reaps the worker, joining every
/// thread it started; the supervisor normally does this explicitly through
/// [`WorkerProcess::reap`] to learn the exit status.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pub(crate) pid: u32,
    proc: Proc,
    /// The connected socket (the worker's end is the only peer).
    pub(crate) stream: UnixStream,
    /// The read end of the monitor's death pipe, kept open until the monitor
    /// is joined so that its one write can never hit a closed pipe.
    _death: OwnedFd,
}

/// What [`WorkerProcess::reap`] learned.
#[derive(Debug, Clone)]
pub(crate) struct Reaped {
    pub(crate) exit: ExitInfo,
    pub(crate) stderr_tail: Vec<String>,
    /// The worker reported a failed allocation on stderr.
    pub(crate) alloc_failed: bool,
}

impl WorkerProcess {
    /// Spawns the worker and completes the handshake. `on_exit` runs on the
    /// monitor thread once the worker has died (after a successful spawn it
    /// is how the supervisor hears of the death).
    pub(crate) fn spawn(
        cmd: &WorkerCommand,
        refused: &AtomicU64,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Result<WorkerProcess, SpawnError> {
        let path = cmd.program.clone();
        let resource = |what: &'static str| {
            let path = path.clone();
            move |source: io::Error| SpawnError::Resource { what, path, source }
        };
        let base = cmd.socket_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = SocketDir::create(&base).map_err(resource("private socket directory"))?;
        let socket_path = dir.path.join("s");
        let name = socket_path
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(resource("socket name"))?;
        let listener: uds::Listener = ListenerOptions::new()
            .name(name)
            .nonblocking(ListenerNonblockingMode::Accept)
            .reclaim_name(true)
            .create_sync_as()
            .map_err(resource("listening socket"))?;

        let token = random_bytes::<TOKEN_LEN>().map_err(resource("handshake token"))?;
        let boot = Bootstrap {
            socket_path: socket_path.to_string_lossy().into_owned(),
            token,
            options: WorkerOptions {
                max_frame: cmd.max_frame,
                parent_pid: std::process::id(),
                core_dumps: cmd.core_dumps,
                memory_limit: cmd.memory_limit,
            },
        };
        let boot = wire::encode_bootstrap(&boot).map_err(|e| SpawnError::Resource {
            what: "bootstrap message",
            path: path.clone(),
            source: io::Error::other(e),
        })?;

        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env(WORKER_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            // Its own process group: a kill reaches the worker's children too.
            .process_group(0);
        if cmd.output.is_piped() {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        for (key, value) in &cmd.env {
            match value {
                Some(v) => command.env(key, v),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &cmd.current_dir {
            command.current_dir(dir);
        }
        crate::sys::close_inherited_descriptors_on_exec(&mut command);
        let child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SpawnError::NotFound { path: path.clone() },
            io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { path: path.clone() },
            _ => SpawnError::Start {
                path: path.clone(),
                source,
            },
        })?;
        let pid = child.id();

        // From here on, every early return must kill and reap the child:
        // `Starting` does that on drop.
        let mut starting = Proc {
            child: Some(child),
            pid,
            monitor: None,
            pump: None,
        };

        let (death_rx, death_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Resource {
                what: "death-notification pipe",
                path: path.clone(),
                source: e.into(),
            })?;
        if let (Some(stdout), Some(stderr)) = starting.take_pipes() {
            starting.pump = Some(
                Pump::start(pid, stdout, stderr, cmd.output.clone())
                    .map_err(resource("output thread"))?,
            );
        }
        starting.monitor = Some(
            thread::Builder::new()
                .name(format!("wf-monitor-{pid}"))
                .spawn(move || {
                    wait_for_death(pid);
                    let _ = nix::unistd::write(&death_tx, b"x");
                    on_exit();
                })
                .map_err(resource("monitor thread"))?,
        );

        // The bootstrap is small enough for the pipe buffer; a worker that
        // died already makes this fail with EPIPE, which the accept below
        // turns into a precise error.
        if let Some(mut stdin) = starting.take_stdin() {
            let _ = stdin.write_all(&boot);
        }

        let deadline = Instant::now() + cmd.handshake_timeout;
        let outcome = accept_worker(&listener, &death_rx, pid, &token, deadline, refused);
        drop(listener);
        drop(dir);
        match outcome {
            Ok(stream) => Ok(WorkerProcess {
                pid,
                proc: starting,
                stream,
                _death: death_rx,
            }),
            Err(failure) => {
                let reaped = starting.reap().unwrap_or_else(|| Reaped {
                    exit: exit_info(pid, None),
                    stderr_tail: Vec::new(),
                    alloc_failed: false,
                });
                Err(failure.into_error(path, cmd.handshake_timeout, reaped))
            }
        }
    }

    /// Sends `signal` to the worker and its process group. Only while the
    /// worker is not reaped, so the pid cannot have been reused.
    pub(crate) fn signal(&self, signal: Signal) {
        if self.proc.child.is_some() {
            signal_group(self.pid, signal);
        }
    }

    /// Kills the worker's process group, reaps the worker and joins its
    /// threads. Call once the worker is dead, or to make it so. `None` when
    /// it was reaped already.
    pub(crate) fn reap(&mut self) -> Option<Reaped> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.proc.reap()
    }
}

/// Sends `signal` to the worker and to its process group.
fn signal_group(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32);
    // The worker may have left the group (setpgid); signal it directly too.
    let _ = kill(pid, signal);
    let _ = killpg(pid, signal);
}

/// Blocks until `pid` has exited, without reaping it.
fn wait_for_death(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            // Exited, or ECHILD (someone else reaped it): either way it is gone.
            _ => return,
        }
    }
}

/// Reaps `child` with its resource usage, retrying on interruption.
fn wait_reaping(child: Child) -> Option<(ExitStatus, ResourceUsage)> {
    let pid = child.id();
    // `child` is dropped unreaped by std's bookkeeping: std's `Child` has no
    // Drop that waits or kills, and it is never waited on again.
    drop(child);
    crate::sys::reap(pid).ok()
}

pub(crate) fn exit_info(pid: u32, waited: Option<(ExitStatus, ResourceUsage)>) -> ExitInfo {
    match waited {
        Some((status, usage)) => ExitInfo {
            pid,
            code: status.code(),
            signal: status.signal(),
            core_dumped: status.core_dumped(),
            usage: Some(usage),
        },
        None => ExitInfo {
            pid,
            code: None,
            signal: None,
            core_dumped: false,
            usage: None,
        },
    }
}

/// The process and the threads watching it. Dropping it kills the process
/// group, reaps the worker and joins the threads, so an error path (or a
/// panic) leaves nothing behind.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    pid: u32,
    monitor: Option<JoinHandle<()>>,
    pump: Option<Pump>,
}

impl Proc {
    fn take_pipes(
        &mut self,
    ) -> (
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        match self.child.as_mut() {
            Some(c) => (c.stdout.take(), c.stderr.take()),
            None => (None, None),
        }
    }

    fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// Kills what is left of the process group, reaps the worker, joins the
    /// monitor and the output pump. `None` if already reaped.
    fn reap(&mut self) -> Option<Reaped> {
        let child = self.child.take()?;
        // The worker may already be a zombie; its own children die here too.
        signal_group(self.pid, Signal::SIGKILL);
        let status = wait_reaping(child);
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        let (stderr_tail, alloc_failed) = self.pump.take().map(Pump::finish).unwrap_or_default();
        Some(Reaped {
            exit: exit_info(self.pid, status),
            stderr_tail,
            alloc_failed,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Why the handshake failed, before the worker was reaped.
enum Failure {
    Exited,
    Timeout,
    Protocol { found: u32, version: String },
    Bad(String),
    Io(&'static str, io::Error),
}

impl Failure {
    fn into_error(self, path: PathBuf, timeout: Duration, reaped: Reaped) -> SpawnError {
        match self {
            Failure::Exited => SpawnError::ExitedEarly {
                path,
                status: reaped.exit,
                stderr_tail: reaped.stderr_tail,
            },
            Failure::Timeout => SpawnError::HandshakeTimeout {
                path,
                timeout,
                stderr_tail: reaped.stderr_tail,
            },
            Failure::Protocol { found, version } => SpawnError::ProtocolMismatch {
                path,
                expected: PROTOCOL_VERSION,
                found,
                worker_version: version,
            },
            Failure::Bad(detail) => SpawnError::BadHandshake { path, detail },
            Failure::Io(what, source) => SpawnError::Resource { what, path, source },
        }
    }
}

/// Waits for the worker's connection until `deadline`, refusing strangers.
fn accept_worker(
    listener: &uds::Listener,
    death: &OwnedFd,
    pid: u32,
    token: &[u8; TOKEN_LEN],
    deadline: Instant,
    refused: &AtomicU64,
) -> Result<UnixStream, Failure> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout);
        }
        let wait = PollTimeout::try_from(deadline - now).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(death.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, wait) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Failure::Io("poll on the listening socket", e.into())),
        }
        let connection_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let died = fds[1].revents().is_some_and(|r| !r.is_empty());
        if !connection_ready && died {
            return Err(Failure::Exited);
        }
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Io("accepted connection", e)),
        };
        if !peer_is_worker(&stream, pid) {
            // A stranger: refuse it and keep waiting for the real worker.
            refused.fetch_add(1, Relaxed);
            continue;
        }
        let stream = UnixStream::from(OwnedFd::from(stream));
        match read_hello(&stream, token, deadline) {
            Ok(()) => return Ok(stream),
            Err(HelloError::Stranger) => {
                refused.fetch_add(1, Relaxed);
                continue;
            }
            Err(HelloError::Failure(f)) => return Err(f),
        }
    }
}

/// The peer must run as our uid, and be the worker or in its process group.
fn peer_is_worker(stream: &uds::Stream, pid: u32) -> bool {
    let Ok(creds) = stream.peer_creds() else {
        return false;
    };
    if creds.euid() != Some(nix::unistd::geteuid().as_raw()) {
        return false;
    }
    match creds.pid() {
        Some(p) if p as u32 == pid => true,
        Some(p) => nix::unistd::getpgid(Some(Pid::from_raw(p)))
            .is_ok_and(|group| group.as_raw() as u32 == pid),
        None => false,
    }
}

enum HelloError {
    Stranger,
    Failure(Failure),
}

fn read_hello(
    stream: &UnixStream,
    token: &[u8; TOKEN_LEN],
    deadline: Instant,
) -> Result<(), HelloError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HelloError::Failure(Failure::Timeout));
    }
    let io = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            HelloError::Failure(Failure::Timeout)
        } else {
            HelloError::Stranger
        }
    };
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(left)).map_err(io)?;
    let mut reader = stream;
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).map_err(io)?;
    let len = u32::from_le_bytes(header);
    if len > 1024 {
        return Err(HelloError::Failure(Failure::Bad(format!(
            "handshake frame of {len} bytes (at most 1024 expected)"
        ))));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).map_err(io)?;
    stream.set_read_timeout(None).map_err(io)?;
    let frame = wire::Frame {
        kind: body.first().copied().unwrap_or(0),
        rest: body.get(1..).unwrap_or(&[]),
    };
    if frame.kind != KIND_HELLO {
        return Err(HelloError::Failure(Failure::Bad(format!(
            "first frame has kind {:#04x}, expected HELLO",
            frame.kind
        ))));
    }
    let hello =
        wire::decode_hello(&frame).map_err(|e| HelloError::Failure(Failure::Bad(e.to_string())))?;
    if hello.protocol != PROTOCOL_VERSION {
        return Err(HelloError::Failure(Failure::Protocol {
            found: hello.protocol,
            version: hello.crate_version,
        }));
    }
    if &hello.token != token {
        return Err(HelloError::Failure(Failure::Bad(
            "wrong handshake token".into(),
        )));
    }
    Ok(())
}

/// A private directory for the listening socket: mode 0700 and a random name,
/// removed (with the socket file, if still there) on drop.
struct SocketDir {
    path: PathBuf,
}

impl SocketDir {
    fn create(base: &std::path::Path) -> io::Result<SocketDir> {
        for _ in 0..8 {
            let name: String = random_bytes::<8>()?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = base.join(format!("wf-{name}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(SocketDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a free name for the socket directory",
        ))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Unpredictable bytes from the OS.
pub(crate) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}
