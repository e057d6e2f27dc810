//! A task's own code — its `Serialize` and `Deserialize`, its output's, and
//! the handler — fails with an error, a panic or an abort at each stage it
//! runs: encoding in the parent, decoding in the worker, the handler,
//! encoding in the worker, decoding in the parent. Whatever it does, only
//! that task is affected, through the facade and through the grinder; an
//! abort is possible only in the worker (an abort in the parent is the
//! caller's own process ending, which no library can prevent), and is a
//! crash of that task, never re-run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use worker_facade::{
    LeasedExecutorManager, NotRunReason, Outcome, Output, RestartPolicy, SubmitError, Task,
    WorkError, WorkGrinder, WorkerCommand, WorkingProcessFacade,
};

/// Where a task misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stage {
    Nowhere,
    EncodeInParent,
    DecodeInWorker,
    Handler,
    EncodeInWorker,
    DecodeInParent,
}

/// How it misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum How {
    Error,
    Panic,
    Abort,
}

#[derive(Debug, Clone, PartialEq)]
struct Staged {
    n: u32,
    stage: Stage,
    how: How,
}

#[derive(Debug, Clone, PartialEq)]
struct Out {
    n: u32,
    stage: Stage,
    how: How,
}

#[derive(Serialize, Deserialize)]
struct Raw {
    n: u32,
    stage: Stage,
    how: How,
}

fn misbehave<E>(how: How, what: &str, error: impl FnOnce(String) -> E) -> E {
    match how {
        How::Error => error(format!("planned {what} error")),
        How::Panic => panic!("planned {what} panic"),
        How::Abort => std::process::abort(),
    }
}

impl Serialize for Staged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.stage == Stage::EncodeInParent {
            return Err(misbehave(self.how, "task encode", S::Error::custom));
        }
        Raw {
            n: self.n,
            stage: self.stage,
            how: self.how,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Staged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        // Only a worker ever decodes a task: say so, to count decodes.
        eprintln!("decoding {}", raw.n);
        if raw.stage == Stage::DecodeInWorker {
            return Err(misbehave(raw.how, "task decode", D::Error::custom));
        }
        Ok(Staged {
            n: raw.n,
            stage: raw.stage,
            how: raw.how,
        })
    }
}

impl Serialize for Out {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.stage == Stage::EncodeInWorker {
            return Err(misbehave(self.how, "output encode", S::Error::custom));
        }
        Raw {
            n: self.n,
            stage: self.stage,
            how: self.how,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Out {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        if raw.stage == Stage::DecodeInParent {
            return Err(misbehave(raw.how, "output decode", D::Error::custom));
        }
        Ok(Out {
            n: raw.n,
            stage: raw.stage,
            how: raw.how,
        })
    }
}

impl Task for Staged {
    type Output = Out;
    // Its Deserialize counts decodes (and may abort): the handshake's type
    // check must not run it.
    const SHAPE_CHECK: bool = false;
}

fn handler(t: Staged) -> Result<Out, String> {
    eprintln!("ran {}", t.n);
    if t.stage == Stage::Handler {
        return Err(misbehave(t.how, "handler", |e| e));
    }
    Ok(Out {
        n: t.n,
        stage: t.stage,
        how: t.how,
    })
}

#[test]
#[ignore = "not a test: the worker side of the tests below"]
fn stages_worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(handler);
    }
}

fn worker() -> (WorkerCommand, common::Lines) {
    common::capture_lines(
        WorkerCommand::current_exe()
            .args(common::libtest_args("stages_worker_main"))
            .output(Output::Silent),
    )
}

/// Every stage and way to fail that a worker-side or parent-side fault can
/// take, each between two good tasks. An abort in the parent is left out.
fn faults() -> Vec<(Stage, How)> {
    let mut out = Vec::new();
    for stage in [
        Stage::EncodeInParent,
        Stage::DecodeInWorker,
        Stage::Handler,
        Stage::EncodeInWorker,
        Stage::DecodeInParent,
    ] {
        for how in [How::Error, How::Panic, How::Abort] {
            let in_parent = matches!(stage, Stage::EncodeInParent | Stage::DecodeInParent);
            if !(in_parent && how == How::Abort) {
                out.push((stage, how));
            }
        }
    }
    out
}

/// The numbered tasks: a good one, then each fault followed by a good one.
fn tasks() -> Vec<Staged> {
    let mut out = vec![Staged {
        n: 0,
        stage: Stage::Nowhere,
        how: How::Error,
    }];
    for (stage, how) in faults() {
        let n = out.len() as u32;
        out.push(Staged { n, stage, how });
        out.push(Staged {
            n: n + 1,
            stage: Stage::Nowhere,
            how: How::Error,
        });
    }
    out
}

fn good(t: &Staged) -> Out {
    Out {
        n: t.n,
        stage: t.stage,
        how: t.how,
    }
}

/// How many lines of `lines` are exactly `text`.
fn count(lines: &common::Lines, text: &str) -> usize {
    lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.text == text)
        .count()
}

