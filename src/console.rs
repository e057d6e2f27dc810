//! The "mutexed console": where a worker's stdout and stderr go.
//!
//! The engine's loop reads each worker's pipes when they are readable and
//! hands each whole line on, so lines from different workers (and from the
//! parent) never interleave mid-line. It also keeps the last stderr lines for
//! crash reports.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::task::TaskId;
use crate::wire::OUTPUT_MARK;

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
#[non_exhaustive]
pub enum OutputStream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// One line a worker printed, as handed to an [`Output::Capture`] callback.
///
/// ```
/// use worker_facade::{OutputLine, OutputStream, TaskId};
/// let line = OutputLine::new(42, OutputStream::Stderr, "hello").with_task(Some(TaskId::from_raw(7)));
/// assert_eq!(line.to_string(), "[worker 42] hello");
/// assert_eq!(line.task, Some(TaskId::from_raw(7)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputLine {
    /// The worker's process ID.
    pub pid: u32,
    /// Where it printed the line.
    pub stream: OutputStream,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
    /// The task the worker was running when the line was printed: exact,
    /// not a guess (see [`Output::Capture`]). `None` before its first task
    /// (while it starts).
    pub task: Option<TaskId>,
}

impl OutputLine {
    /// A line printed by worker `pid` on `stream`, not attributed to a task.
    pub fn new(pid: u32, stream: OutputStream, text: impl Into<String>) -> Self {
        OutputLine {
            pid,
            stream,
            text: text.into(),
            task: None,
        }
    }

    /// The same line, attributed to `task`.
    pub fn with_task(mut self, task: Option<TaskId>) -> Self {
        self.task = task;
        self
    }
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
#[non_exhaustive]
pub enum Output {
    /// Each line goes to the parent's stderr, whole, prefixed with
    /// `[worker <pid>] ` (the default).
    #[default]
    Prefixed,
    /// Lines are dropped (the last stderr lines are still kept for crash
    /// reports).
    Silent,
    /// Each line is handed to this callback, on the facade's engine thread:
    /// keep it quick (push to a channel), as the facade waits for it.
    ///
    /// Each line carries the task that was running when it was printed
    /// ([`OutputLine::task`]), exactly: when a task starts, the worker
    /// flushes Rust's and C's stdio buffers and writes a marker line into
    /// its stdout and stderr pipes (which the parent strips), so a line
    /// printed during a task, however close to its end, is never
    /// attributed to the next one. This costs two small `write`s per task,
    /// only in this mode. A line printed between two tasks by a thread of
    /// the handler's own goes to the earlier one.
    Capture(Arc<dyn Fn(OutputLine) + Send + Sync>),
    /// The worker writes straight to the parent's stdout and stderr, without
    /// prefixes; crash reports carry no stderr tail.
    Inherit,
    /// Each line becomes a `tracing` event — name `worker_output`, target
    /// `worker_facade::output`, level INFO — with the fields `pid`, `task`
    /// (the ID of the task that was running when the line was printed,
    /// exactly, as for [`Capture`](Self::Capture)), `stream` (`"stdout"` or `"stderr"`) and `line`. Without
    /// the crate's `tracing` feature, lines go to the prefixed console as
    /// with [`Prefixed`](Self::Prefixed).
    ///
    /// ```
    /// use worker_facade::{Output, WorkerCommand};
    /// // With a subscriber installed, e.g. tracing_subscriber::fmt().init():
    /// let cmd = WorkerCommand::new("facade-worker").output(Output::Tracing);
    /// # let _ = cmd;
    /// ```
    Tracing,
}

impl Output {
    /// Builds [`Output::Capture`] from a closure.
    pub fn capture(f: impl Fn(OutputLine) + Send + Sync + 'static) -> Self {
        Output::Capture(Arc::new(f))
    }

    pub(crate) fn is_piped(&self) -> bool {
        !matches!(self, Output::Inherit)
    }

    /// Whether lines are attributed to tasks (the worker marks task starts
    /// in its output).
    pub(crate) fn attributes_lines(&self) -> bool {
        match self {
            Output::Capture(_) => true,
            Output::Tracing => cfg!(feature = "tracing"),
            Output::Prefixed | Output::Silent | Output::Inherit => false,
        }
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Output::Prefixed => "Prefixed",
            Output::Silent => "Silent",
            Output::Capture(_) => "Capture(..)",
            Output::Inherit => "Inherit",
            Output::Tracing => "Tracing",
        })
    }
}

