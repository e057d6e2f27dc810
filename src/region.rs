//! The task region: large tasks on their way to a worker, through shared
//! memory rather than the socket.
//!
//! ## How a large task flows
//!
//! 1. A facade makes one region when it starts (a memfd of
//!    [`large_task_region`](crate::FacadeBuilder::large_task_region) bytes),
//!    maps it writable, and then seals it: no new writable mapping, no
//!    `write(2)`, no change of size, no more seals. Every worker inherits
//!    the descriptor at its spawn, maps it read-only as it starts and
//!    closes the descriptor. Pages cost memory only once a task has used
//!    them.
//! 2. A submitter whose encoded task is at least 16 KiB
//!    (`engine::LARGE_FRAME`) asks
//!    for a span ([`TaskRegion::store`]): the lowest free run of whole pages
//!    that fits, under a lock held for the search alone. It copies the
//!    encoding in, and the socket carries only a TASK_AT frame: the task's
//!    ID, the span's offset and its length. When no span is free, the task
//!    goes the usual way, whole over the socket: the region only ever makes
//!    a task cheaper, never refuses one.
//! 3. The worker decodes the task in place, straight from its read-only
//!    mapping: nothing writes a span while a frame names it (step 4), so
//!    its bytes are as steady as a buffer of its own, and one copy is
//!    saved. It borrows them only until it answers the task.
//! 4. The span stays the task's for as long as a frame naming it may still
//!    be sent or read: the engine keeps it in a table by task ID and drops
//!    it only once the worker has answered or skipped the task, or the
//!    frame is dropped for good (its task settled while queued, or the
//!    worker that held it died and the task is not run again). A worker's
//!    death re-queues the same TASK_AT frame, and the span stays with it,
//!    so the next worker reads the same bytes. Dropping a [`Span`] gives
//!    its pages back.
//!
//! ## What a worker can do to it
//!
//! Read all of it: the large tasks of the facade's other workers too, and
//! the bytes of tasks already answered (spans are not cleared), as it could
//! read a shared input file. Nothing more. The seals hold for
//! every process that has the descriptor, whatever it does with it (map it
//! again, reopen it through `/proc`), so a hostile worker can neither
//! change a task another worker is about to read nor the bytes a re-sent
//! task will be read from. At worst it can make the whole region resident
//! (`fallocate` without punching holes is not sealed), which is bounded by
//! the region's size and ends with the facade. The parent reads back only
//! a span it has just filled itself.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use crate::sys::SharedMap;

/// Spans are whole pages, so that tasks never share one.
const PAGE: usize = 4096;

/// The parent's side: the sealed region, mapped writable, and its free
/// spans.
///
/// # Drop
///
/// Unmaps the region and closes its descriptor; the workers keep their own
/// descriptors and mappings.
pub(crate) struct TaskRegion {
    fd: OwnedFd,
    map: SharedMap,
    free: Mutex<FreeList>,
}

impl std::fmt::Debug for TaskRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegion")
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl TaskRegion {
    /// A sealed region of `len` bytes (rounded down to whole pages).
    pub(crate) fn create(len: usize) -> io::Result<Arc<TaskRegion>> {
        let len = len / PAGE * PAGE;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a task region needs at least one page",
            ));
        }
        let (fd, map) = SharedMap::create_sealed(len)?;
        Ok(Arc::new(TaskRegion {
            fd,
            map,
            free: Mutex::new(FreeList::new(len)),
        }))
    }

    /// The descriptor every worker inherits.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies `bytes` into a free span, which is the caller's until it is
    /// dropped; `None` when no free span is large enough.
    pub(crate) fn store(self: &Arc<Self>, bytes: &[u8]) -> Option<Span> {
        let mut span = self.reserve(bytes.len())?;
        span.write_all(bytes).ok()?;
        Some(span)
    }

    /// An empty span with room for at least `room` bytes, to be filled
    /// with [`Span::write`]; `None` when no free span is large enough.
    pub(crate) fn reserve(self: &Arc<Self>, room: usize) -> Option<Span> {
        let size = room.checked_next_multiple_of(PAGE)?.max(PAGE);
        let offset = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(size)?;
        Some(Span {
            region: self.clone(),
            offset,
            len: 0,
            size,
        })
    }

    /// Bytes in free spans (for tests).
    #[cfg(test)]
    fn free_bytes(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runs
            .values()
            .sum()
    }
}

