//! [`RemoteFacade`]: the facade's API over agents on other machines.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use worker_facade::{Outcome, Task, TaskId, TaskRecord};

use crate::config::{Cluster, id_of_outcome_key, valid_job};
use crate::error::{ConnectError, RemoteCollectError, RemoteSubmitError, StartError};
use crate::handle::RemoteHandle;
use crate::reasons;
use crate::server::Server;
use crate::wire::{
    self, HEADER_ALLOWANCE, PROTOCOL_WORD, StoredOutcome, StoredTask, TaskMeta, TaskType,
};

/// Set in the task counter once the client accepts no more tasks.
const CLOSED: u64 = 1 << 63;
/// After a collect deadline, how long to wait for the server to take the
/// missing outcomes before giving up on it.
const COLLECT_GRACE: Duration = Duration::from_secs(10);
/// Without news from the outcome watch for this long, pending outcomes are
/// also looked up one by one (a watch can miss a server restart).
const SWEEP_AFTER: Duration = Duration::from_secs(2);
/// How long `Drop` waits for accepted tasks to reach the server.
const DROP_FLUSH: Duration = Duration::from_secs(10);

/// One task with its outcome and where it ran, from
/// [`RemoteFacade::collect_records`].
#[non_exhaustive]
pub struct RemoteRecord<T: Task> {
    /// The task and its outcome, as a local facade returns them.
    pub record: TaskRecord<T>,
    /// The agent that recorded the outcome (`"client"` when the client's
    /// deadline did).
    pub agent: String,
    /// Which delivery of the task produced it (1 for the first; 0 when the
    /// client's deadline did).
    pub attempt: u32,
}

impl<T> fmt::Debug for RemoteRecord<T>
where
    T: Task + fmt::Debug,
    T::Output: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteRecord")
            .field("record", &self.record)
            .field("agent", &self.agent)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl<T> Clone for RemoteRecord<T>
where
    T: Task + Clone,
    T::Output: Clone,
{
    fn clone(&self) -> Self {
        RemoteRecord {
            record: self.record.clone(),
            agent: self.agent.clone(),
            attempt: self.attempt,
        }
    }
}

/// Configures a [`RemoteFacade`].
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use std::time::Duration;
/// use worker_facade::simple::SimpleTask;
/// use worker_facade_nats::{Cluster, RemoteFacade};
///
/// let client = RemoteFacade::<SimpleTask>::builder("nats://127.0.0.1:4222")
///     .cluster(Cluster::named("simple"))
///     .job("nightly-2026-12-01")
///     .task_deadline(Duration::from_secs(3600))
///     .start()?;
/// # Ok::<(), worker_facade_nats::StartError>(())
/// ```
#[must_use = "a builder does nothing until .start() or .resume() is called"]
pub struct RemoteBuilder<T: Task> {
    url: String,
    cluster: Cluster,
    job: Option<String>,
    deadline: Option<Duration>,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> fmt::Debug for RemoteBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBuilder")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("job", &self.job)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<T: Task> RemoteBuilder<T> {
    /// The cluster to send tasks to (default: [`Cluster::default`]). Agents
    /// and clients must agree on it.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = cluster;
        self
    }

    /// The job's name: 1 to 64 letters, digits, `-` or `_` (default: a
    /// unique name). Keep it to [`resume`](Self::resume) the job from another
    /// process.
    pub fn job(mut self, job: impl Into<String>) -> Self {
        self.job = Some(job.into());
        self
    }

    /// A deadline for every task, counted from its submission: a task no
    /// agent has finished by then ends
    /// [`NotRun`](worker_facade::Outcome::NotRun)`(`[`DeadlineExpired`](worker_facade::NotRunReason::DeadlineExpired)`)`
    /// (default: none). The client records it with the same first-writer
    /// rule as agents, so an agent that gets the task later skips it, and an
    /// agent that finishes it later finds the deadline's outcome standing.
    pub fn task_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Connects and starts a new job. Fails with
    /// [`StartError::JobExists`] if the job already has tasks on the server.
    pub fn start(self) -> Result<RemoteFacade<T>, StartError> {
        let job = match self.job.clone() {
            Some(job) => job,
            None => fresh_job_name(),
        };
        RemoteFacade::launch(self, job, false)
    }

    /// Connects and takes up `job`, started earlier by this or another
    /// process (which may have died): every task of the job is known again,
    /// the outcomes already recorded are there, tasks still waiting or
    /// running stay as they are, and tasks that never reached the queue are
    /// sent again. New tasks continue the job's numbering.
    ///
    /// Tasks the earlier process accepted but had not yet stored on the
    /// server when it died are not part of the job (call
    /// [`RemoteFacade::flush`] to be sure they are stored).
    pub fn resume(self, job: impl Into<String>) -> Result<RemoteFacade<T>, StartError> {
        RemoteFacade::launch(self, job.into(), true)
    }
}

