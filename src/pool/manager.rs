//! The manager thread, which owns every executor, lease and waiting caller,
//! and the spawner thread, which starts executors for it and shuts down the
//! ones it retires (a facade's drop may wait for its worker's grace period:
//! never on the manager's thread).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::SpawnError;
use crate::facade::WorkingProcessFacade;
use crate::task::{CancelReason, CrashReason, Task};
use crate::trace;

use super::{AcquireError, Lease, LeaseInfo, PoolBuilder, PoolStats, Revoked};

/// How long after a failed spawn the manager tries again to restore the
/// minimum (doubling up to [`MAX_RETRY`]). Callers waiting for an executor
/// trigger their own spawns and are not delayed by this.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What callers and leases send the manager thread.
pub(super) enum Msg<T: Task> {
    Acquire {
        owner: String,
        duration: Duration,
        wait: bool,
        deadline: Option<Instant>,
        reply: LeaseReply<T>,
    },
    Release {
        id: u64,
    },
    Spawned {
        result: Result<WorkingProcessFacade<T>, SpawnError>,
        purpose: SpawnFor,
    },
    /// An executor's worker ended without being asked to: pushed by its
    /// facade's engine, so the pool replaces it at once.
    WorkerLost,
    Stats(oneshot::Sender<PoolStats>),
    Stop,
}

/// A lease's current term, shared by its holder, who renews it (a
/// grinder's executor going to its next batch), and the manager, who
/// revokes the lease once past `hard`. A renewal therefore costs the
/// manager no wake: it reads the new term when the old one would have
/// ended, and waits again.
#[derive(Debug)]
pub(super) struct Term {
    pub(super) owner: String,
    pub(super) soft: Instant,
    pub(super) hard: Instant,
}

/// A [`Term`] as both sides hold it.
pub(super) type SharedTerm = Arc<Mutex<Term>>;

/// The term, also if a holder panicked while renewing it (each field is
/// written whole, so it is never torn).
pub(super) fn term(shared: &SharedTerm) -> MutexGuard<'_, Term> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many lease requests are on their way to the manager (counted up by
/// the asker before it sends, down by the manager as it reads one) and how
/// many wait in its queue (counted up as the manager queues one, and set to
/// the queue's length each turn): someone waits for an executor while
/// either is above zero.
#[derive(Debug, Default)]
pub(super) struct Demand {
    pub(super) sent: AtomicUsize,
    pub(super) queued: AtomicUsize,
}

impl Demand {
    pub(super) fn waiting(&self) -> bool {
        self.sent.load(Ordering::Acquire) > 0 || self.queued.load(Ordering::Acquire) > 0
    }
}

/// Why an executor is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpawnFor {
    /// For a caller waiting in `acquire`: if it fails, that caller hears why.
    Waiter,
    /// To restore `min_executors`.
    Minimum,
    /// To replace a retired executor.
    Replacement,
}

/// What the manager asks of the spawner thread.
pub(super) enum Job<T: Task> {
    Spawn(SpawnFor),
    /// Shut this executor down (its drop may wait for its grace period).
    Drop(Arc<WorkingProcessFacade<T>>),
}

struct Idle<T: Task> {
    facade: Arc<WorkingProcessFacade<T>>,
    since: Instant,
}

struct Leased<T: Task> {
    facade: Arc<WorkingProcessFacade<T>>,
    duration: Duration,
    term: SharedTerm,
    revoked: Arc<OnceLock<Revoked>>,
}

impl<T: Task> Leased<T> {
    fn owner(&self) -> String {
        term(&self.term).owner.clone()
    }

    fn hard(&self) -> Instant {
        term(&self.term).hard
    }

    /// Revokes the lease, for `why`, if `due` says so of its term: decided
    /// under the term's lock, which a renewal holds while it looks at the
    /// revocation and writes a new term. So a lease is either renewed
    /// (and `due` sees the new term) or revoked (and the renewal refused),
    /// never both. Whether it is revoked now.
    fn revoke_if(&self, due: impl FnOnce(&Term) -> bool, why: Revoked) -> bool {
        let term = term(&self.term);
        if !due(&term) {
            return false;
        }
        let _ = self.revoked.set(why);
        true
    }
}

