//! The runner threads: each leases one executor per batch, queues the whole
//! batch on it, and answers each item as its result arrives.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};

use crate::engine::Reclaimed;
use crate::pool::{AcquireError, Lease, LeasedExecutorManager, Revoked};
use crate::task::{NotRunReason, Outcome, Task};

use super::handle::Reply;
use super::scheduler::{Batch, Control, Item};
use super::stats::Counters;
use super::{AfterCrash, Settings, WorkError};

/// An item goes to a worker at most this many times: once, plus re-runs
/// after a crash or an expired lease took down the executor before the item
/// started.
const MAX_DISPATCHES: u32 = 4;

/// Why a runner has no lease.
enum NoLease {
    Cancelled,
    Failed(AcquireError),
}

/// An item queued on a leased executor.
struct Sent<T: Task> {
    seq: u64,
    reply: Reply<T::Output>,
    enqueued: Instant,
    dispatches: u32,
    /// The outcome, with the task handed back when it did not run, to run it
    /// again on a fresh executor (never decoded in the parent: a task's
    /// `Deserialize` runs only in a worker).
    answer: oneshot::Receiver<Reclaimed<T>>,
}

/// Tells the scheduler a batch is over when dropped.
struct BatchDone<'a>(&'a Sender<Control>);

impl Drop for BatchDone<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(Control::BatchDone);
    }
}

/// A runner thread: runs one batch at a time on one leased executor.
pub(super) struct Runner<T: Task> {
    pub(super) manager: Arc<LeasedExecutorManager<T>>,
    pub(super) settings: Arc<Settings>,
    pub(super) batches: Receiver<Batch<T>>,
    /// Disconnected once `stop(cancel_pending = true)` ran.
    pub(super) cancel: Receiver<()>,
    pub(super) control: Sender<Control>,
    pub(super) counters: Arc<Counters>,
}

impl<T: Task> Runner<T> {
    pub(super) fn run(self) {
        for batch in self.batches.iter() {
            // Reported even if the batch panics (a bug): the scheduler must
            // not wait for it forever, and its items answer `Lost` as they
            // drop.
            let _done = BatchDone(&self.control);
            self.run_batch(batch);
        }
    }

    fn cancelled(&self) -> bool {
        matches!(self.cancel.try_recv(), Err(TryRecvError::Disconnected))
    }

    fn answer(&self, reply: Reply<T::Output>, result: Result<T::Output, WorkError>) {
        reply.send(&self.counters, result);
    }

    fn run_batch(&self, batch: Batch<T>) {
        let owner = format!("{}-{}", self.settings.owner_prefix, batch.number);
        let mut items = batch.items;
        loop {
            // Items cancelled through their handles while waiting here.
            let (cancelled, kept): (Vec<_>, Vec<_>) = items
                .into_iter()
                .partition(|item| item.reply.is_cancelled());
            for item in cancelled {
                item.reply.send_cancelled(&self.counters);
            }
            items = kept;
            if items.is_empty() {
                return;
            }
            if self.cancelled() {
                return self.fail_all(items, WorkError::Cancelled);
            }
            let lease = match self.lease(&owner) {
                Ok(lease) => lease,
                Err(NoLease::Cancelled) => return self.fail_all(items, WorkError::Cancelled),
                Err(NoLease::Failed(e)) => return self.fail_all(items, WorkError::NoExecutor(e)),
            };
            items = self.run_on(&lease, items);
            // Released before the re-run asks for a fresh executor.
            drop(lease);
            self.counters
                .rerun
                .fetch_add(items.len() as u64, Ordering::Relaxed);
        }
    }

    fn fail_all(&self, items: Vec<Item<T>>, error: WorkError) {
        for item in items {
            self.answer(item.reply, Err(error.clone()));
        }
    }