/// A task's bytes in the region.
///
/// # Drop
///
/// Gives its pages back to the region, for the next large task.
pub(crate) struct Span {
    region: Arc<TaskRegion>,
    offset: usize,
    /// Bytes of the task.
    len: usize,
    /// Bytes reserved, in whole pages.
    size: usize,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl Span {
    pub(crate) fn offset(&self) -> u64 {
        self.offset as u64
    }

    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }
}

/// Appends to the span: what an encoder writes a large task with, straight
/// into the region. Past the span's room, a write fails
/// ([`io::ErrorKind::WriteZero`]) and writes nothing.
impl io::Write for Span {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.len() > self.size - self.len {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // The span is this one's alone (the free list handed it out once),
        // so no lock is held while copying.
        self.region.map.write(self.offset + self.len, bytes);
        self.len += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Span {
    /// Gives back the pages past the bytes written (a span reserved for
    /// more than the task needed).
    pub(crate) fn trim(&mut self) {
        let used = self.len.next_multiple_of(PAGE).max(PAGE);
        if used < self.size {
            self.region
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .give_back(self.offset + used, self.size - used);
            self.size = used;
        }
    }

    /// Appends the bytes written so far to `out` (the parent's own
    /// mapping, which no worker can write).
    pub(crate) fn read_into(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + self.len, 0);
        self.region.map.read(self.offset, &mut out[at..]);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.region
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back(self.offset, self.size);
    }
}

/// Where a task is encoded when its size is only guessed: into its span
/// while the bytes fit, and what comes after into a buffer, so that the
/// task's `Serialize` runs once whatever its size.
///
/// # Drop
///
/// Drops its span (whose pages go back) and its buffer.
pub(crate) struct Spilling {
    span: Span,
    spill: Vec<u8>,
}

impl Spilling {
    pub(crate) fn new(span: Span) -> Self {
        Spilling {
            span,
            spill: Vec::new(),
        }
    }

    /// The span (its bytes come first) and what did not fit in it.
    pub(crate) fn into_parts(self) -> (Span, Vec<u8>) {
        (self.span, self.spill)
    }
}

impl io::Write for Spilling {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.spill.is_empty() && self.span.write_all(bytes).is_ok() {
            return Ok(bytes.len());
        }
        self.spill.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The free runs of a region, by offset: first fit from the lowest, so
/// that the pages in use stay few and warm, and neighbours merge when
/// given back.
struct FreeList {
    /// Offset → length of a free run; runs never touch.
    runs: BTreeMap<usize, usize>,
}

impl FreeList {
    fn new(len: usize) -> Self {
        FreeList {
            runs: BTreeMap::from([(0, len)]),
        }
    }

    /// Takes `size` bytes from the lowest run that has them.
    fn take(&mut self, size: usize) -> Option<usize> {
        let (&offset, &len) = self.runs.iter().find(|&(_, &len)| len >= size)?;
        self.runs.remove(&offset);
        if len > size {
            self.runs.insert(offset + size, len - size);
        }
        Some(offset)
    }

    /// Gives back `size` bytes at `offset`, merged with the runs it
    /// touches.
    fn give_back(&mut self, mut offset: usize, mut size: usize) {
        if let Some((&before, &len)) = self.runs.range(..offset).next_back() {
            if before + len == offset {
                self.runs.remove(&before);
                offset = before;
                size += len;
            }
        }
        if let Some(len) = self.runs.remove(&(offset + size)) {
            size += len;
        }
        self.runs.insert(offset, size);
    }
}

/// A worker's side: the region mapped read-only.
pub(crate) struct TaskView {
    map: SharedMap,
}

impl TaskView {
    /// Maps the region behind the descriptor the parent handed down.
    pub(crate) fn open(fd: BorrowedFd<'_>) -> io::Result<TaskView> {
        if !crate::sys::sealed_read_only(fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not a sealed task region",
            ));
        }
        Ok(TaskView {
            map: SharedMap::map_read_only(fd)?,
        })
    }

