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
        let ran = marks.lines().len();
        assert_eq!(ran, 1000, "runs recorded by the workers");
    });
}
