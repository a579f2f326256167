//! `dfs cluster up`: a whole cluster on loopback, as child processes of this one, in the
//! foreground, and `dfs cluster stop|start|status` to act on one of its nodes by hand.
//!
//! Ports are fixed (from `--base-port`, 7001 by default: metadata on 7001.., storage on
//! 7101.., and each node's HTTP port, with its metrics and the status page, 200 above its
//! own) so that client commands find the cluster with no flags at all. Each node gets its
//! own directory under `--data-dir` and logs to `<data-dir>/logs/<node>.log`.
//!
//! Once the cluster is ready, `up` supervises it as an init system would: a node that dies
//! is said so, and (`--restart on-failure`, the default) started again on the same data after
//! a back-off (1 s, doubling to 30 s; a node that keeps dying, `RESTARTS_IN_A_ROW_MAX` times
//! within a minute of each start, is left down); the others keep running, so the cluster's
//! self-healing can be watched. A node that exits cleanly (someone stopped it) is not
//! restarted. Ctrl-C (or SIGTERM) stops every node and exits. The other commands reach the
//! running `up` through a Unix socket in its data dir (`cluster.sock`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use dfs_core::client::{ClientConfig, DfsClient, RetryPolicy};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cli::{emit, emit_json, shown, usage, Ctx};
use crate::daemons::shutdown_signal;
use crate::security;
use dfs_core::auth::Role;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start a local cluster in the foreground; Ctrl-C stops it.
    Up(UpArgs),
    /// Stop one node of the running `cluster up` (e.g. storage-2); it stays down until `start`.
    Stop(StopArgs),
    /// Start a node of the running `cluster up` that is down (stopped, or given up on).
    Start(NodeArgs),
    /// The nodes of the running `cluster up`: state, process id, restarts, address.
    Status(ControlArgs),
}

/// Whether `cluster up` starts a node again when it dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// After a back-off, unless it exited cleanly or keeps dying.
    OnFailure,
    /// Never: it stays down (`dfs cluster start NODE` starts it).
    Never,
}

#[derive(Args)]
pub struct UpArgs {
    /// Number of metadata nodes (Raft members): 1, 3 or 5.
    #[arg(long = "meta", env = "DFS_CLUSTER_META", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    meta_nodes: u64,
    /// Number of storage nodes.
    #[arg(long = "storage", env = "DFS_CLUSTER_STORAGE", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    storage_nodes: u64,
    /// Directory holding every node's data and logs.
    #[arg(long, env = "DFS_DATA_DIR", default_value = "./dfs-data")]
    data_dir: PathBuf,
    /// First metadata port; storage nodes start 100 above it.
    #[arg(long, env = "DFS_CLUSTER_BASE_PORT", default_value_t = 7001, value_parser = clap::value_parser!(u16).range(1024..=63000))]
    base_port: u16,
    /// Milliseconds between storage heartbeats.
    #[arg(long, env = "DFS_HEARTBEAT_MS", default_value_t = crate::daemons::storage_defaults().heartbeat_interval.as_millis() as u64)]
    heartbeat_ms: u64,
    /// Whether a node that dies is started again (after a back-off).
    #[arg(long, env = "DFS_CLUSTER_RESTART", value_enum, default_value_t = Restart::OnFailure)]
    restart: Restart,
    /// Run every node without TLS (plaintext): any local process can then make any call.
    /// Without it, the cluster runs TLS with a CA made in <data-dir>/tls, and this machine's
    /// client commands find its credentials in the config dir (~/.config/dfs).
    #[arg(long, env = "DFS_CLUSTER_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
    /// Also serve the cluster over S3 on this port of 127.0.0.1 (`dfs s3`): make a key with
    /// `dfs admin s3 key create`.
    #[arg(long = "s3", env = "DFS_CLUSTER_S3", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1024..))]
    s3_port: Option<u16>,
}

