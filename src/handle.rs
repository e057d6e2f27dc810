//! [`TaskHandle`]: one task's outcome, delivered as soon as it is known.

use std::cell::Cell;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::WaitError;
use crate::progress::ProgressCell;
use crate::task::{Outcome, TaskId};

/// The outcome of one task submitted with
/// [`submit`](crate::WorkingProcessFacade::submit), available as soon as the
/// worker answers — while other work continues.
///
/// Waiting comes in four forms, each returning `Result<Outcome, WaitError>`:
/// [`wait`](Self::wait), [`try_wait`](Self::try_wait) (`Err(Timeout)`: not
/// yet), [`wait_timeout`](Self::wait_timeout) and
/// [`wait_deadline`](Self::wait_deadline). It is also a `Future` (through
/// `IntoFuture`) that works with any async runtime. A handle gives its
/// outcome once: asking again is [`WaitError::AlreadyTaken`]. The grinder's
/// [`GrindHandle`](crate::GrindHandle) has the same methods with the same
/// shapes.
///
/// # Drop
///
/// Dropping a handle does not cancel the task: it runs, and its outcome
/// goes to [`completed`](crate::WorkingProcessFacade::completed) or
/// [`collect_tasks`](crate::WorkingProcessFacade::collect_tasks) instead, so
/// it is never lost. Say so with [`detach`](Self::detach); stop the task
/// with [`cancel`](Self::cancel).
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
/// let handle = w.submit(SimpleTask::new("one", 0.0)).map_err(|e| e.to_string())?;
/// println!("{:?}", handle.wait());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a TaskHandle does not cancel its task: the outcome goes to collect_tasks \
              instead; call .detach() to say so, or .cancel() to stop it"]
pub struct TaskHandle<O> {
    id: TaskId,
    rx: oneshot::Receiver<Delivery<O>>,
    /// Set once a wait returned the outcome.
    taken: Cell<bool>,
    cancel: Canceller,
    progress: Arc<ProgressCell>,
}

/// Asks the facade's engine to cancel a task by its raw ID.
pub(crate) type Canceller = Arc<dyn Fn(u64) + Send + Sync>;

/// What the engine sends a handle: the outcome, and how to give it back
/// (with the task, which only the closure knows) if the handle is dropped
/// before a wait took it. The engine has forgotten the task by then; a
/// handle dropped the moment its outcome arrived would otherwise lose it.
pub(crate) struct Delivery<O> {
    pub(crate) outcome: Outcome<O>,
    pub(crate) give_back: Option<GiveBack<O>>,
}

/// Turns an outcome no handle took into a record for `collect_tasks`.
pub(crate) type GiveBack<O> = Box<dyn FnOnce(Outcome<O>) + Send>;

impl<O> Delivery<O> {
    /// The outcome, taken by a wait: nothing to give back.
    fn taken(self) -> Outcome<O> {
        self.outcome
    }

    /// Nobody took it: back to the facade's records.
    fn unclaimed(self) {
        if let Some(give_back) = self.give_back {
            give_back(self.outcome);
        }
    }
}

impl<O> std::fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<O> TaskHandle<O> {
    pub(crate) fn new(
        id: TaskId,
        rx: oneshot::Receiver<Delivery<O>>,
        cancel: Canceller,
        progress: Arc<ProgressCell>,
    ) -> Self {
        TaskHandle {
            id,
            rx,
            taken: Cell::new(false),
            cancel,
            progress,
        }
    }

