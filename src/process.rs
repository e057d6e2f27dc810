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
//!    `/dev/null`, stdout and stderr piped, holding no descriptor of the
//!    parent's but its end of the socket, its ring and its facade's task
//!    region (if it has one), whose numbers go in [`WORKER_FD_ENV`],
//!    [`WORKER_RING_ENV`] and [`WORKER_TASKS_ENV`]. With `posix_spawn`
//!    (`sys::spawn`) they are placed at 3, 4 and 5 and everything else
//!    above stderr is closed, and nothing of the parent's memory is copied;
//!    on a C library without `posix_spawn_file_actions_addclosefrom_np`,
//!    std's fork is used, and between fork and exec every descriptor above
//!    stderr but those is made close-on-exec.
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

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::command::{WORKER_ENV, WORKER_FD_ENV, WORKER_RING_ENV, WORKER_TASKS_ENV, WorkerCommand};
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
pub(crate) fn spawn(
    cmd: &WorkerCommand,
    tasks: Option<BorrowedFd<'_>>,
) -> Result<Spawned, SpawnError> {
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

    let fds = Inherited {
        socket: worker_end.as_fd(),
        ring: ring_fd.as_fd(),
        tasks,
    };
    let started = start(cmd, &fds).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound { path: path.clone() },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { path: path.clone() },
        _ => SpawnError::Start {
            path: path.clone(),
            source,
        },
    })?;
    drop(worker_end);
    drop(ring_fd); // the mapping stays; the worker has its own descriptor
    let Started {
        pid,
        stdout,
        stderr,
    } = started;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        // Gone already: it exited at once and the kernel (SIGCHLD ignored)
        // or the host (`waitpid(-1)`) reaped it. The pid is not ours any
        // more: never signal or wait for it.
        Err(source) if source.raw_os_error() == Some(nix::libc::ESRCH) => {
            drop(stdout);
            return Err(SpawnError::ExitedEarly {
                path,
                status: ExitInfo {
                    pid,
                    code: None,
                    signal: None,
                    core_dumped: false,
                    usage: None,
                },
                stderr_tail: stderr.map(read_tail).unwrap_or_default(),
            });
        }
        Err(source) => {
            // Not reaped (it exists), so the pid still names our process.
            let child = Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
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

/// A started worker process, not yet watched: its pid, and the parent's
/// ends of its output pipes when they are piped.
struct Started {
    pid: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// The descriptors a worker inherits, each named in its environment.
struct Inherited<'a> {
    socket: BorrowedFd<'a>,
    ring: BorrowedFd<'a>,
    /// The facade's task region, if it has one.
    tasks: Option<BorrowedFd<'a>>,
}

/// Starts the worker's process with `fds` as its descriptors (named in its
/// environment): through `posix_spawn` where the C library can lay the
/// descriptors out, by std's fork and exec otherwise.
fn start(cmd: &WorkerCommand, fds: &Inherited<'_>) -> io::Result<Started> {
    match start_spawned(cmd, fds) {
        Ok(Some(started)) => Ok(started),
        Ok(None) => start_forked(cmd, fds),
        // A sandbox (seccomp) that refuses the `clone3` glibc's
        // `posix_spawn` makes, and glibc does not retry: a fork may pass.
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::ENOSYS)) => {
            start_forked(cmd, fds)
        }
        Err(e) => Err(e),
    }
}

/// The numbers the worker finds its socket and its ring at, after
/// [`start_spawned`] placed them.
const SPAWNED_SOCKET_FD: i32 = 3;
const SPAWNED_RING_FD: i32 = 4;
const SPAWNED_TASKS_FD: i32 = 5;

