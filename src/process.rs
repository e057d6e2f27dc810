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
//! 3. A pidfd is opened for the child at once (it cannot have been reaped
//!    yet, so the pid is still ours). From then on signals go through the
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

use crate::command::{WORKER_ENV, WORKER_FD_ENV, WorkerCommand};
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
    let boot = wire::encode_bootstrap(&Bootstrap {
        token,
        options: WorkerOptions {
            max_frame: cmd.max_frame,
            parent_pid: std::process::id(),
            core_dumps: cmd.core_dumps,
            memory_limit: cmd.memory_limit,
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

    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env(WORKER_ENV, std::process::id().to_string())
        .env(WORKER_FD_ENV, worker_end.as_raw_fd().to_string())
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
    sys::prepare_child(&mut command, worker_end.as_raw_fd());
    let mut child = command.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound { path: path.clone() },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { path: path.clone() },
        _ => SpawnError::Start {
            path: path.clone(),
            source,
        },
    })?;
    drop(worker_end);
    let pid = child.id();
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(source) => {
            // Not reaped yet, so `child` still names our process.
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

    /// Kills and reaps the worker, waiting for it to die (after SIGKILL:
    /// microseconds, unless it is stuck in the kernel).
    pub(crate) fn kill_and_reap(&mut self) -> Option<Reaped> {
        self.signal(Signal::SIGKILL);
        loop {
            if self.state == ChildState::Gone {
                return None;
            }
            if let Some(reaped) = self.try_reap() {
                return Some(reaped);
            }
            let mut fds = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
        }
    }
}

impl Drop for WorkerChild {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

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

/// Unpredictable bytes from the OS.
pub(crate) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}
