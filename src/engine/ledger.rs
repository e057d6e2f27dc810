//! The task ledger: every accepted task until its one outcome is delivered,
//! and nothing after that.
//!
//! Plain data, no processes and no I/O, so its promise is property-tested
//! on its own (below): each accepted task is settled at most once, a task
//! whose outcome went to its handle is forgotten at once, and
//! [`Ledger::take_records`] returns every other task exactly once, in
//! submission order.
//!
//! ## Layout
//!
//! The facade hands out IDs in order (0, 1, 2, ...), and tasks mostly
//! finish in about that order, so the ledger is a deque indexed by
//! `id - base`: accepting is a push, finding is an index, and settling
//! empties a slot and pops the empty ones at the front. A slot is the task
//! itself and nothing more (a queued tiny task costs its own size and
//! `Option`'s tag); what only some tasks have (a handle, a time limit,
//! progress, retries, a cancel) lives in a map beside the deque, keyed by
//! ID, which a stream of `process_task`s never touches.
//!
//! A task that runs for long keeps the slots behind it: once more than half
//! of the deque (and more than [`STRAGGLER_SLACK`] slots) is empty, the
//! live tasks at its front move to a map of stragglers and the empty slots
//! go. Each task moves at most once, so memory stays proportional to the
//! tasks without an outcome, whatever the order they finish in; and once
//! none is left and the engine is idle, the room a burst grew the deque to
//! goes too (beyond about a MiB, kept for the next tasks).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::handle::Delivery;
use crate::progress::ProgressCell;
use crate::task::{NotRunReason, Outcome, Task, TaskId, TaskRecord};

/// Empty slots tolerated behind a long-running task before the live ones
/// in front of them move to the stragglers (a handful in unit tests, so
/// that the property test below goes through the stragglers too).
const STRAGGLER_SLACK: usize = if cfg!(test) { 4 } else { 4096 };

/// Slots an emptied ledger keeps room for: about a MiB of them.
fn kept_slots<T: Task>() -> usize {
    ((1 << 20) / std::mem::size_of::<Option<T>>().max(1)).max(1024)
}

/// Entries of the map of rarer parts an emptied ledger keeps room for.
const KEPT_MORE: usize = 1024;

/// An accepted task, on its way into the ledger or out of it.
pub(crate) struct Entry<T: Task> {
    /// The original task, handed back in its record.
    pub(crate) task: T,
    /// What a task sent with `process_task` does not have.
    more: Option<Box<More<T>>>,
}

/// The rarer parts of an [`Entry`].
struct More<T: Task> {
    /// Where the outcome goes, for a task sent with `submit`.
    notify: Option<Notify<T>>,
    /// Its own time limit, overriding the facade's.
    timeout: Option<Duration>,
    /// Runs of it that crashed a worker (for `retries`).
    attempts: u32,
    /// The caller cancelled it while a worker held it.
    cancelled: bool,
    /// Where its progress reports go, for a task sent with a handle.
    progress: Option<Arc<ProgressCell>>,
}

impl<T: Task> More<T> {
    fn blank() -> Box<Self> {
        Box::new(More {
            notify: None,
            timeout: None,
            attempts: 0,
            cancelled: false,
            progress: None,
        })
    }
}

impl<T: Task> Entry<T> {
    pub(crate) fn new(
        task: T,
        notify: Option<Notify<T>>,
        timeout: Option<Duration>,
        progress: Option<Arc<ProgressCell>>,
    ) -> Self {
        let more = (notify.is_some() || timeout.is_some() || progress.is_some()).then(|| {
            let mut more = More::blank();
            (more.notify, more.timeout, more.progress) = (notify, timeout, progress);
            more
        });
        Entry { task, more }
    }

    /// Its own time limit, if it has one.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.more.as_ref().and_then(|m| m.timeout)
    }

    fn into_parts(self) -> (T, Option<Notify<T>>) {
        (self.task, self.more.and_then(|m| m.notify))
    }
}

/// A task the ledger holds, as the engine reads it.
pub(crate) struct Pending<'a, T: Task> {
    more: Option<&'a More<T>>,
}