/// How the other `cluster` commands find the running `up`.
#[derive(Args)]
pub struct ControlArgs {
    /// The data directory `cluster up` was started with.
    #[arg(long, env = "DFS_DATA_DIR", default_value = "./dfs-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
pub struct NodeArgs {
    /// The node, as `cluster up` names it: meta-1, storage-2, ...
    node: String,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Kill it as a crash would (SIGKILL), instead of a clean shutdown (SIGTERM).
    #[arg(long)]
    kill: bool,
}

/// A started node, for the commands that run a throwaway cluster (the benches).
pub(crate) struct Node {
    name: String,
    pub(crate) child: Child,
}

/// A node that is down this many times in a row, each within `RESTART_RESET` of its start,
/// is left down.
const RESTARTS_IN_A_ROW_MAX: u32 = 10;
/// First wait before a restart; doubles per restart in a row, up to `RESTART_BACKOFF_MAX`.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A node that ran this long before dying starts its back-off afresh.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// A node asked to stop cleanly is killed if it has not exited after this long.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Control requests waiting for the supervisor, and node exits not yet handled.
const QUEUE_MAX: usize = 64;
/// The control socket, in the data dir.
const CONTROL_SOCKET: &str = "cluster.sock";
/// Longest control request line, and the longest wait for it or its answer.
const CONTROL_LINE_MAX_BYTES: usize = 256;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up(args) => up(args).await,
        ClusterCommand::Stop(args) => {
            let verb = if args.kill { "kill" } else { "stop" };
            control(ctx, &args.node.control.data_dir, &format!("{verb} {}", args.node.node)).await
        }
        ClusterCommand::Start(args) => control(ctx, &args.control.data_dir, &format!("start {}", args.node)).await,
        ClusterCommand::Status(args) => control(ctx, &args.data_dir, "status").await,
    }
}

/// A node's HTTP port (status page, /metrics, /healthz) is this far above its RPC port.
pub const HTTP_PORT_OFFSET: u16 = 200;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// One node of a supervised cluster.
struct Member {
    name: String,
    addr: SocketAddr,
    argv: Vec<String>,
    log: PathBuf,
    state: State,
    pid: Option<u32>,
    /// Counts starts, so that the exit of an earlier incarnation is never taken for this one's.
    incarnation: u64,
    started: Instant,
    restarts: u32,
    failures_in_a_row: u32,
    /// Control requests to answer once it has stopped.
    stop_waiters: Vec<UnixStream>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// Asked to stop (by `cluster stop`); killed at the instant if still running then.
    Stopping {
        kill_at: Instant,
    },
    /// Dead, to be started again at the instant.
    Restarting {
        at: Instant,
    },
    /// Stopped by `cluster stop`.
    Stopped,
    /// Exited and left down (cleanly, `--restart never`, or kept dying).
    Exited,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping { .. } => "stopping",
            State::Restarting { .. } => "restarting",
            State::Stopped => "stopped",
            State::Exited => "exited",
        }
    }
}

/// What becomes of a node whose process ended (not asked to stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterExit {
    RestartIn(Duration),
    /// Left down, and why (said to the user).
    LeftDown(&'static str),
}

/// The supervisor's decision, pure: a clean exit (someone stopped it) and `--restart never`
/// leave a node down; else it is restarted after a back-off that doubles with each death
/// within `RESTART_RESET` of its start (counted in `failures_in_a_row`), up to
/// `RESTART_BACKOFF_MAX`, and a node dead more than `RESTARTS_IN_A_ROW_MAX` times so is left
/// down. Returns the decision and the new count.
fn after_exit(restart: Restart, clean: bool, ran_for: Duration, failures_in_a_row: u32) -> (AfterExit, u32) {
    let failures = if ran_for < RESTART_RESET { failures_in_a_row + 1 } else { 1 };
    let next = if clean {
        AfterExit::LeftDown("the rest keeps running")
    } else if restart == Restart::Never {
        AfterExit::LeftDown("the rest keeps running (--restart never)")
    } else if failures > RESTARTS_IN_A_ROW_MAX {
        AfterExit::LeftDown("it keeps dying soon after each start: left down")
    } else {
        AfterExit::RestartIn(RESTART_BACKOFF.saturating_mul(1 << (failures - 1).min(16)).min(RESTART_BACKOFF_MAX))
    };
    (next, failures)
}

/// A node's process ended.
struct Exit {
    member: usize,
    incarnation: u64,
    status: std::io::Result<ExitStatus>,
}

/// What `cluster status` and the others get back (one JSON line).
#[derive(Serialize, Deserialize)]
struct ControlReply {
    ok: bool,
    /// The request was wrong (an unknown node, say): exit code 2.
    #[serde(default)]
    usage: bool,
    message: String,
    #[serde(default)]
    nodes: Vec<MemberJson>,
}

