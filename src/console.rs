//! The "mutexed console": where a worker's stdout and stderr go.
//!
//! One pump thread per worker reads both pipes with `poll(2)` and hands each
//! whole line on, so lines from different workers (and from the parent) never
//! interleave mid-line. The pump also keeps the last stderr lines for crash
//! reports.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How many stderr lines a crash report keeps.
pub(crate) const TAIL_LINES: usize = 20;
/// Longest line handed on whole; longer ones are split.
const MAX_LINE: usize = 64 * 1024;

/// Which of the worker's streams a line came from.
///
/// ```
/// use worker_facade::{Output, OutputStream};
/// let errors_only = Output::capture(|line| {
///     if line.stream == OutputStream::Stderr {
///         eprintln!("{line}");
///     }
/// });
/// # let _ = errors_only;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// One line a worker printed, as handed to an [`Output::Capture`] callback.
///
/// ```
/// use worker_facade::{OutputLine, OutputStream};
/// let line = OutputLine { pid: 42, stream: OutputStream::Stderr, text: "hello".into() };
/// assert_eq!(line.to_string(), "[worker 42] hello");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The worker's process ID.
    pub pid: u32,
    /// Where it printed the line.
    pub stream: OutputStream,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
}

impl fmt::Display for OutputLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[worker {}] {}", self.pid, self.text)
    }
}

/// Where a worker's stdout and stderr go.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use worker_facade::{Output, WorkerCommand};
///
/// let lines = Arc::new(Mutex::new(Vec::new()));
/// let sink = lines.clone();
/// let cmd = WorkerCommand::new("facade-worker")
///     .output(Output::capture(move |line| sink.lock().unwrap().push(line.text)));
/// # let _ = cmd;
/// ```
#[derive(Clone, Default)]
pub enum Output {
    /// Each line goes to the parent's stderr, whole, prefixed with
    /// `[worker <pid>] ` (the default).
    #[default]
    Prefixed,
    /// Lines are dropped (the last stderr lines are still kept for crash
    /// reports).
    Silent,
    /// Each line is handed to this callback, from the worker's pump thread.
    Capture(Arc<dyn Fn(OutputLine) + Send + Sync>),
    /// The worker writes straight to the parent's stdout and stderr, without
    /// prefixes; crash reports carry no stderr tail.
    Inherit,
}

impl Output {
    /// Builds [`Output::Capture`] from a closure.
    pub fn capture(f: impl Fn(OutputLine) + Send + Sync + 'static) -> Self {
        Output::Capture(Arc::new(f))
    }

    pub(crate) fn is_piped(&self) -> bool {
        !matches!(self, Output::Inherit)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Output::Prefixed => "Prefixed",
            Output::Silent => "Silent",
            Output::Capture(_) => "Capture(..)",
            Output::Inherit => "Inherit",
        })
    }
}

/// The last stderr lines of one worker, and whether it reported a failed
/// allocation (Rust's allocator prints "memory allocation of N bytes failed"
/// before aborting; a backtrace may follow and push it out of the tail).
#[derive(Debug, Default)]
pub(crate) struct TailState {
    pub(crate) lines: VecDeque<String>,
    pub(crate) alloc_failed: bool,
}

pub(crate) type Tail = Arc<Mutex<TailState>>;

pub(crate) fn tail_snapshot(tail: &Tail) -> (Vec<String>, bool) {
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    (tail.lines.iter().cloned().collect(), tail.alloc_failed)
}

/// A running pump thread. Dropping it without [`Pump::finish`] detaches
/// nothing: `finish` must be called to join the thread.
#[derive(Debug)]
pub(crate) struct Pump {
    thread: JoinHandle<()>,
    stop: OwnedFd,
    /// A second descriptor of the stop pipe's read end, so the pipe has a
    /// reader until `finish` wrote to it even if the thread ended first.
    _stop_reader: OwnedFd,
    pub(crate) tail: Tail,
}