struct Waiter<T: Task> {
    asked: Instant,
    owner: String,
    duration: Duration,
    wait: bool,
    deadline: Option<Instant>,
    reply: LeaseReply<T>,
}

/// Where a lease request is answered.
pub(crate) enum LeaseReply<T: Task> {
    /// A caller blocked in `acquire`, or a grinder runner selecting on it.
    Channel(Sender<Result<Lease<T>, AcquireError>>),
    /// An `acquire_async` future (`None` once answered).
    Future(Option<oneshot::Sender<Result<Lease<T>, AcquireError>>>),
}

impl<T: Task> LeaseReply<T> {
    /// Answers. A lease nobody takes any more is dropped here, which
    /// releases it back to the pool.
    fn send(&mut self, answer: Result<Lease<T>, AcquireError>) {
        match self {
            LeaseReply::Channel(tx) => {
                let _ = tx.send(answer);
            }
            LeaseReply::Future(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(answer);
                }
            }
        }
    }

    /// Whether the caller gave up (its future was dropped).
    fn is_abandoned(&self) -> bool {
        match self {
            // A blocked caller's timeout races with ours; it is answered.
            LeaseReply::Channel(_) => false,
            LeaseReply::Future(tx) => tx.as_ref().is_none_or(|tx| tx.is_closed()),
        }
    }
}

/// The manager thread's state. Nothing here is shared.
pub(super) struct Manager<T: Task> {
    min: usize,
    max: usize,
    idle_timeout: Duration,
    grace: Duration,
    rx: Receiver<Msg<T>>,
    /// Handed to every lease, for its release.
    tx: Sender<Msg<T>>,
    /// Jobs for the spawner thread: start an executor, or shut one down.
    spawn_tx: Option<Sender<Job<T>>>,
    spawner_stop: Arc<AtomicBool>,
    /// Idle executors; the most recently used at the back.
    available: VecDeque<Idle<T>>,
    leased: HashMap<u64, Leased<T>>,
    waiters: VecDeque<Waiter<T>>,
    spawning: usize,
    next_lease: u64,
    retired: u64,
    replaced: u64,
    revoked: u64,
    shrunk: u64,
    spawn_failures: u64,
    /// Renewals of every lease, counted by their holders.
    renewed: Arc<AtomicU64>,
    /// Lease requests on their way here and waiting here, for whoever
    /// wants to know whether someone waits (see [`Demand`]).
    demand: Arc<Demand>,
    /// When to try again to restore the minimum after a failed spawn.
    retry_at: Option<Instant>,
    backoff: Duration,
    stopping: bool,
}

/// An executor is broken once its worker ended without being asked to (its
/// engine says so, and pushes a [`Msg::WorkerLost`] when it happens). Its
/// facade runs with `RestartPolicy::Never`, so it will not get a new worker.
fn is_broken<T: Task>(facade: &WorkingProcessFacade<T>) -> bool {
    facade.workers_lost() > 0
}

/// `now + d`, or a century from now when that overflows.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

fn seconds_until(now: Instant, then: Instant) -> f64 {
    if then >= now {
        (then - now).as_secs_f64()
    } else {
        -(now - then).as_secs_f64()
    }
}