impl<'a, T: Task> Pending<'a, T> {
    /// Its own time limit, if it has one.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.more.and_then(|m| m.timeout)
    }

    /// Where its progress reports go, if anywhere.
    pub(crate) fn progress(&self) -> Option<&'a Arc<ProgressCell>> {
        self.more.and_then(|m| m.progress.as_ref())
    }

    /// Whether the caller cancelled it while a worker held it.
    pub(crate) fn cancelled(&self) -> bool {
        self.more.is_some_and(|m| m.cancelled)
    }
}

/// Who waits for a task's outcome.
pub(crate) enum Notify<T: Task> {
    /// A [`TaskHandle`](crate::TaskHandle).
    Handle(oneshot::Sender<Delivery<T::Output>>),
    /// A pool or grinder that wants the task back when it did not run, to
    /// run it elsewhere: nothing in the parent ever decodes a task.
    Reclaim(oneshot::Sender<Reclaimed<T>>),
}

/// An outcome, with the task handed back when it never ran.
#[derive(Debug)]
pub(crate) struct Reclaimed<T: Task> {
    pub(crate) outcome: Outcome<T::Output>,
    /// `Some` exactly when the outcome is `NotRun`.
    pub(crate) task: Option<T>,
}

/// Hashes task IDs, which the facade assigns itself (0, 1, 2, ...): no
/// peer chooses them, so no flooding defence is needed, and SipHash cost a
/// tenth of the engine's time. A multiply by an odd constant spreads
/// sequential IDs over every bit.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Where a settled outcome went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// To the task's handle: the ledger no longer knows the task.
    ToHandle,
    /// Kept for `collect_tasks` (no handle, or its handle was dropped).
    ForCollect,
    /// Handed to the `completed()` receiver: the ledger no longer knows it.
    ToSink,
}

pub(crate) struct Ledger<T: Task> {
    /// Task `base + i` is `slots[i]`; `None` once settled (or never
    /// accepted). The front slot is never `None`.
    slots: VecDeque<Option<T>>,
    base: u64,
    /// `Some` slots.
    live: usize,
    /// Tasks without an outcome whose IDs are below `base` (see the module
    /// docs).
    stragglers: HashMap<u64, T, BuildHasherDefault<IdHasher>>,
    /// The rarer parts of the tasks above that have them.
    more: HashMap<u64, Box<More<T>>, BuildHasherDefault<IdHasher>>,
    /// Settled tasks whose outcome no handle took, for `collect_tasks`.
    records: Vec<TaskRecord<T>>,
    /// Whether `records` may be out of ID order (tasks settle in about
    /// the order they were sent, and with one worker in exactly that
    /// order): only then are they sorted when taken, since a sort that
    /// finds them sorted still reads them all once more, at the end of a
    /// collect, when nothing else is left to do.
    records_unsorted: bool,
    /// Once `completed()` was called: where those records go instead, as
    /// they finish. A record it refuses (every receiver gone) is kept.
    sink: Option<flume::Sender<TaskRecord<T>>>,
    /// Records that handles dropped before taking their outcome give back
    /// (see [`Delivery`]), until [`Ledger::reclaim`] keeps them.
    given_back: (
        crossbeam_channel::Sender<TaskRecord<T>>,
        crossbeam_channel::Receiver<TaskRecord<T>>,
    ),
}

impl<T: Task> Ledger<T> {
    pub(crate) fn new() -> Self {
        Ledger {
            given_back: crossbeam_channel::unbounded(),
            slots: VecDeque::new(),
            base: 0,
            live: 0,
            stragglers: HashMap::default(),
            more: HashMap::default(),
            records: Vec::new(),
            records_unsorted: false,
            sink: None,
        }
    }

    /// From now on, records no handle takes go to `sink` as they settle;
    /// the records kept so far go there first, in submission order.
    pub(crate) fn set_sink(&mut self, sink: flume::Sender<TaskRecord<T>>) {
        let mut kept = std::mem::take(&mut self.records);
        self.records_unsorted = false;
        kept.sort_unstable_by_key(|r| r.id);
        self.sink = Some(sink);
        for record in kept {
            self.keep(record);
        }
    }

    /// Keeps the records that dropped handles gave back. Called every turn
    /// and before the records are taken: a handle dropped before
    /// `collect_tasks` was called gave its record back before the collect
    /// command was sent.
    pub(crate) fn reclaim(&mut self) {
        while let Ok(record) = self.given_back.1.try_recv() {
            self.keep(record);
        }
    }

