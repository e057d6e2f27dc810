//! [`Agent`]: one per machine. Pulls tasks as fast as it has free local
//! workers, runs each in a local worker process, records the outcome (first
//! writer wins), then acknowledges the task.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use worker_facade::{FacadeBuilder, Outcome, Task};

use crate::config::Cluster;
use crate::error::{AgentError, ConnectError};
use crate::local::{LocalResult, LocalWorkers};
use crate::reasons;
use crate::server::Server;
use crate::store::Recorded;
use crate::wire::{self, PROTOCOL_WORD, StoredOutcome, TaskMeta, TaskType};

/// How long one pull request waits for tasks before asking again.
const PULL_EXPIRES: Duration = Duration::from_millis(500);

/// A task whose outcome this agent has just recorded, as passed to
/// [`AgentBuilder::on_recorded`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedTask {
    /// The client's job.
    pub job: String,
    /// The task's number within the job (its [`TaskId`](worker_facade::TaskId)).
    pub id: u64,
    /// Which delivery of the task this was (1 for the first).
    pub attempt: u32,
    /// The outcome's kind (`"completed"`, `"crashed"`, ...).
    pub kind: &'static str,
}

/// What an agent did over its life, returned when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AgentReport {
    /// Outcomes this agent recorded (its write was the first).
    pub recorded: u64,
    /// Tasks it acknowledged without running, their outcome already there.
    pub skipped: u64,
    /// Tasks it gave back to the server for another agent.
    pub handed_back: u64,
}

type Hook = Arc<dyn Fn(&RecordedTask) + Send + Sync>;

/// Configures an [`Agent`].
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use std::time::Duration;
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// use worker_facade_nats::{Agent, Cluster};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
///
///     let local = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe())
///         .task_timeout(Duration::from_secs(600));
///     let report = Agent::builder("nats://127.0.0.1:4222", local)
///         .cluster(Cluster::named("simple"))
///         .workers(4)
///         .run()?; // until SIGTERM or SIGINT
///     eprintln!("{report:?}");
///     Ok(())
/// }
/// ```
#[must_use = "a builder does nothing until .spawn() or .run() is called"]
pub struct AgentBuilder<T: Task> {
    url: String,
    local: FacadeBuilder<T>,
    cluster: Cluster,
    workers: usize,
    prefetch: Option<usize>,
    name: String,
    shutdown_grace: Duration,
    on_recorded: Option<Hook>,
}

impl<T: Task> fmt::Debug for AgentBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch)
            .field("name", &self.name)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl<T: Task> AgentBuilder<T> {
    /// The cluster to serve (default: [`Cluster::default`]). Agents and
    /// clients must agree on it.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = cluster;
        self
    }

    /// How many local worker processes run tasks at once (default 1). The
    /// agent pulls a task only when one of them is free.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How many tasks the agent takes beyond its free workers, so that the
    /// next task is already here when a worker frees up (default 0: a task
    /// is pulled only for a free worker). Tasks waiting here get heartbeats
    /// too, so they stay with this agent. The price: if the agent dies,
    /// they go to another agent after `ack_wait` like the running ones, and
    /// that delivery counts against their
    /// [`max_attempts`](Cluster::max_attempts).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// The agent's name, recorded with each outcome it writes (default: the
    /// host name and process ID).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// On shutdown, how long running tasks may take to finish before they
    /// are handed back to the server for another agent (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Called after this agent recorded an outcome and before it
    /// acknowledges the task: for logs and metrics. It runs on the agent's
    /// thread; keep it short.
    pub fn on_recorded(mut self, hook: impl Fn(&RecordedTask) + Send + Sync + 'static) -> Self {
        self.on_recorded = Some(Arc::new(hook));
        self
    }

    /// Connects, starts the local workers, and serves tasks on a thread of
    /// its own until [`Agent::shutdown`] (or the agent's `Drop`).
    pub fn spawn(self) -> Result<Agent<T>, AgentError> {
        self.start(false)
    }

    /// Like [`spawn`](Self::spawn), then serves until the process gets
    /// SIGTERM or SIGINT, shuts down gracefully and returns what it did.
    pub fn run(self) -> Result<AgentReport, AgentError> {
        Ok(self.start(true)?.join())
    }

    fn start(self, signals: bool) -> Result<Agent<T>, AgentError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = self.name.clone();
        let thread = thread::Builder::new()
            .name("wf-nats-agent".into())
            .spawn(move || agent_thread(self, signals, stop_rx, ready_tx))
            .map_err(|source| ConnectError::Thread {
                what: "agent",
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Agent {
                name,
                stop: stop_tx,
                thread: Some(thread),
                _task: PhantomData,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ConnectError::Thread {
                    what: "agent",
                    source: std::io::Error::other("the agent thread ended while starting"),
                }
                .into())
            }
        }
    }
}

