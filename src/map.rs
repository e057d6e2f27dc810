//! `map` and `map_unordered` over a facade or a grinder: an iterator of
//! outcomes that submits its input lazily, keeping at most `ahead` tasks in
//! flight, so a ten-million-element input never queues ten million tasks.
//!
//! How it flows: each accepted task's future (a [`TaskHandle`]'s or a
//! [`GrindHandle`]) sits in `pending` under its input index, with a waker of
//! its own that records the index in `woken` and signals the condition
//! variable. `next` polls only the futures that were woken, moves finished
//! ones to `done`, and waits on the condition variable when nothing is
//! ready. The ordered form yields `done` in input order; the unordered form
//! yields whatever finished first. A refused task (`SubmitError`, or the
//! grinder's refusal) is an item of its own, in its place.
//!
//! [`TaskHandle`]: crate::TaskHandle
//! [`GrindHandle`]: crate::GrindHandle

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::iter::Fuse;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::error::{SubmitError, WaitError};
use crate::facade::WorkingProcessFacade;
use crate::grinder::{GrindHandle, ItemError, WorkError, WorkGrinder};
use crate::handle::TaskFuture;
use crate::task::{CancelReason, NotRunReason, Outcome, Task};

/// Tasks in flight at most, unless [`Map::ahead`] says otherwise: enough to
/// keep the engine's window of tiny tasks full.
pub const DEFAULT_AHEAD: usize = 1024;

/// Indices whose futures were woken, and the wait for the next.
#[derive(Default)]
struct Woken {
    ready: Mutex<Vec<usize>>,
    signal: Condvar,
}

struct SlotWaker {
    index: usize,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self
            .woken
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ready.push(self.index);
        self.woken.signal.notify_one();
    }
}

type Cancel = Box<dyn Fn() + Send + Sync>;

struct Pending<F> {
    future: Pin<Box<F>>,
    waker: Waker,
    /// Cancels the task when the map is dropped before its outcome.
    cancel: Option<Cancel>,
}

/// What `map` needs of a facade or a grinder.
trait Source<T> {
    type Future: Future;
    type Item;
    fn submit(&self, task: T) -> Result<(Self::Future, Option<Cancel>), Self::Item>;
    fn finish(output: <Self::Future as Future>::Output) -> Self::Item;
}

impl<T: Task> Source<T> for WorkingProcessFacade<T> {
    type Future = TaskFuture<T::Output>;
    type Item = Result<Outcome<T::Output>, SubmitError<T>>;

    fn submit(&self, task: T) -> Result<(Self::Future, Option<Cancel>), Self::Item> {
        let (future, cancel) = self.submit(task).map_err(Err)?.into_parts();
        Ok((future, Some(cancel)))
    }

    fn finish(output: Result<Outcome<T::Output>, WaitError>) -> Self::Item {
        Ok(output.unwrap_or_else(|_| {
            Outcome::NotRun(NotRunReason::Cancelled(CancelReason::Terminated(
                "the facade's engine ended before this task had an outcome".into(),
            )))
        }))
    }
}

impl<T: Task> Source<T> for WorkGrinder<T> {
    type Future = GrindHandle<T::Output>;
    type Item = Result<T::Output, ItemError<T>>;

    fn submit(&self, task: T) -> Result<(Self::Future, Option<Cancel>), Self::Item> {
        let handle = self.enqueue(task).map_err(|e| Err(ItemError::Refused(e)))?;
        // Dropping a handle lets its item run: the map cancels explicitly.
        let cancel = handle.canceller();
        Ok((handle, Some(cancel)))
    }

    fn finish(output: Result<Result<T::Output, WorkError>, WaitError>) -> Self::Item {
        // Each handle is polled until it is ready, once: the only waiting
        // error left would be a reply lost, which answers `Lost` itself.
        output
            .unwrap_or(Err(WorkError::Lost))
            .map_err(ItemError::Work)
    }
}

/// The look-ahead machinery both orders share.
struct Core<'a, S: Source<I::Item>, I: Iterator> {
    source: &'a S,
    input: Fuse<I>,
    ahead: usize,
    submitted: usize,
    /// The input index the ordered form yields next.
    next_out: usize,
    pending: HashMap<usize, Pending<S::Future>>,
    done: BTreeMap<usize, S::Item>,
    woken: Arc<Woken>,
}

