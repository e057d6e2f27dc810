//! Starting, signalling and reaping one worker process. No threads, and no
//! call here waits for the worker: the engine's loop watches the pidfd and
//! the socket, and calls back when they are ready.
//!
//! The life of a worker, as this module sees it:
//!
//! 1. A connected socket pair is made (`SOCK_CLOEXEC`), and the parent's
//!    BOOT frame (protocol version, a one-time token, the worker's limits)
//!    is queued on the parent's end at once: nothing is ever written to a
//!    pipe a dead worker could close, and nothing on the filesystem exists
//!    at any moment, so a parent SIGKILLed mid-handshake leaves nothing
//!    behind and no stranger can connect.
//! 2. The worker is spawned in its own process group, stdin from
//!    `/dev/null`, stdout and stderr piped. Between fork and exec every
//!    descriptor above stderr is made close-on-exec except the worker's end
//!    of the socket, whose number goes in [`WORKER_FD_ENV`].
//! 3. A pidfd is opened for the child at once: unless the child exited at
//!    once and the host reaped it (SIGCHLD ignored, a `waitpid(-1)`), which
//!    `pidfd_open` reports and the spawn reports as an early exit without
//!    ever signalling the pid. From then on signals go through the
//!    pidfd, the death is seen as the pidfd becoming readable, and the reap
//!    goes through `waitid(P_PIDFD)`: a recycled pid is never hit.
//! 4. The process group is signalled only while the worker is provably
//!    ours and unreaped (alive, or a zombie seen with `WNOWAIT`): while its
//!    leader is unreaped a group id cannot be reused. If someone else reaped
//!    the worker, the group is never signalled and the status is reported
//!    lost, with the reason.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::command::{WORKER_ENV, WORKER_FD_ENV, WORKER_RING_ENV, WorkerCommand};
use crate::error::SpawnError;
use crate::sys::{self, Waited};
use crate::task::{ExitInfo, StatusLost};
use crate::wire::{self, Bootstrap, TOKEN_LEN, WorkerOptions};

/// A spawned worker: the process, the parent's end of its socket
/// (non-blocking, BOOT already queued), its output pipes (non-blocking),
/// and the token its HELLO must carry.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: WorkerChild,
    pub(crate) socket: UnixStream,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
    pub(crate) token: [u8; TOKEN_LEN],
    /// The parent's end of the worker's result ring.
    pub(crate) ring: crate::ring::RingReader,
}

/// Spawns the worker `cmd` describes. Returns as soon as the process runs
/// (the handshake is the caller's to watch).
pub(crate) fn spawn(cmd: &WorkerCommand) -> Result<Spawned, SpawnError> {
    let path = cmd.program.clone();
    let resource = |what: &'static str| {
        let path = path.clone();
        move |source: io::Error| SpawnError::Resource { what, path, source }
    };
    let (parent_end, worker_end) = UnixStream::pair().map_err(resource("socket pair"))?;
    let token = random_bytes::<TOKEN_LEN>().map_err(resource("handshake token"))?;
    let (ring_fd, ring) = crate::ring::create().map_err(resource("result ring"))?;
    let boot = wire::encode_bootstrap(&Bootstrap {
        token,
        options: WorkerOptions {
            max_frame: cmd.max_frame,
            parent_pid: std::process::id(),
            core_dumps: cmd.core_dumps,
            memory_limit: cmd.memory_limit,
            mark_output: cmd.output.attributes_lines(),
        },
    })
    .map_err(|e| SpawnError::Resource {
        what: "bootstrap message",
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    // A few dozen bytes into an empty socket buffer whose other end we hold:
    // this neither blocks nor meets a closed peer.
    (&parent_end)
        .write_all(&boot)
        .map_err(resource("bootstrap message"))?;

    let mut command = match &cmd.image {
        // The running image itself, through its descriptor (inherited by the
        // forked child, so the path resolves there; the kernel opens it
        // before close-on-exec descriptors close), named by its path.
        Some(image) => {
            let mut c = Command::new(format!("/proc/self/fd/{}", image.as_raw_fd()));
            c.arg0(&cmd.program);
            c
        }
        None => Command::new(&cmd.program),
    };
    command
        .args(&cmd.args)
        .env(WORKER_ENV, std::process::id().to_string())
        .env(WORKER_FD_ENV, worker_end.as_raw_fd().to_string())
        .env(WORKER_RING_ENV, ring_fd.as_raw_fd().to_string())
        .stdin(Stdio::null())
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
    sys::prepare_child(&mut command, [worker_end.as_raw_fd(), ring_fd.as_raw_fd()]);
    let mut child = command.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound { path: path.clone() },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { path: path.clone() },
        _ => SpawnError::Start {
            path: path.clone(),
            source,
        },
    })?;
    drop(worker_end);
    drop(ring_fd); // the mapping stays; the worker has its own descriptor
    let pid = child.id();
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        // Gone already: it exited at once and the kernel (SIGCHLD ignored)
        // or the host (`waitpid(-1)`) reaped it. The pid is not ours any
        // more: never signal or wait for it.
        Err(source) if source.raw_os_error() == Some(nix::libc::ESRCH) => {
            let stderr_tail = child
                .stderr
                .take()
                .map(|e| read_tail(OwnedFd::from(e)))
                .unwrap_or_default();
            drop(child);
            return Err(SpawnError::ExitedEarly {
                path,
                status: ExitInfo {
                    pid,
                    code: None,
                    signal: None,
                    core_dumped: false,
                    usage: None,
                },
                stderr_tail,
            });
        }
        Err(source) => {
            // Not reaped (it exists), so `child` still names our process.
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Resource {
                what: "pidfd (Linux 5.3 or later is needed)",
                path,
                source,
            });
        }
    };
    // From here the `WorkerChild` kills and reaps the process on drop.
    let worker = WorkerChild {
        pid,
        pidfd,
        state: ChildState::Unreaped,
    };
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // std's `Child` has no Drop that waits or kills; the pidfd owns the
    // process from now on.
    drop(child);
    parent_end
        .set_nonblocking(true)
        .map_err(resource("socket mode"))?;
    for fd in stdout.iter().chain(stderr.iter()) {
        set_nonblocking(fd.as_fd()).map_err(resource("output pipe mode"))?;
    }
    Ok(Spawned {
        child: worker,
        socket: parent_end,
        stdout,
        stderr,
        token,
        ring,
    })
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A worker process we spawned, named by its pidfd.
///
/// # Drop
///
/// Dropping an unreaped worker kills it and its process group (SIGKILL) and
/// reaps it, waiting for it to die. The engine normally drops a worker only
/// after [`WorkerChild::try_reap`] reaped it, so that never waits.
#[derive(Debug)]
pub(crate) struct WorkerChild {
    pid: u32,
    pidfd: OwnedFd,
    state: ChildState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    /// Alive, or a zombie that is still ours.
    Unreaped,
    /// Reaped (by us, or by someone else): never signal the group again.
    Gone,
}

