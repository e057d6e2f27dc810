//! Starting a worker with `posix_spawn`, so that the parent's memory is
//! never copied: glibc starts the child with `clone(CLONE_VM | CLONE_VFORK)`,
//! which shares the parent's pages until `exec`, where `fork` copies every
//! page table of a large parent (8 ms for a process of a few GiB).
//!
//! The child's descriptors are laid out by file actions, in this order:
//!
//! 1. `/dev/null` is opened as stdin, and each of [`SpawnRequest::place`]
//!    is `dup2`ed to its fixed number (1 to 5: stdout, stderr, the socket,
//!    the ring, the task region); `dup2` clears close-on-exec on the copy, so exactly these
//!    reach the worker;
//! 2. the numbers from [`FIRST_FREE`] up are closed, except
//!    [`SpawnRequest::exec_through`] (the running image, kept close-on-exec
//!    so that `/proc/self/fd/N` resolves at `exec` and is gone after it);
//! 3. the working directory is changed, if asked.
//!
//! Step 2 needs `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34) and
//! step 3 `posix_spawn_file_actions_addchdir_np` (glibc 2.29). Both are
//! looked up at run time, so that a binary built here still loads on an
//! older C library; without them [`spawn`] answers
//! [`Spawned::Unsupported`] and the caller starts the worker with std's
//! `Command` instead (a fork, with every descriptor marked close-on-exec in
//! the child).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::OnceLock;

use nix::libc;

/// The lowest descriptor number a worker does not get from its parent:
/// 0–2 are its standard streams, 3 its socket, 4 its result ring, 5 its
/// facade's task region.
pub(crate) const FIRST_FREE: RawFd = 6;

/// The most descriptors between [`FIRST_FREE`] and the running image that
/// are closed one by one (the image's number is kept, so the range above it
/// is closed in one action but the range below it is not).
const MOST_SINGLE_CLOSES: RawFd = 64;

/// A worker process to start.
#[derive(Debug)]
pub(crate) struct SpawnRequest<'a> {
    /// What to execute: a path, or a bare name searched in the parent's
    /// `PATH` when `search_path`.
    pub(crate) program: &'a CStr,
    /// Look `program` up in `PATH` (it has no `/`).
    pub(crate) search_path: bool,
    /// The child's `argv`, `argv[0]` first.
    pub(crate) argv: &'a [CString],
    /// The child's whole environment, `KEY=value` each.
    pub(crate) envp: &'a [CString],
    /// The child's working directory, if not the parent's.
    pub(crate) dir: Option<&'a CStr>,
    /// Descriptors the child gets, each at a number from 1 to 5 (below
    /// [`FIRST_FREE`]; 0 is always `/dev/null`).
    /// Every source must be numbered [`FIRST_FREE`] or above (see
    /// [`super::dup_at_least`]), so that no placement overwrites another's
    /// source.
    pub(crate) place: &'a [(BorrowedFd<'a>, RawFd)],
    /// A descriptor that stays open, close-on-exec, until the `exec`:
    /// `program` names it as `/proc/self/fd/N`.
    pub(crate) exec_through: Option<BorrowedFd<'a>>,
}

/// What [`spawn`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spawned {
    /// The child runs, with this pid.
    Started(u32),
    /// This C library cannot lay out the child's descriptors (or the
    /// request cannot be met by file actions): start it another way.
    Unsupported,
}

type CloseFrom = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> i32;
type ChangeDir =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, *const libc::c_char) -> i32;

/// The C library's optional file actions, looked up once.
struct Extensions {
    close_from: Option<CloseFrom>,
    change_dir: Option<ChangeDir>,
}

fn extensions() -> &'static Extensions {
    static FOUND: OnceLock<Extensions> = OnceLock::new();
    FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects'
        // symbol tables; each name is a NUL-terminated literal. A symbol it
        // returns has the C signature glibc documents for that name, which
        // the transmute target spells out.
        unsafe {
            let close_from = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            );
            let change_dir = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addchdir_np".as_ptr(),
            );
            Extensions {
                close_from: (!close_from.is_null())
                    .then(|| std::mem::transmute::<*mut libc::c_void, CloseFrom>(close_from)),
                change_dir: (!change_dir.is_null())
                    .then(|| std::mem::transmute::<*mut libc::c_void, ChangeDir>(change_dir)),
            }
        }
    })
}

/// Whether [`spawn`] can start a child on this C library at all.
pub(crate) fn supported() -> bool {
    extensions().close_from.is_some()
}

