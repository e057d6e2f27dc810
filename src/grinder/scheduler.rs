//! The scheduler thread: takes items in arrival order, cuts batches by size
//! or age, leases an executor for each (at most `concurrency` at once) and
//! queues the batch on it. The items' results go to their callers from the
//! executors' engine threads (see [`flight`](super::flight)); the scheduler
//! hears only when a batch has landed, and then either sends that executor
//! the next batch at once, renewing its lease, or gives the lease back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender};

use crate::pool::{AcquireError, Lease, LeasedExecutorManager};
use crate::task::Task;

use super::flight::Flight;
use super::handle::Reply;
use super::stats::Counters;
use super::{GrinderStats, Settings, WorkError, WorkGrinder};

pub(super) struct Item<T: Task> {
    pub(super) seq: u64,
    pub(super) task: T,
    pub(super) reply: Reply<T::Output>,
    pub(super) enqueued: Instant,
    pub(super) dispatches: u32,
}

/// What the grinder and its batches tell the scheduler, besides items.
pub(super) enum Control {
    Stop {
        expected: u64,
        cancel: bool,
    },
    Stats(oneshot::Sender<GrinderStats>),
    /// Every item of this batch is answered or kept to run again.
    Landed(u64),
}

/// A batch past the queue: asking for a lease, or running on one.
struct Active<T: Task> {
    number: u64,
    stage: Stage<T>,
}

/// Where an active batch is.
enum Stage<T: Task> {
    /// Asked the pool for a lease; a lease answered after the batch stops
    /// listening is dropped with `answer` and goes back to the pool.
    Leasing {
        items: Vec<Item<T>>,
        answer: Receiver<Result<Lease<T>, AcquireError>>,
    },
    /// Queued on the leased executor; answered from its engine thread.
    /// It holds one of the `concurrency` places.
    Running {
        lease: Lease<T>,
        flight: Arc<Flight<T>>,
    },
}

/// What woke the scheduler.
enum Got<T: Task> {
    Item(Item<T>),
    Control(Control),
    Cancel(u64),
    /// The pool's answer for the active batch at this index.
    Lease(usize, Option<Result<Lease<T>, AcquireError>>),
    Gone,
    Nothing,
}

/// The scheduler thread's state. Nothing here is shared.
pub(super) struct Scheduler<T: Task> {
    settings: Arc<Settings>,
    manager: Arc<LeasedExecutorManager<T>>,
    items: Receiver<Item<T>>,
    control: Receiver<Control>,
    /// For the batches' `Landed`.
    control_tx: Sender<Control>,
    cancels: Receiver<u64>,
    /// Pending items by acceptance number: the first is the oldest.
    pending: BTreeMap<u64, Item<T>>,
    received: u64,
    /// Set by `stop`: how many items were accepted in all.
    stop: Option<u64>,
    cancelling: bool,
    /// Batches cut and waiting for a place, oldest first.
    queued: VecDeque<(u64, Vec<Item<T>>)>,
    /// Batches asking for a lease or running: at most `concurrency`, each
    /// one a place.
    active: Vec<Active<T>>,
    dispatched: u64,
    done: u64,
    counters: Arc<Counters>,
    last: Arc<Mutex<Option<GrinderStats>>>,
    /// Dropped when this thread ends, which wakes every `stop` waiting.
    _finished: Sender<()>,
}

impl<T: Task> Scheduler<T> {
    /// The scheduler of `grinder`, with nothing pending and no batch yet.
    pub(super) fn new(
        grinder: &WorkGrinder<T>,
        items: Receiver<Item<T>>,
        control: Receiver<Control>,
        control_tx: Sender<Control>,
        cancels: Receiver<u64>,
        finished: Sender<()>,
    ) -> Self {
        Scheduler {
            settings: grinder.settings.clone(),
            manager: grinder.manager.clone(),
            items,
            control,
            control_tx,
            cancels,
            pending: BTreeMap::new(),
            received: 0,
            stop: None,
            cancelling: false,
            queued: VecDeque::new(),
            active: Vec::new(),
            dispatched: 0,
            done: 0,
            counters: grinder.counters.clone(),
            last: grinder.last.clone(),
            _finished: finished,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            self.dispatch_ready(Instant::now());
            if self.finished() {
                break;
            }
            self.wait_and_handle();
        }
        self.end();
    }