fn fresh_job_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host_hash = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!(
        "job-{:x}-{:08x}-{:x}-{:x}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        host_hash & 0xffff_ffff
    )
}

/// Sends tasks to agents on other machines and gives each exactly one
/// outcome, with the API of a local
/// [`WorkingProcessFacade`](worker_facade::WorkingProcessFacade).
///
/// [`process_task`](Self::process_task) never blocks: the task is encoded,
/// checked against the server's size limit, numbered and queued; a thread of
/// the client stores it on the server and publishes it. Agents run it in
/// their local worker processes and record its outcome.
/// [`collect_tasks`](Self::collect_tasks) returns every record in
/// submission order; [`submit`](Self::submit) returns a handle instead.
///
/// **Exactly one outcome per task**: a task's publish is deduplicated by
/// its message ID, and its outcome is written with a create that only the
/// first writer wins (an agent, or this client's deadline). A task may *run*
/// more than once if the agent running it dies (it goes to another agent
/// after `ack_wait`); it never runs again after its worker crashed, which is
/// its outcome.
///
/// The client is `Send + Sync`.
///
/// # Drop
///
/// Dropping a client does not cancel its tasks: it waits (up to 10 s) for
/// accepted tasks to reach the server, then stops its thread. Agents go on
/// running the tasks and the outcomes stay on the server (for
/// [`Cluster::outcome_ttl`]); take them up again with
/// [`RemoteBuilder::resume`] and the [`job`](Self::job) name.
///
/// # Example
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use worker_facade::{Outcome, simple::SimpleTask};
/// use worker_facade_nats::{Cluster, RemoteFacade};
///
/// let client = RemoteFacade::<SimpleTask>::builder("nats://127.0.0.1:4222")
///     .cluster(Cluster::named("simple"))
///     .start()?;
/// client.process_task(SimpleTask::new("one", 1.0))?;
/// client.process_task(SimpleTask::new("two", 2.5))?;
/// for record in client.collect_tasks()? {
///     match record.outcome {
///         Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
///         other => println!("{} - {}", record.task.id, other),
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteFacade<T: Task> {
    job: String,
    tx: mpsc::UnboundedSender<Command<T>>,
    counter: AtomicU64,
    collected: AtomicBool,
    max_task: usize,
    deadline: Option<Duration>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Task> fmt::Debug for RemoteFacade<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFacade")
            .field("job", &self.job)
            .field("closed", &self.is_closed())
            .finish()
    }
}

type Notify<O> = oneshot::Sender<Outcome<O>>;
type Records<T> = Result<Vec<RemoteRecord<T>>, RemoteCollectError>;

enum Command<T: Task> {
    Task {
        id: u64,
        task: T,
        payload: Bytes,
        deadline_ms: Option<u64>,
        notify: Option<Notify<T::Output>>,
    },
    Flush(oneshot::Sender<()>),
    Collect {
        expected: u64,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Records<T>>,
    },
    Shutdown,
}

