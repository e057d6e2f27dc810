//! The cluster, for real: a `nats-server` on loopback, agents as child
//! processes (this binary re-executed), workers inside them (the same binary
//! again). Each test is bounded by a watchdog.

mod common;

use std::time::Duration;

use common::{AgentProc, AgentSpec, Marks, NatsServer, within};
use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, TaskId};
use worker_facade_nats::RemoteFacade;

fn client(server: &NatsServer, spec: &AgentSpec) -> RemoteFacade<SimpleTask> {
    RemoteFacade::<SimpleTask>::builder(server.url())
        .cluster(spec.cluster())
        .start()
        .expect("client starts")
}

#[test]
fn a_thousand_tasks_over_two_agents_all_complete_in_order() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(180), move || {
        let marks = Marks::new();
        let mut a = AgentSpec::new("a1");
        a.workers = 2;
        let mut b = a.clone();
        b.name = "a2".into();
        let _a1 = AgentProc::start(&server.url(), &marks, a.clone());
        let _a2 = AgentProc::start(&server.url(), &marks, b);
        let client = client(&server, &a);
        for i in 0..1000 {
            let id = client
                .process_task(SimpleTask::new(format!("t{i}"), 0.0))
                .expect("accepted");
            assert_eq!(id, TaskId::from_raw(i));
        }
        let records = client.collect_records().expect("collect");
        assert_eq!(records.len(), 1000);
        let mut by_agent = std::collections::BTreeMap::<String, usize>::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.record.id, TaskId::from_raw(i as u64));
            assert_eq!(r.record.task.id, format!("t{i}"));
            assert_eq!(
                r.record.outcome,
                Outcome::Completed(format!("t{i} solved after 0")),
                "task {i}"
            );
            *by_agent.entry(r.agent.clone()).or_default() += 1;
        }
        assert_eq!(
            by_agent.keys().cloned().collect::<Vec<_>>(),
            ["a1", "a2"],
            "both agents ran tasks: {by_agent:?}"
        );
        // Each task ran exactly once.
        let ran = marks.lines().iter().filter(|l| l[0] == "ran").count();
        assert_eq!(ran, 1000, "runs recorded by the workers");
    });
}

#[test]
fn a_worker_abort_is_crashed_with_the_signal_and_never_redelivered() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("a1");
        let _a1 = AgentProc::start(&server.url(), &marks, spec.clone());
        let client = client(&server, &spec);
        let crash = client
            .submit(SimpleTask::new("abort", 0.0))
            .expect("accepted");
        let after = client
            .submit(SimpleTask::new("after", 0.0))
            .expect("accepted");
        match crash.wait_timeout(Duration::from_secs(60)) {
            Ok(Outcome::Crashed(info)) => {
                assert_eq!(
                    info.exit.signal,
                    Some(nix::sys::signal::Signal::SIGABRT as i32)
                );
                assert!(
                    info.stderr_tail
                        .iter()
                        .any(|l| l.contains("about to abort")),
                    "stderr tail: {:?}",
                    info.stderr_tail
                );
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        // The next task runs on a fresh worker.
        assert_eq!(
            after.wait_timeout(Duration::from_secs(60)),
            Ok(Outcome::Completed("after solved after 0".into()))
        );
        // Acked: the message left the stream, so it can never come back.
        common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(30));
        assert_eq!(marks.count("ran", "abort"), 1);
        assert_eq!(marks.count("recorded", "#0"), 1);
    });
}

