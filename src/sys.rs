//! The one system call std does not wrap for us: reaping a child with its
//! resource usage (`wait4`). All of this crate's `unsafe` lives here.

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
