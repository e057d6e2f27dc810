//! The system calls std and nix do not wrap for us, each in one small
//! function: pidfds (open, signal, wait with resource usage), the SIGCHLD
//! disposition, taking the inherited socket in a worker, and what runs in a
//! child between `fork` and `exec`, or the `posix_spawn` that replaces the
//! fork ([`spawn`]). All of this crate's `unsafe` lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::libc;

use crate::task::ResourceUsage;

pub(crate) mod spawn;

/// A close-on-exec copy of `fd` numbered `min` or above (the lowest such
/// number that is free).
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes a descriptor and a number, no pointers.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Opens a pidfd for child `pid`. Call only for a child this process owns
/// and has not reaped, so that the pid cannot belong to anyone else yet;
/// from then on the pidfd names that one process, whatever happens to the
/// number. The descriptor is close-on-exec (pidfds always are).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new
    // descriptor or -1; it reads and writes no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`. A process that has exited
/// (even one not yet reaped) gives `ESRCH`; a recycled pid is never hit.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a null siginfo asks the kernel to fill it as kill(2) would; the
    // call reads no other memory of ours.
    let done = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `waitid` on a pidfd found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The process is still running.
    Running,
    /// It has exited and is a zombie we still own (`reap == false`), or it
    /// was reaped by this call.
    Exited {
        /// `CLD_EXITED`, `CLD_KILLED` or `CLD_DUMPED`.
        how: i32,
        /// The exit code or the signal number.
        status: i32,
        usage: ResourceUsage,
    },
    /// It is not our child any more: someone else reaped it (a host's
    /// `waitpid(-1)`), or the kernel did because SIGCHLD is ignored.
    NotOurs,
}

/// `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG [| WNOWAIT])`, with the
/// resource usage the raw system call reports (glibc's wrapper drops it).
/// With `reap == false` the zombie stays ours, so its pid (and its process
/// group's id) cannot be reused while we signal the group.
pub(crate) fn wait_pidfd(pidfd: BorrowedFd<'_>, reap: bool) -> io::Result<Waited> {
    let mut flags = libc::WEXITED | libc::WNOHANG;
    if !reap {
        flags |= libc::WNOWAIT;
    }
    // SAFETY: all-zero bytes are a valid siginfo_t and rusage (plain structs
    // of integers).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` and `usage` are valid and writable for the whole
        // call; waitid writes nothing else.
        let done = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd.as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                flags,
                &mut usage as *mut libc::rusage,
            )
        };
        if done == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(Waited::NotOurs),
            _ => return Err(err),
        }
    }
    // SAFETY: waitid filled `info` for a child event (or left it zeroed for
    // WNOHANG with nothing to report); si_pid and si_status are valid then.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(Waited::Running);
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(Waited::Exited {
        how: info.si_code,
        status,
        usage: ResourceUsage {
            max_rss_kib: usage.ru_maxrss.max(0) as u64,
            user_time: time(usage.ru_utime),
            system_time: time(usage.ru_stime),
        },
    })
}

/// Blocks SIGPIPE for the calling thread (the engine's): a write to a
/// stderr whose reader is gone then fails with `EPIPE` instead of killing a
/// host that restored SIGPIPE's default action. (The signal stays pending
/// on this thread only, and is discarded with it; children spawned from it
/// get a clean mask from std's `Command`.)
pub(crate) fn block_sigpipe_in_this_thread() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGPIPE);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set),
        None,
    );
}

/// Flushes every C stdio output stream (`fflush(NULL)`): what C code of the
/// handler's printed with `printf` and the like is in its pipe afterwards.
/// Costs no system call when nothing is buffered.
pub(crate) fn flush_c_stdio() {
    // SAFETY: fflush(NULL) flushes all open output streams; it takes no
    // pointer from us and is safe to call from any thread at any time.
    unsafe {
        libc::fflush(std::ptr::null_mut());
    }
}

/// Whether this process ignores SIGCHLD (`SIG_IGN` or `SA_NOCLDWAIT`), in
/// which case the kernel reaps children itself and their status is lost.
pub(crate) fn sigchld_ignored() -> bool {
    // SAFETY: all-zero bytes are a valid sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`,
    // which is valid and writable.
    let done = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) };
    done == 0 && (old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0)
}