impl<'a, S: Source<I::Item>, I: Iterator> Core<'a, S, I> {
    fn new(source: &'a S, input: I) -> Self {
        Core {
            source,
            input: input.fuse(),
            ahead: DEFAULT_AHEAD,
            submitted: 0,
            next_out: 0,
            pending: HashMap::new(),
            done: BTreeMap::new(),
            woken: Arc::default(),
        }
    }

    /// Submits input until `ahead` tasks are in flight or finished unread.
    fn fill(&mut self) {
        while self.pending.len() + self.done.len() < self.ahead {
            let Some(task) = self.input.next() else {
                return;
            };
            let index = self.submitted;
            self.submitted += 1;
            match self.source.submit(task) {
                Ok((future, cancel)) => {
                    let waker = Waker::from(Arc::new(SlotWaker {
                        index,
                        woken: self.woken.clone(),
                    }));
                    // Polled once by the next `poll_woken`.
                    waker.wake_by_ref();
                    self.pending.insert(
                        index,
                        Pending {
                            future: Box::pin(future),
                            waker,
                            cancel,
                        },
                    );
                }
                Err(refused) => {
                    self.done.insert(index, refused);
                }
            }
        }
    }

    /// Polls the futures that were woken; `true` if any finished.
    fn poll_woken(&mut self) -> bool {
        let ready = std::mem::take(
            &mut *self
                .woken
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut finished = false;
        for index in ready {
            let Some(p) = self.pending.get_mut(&index) else {
                continue; // woken twice, or finished already
            };
            let mut cx = Context::from_waker(&p.waker);
            if let Poll::Ready(output) = p.future.as_mut().poll(&mut cx) {
                self.pending.remove(&index);
                self.done.insert(index, S::finish(output));
                finished = true;
            }
        }
        finished
    }

    /// Blocks until some future is woken.
    fn wait(&self) {
        let mut ready = self
            .woken
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while ready.is_empty() {
            ready = self
                .woken
                .signal
                .wait(ready)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next item in input order.
    fn next_ordered(&mut self) -> Option<S::Item> {
        loop {
            self.fill();
            if let Some(item) = self.done.remove(&self.next_out) {
                self.next_out += 1;
                return Some(item);
            }
            if self.pending.is_empty() {
                return None;
            }
            if !self.poll_woken() {
                self.wait();
            }
        }
    }

    /// The next item to finish, with its input index.
    fn next_unordered(&mut self) -> Option<(usize, S::Item)> {
        loop {
            self.fill();
            if let Some(first) = self.done.pop_first() {
                return Some(first);
            }
            if self.pending.is_empty() {
                return None;
            }
            if !self.poll_woken() {
                self.wait();
            }
        }
    }
}

impl<S: Source<I::Item>, I: Iterator> Drop for Core<'_, S, I> {
    fn drop(&mut self) {
        for p in self.pending.values() {
            if let Some(cancel) = &p.cancel {
                cancel();
            }
        }
    }
}

macro_rules! map_type {
    ($(#[$doc:meta])* $name:ident, $source:ident, $item:ty, $next:ident) => {
        $(#[$doc])*
        #[must_use = "iterators are lazy: nothing is submitted until it is iterated"]
        pub struct $name<'a, T: Task, I: Iterator<Item = T>> {
            core: Core<'a, $source<T>, I>,
        }

        impl<'a, T: Task, I: Iterator<Item = T>> $name<'a, T, I> {
            pub(crate) fn new(source: &'a $source<T>, input: I) -> Self {
                $name {
                    core: Core::new(source, input),
                }
            }

            /// Keeps at most `n` tasks in flight (at least 1; the default
            /// is [`DEFAULT_AHEAD`]). Set it before iterating.
            pub fn ahead(mut self, n: usize) -> Self {
                self.core.ahead = n.max(1);
                self
            }
        }

        impl<T: Task, I: Iterator<Item = T>> Iterator for $name<'_, T, I> {
            type Item = $item;

            fn next(&mut self) -> Option<Self::Item> {
                map_type!(@next self, $next)
            }
        }

        impl<T: Task, I: Iterator<Item = T>> std::fmt::Debug for $name<'_, T, I> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("ahead", &self.core.ahead)
                    .field("submitted", &self.core.submitted)
                    .field("in_flight", &self.core.pending.len())
                    .finish()
            }
        }
    };
    (@next $self:ident, ordered) => { $self.core.next_ordered() };
    (@next $self:ident, unordered) => { $self.core.next_unordered() };
}