/// Serves tasks of type `T` from the server on this machine: pulls a task
/// whenever a local worker is free, runs it in that worker process, records
/// the outcome and acknowledges the task.
///
/// A crash of a local worker is an outcome like any other
/// ([`Crashed`](worker_facade::Outcome::Crashed), with the signal and the
/// worker's last stderr lines): it is recorded, acknowledged and never run
/// again. While a task runs, the agent sends a heartbeat three times per
/// [`ack_wait`](Cluster::ack_wait), so long tasks stay with it. If the agent
/// itself dies (or loses the server for longer than `ack_wait`), its tasks
/// go to other agents after `ack_wait`: **a task can run more than once when
/// its agent dies, never when its worker crashes.** A task already recorded
/// is acknowledged and skipped, so it still has exactly one outcome.
///
/// # Drop
///
/// Dropping an agent shuts it down as [`shutdown`](Self::shutdown) does:
/// it stops pulling, gives running tasks the
/// [`shutdown_grace`](AgentBuilder::shutdown_grace) to finish, hands the
/// rest back to the server, then stops and reaps its worker processes and
/// joins its thread.
///
/// # Example
///
/// ```no_run
/// // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
/// use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
/// use worker_facade_nats::Agent;
///
/// worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
/// let local = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe());
/// let agent = Agent::builder("nats://127.0.0.1:4222", local).workers(2).spawn()?;
/// // ... tasks are served while this program does other things ...
/// let report = agent.shutdown();
/// println!("recorded {} outcomes", report.recorded);
/// # Ok::<(), worker_facade_nats::AgentError>(())
/// ```
pub struct Agent<T: Task> {
    name: String,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<AgentReport>>,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> fmt::Debug for Agent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent").field("name", &self.name).finish()
    }
}

impl<T: Task> Agent<T> {
    /// An agent connecting to the server at `url` (such as
    /// `nats://10.0.0.5:4222`), running tasks in local workers configured by
    /// `local` (the worker command, task timeout, memory limit...).
    pub fn builder(url: impl Into<String>, local: FacadeBuilder<T>) -> AgentBuilder<T> {
        AgentBuilder {
            url: url.into(),
            local,
            cluster: Cluster::default(),
            workers: 1,
            prefetch: None,
            name: default_name(),
            shutdown_grace: Duration::from_secs(10),
            on_recorded: None,
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops pulling, lets running tasks finish within the shutdown grace,
    /// hands the others back, stops the workers, and returns what it did.
    pub fn shutdown(mut self) -> AgentReport {
        let _ = self.stop.send(true);
        self.join_thread()
    }

    /// Waits until the agent stops (by a signal, for an agent started with
    /// [`AgentBuilder::run`]).
    fn join(mut self) -> AgentReport {
        self.join_thread()
    }

    fn join_thread(&mut self) -> AgentReport {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            _ => AgentReport::default(),
        }
    }
}

impl<T: Task> Drop for Agent<T> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.join_thread();
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "agent".into());
    format!("{host}-{}", std::process::id())
}

/// What every task of an agent shares.
struct Ctx<T: Task> {
    name: String,
    cluster: Cluster,
    task_type: TaskType,
    server: Server,
    local: Arc<LocalWorkers<T>>,
    /// How many tasks the agent holds at once: its workers plus the
    /// prefetch.
    held: Arc<Semaphore>,
    on_recorded: Option<Hook>,
    /// Set once running tasks are to be handed back, not recorded.
    handing_back: AtomicBool,
    recorded: AtomicU64,
    skipped: AtomicU64,
    handed_back: AtomicU64,
}

