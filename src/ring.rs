//! The result ring: a worker's messages to its parent through shared
//! memory, with no system call per task.
//!
//! How data and deaths flow through it. Each worker gets a region (a memfd
//! made before the spawn, inherited, mapped `MAP_SHARED` on both sides):
//!
//! ```text
//!  header: TAIL (worker) | HEAD (parent) | PARKED (parent sets, worker clears)
//!          | STARTS (parent sets: wake me for a STARTED too)
//!  data:   CAPACITY bytes of the worker's outgoing byte stream, at stream
//!          offset mod CAPACITY
//! ```
//!
//! The worker appends its frames (STARTED, results, progress: the same
//! frames the socket carried) to the stream and publishes them by storing
//! TAIL; the parent copies bytes out from HEAD to TAIL into its frame reader
//! and stores HEAD, which frees them. A parent busy with its loop drains
//! every ring on every turn, so a busy parent is never woken: the worker
//! sends a one-frame WAKE on the socket only if the parent said it is about
//! to sleep (PARKED), and clears PARKED when it does, so one sleep costs at
//! most one wake. A STARTED alone wakes nobody unless the parent set STARTS
//! (it watches a time limit, which runs from the start): otherwise it is
//! read with the task's result, or on the parent's next turn, and a round
//! trip costs one wake instead of two. (The parent also sets STARTS when
//! it cancels a task the worker may already hold: a start that crosses the
//! cancel must wake it, so that it stops the task.) Both sides use sequentially consistent stores and loads
//! of TAIL and PARKED, so either the parent sees the new TAIL before it
//! sleeps, or the worker sees PARKED and wakes it.
//!
//! A worker killed at any point loses nothing it published: the region
//! outlives it in the parent, which drains it after the socket ends, and
//! the last STARTED in it (or OK_STARTED, a result that carries the next
//! task's start) names the task that was running. A frame half
//! published is a truncated frame at the end of the stream, as on a socket.
//! When the ring is full the worker waits for the parent to free room
//! (waking it if parked); a frame larger than the ring travels in pieces.
//!
//! The region is the worker's to scribble on: TAIL is checked to be at most
//! CAPACITY ahead of HEAD (else the worker broke the protocol), bytes are
//! copied out before anything looks at them, and they go through the same
//! frame reader, with the same limits, as bytes from a socket.

use std::io;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use crate::sys::SharedMap;

/// Size of the header: four words, each on its own cache line.
pub(crate) const HEADER: usize = 256;
/// Bytes of the stream the ring holds: about 30,000 tiny results.
pub(crate) const CAPACITY: usize = 1 << 20;
/// The region's whole size.
pub(crate) const REGION_LEN: usize = HEADER + CAPACITY;

const TAIL: usize = 0;
const HEAD: usize = 64;
const PARKED: usize = 128;
const STARTS: usize = 192;

/// One side's view of a region.
#[derive(Debug)]
struct Ring {
    map: SharedMap,
    capacity: u64,
}

impl Ring {
    fn new(map: SharedMap) -> io::Result<Ring> {
        let capacity = map.len().saturating_sub(HEADER);
        if capacity == 0 {
            return Err(io::Error::other("region too small for a ring"));
        }
        Ok(Ring {
            capacity: capacity as u64,
            map,
        })
    }

    /// Copies `bytes` into the data area at stream offset `pos`, wrapping.
    fn copy_in(&self, pos: u64, bytes: &[u8]) {
        let at = (pos % self.capacity) as usize;
        let first = bytes.len().min(self.capacity as usize - at);
        self.map.write(HEADER + at, &bytes[..first]);
        if first < bytes.len() {
            self.map.write(HEADER, &bytes[first..]);
        }
    }

    /// Copies `dst.len()` bytes out of the data area from stream offset
    /// `pos`, wrapping.
    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let at = (pos % self.capacity) as usize;
        let first = dst.len().min(self.capacity as usize - at);
        self.map.read(HEADER + at, &mut dst[..first]);
        if first < dst.len() {
            self.map.read(HEADER, &mut dst[first..]);
        }
    }
}

/// The worker's end: appends and publishes.
#[derive(Debug)]
pub(crate) struct RingWriter {
    ring: Ring,
    tail: u64,
}

impl RingWriter {
    pub(crate) fn new(map: SharedMap) -> io::Result<RingWriter> {
        let ring = Ring::new(map)?;
        let tail = ring.map.word(TAIL).load(Acquire);
        Ok(RingWriter { ring, tail })
    }