impl<T: Task> Manager<T> {
    /// The manager at start: `executors` idle, nothing leased, nobody waiting.
    pub(super) fn new(
        cfg: &PoolBuilder<T>,
        executors: Vec<Arc<WorkingProcessFacade<T>>>,
        rx: Receiver<Msg<T>>,
        tx: Sender<Msg<T>>,
        spawn_tx: Sender<Job<T>>,
        spawner_stop: Arc<AtomicBool>,
        demand: Arc<Demand>,
    ) -> Self {
        let now = Instant::now();
        // Nothing was asked of this run yet (asking needs it running).
        demand.sent.store(0, Ordering::Release);
        demand.queued.store(0, Ordering::Release);
        Manager {
            min: cfg.min,
            max: cfg.max,
            idle_timeout: cfg.idle_timeout,
            grace: cfg.lease_grace,
            rx,
            tx,
            spawn_tx: Some(spawn_tx),
            spawner_stop,
            available: executors
                .into_iter()
                .map(|facade| Idle { facade, since: now })
                .collect(),
            leased: HashMap::new(),
            waiters: VecDeque::new(),
            spawning: 0,
            next_lease: 0,
            retired: 0,
            replaced: 0,
            revoked: 0,
            shrunk: 0,
            spawn_failures: 0,
            renewed: Arc::new(AtomicU64::new(0)),
            demand,
            retry_at: None,
            backoff: FIRST_RETRY,
            stopping: false,
        }
    }