impl<T: Task> Ctx<T> {
    fn log(&self, what: fmt::Arguments<'_>) {
        eprintln!("worker-facade-nats agent {}: {what}", self.name);
    }

    fn report(&self) -> AgentReport {
        AgentReport {
            recorded: self.recorded.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            handed_back: self.handed_back.load(Ordering::Relaxed),
        }
    }
}

fn agent_thread<T: Task>(
    b: AgentBuilder<T>,
    signals: bool,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), AgentError>>,
) -> AgentReport {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("wf-nats-agent-blocking")
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(ConnectError::Thread {
                what: "agent runtime",
                source,
            }
            .into()));
            return AgentReport::default();
        }
    };
    let report = rt.block_on(async move {
        let started = async {
            let server = Server::connect(&b.url, &b.cluster, &b.name).await?;
            let consumer = server.agents_consumer(&b.cluster).await?;
            let local_builder = b.local.clone();
            let workers = b.workers;
            let local =
                tokio::task::spawn_blocking(move || LocalWorkers::start(local_builder, workers))
                    .await
                    .map_err(|e| ConnectError::Thread {
                        what: "worker start-up",
                        source: std::io::Error::other(e.to_string()),
                    })??;
            Ok::<_, AgentError>((server, consumer, local))
        };
        let (server, consumer, local) = match started.await {
            Ok(parts) => parts,
            Err(e) => {
                let _ = ready.send(Err(e));
                return AgentReport::default();
            }
        };
        let ctx = Arc::new(Ctx {
            name: b.name.clone(),
            task_type: TaskType::of::<T>(b.cluster.task_type.as_deref()),
            cluster: b.cluster.clone(),
            server,
            held: Arc::new(Semaphore::new(b.workers + b.prefetch.unwrap_or(0))),
            local: Arc::new(local),
            on_recorded: b.on_recorded.clone(),
            handing_back: AtomicBool::new(false),
            recorded: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            handed_back: AtomicU64::new(0),
        });
        let stop = if signals {
            match on_signal(stop) {
                Ok(stop) => stop,
                Err(e) => {
                    let _ = ready.send(Err(ConnectError::Thread {
                        what: "signal handler",
                        source: e,
                    }
                    .into()));
                    ctx.local.stop();
                    return AgentReport::default();
                }
            }
        } else {
            stop
        };
        ctx.log(format_args!(
            "ready: {} workers on cluster {} at {}",
            ctx.local.capacity(),
            ctx.cluster.name(),
            ctx.server.url
        ));
        let _ = ready.send(Ok(()));
        serve(ctx.clone(), consumer, stop, b.shutdown_grace).await;
        let report = ctx.report();
        ctx.log(format_args!(
            "stopped: {} recorded, {} skipped, {} handed back",
            report.recorded, report.skipped, report.handed_back
        ));
        report
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    report
}

/// A stop flag that SIGTERM and SIGINT also raise.
fn on_signal(mut stop: watch::Receiver<bool>) -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// The pull loop, then the graceful shutdown.
async fn serve<T: Task>(
    ctx: Arc<Ctx<T>>,
    consumer: PullConsumer,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut running = JoinSet::new();
    'pull: loop {
        while running.try_join_next().is_some() {}
        // Room for one more task held here (running, or waiting for a
        // worker with heartbeats), then for as many as are free now.
        let first = tokio::select! {
            permit = ctx.held.clone().acquire_owned() => permit.ok(),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { break };
        let mut slots = vec![first];
        while let Ok(permit) = ctx.held.clone().try_acquire_owned() {
            slots.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                // The server is away (restarting?): the client reconnects by
                // itself; try again shortly.
                ctx.log(format_args!("cannot pull tasks ({e}); retrying"));
                drop(slots);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => break 'pull,
                }
                continue;
            }
        };
        let mut stopping = false;
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = stop.wait_for(|s| *s), if !stopping => {
                    // Tasks already on their way to us are handed straight
                    // back when they arrive; the pull ends within PULL_EXPIRES.
                    stopping = true;
                    continue;
                }
            };
            match next {
                Some(Ok(msg)) if stopping => hand_back(&ctx, &msg).await,
                Some(Ok(msg)) => match slots.pop() {
                    Some(slot) => {
                        running.spawn(handle(ctx.clone(), msg, slot));
                    }
                    None => hand_back(&ctx, &msg).await,
                },
                Some(Err(e)) => {
                    ctx.log(format_args!("pull interrupted ({e})"));
                    break;
                }
                None => break,
            }
        }
        if stopping {
            break;
        }
    }

    // Graceful shutdown: no new task starts; running ones get `grace`.
    ctx.local.close();
    let finished = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        ctx.handing_back.store(true, Ordering::Release);
        ctx.log(format_args!(
            "{} tasks still running after {grace:?}: handing them back",
            running.len()
        ));
        ctx.local
            .terminate_all("the agent is shutting down; the task goes back to the server");
        while running.join_next().await.is_some() {}
    }
    let local = ctx.local.clone();
    let _ = tokio::task::spawn_blocking(move || local.stop()).await;
    let _ = ctx.server.client.flush().await;
}

