//! The system calls std does not wrap for us: reaping a child with its
//! resource usage (`wait4`), and marking inherited descriptors close-on-exec
//! in a child before it runs the worker. All of this crate's `unsafe` lives
//! here.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::libc;

use crate::task::ResourceUsage;

/// Reaps child `pid`, returning its status and its resource usage. Blocks
/// until it has exited; call only for a child this process owns and has not
/// reaped (so the pid cannot belong to anyone else).
pub(crate) fn reap(pid: u32) -> io::Result<(ExitStatus, ResourceUsage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain struct of integers, for which all-zero bytes
    // are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the
        // whole call; wait4 writes nothing else.
        let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if reaped != -1 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok((
        ExitStatus::from_raw(status),
        ResourceUsage {
            max_rss_kib: usage.ru_maxrss.max(0) as u64,
            user_time: time(usage.ru_utime),
            system_time: time(usage.ru_stime),
        },
    ))
}

/// Makes every descriptor above stderr close-on-exec in the child, so that a
/// descriptor the parent inherited, or a C library opened without
/// `O_CLOEXEC`, does not reach the worker. (Rust's own are close-on-exec
/// already.) Close-on-exec rather than close, so std's own pipe that reports
/// a failed `exec` keeps working.
pub(crate) fn close_inherited_descriptors_on_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec. It only
    // makes raw system calls (close_range, getrlimit, fcntl), which are
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            mark_cloexec_from(3);
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