    /// Waits for a lease, or for `stop(cancel_pending = true)`.
    fn lease(&self, owner: &str) -> Result<Lease<T>, NoLease> {
        let answer = self
            .manager
            .request(self.settings.lease, owner.to_string(), true, None)
            .map_err(NoLease::Failed)?;
        // A lease granted after we stop listening is dropped with `answer`
        // and goes back to the pool.
        select! {
            recv(answer) -> got => match got {
                Ok(Ok(lease)) => Ok(lease),
                Ok(Err(e)) => Err(NoLease::Failed(e)),
                Err(_) => Err(NoLease::Failed(AcquireError::Stopped)),
            },
            recv(self.cancel) -> _ => Err(NoLease::Cancelled),
        }
    }

    /// Queues every item on the lease's executor at once, then forwards each
    /// result as it arrives. Returns the items to run again.
    fn run_on(&self, lease: &Lease<T>, items: Vec<Item<T>>) -> Vec<Item<T>> {
        let rerun = self.settings.after_crash == AfterCrash::Rerun;
        let mut sent: Vec<Sent<T>> = Vec::with_capacity(items.len());
        let mut again = Vec::new();
        for item in items {
            // Cancelled through its handle while the batch waited for this
            // lease: it still has not gone to a worker.
            if item.reply.is_cancelled() {
                item.reply.send_cancelled(&self.counters);
                continue;
            }
            let dispatches = item.dispatches + 1;
            match lease.submit_reclaim(item.task, None) {
                Ok(answer) => sent.push(Sent {
                    seq: item.seq,
                    reply: item.reply,
                    enqueued: item.enqueued,
                    dispatches,
                    answer,
                }),
                Err(crate::pool::LeaseError::Refused(refused)) => {
                    self.answer(item.reply, Err(WorkError::Refused(refused.to_string())));
                }
                // The lease expired before its batch was even queued (a lease
                // far too short) or the manager stopped.
                Err(refused) => {
                    let error = match &refused {
                        crate::pool::LeaseError::Stopped(_) => {
                            WorkError::NoExecutor(AcquireError::Stopped)
                        }
                        _ => WorkError::LeaseExpired {
                            owner: lease.owner().to_string(),
                            crash: None,
                        },
                    };
                    if dispatches < MAX_DISPATCHES {
                        again.push(Item {
                            seq: item.seq,
                            task: refused.into_task(),
                            reply: item.reply,
                            enqueued: item.enqueued,
                            dispatches,
                        });
                    } else {
                        self.answer(item.reply, Err(error));
                    }
                }
            }
        }
        for s in sent {
            let (outcome, task) = match s.answer.recv() {
                Ok(Reclaimed { outcome, task }) => (Ok(outcome), task),
                Err(_) => (Err(()), None),
            };
            let result = match outcome {
                Ok(Outcome::Completed(output)) => Ok(output),
                Ok(Outcome::Failed(message)) => Err(WorkError::Failed(message)),
                Ok(Outcome::TimedOut(limit)) => Err(WorkError::TimedOut(limit)),
                Ok(Outcome::Crashed(crash)) => Err(match lease.revocation() {
                    Some(Revoked::Expired) => WorkError::LeaseExpired {
                        owner: lease.owner().to_string(),
                        crash: Some(Box::new(crash)),
                    },
                    _ => WorkError::Crashed(Box::new(crash)),
                }),
                Ok(Outcome::NotRun(reason)) => {
                    let retryable = matches!(
                        reason,
                        NotRunReason::WorkerDied(_)
                            | NotRunReason::Cancelled(_)
                            | NotRunReason::WorkerUnavailable(_)
                    );
                    let task = task.filter(|_| retryable && rerun && s.dispatches < MAX_DISPATCHES);
                    if let Some(task) = task {
                        again.push(Item {
                            seq: s.seq,
                            task,
                            reply: s.reply,
                            enqueued: s.enqueued,
                            dispatches: s.dispatches,
                        });
                        continue;
                    }
                    Err(match (lease.revocation(), reason) {
                        (Some(Revoked::Expired), NotRunReason::Cancelled(_)) => {
                            WorkError::LeaseExpired {
                                owner: lease.owner().to_string(),
                                crash: None,
                            }
                        }
                        (_, reason) => WorkError::NotRun(Box::new(reason)),
                    })
                }
                Err(_) => Err(WorkError::Lost),
            };
            self.answer(s.reply, result);
        }
        again
    }
}