impl Pump {
    /// Starts a pump for a worker's pipes.
    pub(crate) fn start(
        pid: u32,
        stdout: ChildStdout,
        stderr: ChildStderr,
        output: Output,
    ) -> io::Result<Pump> {
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let stop_reader = stop_rx.try_clone()?;
        let tail: Tail = Arc::new(Mutex::new(TailState::default()));
        let state = PumpState {
            pid,
            output,
            tail: tail.clone(),
            partial: [Vec::new(), Vec::new()],
        };
        let thread = thread::Builder::new()
            .name(format!("wf-output-{pid}"))
            .spawn(move || state.run(stdout, stderr, stop_rx))?;
        Ok(Pump {
            thread,
            stop: stop_tx,
            _stop_reader: stop_reader,
            tail,
        })
    }

    /// Tells the pump to hand on what is already readable and stop, then
    /// joins it. Call after the worker is dead: in the usual case the pump has
    /// seen end-of-file already; a grandchild that escaped the worker's
    /// process group and holds the pipes open cannot keep it running.
    pub(crate) fn finish(self) -> (Vec<String>, bool) {
        // A failed write means the pump already exited and closed its end.
        let _ = nix::unistd::write(&self.stop, b"x");
        let _ = self.thread.join();
        tail_snapshot(&self.tail)
    }
}

struct PumpState {
    pid: u32,
    output: Output,
    tail: Tail,
    partial: [Vec<u8>; 2],
}

impl PumpState {
    fn run(mut self, stdout: ChildStdout, stderr: ChildStderr, stop: OwnedFd) {
        let mut open = [true, true];
        let mut stopping = false;
        let mut buf = vec![0u8; 16 * 1024];
        while open[0] || open[1] {
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(2);
            if open[0] {
                fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
                which.push(0usize);
            }
            if open[1] {
                fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
                which.push(1usize);
            }
            if !stopping {
                fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            }
            // Once stopping, never block: hand on what is readable and leave.
            let timeout = if stopping {
                PollTimeout::ZERO
            } else {
                PollTimeout::NONE
            };
            let ready = match poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            if ready == 0 {
                break; // stopping and nothing left to read
            }
            let revents: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            if !stopping && revents.last().copied().unwrap_or(false) {
                stopping = true;
            }
            for (slot, &stream) in which.iter().enumerate() {
                if !revents[slot] {
                    continue;
                }
                let got = if stream == 0 {
                    nix::unistd::read(&stdout, &mut buf)
                } else {
                    nix::unistd::read(&stderr, &mut buf)
                };
                match got {
                    Ok(0) | Err(_) => open[stream] = false,
                    Ok(n) => self.take(stream, &buf[..n]),
                }
                if !open[stream] {
                    self.flush_partial(stream);
                }
            }
        }
        self.flush_partial(0);
        self.flush_partial(1);
    }

    fn take(&mut self, stream: usize, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            self.partial[stream].extend_from_slice(line);
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole);
            rest = &after[1..];
        }
        self.partial[stream].extend_from_slice(rest);
        if self.partial[stream].len() >= MAX_LINE {
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole);
        }
    }

    fn flush_partial(&mut self, stream: usize) {
        if !self.partial[stream].is_empty() {
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole);
        }
    }

    fn emit(&mut self, stream: usize, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        if stream == 1 {
            let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
            if text.starts_with("memory allocation of") && text.ends_with("failed") {
                tail.alloc_failed = true;
            }
            if tail.lines.len() == TAIL_LINES {
                tail.lines.pop_front();
            }
            tail.lines.push_back(text.clone());
        }
        match &self.output {
            Output::Prefixed => {
                // One write of a whole line under stderr's lock: lines never
                // interleave, with each other or with the parent's own output.
                let whole = format!("[worker {}] {}\n", self.pid, text);
                let _ = io::stderr().lock().write_all(whole.as_bytes());
            }
            Output::Capture(f) => f(OutputLine {
                pid: self.pid,
                stream: if stream == 0 {
                    OutputStream::Stdout
                } else {
                    OutputStream::Stderr
                },
                text,
            }),
            Output::Silent | Output::Inherit => {}
        }
    }
}