    /// A record no handle took: to the sink, or kept for `collect_tasks`.
    fn keep(&mut self, record: TaskRecord<T>) -> Delivered {
        let record = match &self.sink {
            Some(sink) => match sink.send(record) {
                Ok(()) => return Delivered::ToSink,
                Err(flume::SendError(back)) => back,
            },
            None => record,
        };
        if self.records.last().is_some_and(|last| last.id > record.id) {
            self.records_unsorted = true;
        }
        self.records.push(record);
        Delivered::ForCollect
    }

    /// Accepts task `id`. `false` (and nothing recorded) if the ID is taken:
    /// IDs come in increasing order, so one at or below the newest accepted
    /// is refused.
    pub(crate) fn accept(&mut self, id: u64, entry: Entry<T>) -> bool {
        if self.slots.is_empty() && id >= self.base {
            self.base = id;
        }
        let end = self.base + self.slots.len() as u64;
        if id < end || self.stragglers.contains_key(&id) {
            return false;
        }
        for _ in end..id {
            self.slots.push_back(None); // an ID never used (not expected)
        }
        self.slots.push_back(Some(entry.task));
        self.live += 1;
        if let Some(more) = entry.more {
            self.more.insert(id, more);
        }
        true
    }

    /// Whether task `id` is accepted and still without an outcome.
    fn holds(&self, id: u64) -> bool {
        match id.checked_sub(self.base) {
            Some(i) => usize::try_from(i)
                .ok()
                .and_then(|i| self.slots.get(i))
                .is_some_and(Option::is_some),
            None => self.stragglers.contains_key(&id),
        }
    }

