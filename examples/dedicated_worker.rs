//! Using a dedicated worker binary: the stock `facade-worker` of this crate,
//! whose whole `main` is
//! `worker_facade::worker::serve(|t: SimpleTask| Ok::<_, String>(t.solve()))`.
//!
//! Cargo does not build a package's binaries for `cargo run --example`, so
//! build the worker first:
//!
//! ```sh
//! cargo build --bin facade-worker
//! cargo run --example dedicated_worker
//! ```

use std::path::PathBuf;

use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};

/// `target/<profile>/facade-worker`, beside this example's own directory.
fn stock_worker() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let worker = profile_dir.join("facade-worker");
    worker.exists().then_some(worker)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(worker) = stock_worker() else {
        eprintln!("facade-worker is not built yet: run `cargo build --bin facade-worker` first");
        std::process::exit(2);
    };
    let w = WorkingProcessFacade::<SimpleTask>::spawn(WorkerCommand::new(&worker))?;
    w.process_task(SimpleTask::new("one", 0.2))?;
    w.process_task(SimpleTask::new("crash", 0.0))?; // aborts the worker, on purpose
    w.process_task(SimpleTask::new("two", 0.1))?; // runs on a fresh worker
    for record in w.collect_tasks()? {
        match record.outcome {
            Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
            other => println!("{} - {}", record.task.id, other),
        }
    }
    Ok(())
}