#[test]
fn an_agent_killed_mid_task_loses_it_to_another_agent_once_and_leaves_no_worker() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("doomed");
        let mut doomed = AgentProc::start(&server.url(), &marks, spec.clone());
        let client = client(&server, &spec);
        let handle = client
            .submit(SimpleTask::new("hold:1", 1.0))
            .expect("accepted");
        let started = marks.wait_for("started", "hold:1");
        assert_eq!(started[3], "doomed");
        let worker: u32 = started[2].parse().expect("worker pid");
        doomed.kill();
        // The worker dies with its agent (parent-death signal): no orphan.
        assert!(
            common::wait_gone(worker, Duration::from_secs(20)),
            "worker {worker} outlived its agent"
        );
        let mut heir = spec.clone();
        heir.name = "heir".into();
        let _heir = AgentProc::start(&server.url(), &marks, heir);
        let records = {
            let outcome = handle.wait_timeout(Duration::from_secs(60));
            assert_eq!(
                outcome,
                Ok(Outcome::Completed("hold:1 solved after 1".into()))
            );
            client.collect_records().expect("collect")
        };
        assert!(records.is_empty(), "the outcome went to the handle");
        // Once on the dead agent, once on the heir: redelivered once.
        let runs: Vec<String> = marks
            .lines()
            .into_iter()
            .filter(|l| l[0] == "ran" && l[1] == "hold:1")
            .map(|l| l[3].clone())
            .collect();
        assert_eq!(runs, ["doomed", "heir"]);
        // Acked, so the agent's "recorded" mark (written before the ack) is there.
        common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(30));
        assert_eq!(marks.count("recorded", "#0"), 1);
    });
}

#[test]
fn a_task_that_kills_its_agent_every_time_is_not_run_after_max_attempts_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(180), move || {
        let marks = Marks::new();
        let mut spec = AgentSpec::new("victim-0");
        spec.max_attempts = 2;
        spec.ack_wait = Duration::from_secs(1);
        let client = client(&server, &spec);
        let poison = client
            .submit(SimpleTask::new("kill-agent", 0.0))
            .expect("accepted");
        let fine = client
            .submit(SimpleTask::new("fine", 0.0))
            .expect("accepted");
        let mut agent = AgentProc::start(&server.url(), &marks, spec.clone());
        let mut restarts = 0;
        let outcome = loop {
            if let Ok(outcome) = poison.try_wait() {
                break outcome;
            }
            if agent.has_exited() {
                restarts += 1;
                assert!(restarts <= 5, "the poison task kept killing agents");
                let mut next = spec.clone();
                next.name = format!("victim-{restarts}");
                agent = AgentProc::start(&server.url(), &marks, next);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match &outcome {
            Outcome::NotRun(why) => {
                assert!(why.to_string().contains("2 attempts"), "{why}");
            }
            other => panic!("expected NotRun, got {other:?}"),
        }
        assert_eq!(
            fine.wait_timeout(Duration::from_secs(60)),
            Ok(Outcome::Completed("fine solved after 0".into()))
        );
        assert_eq!(
            marks.count("ran", "kill-agent"),
            2,
            "ran max_attempts times"
        );
        assert_eq!(restarts, 2, "each attempt killed one agent");
        common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(30));
        assert_eq!(marks.count("recorded", "#0"), 1, "one outcome");
    });
}

#[test]
fn an_agent_killed_between_recording_and_acking_ran_the_task_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let mut spec = AgentSpec::new("dies-before-ack");
        spec.die_after_record = Some(0);
        let mut first = AgentProc::start(&server.url(), &marks, spec.clone());
        let client = client(&server, &spec);
        let handle = client
            .submit(SimpleTask::new("once", 0.0))
            .expect("accepted");
        let status = first.wait_dead(Duration::from_secs(60));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(nix::sys::signal::Signal::SIGKILL as i32)
        );
        assert_eq!(
            handle.wait_timeout(Duration::from_secs(60)),
            Ok(Outcome::Completed("once solved after 0".into()))
        );
        // The unacked task comes back to another agent after ack_wait; it
        // finds the outcome recorded, acks and skips.
        let mut other = spec.clone();
        other.name = "other".into();
        other.die_after_record = None;
        let _other = AgentProc::start(&server.url(), &marks, other);
        common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(60));
        assert_eq!(marks.count("ran", "once"), 1, "the handler ran once");
        assert_eq!(marks.count("recorded", "#0"), 1, "one outcome");
    });
}