#[derive(Serialize, Deserialize)]
struct MemberJson {
    name: String,
    state: String,
    pid: Option<u32>,
    restarts: u32,
    addr: String,
    log: String,
}

/// How an exit status reads: "exit status: 1", "signal: 9 (SIGKILL)".
fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot tell how it ended: {e}"),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let meta_addrs: Vec<SocketAddr> = (0..args.meta_nodes).map(|i| loopback(args.base_port + i as u16)).collect();
    let storage_addrs: Vec<SocketAddr> = (0..args.storage_nodes).map(|i| loopback(args.base_port + 100 + i as u16)).collect();
    // Status pages and metrics: 200 above each node's RPC port (7201.., 7301.. by default).
    let http = |a: &SocketAddr| loopback(a.port() + HTTP_PORT_OFFSET);
    let http_addrs: Vec<SocketAddr> = meta_addrs.iter().chain(&storage_addrs).map(http).collect();
    let s3_addr = args.s3_port.map(loopback);
    for addr in meta_addrs.iter().chain(&storage_addrs).chain(&http_addrs).chain(&s3_addr) {
        TcpListener::bind(addr).with_context(|| format!("port {} is not free (is a cluster already running? try --base-port)", addr.port()))?;
    }
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let listener = control_listener(&args.data_dir).await?;
    let exe = std::env::current_exe().context("cannot find the dfs executable")?;
    let peers: Vec<String> = meta_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let meta_list: Vec<String> = meta_addrs.iter().map(|a| a.to_string()).collect();

    // TLS: a CA of this cluster's own (kept in its data dir), a certificate per node, and an
    // admin credential for this machine's user; or, with --insecure, nothing, and no stale
    // credentials left for these addresses.
    let pki = security::local_cluster(&args.data_dir, args.insecure, &meta_list)?;
    let tls_flags = |role: Role, name: &str| -> anyhow::Result<Vec<String>> {
        match &pki {
            Some(pki) => pki.node_flags(role, name),
            None => Ok(vec!["--insecure".to_string()]),
        }
    };
    let record = match &pki {
        Some(pki) => pki.write_client_record(&meta_list)?,
        None => {
            security::forget_client_record(&meta_list);
            None
        }
    };

    let mut members = Vec::new();
    for (i, addr) in meta_addrs.iter().enumerate() {
        let name = format!("meta-{}", i + 1);
        let dir = args.data_dir.join(&name);
        let mut argv: Vec<String> = [
            "meta",
            "--id",
            &(i + 1).to_string(),
            "--listen",
            &addr.to_string(),
            "--data-dir",
            &path_arg(&dir),
            "--peers",
            &peers.join(","),
            "--http-listen",
            &http(addr).to_string(),
        ]
        .map(String::from)
        .to_vec();
        argv.extend(tls_flags(Role::Meta, &name)?);
        members.push(member(&name, *addr, &argv, &logs));
    }
    for (i, addr) in storage_addrs.iter().enumerate() {
        let name = format!("storage-{}", i + 1);
        let dir = args.data_dir.join(&name);
        let heartbeat = args.heartbeat_ms.to_string();
        let mut argv: Vec<String> = [
            "storage",
            "--listen",
            &addr.to_string(),
            "--meta",
            &meta_list.join(","),
            "--data-dir",
            &path_arg(&dir),
            "--heartbeat-ms",
            &heartbeat,
            "--http-listen",
            &http(addr).to_string(),
        ]
        .map(String::from)
        .to_vec();
        argv.extend(tls_flags(Role::Storage, &name)?);
        members.push(member(&name, *addr, &argv, &logs));
    }
    if let Some(addr) = s3_addr {
        // The gateway reads S3 keys' secrets: it runs with an admin's certificate.
        let mut argv: Vec<String> = ["s3", "--listen", &addr.to_string(), "--meta", &meta_list.join(",")].map(String::from).to_vec();
        argv.extend(tls_flags(Role::Admin, "s3-gateway")?);
        members.push(member("s3", addr, &argv, &logs));
    }
    let (exits_tx, mut exits) = mpsc::channel::<Exit>(QUEUE_MAX);
    let mut cluster = Supervisor { exe, members, exits_tx, restart: args.restart };
    for i in 0..cluster.members.len() {
        if let Err(e) = cluster.start(i) {
            cluster.stop_all(&mut exits).await;
            return Err(e);
        }
    }

    println!("dfs cluster starting: {} metadata + {} storage nodes", args.meta_nodes, args.storage_nodes);
    for m in &cluster.members {
        println!("  {:<11} {:<16} log {}", m.name, m.addr, m.log.display());
    }
    println!("status page: http://{}/ (metrics at /metrics on every node, 200 above its port)", http(&meta_addrs[0]));
    match (&pki, &record) {
        (Some(pki), Some(record)) => {
            println!("TLS on: CA {}; this machine's client commands use the credentials in {}", pki.ca_path().display(), record.display())
        }
        (Some(pki), None) => println!("TLS on: CA {}; clients need --ca (no config dir to write credentials to: set DFS_CONFIG_DIR)", pki.ca_path().display()),
        (None, _) => println!("warning: TLS is OFF (--insecure): any local process can read every file and act as any node"),
    }
    if let Some(addr) = s3_addr {
        let keys = "keys: dfs admin s3 key create --name NAME --role read|write|admin";
        match &pki {
            Some(pki) => println!("S3: https://{addr}/ (its certificate is from the cluster CA: AWS_CA_BUNDLE={}; {keys})", pki.ca_path().display()),
            None => println!("S3: http://{addr}/ ({keys})"),
        }
    }
    let meta_env = meta_list.join(",");
    if meta_env != crate::DEFAULT_META {
        println!("clients: export DFS_META={meta_env}");
    }

    let mut shutdown = std::pin::pin!(shutdown_signal());
    let outcome = tokio::select! {
        ready = wait_ready(meta_list.clone(), args.storage_nodes as usize) => ready,
        _ = &mut shutdown => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
        Some(exit) = exits.recv() => {
            let m = &cluster.members[exit.member];
            Err(anyhow::anyhow!("{} exited before the cluster was ready ({}); see {}", m.name, describe(&exit.status), m.log.display()))
        }
    };
    let elapsed = match outcome {
        Ok(elapsed) => elapsed,
        Err(e) => {
            cluster.stop_all(&mut exits).await;
            return Err(e);
        }
    };
    let data_dir = if args.data_dir == Path::new("./dfs-data") { String::new() } else { format!(" --data-dir {}", path_arg(&args.data_dir)) };
    println!("dfs cluster ready in {:.1}s; try: dfs put <file> /<name>; dfs ls; Ctrl-C stops it", elapsed.as_secs_f64());
    println!("a node fails by hand with: dfs cluster stop{data_dir} storage-1 [--kill]; and comes back with: dfs cluster start{data_dir} storage-1");

    let (control_tx, mut control_rx) = mpsc::channel::<(String, UnixStream)>(QUEUE_MAX);
    if let Some(listener) = listener {
        tokio::spawn(accept_control(listener, control_tx));
    }
    loop {
        let wake = cluster.next_deadline();
        tokio::select! {
            _ = &mut shutdown => break,
            Some(exit) = exits.recv() => cluster.exited(exit),
            Some((request, stream)) = control_rx.recv() => cluster.control(&request, stream).await,
            _ = sleep_until(wake) => cluster.timers(),
        }
    }
    cluster.stop_all(&mut exits).await;
    let _ = std::fs::remove_file(args.data_dir.join(CONTROL_SOCKET));
    println!("dfs cluster stopped");
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn member(name: &str, addr: SocketAddr, argv: &[String], logs: &Path) -> Member {
    Member {
        name: name.to_string(),
        addr,
        argv: argv.to_vec(),
        log: logs.join(format!("{name}.log")),
        state: State::Exited,
        pid: None,
        incarnation: 0,
        started: Instant::now(),
        restarts: 0,
        failures_in_a_row: 0,
        stop_waiters: Vec::new(),
    }
}