    /// The latest progress value the task reported (through
    /// [`worker::Progress`](crate::worker::Progress)), decoded as `P`;
    /// `None` before the first, or if it does not decode as `P`. Only the
    /// latest is kept. Cheap: no waiting, no system call.
    ///
    /// ```
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    /// use worker_facade::worker::{Progress, run_if_worker_with_progress};
    ///
    /// run_if_worker_with_progress(|t: SimpleTask, progress: &Progress| {
    ///     progress.report(&(1u32, 2u32));
    ///     Ok::<_, String>(t.solve())
    /// });
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    /// let handle = w.submit(SimpleTask::new("job", 0.0))?;
    /// let _ = handle.wait_timeout(std::time::Duration::from_secs(10));
    /// assert_eq!(handle.progress::<(u32, u32)>(), Some((1, 2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress<P: serde::de::DeserializeOwned>(&self) -> Option<P> {
        self.progress.latest()
    }

    /// How many progress values the task reported so far that reached the
    /// parent (the worker sends at most one a millisecond).
    pub fn progress_count(&self) -> u64 {
        self.progress.count()
    }

    /// The future of its outcome, and what cancels the task (for `map`).
    pub(crate) fn into_parts(self) -> (TaskFuture<O>, Box<dyn Fn() + Send + Sync>) {
        let (cancel, id) = (self.cancel.clone(), self.id.0);
        (self.into_future(), Box::new(move || cancel(id)))
    }

    /// The task's ID.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Cancels the task. Never blocks; the outcome says what happened:
    ///
    /// - not started yet (queued in the parent, or already sent ahead to a
    ///   worker): it never starts, and its outcome is
    ///   [`NotRun`](Outcome::NotRun)`(`[`Cancelled`](crate::NotRunReason::Cancelled)`(`[`Requested`](crate::CancelReason::Requested)`))`;
    /// - running: its worker is stopped (SIGTERM, then SIGKILL after
    ///   [`kill_grace`](crate::FacadeBuilder::kill_grace)), the outcome is
    ///   the same, and the tasks behind it run on a fresh worker; the
    ///   restart budget is not charged;
    /// - already finished: nothing changes.
    ///
    /// ```
    /// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
    /// use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    /// let slow = w.submit(SimpleTask::new("slow", 60.0)).map_err(|e| e.to_string())?;
    /// slow.cancel();
    /// assert!(matches!(slow.wait()?, Outcome::NotRun(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) {
        (self.cancel)(self.id.0);
    }

    /// Lets the task run without waiting for it here: its outcome goes to
    /// [`completed`](crate::WorkingProcessFacade::completed) or
    /// [`collect_tasks`](crate::WorkingProcessFacade::collect_tasks). The
    /// same as dropping the handle, said out loud.
    pub fn detach(self) {}

    /// Blocks until the outcome arrives.
    ///
    /// # Errors
    ///
    /// [`WaitError::AlreadyTaken`] if an earlier wait returned it;
    /// [`WaitError::Disconnected`] if it can never arrive.
    pub fn wait(self) -> Result<Outcome<O>, WaitError> {
        if self.taken.get() {
            return Err(WaitError::AlreadyTaken);
        }
        self.take(
            self.rx
                .recv_ref()
                .map(Delivery::taken)
                .map_err(|_| WaitError::Disconnected),
        )
    }

    /// The outcome if it has arrived, without blocking.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if it has not arrived yet (ask again later);
    /// [`WaitError::AlreadyTaken`] if an earlier wait returned it;
    /// [`WaitError::Disconnected`] if it can never arrive.
    pub fn try_wait(&self) -> Result<Outcome<O>, WaitError> {
        self.take(
            self.rx
                .try_recv()
                .map(Delivery::taken)
                .map_err(|e| match e {
                    oneshot::TryRecvError::Empty => WaitError::Timeout,
                    oneshot::TryRecvError::Disconnected => WaitError::Disconnected,
                }),
        )
    }

    /// Waits at most `timeout` for the outcome.
    ///
    /// # Errors
    ///
    /// As [`wait_deadline`](Self::wait_deadline).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Outcome<O>, WaitError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None if self.taken.get() => Err(WaitError::AlreadyTaken),
            None => self.take(
                self.rx
                    .recv_ref()
                    .map(Delivery::taken)
                    .map_err(|_| WaitError::Disconnected),
            ),
        }
    }

    /// Waits until `deadline` for the outcome.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if it has not arrived by then (the handle can
    /// wait again); [`WaitError::AlreadyTaken`] if an earlier wait returned
    /// it; [`WaitError::Disconnected`] if it can never arrive.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<Outcome<O>, WaitError> {
        if self.taken.get() {
            return Err(WaitError::AlreadyTaken);
        }
        self.take(
            self.rx
                .recv_deadline(deadline)
                .map(Delivery::taken)
                .map_err(|e| match e {
                    oneshot::RecvTimeoutError::Timeout => WaitError::Timeout,
                    oneshot::RecvTimeoutError::Disconnected => WaitError::Disconnected,
                }),
        )
    }

    /// What a wait got, remembering that the outcome was taken; once it
    /// was, the channel reads as disconnected, which is not what happened.
    fn take(&self, got: Result<Outcome<O>, WaitError>) -> Result<Outcome<O>, WaitError> {
        match got {
            Ok(outcome) => {
                self.taken.set(true);
                Ok(outcome)
            }
            Err(WaitError::Disconnected) if self.taken.get() => Err(WaitError::AlreadyTaken),
            Err(e) => Err(e),
        }
    }
}

impl<O> IntoFuture for TaskHandle<O> {
    type Output = Result<Outcome<O>, WaitError>;
    type IntoFuture = TaskFuture<O>;

    fn into_future(mut self) -> TaskFuture<O> {
        // The receiver moves to the future; the handle, dropped now, keeps
        // a closed one (so its `Drop` gives nothing back twice).
        let (closed_tx, closed) = oneshot::channel();
        drop(closed_tx);
        let rx = std::mem::replace(&mut self.rx, closed);
        TaskFuture {
            rx: (!self.taken.get()).then(|| rx.into_future()),
        }
    }
}

impl<O> Drop for TaskHandle<O> {
    /// An outcome that arrived and that no wait took goes to the facade's
    /// records (see the type's docs); the task goes on running otherwise.
    fn drop(&mut self) {
        if !self.taken.get() {
            if let Ok(delivery) = self.rx.try_recv() {
                delivery.unclaimed();
            }
        }
    }
}