/// Set once this process took its inherited socket.
static SOCKET_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Takes ownership of descriptor `fd`, inherited from the parent, after
/// checking that it is open and a socket. Marks it close-on-exec so that
/// processes the worker starts do not inherit it.
pub(crate) fn take_inherited_socket(fd: RawFd) -> io::Result<OwnedFd> {
    use std::sync::atomic::Ordering::SeqCst;
    if SOCKET_TAKEN.swap(true, SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the socket to the parent was taken already: a worker serves once",
        ));
    }
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is a standard stream, not the parent's socket"),
        ));
    }
    // SAFETY: F_GETFD on any number only reads the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero bytes are a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable; fstat writes only it.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: F_SETFD sets only a flag on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process for it alone; it is taken at most once per process
    // (SOCKET_TAKEN), so no other owner of that number exists here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Borrows descriptor `fd` without owning it, if it is open. For a worker
/// that must say one message on its inherited socket without taking it.
pub(crate) fn borrow_open_fd(fd: RawFd) -> Option<BorrowedFd<'static>> {
    // Once taken, the number may name something else of this process.
    if SOCKET_TAKEN.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    // SAFETY: F_GETFD on any number only reads the descriptor table.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open; it is inherited and never closed by
    // this process while the borrow is used (one write, at once).
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Prepares the child between fork and exec: every descriptor above stderr
/// close-on-exec (so that a descriptor the parent inherited, or a C library
/// opened without `O_CLOEXEC`, does not reach the worker), except `keep`:
/// the worker's end of its socket, its ring and its task region. Close-on-exec rather than close, so
/// std's own pipe that reports a failed `exec` keeps working.
pub(crate) fn prepare_child(command: &mut std::process::Command, keep: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec. It only
    // makes raw system calls (close_range, getrlimit, fcntl), which are
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            mark_cloexec_from(3);
            // F_SETFD clears a flag of a descriptor this child inherited
            // open from the parent's fork (covered by the SAFETY above).
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn mark_cloexec_from(first: libc::c_uint) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors of this process; it takes no pointers.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if done == 0 {
        return;
    }
    // Kernels before 5.11 have no close_range: one descriptor at a time, up
    // to the descriptor limit (capped, as the limit may be huge).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the whole call.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let last = if got == 0 {
        limit.rlim_cur.min(1 << 16) as libc::c_int
    } else {
        1024
    };
    for fd in first as libc::c_int..last {
        // SAFETY: F_SETFD on a descriptor number that may not be open only
        // fails with EBADF; FD_CLOEXEC is the only descriptor flag.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    // Reaped through its pidfd, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn a_child_is_watched_signalled_and_reaped_through_its_pidfd() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pidfd = pidfd_open(child.id()).expect("pidfd");
        assert_eq!(
            wait_pidfd(pidfd.as_fd(), false).expect("waitid"),
            Waited::Running
        );
        pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).expect("signal");
        let exited = loop {
            match wait_pidfd(pidfd.as_fd(), false).expect("waitid") {
                Waited::Running => std::thread::sleep(Duration::from_millis(1)),
                other => break other,
            }
        };
        assert!(
            matches!(
                exited,
                Waited::Exited {
                    how: libc::CLD_KILLED,
                    status: libc::SIGKILL,
                    ..
                }
            ),
            "{exited:?}"
        );
        // Still ours (WNOWAIT): reaping now gives the same status.
        let reaped = wait_pidfd(pidfd.as_fd(), true).expect("reap");
        assert!(matches!(
            reaped,
            Waited::Exited {
                status: libc::SIGKILL,
                ..
            }
        ));
        // Gone: no more waiting, and signalling hits nobody.
        assert_eq!(
            wait_pidfd(pidfd.as_fd(), true).expect("waitid"),
            Waited::NotOurs
        );
        assert!(pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).is_err());
    }

    #[test]
    fn sigchld_is_not_ignored_by_default() {
        assert!(!sigchld_ignored());
    }
}

