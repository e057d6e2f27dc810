//! The private socket: the worker's connection is one end of a socket pair
//! made before it was spawned, so it has no name anyone could connect to and
//! nothing is ever put on the filesystem; no secret travels on argv or in
//! the environment; no parent descriptor leaks into the worker.
//!
//! Some tests need a worker that reveals what it was told (the token, its
//! socket) or that tries to bring a stranger along: this test binary
//! re-executed as a worker (the ignored test `security_worker_main`),
//! speaking the wire protocol by hand from the format documented in
//! `src/wire.rs`. The others use the stock `facade-worker`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use common::hand_wire::{
    FD_ENV, KIND_CANCEL, KIND_OK, KIND_STARTED, KIND_STOP, KIND_TASK, RING_ENV, TASKS_ENV,
    TOKEN_LEN, decoded, encoded, frame, from_hex, honest_hello, read_boot, send, task_id, to_hex,
    try_read_frame,
};
use common::{lines_on_channel, stock_worker, within};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, RestartPolicy, WORKER_ENV, WorkerCommand, WorkingProcessFacade};

/// Picks the test worker's behaviour.
const MODE_ENV: &str = "WF_SECURITY_MODE";
/// Every test body must finish within this, or it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(20);
/// The libtest arguments that run only `security_worker_main`.
const HARNESS_ARGS: [&str; 6] = common::libtest_args("security_worker_main");

// ---------------------------------------------------------------------------
// The worker side, on the wire format of tests/common/hand_wire.rs.

/// Serves `SimpleTask`s honestly until STOP or EOF: STARTED, then OK with
/// the output encoded as the codec does.
fn serve_honestly(stream: &mut UnixStream) {
    loop {
        let Ok((kind, rest)) = try_read_frame(stream) else {
            return;
        };
        match kind {
            KIND_TASK => {
                let id = task_id(&rest);
                let task: SimpleTask = decoded(&rest[8..]);
                let mut out = frame(KIND_STARTED, Some(id), &[]);
                out.extend_from_slice(&frame(KIND_OK, Some(id), &encoded(&task.solve())));
                send(stream, &out);
            }
            KIND_STOP | KIND_CANCEL => return,
            kind => panic!("unexpected frame kind {kind:#04x} from the parent"),
        }
    }
}

/// The inode of a socket descriptor of this process, from `/proc`.
fn socket_inode(fd: i32) -> u64 {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("the socket's link");
    let target = target.to_string_lossy();
    target
        .strip_prefix("socket:[")
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("fd {fd} is {target}, not a socket"))
}

/// Modes of the test worker:
/// - `report`: prints its socket's descriptor, inode and the token on
///   stderr, then works honestly;
/// - `stranger`: tells a process of another group (not inheriting the
///   socket) the worker's pid and socket descriptor, reports whether that
///   process could open or connect to the socket through `/proc`, then
///   works honestly.
fn security_worker(mode: &str) {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if mode == "outsider" {
        // A process of another group, of our uid, that knows where the
        // socket is: it can neither open it nor connect to it.
        let path = std::env::var("WF_OUTSIDER_PATH").expect("path");
        let opened = std::fs::File::open(&path).is_ok();
        let connected = UnixStream::connect(&path).is_ok();
        println!("OUTSIDER REACHED {}", opened || connected);
        return;
    }
    let boot = read_boot();
    let token = boot.token;
    let fd = boot.stream.as_raw_fd();
    match mode {
        "report" => {
            eprintln!(
                "SOCKET fd {fd} inode {} TOKEN {}",
                socket_inode(fd),
                to_hex(&token)
            );
        }
        "stranger" => {
            // The outsider must not inherit the socket.
            nix::fcntl::fcntl(
                &boot.stream,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("close-on-exec");
            let path = format!("/proc/{}/fd/{fd}", std::process::id());
            let out = Command::new(std::env::current_exe().expect("current exe"))
                .args(HARNESS_ARGS)
                .env(MODE_ENV, "outsider")
                .env("WF_OUTSIDER_PATH", path)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the outsider")
                .wait_with_output()
                .expect("the outsider's answer");
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("OUTSIDER REACHED"))
                .unwrap_or("OUTSIDER REACHED (no answer)");
            eprintln!("{line}");
        }
        other => panic!("unknown mode {other:?}"),
    }
    let mut s = boot.connect();
    send(&mut s, &honest_hello(&token));
    serve_honestly(&mut s);
}

