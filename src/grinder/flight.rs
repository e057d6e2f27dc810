//! A batch on its leased executor: every item queued there in one go, and
//! each answered from the executor's own engine thread the moment the
//! facade settles it.
//!
//! # Design
//!
//! The facade hands each task's outcome to a one-shot channel. Rather than
//! a thread that waits on each channel in turn (a wake-up and a thread
//! hand-off per item, on the way to the caller's own wake-up), each item's
//! channel is polled once, as the item is queued, with a waker of its own:
//! a [`Slot`] that holds the channel and the item's reply. When the engine
//! sends the outcome, the channel calls that waker on the engine's thread,
//! after the value is in place and the channel is done with its own state;
//! the slot then takes the outcome, turns it into the item's result and
//! answers the caller — or keeps the task for a re-run when it did not run.
//! The caller is thus answered from where the facade completes the task.
//!
//! What runs on the engine's thread is small and never waits: one lock that
//! only the scheduler (arming the slot) also takes, a counter, the caller's
//! waker, and, when the batch's last item has landed, one channel send: the
//! news to the scheduler, which then sends the executor its next batch or
//! gives the lease back. Nothing that could block is dropped there: the
//! [`Lease`] itself (which holds the facade, whose drop joins that very
//! engine) stays with the scheduler.
//!
//! Each slot counts the batch down exactly once, also if its delivery
//! unwinds, so the scheduler always hears the batch end.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::engine::Reclaimed;
use crate::pool::{AcquireError, Lease, LeaseError, Revoked};
use crate::task::{NotRunReason, Outcome, Task};

use super::handle::Reply;
use super::scheduler::{Control, Item};
use super::stats::Counters;
use super::{AfterCrash, Settings, WorkError};

/// An item goes to a worker at most this many times: once, plus re-runs
/// after a crash or an expired lease took down the executor before the item
/// started.
const MAX_DISPATCHES: u32 = 4;

/// How long a batch's items are gathered into one wake of the executor's
/// engine, at most, while the batch is being queued; and every how many
/// items the clock is read.
const GATHER_FOR: Duration = Duration::from_millis(1);
const GATHER_CHECK: usize = 16;

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A batch whose items are on an executor (or were refused by it), shared
/// by the scheduler and its items' slots.
pub(super) struct Flight<T: Task> {
    number: u64,
    owner: String,
    /// The lease's revocation, read when an item settles.
    revoked: Arc<OnceLock<Revoked>>,
    rerun: bool,
    /// Slots not yet delivered, plus one while the batch is being queued.
    outstanding: AtomicUsize,
    /// Items that did not run and may run again on a fresh executor.
    again: Mutex<Vec<Item<T>>>,
    counters: Arc<Counters>,
    /// Told [`Control::Landed`] once nothing is outstanding.
    control: Sender<Control>,
}