    pub(super) fn run(mut self) -> PoolStats {
        loop {
            // Whatever is waiting is read before anything is decided (a
            // release, say, before the expiries below).
            while let Ok(msg) = self.rx.try_recv() {
                if let Msg::Stop = msg {
                    return self.shutdown();
                }
                self.handle(msg);
            }
            let now = Instant::now();
            self.revoke_expired(now);
            self.retire_broken();
            self.serve(now);
            self.shrink(now);
            self.keep_minimum(now);
            self.demand
                .queued
                .store(self.waiters.len(), Ordering::Release);
            let msg = match self.next_deadline() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => Msg::Stop,
                },
                None => self.rx.recv().unwrap_or(Msg::Stop),
            };
            if let Msg::Stop = msg {
                return self.shutdown();
            }
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Msg<T>) {
        let now = Instant::now();
        match msg {
            Msg::Acquire {
                owner,
                duration,
                wait,
                deadline,
                reply,
            } => {
                // Counted as queued before it stops counting as sent, so
                // that it never looks as if nobody waits.
                self.demand.queued.fetch_add(1, Ordering::AcqRel);
                self.demand.sent.fetch_sub(1, Ordering::AcqRel);
                self.waiters.push_back(Waiter {
                    asked: now,
                    owner,
                    duration,
                    wait,
                    deadline,
                    reply,
                })
            }
            Msg::Release { id } => {
                if let Some(lease) = self.leased.remove(&id) {
                    if is_broken(&lease.facade) {
                        self.retire(lease.facade, "its worker was lost");
                    } else {
                        self.available.push_back(Idle {
                            facade: lease.facade,
                            since: now,
                        });
                    }
                }
            }
            Msg::Spawned { result, purpose } => {
                self.spawning = self.spawning.saturating_sub(1);
                match result {
                    Ok(facade) => {
                        let replacement = purpose == SpawnFor::Replacement;
                        if replacement {
                            self.replaced += 1;
                        }
                        trace::executor_started(
                            facade.trace_id(),
                            facade.worker_pid(),
                            replacement,
                        );
                        self.retry_at = None;
                        self.backoff = FIRST_RETRY;
                        self.available.push_back(Idle {
                            facade: Arc::new(facade),
                            since: now,
                        });
                    }
                    Err(err) => {
                        trace::executor_spawn_failed(&err);
                        self.spawn_failures += 1;
                        self.retry_at = Some(later(now, self.backoff));
                        self.backoff = (self.backoff * 2).min(MAX_RETRY);
                        // The caller this spawn was for hears why; a failed
                        // replacement or top-up was for nobody waiting, who
                        // then keeps waiting (and gets a spawn of its own).
                        if purpose == SpawnFor::Waiter {
                            if let Some(mut waiter) = self.waiters.pop_front() {
                                waiter.reply.send(Err(AcquireError::Spawn(Arc::new(err))));
                            }
                        }
                    }
                }
            }
            Msg::Stats(reply) => {
                // Settle what time has decided (expiries, idle shrinking)
                // first, so that a caller who waited past a deadline reads
                // its effect.
                self.revoke_expired(now);
                self.retire_broken();
                self.serve(now);
                self.shrink(now);
                let _ = reply.send(self.snapshot(now));
            }
            // The loop retires broken executors before it waits again.
            Msg::WorkerLost | Msg::Stop => {}
        }
    }

    fn total(&self) -> usize {
        self.available.len() + self.leased.len() + self.spawning
    }

    /// Revokes every lease past its hard expiry: marks it, kills its worker
    /// (the facade reports the running task crashed and the rest not run,
    /// with the reason) and retires the executor.
    fn revoke_expired(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.revoke_if(|term| term.hard <= now, Revoked::Expired))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(lease) = self.leased.remove(&id) else {
                continue;
            };
            // Marked (above) before the kill, so whoever sees an outcome of
            // the kill also sees why.
            let owner = lease.owner();
            trace::lease_expired(id, &owner, lease.facade.worker_pid());
            let why = format!(
                "the lease of {owner} expired: it passed its hard expiry ({:?} lease + {:?} grace) \
                 and was revoked",
                lease.duration, self.grace
            );
            lease.facade.terminate_for(
                CrashReason::LeaseExpired(why.clone()),
                CancelReason::LeaseExpired(why),
            );
            self.revoked += 1;
            self.retire(lease.facade, "lease expired");
        }
    }

    /// Takes an executor out of service for good and asks for a replacement.
    fn retire(&mut self, facade: Arc<WorkingProcessFacade<T>>, why: &'static str) {
        trace::executor_retired(facade.trace_id(), why);
        self.retired += 1;
        self.dispose(facade);
        if !self.stopping && self.total() < self.max {
            self.spawn(SpawnFor::Replacement);
        }
    }

    /// Hands an executor to the spawner thread to be shut down: its drop may
    /// wait for its worker (a grace period, a kill), which must never hold
    /// up the manager.
    fn dispose(&mut self, facade: Arc<WorkingProcessFacade<T>>) {
        if let Some(tx) = &self.spawn_tx {
            // Without a spawner (stopping), the drop happens here, in `stop`.
            let _ = tx.send(Job::Drop(facade));
        }
    }

    /// Retires idle executors whose worker died.
    fn retire_broken(&mut self) {
        let mut kept = VecDeque::with_capacity(self.available.len());
        let mut broken = Vec::new();
        for idle in self.available.drain(..) {
            if is_broken(&idle.facade) {
                broken.push(idle.facade);
            } else {
                kept.push_back(idle);
            }
        }
        self.available = kept;
        for facade in broken {
            self.retire(facade, "its worker was lost");
        }
    }

    /// Shuts down idle executors above the minimum that stayed idle for
    /// `idle_timeout`, the least recently used (at the front) first.
    fn shrink(&mut self, now: Instant) {
        while self.available.len() + self.leased.len() > self.min {
            let Some(front) = self.available.front() else {
                break;
            };
            let idle_long = now >= later(front.since, self.idle_timeout);
            if !idle_long || front.facade.stats().in_flight > 0 {
                break;
            }
            if let Some(idle) = self.available.pop_front() {
                self.dispose(idle.facade);
            }
            self.shrunk += 1;
        }
    }

    /// Hands idle executors to waiting callers in order, starts executors for
    /// the rest while there is room, and turns away callers who would not
    /// wait.
    fn serve(&mut self, now: Instant) {
        // A caller whose deadline passed is told so (it may be waiting on
        // its answer still: its own timeout and ours race).
        self.waiters.retain_mut(|w| {
            let expired = w.deadline.is_some_and(|d| d <= now);
            if expired {
                w.reply.send(Err(AcquireError::TimedOut {
                    waited: now.saturating_duration_since(w.asked),
                }));
            }
            !expired && !w.reply.is_abandoned()
        });
        while !self.waiters.is_empty() {
            let Some(idle) = self.available.pop_back() else {
                break;
            };
            if is_broken(&idle.facade) {
                self.retire(idle.facade, "its worker was lost");
                continue;
            }
            if let Some(waiter) = self.waiters.pop_front() {
                self.grant(waiter, idle.facade, now);
            }
        }
        if self.stopping {
            return;
        }
        while self.spawning < self.waiters.len() && self.total() < self.max {
            self.spawn(SpawnFor::Waiter);
        }
        // The first `spawning` callers are served by the executors being
        // started; a caller behind them who would not wait is turned away.
        let covered = self.spawning;
        let max = self.max;
        let mut position = 0;
        self.waiters.retain_mut(|w| {
            let keep = w.wait || position < covered;
            position += 1;
            if !keep {
                w.reply.send(Err(AcquireError::NoneAvailable { max }));
            }
            keep
        });
    }

    fn grant(&mut self, mut waiter: Waiter<T>, facade: Arc<WorkingProcessFacade<T>>, now: Instant) {
        let id = self.next_lease;
        self.next_lease += 1;
        let soft = later(now, waiter.duration);
        let hard = later(soft, self.grace);
        let revoked = Arc::new(OnceLock::new());
        let term = Arc::new(Mutex::new(Term {
            owner: waiter.owner.clone(),
            soft,
            hard,
        }));
        let lease = Lease {
            id,
            owner: waiter.owner,
            duration: waiter.duration,
            soft,
            hard,
            facade: facade.clone(),
            revoked: revoked.clone(),
            term: term.clone(),
            renewed: self.renewed.clone(),
            manager: self.tx.clone(),
        };
        self.leased.insert(
            id,
            Leased {
                facade,
                duration: waiter.duration,
                term,
                revoked,
            },
        );
        trace::lease_granted(id, &lease.owner, lease.facade.worker_pid(), lease.duration);
        // If the caller gave up meanwhile, the lease is dropped here and its
        // release comes back through the channel.
        waiter.reply.send(Ok(lease));
    }

    fn spawn(&mut self, purpose: SpawnFor) {
        if let Some(tx) = &self.spawn_tx {
            if tx.send(Job::Spawn(purpose)).is_ok() {
                self.spawning += 1;
            }
        }
    }

    /// Restores the minimum, unless a recent spawn failed.
    fn keep_minimum(&mut self, now: Instant) {
        if self.stopping || self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        while self.total() < self.min {
            let before = self.spawning;
            self.spawn(SpawnFor::Minimum);
            if self.spawning == before {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let leases = self.leased.values().map(|l| l.hard());
        let waiters = self.waiters.iter().filter_map(|w| w.deadline);
        let idle = (self.available.len() + self.leased.len() > self.min)
            .then(|| self.available.front())
            .flatten()
            .map(|i| later(i.since, self.idle_timeout));
        let retry = self.retry_at.filter(|_| self.total() < self.min);
        leases.chain(waiters).chain(idle).chain(retry).min()
    }

    fn snapshot(&self, now: Instant) -> PoolStats {
        let mut leases: Vec<LeaseInfo> = self
            .leased
            .iter()
            .map(|(id, l)| {
                let term = term(&l.term);
                LeaseInfo {
                    id: *id,
                    owner: term.owner.clone(),
                    worker_pid: l.facade.worker_pid(),
                    seconds_to_soft_expiry: seconds_until(now, term.soft),
                    seconds_to_hard_expiry: seconds_until(now, term.hard),
                }
            })
            .collect();
        leases.sort_by_key(|l| l.id);
        PoolStats {
            started: true,
            stopped: self.stopping,
            min_executors: self.min,
            max_executors: self.max,
            available: self.available.len(),
            leased: self.leased.len(),
            total: self.available.len() + self.leased.len(),
            spawning: self.spawning,
            waiting: self.waiters.len(),
            retired: self.retired,
            replaced: self.replaced,
            revoked: self.revoked,
            shrunk: self.shrunk,
            spawn_failures: self.spawn_failures,
            granted: self.next_lease,
            renewed: self.renewed.load(Ordering::Relaxed),
            leases,
        }
    }

    fn shutdown(mut self) -> PoolStats {
        self.stopping = true;
        for mut waiter in self.waiters.drain(..) {
            waiter.reply.send(Err(AcquireError::Stopped));
        }
        let leased: Vec<(u64, Leased<T>)> = self.leased.drain().collect();
        let mut revoked = Vec::with_capacity(leased.len());
        for (id, lease) in leased {
            lease.revoke_if(|_| true, Revoked::Stopped);
            let owner = lease.owner();
            trace::lease_revoked(id, &owner, lease.facade.worker_pid());
            lease.facade.terminate(format!(
                "the executor manager was stopped, which revoked the lease of {owner}"
            ));
            revoked.push(lease.facade.clone());
            self.dispose(lease.facade);
        }
        // `stop` returns with the revoked leases' workers dead, but
        // `terminate` only asks their engines (a lease still holds each
        // facade, so its drop does not wait): wait for the reaps.
        wait_until_reaped(&revoked, Instant::now() + REAP_WAIT);
        // Idle executors finish what they run (within their grace period),
        // on the spawner's thread, which `stop` joins.
        let idle: Vec<Idle<T>> = self.available.drain(..).collect();
        for idle in idle {
            self.dispose(idle.facade);
        }
        // The spawner finishes the start it is in (`stop` joins it) and
        // takes no more requests.
        self.spawner_stop.store(true, Ordering::Release);
        self.spawn_tx = None;
        // Whatever arrived meanwhile: executors the spawner finished, callers
        // still asking. Later messages fail to send, which their senders
        // read as "stopped".
        let now = Instant::now();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Acquire { mut reply, .. } => {
                    self.demand.sent.fetch_sub(1, Ordering::AcqRel);
                    reply.send(Err(AcquireError::Stopped));
                }
                Msg::Spawned { .. } => self.spawning = self.spawning.saturating_sub(1),
                Msg::Stats(reply) => {
                    let _ = reply.send(self.snapshot(now));
                }
                Msg::Release { .. } | Msg::WorkerLost | Msg::Stop => {}
            }
        }
        self.demand.queued.store(0, Ordering::Release);
        self.spawning = 0;
        self.snapshot(now)
    }
}

