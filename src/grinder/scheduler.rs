//! The scheduler thread: takes items in arrival order, cuts batches by size
//! or age, and hands them to the runners.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender, unbounded};

use crate::pool::LeasedExecutorManager;
use crate::task::Task;

use super::handle::Reply;
use super::runner::Runner;
use super::stats::Counters;
use super::{GrinderStats, Settings, WorkError, WorkGrinder};

pub(super) struct Item<T: Task> {
    pub(super) seq: u64,
    pub(super) task: T,
    pub(super) reply: Reply<T::Output>,
    pub(super) enqueued: Instant,
    pub(super) dispatches: u32,
}

pub(super) struct Batch<T: Task> {
    pub(super) number: u64,
    pub(super) items: Vec<Item<T>>,
}

/// What the grinder and its runners tell the scheduler, besides items.
pub(super) enum Control {
    Stop { expected: u64, cancel: bool },
    Stats(oneshot::Sender<GrinderStats>),
    BatchDone,
}

/// What woke the scheduler.
enum Got<T: Task> {
    Item(Item<T>),
    Control(Control),
    Cancel(u64),
    Gone,
    Nothing,
}

/// The scheduler thread's state. Nothing here is shared.
pub(super) struct Scheduler<T: Task> {
    settings: Arc<Settings>,
    manager: Arc<LeasedExecutorManager<T>>,
    items: Receiver<Item<T>>,
    control: Receiver<Control>,
    /// For the runners' `BatchDone`.
    control_tx: Sender<Control>,
    cancels: Receiver<u64>,
    /// Pending items by acceptance number: the first is the oldest.
    pending: BTreeMap<u64, Item<T>>,
    received: u64,
    /// Set by `stop`: how many items were accepted in all.
    stop: Option<u64>,
    cancelling: bool,
    batches: Option<Sender<Batch<T>>>,
    /// Dropped to tell the runners to cancel.
    cancel: Option<Sender<()>>,
    runners: Vec<JoinHandle<()>>,
    dispatched: u64,
    done: u64,
    counters: Arc<Counters>,
    last: Arc<Mutex<Option<GrinderStats>>>,
    /// Dropped when this thread ends, which wakes every `stop` waiting.
    _finished: Sender<()>,
}

impl<T: Task> Scheduler<T> {
    /// The scheduler of `grinder`, with nothing pending and no runner yet.
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
            batches: None,
            cancel: None,
            runners: Vec::new(),
            dispatched: 0,
            done: 0,
            counters: grinder.counters.clone(),
            last: grinder.last.clone(),
            _finished: finished,
        }
    }

    pub(super) fn run(mut self, ready: oneshot::Sender<Result<(), io::Error>>) {
        if let Err(e) = self.start_runners() {
            self.end();
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        loop {
            self.dispatch_ready(Instant::now());
            if self.finished() {
                break;
            }
            self.wait_and_handle();
        }
        self.end();
    }

    fn start_runners(&mut self) -> io::Result<()> {
        let (batches_tx, batches) = unbounded();
        let (cancel_tx, cancel) = unbounded();
        self.batches = Some(batches_tx);
        self.cancel = Some(cancel_tx);
        for n in 0..self.settings.concurrency {
            let runner = Runner {
                manager: self.manager.clone(),
                settings: self.settings.clone(),
                batches: batches.clone(),
                cancel: cancel.clone(),
                control: self.control_tx.clone(),
                counters: self.counters.clone(),
            };
            let span = self.settings.span.clone();
            let handle = thread::Builder::new()
                .name(format!("wf-grinder-runner-{n}"))
                .spawn(move || span.run(|| runner.run()))?;
            self.runners.push(handle);
        }
        Ok(())
    }

    /// Lets the runners finish, joins them and leaves the last figures.
    fn end(&mut self) {
        self.batches = None;
        for runner in self.runners.drain(..) {
            let _ = runner.join();
        }
        let mut stats = self.snapshot(Instant::now());
        stats.started = false;
        stats.stopping = false;
        stats.stopped = true;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    fn finished(&self) -> bool {
        self.stop.is_some_and(|expected| self.received >= expected)
            && self.pending.is_empty()
            && self.done >= self.dispatched
    }

    fn wait_and_handle(&mut self) {
        let deadline = self.next_deadline();
        let got = {
            let mut sel = Select::new();
            let items = sel.recv(&self.items);
            let control = sel.recv(&self.control);
            let cancels = sel.recv(&self.cancels);
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
                Some(_) => Got::Nothing,
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
                    // Runners cancel the batches not yet on a worker.
                    self.cancel = None;
                    for (_, item) in std::mem::take(&mut self.pending) {
                        item.reply.send(&self.counters, Err(WorkError::Cancelled));
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
            Got::Control(Control::BatchDone) => self.done += 1,
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

    /// Cuts batches: full ones while enough items are pending, and one of
    /// what is there once the oldest item has waited `max_wait` (or at once
    /// when draining).
    fn dispatch_ready(&mut self, now: Instant) {
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
            let batch = Batch {
                number: self.dispatched,
                items,
            };
            let sent = self.batches.as_ref().map(|tx| tx.send(batch));
            if !matches!(sent, Some(Ok(()))) {
                // No runner is left (they only end when told to): the items'
                // replies answer `Lost` as they drop.
                self.done += 1;
            }
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
