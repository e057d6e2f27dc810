//! Tasks per second through two local agents (one worker each) against the
//! local facade with two workers, measured in the same run; and the same
//! agents with a prefetch. Report only: no figure is asserted.
//!
//! `cargo bench -p worker-facade-nats --bench throughput`
//!
//! Starts its own `nats-server -js` on a free loopback port (set
//! `NATS_SERVER_BIN` to choose the binary). The agents are this program
//! started again; their workers, and the local facade's, are this program
//! again.

use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};
use worker_facade_nats::{Agent, Cluster, RemoteFacade};

const TASKS: u64 = 2000;
const ROUNDS: usize = 3;
/// The prefetch of the second pair of agents.
const PREFETCH: usize = 8;

/// One cluster per prefetch setting, so each pair of agents gets only its
/// own tasks.
fn cluster(prefetch: usize) -> Cluster {
    Cluster::named(format!("bench-p{prefetch}"))
}

fn worker() -> WorkerCommand {
    WorkerCommand::current_exe().output(Output::Silent)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    worker_facade::worker::run_if_worker(|t: SimpleTask| Ok::<_, String>(t.solve()));
    if let Ok(name) = std::env::var("WF_BENCH_AGENT") {
        let url = std::env::var("NATS_URL")?;
        let prefetch: usize = std::env::var("WF_BENCH_PREFETCH")?.parse()?;
        let local = WorkingProcessFacade::<SimpleTask>::builder(worker());
        Agent::builder(url, local)
            .cluster(cluster(prefetch))
            .workers(1)
            .prefetch(prefetch)
            .name(name)
            .run()?;
        return Ok(());
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let store = std::env::temp_dir().join(format!("wf-nats-bench-{}", std::process::id()));
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = match Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("SKIPPED: cannot start {binary} ({e}); install nats-server to run this bench");
            return Ok(());
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            return Err("nats-server did not listen".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let version = Command::new(&binary).arg("--version").output()?;
    let result = run(&url, String::from_utf8_lossy(&version.stdout).trim());
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&store);
    result
}

fn run(url: &str, version: &str) -> Result<(), Box<dyn std::error::Error>> {
    let agents = [
        start_agent(url, "bench-1", 0)?,
        start_agent(url, "bench-2", 0)?,
        start_agent(url, "bench-3", PREFETCH)?,
        start_agent(url, "bench-4", PREFETCH)?,
    ];
    let mut local_rates = Vec::new();
    let mut remote_rates = Vec::new();
    let mut prefetch_rates = Vec::new();
    for _ in 0..ROUNDS {
        local_rates.push(local_rate()?);
        remote_rates.push(remote_rate(url, 0)?);
        prefetch_rates.push(remote_rate(url, PREFETCH)?);
    }
    for (mut agent, pump) in agents {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = agent.wait();
        let _ = pump.join();
    }
    let local = median(&mut local_rates);
    let remote = median(&mut remote_rates);
    let prefetched = median(&mut prefetch_rates);
    println!(
        "worker-facade-nats throughput ({version}, {TASKS} zero-second tasks, median of {ROUNDS})"
    );
    println!("  local facade, 2 workers:             {local:>9.0} tasks/s");
    println!(
        "  2 agents x 1 worker, via NATS:       {remote:>9.0} tasks/s   ratio {:.4}",
        remote / local
    );
    println!(
        "  the same agents with prefetch {PREFETCH}:    {prefetched:>9.0} tasks/s   ratio {:.4}",
        prefetched / local
    );
    Ok(())
}

/// Two local facades of one worker each, tasks dealt alternately.
fn local_rate() -> Result<f64, Box<dyn std::error::Error>> {
    let facades = [
        WorkingProcessFacade::<SimpleTask>::spawn(worker())?,
        WorkingProcessFacade::<SimpleTask>::spawn(worker())?,
    ];
    let start = Instant::now();
    for i in 0..TASKS {
        facades[(i % 2) as usize].process_task(SimpleTask::new(format!("t{i}"), 0.0))?;
    }
    let mut done = 0;
    for f in &facades {
        done += f
            .collect_tasks()?
            .iter()
            .filter(|r| r.outcome.is_completed())
            .count();
    }
    let elapsed = start.elapsed();
    if done as u64 != TASKS {
        return Err(format!("local: only {done} of {TASKS} completed").into());
    }
    Ok(TASKS as f64 / elapsed.as_secs_f64())
}

fn remote_rate(url: &str, prefetch: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let client = RemoteFacade::<SimpleTask>::builder(url)
        .cluster(cluster(prefetch))
        .start()?;
    let start = Instant::now();
    for i in 0..TASKS {
        client.process_task(SimpleTask::new(format!("t{i}"), 0.0))?;
    }
    let records = client.collect_tasks()?;
    let elapsed = start.elapsed();
    let done = records.iter().filter(|r| r.outcome.is_completed()).count();
    if done as u64 != TASKS {
        return Err(format!("remote: only {done} of {TASKS} completed").into());
    }
    Ok(TASKS as f64 / elapsed.as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn start_agent(
    url: &str,
    name: &str,
    prefetch: usize,
) -> Result<(Child, thread::JoinHandle<()>), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .env("WF_BENCH_AGENT", name)
        .env("WF_BENCH_PREFETCH", prefetch.to_string())
        .env("NATS_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
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
            }
        })?;
    if ready.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{name} did not start").into());
    }
    Ok((child, pump))
}