    /// Leaves the last figures.
    fn end(&mut self) {
        let mut stats = self.snapshot(Instant::now());
        stats.started = false;
        stats.stopping = false;
        stats.stopped = true;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    fn finished(&self) -> bool {
        self.stop.is_some_and(|expected| self.received >= expected)
            && self.pending.is_empty()
            && self.queued.is_empty()
            && self.active.is_empty()
    }

    fn wait_and_handle(&mut self) {
        let deadline = self.next_deadline();
        let got = {
            let mut sel = Select::new();
            let items = sel.recv(&self.items);
            let control = sel.recv(&self.control);
            let cancels = sel.recv(&self.cancels);
            // The operation index of each batch waiting for a lease.
            let leasing: Vec<(usize, usize)> = self
                .active
                .iter()
                .enumerate()
                .filter_map(|(at, batch)| match &batch.stage {
                    Stage::Leasing { answer, .. } => Some((sel.recv(answer), at)),
                    Stage::Running { .. } => None,
                })
                .collect();
            let op = match deadline {
                Some(d) => sel.select_deadline(d).ok(),
                None => Some(sel.select()),
            };
            match op {
                None => Got::Nothing,
                Some(op) if op.index() == items => {
                    op.recv(&self.items).map_or(Got::Gone, Got::Item)
                }
                Some(op) if op.index() == control => {
                    op.recv(&self.control).map_or(Got::Gone, Got::Control)
                }
                Some(op) if op.index() == cancels => {
                    op.recv(&self.cancels).map_or(Got::Gone, Got::Cancel)
                }
                Some(op) => {
                    let index = op.index();
                    let found = leasing
                        .iter()
                        .find(|(i, _)| *i == index)
                        .and_then(|&(_, at)| match &self.active[at].stage {
                            Stage::Leasing { answer, .. } => Some((at, op.recv(answer).ok())),
                            Stage::Running { .. } => None,
                        });
                    match found {
                        Some((at, answer)) => Got::Lease(at, answer),
                        // Every selected operation is one of the above.
                        None => Got::Nothing,
                    }
                }
            }
        };
        self.on(got);
        // Take whatever else is waiting, so one batch carries many items.
        loop {
            let got = match self.items.try_recv() {
                Ok(item) => Got::Item(item),
                Err(_) => match self.cancels.try_recv() {
                    Ok(seq) => Got::Cancel(seq),
                    Err(_) => match self.control.try_recv() {
                        Ok(c) => Got::Control(c),
                        Err(_) => break,
                    },
                },
            };
            self.on(got);
        }
    }

    fn on(&mut self, got: Got<T>) {
        match got {
            Got::Item(item) => self.on_item(item),
            Got::Cancel(seq) => {
                if let Some(item) = self.pending.remove(&seq) {
                    item.reply.send_cancelled(&self.counters);
                }
            }
            Got::Control(Control::Stop { expected, cancel }) => {
                // The first stop counted the accepted items; a later one (say, to
                // cancel a drain) also counts the refused attempts in between.
                self.stop.get_or_insert(expected);
                if cancel && !self.cancelling {
                    self.cancelling = true;
                    for (_, item) in std::mem::take(&mut self.pending) {
                        item.reply.send(&self.counters, Err(WorkError::Cancelled));
                    }
                    // The batches not yet on a worker are cancelled too;
                    // those on one run to their end.
                    for (_, items) in std::mem::take(&mut self.queued) {
                        self.fail_all(items, &WorkError::Cancelled);
                        self.done += 1;
                    }
                    for batch in std::mem::take(&mut self.active) {
                        match batch.stage {
                            Stage::Leasing { items, .. } => {
                                self.fail_all(items, &WorkError::Cancelled);
                                self.done += 1;
                            }
                            running @ Stage::Running { .. } => self.active.push(Active {
                                number: batch.number,
                                stage: running,
                            }),
                        }
                    }
                }
            }
            Got::Control(Control::Stats(reply)) => {
                // Items and dropped handles from before the question count:
                // take them first.
                while let Ok(item) = self.items.try_recv() {
                    self.on_item(item);
                }
                while let Ok(seq) = self.cancels.try_recv() {
                    self.on(Got::Cancel(seq));
                }
                let _ = reply.send(self.snapshot(Instant::now()));
            }
            Got::Control(Control::Landed(number)) => self.landed(number),
            Got::Lease(at, answer) => self.leased(at, answer),
            Got::Gone => {
                // The grinder is gone without stopping (it cannot be: its
                // drop stops it). Cancel what is left rather than spin.
                let received = self.received;
                self.on(Got::Control(Control::Stop {
                    expected: received,
                    cancel: true,
                }));
            }
            Got::Nothing => {}
        }
    }

    fn on_item(&mut self, item: Item<T>) {
        self.received += 1;
        if item.reply.is_cancelled() {
            item.reply.send_cancelled(&self.counters);
        } else if self.cancelling {
            item.reply.send(&self.counters, Err(WorkError::Cancelled));
        } else {
            self.pending.insert(item.seq, item);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.stop.is_some() {
            return None;
        }
        let (_, oldest) = self.pending.first_key_value()?;
        Some(
            oldest
                .enqueued
                .checked_add(self.settings.max_wait)
                .unwrap_or(oldest.enqueued),
        )
    }

    /// Cuts the batches that are due and starts as many as have a place.
    fn dispatch_ready(&mut self, now: Instant) {
        self.cut_ready(now);
        self.start_queued();
    }

    /// Cuts batches: full ones while enough items are pending, and one of
    /// what is there once the oldest item has waited `max_wait` (or at once
    /// when draining).
    fn cut_ready(&mut self, now: Instant) {
        let threshold = self.settings.threshold;
        let flush = self.stop.is_some();
        loop {
            let Some((_, oldest)) = self.pending.first_key_value() else {
                return;
            };
            let due = flush
                || oldest
                    .enqueued
                    .checked_add(self.settings.max_wait)
                    .is_none_or(|d| now >= d);
            if self.pending.len() < threshold && !due {
                return;
            }
            let mut items = Vec::with_capacity(threshold.min(self.pending.len()));
            while items.len() < threshold {
                let Some((_, item)) = self.pending.pop_first() else {
                    break;
                };
                if item.reply.is_cancelled() {
                    item.reply.send_cancelled(&self.counters);
                } else {
                    items.push(item);
                }
            }
            if items.is_empty() {
                continue;
            }
            self.dispatched += 1;
            let waited = items
                .iter()
                .map(|i| now.saturating_duration_since(i.enqueued))
                .max()
                .unwrap_or_default();
            crate::trace::batch_dispatched(self.dispatched, items.len(), waited);
            self.queued.push_back((self.dispatched, items));
        }
    }

    /// Asks for leases for the oldest queued batches, one per free place.
    fn start_queued(&mut self) {
        while self.active.len() < self.settings.concurrency {
            let Some((number, items)) = self.queued.pop_front() else {
                return;
            };
            self.lease_for(number, items);
        }
    }

    /// The lease name of batch `number`.
    fn owner(&self, number: u64) -> String {
        format!("{}-{number}", self.settings.owner_prefix)
    }

    /// Asks the pool for a lease for batch `number` (new, or what is left
    /// of it to run again), which takes a place; or ends the batch when
    /// nothing of it is left to run.
    fn lease_for(&mut self, number: u64, mut items: Vec<Item<T>>) {
        // Items cancelled through their handles while waiting (rare: the
        // batch is only rebuilt when there are some).
        if items.iter().any(|item| item.reply.is_cancelled()) {
            let mut kept = Vec::with_capacity(items.len());
            for item in items {
                if item.reply.is_cancelled() {
                    item.reply.send_cancelled(&self.counters);
                } else {
                    kept.push(item);
                }
            }
            items = kept;
        }
        if items.is_empty() {
            self.done += 1;
            return;
        }
        if self.cancelling {
            self.fail_all(items, &WorkError::Cancelled);
            self.done += 1;
            return;
        }
        match self
            .manager
            .request(self.settings.lease, self.owner(number), true, None)
        {
            Ok(answer) => self.active.push(Active {
                number,
                stage: Stage::Leasing { items, answer },
            }),
            Err(e) => {
                self.fail_all(items, &WorkError::NoExecutor(e));
                self.done += 1;
            }
        }
    }

    /// The pool answered the active batch at `at`: queue it on its
    /// executor, or fail it.
    fn leased(&mut self, at: usize, answer: Option<Result<Lease<T>, AcquireError>>) {
        let batch = self.active.swap_remove(at);
        let Stage::Leasing { items, .. } = batch.stage else {
            // Only a leasing batch has an answer to take.
            self.active.push(batch);
            return;
        };
        match answer.unwrap_or(Err(AcquireError::Stopped)) {
            Ok(lease) => self.launch(batch.number, lease, items),
            Err(e) => {
                self.fail_all(items, &WorkError::NoExecutor(e));
                self.done += 1;
                self.start_queued();
            }
        }
    }

    /// Queues batch `number` on its leased executor: it takes a place.
    fn launch(&mut self, number: u64, lease: Lease<T>, items: Vec<Item<T>>) {
        let flight = Flight::launch(
            number,
            &lease,
            items,
            &self.settings,
            &self.counters,
            &self.control_tx,
        );
        self.active.push(Active {
            number,
            stage: Stage::Running { lease, flight },
        });
    }

    /// Every item of batch `number` is answered or kept: its executor goes
    /// straight to the next batch if one is cut, on the same lease renewed
    /// (see [`Scheduler::keeps`]); otherwise the lease goes back to the
    /// pool, and what did not run asks for a fresh executor.
    fn landed(&mut self, number: u64) {
        let Some(at) = self
            .active
            .iter()
            .position(|b| b.number == number && matches!(b.stage, Stage::Running { .. }))
        else {
            return;
        };
        let batch = self.active.swap_remove(at);
        let Stage::Running { mut lease, flight } = batch.stage else {
            return;
        };
        let again = flight.take_again();
        drop(flight);
        // Cut now what is due, so that a batch ready at this moment finds
        // the executor still leased.
        self.cut_ready(Instant::now());
        if again.is_empty() {
            self.done += 1;
            if self.keeps(&lease) {
                if let Some((next, items)) = self.queued.pop_front() {
                    if lease.renew(self.owner(next)) {
                        self.launch(next, lease, items);
                        self.start_queued();
                        return;
                    }
                    self.queued.push_front((next, items));
                }
            }
            drop(lease);
        } else {
            // Its executor lost its worker (or its lease): given back first,
            // so that the pool retires it before it reads the new request.
            drop(lease);
            self.counters
                .rerun
                .fetch_add(again.len() as u64, Ordering::Relaxed);
            self.lease_for(number, again);
        }
        self.start_queued();
    }

    /// Whether a landed batch's lease carries the next batch rather than
    /// going back to the pool: a batch is cut and waiting, the lease has at
    /// least half its term left and its worker was never lost (so it is
    /// renewed long before the old expiry), the grinder is
    /// not cancelling, and nobody else waits for an executor (the pool
    /// serves callers in turn; a kept executor would skip theirs).
    ///
    /// Kept, the executor goes from one batch to the next with two thread
    /// hand-offs (its engine to this thread, this thread's batch to the
    /// executor), not three (its engine to the pool's manager, the lease
    /// to this thread, the batch to the executor).
    fn keeps(&self, lease: &Lease<T>) -> bool {
        !self.queued.is_empty()
            && !self.cancelling
            && lease.has_time_for(self.settings.lease / 2)
            && !self.manager.others_waiting()
    }

    fn fail_all(&self, items: Vec<Item<T>>, error: &WorkError) {
        for item in items {
            item.reply.send(&self.counters, Err(error.clone()));
        }
    }

    fn snapshot(&self, now: Instant) -> GrinderStats {
        let c = &self.counters;
        GrinderStats {
            started: true,
            stopping: self.stop.is_some(),
            stopped: false,
            pending: self.pending.len(),
            oldest_wait: self
                .pending
                .values()
                .map(|i| i.enqueued)
                .min()
                .map(|t| now.saturating_duration_since(t)),
            max_wait: self.settings.max_wait,
            batch_size_threshold: self.settings.threshold,
            lease: self.settings.lease,
            batches_dispatched: self.dispatched,
            batches_in_flight: self.dispatched.saturating_sub(self.done),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            rerun: c.rerun.load(Ordering::Relaxed),
        }
    }
}