/// The control socket of a new `up`: a stale one (its `up` died) is replaced; one that answers
/// means another `up` uses this data dir. `None` (with a warning) if it cannot be made: the
/// cluster still runs, without `cluster stop|start|status`.
async fn control_listener(data_dir: &Path) -> anyhow::Result<Option<UnixListener>> {
    let path = data_dir.join(CONTROL_SOCKET);
    if UnixStream::connect(&path).await.is_ok() {
        bail!("another `dfs cluster up` is running on {} (its control socket {} answers)", data_dir.display(), path.display());
    }
    let _ = std::fs::remove_file(&path);
    match UnixListener::bind(&path) {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            eprintln!("dfs: cannot create the control socket {} ({e}): `dfs cluster stop|start|status` will not reach this cluster", path.display());
            Ok(None)
        }
    }
}

/// Reads one request line per connection (bounded in size and time) and hands it, with the
/// connection for the answer, to the supervisor.
async fn accept_control(listener: UnixListener, to: mpsc::Sender<(String, UnixStream)>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let to = to.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).take(CONTROL_LINE_MAX_BYTES as u64);
            let mut line = String::new();
            let read = tokio::time::timeout(CONTROL_TIMEOUT, reader.read_line(&mut line)).await;
            if matches!(read, Ok(Ok(n)) if n > 0) {
                let _ = to.send((line.trim().to_string(), reader.into_inner().into_inner())).await;
            }
        });
    }
}