impl<T: Task> Flight<T> {
    /// Queues every item of batch `number` on `lease`'s executor, each with
    /// its slot armed. Items cancelled through their handles meanwhile are
    /// answered here and never sent. The scheduler hears
    /// [`Control::Landed`] once every item is answered or kept to run again
    /// (possibly before this returns).
    pub(super) fn launch(
        number: u64,
        lease: &Lease<T>,
        items: Vec<Item<T>>,
        settings: &Settings,
        counters: &Arc<Counters>,
        control: &Sender<Control>,
    ) -> Arc<Self> {
        let flight = Arc::new(Flight {
            number,
            owner: lease.owner().to_string(),
            revoked: lease.revocation_cell(),
            rerun: settings.after_crash == AfterCrash::Rerun,
            outstanding: AtomicUsize::new(1),
            again: Mutex::new(Vec::new()),
            counters: counters.clone(),
            control: control.clone(),
        });
        // Counts the batch down once it is all queued, also on an unwind.
        let queued = Countdown(&flight);
        // Cancelled through its handle while the batch waited for this
        // lease: it still has not gone to a worker. Decided for the whole
        // batch before any of it is queued: the first item may be answered
        // before the loop below is over (a busy engine takes what is in its
        // tray at its next turn, a batch of one may go straight to an idle
        // worker, and a slow batch is let go in parts), and a cancel its
        // caller sends then must not take the rest of the batch, which has
        // gone to the worker with it.
        let mut batch = Vec::with_capacity(items.len());
        for item in items {
            if item.reply.is_cancelled() {
                item.reply.send_cancelled(&flight.counters);
            } else {
                batch.push(item);
            }
        }
        // The batch goes in the executor's tray before its engine is woken,
        // so that its worker wakes once for all of it rather than for its
        // first item and again for the rest. A batch of one is not
        // gathered: it may then take the direct lane to an idle worker, a
        // hand-off fewer. A batch whose tasks are slow to encode is let go
        // every `GATHER_FOR`, so that its worker does not wait for the
        // whole batch to start on its first items.
        let gathering = batch.len() > 1;
        let mut gather = gathering.then(|| (lease.gather(), Instant::now()));
        for (n, item) in batch.into_iter().enumerate() {
            if n % GATHER_CHECK == GATHER_CHECK - 1 {
                if let Some((_, since)) = &gather {
                    if since.elapsed() >= GATHER_FOR {
                        // Ended first (it wakes the engine for what is
                        // there), then the next one opened.
                        drop(gather.take());
                        gather = Some((lease.gather(), Instant::now()));
                    }
                }
            }
            let dispatches = item.dispatches + 1;
            match lease.submit_reclaim(item.task, None) {
                Ok(answer) => Slot::arm(
                    &flight,
                    Sent {
                        seq: item.seq,
                        reply: item.reply,
                        enqueued: item.enqueued,
                        dispatches,
                    },
                    answer,
                ),
                Err(LeaseError::Refused(refused)) => item.reply.send(
                    &flight.counters,
                    Err(WorkError::Refused(refused.to_string())),
                ),
                // The lease expired before its batch was even queued (a lease
                // far too short) or the manager stopped.
                Err(refused) => {
                    let error = match &refused {
                        LeaseError::Stopped(_) => WorkError::NoExecutor(AcquireError::Stopped),
                        _ => flight.expired(None),
                    };
                    if dispatches < MAX_DISPATCHES {
                        flight.keep(Item {
                            seq: item.seq,
                            task: refused.into_task(),
                            reply: item.reply,
                            enqueued: item.enqueued,
                            dispatches,
                        });
                    } else {
                        item.reply.send(&flight.counters, Err(error));
                    }
                }
            }
        }
        drop(gather);
        drop(queued);
        flight
    }

    /// The items to run again, once the batch has landed.
    pub(super) fn take_again(&self) -> Vec<Item<T>> {
        std::mem::take(&mut *lock(&self.again))
    }

    fn keep(&self, item: Item<T>) {
        lock(&self.again).push(item);
    }

    /// One slot (or the queueing) is done; the last one tells the
    /// scheduler, which decides what the executor does next.
    fn count_down(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A scheduler that has ended no longer waits for it.
            let _ = self.control.send(Control::Landed(self.number));
        }
    }

    fn expired(&self, crash: Option<Box<crate::task::CrashInfo>>) -> WorkError {
        WorkError::LeaseExpired {
            owner: self.owner.clone(),
            crash,
        }
    }

    /// What an item's outcome means for its caller: its result, or its task
    /// back to run again.
    fn verdict(&self, got: Option<Reclaimed<T>>, dispatches: u32) -> Verdict<T> {
        let Some(Reclaimed { outcome, task }) = got else {
            return Verdict::Answer(Err(WorkError::Lost));
        };
        let revoked = self.revoked.get().copied();
        Verdict::Answer(match outcome {
            Outcome::Completed(output) => Ok(output),
            Outcome::Failed(message) => Err(WorkError::Failed(message)),
            Outcome::TimedOut(limit) => Err(WorkError::TimedOut(limit)),
            Outcome::Crashed(crash) => Err(match revoked {
                Some(Revoked::Expired) => self.expired(Some(crash)),
                _ => WorkError::Crashed(crash),
            }),
            Outcome::NotRun(reason) => {
                let retryable = matches!(
                    reason,
                    NotRunReason::WorkerDied(_)
                        | NotRunReason::Cancelled(_)
                        | NotRunReason::WorkerUnavailable(_)
                );
                let task = task.filter(|_| retryable && self.rerun && dispatches < MAX_DISPATCHES);
                if let Some(task) = task {
                    return Verdict::Again(task);
                }
                Err(match (revoked, reason) {
                    (Some(Revoked::Expired), NotRunReason::Cancelled(_)) => self.expired(None),
                    (_, reason) => WorkError::NotRun(Box::new(reason)),
                })
            }
        })
    }
}