map_type!(
    /// Outcomes of a facade's tasks in input order, from
    /// [`WorkingProcessFacade::map`]. Each item is the task's outcome, or the
    /// refusal that handed the task back (`SubmitError`).
    ///
    /// # Drop
    ///
    /// Tasks still in flight are cancelled
    /// ([`TaskHandle::cancel`](crate::TaskHandle::cancel)); their records,
    /// cancelled or finished, go to `collect_tasks`. Outcomes that had
    /// reached the map but were not yet yielded are discarded with it.
    /// Input not yet taken is never submitted.
    ///
    /// ```
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe())
    ///     .workers(2)
    ///     .spawn()?;
    /// let names = (0..100).map(|i| SimpleTask::new(&i.to_string(), 0.0));
    /// let outputs: Vec<String> = w
    ///     .map(names)
    ///     .ahead(16) // at most 16 tasks in flight
    ///     .filter_map(|r| r.ok()?.completed())
    ///     .collect();
    /// assert_eq!(outputs[7], "7 solved after 0");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    Map,
    WorkingProcessFacade,
    Result<Outcome<T::Output>, SubmitError<T>>,
    ordered
);

map_type!(
    /// Outcomes of a facade's tasks as they finish, each with its input
    /// index, from [`WorkingProcessFacade::map_unordered`]. Drop behaves as
    /// [`Map`]'s.
    ///
    /// ```
    /// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
    ///
    /// worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
    ///
    /// let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    /// let tasks = ["slow", "fast"].map(|n| SimpleTask::new(n, if n == "slow" { 0.3 } else { 0.0 }));
    /// for (index, outcome) in w.map_unordered(tasks) {
    ///     println!("input {index}: {:?}", outcome?);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    MapUnordered,
    WorkingProcessFacade,
    (usize, Result<Outcome<T::Output>, SubmitError<T>>),
    unordered
);

map_type!(
    /// Results of a grinder's items in input order, from
    /// [`WorkGrinder::map`]; each is what [`WorkGrinder::submit`] would
    /// return for it.
    ///
    /// # Drop
    ///
    /// Items not yet on a worker are removed
    /// ([`GrindHandle::cancel`](crate::GrindHandle::cancel)); items already
    /// running finish and their results are discarded. Input not yet taken
    /// is never submitted.
    ///
    /// ```
    /// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) {
    /// use worker_facade::simple::SimpleTask;
    ///
    /// let tasks = (0..1000).map(|i| SimpleTask::new(&i.to_string(), 0.0));
    /// let solved = grinder.map(tasks).filter(|r| r.is_ok()).count();
    /// println!("{solved} of 1000 solved");
    /// # }
    /// ```
    GrindMap,
    WorkGrinder,
    Result<T::Output, ItemError<T>>,
    ordered
);

map_type!(
    /// Results of a grinder's items as they finish, each with its input
    /// index, from [`WorkGrinder::map_unordered`]. Drop behaves as
    /// [`GrindMap`]'s.
    ///
    /// ```
    /// # fn demo(grinder: &worker_facade::WorkGrinder<worker_facade::simple::SimpleTask>) {
    /// use worker_facade::simple::SimpleTask;
    ///
    /// let tasks = (0..10).map(|i| SimpleTask::new(&i.to_string(), 0.0));
    /// for (index, result) in grinder.map_unordered(tasks) {
    ///     println!("item {index}: {result:?}");
    /// }
    /// # }
    /// ```
    GrindMapUnordered,
    WorkGrinder,
    (usize, Result<T::Output, ItemError<T>>),
    unordered
);
