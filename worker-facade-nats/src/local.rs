//! The agent's local workers: `n` worker processes on this machine, each
//! behind its own [`WorkingProcessFacade`], one task at a time each.
//!
//! This is the only place that knows how tasks run locally. When the core
//! facade can drive several workers itself (`workers(n)`), this becomes one
//! facade and the semaphore stays: nothing else changes.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use worker_facade::{FacadeBuilder, Outcome, SpawnError, Task, WorkingProcessFacade};

use crate::reasons;

/// What running a task locally gave.
#[derive(Debug)]
pub(crate) enum LocalResult<O> {
    /// The task's outcome, to record: completed, failed, crashed (the
    /// worker died while running it) or timed out.
    Done(Outcome<O>),
    /// This machine could not run it (its workers would not start, or they
    /// were being shut down): hand it back for another agent.
    Unavailable(String),
}

/// `n` local workers.
pub(crate) struct LocalWorkers<T: Task> {
    builder: FacadeBuilder<T>,
    slots: Vec<Mutex<Option<Arc<WorkingProcessFacade<T>>>>>,
    free: Mutex<Vec<usize>>,
    permits: Arc<Semaphore>,
}

/// A free worker, held until dropped.
pub(crate) struct Slot<T: Task> {
    index: usize,
    workers: Arc<LocalWorkers<T>>,
    _permit: OwnedSemaphorePermit,
}

impl<T: Task> std::fmt::Debug for LocalWorkers<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWorkers")
            .field("workers", &self.slots.len())
            .field("free", &self.permits.available_permits())
            .finish()
    }
}

impl<T: Task> LocalWorkers<T> {
    /// Starts `n` workers; if one fails, those already started are stopped
    /// (by their facades' `Drop`) before the error returns.
    pub(crate) fn start(builder: FacadeBuilder<T>, n: usize) -> Result<Self, SpawnError> {
        let n = n.max(1);
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let facade = builder.clone().spawn()?;
            slots.push(Mutex::new(Some(Arc::new(facade))));
        }
        Ok(LocalWorkers {
            builder,
            slots,
            free: Mutex::new((0..n).rev().collect()),
            permits: Arc::new(Semaphore::new(n)),
        })
    }

    /// How many workers there are.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Waits for a free worker. `None` once [`close`](Self::close)d.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Option<Slot<T>> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(self.slot(permit))
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot<T> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            // A permit stands for a free index; there is always one.
            .unwrap_or(0);
        Slot {
            index,
            workers: self.clone(),
            _permit: permit,
        }
    }

    /// No more tasks start; waiting acquirers get `None`.
    pub(crate) fn close(&self) {
        self.permits.close();
    }

    /// Ends every worker now: running tasks come back as
    /// [`LocalResult::Unavailable`] to be handed back.
    pub(crate) fn terminate_all(&self, reason: &str) {
        for slot in &self.slots {
            if let Some(facade) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                facade.terminate(reason);
            }
        }
    }

    /// Stops every worker and reaps it (each facade's `Drop`). Blocks for at
    /// most the facades' grace period; call it off the async threads.
    pub(crate) fn stop(&self) {
        for slot in &self.slots {
            let facade = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop(facade);
        }
    }

    fn facade(&self, index: usize) -> Option<Arc<WorkingProcessFacade<T>>> {
        self.slots
            .get(index)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces a worker whose facade gave up (its restart budget ran out).
    fn replace(&self, index: usize) -> Result<(), SpawnError> {
        let fresh = Arc::new(self.builder.clone().spawn()?);
        if let Some(slot) = self.slots.get(index) {
            let old = slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(fresh);
            drop(old);
        }
        Ok(())
    }
}

impl<T: Task> Slot<T> {
    /// Runs `task` on this worker. The future is a worker-facade
    /// `TaskHandle`: dropping it does not stop the task.
    pub(crate) async fn run(&self, task: T) -> LocalResult<T::Output> {
        let Some(facade) = self.workers.facade(self.index) else {
            return LocalResult::Unavailable("the agent is stopping".into());
        };
        let handle = match facade.submit(task) {
            Ok(handle) => handle,
            Err(_) => return LocalResult::Unavailable("the agent is stopping".into()),
        };
        match handle.await {
            Ok(outcome) if reasons::local_unavailability(&outcome).is_some() => {
                let why = format!(
                    "this agent's workers could not run it ({})",
                    reasons::local_unavailability(&outcome).unwrap_or_default()
                );
                // A facade out of restarts stays so: start a fresh one, off
                // the async threads since spawning waits for a handshake.
                let workers = self.workers.clone();
                let index = self.index;
                let _ = tokio::task::spawn_blocking(move || workers.replace(index)).await;
                LocalResult::Unavailable(why)
            }
            Ok(outcome) => LocalResult::Done(outcome),
            Err(e) => LocalResult::Unavailable(format!("the local facade ended: {e}")),
        }
    }
}

impl<T: Task> Drop for Slot<T> {
    fn drop(&mut self) {
        self.workers
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.index);
    }
}
