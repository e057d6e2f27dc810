//! Your own task type, and every way a task can end.
//!
//! `cargo run --example custom_task`. The worker is this executable,
//! re-executed: `run_if_worker` is the first line of `main`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_facade::{Outcome, Task, WorkerCommand, WorkingProcessFacade};

/// Parse a number; some inputs misbehave on purpose.
#[derive(Debug, Serialize, Deserialize)]
struct Parse(String);

impl Task for Parse {
    type Output = i64;
}

fn parse(task: Parse) -> Result<i64, String> {
    match task.0.as_str() {
        "abort" => std::process::abort(),
        "panic" => panic!("the parser panicked on purpose"),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        text => text.trim().parse().map_err(|e| format!("{text:?}: {e}")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    worker_facade::worker::run_if_worker(parse);

    let w = WorkingProcessFacade::<Parse>::builder(
        WorkerCommand::current_exe().env("RUST_BACKTRACE", "0"),
    )
    .task_timeout(Duration::from_millis(500))
    .spawn()?;
    for input in ["42", "x", "panic", "abort", "hang", "7"] {
        w.process_task(Parse(input.to_string()))?;
    }
    for record in w.collect_tasks()? {
        let what = match &record.outcome {
            Outcome::Completed(n) => format!("completed: {n}"),
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::Crashed(crash) => format!("crashed: {}", crash.exit),
            Outcome::TimedOut(limit) => format!("timed out after {limit:?}"),
            Outcome::NotRun(why) => format!("not run: {why}"),
            // `Outcome` may gain variants; its Display covers any of them.
            other => other.to_string(),
        };
        println!("{:>8} -> {what}", record.task.0);
    }
    let stats = w.stats();
    println!(
        "{} submitted, {} completed, {} failed, {} crashed, {} timed out, {} worker restarts",
        stats.submitted,
        stats.completed,
        stats.failed,
        stats.crashed,
        stats.timed_out,
        stats.restarts
    );
    Ok(())
}