/// Gives a task back to the server at once, for another agent.
async fn hand_back<T: Task>(ctx: &Ctx<T>, msg: &jetstream::Message) {
    ctx.handed_back.fetch_add(1, Ordering::Relaxed);
    let _ = msg.ack_with(AckKind::Nak(None)).await;
}

/// One delivery of one task, from decision to acknowledgement. `held` is
/// this task's place among those the agent holds; it is given up as soon as
/// the task no longer needs a worker, so the next task is pulled while this
/// one's outcome is recorded.
async fn handle<T: Task>(ctx: Arc<Ctx<T>>, msg: jetstream::Message, held: OwnedSemaphorePermit) {
    let attempt = msg
        .info()
        .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let meta = match TaskMeta::from_headers(msg.headers.as_ref()) {
        Ok(meta) => meta,
        Err(why) => {
            // Not a task of ours: nobody to tell; drop it so it cannot clog
            // the queue.
            ctx.log(format_args!(
                "dropping a message on {} that is not a task: {why}",
                msg.subject
            ));
            ack(&msg).await;
            return;
        }
    };
    match ctx.server.store.outcome(&meta.job, meta.id).await {
        Ok(Some(_)) => {
            // Recorded already (by an agent that died before acking, or by
            // the client's deadline): it stands.
            ctx.skipped.fetch_add(1, Ordering::Relaxed);
            ack(&msg).await;
            return;
        }
        Ok(None) => {}
        Err(e) => {
            ctx.log(format_args!(
                "cannot read the outcome of {}.{} ({e}); handing it back",
                meta.job, meta.id
            ));
            hand_back(&ctx, &msg).await;
            return;
        }
    }
    let outcome = match decide::<T>(&ctx, &meta, attempt) {
        Some(outcome) => {
            drop(held);
            outcome
        }
        None => {
            let task = match wire::decode_task::<T>(&msg.payload) {
                Ok(task) => task,
                Err(why) => {
                    drop(held);
                    return record(&ctx, &msg, &meta, attempt, reasons::undecodable(&why)).await;
                }
            };
            let result = run_with_heartbeats(&ctx, &msg, task).await;
            drop(held);
            match result {
                _ if ctx.handing_back.load(Ordering::Acquire) => {
                    return hand_back(&ctx, &msg).await;
                }
                LocalResult::Done(outcome) => outcome,
                LocalResult::Unavailable(why) => {
                    ctx.log(format_args!("handing back {}.{}: {why}", meta.job, meta.id));
                    return hand_back(&ctx, &msg).await;
                }
            }
        }
    };
    record(&ctx, &msg, &meta, attempt, outcome).await;
}