/// The spawner thread: starts one executor per request and hands it to the
/// manager, and shuts down the executors the manager is done with.
pub(super) fn spawner<T: Task>(
    cfg: PoolBuilder<T>,
    jobs: Receiver<Job<T>>,
    manager: Sender<Msg<T>>,
    stopping: Arc<AtomicBool>,
) {
    for job in jobs {
        match job {
            Job::Drop(facade) => drop(facade),
            // Once stopping, no more starts; the drops still happen.
            Job::Spawn(_) if stopping.load(Ordering::Acquire) => {}
            Job::Spawn(purpose) => {
                let result = spawn_executor(&cfg, &manager);
                if manager.send(Msg::Spawned { result, purpose }).is_err() {
                    stopping.store(true, Ordering::Release);
                }
            }
        }
    }
}

/// Starts one executor whose engine tells `manager` when its worker is lost.
pub(super) fn spawn_executor<T: Task>(
    cfg: &PoolBuilder<T>,
    manager: &Sender<Msg<T>>,
) -> Result<WorkingProcessFacade<T>, SpawnError> {
    let manager = manager.clone();
    cfg.spawn_executor(move || {
        let _ = manager.send(Msg::WorkerLost);
    })
}

/// How long `stop` waits at most for a revoked lease's worker to be reaped
/// after its kill: the engine's own limit for a worker that cannot be
/// reaped, and some room.
const REAP_WAIT: Duration = Duration::from_secs(3);

/// Waits until no facade of `facades` has a worker (each was terminated:
/// its engine kills and reaps them, and restarts none), or until `until`.
fn wait_until_reaped<T: Task>(facades: &[Arc<WorkingProcessFacade<T>>], until: Instant) {
    while facades.iter().any(|f| !f.worker_pids().is_empty()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_until_is_signed() {
        let now = Instant::now();
        assert!(seconds_until(now, now + Duration::from_secs(2)) > 1.9);
        assert!(seconds_until(now + Duration::from_secs(2), now) < -1.9);
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }
}
