//! `dfs cluster up`: a whole cluster on loopback, as child processes of this one, in the
//! foreground. Ctrl-C (or SIGTERM) stops every node and exits.
//!
//! Ports are fixed (from `--base-port`, 7001 by default: metadata on 7001.., storage on
//! 7101..) so that client commands find the cluster with no flags at all. Each node gets its
//! own directory under `--data-dir` and logs to `<data-dir>/logs/<node>.log`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfs_core::client::{ClientConfig, DfsClient, RetryPolicy};
use dfs_io_real::RealEnv;
use tokio::process::{Child, Command};

use crate::daemons::shutdown_signal;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start a local cluster in the foreground; Ctrl-C stops it.
    Up(UpArgs),
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
    #[arg(long, env = "DFS_CLUSTER_BASE_PORT", default_value_t = 7001, value_parser = clap::value_parser!(u16).range(1024..=65000))]
    base_port: u16,
    /// Milliseconds between storage heartbeats.
    #[arg(long, env = "DFS_HEARTBEAT_MS", default_value_t = 3000)]
    heartbeat_ms: u64,
}

pub(crate) struct Node {
    name: String,
    addr: SocketAddr,
    log: PathBuf,
    pub(crate) child: Child,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up(args) => up(args).await,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let meta_addrs: Vec<SocketAddr> = (0..args.meta_nodes).map(|i| loopback(args.base_port + i as u16)).collect();
    let storage_addrs: Vec<SocketAddr> = (0..args.storage_nodes).map(|i| loopback(args.base_port + 100 + i as u16)).collect();
    for addr in meta_addrs.iter().chain(&storage_addrs) {
        TcpListener::bind(addr).with_context(|| format!("port {} is not free (is a cluster already running? try --base-port)", addr.port()))?;
    }
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = std::env::current_exe().context("cannot find the dfs executable")?;
    let peers: Vec<String> = meta_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let meta_list: Vec<String> = meta_addrs.iter().map(|a| a.to_string()).collect();

    let mut nodes = Vec::new();
    for (i, addr) in meta_addrs.iter().enumerate() {
        let name = format!("meta-{}", i + 1);
        let dir = args.data_dir.join(&name);
        let id = (i + 1).to_string();
        let argv = ["meta", "--id", &id, "--listen", &addr.to_string(), "--data-dir", &path_arg(&dir), "--peers", &peers.join(",")];
        nodes.push(spawn(&exe, &name, *addr, &argv, &logs)?);
    }
    for (i, addr) in storage_addrs.iter().enumerate() {
        let name = format!("storage-{}", i + 1);
        let dir = args.data_dir.join(&name);
        let heartbeat = args.heartbeat_ms.to_string();
        let argv = [
            "storage", "--listen", &addr.to_string(), "--meta", &meta_list.join(","), "--data-dir", &path_arg(&dir), "--heartbeat-ms", &heartbeat,
        ];
        nodes.push(spawn(&exe, &name, *addr, &argv, &logs)?);
    }

    println!("dfs cluster starting: {} metadata + {} storage nodes", args.meta_nodes, args.storage_nodes);
    for n in &nodes {
        println!("  {:<11} {:<16} log {}", n.name, n.addr, n.log.display());
    }
    let meta_env = meta_list.join(",");
    if meta_env != crate::DEFAULT_META {
        println!("clients: export DFS_META={meta_env}");
    }

    let outcome = tokio::select! {
        ready = wait_ready(meta_list.clone(), args.storage_nodes as usize) => ready,
        _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
        exited = first_exit(&mut nodes) => Err(exited),
    };
    match outcome {
        Ok(elapsed) => {
            println!("dfs cluster ready in {:.1}s; try: dfs put <file> /<name>; dfs ls; Ctrl-C stops it", elapsed.as_secs_f64());
            tokio::select! {
                _ = shutdown_signal() => {}
                exited = first_exit(&mut nodes) => eprintln!("dfs: {exited:#}; stopping the cluster"),
            }
            stop(&mut nodes).await;
            println!("dfs cluster stopped");
            Ok(())
        }
        Err(e) => {
            stop(&mut nodes).await;
            Err(e)
        }
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub(crate) fn spawn(exe: &Path, name: &str, addr: SocketAddr, argv: &[&str], logs: &Path) -> anyhow::Result<Node> {
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("cannot open {}", log.display()))?;
    let mut command = Command::new(exe);
    command.args(argv).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).kill_on_drop(true);
    // The children get their configuration from flags only, not from this shell's DFS_*.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DFS_") {
            command.env_remove(key);
        }
    }
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
    let child = command.spawn().with_context(|| format!("cannot start {name}"))?;
    Ok(Node { name: name.to_string(), addr, log, child })
}

/// Waits until a leader answers and sees at least `storage_nodes` storage nodes alive.
pub(crate) async fn wait_ready(meta: Vec<String>, storage_nodes: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let policy = RetryPolicy { deadline: Duration::from_secs(2), attempt_timeout: Duration::from_secs(2), ..RetryPolicy::default() };
    let client = DfsClient::new(RealEnv::default(), meta, ClientConfig { metadata: policy, ..ClientConfig::default() });
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

/// Completes when any node exits, describing which and how.
async fn first_exit(nodes: &mut [Node]) -> anyhow::Error {
    let waits = nodes.iter_mut().map(|n| {
        Box::pin(async move {
            let status = n.child.wait().await;
            anyhow::anyhow!("{} exited ({}); see {}", n.name, status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()), n.log.display())
        })
    });
    futures::future::select_all(waits).await.0
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