    /// Appends `bytes` to the stream and publishes them. `wake` is called
    /// (at most once per parent sleep) when the parent is parked and must
    /// be told: always, unless `start_only` (the bytes are one STARTED) and
    /// the parent does not watch starts. When the ring is full, waits for
    /// the parent to free room, polling ever more slowly (up to 1 ms);
    /// `parent_gone` ends the wait.
    pub(crate) fn send(
        &mut self,
        mut bytes: &[u8],
        start_only: bool,
        wake: &mut dyn FnMut(),
        parent_gone: &mut dyn FnMut() -> bool,
    ) -> io::Result<()> {
        let mut pause = Duration::from_micros(20);
        while !bytes.is_empty() {
            let head = self.ring.map.word(HEAD).load(Acquire);
            let used = self.tail.wrapping_sub(head);
            // A parent that stored nonsense cannot make us overwrite: treat
            // it as a full ring.
            let room = self.ring.capacity.saturating_sub(used) as usize;
            if room == 0 {
                self.wake_parent(wake);
                if parent_gone() {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the parent went away",
                    ));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
                continue;
            }
            pause = Duration::from_micros(20);
            let n = room.min(bytes.len());
            self.ring.copy_in(self.tail, &bytes[..n]);
            self.tail = self.tail.wrapping_add(n as u64);
            self.ring.map.word(TAIL).store(self.tail, SeqCst);
            bytes = &bytes[n..];
        }
        if !start_only || self.ring.map.word(STARTS).load(SeqCst) != 0 {
            self.wake_parent(wake);
        }
        Ok(())
    }

    /// Wakes the parent if it is parked (and un-parks it: one wake per
    /// sleep).
    fn wake_parent(&self, wake: &mut dyn FnMut()) {
        let parked = self.ring.map.word(PARKED);
        if parked.load(SeqCst) != 0 && parked.swap(0, SeqCst) != 0 {
            wake();
        }
    }
}

/// The parent's end: a `Read` of the worker's byte stream, for the frame
/// reader. `WouldBlock` while the ring is empty; the end of the stream once
/// the socket ended ([`RingReader::end`]) and the ring is drained.
#[derive(Debug)]
pub(crate) struct RingReader {
    ring: Ring,
    head: u64,
    ended: bool,
}

impl RingReader {
    pub(crate) fn new(map: SharedMap) -> io::Result<RingReader> {
        Ok(RingReader {
            ring: Ring::new(map)?,
            head: 0,
            ended: false,
        })
    }

    /// Whether published bytes wait to be read.
    pub(crate) fn has_data(&self) -> bool {
        self.ring.map.word(TAIL).load(SeqCst) != self.head
    }

    /// Says the parent is about to sleep; `true` if bytes arrived before
    /// that was seen (then it must not sleep).
    pub(crate) fn park(&self) -> bool {
        self.ring.map.word(PARKED).store(1, SeqCst);
        self.has_data()
    }

    /// Asks the worker to wake a parked parent for a STARTED too, or no
    /// longer (a task with a time limit was sent, or a task the worker may
    /// hold was cancelled). Sequentially consistent, like PARKED and TAIL: a
    /// worker that publishes a STARTED after this store sees it.
    pub(crate) fn watch_starts(&self, on: bool) {
        self.ring.map.word(STARTS).store(u64::from(on), SeqCst);
    }

    /// The parent is awake again.
    pub(crate) fn unpark(&self) {
        self.ring.map.word(PARKED).store(0, Relaxed);
    }

    /// The worker's socket ended: once drained, so is the stream.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }
}

impl io::Read for RingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tail = self.ring.map.word(TAIL).load(SeqCst);
        let available = tail.wrapping_sub(self.head);
        if available > self.ring.capacity {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the worker's ring claims {available} unread bytes, more than its {} \
                     (its shared memory was overwritten)",
                    self.ring.capacity
                ),
            ));
        }
        if available == 0 {
            return if self.ended {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = (available as usize).min(buf.len());
        self.ring.copy_out(self.head, &mut buf[..n]);
        self.head = self.head.wrapping_add(n as u64);
        self.ring.map.word(HEAD).store(self.head, Release);
        Ok(n)
    }
}