/// The outcome of a task that must not run here, if it must not.
fn decide<T: Task>(ctx: &Ctx<T>, meta: &TaskMeta, attempt: u32) -> Option<Outcome<T::Output>> {
    if wire::only_the_codec_differs(meta.protocol) {
        return Some(reasons::refused(&format!(
            "the task was sent with {}, this agent speaks {}; build agents and clients with \
             the same worker-facade codec (its `postcard` feature on both, or on neither)",
            wire::describe_protocol(meta.protocol),
            wire::describe_protocol(PROTOCOL_WORD)
        )));
    }
    if meta.protocol != PROTOCOL_WORD {
        return Some(reasons::refused(&format!(
            "the task was sent with {}, this agent speaks {}; run agents and clients of the \
             same worker-facade-nats version",
            wire::describe_protocol(meta.protocol),
            wire::describe_protocol(PROTOCOL_WORD)
        )));
    }
    if meta.fingerprint != ctx.task_type.fingerprint {
        return Some(reasons::refused(&format!(
            "the task is of type {:?}, this agent serves {:?}; use one cluster per task type, \
             or set the same Cluster::task_type on both sides",
            meta.task_type, ctx.task_type.name
        )));
    }
    if attempt > ctx.cluster.max_attempts {
        return Some(reasons::gave_up(
            ctx.cluster.max_attempts,
            u64::from(attempt),
        ));
    }
    if meta.deadline_ms.is_some_and(|d| wire::now_ms() >= d) {
        return Some(reasons::deadline_expired());
    }
    None
}

/// Waits for a free local worker and runs the task on it, telling the
/// server the task is in progress three times per `ack_wait` all along, so
/// it is not given to another agent meanwhile.
async fn run_with_heartbeats<T: Task>(
    ctx: &Ctx<T>,
    msg: &jetstream::Message,
    task: T,
) -> LocalResult<T::Output> {
    let mut beat = tokio::time::interval(ctx.cluster.heartbeat_interval());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    // A lost heartbeat costs at worst a redelivery, which finds the outcome
    // recorded.
    let slot = loop {
        tokio::select! {
            slot = ctx.local.acquire() => break slot,
            _ = beat.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    let Some(slot) = slot else {
        return LocalResult::Unavailable("the agent is stopping".into());
    };
    let run = slot.run(task);
    tokio::pin!(run);
    loop {
        tokio::select! {
            result = &mut run => return result,
            _ = beat.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Records `outcome` unless one is there, then acknowledges the task.
async fn record<T: Task>(
    ctx: &Ctx<T>,
    msg: &jetstream::Message,
    meta: &TaskMeta,
    attempt: u32,
    outcome: Outcome<T::Output>,
) {
    let kind = outcome.kind();
    let stored = StoredOutcome {
        agent: ctx.name.clone(),
        attempt,
        outcome,
    };
    // Written with the task's fingerprint: a refusal of another task type
    // is a `NotRun`, readable by that task's client.
    let bytes = match wire::encode_stored(meta.fingerprint, &stored) {
        Ok(bytes) => bytes::Bytes::from(bytes),
        Err(why) => {
            let fallback = StoredOutcome::<T::Output> {
                agent: ctx.name.clone(),
                attempt,
                outcome: reasons::unreadable_outcome(&format!(
                    "the agent could not serialize it: {why}"
                )),
            };
            match wire::encode_stored(meta.fingerprint, &fallback) {
                Ok(bytes) => bytes::Bytes::from(bytes),
                Err(_) => return hand_back(ctx, msg).await,
            }
        }
    };
    let mut delay = Duration::from_millis(50);
    let written = loop {
        match ctx
            .server
            .store
            .record_first(&meta.job, meta.id, bytes.clone())
            .await
        {
            Ok(written) => break written,
            Err(e) => {
                // The server is away: keep the outcome and try again; keep
                // the task ours meanwhile.
                ctx.log(format_args!(
                    "cannot record the outcome of {}.{} yet ({e}); retrying",
                    meta.job, meta.id
                ));
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    };
    match written {
        Recorded::Written => {
            ctx.recorded.fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = &ctx.on_recorded {
                hook(&RecordedTask {
                    job: meta.job.clone(),
                    id: meta.id,
                    attempt,
                    kind,
                });
            }
        }
        Recorded::AlreadyThere => {
            ctx.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
    ack(msg).await;
}

/// Acknowledges and waits for the server to confirm, a few times. A lost ack
/// costs a redelivery, which finds the outcome recorded and skips.
async fn ack(msg: &jetstream::Message) {
    for _ in 0..3 {
        if msg.double_ack().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
