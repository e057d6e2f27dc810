//! With the `serde` feature, outcomes can travel and be stored: every
//! outcome type serializes and comes back equal, here for the records of a
//! real run with a completed task, a crash (with its exit status, resource
//! use and stderr tail) and tasks not run. CI runs this file with
//! `--features serde`; without the feature it is empty.
#![cfg(feature = "serde")]

mod common;

use serde::Serialize;
use serde::de::DeserializeOwned;
use worker_facade::simple::SimpleTask;
use worker_facade::{
    CrashInfo, ExitInfo, Outcome, ResourceUsage, RestartPolicy, TaskId, TaskRecord,
    WorkingProcessFacade,
};

/// The six types the feature promises, checked by the compiler.
#[allow(dead_code)]
fn promised() {
    fn serde<T: Serialize + DeserializeOwned>() {}
    serde::<Outcome<String>>();
    serde::<CrashInfo>();
    serde::<ExitInfo>();
    serde::<ResourceUsage>();
    serde::<TaskId>();
    serde::<TaskRecord<SimpleTask>>();
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(value, config).expect("encodes");
    let (back, used) = bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
    assert_eq!(used, bytes.len());
    back
}

#[test]
fn the_records_of_a_real_run_round_trip() {
    let _dog = common::watchdog("serde_round_trip");
    let w = WorkingProcessFacade::<SimpleTask>::builder(common::test_worker())
        .restart(RestartPolicy::Never)
        .spawn()
        .expect("spawn");
    for name in ["one", "crash", "after"] {
        w.process_task(SimpleTask::new(name, 0.0))
            .expect("accepted");
    }
    let records = w.collect_tasks().expect("collect");
    assert_eq!(common::kinds(&records), ["completed", "crashed", "not run"]);
    let Outcome::Crashed(crash) = &records[1].outcome else {
        unreachable!("checked above")
    };
    assert!(crash.exit.usage.is_some(), "{crash:?}");

    let back: Vec<TaskRecord<SimpleTask>> = round_trip(&records);
    assert_eq!(back.len(), records.len());
    for (a, b) in records.iter().zip(&back) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.task, b.task);
        assert_eq!(a.outcome, b.outcome);
    }
    assert_eq!(round_trip(crash), *crash);
    assert_eq!(round_trip(&crash.exit), crash.exit);
    let usage = crash.exit.usage.expect("checked above");
    assert_eq!(round_trip(&usage), usage);
    assert_eq!(round_trip(&records[2].id), records[2].id);
}