/// A new region for a worker: its descriptor (for the spawn) and the
/// parent's reader.
pub(crate) fn create() -> io::Result<(std::os::fd::OwnedFd, RingReader)> {
    let (fd, map) = SharedMap::create(REGION_LEN)?;
    Ok((fd, RingReader::new(map)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// A parent reader and a worker writer on one region (one process).
    fn pair() -> (RingReader, RingWriter) {
        let (fd, reader) = create().expect("region");
        let map = SharedMap::map(fd.as_fd(), REGION_LEN).expect("second mapping");
        (reader, RingWriter::new(map).expect("writer"))
    }

    fn drain(reader: &mut RingReader) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn bytes_travel_in_order_across_the_wrap_and_a_record_larger_than_the_ring() {
        let (mut reader, mut writer) = pair();
        let big: Vec<u8> = (0..CAPACITY * 2 + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut got = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                for chunk in [&b"small"[..], &big, &b"after"[..]] {
                    writer
                        .send(chunk, false, &mut || {}, &mut || false)
                        .expect("sent");
                }
            });
            let want = 5 + big.len() + 5;
            while got.len() < want {
                got.extend(drain(&mut reader));
            }
        });
        assert_eq!(&got[..5], b"small");
        assert_eq!(&got[5..5 + big.len()], &big[..]);
        assert_eq!(&got[5 + big.len()..], b"after");
    }

    #[test]
    fn a_parked_parent_is_woken_once_and_a_busy_one_never() {
        let (reader, mut writer) = pair();
        let mut wakes = 0;
        writer
            .send(b"x", false, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 0, "not parked: no wake");
        assert!(reader.park(), "data arrived: must not sleep");
        reader.unpark();
        let mut reader = reader;
        drain(&mut reader);
        assert!(!reader.park(), "drained: may sleep");
        writer
            .send(b"y", false, &mut || wakes += 1, &mut || false)
            .expect("sent");
        writer
            .send(b"z", false, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 1, "one wake per sleep");
    }

    #[test]
    fn a_start_alone_wakes_a_parked_parent_only_if_it_watches_starts() {
        let (reader, mut writer) = pair();
        let mut wakes = 0;
        assert!(!reader.park());
        writer
            .send(b"s", true, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 0, "a STARTED alone waits for the result");
        writer
            .send(b"r", false, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 1, "the result wakes the parent");
        let mut reader = reader;
        assert_eq!(drain(&mut reader), b"sr");
        reader.watch_starts(true);
        assert!(!reader.park());
        writer
            .send(b"s", true, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 2, "a parent watching a time limit is woken");
        let mut reader = reader;
        assert_eq!(drain(&mut reader), b"s");
        reader.watch_starts(false);
        assert!(!reader.park());
        writer
            .send(b"s", true, &mut || wakes += 1, &mut || false)
            .expect("sent");
        assert_eq!(wakes, 2, "and quiet again once it stops watching");
    }

    #[test]
    fn the_stream_ends_only_after_the_socket_ended_and_the_ring_is_drained() {
        let (mut reader, mut writer) = pair();
        writer
            .send(b"last words", false, &mut || {}, &mut || false)
            .expect("sent");
        reader.end();
        assert_eq!(drain(&mut reader), b"last words");
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).expect("end"), 0);
    }

    proptest! {
        /// Whatever a hostile worker stores in the header and the data, the
        /// reader never panics, never reads more than the capacity, and
        /// reports a tail out of range as an error.
        #[test]
        fn a_scribbled_region_is_an_error_or_bytes_never_a_panic(
            tail in any::<u64>(),
            head in any::<u64>(),
            junk in proptest::collection::vec(any::<u8>(), 0..4096),
            at in 0usize..CAPACITY,
        ) {
            let (fd, mut reader) = create().expect("region");
            let hostile = SharedMap::map(fd.as_fd(), REGION_LEN).expect("mapping");
            hostile.write(HEADER + at.min(CAPACITY - junk.len().min(CAPACITY)), &junk);
            hostile.word(TAIL).store(tail, SeqCst);
            hostile.word(HEAD).store(head, SeqCst);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            for _ in 0..64 {
                match reader.read(&mut buf) {
                    Ok(n) => { total += n as u64; if n == 0 { break; } }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                        prop_assert!(tail > CAPACITY as u64);
                        break;
                    }
                }
            }
            prop_assert!(total <= CAPACITY as u64);
        }
    }
}
