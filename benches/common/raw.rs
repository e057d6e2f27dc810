//! The raw baselines: what a parent and a child process can do over a Unix
//! socketpair with no library in between. They bound what the facade can
//! reach on this machine, measured in the same run as the facade.
//!
//! The child is this bench binary re-executed with [`RAW_ENV`] set; its end
//! of the socketpair is its stdin (so no descriptor plumbing, no `unsafe`).
//! Frames are the ones the issue names: a little-endian `u32` length, then a
//! bincode 2 (serde, standard config, as the library's codec) body.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tasks::{self, Blob, Tiny};
use super::{PROBE_ENV, RAW_ENV};

/// Size of the ping-pong message.
pub(crate) const PING: usize = 32;
/// Batch size for streamed writes, on both sides.
const CHUNK: usize = 64 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Starts this binary as a raw child playing `mode`; returns it and our end
/// of the socketpair.
fn spawn_child(mode: &str) -> io::Result<(Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = Command::new(std::env::current_exe()?)
        .env(RAW_ENV, mode)
        .env_remove(PROBE_ENV)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    Ok((child, ours))
}

/// Starts a raw child and waits for its "ready" byte: process start-up is
/// not part of the figures that use this.
fn ready_child(mode: &str) -> (Child, UnixStream) {
    let (child, mut s) = spawn_child(mode).expect("spawn raw child");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("raw child ready");
    (child, s)
}

fn finish(mut child: Child, s: UnixStream) {
    drop(s);
    let _ = child.wait();
}

/// 32-byte ping-pong: `samples` round trips after a warm-up, each timed.
pub(crate) fn pingpong(samples: usize) -> Vec<Duration> {
    let (child, mut s) = ready_child("pingpong");
    let msg = [0x5au8; PING];
    let mut back = [0u8; PING];
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        let t0 = Instant::now();
        s.write_all(&msg).expect("ping");
        s.read_exact(&mut back).expect("pong");
        if i >= samples / 10 {
            out.push(t0.elapsed());
        }
    }
    finish(child, s);
    out
}

/// From `spawn` of a child until its first 32-byte message arrives.
pub(crate) fn spawn_first_message() -> Duration {
    let t0 = Instant::now();
    let (child, mut s) = spawn_child("hello").expect("spawn raw child");
    let mut msg = [0u8; PING];
    s.read_exact(&mut msg).expect("first message");
    let took = t0.elapsed();
    finish(child, s);
    took
}

/// From `kill -9` of a child until `waitpid` has its status.
pub(crate) fn kill_until_reaped() -> Duration {
    let (mut child, s) = ready_child("block");
    let t0 = Instant::now();
    child.kill().expect("kill -9");
    let _ = child.wait();
    let took = t0.elapsed();
    drop(s);
    took
}

/// Streams `tasks` as length-prefixed bincode frames to a child that decodes
/// each, solves it and streams back a `(id, u64)` frame; returns the time
/// from the first write until every result is read and the child is reaped
/// (the same span as `process_task` × N then `collect_tasks`).
pub(crate) fn stream<T: Serialize + Sync>(mode: &str, tasks: &[T]) -> Duration {
    let (child, s) = ready_child(mode);
    let mut reader = s.try_clone().expect("clone socket");
    let mut writer = s.try_clone().expect("clone socket");
    let t0 = Instant::now();
    let got = thread::scope(|scope| {
        scope.spawn(move || {
            let mut buf = Vec::with_capacity(CHUNK * 2);
            for t in tasks {
                let start = buf.len();
                buf.extend_from_slice(&[0; 4]);
                bincode::serde::encode_into_std_write(t, &mut buf, config()).expect("encode");
                let len = (buf.len() - start - 4) as u32;
                buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
                if buf.len() >= CHUNK {
                    writer.write_all(&buf).expect("write tasks");
                    buf.clear();
                }
            }
            writer.write_all(&buf).expect("write tasks");
            writer.shutdown(Shutdown::Write).expect("shutdown");
        });
        let mut frames = FrameBuf::new();
        let mut got = 0usize;
        loop {
            while let Some(body) = frames.next() {
                if body == [0x11] {
                    continue; // a "started" mark (stream-tiny-flush)
                }
                let ((id, _out), _): ((u64, u64), usize) =
                    bincode::serde::decode_from_slice(body, config()).expect("decode result");
                assert_eq!(id, got as u64, "results in order");
                got += 1;
            }
            if !frames.fill(&mut reader).expect("read results") {
                break;
            }
        }
        got
    });
    drop(reader);
    finish(child, s);
    let took = t0.elapsed();
    assert_eq!(got, tasks.len(), "every result came back");
    took
}

/// Where [`bandwidth`] writes its frames from.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    /// One buffer, written `count` times: after the first frame it sits in
    /// the cache, which no stream of distinct tasks can do.
    OneCached,
    /// `count` buffers made before the clock starts, one per frame: the same
    /// memory a facade reads the same tasks from.
    Distinct,
}