/// Owns an initialised `posix_spawn_file_actions_t`.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is a valid place for init to write to.
        let mut raw: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is writable; init allocates nothing until used.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut raw) })?;
        Ok(FileActions(raw))
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns an initialised `posix_spawnattr_t`.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is a valid place for init to write to.
        let mut raw: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is writable.
        check(unsafe { libc::posix_spawnattr_init(&mut raw) })?;
        Ok(Attributes(raw))
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// posix_spawn's functions return an error number instead of setting errno.
fn check(code: libc::c_int) -> io::Result<()> {
    match code {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Starts the child `request` describes, stdin from `/dev/null`, in a
/// process group of its own, with an empty signal mask and SIGPIPE at its default. The error is the
/// C library's or the `exec`'s (`ENOENT`, `EACCES`, …).
pub(crate) fn spawn(request: &SpawnRequest<'_>) -> io::Result<Spawned> {
    let found = extensions();
    let Some(close_from) = found.close_from else {
        return Ok(Spawned::Unsupported);
    };
    let change_dir = match (request.dir, found.change_dir) {
        (None, _) => None,
        (Some(dir), Some(f)) => Some((dir, f)),
        (Some(_), None) => return Ok(Spawned::Unsupported),
    };
    if request.place.iter().any(|(source, target)| {
        source.as_raw_fd() < FIRST_FREE || !(1..FIRST_FREE).contains(target)
    }) {
        return Ok(Spawned::Unsupported);
    }
    let kept = request.exec_through.map(|fd| fd.as_raw_fd());
    if kept.is_some_and(|k| !(FIRST_FREE..FIRST_FREE + MOST_SINGLE_CLOSES).contains(&k)) {
        return Ok(Spawned::Unsupported);
    }

    let mut actions = FileActions::new()?;
    // SAFETY: `actions` is initialised; the path is a NUL-terminated
    // literal, which the action copies.
    check(unsafe {
        libc::posix_spawn_file_actions_addopen(
            &mut actions.0,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        )
    })?;
    for (source, target) in request.place {
        // SAFETY: `actions` is initialised; both are plain numbers.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(&mut actions.0, source.as_raw_fd(), *target)
        })?;
    }
    // A fixed number nothing is placed at (the task region's, when the
    // facade has none) is closed too: whatever the parent has open there
    // must not reach the worker.
    for fd in 3..FIRST_FREE {
        if !request.place.iter().any(|(_, target)| *target == fd) {
            // SAFETY: as above; closing a number that is not open is not
            // an error for posix_spawn's close action.
            check(unsafe { libc::posix_spawn_file_actions_addclose(&mut actions.0, fd) })?;
        }
    }
    match kept {
        Some(k) => {
            for fd in FIRST_FREE..k {
                // SAFETY: as above. Closing a number that is not open is
                // not an error for posix_spawn's close action.
                check(unsafe { libc::posix_spawn_file_actions_addclose(&mut actions.0, fd) })?;
            }
            // SAFETY: `close_from` is glibc's addclosefrom_np (see
            // `extensions`); `actions` is initialised.
            check(unsafe { close_from(&mut actions.0, k + 1) })?;
        }
        // SAFETY: as above.
        None => check(unsafe { close_from(&mut actions.0, FIRST_FREE) })?,
    }
    if let Some((dir, change_dir)) = change_dir {
        // SAFETY: `change_dir` is glibc's addchdir_np; it copies `dir`.
        check(unsafe { change_dir(&mut actions.0, dir.as_ptr()) })?;
    }

    let mut attributes = Attributes::new()?;
    // SAFETY: the sigsets are written by sigemptyset before any use; the
    // attribute calls copy them.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::posix_spawnattr_setsigmask(&mut attributes.0, &none))?;
        let mut default = none;
        libc::sigaddset(&mut default, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(
            &mut attributes.0,
            &default,
        ))?;
        check(libc::posix_spawnattr_setpgroup(&mut attributes.0, 0))?;
        check(libc::posix_spawnattr_setflags(
            &mut attributes.0,
            (libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETPGROUP) as libc::c_short,
        ))?;
    }

    let argv = null_terminated(request.argv);
    let envp = null_terminated(request.envp);
    let mut pid: libc::pid_t = 0;
    // SAFETY: `program`, every `argv` and `envp` string are NUL-terminated
    // and outlive the call; both arrays end in a null pointer; `actions` and
    // `attributes` are initialised. The child runs no code of ours: glibc
    // applies the file actions and attributes, then execs.
    let started = unsafe {
        let spawn = if request.search_path {
            libc::posix_spawnp
        } else {
            libc::posix_spawn
        };
        spawn(
            &mut pid,
            request.program.as_ptr(),
            &actions.0,
            &attributes.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    check(started)?;
    Ok(Spawned::Started(pid as u32))
}

/// The pointers of `strings`, then a null pointer, as `execve` wants them.
fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}