#[test]
#[ignore = "not a test: the worker (and stranger) side of the tests below"]
fn security_worker_main() {
    if worker_facade::worker::is_worker() {
        let mode = std::env::var(MODE_ENV).expect("WF_SECURITY_MODE is set by the parent");
        security_worker(&mode);
    }
}

// ---------------------------------------------------------------------------
// The parent side.

/// A facade, with no restarts, on this test binary as a worker in `mode`;
/// the worker's output lines arrive on the returned channel.
fn spawn_test_worker(mode: &str) -> (WorkingProcessFacade<SimpleTask>, mpsc::Receiver<String>) {
    let (cmd, lines) = lines_on_channel(
        WorkerCommand::current_exe()
            .args(HARNESS_ARGS)
            .env(MODE_ENV, mode),
    );
    let w = WorkingProcessFacade::<SimpleTask>::builder(cmd)
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("the real worker gets through");
    (w, lines)
}

/// Waits for a line containing `marker` and returns what follows it.
fn line_after(rx: &mpsc::Receiver<String>, marker: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => {
                if let Some(at) = line.find(marker) {
                    return line[at + marker.len()..].trim().to_string();
                }
            }
            Err(e) => panic!("no line {marker:?} from the worker: {e}"),
        }
    }
}

/// Submits `n` trivial tasks, collects, and checks each completed honestly.
fn run_tasks_to_completion(w: &WorkingProcessFacade<SimpleTask>, n: usize) {
    for i in 0..n {
        w.process_task(SimpleTask::new(format!("t{i}"), 0.0))
            .expect("accepted");
    }
    let records = w.collect_tasks().expect("collect_tasks");
    assert_eq!(records.len(), n);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.outcome,
            Outcome::Completed(format!("t{i} solved after 0")),
            "task {i}"
        );
    }
}

/// Serialises the tests that look at descriptors: one of them opens a
/// descriptor without close-on-exec, which every child spawned meanwhile
/// inherits.
static DESCRIPTORS: Mutex<()> = Mutex::new(());

/// A process's descriptors and what they point at.
fn descriptors(pid: u32) -> BTreeMap<i32, PathBuf> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target))
        })
        .collect()
}

/// Our own descriptors above 2 that lack close-on-exec: inherited from
/// whatever started this test, they reach every child we spawn unless the
/// spawner closes them.
fn inheritable_descriptors() -> BTreeMap<i32, PathBuf> {
    descriptors(std::process::id())
        .into_iter()
        .filter(|(fd, _)| *fd > 2)
        .filter(|(fd, _)| !close_on_exec(*fd))
        .collect()
}

/// Whether our descriptor `fd` is close-on-exec, read from the octal `flags`
/// line of `/proc/self/fdinfo/<fd>`.
fn close_on_exec(fd: i32) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return true; // closed meanwhile
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|flags| i32::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & OFlag::O_CLOEXEC.bits() != 0)
}

/// A stock worker, idle after answering one task; its pid.
fn idle_stock_worker() -> (WorkingProcessFacade<SimpleTask>, u32) {
    let w = WorkingProcessFacade::<SimpleTask>::builder(stock_worker())
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn the stock worker");
    let pid = w.worker_pid().expect("a worker runs");
    let outcome = w
        .submit(SimpleTask::new("warm-up", 0.0))
        .expect("accepted")
        .wait()
        .expect("an outcome");
    assert!(outcome.is_completed(), "{outcome:?}");
    (w, pid)
}