/// What reaping a worker learned.
#[derive(Debug, Clone)]
pub(crate) struct Reaped {
    pub(crate) exit: ExitInfo,
    /// Why the status is unknown, when it is.
    pub(crate) lost: Option<StatusLost>,
}

impl WorkerChild {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, readable once the process has exited.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends `signal` to the worker and, while it is provably ours, to its
    /// process group (its children).
    pub(crate) fn signal(&self, signal: Signal) {
        if self.state == ChildState::Gone {
            return;
        }
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), signal as i32);
        self.signal_group(signal);
    }

    fn signal_group(&self, signal: Signal) {
        // The group id is the worker's pid; it cannot be reused while the
        // worker is unreaped, which WNOWAIT confirms without reaping.
        match sys::wait_pidfd(self.pidfd.as_fd(), false) {
            Ok(Waited::Running | Waited::Exited { .. }) => {
                let _ = killpg(Pid::from_raw(self.pid as i32), signal);
            }
            Ok(Waited::NotOurs) | Err(_) => {}
        }
    }

    /// Reaps the worker if it has exited: kills what is left of its process
    /// group first (while the zombie still holds the group id), then reaps
    /// it with its resource usage. `None` while it runs, or once reaped.
    pub(crate) fn try_reap(&mut self) -> Option<Reaped> {
        if self.state == ChildState::Gone {
            return None;
        }
        match sys::wait_pidfd(self.pidfd.as_fd(), false) {
            Ok(Waited::Running) => None,
            Ok(Waited::Exited { .. }) => {
                // The worker's own children could hold its pipes or socket.
                let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                self.state = ChildState::Gone;
                Some(match sys::wait_pidfd(self.pidfd.as_fd(), true) {
                    Ok(Waited::Exited { how, status, usage }) => Reaped {
                        exit: exit_info(self.pid, how, status, Some(usage)),
                        lost: None,
                    },
                    _ => self.lost(),
                })
            }
            Ok(Waited::NotOurs) | Err(_) => {
                self.state = ChildState::Gone;
                Some(self.lost())
            }
        }
    }

    fn lost(&self) -> Reaped {
        let why = if sys::sigchld_ignored() {
            StatusLost::SigchldIgnored
        } else {
            StatusLost::ReapedElsewhere
        };
        Reaped {
            exit: ExitInfo {
                pid: self.pid,
                code: None,
                signal: None,
                core_dumped: false,
                usage: None,
            },
            lost: Some(why),
        }
    }

    /// Gives up on reaping a worker that exited but cannot be reaped (a
    /// tracer holds its zombie): it is never signalled or waited for again.
    pub(crate) fn abandon(&mut self) -> Reaped {
        self.state = ChildState::Gone;
        let mut reaped = self.lost();
        reaped.lost = Some(StatusLost::Unreapable);
        reaped
    }

    /// Kills and reaps the worker, waiting for it to die: after SIGKILL,
    /// microseconds; at most [`REAP_LIMIT`] (one stuck in the kernel, or a
    /// zombie a tracer holds, is then abandoned, never waited for forever).
    pub(crate) fn kill_and_reap(&mut self) -> Option<Reaped> {
        self.signal(Signal::SIGKILL);
        let until = std::time::Instant::now() + REAP_LIMIT;
        loop {
            if self.state == ChildState::Gone {
                return None;
            }
            if let Some(reaped) = self.try_reap() {
                return Some(reaped);
            }
            if std::time::Instant::now() >= until {
                return Some(self.abandon());
            }
            // A pidfd stays readable once the process exited, reaped or
            // not: sleep instead of polling it.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for WorkerChild {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// How long [`WorkerChild::kill_and_reap`] waits at most.
const REAP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

fn exit_info(
    pid: u32,
    how: i32,
    status: i32,
    usage: Option<crate::task::ResourceUsage>,
) -> ExitInfo {
    let (code, signal, core_dumped) = match how {
        nix::libc::CLD_EXITED => (Some(status), None, false),
        nix::libc::CLD_DUMPED => (None, Some(status), true),
        _ => (None, Some(status), false),
    };
    ExitInfo {
        pid,
        code,
        signal,
        core_dumped,
        usage,
    }
}

/// The last lines of a dead worker's stderr, read without blocking.
fn read_tail(fd: OwnedFd) -> Vec<String> {
    if set_nonblocking(fd.as_fd()).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while bytes.len() < 64 * 1024 {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(crate::console::TAIL_LINES)..].to_vec()
}

/// Unpredictable bytes from the OS.
pub(crate) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}