/// A [`TaskHandle`] being awaited. Runtime-agnostic: it needs nothing but a
/// waker, so tokio, smol, async-std or `futures::executor` all drive it.
///
/// ```
/// # worker_facade::worker::run_if_worker(|t: worker_facade::simple::SimpleTask| Ok::<_, String>(t.solve()));
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
///
/// async fn run(w: &WorkingProcessFacade<SimpleTask>) {
///     let handle = w.submit(SimpleTask::new("one", 0.0)).expect("accepted");
///     let outcome = handle.await; // a TaskFuture
///     println!("{outcome:?}");
/// }
///
/// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
/// futures_executor::block_on(run(&w)); // or any other executor
/// # Ok::<(), worker_facade::SpawnError>(())
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct TaskFuture<O> {
    /// `None` once the outcome was taken.
    rx: Option<oneshot::AsyncReceiver<Delivery<O>>>,
}

impl<O> std::fmt::Debug for TaskFuture<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture")
            .field("taken", &self.rx.is_none())
            .finish()
    }
}

impl<O> Drop for TaskFuture<O> {
    /// As a dropped [`TaskHandle`]: an outcome that arrived and was not
    /// returned goes to the facade's records.
    fn drop(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            return;
        };
        if rx.has_message() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Ok(delivery)) = Pin::new(rx).poll(&mut cx) {
                delivery.unclaimed();
            }
        }
    }
}

impl<O> Future for TaskFuture<O> {
    type Output = Result<Outcome<O>, WaitError>;

    /// Polling again after the outcome was returned gives
    /// `Err(WaitError::AlreadyTaken)`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Err(WaitError::AlreadyTaken));
        };
        let got = std::task::ready!(Pin::new(rx).poll(cx));
        self.rx = None;
        Poll::Ready(
            got.map(Delivery::taken)
                .map_err(|_| WaitError::Disconnected),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (oneshot::Sender<Delivery<String>>, TaskHandle<String>) {
        let (tx, rx) = oneshot::channel();
        let cancel: Canceller = Arc::new(|_| {});
        let cell = Arc::new(ProgressCell::new(None));
        (tx, TaskHandle::new(TaskId(3), rx, cancel, cell))
    }

    fn delivery(outcome: Outcome<String>) -> Delivery<String> {
        Delivery {
            outcome,
            give_back: None,
        }
    }

    /// A handle dropped with its outcome delivered and not taken gives it
    /// back; one that took it, or never had it, gives nothing.
    #[test]
    fn a_dropped_handle_gives_back_only_an_outcome_no_wait_took() {
        let given = Arc::new(std::sync::Mutex::new(Vec::new()));
        let with_give_back = |outcome: &str| {
            let given = given.clone();
            Delivery {
                outcome: Outcome::Completed(outcome.to_string()),
                give_back: Some(Box::new(move |o: Outcome<String>| {
                    given.lock().expect("not poisoned").push(o)
                }) as GiveBack<String>),
            }
        };
        let (tx, h) = handle();
        assert!(tx.send(with_give_back("unread")).is_ok());
        drop(h);
        let (tx, h) = handle();
        assert!(tx.send(with_give_back("read")).is_ok());
        assert!(h.try_wait().is_ok());
        drop(h);
        let (tx, h) = handle();
        assert!(tx.send(with_give_back("unread future")).is_ok());
        drop(h.into_future());
        let (_tx, h) = handle();
        drop(h);
        assert_eq!(
            *given.lock().expect("not poisoned"),
            vec![
                Outcome::Completed("unread".to_string()),
                Outcome::Completed("unread future".to_string())
            ]
        );
    }

    #[test]
    fn an_outcome_taken_once_is_already_taken_for_every_later_wait() {
        let (tx, h) = handle();
        assert_eq!(h.try_wait(), Err(WaitError::Timeout));
        assert!(tx.send(delivery(Outcome::Completed("done".into()))).is_ok());
        assert_eq!(h.try_wait(), Ok(Outcome::Completed("done".into())));
        assert_eq!(h.try_wait(), Err(WaitError::AlreadyTaken));
        assert_eq!(
            h.wait_timeout(Duration::from_millis(1)),
            Err(WaitError::AlreadyTaken)
        );
        assert_eq!(h.wait_timeout(Duration::MAX), Err(WaitError::AlreadyTaken));
        assert_eq!(
            futures_executor::block_on(h.into_future()),
            Err(WaitError::AlreadyTaken)
        );
    }

    #[test]
    fn a_future_polled_after_its_outcome_says_already_taken() {
        let (tx, h) = handle();
        assert!(tx.send(delivery(Outcome::Failed("no".into()))).is_ok());
        let mut future = h.into_future();
        assert_eq!(
            futures_executor::block_on(&mut future),
            Ok(Outcome::Failed("no".into()))
        );
        assert_eq!(
            futures_executor::block_on(&mut future),
            Err(WaitError::AlreadyTaken)
        );
    }

    #[test]
    fn a_sender_gone_without_answering_is_disconnected_not_taken() {
        let (tx, h) = handle();
        drop(tx);
        assert_eq!(h.try_wait(), Err(WaitError::Disconnected));
        assert_eq!(h.wait(), Err(WaitError::Disconnected));
    }
}
