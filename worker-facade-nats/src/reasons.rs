//! Every outcome this crate makes up itself (a task refused, given up or
//! past its deadline), built in one place.

use worker_facade::{NotRunReason, Outcome, UnavailableReason};

/// A task delivered more than `max_attempts` times: every agent that held
/// it died (or lost its connection) before recording an outcome.
pub(crate) fn gave_up<O>(max_attempts: u32, delivered: u64) -> Outcome<O> {
    Outcome::NotRun(NotRunReason::WorkerUnavailable(
        UnavailableReason::AttemptsExhausted {
            max_attempts,
            delivered,
        },
    ))
}

/// The client's deadline (or the deadline carried in the task) passed
/// before an agent started it.
pub(crate) fn deadline_expired<O>() -> Outcome<O> {
    Outcome::NotRun(NotRunReason::DeadlineExpired)
}

/// The agent speaks another protocol version or serves another task type.
pub(crate) fn refused<O>(why: &str) -> Outcome<O> {
    Outcome::NotRun(NotRunReason::WorkerUnavailable(UnavailableReason::Refused(
        why.to_string(),
    )))
}

/// The agent could not decode the task although its type matched.
pub(crate) fn undecodable<O>(why: &str) -> Outcome<O> {
    Outcome::NotRun(NotRunReason::Undecodable(format!(
        "the agent could not decode the task: {why}"
    )))
}

/// The client could not read the outcome an agent recorded.
pub(crate) fn unreadable_outcome<O>(agent_said: &str) -> Outcome<O> {
    Outcome::NotRun(NotRunReason::WorkerUnavailable(
        UnavailableReason::OutcomeUnreadable(agent_said.to_string()),
    ))
}

/// Why the agent's own workers could not run the task, when a local
/// outcome says so (their restart budget ran out, a worker would not start,
/// or died before starting it): such a task is handed back to run
/// elsewhere, not recorded. A worker that died *while running* the task is
/// `Crashed`, not this: that is the task's outcome.
pub(crate) fn local_unavailability<O>(outcome: &Outcome<O>) -> Option<String> {
    match outcome {
        Outcome::NotRun(
            why @ (NotRunReason::WorkerUnavailable(_) | NotRunReason::WorkerDied(_)),
        ) => Some(why.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_what_happened() {
        let o: Outcome<String> = gave_up(3, 4);
        assert!(o.to_string().contains("3 attempts"), "{o}");
        assert!(local_unavailability(&o).is_some());
        let o: Outcome<String> = deadline_expired();
        assert_eq!(o.to_string(), "not run: deadline expired before it started");
        assert_eq!(local_unavailability(&o), None);
    }
}