async fn answer(mut stream: UnixStream, reply: &ControlReply) {
    if let Ok(mut line) = serde_json::to_string(reply) {
        line.push('\n');
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, stream.write_all(line.as_bytes())).await;
    }
}

fn reply(ok: bool, message: impl Into<String>) -> ControlReply {
    ControlReply { ok, usage: false, message: message.into(), nodes: Vec::new() }
}

struct Supervisor {
    exe: PathBuf,
    members: Vec<Member>,
    exits_tx: mpsc::Sender<Exit>,
    restart: Restart,
}

impl Supervisor {
    /// Starts member `i`; its exit arrives on the exits channel.
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let argv: Vec<&str> = m.argv.iter().map(String::as_str).collect();
        let mut child = spawn_child(&self.exe, &m.name, &argv, &[], &m.log)?;
        m.incarnation += 1;
        m.pid = child.id();
        m.state = State::Running;
        m.started = Instant::now();
        let (tx, incarnation) = (self.exits_tx.clone(), m.incarnation);
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Exit { member: i, incarnation, status }).await;
        });
        Ok(())
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(pid) = self.members[i].pid {
            // SAFETY: sending a signal to our own child's pid, which it keeps until we reap it
            // (the exit is handled, and the pid cleared, only after the wait completed).
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|m| match m.state {
                State::Stopping { kill_at } if m.pid.is_some() => Some(kill_at),
                State::Restarting { at } => Some(at),
                _ => None,
            })
            .min()
    }

    /// Restarts what is due, kills what did not stop in time.
    fn timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.members.len() {
            match self.members[i].state {
                State::Restarting { at } if at <= now => {
                    let m = &mut self.members[i];
                    m.restarts += 1;
                    match self.start(i) {
                        Ok(()) => eprintln!("dfs: {} started again (pid {})", self.members[i].name, self.members[i].pid.unwrap_or(0)),
                        Err(e) => {
                            eprintln!("dfs: {}: {e:#}; left down", self.members[i].name);
                            self.members[i].state = State::Exited;
                        }
                    }
                }
                State::Stopping { kill_at } if kill_at <= now && self.members[i].pid.is_some() => {
                    eprintln!("dfs: {} did not stop within {}s; killing it", self.members[i].name, STOP_GRACE.as_secs());
                    self.signal(i, libc::SIGKILL);
                    self.members[i].state = State::Stopping { kill_at: now + STOP_GRACE };
                }
                _ => {}
            }
        }
    }

    /// A node's process ended: say so, and restart it or leave it down.
    fn exited(&mut self, exit: Exit) {
        let restart = self.restart;
        let m = &mut self.members[exit.member];
        if exit.incarnation != m.incarnation {
            return;
        }
        m.pid = None;
        let how = describe(&exit.status);
        if let State::Stopping { .. } = m.state {
            m.state = State::Stopped;
            eprintln!("dfs: {} stopped ({how}); `dfs cluster start {}` brings it back", m.name, m.name);
            let waiters = std::mem::take(&mut m.stop_waiters);
            let text = format!("{} stopped ({how})", m.name);
            for w in waiters {
                let text = text.clone();
                tokio::spawn(async move { answer(w, &reply(true, text)).await });
            }
            return;
        }
        let clean = matches!(&exit.status, Ok(s) if s.success());
        let (next, failures) = after_exit(restart, clean, m.started.elapsed(), m.failures_in_a_row);
        m.failures_in_a_row = failures;
        let hint = format!("`dfs cluster start {}` starts it again", m.name);
        match next {
            AfterExit::RestartIn(backoff) => {
                m.state = State::Restarting { at: Instant::now() + backoff };
                eprintln!("dfs: {} died ({how}); the rest keeps running; restarting it in {}s; see {}", m.name, backoff.as_secs(), m.log.display());
            }
            AfterExit::LeftDown(why) => {
                m.state = State::Exited;
                let verb = if clean { "exited" } else { "died" };
                eprintln!("dfs: {} {verb} ({how}); {why}; {hint}; see {}", m.name, m.log.display());
            }
        }
    }

    /// One control request: `stop NAME`, `kill NAME`, `start NAME`, `status`.
    async fn control(&mut self, request: &str, stream: UnixStream) {
        let mut words = request.split_whitespace();
        let (verb, name) = (words.next().unwrap_or_default(), words.next());
        if verb == "status" {
            let nodes = self.members.iter().map(|m| MemberJson {
                name: m.name.clone(),
                state: m.state.name().to_string(),
                pid: m.pid,
                restarts: m.restarts,
                addr: m.addr.to_string(),
                log: m.log.display().to_string(),
            });
            let r = ControlReply { ok: true, usage: false, message: String::new(), nodes: nodes.collect() };
            return answer(stream, &r).await;
        }
        let Some(i) = name.and_then(|n| self.members.iter().position(|m| m.name == n)) else {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            let r = ControlReply {
                ok: false,
                usage: true,
                message: format!("no node {:?} in this cluster (its nodes: {})", name.unwrap_or_default(), names.join(", ")),
                nodes: vec![],
            };
            return answer(stream, &r).await;
        };
        let name = self.members[i].name.clone();
        match (verb, self.members[i].state) {
            ("stop" | "kill", State::Running | State::Stopping { .. }) => {
                let kill = verb == "kill";
                self.signal(i, if kill { libc::SIGKILL } else { libc::SIGTERM });
                eprintln!("dfs: {} {} (dfs cluster stop)", name, if kill { "killed" } else { "stopping" });
                let m = &mut self.members[i];
                if !matches!(m.state, State::Stopping { .. }) {
                    m.state = State::Stopping { kill_at: Instant::now() + STOP_GRACE };
                }
                // Answered once it has exited.
                m.stop_waiters.push(stream);
            }
            ("stop" | "kill", State::Restarting { .. } | State::Exited) => {
                self.members[i].state = State::Stopped;
                answer(stream, &reply(true, format!("{name} was not running; it stays down"))).await;
            }
            ("stop" | "kill", State::Stopped) => answer(stream, &reply(true, format!("{name} is already stopped"))).await,
            ("start", State::Stopped | State::Exited | State::Restarting { .. }) => {
                self.members[i].failures_in_a_row = 0;
                match self.start(i) {
                    Ok(()) => {
                        let pid = self.members[i].pid.unwrap_or(0);
                        eprintln!("dfs: {name} started (dfs cluster start, pid {pid})");
                        answer(stream, &reply(true, format!("{name} started (pid {pid})"))).await;
                    }
                    Err(e) => answer(stream, &reply(false, format!("{name}: {e:#}"))).await,
                }
            }
            ("start", state) => answer(stream, &reply(false, format!("{name} is {}, not down", state.name()))).await,
            (other, _) => {
                let r = ControlReply { ok: false, usage: true, message: format!("unknown request {other:?}"), nodes: vec![] };
                answer(stream, &r).await;
            }
        }
    }

    /// SIGTERM to every running node, then SIGKILL to any still running after `STOP_GRACE`.
    async fn stop_all(&mut self, exits: &mut mpsc::Receiver<Exit>) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while self.members.iter().any(|m| m.pid.is_some()) {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Some(exit)) => {
                    let m = &mut self.members[exit.member];
                    if exit.incarnation == m.incarnation {
                        m.pid = None;
                    }
                }
                _ => {
                    for i in 0..self.members.len() {
                        if self.members[i].pid.is_some() {
                            eprintln!("dfs: {} did not stop in time; killing it", self.members[i].name);
                            self.signal(i, libc::SIGKILL);
                        }
                    }
                    break;
                }
            }
        }
    }
}