    /// The task if it is still waiting for its outcome.
    pub(crate) fn get(&self, id: u64) -> Option<Pending<'_, T>> {
        if !self.holds(id) {
            return None;
        }
        // A stream of `process_task`s never fills the map: no lookup then.
        let more = if self.more.is_empty() {
            None
        } else {
            self.more.get(&id).map(|m| &**m)
        };
        Some(Pending { more })
    }

    /// The rarer parts of task `id`, made if it had none; `None` if it
    /// is not waiting for its outcome.
    fn more_mut(&mut self, id: u64) -> Option<&mut More<T>> {
        if !self.holds(id) {
            return None;
        }
        Some(self.more.entry(id).or_insert_with(More::blank))
    }

    /// Notes that the caller cancelled task `id` while a worker held it.
    pub(crate) fn mark_cancelled(&mut self, id: u64) {
        if let Some(more) = self.more_mut(id) {
            more.cancelled = true;
        }
    }

    /// Counts one more run of task `id` that crashed a worker; returns the
    /// count, or `None` if the task is not waiting for its outcome.
    pub(crate) fn crashed_once_more(&mut self, id: u64) -> Option<u32> {
        let more = self.more_mut(id)?;
        more.attempts += 1;
        Some(more.attempts)
    }

    /// Whether task `id` is accepted and still without an outcome.
    #[cfg(test)]
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Takes task `id` out, if it is still waiting for its outcome.
    fn remove(&mut self, id: u64) -> Option<Entry<T>> {
        let task = match id.checked_sub(self.base) {
            None => self.stragglers.remove(&id)?,
            Some(i) => {
                let task = self.slots.get_mut(usize::try_from(i).ok()?)?.take()?;
                self.live -= 1;
                self.trim();
                task
            }
        };
        let more = if self.more.is_empty() {
            None
        } else {
            self.more.remove(&id)
        };
        Some(Entry { task, more })
    }

    /// Pops the empty slots at the front; moves live ones that hold back
    /// too many empty slots to the stragglers.
    fn trim(&mut self) {
        loop {
            while let Some(None) = self.slots.front() {
                self.slots.pop_front();
                self.base += 1;
            }
            let empty = self.slots.len() - self.live;
            if empty <= STRAGGLER_SLACK.max(self.live) {
                return;
            }
            while let Some(Some(_)) = self.slots.front() {
                if let Some(Some(task)) = self.slots.pop_front() {
                    self.stragglers.insert(self.base, task);
                    self.live -= 1;
                }
                self.base += 1;
            }
        }
    }

    /// Lets go of the room a burst grew the deque to, once no task is in
    /// it, beyond about a MiB. The engine calls it when it goes idle, not
    /// as the last task settles: the end of a stream is no time to free
    /// tens of MiB while a `collect_tasks` waits.
    pub(crate) fn release_room(&mut self) {
        if self.slots.is_empty() && self.slots.capacity() > kept_slots::<T>() {
            self.slots = VecDeque::new();
        }
        if self.more.is_empty() && self.more.capacity() > KEPT_MORE {
            self.more = HashMap::default();
        }
    }

    /// Gives task `id` its one outcome. `None` (and the outcome dropped) if
    /// the task is unknown or already settled.
    #[cfg(test)]
    pub(crate) fn settle(&mut self, id: u64, outcome: Outcome<T::Output>) -> Option<Delivered> {
        self.settle_with(id, outcome, |_| {})
    }

    /// [`settle`](Self::settle), calling `before` with the outcome once the
    /// task is known to be waiting for it, before it reaches anyone (the
    /// engine counts it there, so that stats read after a `wait` count it).
    pub(crate) fn settle_with(
        &mut self,
        id: u64,
        outcome: Outcome<T::Output>,
        before: impl FnOnce(&Outcome<T::Output>),
    ) -> Option<Delivered> {
        let (task, notify) = self.remove(id)?.into_parts();
        before(&outcome);
        let (task, outcome) = match notify {
            Some(Notify::Handle(tx)) => {
                let back = self.given_back.0.clone();
                let give_back = Box::new(move |outcome| {
                    let _ = back.send(TaskRecord {
                        id: TaskId(id),
                        task,
                        outcome,
                    });
                });
                let delivery = Delivery {
                    outcome,
                    give_back: Some(give_back),
                };
                match tx.send(delivery) {
                    Ok(()) => return Some(Delivered::ToHandle),
                    Err(back) => {
                        let delivery = back.into_inner();
                        if let Some(give_back) = delivery.give_back {
                            give_back(delivery.outcome);
                        }
                        let before = self.records.len();
                        self.reclaim();
                        return Some(if self.records.len() > before {
                            Delivered::ForCollect
                        } else {
                            Delivered::ToSink
                        });
                    }
                }
            }
            Some(Notify::Reclaim(tx)) => {
                let (back, kept) = if matches!(outcome, Outcome::NotRun(_)) {
                    (Some(task), None)
                } else {
                    (None, Some(task))
                };
                match tx.send(Reclaimed {
                    outcome,
                    task: back,
                }) {
                    Ok(()) => return Some(Delivered::ToHandle),
                    Err(unsent) => {
                        let Reclaimed { outcome, task } = unsent.into_inner();
                        match task.or(kept) {
                            Some(task) => (task, outcome),
                            None => return Some(Delivered::ToHandle),
                        }
                    }
                }
            }
            None => (task, outcome),
        };
        Some(self.keep(TaskRecord {
            id: TaskId(id),
            task,
            outcome,
        }))
    }

    /// Tasks still waiting for an outcome.
    pub(crate) fn pending(&self) -> usize {
        self.live + self.stragglers.len()
    }

    /// Every record kept for collection, in submission order, and the ledger
    /// emptied. A task still pending here is a bug of the engine; it is
    /// reported rather than lost.
    pub(crate) fn take_records(&mut self) -> Vec<TaskRecord<T>> {
        self.reclaim();
        let mut records = std::mem::take(&mut self.records);
        let sorted = !std::mem::take(&mut self.records_unsorted);
        let base = self.base;
        let slots = std::mem::take(&mut self.slots)
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| Some((base + i as u64, e?)));
        let lost: Vec<(u64, T)> = slots.chain(self.stragglers.drain()).collect();
        let lost_none = lost.is_empty();
        self.live = 0;
        self.more.clear();
        for (id, task) in lost {
            records.push(TaskRecord {
                id: TaskId(id),
                task,
                outcome: Outcome::NotRun(NotRunReason::Cancelled(
                    crate::task::CancelReason::Terminated(
                        "no outcome was recorded (a bug in worker-facade: please report it)".into(),
                    ),
                )),
            });
        }
        if !(sorted && lost_none) {
            records.sort_unstable_by_key(|r| r.id);
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Job(u32);
    impl Task for Job {
        type Output = u32;
    }

    fn entry(n: u32, handle: bool) -> (Entry<Job>, Option<oneshot::Receiver<Delivery<u32>>>) {
        let (notify, rx) = if handle {
            let (tx, rx) = oneshot::channel();
            (Some(Notify::Handle(tx)), Some(rx))
        } else {
            (None, None)
        };
        (Entry::new(Job(n), notify, None, None), rx)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Accept the next task, with a handle or not.
        Accept { handle: bool },
        /// Settle the task `n` places back (may be settled already).
        Settle { back: usize, value: u32 },
        /// Drop the handle of the task `n` places back.
        DropHandle { back: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<bool>().prop_map(|handle| Op::Accept { handle }),
            3 => (0usize..8, any::<u32>()).prop_map(|(back, value)| Op::Settle { back, value }),
            1 => (0usize..8).prop_map(|back| Op::DropHandle { back }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the order of settlements, repeats and dropped handles,
        /// every task ends with exactly one outcome: in its handle, or in
        /// the records (once, in order); and the ledger forgets what it
        /// delivered.
        #[test]
        fn every_task_gets_exactly_one_outcome(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ledger = Ledger::<Job>::new();
            let mut handles: Vec<Option<oneshot::Receiver<Delivery<u32>>>> = Vec::new();
            let mut first_outcome: Vec<Option<u32>> = Vec::new();
            for op in ops {
                match op {
                    Op::Accept { handle } => {
                        let id = handles.len() as u64;
                        let (e, rx) = entry(id as u32, handle);
                        prop_assert!(ledger.accept(id, e));
                        handles.push(rx);
                        first_outcome.push(None);
                    }
                    Op::Settle { back, value } => {
                        if back < handles.len() {
                            let id = handles.len() - 1 - back;
                            let first = first_outcome[id].is_none();
                            let got = ledger.settle(id as u64, Outcome::Completed(value));
                            prop_assert_eq!(got.is_some(), first, "settled twice or lost");
                            if first {
                                first_outcome[id] = Some(value);
                                prop_assert!(!ledger.is_pending(id as u64));
                            }
                        }
                    }
                    Op::DropHandle { back } => {
                        if back < handles.len() {
                            let id = handles.len() - 1 - back;
                            // As a dropped `TaskHandle` does: an outcome
                            // delivered and not taken is given back.
                            if let Some(rx) = handles[id].take() {
                                if let Ok(delivery) = rx.try_recv() {
                                    if let Some(give_back) = delivery.give_back {
                                        give_back(delivery.outcome);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let unsettled: Vec<usize> = (0..handles.len()).filter(|&i| first_outcome[i].is_none()).collect();
            prop_assert_eq!(ledger.pending(), unsettled.len());
            for &id in &unsettled {
                ledger.settle(id as u64, Outcome::Completed(0));
                first_outcome[id] = Some(0);
            }
            let records = ledger.take_records();
            let ids: Vec<u64> = records.iter().map(|r| r.id.0).collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&ids, &sorted, "records in order, each once");
            for (id, rx) in handles.into_iter().enumerate() {
                let in_records = records.iter().find(|r| r.id.0 == id as u64);
                let in_handle = rx.and_then(|rx| rx.try_recv().ok()).map(|d| d.outcome);
                match (in_records, in_handle) {
                    (Some(r), None) => {
                        prop_assert_eq!(&r.task, &Job(id as u32));
                        prop_assert_eq!(&r.outcome, &Outcome::Completed(first_outcome[id].unwrap_or(u32::MAX)));
                    }
                    (None, Some(o)) => prop_assert_eq!(o, Outcome::Completed(first_outcome[id].unwrap_or(u32::MAX))),
                    (r, h) => prop_assert!(false, "task {} has outcome in records {:?} and handle {:?}", id, r.is_some(), h),
                }
            }
            prop_assert_eq!(ledger.pending(), 0);
        }
    }

    #[test]
    fn a_reclaiming_caller_gets_the_task_back_only_when_it_did_not_run() {
        let mut ledger = Ledger::<Job>::new();
        let mut waiters = Vec::new();
        for id in 0..2u64 {
            let (tx, rx) = oneshot::channel();
            let e = Entry::new(Job(id as u32), Some(Notify::Reclaim(tx)), None, None);
            assert!(ledger.accept(id, e));
            waiters.push(rx);
        }
        ledger.settle(0, Outcome::Completed(7));
        ledger.settle(
            1,
            Outcome::NotRun(NotRunReason::Cancelled(
                crate::task::CancelReason::FacadeDropped,
            )),
        );
        let got: Vec<Reclaimed<Job>> = waiters
            .into_iter()
            .map(|rx| rx.try_recv().expect("answered"))
            .collect();
        assert_eq!(got[0].outcome, Outcome::Completed(7));
        assert_eq!(got[0].task, None);
        assert_eq!(got[1].task, Some(Job(1)));
        assert_eq!(ledger.pending(), 0);
    }

    #[test]
    fn a_delivered_task_costs_nothing_afterwards() {
        let mut ledger = Ledger::<Job>::new();
        for id in 0..10_000u64 {
            let (e, rx) = entry(id as u32, true);
            assert!(ledger.accept(id, e));
            assert_eq!(
                ledger.settle(id, Outcome::Completed(1)),
                Some(Delivered::ToHandle)
            );
            assert!(rx.is_some_and(|rx| rx.try_recv().is_ok()));
        }
        assert_eq!(ledger.pending(), 0);
        assert!(ledger.records.is_empty());
        assert!(ledger.slots.capacity() < 64, "{}", ledger.slots.capacity());
        assert!(ledger.stragglers.is_empty());
    }

    #[test]
    fn a_burst_delivered_leaves_no_room_behind() {
        let mut ledger = Ledger::<Job>::new();
        let mut handles = Vec::new();
        for id in 0..200_000u64 {
            let (e, rx) = entry(id as u32, true);
            assert!(ledger.accept(id, e));
            handles.push(rx);
        }
        assert!(ledger.slots.capacity() >= 200_000);
        assert!(
            ledger.more.capacity() >= 200_000,
            "each handle is in the map"
        );
        for id in 0..200_000u64 {
            assert_eq!(
                ledger.settle(id, Outcome::Completed(1)),
                Some(Delivered::ToHandle)
            );
        }
        assert_eq!(ledger.pending(), 0);
        ledger.release_room();
        assert!(
            ledger.slots.capacity() <= kept_slots::<Job>(),
            "{} slots kept",
            ledger.slots.capacity()
        );
        assert!(
            ledger.more.capacity() <= KEPT_MORE,
            "{}",
            ledger.more.capacity()
        );
        // And it takes tasks again.
        let (e, _rx) = entry(0, false);
        assert!(ledger.accept(200_000, e));
        assert!(ledger.is_pending(200_000));
    }

    #[test]
    fn a_task_that_never_ends_holds_back_no_memory_behind_it() {
        let mut ledger = Ledger::<Job>::new();
        let mut stuck = Vec::new();
        for id in 0..100_000u64 {
            let (e, rx) = entry(id as u32, true);
            assert!(ledger.accept(id, e));
            if id % 25_000 == 0 {
                stuck.push((id, rx)); // these four never finish (yet)
                continue;
            }
            assert_eq!(
                ledger.settle(id, Outcome::Completed(1)),
                Some(Delivered::ToHandle)
            );
        }
        assert_eq!(ledger.pending(), 4);
        assert!(
            ledger.slots.len() <= 2 * STRAGGLER_SLACK,
            "{}",
            ledger.slots.len()
        );
        for (id, rx) in stuck {
            assert!(ledger.get(id).is_some(), "task {id} is still known");
            assert!(!ledger.accept(id, entry(0, false).0), "its ID stays taken");
            assert_eq!(
                ledger.settle(id, Outcome::Completed(id as u32)),
                Some(Delivered::ToHandle)
            );
            assert_eq!(
                rx.and_then(|rx| rx.try_recv().ok()).map(|d| d.outcome),
                Some(Outcome::Completed(id as u32))
            );
            assert_eq!(
                ledger.settle(id, Outcome::Completed(0)),
                None,
                "settled once"
            );
        }
        assert_eq!(ledger.pending(), 0);
        assert!(ledger.take_records().is_empty());
    }
}
