//! The spans of the large tasks an engine accepted, by task ID: what keeps
//! a task's bytes in the task region for as long as a frame naming them
//! may still be sent or read (see `region.rs`, step 4).
//!
//! The frame itself is a small TASK_AT and travels like any other (queue,
//! a link's write buffer and held copies, a re-send after a death); only
//! the engine knows when it is gone for good, and says so here.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::ledger::IdHasher;
use crate::region::Span;

/// # Drop
///
/// Gives every span back: the engine drops it only once its workers are
/// ended, so no worker reads one any more.
#[derive(Default)]
pub(super) struct Spans {
    by_id: HashMap<u64, Span, BuildHasherDefault<IdHasher>>,
}

impl Spans {
    /// Task `id` was accepted with its bytes in `span`.
    pub(super) fn keep(&mut self, id: u64, span: Span) {
        self.by_id.insert(id, span);
    }

    /// Task `id`'s frame is gone for good: answered or skipped by its
    /// worker, or dropped unsent. Its span goes back to the region. Free
    /// when no large task is about.
    pub(super) fn forget(&mut self, id: u64) {
        if !self.by_id.is_empty() {
            self.by_id.remove(&id);
        }
    }
}