impl<T: Task> RemoteFacade<T> {
    /// A client of the server at `url`.
    pub fn builder(url: impl Into<String>) -> RemoteBuilder<T> {
        RemoteBuilder {
            url: url.into(),
            cluster: Cluster::default(),
            job: None,
            deadline: None,
            _task: PhantomData,
        }
    }

    fn launch(b: RemoteBuilder<T>, job: String, resume: bool) -> Result<Self, StartError> {
        if !valid_job(&job) {
            return Err(StartError::InvalidJob(job));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let deadline = b.deadline;
        let thread_job = job.clone();
        let thread = thread::Builder::new()
            .name("wf-nats-client".into())
            .spawn(move || client_thread(b, thread_job, resume, rx, ready_tx))
            .map_err(|source| ConnectError::Thread {
                what: "client",
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(ready)) => Ok(RemoteFacade {
                job,
                tx,
                counter: AtomicU64::new(ready.next_id),
                collected: AtomicBool::new(false),
                max_task: ready.max_payload.saturating_sub(HEADER_ALLOWANCE),
                deadline,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ConnectError::Thread {
                    what: "client",
                    source: std::io::Error::other("the client thread ended while starting"),
                }
                .into())
            }
        }
    }

    /// The job's name, to [`resume`](RemoteBuilder::resume) it elsewhere.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Queues `task` and returns its ID. Never blocks: the task is stored
    /// on the server and published by the client's thread.
    ///
    /// Fails, handing the task back, once the client is collected, or when
    /// the task cannot be encoded or is larger than the server's
    /// `max_payload` (1 MB by default: send a reference to large data).
    pub fn process_task(&self, task: T) -> Result<TaskId, RemoteSubmitError<T>> {
        self.send(task, None, self.deadline)
    }

    /// Queues `task` and returns a handle that receives its outcome as soon
    /// as it is recorded. The outcome goes to the handle, not to
    /// `collect_tasks` (unless the handle was dropped by then).
    pub fn submit(&self, task: T) -> Result<RemoteHandle<T::Output>, RemoteSubmitError<T>> {
        self.submit_with_deadline(task, self.deadline)
    }

    /// Like [`submit`](Self::submit), with this task's own deadline
    /// (overriding [`task_deadline`](RemoteBuilder::task_deadline)).
    pub fn submit_with_deadline(
        &self,
        task: T,
        deadline: Option<Duration>,
    ) -> Result<RemoteHandle<T::Output>, RemoteSubmitError<T>> {
        let (notify, rx) = oneshot::channel();
        let id = self.send(task, Some(notify), deadline)?;
        Ok(RemoteHandle::new(id, rx))
    }

    fn send(
        &self,
        task: T,
        notify: Option<Notify<T::Output>>,
        deadline: Option<Duration>,
    ) -> Result<TaskId, RemoteSubmitError<T>> {
        if self.is_closed() {
            return Err(RemoteSubmitError::Closed(task));
        }
        let payload = match wire::encode_task(&task) {
            Ok(payload) => payload,
            Err(reason) => return Err(RemoteSubmitError::Unencodable { task, reason }),
        };
        if payload.len() > self.max_task {
            return Err(RemoteSubmitError::TooLarge {
                task,
                size: payload.len(),
                max: self.max_task,
            });
        }
        let id = self.counter.fetch_add(1, Ordering::AcqRel);
        if id & CLOSED != 0 {
            return Err(RemoteSubmitError::Closed(task));
        }
        let deadline_ms = deadline.map(|d| wire::now_ms().saturating_add(d.as_millis() as u64));
        let cmd = Command::Task {
            id,
            task,
            payload: Bytes::from(payload),
            deadline_ms,
            notify,
        };
        match self.tx.send(cmd) {
            Ok(()) => Ok(TaskId::from_raw(id)),
            Err(mpsc::error::SendError(cmd)) => match cmd {
                Command::Task { task, .. } => Err(RemoteSubmitError::Closed(task)),
                _ => unreachable!("send() only sends tasks"),
            },
        }
    }

    /// Waits at most `timeout` until every task accepted so far is stored on
    /// the server (and so survives this process). `true` when they are.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Flush(reply)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    /// Closes submission and waits for the outcome of every task, then
    /// returns one record per task (those without a live handle) in
    /// submission order. Waits as long as the tasks take; a second call is
    /// [`RemoteCollectError::AlreadyCollected`].
    pub fn collect_tasks(&self) -> Result<Vec<TaskRecord<T>>, RemoteCollectError> {
        Ok(strip(self.collect(None)?))
    }

    /// Like [`collect_tasks`](Self::collect_tasks); once `timeout` has
    /// passed, every task still without an outcome is recorded
    /// [`NotRun`](worker_facade::Outcome::NotRun)`(`[`DeadlineExpired`](worker_facade::NotRunReason::DeadlineExpired)`)`
    /// (first writer wins, so an outcome an agent records at the same moment
    /// may stand instead).
    pub fn collect_tasks_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Vec<TaskRecord<T>>, RemoteCollectError> {
        Ok(strip(self.collect(Instant::now().checked_add(timeout))?))
    }

    /// Like [`collect_tasks_timeout`](Self::collect_tasks_timeout), with a
    /// deadline.
    pub fn collect_tasks_deadline(
        &self,
        deadline: Instant,
    ) -> Result<Vec<TaskRecord<T>>, RemoteCollectError> {
        Ok(strip(self.collect(Some(deadline))?))
    }

    /// Like [`collect_tasks`](Self::collect_tasks), with the agent that
    /// recorded each outcome and the delivery that produced it.
    pub fn collect_records(&self) -> Records<T> {
        self.collect(None)
    }

    fn collect(&self, deadline: Option<Instant>) -> Records<T> {
        if self.collected.swap(true, Ordering::AcqRel) {
            return Err(RemoteCollectError::AlreadyCollected);
        }
        let expected = self.counter.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let (reply, records) = oneshot::channel();
        let gone = || RemoteCollectError::ClientGone {
            job: self.job.clone(),
        };
        let sent = self.tx.send(Command::Collect {
            expected,
            deadline,
            reply,
        });
        let result = match sent {
            Ok(()) => records.recv().map_err(|_| gone()).and_then(|r| r),
            Err(_) => Err(gone()),
        };
        self.join_thread();
        result
    }

    /// Whether the client still accepts tasks.
    pub fn is_closed(&self) -> bool {
        self.counter.load(Ordering::Acquire) & CLOSED != 0
    }

    fn join_thread(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl<T: Task> Drop for RemoteFacade<T> {
    fn drop(&mut self) {
        if !self.collected.load(Ordering::Acquire) {
            self.counter.fetch_or(CLOSED, Ordering::AcqRel);
            let _ = self.flush(DROP_FLUSH);
            let _ = self.tx.send(Command::Shutdown);
        }
        self.join_thread();
    }
}

fn strip<T: Task>(records: Vec<RemoteRecord<T>>) -> Vec<TaskRecord<T>> {
    records.into_iter().map(|r| r.record).collect()
}

/// What the client thread reports once connected.
struct Ready {
    next_id: u64,
    max_payload: usize,
}

/// One task as the client thread tracks it.
struct Entry<T: Task> {
    task: Option<T>,
    notify: Option<Notify<T::Output>>,
    /// The outcome, for `collect_tasks`, once known (and not handed to a
    /// handle).
    outcome: Option<(Outcome<T::Output>, String, u32)>,
    done: bool,
}

/// What the client thread's helpers tell its loop.
enum Event<O> {
    Outcome {
        id: u64,
        outcome: Outcome<O>,
        agent: String,
        attempt: u32,
    },
    Published(u64),
    SweepDone,
    WatchAlive,
}

fn client_thread<T: Task>(
    b: RemoteBuilder<T>,
    job: String,
    resume: bool,
    rx: mpsc::UnboundedReceiver<Command<T>>,
    ready: std::sync::mpsc::Sender<Result<Ready, StartError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("wf-nats-client-blocking")
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(ConnectError::Thread {
                what: "client runtime",
                source,
            }
            .into()));
            return;
        }
    };
    rt.block_on(async move {
        let task_type = TaskType::of::<T>(b.cluster.task_type.as_deref());
        let server = match Server::connect(&b.url, &b.cluster, &job).await {
            Ok(server) => server,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let mut state = ClientState::<T> {
            job: job.clone(),
            cluster: b.cluster.clone(),
            task_type,
            server,
            entries: Vec::new(),
            published: 0,
            pending: 0,
            deadlines: BinaryHeap::new(),
            flushes: Vec::new(),
            collect: None,
            finished: false,
            sweeping: false,
            last_news: Instant::now(),
        };
        let loaded = if resume {
            state.load_job().await
        } else {
            state.check_new_job().await
        };
        let unpublished = match loaded {
            Ok(unpublished) => unpublished,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(Ready {
            next_id: state.entries.len() as u64,
            max_payload: state.server.max_payload(),
        }));
        state.run(rx, unpublished).await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

struct ClientState<T: Task> {
    job: String,
    cluster: Cluster,
    task_type: TaskType,
    server: Server,
    entries: Vec<Entry<T>>,
    /// Tasks stored and published, in order: `0..published`.
    published: u64,
    /// Tasks without an outcome yet.
    pending: usize,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    collect: Option<Collect<T>>,
    /// The collect was answered (or given up): the thread ends.
    finished: bool,
    sweeping: bool,
    last_news: Instant,
}

/// A `collect_tasks` waiting for the last outcomes.
struct Collect<T: Task> {
    /// How many tasks were accepted when submission closed.
    expected: u64,
    /// When to record `DeadlineExpired` for the tasks still pending.
    deadline: Option<Instant>,
    /// When to stop waiting for the server to take those records.
    give_up: Option<Instant>,
    reply: oneshot::Sender<Records<T>>,
}

/// A task on its way to the server.
struct Outgoing {
    meta: TaskMeta,
    stored: Bytes,
    payload: Bytes,
}

impl<T: Task> ClientState<T> {
    async fn check_new_job(&mut self) -> Result<Vec<Outgoing>, StartError> {
        match self.server.store.task(&self.job, 0).await {
            Ok(Some(_)) => Err(StartError::JobExists(self.job.clone())),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(StartError::Resume {
                job: self.job.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// Reads the job's tasks back; returns those that never reached the
    /// queue, to send again.
    async fn load_job(&mut self) -> Result<Vec<Outgoing>, StartError> {
        let fail = |detail: String| StartError::Resume {
            job: self.job.clone(),
            detail,
        };
        let mut resend = Vec::new();
        for id in 0.. {
            let Some(bytes) = self
                .server
                .store
                .task(&self.job, id)
                .await
                .map_err(|e| fail(e.to_string()))?
            else {
                break;
            };
            let stored: StoredTask = wire::decode_stored(self.task_type.fingerprint, &bytes)
                .map_err(|e| fail(format!("task {id}: {e}")))?;
            let task: T =
                wire::decode_task(&stored.payload).map_err(|e| fail(format!("task {id}: {e}")))?;
            self.entries.push(Entry {
                task: Some(task),
                notify: None,
                outcome: None,
                done: false,
            });
            self.pending += 1;
            if let Some(at) = stored.deadline_ms.map(instant_of_ms) {
                self.deadlines.push(Reverse((at, id)));
            }
            // Recorded, or still in the queue: nothing to do. Neither: it
            // never reached the queue (outcomes are recorded before the
            // task leaves it, so look at the outcome again last).
            let recorded = |s: &Self| {
                let store = s.server.store.clone();
                let job = s.job.clone();
                async move { store.outcome(&job, id).await.map(|o| o.is_some()) }
            };
            if recorded(self).await.map_err(|e| fail(e.to_string()))? {
                continue;
            }
            let waiting = self
                .server
                .task_waiting(&self.cluster, &self.job, id)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if waiting || recorded(self).await.map_err(|e| fail(e.to_string()))? {
                continue;
            }
            resend.push(self.outgoing(id, stored.deadline_ms, Bytes::from(stored.payload)));
        }
        if self.entries.is_empty() {
            return Err(StartError::NoSuchJob(self.job.clone()));
        }
        self.published = self.entries.len() as u64;
        Ok(resend)
    }

    fn outgoing(&self, id: u64, deadline_ms: Option<u64>, payload: Bytes) -> Outgoing {
        let meta = TaskMeta {
            job: self.job.clone(),
            id,
            protocol: PROTOCOL_WORD,
            task_type: self.task_type.name.clone(),
            fingerprint: self.task_type.fingerprint,
            deadline_ms,
        };
        let stored = StoredTask {
            deadline_ms,
            payload: payload.to_vec(),
        };
        // A StoredTask is a byte vector and an integer: it always encodes.
        let stored = wire::encode_stored(self.task_type.fingerprint, &stored).unwrap_or_default();
        Outgoing {
            meta,
            stored: Bytes::from(stored),
            payload,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command<T>>, resend: Vec<Outgoing>) {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event<T::Output>>();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(publisher(
            self.server.clone(),
            self.cluster.clone(),
            out_rx,
            events_tx.clone(),
        ));
        helpers.spawn(watcher(
            self.server.clone(),
            self.job.clone(),
            self.task_type.fingerprint,
            events_tx.clone(),
        ));
        for out in resend {
            let _ = out_tx.send(out);
        }
        let mut sweep = tokio::time::interval(SWEEP_AFTER);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.try_finish_collect() {
                break;
            }
            let next_deadline = self.next_deadline();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Task { id, task, payload, deadline_ms, notify }) => {
                        self.accept(id, task, notify, deadline_ms);
                        let _ = out_tx.send(self.outgoing(id, deadline_ms, payload));
                    }
                    Some(Command::Flush(reply)) => {
                        let upto = self.entries.len() as u64;
                        if self.published >= upto {
                            let _ = reply.send(());
                        } else {
                            self.flushes.push((upto, reply));
                        }
                    }
                    Some(Command::Collect { expected, deadline, reply }) => {
                        self.collect = Some(Collect { expected, deadline, give_up: None, reply });
                    }
                    Some(Command::Shutdown) | None => break,
                },
                Some(event) = events.recv() => self.on_event(event),
                _ = sleep_until(next_deadline) => self.expire_due(&mut helpers),
                _ = sweep.tick() => self.maybe_sweep(&mut helpers, &events_tx),
            }
            while helpers.try_join_next().is_some() {}
        }
        helpers.abort_all();
        while helpers.join_next().await.is_some() {}
    }

    fn accept(
        &mut self,
        id: u64,
        task: T,
        notify: Option<Notify<T::Output>>,
        deadline_ms: Option<u64>,
    ) {
        // IDs arrive in order from one counter; a gap cannot happen, but an
        // ID beyond the end would break the ledger, so keep it dense.
        while (self.entries.len() as u64) < id {
            self.entries.push(Entry {
                task: None,
                notify: None,
                outcome: None,
                done: true,
            });
        }
        self.entries.push(Entry {
            task: Some(task),
            notify,
            outcome: None,
            done: false,
        });
        self.pending += 1;
        if let Some(at) = deadline_ms.map(instant_of_ms) {
            self.deadlines.push(Reverse((at, id)));
        }
    }

    fn on_event(&mut self, event: Event<T::Output>) {
        self.last_news = Instant::now();
        match event {
            Event::Outcome {
                id,
                outcome,
                agent,
                attempt,
            } => self.deliver(id, outcome, agent, attempt),
            Event::Published(upto) => {
                self.published = self.published.max(upto);
                let published = self.published;
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
                    .into_iter()
                    .partition(|(upto, _)| *upto <= published);
                self.flushes = waiting;
                for (_, reply) in done {
                    let _ = reply.send(());
                }
            }
            Event::SweepDone => self.sweeping = false,
            Event::WatchAlive => {}
        }
    }

    /// The first outcome of a task is its outcome; later ones cannot exist
    /// (first writer wins) and are ignored.
    fn deliver(&mut self, id: u64, outcome: Outcome<T::Output>, agent: String, attempt: u32) {
        let Some(entry) = usize::try_from(id)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        else {
            return;
        };
        if entry.done {
            return;
        }
        entry.done = true;
        self.pending -= 1;
        match entry.notify.take() {
            Some(notify) => match notify.send(outcome) {
                Ok(()) => {
                    entry.task = None;
                }
                Err(unsent) => entry.outcome = Some((unsent.into_inner(), agent, attempt)),
            },
            None => entry.outcome = Some((outcome, agent, attempt)),
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        // Skip deadlines of tasks already done.
        while let Some(Reverse((_, id))) = self.deadlines.peek() {
            let done = usize::try_from(*id)
                .ok()
                .and_then(|i| self.entries.get(i))
                .is_none_or(|e| e.done);
            if done {
                self.deadlines.pop();
            } else {
                break;
            }
        }
        let task = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let collect = self.collect.as_ref().and_then(|c| c.deadline.or(c.give_up));
        match (task, collect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records `DeadlineExpired` for every task past its deadline (and for
    /// every pending task once the collect deadline passed).
    fn expire_due(&mut self, helpers: &mut tokio::task::JoinSet<()>) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            due.push(id);
        }
        if let Some(collect) = &mut self.collect {
            if collect.deadline.is_some_and(|at| at <= now) {
                collect.deadline = None;
                collect.give_up = Some(now + COLLECT_GRACE);
                due.extend(
                    self.entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| !e.done)
                        .map(|(i, _)| i as u64),
                );
            } else if collect.give_up.is_some_and(|at| at <= now) {
                // The server did not take the missing outcomes in time.
                if let Some(collect) = self.collect.take() {
                    let _ = collect.reply.send(Err(RemoteCollectError::Unreachable {
                        job: self.job.clone(),
                        pending: self.pending,
                    }));
                }
                self.finished = true;
                return;
            }
        }
        due.sort_unstable();
        due.dedup();
        let due: Vec<u64> = due
            .into_iter()
            .filter(|id| {
                usize::try_from(*id)
                    .ok()
                    .and_then(|i| self.entries.get(i))
                    .is_some_and(|e| !e.done)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let store = self.server.store.clone();
        let job = self.job.clone();
        let fingerprint = self.task_type.fingerprint;
        helpers.spawn(async move {
            let expired = StoredOutcome::<T::Output> {
                agent: "client".into(),
                attempt: 0,
                outcome: reasons::deadline_expired(),
            };
            let Ok(bytes) = wire::encode_stored(fingerprint, &expired) else {
                return;
            };
            let bytes = Bytes::from(bytes);
            for id in due {
                // The watch brings back whichever outcome won.
                let mut delay = Duration::from_millis(50);
                while store.record_first(&job, id, bytes.clone()).await.is_err() {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        });
    }

    /// Looks pending outcomes up one by one when the watch has been quiet.
    fn maybe_sweep(
        &mut self,
        helpers: &mut tokio::task::JoinSet<()>,
        events: &mpsc::UnboundedSender<Event<T::Output>>,
    ) {
        if self.sweeping || self.pending == 0 || self.last_news.elapsed() < SWEEP_AFTER {
            return;
        }
        self.sweeping = true;
        let ids: Vec<u64> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.done)
            .map(|(i, _)| i as u64)
            .collect();
        let store = self.server.store.clone();
        let job = self.job.clone();
        let fingerprint = self.task_type.fingerprint;
        let events = events.clone();
        helpers.spawn(async move {
            for id in ids {
                match store.outcome(&job, id).await {
                    Ok(Some(bytes)) => {
                        let _ = events.send(read_outcome(fingerprint, id, &bytes));
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            let _ = events.send(Event::SweepDone);
        });
    }

    /// Answers a pending collect once every task has its outcome.
    fn try_finish_collect(&mut self) -> bool {
        if self.finished {
            return true;
        }
        let Some(collect) = &self.collect else {
            return false;
        };
        if (self.entries.len() as u64) < collect.expected || self.pending > 0 {
            return false;
        }
        let Some(Collect { reply, .. }) = self.collect.take() else {
            return false;
        };
        let mut records = Vec::new();
        for (i, entry) in self.entries.drain(..).enumerate() {
            if let (Some(task), Some((outcome, agent, attempt))) = (entry.task, entry.outcome) {
                records.push(RemoteRecord {
                    record: TaskRecord {
                        id: TaskId::from_raw(i as u64),
                        task,
                        outcome,
                    },
                    agent,
                    attempt,
                });
            }
        }
        let _ = reply.send(Ok(records));
        true
    }
}

/// Decodes a recorded outcome; one that cannot be read becomes a `NotRun`
/// saying why, so the task still has exactly one outcome.
fn read_outcome<O: serde::de::DeserializeOwned>(
    fingerprint: u64,
    id: u64,
    bytes: &[u8],
) -> Event<O> {
    match wire::decode_stored::<StoredOutcome<O>>(fingerprint, bytes) {
        Ok(stored) => Event::Outcome {
            id,
            outcome: stored.outcome,
            agent: stored.agent,
            attempt: stored.attempt,
        },
        Err(e) => Event::Outcome {
            id,
            outcome: reasons::unreadable_outcome(&e.to_string()),
            agent: String::new(),
            attempt: 0,
        },
    }
}

/// How many tasks one round trip to the server stores and publishes.
const PUBLISH_WINDOW: usize = 256;

/// Stores and publishes tasks in order, a window at a time, retrying a
/// window until the server has all of it (publishes are deduplicated by
/// message ID, so a retry after a lost acknowledgement is harmless).
async fn publisher<O: Send + 'static>(
    server: Server,
    cluster: Cluster,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::UnboundedSender<Event<O>>,
) {
    let mut window = Vec::with_capacity(PUBLISH_WINDOW);
    while let Some(first) = queue.recv().await {
        window.clear();
        window.push((first.meta, first.stored, first.payload));
        while window.len() < PUBLISH_WINDOW {
            match queue.try_recv() {
                Ok(out) => window.push((out.meta, out.stored, out.payload)),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        while server.store_and_publish(&cluster, &window).await.is_err() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        if let Some((meta, _, _)) = window.last() {
            let _ = events.send(Event::Published(meta.id + 1));
        }
    }
}

/// Follows the job's outcomes as they are recorded, from the beginning;
/// after an error it watches again from the last revision it saw.
async fn watcher<O: serde::de::DeserializeOwned + Send + 'static>(
    server: Server,
    job: String,
    fingerprint: u64,
    events: mpsc::UnboundedSender<Event<O>>,
) {
    let mut last: Option<u64> = None;
    loop {
        let watch = server.store.watch_outcomes(&job, last).await;
        if let Ok(mut watch) = watch {
            let _ = events.send(Event::WatchAlive);
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                last = Some(entry.revision);
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                let Some(id) = id_of_outcome_key(&job, &entry.key) else {
                    continue;
                };
                if events
                    .send(read_outcome(fingerprint, id, &entry.value))
                    .is_err()
                {
                    return;
                }
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The local instant of a wall-clock time in milliseconds since the epoch.
fn instant_of_ms(ms: u64) -> Instant {
    let now_ms = wire::now_ms();
    let now = Instant::now();
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    }
}
