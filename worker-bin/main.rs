//! `facade-worker`: the stock worker. Runs `worker_facade::simple::SimpleTask`s:
//! sleeps for each task's time and returns `"<id> solved after <t>"`; a task
//! named `crash` aborts the process.
//!
//! It is started by a `WorkingProcessFacade`, which hands it the connection
//! details on stdin; run by hand it explains that and exits.

use worker_facade::simple::SimpleTask;

fn main() {
    worker_facade::worker::serve(|t: SimpleTask| Ok::<_, String>(t.solve()))
}
