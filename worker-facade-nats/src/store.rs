//! The bucket of tasks and outcomes. An outcome is written with `create`:
//! the first writer wins, so a task has one outcome however many agents (or
//! a client's deadline) race to record one.

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::config::{outcome_key, outcome_pattern, task_key};

/// How a first-writer-wins write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// This write is the outcome.
    Written,
    /// An outcome was already there (another agent's, the client's deadline,
    /// or this very write whose acknowledgement was lost): it stands.
    AlreadyThere,
}

/// The bucket.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    kv: kv::Store,
}

impl Store {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Store { kv }
    }

    /// Records `value` as the outcome of `job`'s task `id` unless one is
    /// there. `Err` only when the server could not be reached: retry.
    pub(crate) async fn record_first(
        &self,
        job: &str,
        id: u64,
        value: Bytes,
    ) -> Result<Recorded, async_nats::Error> {
        match self.kv.create(outcome_key(job, id), value).await {
            Ok(_) => Ok(Recorded::Written),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Recorded::AlreadyThere),
            Err(e) => Err(e.into()),
        }
    }

    /// The recorded outcome of a task, if any.
    pub(crate) async fn outcome(
        &self,
        job: &str,
        id: u64,
    ) -> Result<Option<Bytes>, async_nats::Error> {
        Ok(self.kv.get(outcome_key(job, id)).await?)
    }

    /// A task kept for a client that resumes the job later.
    pub(crate) async fn task(
        &self,
        job: &str,
        id: u64,
    ) -> Result<Option<Bytes>, async_nats::Error> {
        Ok(self.kv.get(task_key(job, id)).await?)
    }

    /// Every outcome of `job` already recorded, then each new one as it is
    /// recorded, starting after `revision` when given.
    pub(crate) async fn watch_outcomes(
        &self,
        job: &str,
        after_revision: Option<u64>,
    ) -> Result<kv::Watch, async_nats::Error> {
        let pattern = outcome_pattern(job);
        Ok(match after_revision {
            Some(rev) => self.kv.watch_from_revision(pattern, rev + 1).await?,
            None => self.kv.watch_with_history(pattern).await?,
        })
    }
}
