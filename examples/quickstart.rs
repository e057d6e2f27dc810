//! The Python `multiprocessing` queue-consumer pattern, in Rust: spawn a
//! worker, hand it two tasks without blocking, collect the results matched
//! to their tasks.
//!
//! Run it with `cargo run --example quickstart`. The worker is this very
//! executable, re-executed (`WorkerCommand::current_exe`), so nothing else
//! needs to be built first.

use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In the re-executed worker this serves tasks and exits; here it returns.
    worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));

    let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::current_exe())?;
    println!("worker {} started", w.worker_pid().unwrap_or(0));

    // Neither call waits for the worker.
    w.process_task(SimpleTask::new("one", 0.2))?;
    w.process_task(SimpleTask::new("two", 0.5))?;

    for record in w.collect_tasks()? {
        match record.outcome {
            Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
            other => println!("{} - {}", record.task.id, other),
        }
    }
    Ok(())
}
