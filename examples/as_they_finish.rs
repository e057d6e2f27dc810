//! Results as they finish, `map`, progress, and lines attributed to their
//! task.
//!
//! Run it with `cargo run --example as_they_finish`. The workers are this
//! very executable, re-executed (`WorkerCommand::current_exe`).
//!
//! 1. `map` runs its input lazily, at most 2 tasks in flight, and yields
//!    outcomes in input order.
//! 2. `completed()` hands over each record as its task finishes while a
//!    slow task still runs.
//! 3. A long task reports its progress; the parent prints it from a
//!    callback and reads the latest on the handle.
//! 4. Every line a worker prints comes with the ID of the task that printed
//!    it.

use std::time::Duration;

use worker_facade::simple::SimpleTask;
use worker_facade::worker::Progress;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};

fn handler(t: SimpleTask, progress: &Progress) -> Result<String, String> {
    if t.id == "long" {
        for percent in (0..=100u8).step_by(20) {
            progress.report(&percent);
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    println!("working on {}", t.id);
    Ok(t.solve())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a re-executed worker this serves tasks and exits; here it returns.
    worker_facade::worker::run_if_worker_with_progress(handler);

    let command = WorkerCommand::current_exe().output(Output::capture(|line| {
        if let Some(task) = line.task {
            println!("  {task} printed {:?}", line.text);
        }
    }));
    let w = WorkingProcessFacade::<SimpleTask>::builder(command)
        .workers(2)
        .spawn()?;

    println!("map, 2 in flight (the input could be endless):");
    let inputs = (0u64..4).map(|i| SimpleTask::new(format!("m{i}"), 0.0));
    for outcome in w.map(inputs).ahead(2) {
        println!("{}", outcome?.display_output());
    }

    println!("records as they finish:");
    let done = w.completed();
    w.process_task(SimpleTask::new("slow", 0.5))?;
    std::thread::sleep(Duration::from_millis(20));
    for name in ["a", "b", "c"] {
        w.process_task(SimpleTask::new(name, 0.0))?;
    }
    for record in done.iter().take(3) {
        println!(
            "{} {}: {}",
            record.id,
            record.task.id,
            record.outcome.display_output()
        );
    }

    println!("progress of a long task:");
    let long = w.submit_with_progress(SimpleTask::new("long", 0.0), |percent: u8| {
        println!("  long task at {percent}%");
    })?;
    let outcome = long.wait_timeout(Duration::from_secs(10))?;
    println!(
        "{}; last progress {:?}",
        outcome.display_output(),
        long.progress::<u8>()
    );

    // The slow task's record, which no one took from `done`, is here.
    for record in w.collect_tasks()? {
        println!(
            "collected {} {}: {}",
            record.id,
            record.task.id,
            record.outcome.display_output()
        );
    }
    Ok(())
}