/// A shared memory region: a memfd mapped `MAP_SHARED`, the same pages in
/// the parent and in the worker that inherits the descriptor. Only plain
/// bytes and 64-bit atomic words ever live in it. Where the peer may write
/// (the result ring), nothing read from it is ever referenced in place:
/// words are loaded, bytes are copied out. Only a read-only view of a
/// region that nobody may write while it is looked at (a worker's view of
/// the sealed task region) lends its bytes ([`SharedMap::with_frozen`]).
///
/// # Drop
///
/// Unmaps the region (the descriptor is owned separately).
#[derive(Debug)]
pub(crate) struct SharedMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Mapped writable (else [`SharedMap::write`] refuses).
    writable: bool,
}

// SAFETY: the mapping is process-wide memory with no thread affinity; all
// access goes through atomics or copies, never through references that
// could alias a write.
unsafe impl Send for SharedMap {}
// SAFETY: as above: shared access is atomics and copies only.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Makes a region of `len` bytes (zeroed) and its descriptor
    /// (close-on-exec; the spawn keeps it open in the worker).
    pub(crate) fn create(len: usize) -> io::Result<(OwnedFd, SharedMap)> {
        let fd = memfd(c"worker-facade-ring", libc::MFD_CLOEXEC, len)?;
        let map = SharedMap::map(std::os::fd::AsFd::as_fd(&fd), len)?;
        Ok((fd, map))
    }

    /// Makes a region of `len` bytes (zeroed) that only this mapping may
    /// ever write: once mapped here, the descriptor is sealed against new
    /// writable mappings, `write(2)` and any change of size, so a process
    /// that inherits it can map it read-only and nothing more.
    pub(crate) fn create_sealed(len: usize) -> io::Result<(OwnedFd, SharedMap)> {
        let fd = memfd(
            c"worker-facade-tasks",
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            len,
        )?;
        let map = SharedMap::map_with(
            std::os::fd::AsFd::as_fd(&fd),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an integer and changes only the
        // descriptor's file; the mapping above stays writable.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((fd, map))
    }

    /// Maps the whole region behind `fd` read-only, whatever its size.
    pub(crate) fn map_read_only(fd: BorrowedFd<'_>) -> io::Result<SharedMap> {
        let len = usize::try_from(regular_file_len(fd)?)
            .map_err(|_| io::Error::other("region too large"))?;
        SharedMap::map_with(fd, len, libc::PROT_READ)
    }

    /// Maps the region behind `fd`, which must be exactly `len` bytes.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMap> {
        SharedMap::map_with(fd, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn map_with(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int) -> io::Result<SharedMap> {
        if regular_file_len(fd)? != len as u64 || len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "descriptor {} is not a region of {len} bytes",
                    fd.as_raw_fd()
                ),
            ));
        }
        // SAFETY: a fresh shared mapping of a descriptor we checked; the
        // kernel picks the address. The result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedMap {
            ptr,
            len,
            writable: prot & libc::PROT_WRITE != 0,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 64-bit word at byte `offset` (8-aligned, inside the region).
    /// `offset` is one of the layout's constants, never a peer's value.
    pub(crate) fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= self.len,
            "word {offset} outside the region"
        );
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); an
        // AtomicU64 has the layout of a u64 and every bit pattern is valid.
        // The peer's concurrent writes to the word are atomic too.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(offset)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }

    /// Copies `dst.len()` bytes from byte `offset` out of the region.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset <= self.len && dst.len() <= self.len - offset,
            "read outside the region"
        );
        // SAFETY: the source range is inside the mapping (checked above) and
        // cannot overlap `dst`, which is our own memory. The bytes may be
        // changed by the peer meanwhile: they are plain bytes, any value is
        // valid, and the caller validates what it copied.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Runs `f` on the `len` bytes at byte `offset`, lent in place, from
    /// a mapping that this process maps read-only. What `f` returns cannot
    /// borrow them: the loan ends when `f` does.
    ///
    /// Only for the worker's view of the sealed task region: the seals
    /// leave the parent's mapping the only writable one, and the parent
    /// never writes a span while a frame naming it may be read (see
    /// `region.rs`, step 4). The worker lends a span only between reading
    /// its TASK_AT and answering it, so nothing writes during the loan.
    pub(crate) fn with_frozen<R>(
        &self,
        offset: usize,
        len: usize,
        f: impl for<'a> FnOnce(&'a [u8]) -> R,
    ) -> R {
        assert!(!self.writable, "lending bytes of a writable region");
        assert!(
            offset <= self.len && len <= self.len - offset,
            "bytes outside the region"
        );
        // SAFETY: the range is inside the mapping (checked above), which
        // outlives this call, and the slice cannot outlive `f` (its
        // lifetime is `f`'s own, so `R` cannot hold it). This process
        // cannot write the range (mapped PROT_READ, and the memfd is sealed
        // against new writable mappings and write(2)); the one writable
        // mapping is the parent's, which writes a span only before sending
        // the frame that names it (the socket orders that write before our
        // read) and again only once this worker answered it or is dead.
        // Any byte value is a valid u8.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) };
        f(bytes)
    }

    /// Copies `src` into the region at byte `offset`.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        assert!(self.writable, "write to a region mapped read-only");
        assert!(
            offset <= self.len && src.len() <= self.len - offset,
            "write outside the region"
        );
        // SAFETY: the target range is inside a writable mapping (checked
        // above) and cannot overlap `src`; no reference into the region
        // exists.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }
}

