//! worker-facade in a tokio program: a plain `main` that calls
//! `run_if_worker` first and builds the runtime after it.
//!
//! Not `#[tokio::main]`: the worker (this program, re-executed) would then
//! serve from inside the runtime, and a handler that runs async code on a
//! runtime of its own panics on every task ("Cannot start a runtime from
//! within a runtime"). Here the handler does exactly that, and works.
//!
//! Run it with `cargo run --example tokio_main`; `tests/tokio_main.rs` runs
//! this very file as its own program.

use std::time::Duration;

use worker_facade::{Outcome, WorkerCommand, WorkingProcessFacade, simple::SimpleTask};

/// The worker's handler: async work, on a runtime of the worker's own.
fn handler(t: SimpleTask) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("could not build the worker's runtime: {e}"))?;
    Ok(rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        format!("{} (async)", t.solve())
    }))
}

/// The program (`pub(crate)`: `tests/tokio_main.rs` runs it as its own).
pub(crate) fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing: in the worker this serves tasks and exits.
    worker_facade::worker::run_if_worker(handler);

    // Only the parent gets here, and builds its runtime.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let w = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe())
            .workers(2)
            .spawn()?;
        let mut handles = Vec::new();
        for i in 0..4 {
            let task = SimpleTask::new(format!("t{i}"), 0.0);
            handles.push(w.submit(task).map_err(|e| e.to_string())?);
        }
        for (i, handle) in handles.into_iter().enumerate() {
            match handle.await? {
                Outcome::Completed(result) => println!("t{i} - {result}"),
                other => return Err(format!("t{i} - {other}").into()),
            }
        }
        // Collect before the runtime goes: a drop waits for the workers.
        w.collect_tasks()?;
        Ok(())
    })
}