/// `dfs cluster stop|start|status`: asks the running `up` and prints its answer.
async fn control(ctx: &Ctx, data_dir: &Path, request: &str) -> anyhow::Result<()> {
    let path = data_dir.join(CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| anyhow::anyhow!("no `dfs cluster up` answers on {} ({e}); start one, or pass its --data-dir", path.display()))?;
    stream.write_all(format!("{request}\n").as_bytes()).await.context("sending to `dfs cluster up`")?;
    let mut line = String::new();
    let read = tokio::time::timeout(CONTROL_TIMEOUT, BufReader::new(stream).read_line(&mut line)).await;
    match read {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => bail!("`dfs cluster up` closed the connection without an answer"),
        Ok(Err(e)) => bail!("reading the answer of `dfs cluster up`: {e}"),
        Err(_) => bail!("`dfs cluster up` did not answer within {}s", CONTROL_TIMEOUT.as_secs()),
    }
    let r: ControlReply = serde_json::from_str(&line).context("an answer of `dfs cluster up` that is not JSON")?;
    if !r.ok {
        return Err(if r.usage { usage(r.message) } else { anyhow::anyhow!(r.message) });
    }
    if request != "status" {
        return emit(&format!("{}\n", shown(&r.message)));
    }
    if ctx.json {
        return emit_json(&serde_json::json!({ "nodes": r.nodes }));
    }
    let mut out = format!("{:<11} {:<10} {:>8} {:>8}  {:<16} log\n", "node", "state", "pid", "restarts", "address");
    for n in &r.nodes {
        let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!("{:<11} {:<10} {:>8} {:>8}  {:<16} {}\n", n.name, n.state, pid, n.restarts, n.addr, n.log));
    }
    emit(&out)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Starts a node of a throwaway cluster, with `env` (its TLS settings, `security::local_env`).