/// One worker's stdout and stderr pipes, read by the engine's loop (no
/// thread): whole lines are handed on, the last stderr lines kept for crash
/// reports.
///
/// Writing to the parent's stderr never blocks the loop: lines wait in a
/// bounded [`StderrQueue`] and are written when the descriptor can take
/// them; past its bound they are dropped and counted
/// ([`FacadeStats::output_lines_dropped`](crate::FacadeStats)).
#[derive(Debug)]
pub(crate) struct Console {
    pid: u32,
    output: Output,
    pipes: [Option<OwnedFd>; 2],
    partial: [Vec<u8>; 2],
    tail: VecDeque<String>,
    alloc_failed: bool,
    closed: Vec<OwnedFd>,
    /// Whether the worker marks task starts in its output, and the task
    /// each stream's lines belong to now.
    marked: bool,
    task: [Option<TaskId>; 2],
}

/// How many bytes one readiness event reads from a pipe at most, so a
/// chatty worker cannot keep the loop from its other work.
const READ_PER_EVENT: usize = 64 * 1024;

impl Console {
    pub(crate) fn new(
        pid: u32,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        output: Output,
    ) -> Console {
        Console {
            pid,
            pipes: [stdout, stderr],
            partial: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
            alloc_failed: false,
            closed: Vec::new(),
            marked: output.attributes_lines(),
            task: [None, None],
            output,
        }
    }

    /// The pipe of `stream` (0 stdout, 1 stderr) while it is open.
    pub(crate) fn pipe(&self, stream: usize) -> Option<BorrowedFd<'_>> {
        self.pipes.get(stream)?.as_ref().map(|fd| fd.as_fd())
    }

    /// Reads what `stream`'s pipe has now (bounded) and hands on its whole
    /// lines. Returns `false` once the pipe is closed (it is then dropped).
    /// Pipes closed here, kept until the engine has taken them out of its
    /// epoll set.
    pub(crate) fn take_closed(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.closed)
    }

    fn close(&mut self, stream: usize) {
        if let Some(fd) = self.pipes[stream].take() {
            self.closed.push(fd);
        }
    }

    pub(crate) fn on_readable(&mut self, stream: usize, sink: &mut Sink<'_>) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        while total < READ_PER_EVENT {
            let Some(fd) = self.pipes.get(stream).and_then(|p| p.as_ref()) else {
                return false;
            };
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    self.take(stream, &buf[..n], sink);
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => break,
            }
        }
        if total >= READ_PER_EVENT {
            return true;
        }
        // End of file, or a broken pipe.
        self.close(stream);
        self.flush_partial(stream, sink);
        false
    }

    /// Reads what is left in both pipes without waiting, hands on any last
    /// partial line, closes the pipes, and returns the stderr tail and
    /// whether the worker reported a failed allocation.
    pub(crate) fn finish(&mut self, sink: &mut Sink<'_>) -> (Vec<String>, bool) {
        for stream in 0..2 {
            // One bounded read of what is there: a descendant that escaped
            // the process group and keeps writing cannot hold this up.
            if self.pipes[stream].is_some() && self.readable_now(stream) {
                self.on_readable(stream, sink);
            }
            self.close(stream);
            self.flush_partial(stream, sink);
        }
        (self.tail.iter().cloned().collect(), self.alloc_failed)
    }

    fn readable_now(&self, stream: usize) -> bool {
        let Some(fd) = self.pipe(stream) else {
            return false;
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    fn take(&mut self, stream: usize, bytes: &[u8], sink: &mut Sink<'_>) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            self.partial[stream].extend_from_slice(line);
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole, sink);
            rest = &after[1..];
        }
        self.partial[stream].extend_from_slice(rest);
        if self.partial[stream].len() >= MAX_LINE {
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole, sink);
        }
    }

    fn flush_partial(&mut self, stream: usize, sink: &mut Sink<'_>) {
        if !self.partial[stream].is_empty() {
            let whole = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &whole, sink);
        }
    }

    /// Hands on a whole line, first taking out the task-start markers in it
    /// (a marker may follow a partial line the previous task left).
    fn emit(&mut self, stream: usize, line: &[u8], sink: &mut Sink<'_>) {
        let mut rest = line;
        while self.marked {
            let Some(at) = find(rest, OUTPUT_MARK) else {
                break;
            };
            let after = &rest[at + OUTPUT_MARK.len()..];
            let Some(end) = after.iter().position(|&b| b == 0x1f) else {
                break; // not a marker after all
            };
            let Some(id) = std::str::from_utf8(&after[..end])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            else {
                break;
            };
            if at > 0 {
                self.emit_line(stream, &rest[..at], sink);
            }
            self.task[stream] = Some(TaskId::from_raw(id));
            rest = &after[end + 1..];
            if rest.is_empty() {
                return; // the marker's own line
            }
        }
        self.emit_line(stream, rest, sink);
    }

    fn emit_line(&mut self, stream: usize, line: &[u8], sink: &mut Sink<'_>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        if stream == 1 {
            if text.starts_with("memory allocation of") && text.ends_with("failed") {
                self.alloc_failed = true;
            }
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(text.clone());
        }
        match &self.output {
            #[cfg(feature = "tracing")]
            Output::Tracing => {
                let task = self.task[stream].map(|t| t.as_u64());
                let stream = if stream == 0 {
                    OutputStream::Stdout
                } else {
                    OutputStream::Stderr
                };
                crate::trace::output_line(self.pid, task, stream, &text);
            }
            #[cfg(not(feature = "tracing"))]
            Output::Tracing => {
                let whole = format!("[worker {}] {}\n", self.pid, text);
                sink.stderr.push(whole.into_bytes(), sink.dropped);
            }
            Output::Prefixed => {
                let whole = format!("[worker {}] {}\n", self.pid, text);
                sink.stderr.push(whole.into_bytes(), sink.dropped);
            }
            Output::Capture(f) => {
                let line = OutputLine {
                    pid: self.pid,
                    stream: if stream == 0 {
                        OutputStream::Stdout
                    } else {
                        OutputStream::Stderr
                    },
                    text,
                    task: self.task[stream],
                };
                // The callback is user code on the engine's thread: a panic
                // in it loses that line, nothing else.
                if catch_unwind(AssertUnwindSafe(|| f(line))).is_err() {
                    sink.dropped.fetch_add(1, Relaxed);
                }
            }
            Output::Silent | Output::Inherit => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where a console's lines go: the facade's stderr queue, and the counter
/// of lines dropped.
pub(crate) struct Sink<'a> {
    pub(crate) stderr: &'a mut StderrQueue,
    pub(crate) dropped: &'a AtomicU64,
}