/// 1 MiB (or `size`) frames parent → child, an 8-byte ack back for each:
/// the socket's bandwidth, no codec. Returns bytes per second.
pub(crate) fn bandwidth(count: usize, size: usize, source: Source) -> f64 {
    let (child, s) = ready_child("sink");
    let mut reader = s.try_clone().expect("clone socket");
    let mut writer = s.try_clone().expect("clone socket");
    let frame = || {
        let mut frame = vec![0xabu8; 4 + size];
        frame[..4].copy_from_slice(&(size as u32).to_le_bytes());
        frame
    };
    let frames: Vec<Vec<u8>> = match source {
        Source::OneCached => vec![frame()],
        Source::Distinct => (0..count).map(|_| frame()).collect(),
    };
    let t0 = Instant::now();
    thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..count {
                writer
                    .write_all(&frames[i % frames.len()])
                    .expect("write frame");
            }
        });
        let mut ack = [0u8; 8];
        for _ in 0..count {
            reader.read_exact(&mut ack).expect("ack");
        }
    });
    let took = t0.elapsed();
    drop((reader, writer));
    finish(child, s);
    (count * size) as f64 / took.as_secs_f64()
}

/// A read buffer that hands out whole length-prefixed frames.
struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    fn new() -> Self {
        FrameBuf {
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// The next whole frame's body, if one is buffered.
    fn next(&mut self) -> Option<&[u8]> {
        let avail = &self.buf[self.start..self.end];
        let len = u32::from_le_bytes(avail.get(..4)?.try_into().ok()?) as usize;
        if avail.len() < 4 + len {
            return None;
        }
        let body = self.start + 4..self.start + 4 + len;
        self.start = body.end;
        Some(&self.buf[body])
    }

    fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        match avail.get(..4) {
            Some(h) => {
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                avail.len() >= 4 + len
            }
            None => false,
        }
    }

    /// Reads more; `false` at end of stream.
    fn fill(&mut self, r: &mut impl Read) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Room for the frame in progress, however large.
        if let Some(h) = self.buf.get(..4).filter(|_| self.end >= 4) {
            let need = 4 + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The child side of every raw baseline.
pub(crate) fn child_main(mode: &str) {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("socket on stdin");
    let mut s = UnixStream::from(fd);
    match mode {
        "hello" => {
            s.write_all(&[1u8; PING]).expect("first message");
            drain(&mut s);
        }
        "pingpong" => {
            s.write_all(&[1]).expect("ready");
            let mut msg = [0u8; PING];
            while s.read_exact(&mut msg).is_ok() {
                if s.write_all(&msg).is_err() {
                    break;
                }
            }
        }
        "block" => {
            s.write_all(&[1]).expect("ready");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        "sink" => {
            s.write_all(&[1]).expect("ready");
            let mut frames = FrameBuf::new();
            let mut reader = s.try_clone().expect("clone socket");
            loop {
                let mut acks = 0;
                while frames.next().is_some() {
                    acks += 1;
                }
                for _ in 0..acks {
                    s.write_all(&[0; 8]).expect("ack");
                }
                if !frames.fill(&mut reader).expect("read frames") {
                    break;
                }
            }
        }
        "stream-tiny" => serve_stream(s, false, |t: Tiny| (t.id, tasks::solve_tiny(&t))),
        "stream-tiny-flush" => serve_stream(s, true, |t: Tiny| (t.id, tasks::solve_tiny(&t))),
        "stream-blob" => serve_stream(s, false, |b: Blob| (b.id, b.data.len() as u64)),
        other => panic!("unknown raw child mode {other:?}"),
    }
}

fn drain(s: &mut UnixStream) {
    let mut sink = [0u8; 256];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

/// Decodes task frames, solves them, streams `(id, u64)` frames back. Like
/// the facade's worker, it never blocks on a read with results unsent.
///
/// With `per_task`, it writes before each task like the facade's worker
/// does (the previous result with a "started" mark, so a crash loses no
/// result): the kernel's cost of that protocol, without the library.
fn serve_stream<T: DeserializeOwned>(
    mut s: UnixStream,
    per_task: bool,
    solve: impl Fn(T) -> (u64, u64),
) {
    s.write_all(&[1]).expect("ready");
    let mut reader = s.try_clone().expect("clone socket");
    let mut frames = FrameBuf::new();
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    loop {
        while let Some(body) = frames.next() {
            let (task, _): (T, usize) =
                bincode::serde::decode_from_slice(body, config()).expect("decode task");
            if per_task {
                out.extend_from_slice(&[1, 0, 0, 0, 0x11]);
                s.write_all(&out).expect("write results");
                out.clear();
            }
            let result = solve(task);
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            bincode::serde::encode_into_std_write(result, &mut out, config()).expect("encode");
            let len = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&len.to_le_bytes());
            if out.len() >= CHUNK {
                s.write_all(&out).expect("write results");
                out.clear();
            }
        }
        if !out.is_empty() && !frames.has_frame() {
            s.write_all(&out).expect("write results");
            out.clear();
        }
        if !frames.fill(&mut reader).expect("read tasks") {
            break;
        }
    }
    s.write_all(&out).expect("write results");
}