    /// Runs `f` on the `len` bytes at `offset`, in place (what it returns
    /// cannot borrow them). A span outside the region is an error, and `f`
    /// does not run: the parent never sends one.
    ///
    /// The bytes are the task's until the worker answers it (see step 4):
    /// call this before the answer is sent.
    pub(crate) fn with_task<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl for<'a> FnOnce(&'a [u8]) -> R,
    ) -> Result<R, String> {
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.map.len() as u64);
        if !fits {
            return Err(format!(
                "a task at {offset}+{len} lies outside the {}-byte task region",
                self.map.len()
            ));
        }
        // Both fit in usize: they are inside a mapping of this process.
        Ok(self.map.with_frozen(offset as usize, len as usize, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stored_task_reads_back_from_a_read_only_view_of_the_same_descriptor() {
        let region = TaskRegion::create(64 * 1024).expect("region");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let span = region.store(&bytes).expect("a free span");
        let view = TaskView::open(region.fd()).expect("view");
        let read = view
            .with_task(span.offset(), span.len(), <[u8]>::to_vec)
            .expect("inside the region");
        assert_eq!(read, bytes);
        let err = view
            .with_task(span.offset() + 1, 64 * 1024, |_| ())
            .expect_err("runs past the end");
        assert!(err.contains("outside"), "{err}");
        assert!(view.with_task(u64::MAX, 2, |_| ()).is_err(), "overflow");
        let last = view.with_task(64 * 1024 - 1, 1, <[u8]>::len);
        assert_eq!(last, Ok(1), "the last byte");
        assert!(
            view.with_task(64 * 1024, 1, |_| ()).is_err(),
            "one past the end"
        );
    }

    #[test]
    fn the_sealed_descriptor_refuses_writes_writable_mappings_and_resizing() {
        let region = TaskRegion::create(8 * 4096).expect("region");
        let fd = region.fd();
        assert!(
            SharedMap::map(fd, 8 * 4096).is_err(),
            "a new writable mapping must be refused"
        );
        let written = nix::unistd::write(fd, b"scribble");
        assert_eq!(written, Err(nix::errno::Errno::EPERM));
        let grown = nix::unistd::ftruncate(fd, 16 * 4096);
        assert_eq!(grown, Err(nix::errno::Errno::EPERM));
        let shrunk = nix::unistd::ftruncate(fd, 4096);
        assert_eq!(shrunk, Err(nix::errno::Errno::EPERM));
        // The parent's own mapping still writes.
        assert!(region.store(b"still mine").is_some());
    }

    #[test]
    fn a_full_region_says_so_and_a_dropped_span_is_reused_from_the_lowest_offset() {
        let region = TaskRegion::create(4 * 4096).expect("region");
        let a = region.store(&[1; 4096]).expect("a");
        let b = region.store(&[2; 5000]).expect("b: two pages");
        let c = region.store(&[3; 1]).expect("c");
        assert_eq!((a.offset(), b.offset(), c.offset()), (0, 4096, 3 * 4096));
        assert!(region.store(&[4; 1]).is_none(), "full");
        drop(b);
        let d = region.store(&[5; 100]).expect("d");
        assert_eq!(d.offset(), 4096, "the lowest free page");
        assert!(region.store(&[6; 8192]).is_none(), "one page left, not two");
        drop((a, c, d));
        assert_eq!(region.free_bytes(), 4 * 4096, "every page back");
        let whole = region.store(&[7; 4 * 4096]).expect("merged into one run");
        assert_eq!(whole.offset(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the order of stores and drops, live spans never overlap,
        /// each reads back its own bytes, and every page comes back.
        #[test]
        fn spans_never_overlap_and_every_page_comes_back(
            ops in proptest::collection::vec((1usize..20_000, any::<bool>(), any::<u8>()), 1..80),
        ) {
            let len = 32 * 4096;
            let region = TaskRegion::create(len).expect("region");
            let view = TaskView::open(region.fd()).expect("view");
            let mut live: Vec<(Span, u8)> = Vec::new();
            for (size, drop_one, fill) in ops {
                if drop_one && !live.is_empty() {
                    live.remove(usize::from(fill) % live.len());
                    continue;
                }
                if let Some(span) = region.store(&vec![fill; size]) {
                    live.push((span, fill));
                }
                let mut ranges: Vec<(u64, u64)> =
                    live.iter().map(|(s, _)| (s.offset(), s.offset() + s.len())).collect();
                ranges.sort_unstable();
                for pair in ranges.windows(2) {
                    prop_assert!(pair[0].1 <= pair[1].0, "overlap: {:?}", pair);
                }
                for (span, fill) in &live {
                    let same = view
                        .with_task(span.offset(), span.len(), |read| read.iter().all(|b| b == fill))
                        .expect("inside");
                    prop_assert!(same);
                }
            }
            drop(live);
            prop_assert_eq!(region.free_bytes(), len);
        }
    }
}