/// Starts the worker with `posix_spawn` (see `sys::spawn`): nothing of the
/// parent's memory is copied, which a fork of a large parent does. `None`
/// when the C library or the command needs the fork instead.
fn start_spawned(cmd: &WorkerCommand, fds: &Inherited<'_>) -> io::Result<Option<Started>> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bare_name = !cmd.program.as_os_str().as_bytes().contains(&b'/');
    // posix_spawnp searches the parent's PATH; std searches the child's.
    let path_changed = cmd.env.iter().any(|(key, _)| key == "PATH");
    if !sys::spawn::supported() || (cmd.image.is_none() && bare_name && path_changed) {
        return Ok(None);
    }
    // Every source must sit above the numbers the child's copies take.
    let lift = |fd: BorrowedFd<'_>| sys::dup_at_least(fd, sys::spawn::FIRST_FREE);
    let socket = lift(fds.socket)?;
    let ring = lift(fds.ring)?;
    let tasks = fds.tasks.map(lift).transpose()?;
    let pipes = if cmd.output.is_piped() {
        let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Some((
            out_read,
            lift(out_write.as_fd())?,
            err_read,
            lift(err_write.as_fd())?,
        ))
    } else {
        None
    };
    let mut place = vec![
        (socket.as_fd(), SPAWNED_SOCKET_FD),
        (ring.as_fd(), SPAWNED_RING_FD),
    ];
    if let Some(tasks) = &tasks {
        place.push((tasks.as_fd(), SPAWNED_TASKS_FD));
    }
    if let Some((_, out_write, _, err_write)) = &pipes {
        place.push((out_write.as_fd(), 1));
        place.push((err_write.as_fd(), 2));
    }
    let c_string = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the worker's program, arguments or environment",
            )
        })
    };
    let program = match &cmd.image {
        Some(image) => c_string(format!("/proc/self/fd/{}", image.as_raw_fd()).as_bytes())?,
        None => c_string(cmd.program.as_os_str().as_bytes())?,
    };
    let argv = std::iter::once(cmd.program.as_os_str())
        .chain(cmd.args.iter().map(|a| a.as_os_str()))
        .map(|a| c_string(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let envp = worker_environment(
        cmd,
        SPAWNED_SOCKET_FD.to_string(),
        SPAWNED_RING_FD.to_string(),
        tasks.as_ref().map(|_| SPAWNED_TASKS_FD.to_string()),
    )
    .into_iter()
    .map(|(key, value)| {
        let mut pair = key.into_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        c_string(&pair)
    })
    .collect::<io::Result<Vec<_>>>()?;
    let dir = match &cmd.current_dir {
        Some(dir) => Some(c_string(dir.as_os_str().as_bytes())?),
        None => None,
    };
    let request = sys::spawn::SpawnRequest {
        program: &program,
        search_path: cmd.image.is_none() && bare_name,
        argv: &argv,
        envp: &envp,
        dir: dir.as_deref(),
        place: &place,
        exec_through: cmd.image.as_ref().map(|image| image.as_fd()),
    };
    Ok(match sys::spawn::spawn(&request)? {
        sys::spawn::Spawned::Started(pid) => {
            let (stdout, stderr) = match pipes {
                Some((out_read, _, err_read, _)) => (Some(out_read), Some(err_read)),
                None => (None, None),
            };
            Some(Started {
                pid,
                stdout,
                stderr,
            })
        }
        sys::spawn::Spawned::Unsupported => None,
    })
}

/// The worker's whole environment: the parent's, with the facade's
/// variables, then the command's own changes, applied in order.
fn worker_environment(
    cmd: &WorkerCommand,
    socket: String,
    ring: String,
    tasks: Option<String>,
) -> BTreeMap<std::ffi::OsString, std::ffi::OsString> {
    let mut env: BTreeMap<_, _> = std::env::vars_os().collect();
    env.insert(WORKER_ENV.into(), std::process::id().to_string().into());
    env.insert(WORKER_FD_ENV.into(), socket.into());
    env.insert(WORKER_RING_ENV.into(), ring.into());
    // Never one from the parent's own environment (a worker that starts a
    // facade of its own hands its children their own variables anyway).
    match tasks {
        Some(tasks) => env.insert(WORKER_TASKS_ENV.into(), tasks.into()),
        None => env.remove(std::ffi::OsStr::new(WORKER_TASKS_ENV)),
    };
    for (key, value) in &cmd.env {
        match value {
            Some(v) => env.insert(key.clone(), v.clone()),
            None => env.remove(key),
        };
    }
    env
}

/// Starts the worker with std's `Command`: a fork, in which every
/// descriptor above stderr is marked close-on-exec but the worker's socket,
/// ring and task region, which keep their numbers.
fn start_forked(cmd: &WorkerCommand, fds: &Inherited<'_>) -> io::Result<Started> {
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
        .env_clear()
        .envs(worker_environment(
            cmd,
            fds.socket.as_raw_fd().to_string(),
            fds.ring.as_raw_fd().to_string(),
            fds.tasks.map(|t| t.as_raw_fd().to_string()),
        ))
        .stdin(Stdio::null())
        // Its own process group: a kill reaches the worker's children too.
        .process_group(0);
    if cmd.output.is_piped() {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    if let Some(dir) = &cmd.current_dir {
        command.current_dir(dir);
    }
    let mut keep = vec![fds.socket.as_raw_fd(), fds.ring.as_raw_fd()];
    keep.extend(fds.tasks.map(|t| t.as_raw_fd()));
    sys::prepare_child(&mut command, keep);
    let mut child = command.spawn()?;
    // std's `Child` neither waits nor kills on drop: the caller owns the
    // process by its pid from here.
    Ok(Started {
        pid: child.id(),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// What `ls -l /proc/self/fd` printed in a child started by `how`:
    /// each descriptor's number and target, but the one `ls` itself opened.
    fn child_descriptors(
        how: fn(&WorkerCommand, &Inherited<'_>) -> io::Result<Started>,
        fds: &Inherited<'_>,
    ) -> BTreeMap<i32, String> {
        let cmd = WorkerCommand::new("ls").arg("-l").arg("/proc/self/fd");
        let started = how(&cmd, fds).expect("start ls");
        let mut listing = String::new();
        std::fs::File::from(started.stdout.expect("stdout is piped"))
            .read_to_string(&mut listing)
            .expect("read the listing");
        let status = nix::sys::wait::waitpid(Pid::from_raw(started.pid as i32), None);
        assert!(
            matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))),
            "{status:?}"
        );
        let own = format!("/proc/{}/fd", started.pid);
        listing
            .lines()
            .filter_map(|line| {
                let (left, target) = line.split_once(" -> ")?;
                let fd = left.rsplit(' ').next()?.parse().ok()?;
                (target != own).then(|| (fd, target.to_string()))
            })
            .collect()
    }

    #[test]
    // Reaped by waitpid in `child_descriptors`, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn spawned_and_forked_workers_get_only_their_own_descriptors() {
        let (_parent, worker) = UnixStream::pair().expect("socket pair");
        let (ring, _map) = crate::ring::create().expect("ring");
        let region = crate::region::TaskRegion::create(1 << 16).expect("task region");
        let fds = Inherited {
            socket: worker.as_fd(),
            ring: ring.as_fd(),
            tasks: Some(region.fd()),
        };
        let socket_inode = std::fs::metadata(format!("/proc/self/fd/{}", worker.as_raw_fd()))
            .expect("stat the socket")
            .ino();
        // Left open across exec, as a careless C library would.
        let leaky = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .expect("open /dev/null");
        let expect = |fds: &BTreeMap<i32, String>, socket_at: i32, ring_at: i32, tasks_at: i32| {
            assert_eq!(
                fds.get(&0).map(String::as_str),
                Some("/dev/null"),
                "{fds:?}"
            );
            for fd in [1, 2] {
                assert!(fds[&fd].starts_with("pipe:"), "{fds:?}");
            }
            assert_eq!(
                fds[&socket_at],
                format!("socket:[{socket_inode}]"),
                "{fds:?}"
            );
            assert!(
                fds[&ring_at].starts_with("/memfd:worker-facade-ring"),
                "{fds:?}"
            );
            assert!(
                fds[&tasks_at].starts_with("/memfd:worker-facade-tasks"),
                "{fds:?}"
            );
            assert_eq!(fds.len(), 6, "nothing else reaches the child: {fds:?}");
        };
        if sys::spawn::supported() {
            let spawned = child_descriptors(
                |cmd, fds| Ok(start_spawned(cmd, fds)?.expect("posix_spawn is used")),
                &fds,
            );
            expect(
                &spawned,
                SPAWNED_SOCKET_FD,
                SPAWNED_RING_FD,
                SPAWNED_TASKS_FD,
            );
        }
        let forked = child_descriptors(start_forked, &fds);
        expect(
            &forked,
            worker.as_raw_fd(),
            ring.as_raw_fd(),
            region.fd().as_raw_fd(),
        );
        // Without a task region, its fixed number stays closed, even when
        // the parent has something open there without close-on-exec.
        let free = std::fs::symlink_metadata(format!("/proc/self/fd/{SPAWNED_TASKS_FD}")).is_err();
        let at_five = free.then(|| {
            let copy = sys::dup_at_least(leaky.as_fd(), SPAWNED_TASKS_FD).expect("dup");
            nix::fcntl::fcntl(
                &copy,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .expect("clear close-on-exec");
            copy
        });
        let none = Inherited { tasks: None, ..fds };
        if sys::spawn::supported() {
            let spawned = child_descriptors(
                |cmd, fds| Ok(start_spawned(cmd, fds)?.expect("posix_spawn is used")),
                &none,
            );
            assert!(!spawned.contains_key(&SPAWNED_TASKS_FD), "{spawned:?}");
            assert_eq!(
                spawned.len(),
                5,
                "nothing else reaches the child: {spawned:?}"
            );
        }
        let forked = child_descriptors(start_forked, &none);
        assert_eq!(
            forked.len(),
            5,
            "nothing else reaches the child: {forked:?}"
        );
        drop(at_five);
        drop(leaky);
    }

    #[test]
    fn a_missing_program_is_not_found_either_way() {
        let cmd = WorkerCommand::new("/no/such/worker-facade-program");
        let (_parent, worker) = UnixStream::pair().expect("socket pair");
        let (ring, _map) = crate::ring::create().expect("ring");
        let fds = Inherited {
            socket: worker.as_fd(),
            ring: ring.as_fd(),
            tasks: None,
        };
        let mut tried = vec![start_forked(&cmd, &fds).map(|_| ())];
        if sys::spawn::supported() {
            tried.push(start_spawned(&cmd, &fds).map(|_| ()));
        }
        for started in tried {
            let error = started.expect_err("nothing to run");
            assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        }
    }
}