#[test]
fn through_the_facade_each_fault_costs_only_its_own_task() {
    common::within(Duration::from_secs(60), || {
        let (cmd, lines) = worker();
        let w = WorkingProcessFacade::<Staged>::builder(cmd)
            .restart(RestartPolicy::Limited {
                max_restarts: 10,
                window: Duration::from_secs(60),
            })
            .spawn()
            .expect("spawn");
        let mut handles = Vec::new();
        for t in tasks() {
            let expected = t.clone();
            match w.submit(t) {
                Ok(h) => handles.push((expected, Some(h))),
                Err(SubmitError::Unencodable { task, reason }) => {
                    assert_eq!(task, expected, "the refused task is handed back");
                    assert_eq!(task.stage, Stage::EncodeInParent, "{reason}");
                    let want = if task.how == How::Panic {
                        "panic"
                    } else {
                        "error"
                    };
                    assert!(reason.contains(want), "{reason}");
                    handles.push((expected, None));
                }
                Err(other) => panic!("task {}: {other}", expected.n),
            }
        }
        let mut aborts = 0;
        for (t, h) in handles {
            let Some(h) = h else { continue };
            let outcome = h.wait_timeout(Duration::from_secs(20)).expect("answered");
            match (t.stage, t.how) {
                (Stage::Nowhere, _) => {
                    assert_eq!(outcome, Outcome::Completed(good(&t)), "#{}", t.n)
                }
                (_, How::Abort) => {
                    aborts += 1;
                    let Outcome::Crashed(crash) = &outcome else {
                        panic!("#{} {:?}: {outcome:?}", t.n, t.stage);
                    };
                    assert_eq!(crash.exit.signal_name(), Some("SIGABRT"), "{crash}");
                }
                (Stage::DecodeInWorker, how) => match &outcome {
                    Outcome::NotRun(NotRunReason::Undecodable(why)) => {
                        let want = if how == How::Panic {
                            "panicked"
                        } else {
                            "planned task decode error"
                        };
                        assert!(why.contains(want), "{why}");
                    }
                    other => panic!("#{}: {other:?}", t.n),
                },
                (Stage::Handler, How::Error) => {
                    assert_eq!(outcome, Outcome::Failed("planned handler error".into()))
                }
                (Stage::Handler, How::Panic) => assert!(
                    matches!(&outcome, Outcome::Failed(m) if m.contains("handler panicked")),
                    "{outcome:?}"
                ),
                (Stage::EncodeInWorker, _) => assert!(
                    matches!(&outcome, Outcome::Failed(m) if m.contains("encode") || m.contains("Serialize")),
                    "{outcome:?}"
                ),
                (Stage::DecodeInParent, _) => assert!(
                    matches!(&outcome, Outcome::Failed(m) if m.contains("decod")),
                    "{outcome:?}"
                ),
                (stage, how) => panic!("unexpected {stage:?} {how:?}: {outcome:?}"),
            }
        }
        assert_eq!(aborts, 3, "one abort at each worker stage");
        let stats = w.stats();
        assert_eq!(
            stats.restarts, 3,
            "only the aborts cost a worker: {stats:?}"
        );
        // Collecting waits for the last worker's exit, and so for its last
        // output lines.
        assert!(w.collect_tasks().expect("collect").is_empty());
        // No task ran twice, none was decoded twice: the task whose decode
        // aborted its worker was quarantined, not sent to the next one.
        for t in tasks() {
            let ran = count(&lines, &format!("ran {}", t.n));
            let decoded = count(&lines, &format!("decoding {}", t.n));
            let expect_ran = match t.stage {
                Stage::EncodeInParent | Stage::DecodeInWorker => 0,
                _ => 1,
            };
            let expect_decoded = usize::from(t.stage != Stage::EncodeInParent);
            assert_eq!(ran, expect_ran, "task {} ran {ran} times", t.n);
            assert_eq!(
                decoded, expect_decoded,
                "task {} decoded {decoded} times",
                t.n
            );
        }
    });
}

#[test]
fn through_the_grinder_each_fault_costs_only_its_own_item_and_nothing_is_decoded_in_the_parent() {
    common::within(Duration::from_secs(60), || {
        let (cmd, lines) = worker();
        let pool = Arc::new(
            LeasedExecutorManager::<Staged>::builder(cmd)
                .max_executors(1)
                .build()
                .expect("pool"),
        );
        pool.start().expect("start");
        // One batch for everything, so that an abort leaves the items
        // behind it unstarted and the grinder runs them again elsewhere
        // (with the original task: a copy decoded in this process would
        // abort it with the task whose decode aborts).
        let all = tasks();
        let grinder = WorkGrinder::builder(pool.clone())
            .batch_size_threshold(all.len())
            .max_wait_seconds(5.0)
            .build()
            .expect("grinder");
        grinder.start().expect("start");
        let handles: Vec<_> = all
            .iter()
            .map(|t| grinder.submit_from_thread(t.clone()).expect("taken"))
            .collect();
        for (t, h) in all.iter().zip(handles) {
            let result = h.wait().expect("waited once");
            match (t.stage, t.how) {
                (Stage::Nowhere, _) => assert_eq!(result.as_ref().ok(), Some(&good(t)), "#{}", t.n),
                (Stage::EncodeInParent, _) => assert!(
                    matches!(&result, Err(WorkError::Refused(_))),
                    "#{}: {result:?}",
                    t.n
                ),
                (_, How::Abort) => match &result {
                    Err(WorkError::Crashed(crash)) => {
                        assert_eq!(crash.exit.signal_name(), Some("SIGABRT"), "{crash}")
                    }
                    other => panic!("#{}: {other:?}", t.n),
                },
                (Stage::DecodeInWorker, _) => assert!(
                    matches!(&result, Err(WorkError::NotRun(r)) if matches!(**r, NotRunReason::Undecodable(_))),
                    "#{}: {result:?}",
                    t.n
                ),
                (_, _) => assert!(
                    matches!(&result, Err(WorkError::Failed(_))),
                    "#{} {:?} {:?}: {result:?}",
                    t.n,
                    t.stage,
                    t.how
                ),
            }
        }
        grinder.stop(false);
        pool.stop();
        for t in &all {
            let ran = count(&lines, &format!("ran {}", t.n));
            let expect = match t.stage {
                Stage::EncodeInParent | Stage::DecodeInWorker => 0,
                _ => 1,
            };
            assert_eq!(ran, expect, "task {} ran {ran} times", t.n);
        }
    });
}
