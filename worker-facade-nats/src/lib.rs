//! Run the same [`worker_facade::Task`] types on agents on many machines,
//! through a NATS JetStream server, with the local facade's guarantee:
//! exactly one outcome per accepted task.
//!
//! - An [`Agent`] runs on each machine. It pulls tasks from the server as
//!   fast as it has free local worker processes, runs each in one (a crash
//!   of the work kills only that worker, as with a local facade), records the
//!   outcome, then acknowledges the task.
//! - A [`RemoteFacade`] is the client: `process_task` (never blocks),
//!   `submit` (a handle that is also a `Future`), `collect_tasks` (every
//!   record, in submission order), and [`resume`](RemoteBuilder::resume)
//!   after the client process restarted.
//!
//! # Example
//!
//! An agent, on each machine (its own program, or the same one started with
//! another argument):
//!
//! ```no_run
//! // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
//! use worker_facade::{WorkerCommand, WorkingProcessFacade, simple::SimpleTask};
//! use worker_facade_nats::{Agent, Cluster};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The local workers are this program, re-executed.
//!     worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
//!     let local = WorkingProcessFacade::<SimpleTask>::builder(WorkerCommand::current_exe());
//!     Agent::builder("nats://10.0.0.5:4222", local)
//!         .cluster(Cluster::named("simple"))
//!         .workers(8)
//!         .run()?; // until SIGTERM or SIGINT, then a graceful shutdown
//!     Ok(())
//! }
//! ```
//!
//! The client, anywhere:
//!
//! ```no_run
//! // no_run: needs a NATS JetStream server (tests/cluster.rs starts its own).
//! use worker_facade::{Outcome, simple::SimpleTask};
//! use worker_facade_nats::{Cluster, RemoteFacade};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = RemoteFacade::<SimpleTask>::builder("nats://10.0.0.5:4222")
//!         .cluster(Cluster::named("simple"))
//!         .start()?;
//!     for i in 0..100 {
//!         client.process_task(SimpleTask::new(format!("t{i}"), 0.1))?;
//!     }
//!     for record in client.collect_tasks()? {
//!         match record.outcome {
//!             Outcome::Completed(result) => println!("{} - {}", record.task.id, result),
//!             other => println!("{} - {}", record.task.id, other),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # The guarantee, and what changes across machines
//!
//! - **Exactly one outcome per accepted task.** Tasks are published with a
//!   message ID the server deduplicates by; outcomes are written with a
//!   key-value `create` that only the first writer wins. An agent that finds
//!   an outcome already recorded acknowledges the task and skips it. The
//!   client's deadline writes its `NotRun` the same way.
//! - **A task can run more than once when its agent dies, never when its
//!   worker crashes.** A worker crash is the task's outcome
//!   ([`Crashed`](worker_facade::Outcome::Crashed), with the signal and the
//!   worker's last stderr lines), recorded and acknowledged. An agent killed
//!   mid-task (or cut off from the server for longer than
//!   [`ack_wait`](Cluster::ack_wait)) loses the task to another agent after
//!   `ack_wait`; its worker processes die with it. Make tasks whose effects
//!   are safe to repeat, or check for them.
//! - **A task that kills its agent every time** is given up after
//!   [`max_attempts`](Cluster::max_attempts) deliveries: it ends `NotRun`
//!   with a reason naming the attempts, once, and leaves the queue.
//! - **Long tasks stay with their agent**: it sends a heartbeat three times
//!   per `ack_wait` while the task runs.
//! - **The server restarting** (with its file storage) loses nothing:
//!   clients and agents reconnect by themselves and retry what they were
//!   doing; publishes are deduplicated and outcomes written once.
//! - **A server that is down at start** is an error
//!   ([`ConnectError::Unreachable`]), not a wait.
//! - **Mismatches are refused**: tasks carry this crate's protocol version
//!   and a fingerprint of the task type; an agent of another version or task
//!   type records a `NotRun` saying so rather than decoding garbage.
//! - **Size**: a task must fit in one server message (`max_payload`, 1 MB by
//!   default); a larger one is refused by `process_task` with
//!   [`RemoteSubmitError::TooLarge`], the task handed back. Send a reference
//!   to large data (a path, an object-store key) instead.
//!
//! # Servers
//!
//! Any NATS server with JetStream (`nats-server -js`, with file storage so
//! that a restart loses nothing). 2.10 or later is recommended. 2.9 works,
//! with one difference: after the server itself is killed, tasks already
//! acknowledged may stay in the stream until [`Cluster::outcome_ttl`]
//! (they are never delivered again).
//!
//! # Throughput
//!
//! Each task costs an agent a few round trips to the server (a pull, an
//! outcome check, the outcome's `create`, the acknowledgement). For tiny
//! tasks that dominates; [`AgentBuilder::prefetch`] hides the pull, at the
//! price its documentation states.
//!
//! # Codec
//!
//! Tasks and outcomes travel through `worker_facade::codec`, as between a
//! local facade and its workers (bincode 2, or postcard 1 with
//! worker-facade's `postcard` feature; build agents and clients with the
//! same one, or they refuse each other's tasks by name), with the same
//! limitations: no `#[serde(flatten)]`, `untagged` or `skip_serializing_if`
//! (see `worker_facade::codec`). Mark byte blobs `#[serde(with =
//! "serde_bytes")]`.

#![deny(missing_docs)]

mod agent;
mod client;
mod config;
mod error;
mod handle;
mod local;
mod reasons;
mod server;
mod store;
mod wire;

pub use agent::{Agent, AgentBuilder, AgentReport, RecordedTask};
pub use client::{RemoteBuilder, RemoteFacade, RemoteRecord};
pub use config::Cluster;
pub use error::{AgentError, ConnectError, RemoteCollectError, RemoteSubmitError, StartError};
pub use handle::{RemoteFuture, RemoteHandle};
pub use wire::PROTOCOL_VERSION;