/// The worker's descriptors: 0 is `/dev/null`, 1 and 2 are pipes (stdout
/// and stderr to the parent), plus exactly one socket (its end of the
/// socket pair), and what the worker opened itself to watch its parent: a
/// pidfd of the parent and the two ends of one pipe. Anything else must be
/// one of `allowed`.
fn check_worker_descriptors(pid: u32, allowed: &BTreeMap<i32, PathBuf>) {
    let fds = descriptors(pid);
    let stdin = fds.get(&0).expect("the worker has fd 0");
    assert_eq!(stdin, Path::new("/dev/null"), "fd 0: {fds:?}");
    for fd in 1..=2 {
        let target = fds
            .get(&fd)
            .unwrap_or_else(|| panic!("worker has no fd {fd}: {fds:?}"));
        assert!(
            target.to_string_lossy().starts_with("pipe:"),
            "fd {fd} is {target:?}, expected a pipe: {fds:?}"
        );
    }
    let mut sockets = 0;
    let mut watch_pipe = BTreeSet::new();
    let mut pidfds = 0;
    for (fd, target) in &fds {
        if *fd <= 2 || allowed.get(fd) == Some(target) {
            continue;
        }
        let name = target.to_string_lossy();
        if name.starts_with("socket:") {
            sockets += 1;
        } else if name == "anon_inode:[pidfd]" {
            // Its parent's pidfd: /proc says which process it names.
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
            let named = info
                .lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .map(str::trim)
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                named,
                std::process::id().to_string(),
                "fd {fd} names its parent"
            );
            pidfds += 1;
        } else if name.starts_with("pipe:") {
            watch_pipe.insert(name.into_owned());
        } else {
            panic!("the worker holds fd {fd} -> {target:?}, which is not its own: {fds:?}");
        }
    }
    assert_eq!(sockets, 1, "exactly one socket, its connection: {fds:?}");
    assert_eq!(pidfds, 1, "one pidfd, of its parent: {fds:?}");
    assert!(watch_pipe.len() <= 1, "one pipe of its own: {fds:?}");
}

/// The path bound to the Unix socket with this inode, from
/// `/proc/net/unix` (`None`: no name, nobody can connect to it).
fn unix_socket_path(inode: u64) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let line = table
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(6) == Some(&inode.to_string()))
        .unwrap_or_else(|| panic!("socket inode {inode} is not in /proc/net/unix"));
    line.split_whitespace().nth(7).map(str::to_string)
}

// ---------------------------------------------------------------------------
// (a) Nobody but the spawned worker can reach the socket.

