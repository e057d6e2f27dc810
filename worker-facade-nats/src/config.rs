//! [`Cluster`]: where the tasks and outcomes of one kind of task live on the
//! server, and the timings agents and clients agree on.

use std::time::Duration;

/// The names and timings that agents and clients of one kind of task share.
///
/// Every agent and client that work together must use the same `Cluster`
/// (same name, same timings). Use one cluster name per task type: agents of
/// another task type on the same name refuse the tasks with a clear outcome
/// rather than decoding them as garbage.
///
/// On the server a cluster named `resize` is
///
/// - the work-queue stream `WF_resize` on the subjects `wf.resize.tasks.>`,
///   one message per task, removed once an agent has recorded its outcome;
/// - the durable pull consumer `agents` on it, shared by every agent;
/// - the key-value bucket `wf_resize`, holding each task (so that a client
///   can resume) and each outcome (written once: the first writer wins).
///
/// ```
/// use std::time::Duration;
/// use worker_facade_nats::Cluster;
///
/// let cluster = Cluster::named("resize")
///     .ack_wait(Duration::from_secs(10))
///     .max_attempts(3);
/// assert_eq!(cluster.stream_name(), "WF_resize");
/// assert_eq!(cluster.bucket_name(), "wf_resize");
/// assert_eq!(cluster.heartbeat_interval(), Duration::from_secs(10) / 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a Cluster does nothing until given to an agent or a client"]
pub struct Cluster {
    name: String,
    pub(crate) ack_wait: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) dedup_window: Duration,
    pub(crate) outcome_ttl: Duration,
    pub(crate) task_type: Option<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::named("default")
    }
}

impl Cluster {
    /// A cluster called `name`: letters, digits, `-` and `_` only (anything
    /// else is replaced by `_`, since the name becomes part of stream and
    /// subject names).
    pub fn named(name: impl AsRef<str>) -> Self {
        let name: String = name
            .as_ref()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Cluster {
            name: if name.is_empty() {
                "default".into()
            } else {
                name
            },
            ack_wait: Duration::from_secs(30),
            max_attempts: 3,
            dedup_window: Duration::from_secs(120),
            outcome_ttl: Duration::from_secs(7 * 24 * 3600),
            task_type: None,
        }
    }

    /// How long the server waits for an agent's heartbeat or outcome before
    /// it gives the task to another agent (default 30 s). Agents send a
    /// heartbeat three times per `ack_wait` while a task runs, so a long task
    /// is not given away; only an agent that died, froze or lost its
    /// connection loses its tasks.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(300));
        self
    }

    /// How many times a task may be handed to an agent before it is
    /// given up (default 3). A task whose agents all died while holding it
    /// ends [`NotRun`](worker_facade::Outcome::NotRun), with a reason naming
    /// the attempts, instead of taking down agents forever.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long the server remembers a task's message ID to drop a repeated
    /// publish of the same task (default 2 minutes).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window.max(Duration::from_secs(1));
        self
    }

    /// How long tasks and outcomes are kept on the server (default 7 days).
    /// A job must be collected, or resumed, within this time.
    pub fn outcome_ttl(mut self, ttl: Duration) -> Self {
        self.outcome_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The name agents and clients compare to be sure they speak of the same
    /// task type. Default: the Rust type names of the task and its output,
    /// which match when both sides take the task type from the same crate.
    /// Set it when they do not (say `"resize/v2"`), and change it when the
    /// task's serialized form changes.
    pub fn task_type(mut self, name: impl Into<String>) -> Self {
        self.task_type = Some(name.into());
        self
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The work-queue stream holding the tasks waiting for an agent.
    pub fn stream_name(&self) -> String {
        format!("WF_{}", self.name)
    }

    /// The key-value bucket holding tasks and outcomes.
    pub fn bucket_name(&self) -> String {
        format!("wf_{}", self.name)
    }

    /// How often an agent sends a heartbeat for a running task: a third of
    /// [`ack_wait`](Self::ack_wait).
    pub fn heartbeat_interval(&self) -> Duration {
        self.ack_wait / 3
    }

    /// The durable consumer every agent pulls from.
    pub(crate) fn consumer_name(&self) -> &'static str {
        "agents"
    }

    /// Every task subject of this cluster.
    pub(crate) fn subjects(&self) -> String {
        format!("wf.{}.tasks.>", self.name)
    }

    /// The subject of one task: one per task, so that a resuming client can
    /// ask the stream whether the task is still waiting.
    pub(crate) fn task_subject(&self, job: &str, id: u64) -> String {
        format!("wf.{}.tasks.{job}.{id}", self.name)
    }
}

/// The bucket key of a task, kept so that a client can resume.
pub(crate) fn task_key(job: &str, id: u64) -> String {
    format!("{job}.t.{id}")
}

/// The bucket key of a task's outcome.
pub(crate) fn outcome_key(job: &str, id: u64) -> String {
    format!("{job}.o.{id}")
}

/// The key pattern of every outcome of a job.
pub(crate) fn outcome_pattern(job: &str) -> String {
    format!("{job}.o.*")
}

/// The task number in an outcome key, if `key` is one of `job`'s.
pub(crate) fn id_of_outcome_key(job: &str, key: &str) -> Option<u64> {
    key.strip_prefix(job)?.strip_prefix(".o.")?.parse().ok()
}

/// Whether `job` is usable as a job name: 1 to 64 letters, digits, `-`, `_`.
pub(crate) fn valid_job(job: &str) -> bool {
    (1..=64).contains(&job.len())
        && job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        let c = Cluster::named("a.b c>");
        assert_eq!(c.name(), "a_b_c_");
        assert_eq!(c.subjects(), "wf.a_b_c_.tasks.>");
        assert_eq!(Cluster::named("").name(), "default");
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(id_of_outcome_key("j1", &outcome_key("j1", 42)), Some(42));
        assert_eq!(id_of_outcome_key("j1", &task_key("j1", 42)), None);
        assert_eq!(id_of_outcome_key("j", &outcome_key("j1", 42)), None);
        assert!(valid_job("nightly-2026_12"));
        assert!(!valid_job("a.b"));
        assert!(!valid_job(""));
    }
}