#[test]
fn a_client_killed_after_submitting_is_resumed_by_another() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("a1");
        let (mut first, job) = common::start_client_process(&server.url(), &spec.cluster, 20, 0.05);
        first.kill().expect("kill the client");
        first.wait().expect("reap the client");
        let _a1 = AgentProc::start(&server.url(), &marks, spec.clone());
        let resumed = RemoteFacade::<SimpleTask>::builder(server.url())
            .cluster(spec.cluster())
            .resume(&job)
            .expect("resume");
        assert_eq!(resumed.job(), job);
        let late = resumed
            .process_task(SimpleTask::new("late", 0.0))
            .expect("accepted");
        assert_eq!(
            late,
            TaskId::from_raw(20),
            "new tasks continue the numbering"
        );
        let records = resumed.collect_tasks().expect("collect");
        let names: Vec<String> = records.iter().map(|r| r.task.id.clone()).collect();
        let mut want: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
        want.push("late".into());
        assert_eq!(names, want);
        for r in &records {
            assert!(r.outcome.is_completed(), "{}: {:?}", r.task.id, r.outcome);
        }
        // Starting a new job under the same name is refused.
        let again = RemoteFacade::<SimpleTask>::builder(server.url())
            .cluster(spec.cluster())
            .job(&job)
            .start();
        assert!(matches!(
            again,
            Err(worker_facade_nats::StartError::JobExists(_))
        ));
    });
}

#[test]
fn the_server_killed_and_restarted_mid_run_loses_no_outcome() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(180), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("a1");
        let mut b = spec.clone();
        b.name = "a2".into();
        let _a1 = AgentProc::start(&server.url(), &marks, spec.clone());
        let _a2 = AgentProc::start(&server.url(), &marks, b);
        let client = client(&server, &spec);
        let n = 200;
        let mut handles = Vec::new();
        for i in 0..n {
            handles.push(
                client
                    .submit(SimpleTask::new(format!("s{i}"), 0.02))
                    .expect("accepted"),
            );
        }
        // Some work done, most still to do.
        let early = handles[10].wait_timeout(Duration::from_secs(60));
        assert_eq!(
            early,
            Ok(Outcome::Completed("s10 solved after 0.02".into()))
        );
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        for (i, h) in handles.into_iter().enumerate().filter(|(i, _)| *i != 10) {
            assert_eq!(
                h.wait_timeout(Duration::from_secs(90)),
                Ok(Outcome::Completed(format!("s{i} solved after 0.02"))),
                "task {i}"
            );
        }
        if server.version() >= (2, 10) {
            common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(60));
        } else {
            // nats-server 2.9 does not persist a work-queue removal before a
            // SIGKILL: acked tasks may stay in the stream (never delivered
            // again, the consumer is past them) until they expire.
            eprintln!(
                "nats-server {:?}: checking only that nothing is left to deliver",
                server.version()
            );
            common::wait_consumer_idle(&server.url(), &spec.cluster, Duration::from_secs(60));
        }
        // Every task acked, so every "recorded" mark (written before the
        // ack) is there; a second winner of the create would show as 2.
        for i in 0..n {
            assert_eq!(
                marks.count("recorded", &format!("#{i}")),
                1,
                "task {i} recorded once"
            );
        }
    });
}

#[test]
fn a_ten_second_task_with_a_two_second_ack_wait_is_not_redelivered() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let mut spec = AgentSpec::new("a1");
        spec.workers = 2;
        let mut b = spec.clone();
        b.name = "a2".into();
        let _a1 = AgentProc::start(&server.url(), &marks, spec.clone());
        let _a2 = AgentProc::start(&server.url(), &marks, b);
        let client = client(&server, &spec);
        client
            .process_task(SimpleTask::new("hold:10", 10.0))
            .expect("accepted");
        let records = client.collect_records().expect("collect");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].record.outcome,
            Outcome::Completed("hold:10 solved after 10".into())
        );
        assert_eq!(records[0].attempt, 1, "first delivery");
        assert_eq!(
            marks.count("ran", "hold:10"),
            1,
            "ran once: heartbeats kept it"
        );
    });
}