#[test]
fn the_workers_socket_has_no_name_and_no_file_is_ever_made() {
    within(WATCHDOG, || {
        let ours = || -> BTreeSet<String> {
            std::fs::read_dir(std::env::temp_dir())
                .expect("temp dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("wf-"))
                .collect()
        };
        let before = ours();
        let (w, lines) = spawn_test_worker("report");
        let report = line_after(&lines, "SOCKET");
        let words: Vec<&str> = report.split_whitespace().collect();
        assert_eq!(words.get(2), Some(&"inode"), "{report}");
        let inode: u64 = words[3].parse().expect("inode");
        // Not bound to a path, not in the abstract namespace: a socket pair.
        assert_eq!(
            unix_socket_path(inode),
            None,
            "the worker's socket has a name"
        );
        assert_eq!(ours(), before, "files made in the temporary directory");
        run_tasks_to_completion(&w, 3);
    });
}

#[test]
fn a_stranger_told_the_descriptor_number_cannot_reach_the_parent() {
    within(WATCHDOG, || {
        let (w, lines) = spawn_test_worker("stranger");
        let reached = line_after(&lines, "OUTSIDER REACHED");
        assert_eq!(
            reached, "false",
            "a process outside the worker reached its socket"
        );
        run_tasks_to_completion(&w, 3);
    });
}

// ---------------------------------------------------------------------------
// (b) No parent descriptor leaks into the worker.

#[test]
fn stock_worker_holds_only_its_pipes_and_its_socket() {
    within(WATCHDOG, || {
        let _serial = DESCRIPTORS.lock().unwrap_or_else(|e| e.into_inner());
        // Descriptors this process inherited without close-on-exec are marked
        // close-on-exec in the worker (see the test below); allowing them
        // here keeps this test about the library's own descriptors.
        let inherited = inheritable_descriptors();
        let (w, pid) = idle_stock_worker();
        check_worker_descriptors(pid, &inherited);
        run_tasks_to_completion(&w, 1);
    });
}

#[test]
fn descriptor_without_cloexec_in_the_parent_does_not_reach_the_worker() {
    within(WATCHDOG, || {
        let _serial = DESCRIPTORS.lock().unwrap_or_else(|e| e.into_inner());
        // As a C library, or the program that started us, would leave it.
        let leaky =
            nix::fcntl::open("/dev/null", OFlag::O_RDONLY, Mode::empty()).expect("open /dev/null");
        assert!(!close_on_exec(leaky.as_raw_fd()));
        let (w, pid) = idle_stock_worker();
        let fds = descriptors(pid);
        // Compare by target: the worker's own socket may get the same number.
        assert!(
            !fds.iter()
                .any(|(fd, target)| *fd > 2 && target == Path::new("/dev/null")),
            "the worker inherited our fd {} (/dev/null): {fds:?}",
            leaky.as_raw_fd()
        );
        check_worker_descriptors(pid, &BTreeMap::new());
        drop(w);
    });
}

// ---------------------------------------------------------------------------
// (d) No secret on argv or in the environment.

fn read_proc(pid: u32, what: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{what}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{what}: {e}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_token_is_not_on_argv_or_in_the_environment() {
    within(WATCHDOG, || {
        let (w, lines) = spawn_test_worker("report");
        let pid = w.worker_pid().expect("a worker runs");
        let report = line_after(&lines, "SOCKET");
        let words: Vec<&str> = report.split_whitespace().collect();
        assert_eq!(words.get(4), Some(&"TOKEN"), "{report}");
        let token_hex = words[5];
        let token = from_hex(token_hex);
        assert_eq!(token.len(), TOKEN_LEN);
        let cmdline = read_proc(pid, "cmdline");
        let environ = read_proc(pid, "environ");
        for (what, bytes) in [("argv", &cmdline), ("environment", &environ)] {
            for secret in [
                token_hex.as_bytes(),
                token_hex.to_uppercase().as_bytes(),
                &token,
            ] {
                assert!(
                    !contains(bytes, secret),
                    "the worker's {what} holds {:?}",
                    String::from_utf8_lossy(secret)
                );
            }
        }
        // argv is exactly what we asked for: the library adds nothing.
        let argv: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let expected: Vec<&[u8]> = HARNESS_ARGS.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(&argv[1..], &expected[..], "argv: {argv:?}");
        run_tasks_to_completion(&w, 1);
    });
}

#[test]
fn stock_worker_gets_no_arguments_and_only_the_marker_variable() {
    within(WATCHDOG, || {
        let (w, pid) = idle_stock_worker();
        let cmdline = read_proc(pid, "cmdline");
        let argv: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        assert_eq!(
            argv,
            [env!("CARGO_BIN_EXE_facade-worker").as_bytes()],
            "no arguments"
        );
        let environ = read_proc(pid, "environ");
        let ours: Vec<u8> = std::env::vars_os()
            .flat_map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                kv.push(0);
                kv
            })
            .collect();
        // Everything the worker has that we do not is the marker variable,
        // whose value is our pid, and the numbers of its socket's, its
        // result ring's and its task region's descriptors: no secret.
        let extra: Vec<String> = environ
            .split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .filter(|kv| !ours.split(|b| *b == 0).any(|o| o == *kv))
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .collect();
        let marker = format!("{WORKER_ENV}={}", std::process::id());
        assert_eq!(extra.len(), 4, "extra variables: {extra:?}");
        assert!(extra.contains(&marker), "extra variables: {extra:?}");
        let fd = extra
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{FD_ENV}=")))
            .unwrap_or_else(|| panic!("extra variables: {extra:?}"));
        assert!(fd.parse::<i32>().is_ok_and(|fd| fd > 2), "{fd}");
        let ring = extra
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{RING_ENV}=")))
            .unwrap_or_else(|| panic!("extra variables: {extra:?}"));
        assert!(ring.parse::<i32>().is_ok_and(|fd| fd > 2), "{ring}");
        let tasks = extra
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{TASKS_ENV}=")))
            .unwrap_or_else(|| panic!("extra variables: {extra:?}"));
        assert!(tasks.parse::<i32>().is_ok_and(|fd| fd > 2), "{tasks}");
        let temp = std::env::temp_dir().join("wf-");
        assert!(!contains(&environ, temp.as_os_str().as_encoded_bytes()));
        assert!(!contains(&cmdline, temp.as_os_str().as_encoded_bytes()));
        run_tasks_to_completion(&w, 1);
    });
}