/// What became of a settled item.
enum Verdict<T: Task> {
    Answer(Result<T::Output, WorkError>),
    Again(T),
}

/// Counts its flight down when dropped.
struct Countdown<'a, T: Task>(&'a Flight<T>);

impl<T: Task> Drop for Countdown<'_, T> {
    fn drop(&mut self) {
        self.0.count_down();
    }
}

/// An item queued on the executor, without its task (the facade holds it).
struct Sent<O> {
    seq: u64,
    reply: Reply<O>,
    enqueued: Instant,
    dispatches: u32,
}

/// One queued item: its outcome's channel and its reply, and the waker
/// that answers the reply when the outcome arrives.
struct Slot<T: Task> {
    /// `None` once delivered.
    armed: Mutex<Option<Armed<T>>>,
}

struct Armed<T: Task> {
    answer: oneshot::AsyncReceiver<Reclaimed<T>>,
    item: Sent<T::Output>,
    flight: Arc<Flight<T>>,
}

impl<T: Task> Slot<T> {
    /// Polls the item's channel once with the slot as its waker. An outcome
    /// already there is delivered at once; otherwise the engine's send wakes
    /// the slot. The slot's lock is held across the poll, so a wake racing
    /// with it waits until the slot is armed.
    fn arm(
        flight: &Arc<Flight<T>>,
        item: Sent<T::Output>,
        answer: oneshot::Receiver<Reclaimed<T>>,
    ) {
        flight.outstanding.fetch_add(1, Ordering::AcqRel);
        let slot = Arc::new(Slot {
            armed: Mutex::new(None),
        });
        let waker = Waker::from(slot.clone());
        let mut answer = answer.into_future();
        let mut armed = lock(&slot.armed);
        match Pin::new(&mut answer).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(got) => {
                drop(armed);
                Armed {
                    answer,
                    item,
                    flight: flight.clone(),
                }
                .deliver(got.ok());
            }
            Poll::Pending => {
                *armed = Some(Armed {
                    answer,
                    item,
                    flight: flight.clone(),
                });
            }
        }
    }
}

impl<T: Task> Wake for Slot<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Runs on the engine's thread (or wherever the facade drops the
    /// outcome's sender).
    fn wake_by_ref(self: &Arc<Self>) {
        let mut armed = lock(&self.armed);
        let Some(slot) = armed.as_mut() else {
            return;
        };
        // With the outcome in, the poll is sure to take it; otherwise (the
        // sender dropped, or a wake-up with nothing there, which none is
        // expected to be) polled with this slot again, so that it stays
        // armed.
        let own;
        let waker = if slot.answer.has_message() {
            Waker::noop()
        } else {
            own = Waker::from(self.clone());
            &own
        };
        let got = match Pin::new(&mut slot.answer).poll(&mut Context::from_waker(waker)) {
            Poll::Pending => return,
            Poll::Ready(got) => got.ok(),
        };
        let Some(slot) = armed.take() else {
            return;
        };
        drop(armed);
        slot.deliver(got);
    }
}

impl<T: Task> Armed<T> {
    /// Answers the item, or keeps its task to run again; counts the batch
    /// down either way.
    fn deliver(self, got: Option<Reclaimed<T>>) {
        let Armed {
            answer,
            item,
            flight,
        } = self;
        drop(answer);
        let _landed = Countdown(&flight);
        match flight.verdict(got, item.dispatches) {
            Verdict::Answer(result) => item.reply.send(&flight.counters, result),
            Verdict::Again(task) => flight.keep(Item {
                seq: item.seq,
                task,
                reply: item.reply,
                enqueued: item.enqueued,
                dispatches: item.dispatches,
            }),
        }
    }
}
