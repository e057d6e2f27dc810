//! A type check at the handshake (issue 11, item 5): a worker binary built
//! with another shape of the task type is refused with a `SpawnError` that
//! names both shapes, before any task could be decoded into the wrong
//! fields. The worker here is the stock `facade-worker` binary (its task is
//! `SimpleTask { id: String, estimated_processing_time: f64 }`); the parent
//! is this test binary with its own versions of that type.

mod common;

use serde::{Deserialize, Serialize};
use worker_facade::{Outcome, SpawnError, Task, WorkingProcessFacade};

/// `SimpleTask` with its fields in the other order: the same bytes would
/// decode into each other's fields.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename = "SimpleTask")]
struct Swapped {
    estimated_processing_time: f64,
    id: String,
}
impl Task for Swapped {
    type Output = String;
}

/// The same task shape with another output type.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename = "SimpleTask")]
struct OtherOutput {
    id: String,
    estimated_processing_time: f64,
}
impl Task for OtherOutput {
    type Output = u64;
}

/// A copy of `SimpleTask` under another Rust path: the same shape, so it is
/// accepted (the check is about the bytes' meaning, not the type's name).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename = "SimpleTask")]
struct SameShape {
    id: String,
    estimated_processing_time: f64,
}
impl Task for SameShape {
    type Output = String;
}

#[test]
fn a_worker_whose_task_fields_are_in_another_order_is_refused_naming_both_shapes() {
    let err = WorkingProcessFacade::<Swapped>::spawn(common::stock_worker())
        .expect_err("the stale worker must be refused");
    match &err {
        SpawnError::TypeMismatch {
            role,
            parent,
            worker,
            ..
        } => {
            assert_eq!(*role, "task");
            assert!(parent.name.ends_with("Swapped"), "{parent:?}");
            assert_eq!(worker.name, "worker_facade::simple::SimpleTask");
            assert_eq!(
                parent.shape,
                "SimpleTask; SimpleTask { estimated_processing_time: F64, id: Str }"
            );
            assert_eq!(
                worker.shape,
                "SimpleTask; SimpleTask { id: Str, estimated_processing_time: F64 }"
            );
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("another task type"), "{text}");
    assert!(text.contains("rebuild the worker"), "{text}");
}

#[test]
fn a_worker_with_another_output_type_is_refused() {
    let err = WorkingProcessFacade::<OtherOutput>::spawn(common::stock_worker())
        .expect_err("the worker returns strings, not numbers");
    match err {
        SpawnError::TypeMismatch {
            role,
            parent,
            worker,
            ..
        } => {
            assert_eq!(role, "output");
            assert_eq!(
                (parent.shape.as_str(), worker.shape.as_str()),
                ("U64", "Str")
            );
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn the_same_shape_under_another_name_is_accepted_and_runs() {
    let w = WorkingProcessFacade::<SameShape>::spawn(common::stock_worker()).expect("spawn");
    w.process_task(SameShape {
        id: "twin".into(),
        estimated_processing_time: 0.0,
    })
    .expect("accepted");
    let records = w.collect_tasks().expect("collect");
    assert_eq!(
        records[0].outcome,
        Outcome::Completed("twin solved after 0".into())
    );
}