/// A new memfd named `name`, made with `flags`, of `len` bytes (zeroed).
fn memfd(name: &std::ffi::CStr, flags: libc::c_uint, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create
    // returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("region too large"))?;
    // SAFETY: ftruncate on our own descriptor; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Whether `fd` is a memfd sealed the way [`SharedMap::create_sealed`]
/// seals it (so that a worker maps only the parent's task region).
pub(crate) fn sealed_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GET_SEALS takes no argument and only reads the file's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    Ok(seals & want == want)
}

/// The size of the regular file behind `fd` (an error for anything else).
fn regular_file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: all-zero bytes are a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable; fstat writes only it.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {} is not a region", fd.as_raw_fd()),
        ));
    }
    u64::try_from(st.st_size).map_err(|_| io::Error::other("negative file size"))
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length and is
        // unmapped once, here; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Which region descriptor a worker takes from its parent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inherited {
    /// Its result ring.
    Ring,
    /// Its facade's task region.
    Tasks,
}

/// Takes the region descriptor the parent handed down (each once per
/// process).
pub(crate) fn take_inherited_region(fd: RawFd, which: Inherited) -> io::Result<OwnedFd> {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicI32;
    use std::sync::atomic::Ordering::SeqCst;
    static RING: AtomicBool = AtomicBool::new(false);
    static TASKS: AtomicBool = AtomicBool::new(false);
    /// The number each took, so that one never takes the other's.
    static RING_FD: AtomicI32 = AtomicI32::new(-1);
    static TASKS_FD: AtomicI32 = AtomicI32::new(-1);
    let (taken, number, other) = match which {
        Inherited::Ring => (&RING, &RING_FD, &TASKS_FD),
        Inherited::Tasks => (&TASKS, &TASKS_FD, &RING_FD),
    };
    if fd < 3 || other.load(SeqCst) == fd || taken.swap(true, SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not the parent's region, or it was taken already"),
        ));
    }
    // SAFETY: F_GETFD on any number only reads the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFD sets only a flag on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    number.store(fd, SeqCst);
    // SAFETY: the parent handed this descriptor to this process for the
    // worker alone, and the flag above makes this the only place taking it
    // (a worker is told different numbers for its ring and task region).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_fork() {
    // Async-signal-safe: one atomic add, in the child right after fork.
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many times this process is a fork of the one that first asked: a
/// facade compares it on every submission instead of calling `getpid`
/// (a system call each time). Forks that bypass libc's `fork` are missed
/// here; `collect_tasks` and `Drop` still compare pids.
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only adds to an atomic;
        // no prepare or parent handler. Called once per process.
        unsafe {
            libc::pthread_atfork(None, None, Some(count_fork));
        }
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A monotonic clock read without the cost of a precise one: the time of
/// the last scheduler tick (1 to 10 ms old), read from the vDSO without
/// touching the hardware clock. For "now and then" checks on a hot path
/// (a precise read cost a worker 3 % of its time per task, streaming tiny
/// tasks in a VM). `None` where the kernel lacks it (before 2.6.32).
pub(crate) fn coarse_clock() -> Option<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u32::try_from(t.tv_nsec()).ok()?;
    Some(Duration::new(secs, nanos))
}