pub(crate) fn spawn(exe: &Path, name: &str, argv: &[&str], env: &[(&str, String)], logs: &Path) -> anyhow::Result<Node> {
    let child = spawn_child(exe, name, argv, env, &logs.join(format!("{name}.log")))?;
    Ok(Node { name: name.to_string(), child })
}

/// Starts `exe argv`, its output appended to `log`, configured by its flags only, and killed
/// with this process.
fn spawn_child(exe: &Path, name: &str, argv: &[&str], env: &[(&str, String)], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("cannot open {}", log.display()))?;
    let mut command = Command::new(exe);
    command.args(argv).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).kill_on_drop(true);
    // The children get their configuration from flags only, not from this shell's DFS_*.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DFS_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child if
    // this process dies (even by SIGKILL), so no node outlives the launcher.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().with_context(|| format!("cannot start {name}"))
}

/// Waits until a leader answers and sees at least `storage_nodes` storage nodes alive.
pub(crate) async fn wait_ready(meta: Vec<String>, storage_nodes: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let policy = RetryPolicy { deadline: Duration::from_secs(2), attempt_timeout: Duration::from_secs(2), ..RetryPolicy::default() };
    let client = DfsClient::new(crate::security::env(), meta, ClientConfig { metadata: policy, ..ClientConfig::default() });
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Ok(status) = client.status().await {
            let alive = status.storage_nodes.iter().filter(|n| n.state == "alive").count();
            if status.leader.is_some() && alive >= storage_nodes {
                return Ok(started.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not become ready within 60s; see the logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every node, then SIGKILL to any still running after 10 s.
pub(crate) async fn stop(nodes: &mut [Node]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        if tokio::time::timeout_at(deadline, n.child.wait()).await.is_err() {
            eprintln!("dfs: {} did not stop in time; killing it", n.name);
            let _ = n.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dying_node_is_restarted_after_a_doubling_back_off_until_it_keeps_dying() {
        let quick = Duration::from_secs(1);
        let mut failures = 0;
        let mut waits = Vec::new();
        loop {
            let (next, f) = after_exit(Restart::OnFailure, false, quick, failures);
            failures = f;
            match next {
                AfterExit::RestartIn(wait) => waits.push(wait.as_secs()),
                AfterExit::LeftDown(why) => {
                    assert!(why.contains("keeps dying"), "{why}");
                    break;
                }
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30, 30, 30], "{waits:?}");
        // A node that ran a while before dying starts its back-off afresh.
        assert_eq!(after_exit(Restart::OnFailure, false, RESTART_RESET, 7), (AfterExit::RestartIn(RESTART_BACKOFF), 1));
        // A clean exit, and --restart never, leave it down at once.
        assert!(matches!(after_exit(Restart::OnFailure, true, quick, 0).0, AfterExit::LeftDown(_)));
        assert!(matches!(after_exit(Restart::Never, false, quick, 0).0, AfterExit::LeftDown(w) if w.contains("--restart never")));
    }
}