#[test]
fn a_server_that_is_down_at_start_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("nats://127.0.0.1:{port}");
    let err = within(Duration::from_secs(60), move || {
        RemoteFacade::<SimpleTask>::builder(url)
            .start()
            .expect_err("nothing listens there")
    });
    assert!(
        matches!(
            err,
            worker_facade_nats::StartError::Connect(
                worker_facade_nats::ConnectError::Unreachable { .. }
            )
        ),
        "{err:?}"
    );
    assert!(
        common::chain(&err).contains("could not reach a NATS server"),
        "{err}"
    );
}

#[test]
fn a_task_above_max_payload_is_refused_and_handed_back() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(60), move || {
        let client = client(&server, &AgentSpec::new("none"));
        let big = SimpleTask::new("x".repeat(2 << 20), 0.0);
        match client.process_task(big) {
            Err(worker_facade_nats::RemoteSubmitError::TooLarge { task, size, max }) => {
                assert!(size > max);
                assert_eq!(task.id.len(), 2 << 20, "the task came back");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(client.collect_tasks().expect("collect").is_empty());
    });
}

#[test]
fn a_deadline_the_client_records_stands_and_a_late_agent_skips_the_task() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("late");
        let client = client(&server, &spec);
        let handle = client
            .submit_with_deadline(
                SimpleTask::new("too-late", 0.0),
                Some(Duration::from_millis(200)),
            )
            .expect("accepted");
        assert_eq!(
            handle.wait_timeout(Duration::from_secs(30)),
            Ok(Outcome::NotRun(
                worker_facade::NotRunReason::DeadlineExpired
            ))
        );
        let _agent = AgentProc::start(&server.url(), &marks, spec.clone());
        common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(30));
        assert_eq!(marks.count("ran", "too-late"), 0, "the agent skipped it");
    });
}

#[test]
fn an_agent_of_another_task_type_refuses_the_task_with_a_clear_outcome() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("other-type");
        let _agent = AgentProc::start(&server.url(), &marks, spec.clone());
        let client = RemoteFacade::<SimpleTask>::builder(server.url())
            .cluster(spec.cluster().task_type("something-else/v1"))
            .start()
            .expect("client");
        let handle = client
            .submit(SimpleTask::new("typed", 0.0))
            .expect("accepted");
        match handle.wait_timeout(Duration::from_secs(60)) {
            Ok(Outcome::NotRun(why)) => {
                let text = why.to_string();
                assert!(text.contains("something-else/v1"), "{text}");
                assert!(text.contains("SimpleTask"), "{text}");
            }
            other => panic!("expected NotRun, got {other:?}"),
        }
        assert_eq!(marks.count("ran", "typed"), 0);
    });
}

/// A small deterministic generator: the mix is the same on every run of a
/// seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Quick,
    Hold,
    Abort,
    Hang,
}