/// Whole lines waiting for this process's stderr, at most [`QUEUE_BYTES`]
/// of them: a stderr nobody reads costs a bounded buffer and dropped
/// lines, never a blocked engine.
#[derive(Debug, Default)]
pub(crate) struct StderrQueue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// The bound of a facade's stderr queue.
const QUEUE_BYTES: usize = 4 << 20;
/// A pipe that polls writable has room for this many bytes; a write of at
/// most this many is atomic (POSIX `PIPE_BUF`).
const PIPE_BUF: usize = 4096;

impl StderrQueue {
    fn push(&mut self, line: Vec<u8>, dropped: &AtomicU64) {
        if self.bytes + line.len() > QUEUE_BYTES {
            dropped.fetch_add(1, Relaxed);
            return;
        }
        self.bytes += line.len();
        self.lines.push_back(line);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Drops every queued line; returns how many.
    pub(crate) fn clear(&mut self) -> u64 {
        let n = self.lines.len() as u64;
        self.lines.clear();
        self.bytes = 0;
        n
    }

    /// Writes the lines stderr takes now, each whole. Stops at the first
    /// line that cannot go without blocking.
    ///
    /// No lock is taken: std's stderr lock may be held by a thread of the
    /// program blocked on that same stderr, which must not hold up the
    /// engine. A line of at most `PIPE_BUF` bytes is one atomic write, so
    /// it never interleaves with other writers; a longer one may.
    pub(crate) fn flush(&mut self, dropped: &AtomicU64) {
        if self.lines.is_empty() {
            return;
        }
        let stderr = io::stderr();
        let fd = stderr.as_fd();
        while let Some(line) = self.lines.front() {
            match write_whole_now(fd, line) {
                Write::Done => {}
                Write::WouldBlock => return,
                Write::Failed => {
                    dropped.fetch_add(1, Relaxed);
                }
            }
            self.bytes -= line.len();
            self.lines.pop_front();
        }
    }
}

enum Write {
    Done,
    WouldBlock,
    Failed,
}

/// Writes `line` to `fd` only if that cannot block: in pieces of at most
/// `PIPE_BUF` bytes, each after `poll` said the descriptor has room now. A
/// line of at most `PIPE_BUF` bytes goes in one atomic write or not at all.
fn write_whole_now(fd: BorrowedFd<'_>, line: &[u8]) -> Write {
    let mut rest = line;
    while !rest.is_empty() {
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        let writable = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLOUT)),
            _ => false,
        };
        if !writable {
            return if rest.len() == line.len() {
                Write::WouldBlock
            } else {
                Write::Failed // cut mid-line: the rest is dropped
            };
        }
        let piece = &rest[..rest.len().min(PIPE_BUF)];
        match nix::unistd::write(fd, piece) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Write::Failed,
        }
    }
    Write::Done
}
