//! [`CollectOnDrop`]: scoped use of a facade whose outcomes are never lost.

use std::fmt;
use std::time::Duration;

use crate::error::{CollectError, SubmitError};
use crate::facade::WorkingProcessFacade;
use crate::handle::TaskHandle;
use crate::stats::FacadeStats;
use crate::task::{Task, TaskId, TaskRecord};

type Sink<T> = Box<dyn FnOnce(Result<Vec<TaskRecord<T>>, CollectError>) + Send>;

/// A facade that collects itself when dropped and hands the records to a
/// sink you chose (a closure, or a channel's sender inside one). Made by
/// [`WorkingProcessFacade::collect_on_drop`].
///
/// It offers the facade's submitting side (`process_task`, `submit`,
/// `cancel`, `stats`...), but not `collect_tasks`: the records are the
/// sink's, or [`finish`](Self::finish)'s, so they cannot be taken behind the
/// guard's back (the guard does not deref to the facade for that reason):
///
/// ```compile_fail
/// # use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new("facade-worker"))
///     .unwrap()
///     .collect_on_drop(|_| {});
/// w.collect_tasks(); // does not compile: use w.finish()
/// ```
///
/// # Drop
///
/// Dropping the guard calls `collect_tasks` — blocking the dropping thread,
/// as that does, while the queued tasks finish — and passes the result to
/// the sink; in async code, end it with [`finish_async`](Self::finish_async)
/// instead. This happens
/// also while unwinding from a panic, so the outcomes of the work done so far
/// still reach the sink. [`finish`](Self::finish) collects early and returns
/// the records instead.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use std::sync::mpsc;
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let (tx, rx) = mpsc::channel();
/// {
///     let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?
///         .collect_on_drop(move |records| { let _ = tx.send(records); });
///     w.process_task(SimpleTask::new("one", 0.1))?;
/// } // collected here
/// let records = rx.recv()??;
/// assert_eq!(records.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The guard is `#[must_use]`: made and dropped in one statement, it would
/// collect at once:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// # fn demo(w: WorkingProcessFacade<SimpleTask>) {
/// w.collect_on_drop(|records| drop(records)); // does not compile here
/// # }
/// ```
#[must_use = "dropping a CollectOnDrop collects at once: keep it while you submit work through it"]
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
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::collect_tasks`].
    pub fn finish(mut self) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.sink = None;
        match self.facade.take() {
            Some(facade) => facade.collect_tasks(),
            None => Err(CollectError::AlreadyCollected),
        }
    }

    /// Like [`finish`](Self::finish), as a future that never blocks the
    /// thread polling it (see
    /// [`collect_tasks_async`](WorkingProcessFacade::collect_tasks_async)).
    /// The sink is not called. In async code, end a guard with this: its
    /// drop would block while the queued tasks finish.
    ///
    /// ```no_run
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn_async(WorkerCommand::new("facade-worker"))
    ///     .await?
    ///     .collect_on_drop(|records| eprintln!("unfinished: {records:?}"));
    /// w.process_task(SimpleTask::new("one", 0.1))?;
    /// let records = w.finish_async().await?;
    /// assert_eq!(records.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::collect_tasks`].
    pub async fn finish_async(mut self) -> Result<Vec<TaskRecord<T>>, CollectError> {
        self.sink = None;
        match self.facade.take() {
            Some(facade) => facade.collect_tasks_async().await,
            None => Err(CollectError::AlreadyCollected),
        }
    }
}

impl<T: Task> CollectOnDrop<T> {
    fn facade(&self) -> &WorkingProcessFacade<T> {
        match &self.facade {
            Some(facade) => facade,
            // `facade` is only taken by `finish` (which consumes the guard)
            // and by `drop`.
            None => unreachable!("CollectOnDrop used after finish"),
        }
    }

    /// [`WorkingProcessFacade::process_task`].
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::process_task`].
    pub fn process_task(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        self.facade().process_task(task)
    }

    /// [`WorkingProcessFacade::process_task_bounded`].
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::process_task_bounded`].
    pub fn process_task_bounded(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        self.facade().process_task_bounded(task)
    }

    /// The old name of [`process_task_bounded`](Self::process_task_bounded).
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::process_task_bounded`].
    #[deprecated(note = "renamed to process_task_bounded, which says what it bounds")]
    pub fn try_process_task(&self, task: T) -> Result<TaskId, SubmitError<T>> {
        self.facade().process_task_bounded(task)
    }

    /// [`WorkingProcessFacade::submit`].
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::submit`].
    pub fn submit(&self, task: T) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.facade().submit(task)
    }

    /// [`WorkingProcessFacade::submit_with_time_limit`]: `limit` bounds how
    /// long the task may run, not how long to wait.
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::submit`].
    pub fn submit_with_time_limit(
        &self,
        task: T,
        limit: Duration,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.facade().submit_with_time_limit(task, limit)
    }

    /// The old name of [`submit_with_time_limit`](Self::submit_with_time_limit)
    /// (`None`: [`submit`](Self::submit)).
    ///
    /// # Errors
    ///
    /// As [`WorkingProcessFacade::submit`].
    #[deprecated(
        note = "renamed to submit_with_time_limit: the duration limits how long the task may \
                run, not how long to wait for it"
    )]
    pub fn submit_with_timeout(
        &self,
        task: T,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<T::Output>, SubmitError<T>> {
        self.facade().submit_limited(task, timeout)
    }

    /// [`WorkingProcessFacade::cancel`].
    pub fn cancel(&self, id: TaskId) {
        self.facade().cancel(id)
    }

    /// [`WorkingProcessFacade::terminate`].
    pub fn terminate(&self, reason: impl Into<String>) {
        self.facade().terminate(reason)
    }

    /// [`WorkingProcessFacade::stats`].
    pub fn stats(&self) -> FacadeStats {
        self.facade().stats()
    }

    /// [`WorkingProcessFacade::worker_pid`].
    pub fn worker_pid(&self) -> Option<u32> {
        self.facade().worker_pid()
    }

    /// [`WorkingProcessFacade::worker_pids`].
    pub fn worker_pids(&self) -> Vec<u32> {
        self.facade().worker_pids()
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
