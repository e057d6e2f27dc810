//! [`CollectOnDrop`]: scoped use of a facade whose outcomes are never lost.

use std::fmt;
use std::ops::Deref;

use crate::error::CollectError;
use crate::facade::WorkingProcessFacade;
use crate::task::{Task, TaskRecord};

type Sink<T> = Box<dyn FnOnce(Result<Vec<TaskRecord<T>>, CollectError>) + Send>;

/// A facade that collects itself when dropped and hands the records to a
/// sink you chose (a closure, or a channel's sender inside one). Made by
/// [`WorkingProcessFacade::collect_on_drop`].
///
/// It derefs to the facade, so `process_task` and `submit` work on it.
///
/// # Drop
///
/// Dropping the guard calls `collect_tasks` — waiting, as that does, for the
/// queued tasks to finish — and passes the result to the sink. This happens
/// also while unwinding from a panic, so the outcomes of the work done so far
/// still reach the sink. [`finish`](Self::finish) collects early and returns
/// the records instead.
///
/// ```no_run
/// use std::sync::mpsc;
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let (tx, rx) = mpsc::channel();
/// {
///     let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("facade-worker"))?
///         .collect_on_drop(move |records| { let _ = tx.send(records); });
///     w.process_task(SimpleTask::new("one", 0.1))?;
/// } // collected here
/// let records = rx.recv()??;
/// assert_eq!(records.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CollectOnDrop<T: Task> {
    facade: Option<WorkingProcessFacade<T>>,
    sink: Option<Sink<T>>,
}

impl<T: Task> CollectOnDrop<T> {
    pub(crate) fn new(facade: WorkingProcessFacade<T>, sink: Sink<T>) -> Self {
        CollectOnDrop {
            facade: Some(facade),
            sink: Some(sink),
        }
    }

    /// Collects now and returns the records; the sink is not called.
    pub fn finish(mut self) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.sink = None;
        match self.facade.take() {
            Some(facade) => facade.collect_tasks(),
            None => Err(CollectError::AlreadyCollected),
        }
    }
}

impl<T: Task> Deref for CollectOnDrop<T> {
    type Target = WorkingProcessFacade<T>;

    fn deref(&self) -> &WorkingProcessFacade<T> {
        match &self.facade {
            Some(facade) => facade,
            // `facade` is only taken by `finish` (which consumes the guard)
            // and by `drop`.
            None => unreachable!("CollectOnDrop used after finish"),
        }
    }
}

impl<T: Task> fmt::Debug for CollectOnDrop<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectOnDrop")
            .field("facade", &self.facade)
            .finish()
    }
}

impl<T: Task> Drop for CollectOnDrop<T> {
    fn drop(&mut self) {
        if let (Some(facade), Some(sink)) = (self.facade.take(), self.sink.take()) {
            sink(facade.collect_tasks());
        }
    }
}