fn run_mix(server: &NatsServer, seed: u64) {
    let marks = Marks::new();
    let mut spec = AgentSpec::new(&format!("mix{seed}-a"));
    spec.cluster = format!("mix{seed}");
    spec.workers = 2;
    spec.ack_wait = Duration::from_secs(1);
    spec.max_attempts = 6;
    spec.task_timeout = Some(Duration::from_secs(1));
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut agents: Vec<AgentProc> = (0..2)
        .map(|i| {
            let mut s = spec.clone();
            s.name = format!("mix{seed}-{i}");
            AgentProc::start(&server.url(), &marks, s)
        })
        .collect();
    let client = client(server, &spec);
    let n = 30;
    let mut tasks = Vec::new();
    for i in 0..n {
        let kind = match rng.below(20) {
            0..=11 => Kind::Quick,
            12..=14 => Kind::Hold,
            15..=17 => Kind::Abort,
            _ => Kind::Hang,
        };
        let (name, secs) = match kind {
            Kind::Quick => (format!("q{i}"), 0.02),
            Kind::Hold => (format!("hold:{i}"), 0.3),
            Kind::Abort => (format!("abort:{i}"), 0.0),
            Kind::Hang => (format!("hang:{i}"), 0.0),
        };
        let handle = client
            .submit(SimpleTask::new(name.clone(), secs))
            .expect("accepted");
        tasks.push((kind, name, secs, handle));
    }
    // Kill an agent (SIGKILL, with whatever it holds) after some outcomes,
    // and start a fresh one in its place.
    let kill_after: Vec<usize> = (0..3).map(|_| rng.below(n) as usize).collect();
    let mut kills = 0;
    for (i, (kind, name, secs, handle)) in tasks.into_iter().enumerate() {
        let outcome = handle
            .wait_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("seed {seed}: no outcome for {name}: {e}"));
        match (kind, &outcome) {
            (Kind::Quick | Kind::Hold, Outcome::Completed(text)) => {
                assert_eq!(text, &format!("{name} solved after {secs}"), "seed {seed}");
            }
            (Kind::Abort, Outcome::Crashed(info)) => {
                assert_eq!(
                    info.exit.signal,
                    Some(nix::sys::signal::Signal::SIGABRT as i32)
                );
            }
            (Kind::Hang, Outcome::TimedOut(limit)) => {
                assert_eq!(*limit, Duration::from_secs(1));
            }
            _ => panic!("seed {seed}: {name} ({kind:?}) ended {outcome:?}"),
        }
        for _ in kill_after.iter().filter(|k| **k == i) {
            let victim = rng.below(agents.len() as u64) as usize;
            agents[victim].kill();
            kills += 1;
            let mut s = spec.clone();
            s.name = format!("mix{seed}-r{kills}");
            agents[victim] = AgentProc::start(&server.url(), &marks, s);
        }
    }
    assert!(client.collect_tasks().expect("collect").is_empty());
    common::wait_queue_empty(&server.url(), &spec.cluster, Duration::from_secs(60));
    // Each task's outcome arrived above. An agent marks the outcomes its
    // create won, before acking; one killed in between leaves no mark, so
    // a task may have none, but two would mean two winners.
    for i in 0..n {
        let winners = marks.count("recorded", &format!("#{i}"));
        assert!(
            winners <= 1,
            "seed {seed}: task {i} recorded {winners} times"
        );
    }
}

#[test]
fn a_mix_of_crashes_hangs_and_agent_kills_gives_each_task_exactly_one_outcome() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(400), move || {
        for seed in [1, 2, 3] {
            run_mix(&server, seed);
        }
    });
}

#[test]
fn sigterm_lets_a_short_task_finish_and_hands_a_long_one_back() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let marks = Marks::new();
        let spec = AgentSpec::new("polite");
        let client = client(&server, &spec);

        // Shorter than the agent's shutdown grace (5 s): it finishes here.
        let mut polite = AgentProc::start(&server.url(), &marks, spec.clone());
        let short = client
            .submit(SimpleTask::new("hold:short", 1.0))
            .expect("accepted");
        marks.wait_for("started", "hold:short");
        let status = polite.terminate();
        assert!(status.success(), "graceful exit: {status}");
        assert_eq!(
            short.wait_timeout(Duration::from_secs(30)),
            Ok(Outcome::Completed("hold:short solved after 1".into()))
        );
        assert_eq!(marks.count("ran", "hold:short"), 1);

        // Longer than the grace: handed back, then run by the next agent.
        let mut leaving = spec.clone();
        leaving.name = "leaving".into();
        let mut leaving = AgentProc::start(&server.url(), &marks, leaving);
        client
            .process_task(SimpleTask::new("hold:long", 8.0))
            .expect("accepted");
        let started = marks.wait_for("started", "hold:long");
        let worker: u32 = started[2].parse().expect("worker pid");
        let status = leaving.terminate();
        assert!(status.success(), "graceful exit: {status}");
        assert!(
            !common::process_alive(worker),
            "its worker was stopped and reaped"
        );
        let mut next = spec.clone();
        next.name = "next".into();
        let _next = AgentProc::start(&server.url(), &marks, next);
        let records = client.collect_records().expect("collect");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].record.outcome,
            Outcome::Completed("hold:long solved after 8".into())
        );
        assert_eq!(records[0].agent, "next");
        assert_eq!(
            records[0].attempt, 2,
            "the hand-back was the first delivery"
        );
    });
}
