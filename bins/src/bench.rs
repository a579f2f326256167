//! `dfs bench`: benchmarks against clusters this command starts itself.
//!
//! `dfs bench meta`: metadata operations through a 3-node metadata cluster on loopback, each
//! node a child process of this one with its state on the real disk (every Raft append is
//! fsynced before it counts). For each operation (`--op`) and concurrency level it runs a fixed
//! number of operations from that many concurrent tasks sharing one client, and reports
//! operations per second, the median and 99th-percentile latency of one, the leader's resident
//! memory per million files, and how many fsyncs per second the disk does on its own (the
//! figure the others are bounded by).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfs_core::client::{MetaClient, RetryPolicy};
use dfs_core::env::Env;
use dfs_core::proto;
use dfs_io_real::RealEnv;

use crate::cluster::{spawn, stop, wait_ready, Node};

mod repair;
mod transfer;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Metadata throughput and latency of each operation (`--op`) on a local 3-node cluster.
    Meta(MetaBenchArgs),
    /// Put and get of a large file and of many small files, beside the disk's own floor.
    Transfer(transfer::TransferBenchArgs),
    /// Time to heal after a storage node dies, and repair throughput beside the disk's.
    Repair(repair::RepairBenchArgs),
}

/// One metadata operation `dfs bench meta` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
enum MetaOp {
    /// An empty file, as `dfs put` of a 0-byte file makes it: one `CreateFile` that commits
    /// it too (`commit_empty`), one Raft write.
    Create,
    /// `CreateFile` then `CommitFile`: the two writes of a file with data (its transfers left
    /// out), and how earlier versions made an empty file.
    CreateCommit,
    /// `Mkdir` of a fresh directory.
    Mkdir,
    /// `GetFile` of a committed file (a linearizable read: what `dfs stat` asks).
    Stat,
    /// `ListDir` of a directory of `LS_DIR_ENTRIES` files (`dfs ls`).
    Ls,
    /// `Rename` of a committed file within its directory.
    Rename,
    /// `DeleteFile` of a committed file, skipping the trash.
    Delete,
}

impl MetaOp {
    fn name(self) -> &'static str {
        match self {
            MetaOp::Create => "create",
            MetaOp::CreateCommit => "create-commit",
            MetaOp::Mkdir => "mkdir",
            MetaOp::Stat => "stat",
            MetaOp::Ls => "ls",
            MetaOp::Rename => "rename",
            MetaOp::Delete => "delete",
        }
    }
}

/// Entries in the directory `ls` lists.
const LS_DIR_ENTRIES: u64 = 100;

#[derive(Args)]
pub struct MetaBenchArgs {
    /// Operations per operation kind and concurrency level.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ops: u64,
    /// Concurrency levels to run, in order: concurrent tasks issuing operations.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: Vec<u64>,
    /// Operations to time, comma-separated; they run in the order listed here whatever the
    /// order given (stat, rename and delete work on the files create-commit made, which are
    /// made untimed first when create-commit is not asked for).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "create,create-commit,mkdir,stat,ls,rename,delete")]
    op: Vec<MetaOp>,
    /// Keep the cluster's data (and the nodes' logs) in DIR instead of a temporary directory
    /// that is removed at the end. DIR must not exist yet or be empty.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run the cluster without TLS (the default is TLS with a CA made for the run, as `dfs
    /// cluster up` does): to measure what TLS costs, side by side.
    #[arg(long)]
    insecure: bool,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Meta(args) => meta(args).await,
        BenchCommand::Transfer(args) => transfer::transfer(args).await,
        BenchCommand::Repair(args) => repair::repair(args).await,
    }
}

/// One concurrency level's results.
struct Level {
    op: MetaOp,
    concurrency: u64,
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Level {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

const META_NODES: usize = 3;

async fn meta(args: MetaBenchArgs) -> anyhow::Result<()> {
    let (dir, remove) = match &args.keep {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty", dir.display());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.clone(), false)
        }
        None => {
            let dir = std::env::temp_dir().join(format!("dfs-bench-meta-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            (dir, true)
        }
    };
    let outcome = meta_in(&args, &dir).await;
    if remove {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("dfs: cannot remove {}: {e}", dir.display());
        }
    }
    outcome
}

async fn meta_in(args: &MetaBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join("fsync-probe");
    let fsyncs = tokio::task::spawn_blocking(move || fsync_rate(&probe, Duration::from_secs(1))).await??;
    if !args.json {
        println!("disk: {fsyncs:.0} fsyncs/s (4 KiB write + fdatasync, in {})", dir.display());
        println!("starting {META_NODES} metadata nodes...");
    }

    let addrs = free_loopback_addrs(META_NODES)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = std::env::current_exe().context("cannot find the dfs executable")?;
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let meta: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let pki = crate::security::local_cluster(dir, args.insecure, &meta)?;
    let mut nodes: Vec<Node> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("meta-{}", i + 1);
        let data = dir.join(&name).to_string_lossy().into_owned();
        let id = (i + 1).to_string();
        let argv = ["meta", "--id", &id, "--listen", &addr.to_string(), "--data-dir", &data, "--peers", &peers.join(",")];
        let env = crate::security::local_env(pki.as_ref(), dfs_core::auth::Role::Meta, &name)?;
        match spawn(&exe, &name, &argv, &env, &logs) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop(&mut nodes).await;
                return Err(e);
            }
        }
    }
    let outcome = bench_cluster(args, &addrs, &nodes, fsyncs).await;
    stop(&mut nodes).await;
    outcome
}

async fn bench_cluster(args: &MetaBenchArgs, addrs: &[SocketAddr], nodes: &[Node], fsyncs: f64) -> anyhow::Result<()> {
    let meta: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ready = wait_ready(meta.clone(), 0).await?;
    let env = crate::security::env();
    let client = MetaClient::new(env.clone(), meta, RetryPolicy::default());
    let leader = leader_id(&client).await?;
    let leader_pid =
        nodes.get((leader as usize).wrapping_sub(1)).and_then(|n| n.child.id()).with_context(|| format!("leader {leader} is not one of the nodes started"))?;
    if !args.json {
        println!("cluster ready in {:.1}s; leader is meta-{leader} (pid {leader_pid})", ready.as_secs_f64());
    }
    let rss_before = rss_bytes(leader_pid)?;

    let client_id = env.random_u64();
    let seq = Arc::new(AtomicU64::new(0));
    let mut levels = Vec::new();
    if !args.json {
        println!("{:<14} {:<12} {:>7} {:>9} {:>8} {:>8}", "op", "concurrency", "ops", "ops/s", "p50 ms", "p99 ms");
    }
    let mut ops = args.op.clone();
    ops.sort_unstable();
    ops.dedup();
    let ctx = OpContext { client: client.clone(), client_id, seq: seq.clone() };
    if ops.contains(&MetaOp::Ls) {
        for i in 0..LS_DIR_ENTRIES {
            create_and_commit(&ctx, format!("/bench/ls/f{i}")).await?;
        }
    }
    // Leader memory is measured once the files are made, before any delete frees some.
    let mut files = 0u64;
    let mut rss_files = rss_before;
    for &op in &ops {
        for &concurrency in &args.concurrency {
            // The files stat, rename and delete work on, when create-commit did not make them.
            if matches!(op, MetaOp::Stat | MetaOp::Rename | MetaOp::Delete) && !ops.contains(&MetaOp::CreateCommit) && op == first_of(&ops) {
                run_level(&ctx, MetaOp::CreateCommit, concurrency, args.ops, false).await?;
                files += args.ops;
                rss_files = rss_bytes(leader_pid)?;
            }
            // Ops run in their listed order: rename, when asked for, came before delete.
            let level = run_level(&ctx, op, concurrency, args.ops, ops.contains(&MetaOp::Rename)).await?;
            if !args.json {
                println!(
                    "{:<14} {:<12} {:>7} {:>9.0} {:>8.2} {:>8.2}",
                    op.name(),
                    level.concurrency,
                    level.ops,
                    level.ops_per_sec(),
                    ms(level.p50),
                    ms(level.p99)
                );
            }
            if matches!(op, MetaOp::Create | MetaOp::CreateCommit) {
                files += level.ops;
                rss_files = rss_bytes(leader_pid)?;
            }
            levels.push(level);
        }
    }

    let rss_after = rss_files;
    let leader_after = leader_id(&client).await?;
    let per_file = rss_after.saturating_sub(rss_before) as f64 / files.max(1) as f64;
    let mib_per_million = per_file * 1e6 / MIB;
    if args.json {
        let json = serde_json::json!({
            "levels": levels.iter().map(|l| serde_json::json!({
                "op": l.op.name(),
                "concurrency": l.concurrency,
                "ops": l.ops,
                "seconds": l.elapsed.as_secs_f64(),
                "ops_per_sec": l.ops_per_sec(),
                "p50_ms": ms(l.p50),
                "p99_ms": ms(l.p99),
            })).collect::<Vec<_>>(),
            "files": files,
            "leader": leader,
            "leader_changed": leader_after != leader,
            "leader_rss_before_bytes": rss_before,
            "leader_rss_after_bytes": rss_after,
            "leader_rss_bytes_per_file": per_file,
            "leader_rss_mib_per_million_files": mib_per_million,
            "disk_fsyncs_per_sec": fsyncs,
        });
        println!("{json}");
    } else {
        println!(
            "leader RSS: {:.1} MiB before, {:.1} MiB after {files} files: {mib_per_million:.0} MiB per million files ({per_file:.0} bytes per file)",
            rss_before as f64 / MIB,
            rss_after as f64 / MIB
        );
        println!("disk: {fsyncs:.0} fsyncs/s");
        if leader_after != leader {
            println!("note: leadership moved from meta-{leader} to meta-{leader_after} during the run; the RSS figures are not meaningful");
        }
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn leader_id(client: &MetaClient<RealEnv>) -> anyhow::Result<u64> {
    let status = client.call(proto::ClusterStatusRequest {}).await.context("cluster status")?;
    Ok(status.leader.context("the cluster has no leader")?.id)
}

/// What every operation needs: the client, and request ids for the writes.
#[derive(Clone)]
struct OpContext {
    client: MetaClient<RealEnv>,
    client_id: u64,
    seq: Arc<AtomicU64>,
}

impl OpContext {
    fn request_id(&self) -> Option<proto::RequestId> {
        Some(proto::RequestId { client: self.client_id, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 })
    }
}

/// The first of `ops` that works on committed files.
fn first_of(ops: &[MetaOp]) -> MetaOp {
    ops.iter().copied().find(|o| matches!(o, MetaOp::Stat | MetaOp::Rename | MetaOp::Delete)).unwrap_or(MetaOp::Stat)
}

/// One operation: `i` of task `task` at `concurrency`. Each kind works on its own paths; stat,
/// rename and delete on the files create-commit made at the same level (rename moves `f{i}`
/// to `r{i}`, and delete removes whichever is there).
async fn one_op(ctx: &OpContext, op: MetaOp, concurrency: u64, task: u64, i: u64, renamed: bool) -> anyhow::Result<()> {
    let committed = |name: &str| format!("/bench/files/c{concurrency}/t{task}/{name}{i}");
    match op {
        MetaOp::Create => {
            create(ctx, format!("/bench/create/c{concurrency}/t{task}/f{i}"), true).await?;
        }
        MetaOp::CreateCommit => create_and_commit(ctx, committed("f")).await?,
        MetaOp::Mkdir => {
            let path = format!("/bench/mkdir/c{concurrency}/t{task}/d{i}");
            ctx.client
                .call(proto::MkdirRequest { path: path.clone(), parents: true, request_id: ctx.request_id() })
                .await
                .with_context(|| format!("mkdir {path}"))?;
        }
        MetaOp::Stat => {
            let path = committed("f");
            ctx.client.call(proto::GetFileRequest { path: path.clone() }).await.with_context(|| format!("stat {path}"))?;
        }
        MetaOp::Ls => {
            let listed = ctx.client.call(proto::ListDirRequest { path: "/bench/ls".into(), ..Default::default() }).await.context("ls /bench/ls")?;
            if listed.entries.len() as u64 != LS_DIR_ENTRIES {
                bail!("ls /bench/ls listed {} entries, not {LS_DIR_ENTRIES}", listed.entries.len());
            }
        }
        MetaOp::Rename => {
            let (src, dst) = (committed("f"), committed("r"));
            ctx.client.call(proto::RenameRequest { src: src.clone(), dst, request_id: ctx.request_id() }).await.with_context(|| format!("rename {src}"))?;
        }
        MetaOp::Delete => {
            let path = committed(if renamed { "r" } else { "f" });
            let request = proto::DeleteFileRequest { path: path.clone(), skip_trash: true, request_id: ctx.request_id(), ..Default::default() };
            ctx.client.call(request).await.with_context(|| format!("delete {path}"))?;
        }
    }
    Ok(())
}

/// `ops` operations `op` from `concurrency` tasks, each on its own paths; `renamed`: rename
/// ran at this level before (delete removes the new names).
async fn run_level(ctx: &OpContext, op: MetaOp, concurrency: u64, ops: u64, renamed: bool) -> anyhow::Result<Level> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let n = ops / concurrency + u64::from(task < ops % concurrency);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n as usize);
            for i in 0..n {
                let at = Instant::now();
                one_op(&ctx, op, concurrency, task, i, renamed).await?;
                latencies.push(at.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(ops as usize);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.context("benchmark task panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Level { op, concurrency, ops, elapsed, p50: percentile(&latencies, 0.50), p99: percentile(&latencies, 0.99) })
}

/// `CreateFile` of an empty file: committed at once with `commit_empty` (as `dfs put` of a
/// 0-byte file does), else an upload opened (as `dfs put` starts a file with data).
async fn create(ctx: &OpContext, path: String, commit_empty: bool) -> anyhow::Result<u64> {
    let created = ctx
        .client
        .call(proto::CreateFileRequest {
            path: path.clone(),
            size: 0,
            chunk_size: dfs_core::chunking::DEFAULT_CHUNK_SIZE,
            replication: 3,
            overwrite: false,
            request_id: ctx.request_id(),
            expect_file_id: None,
            place_chunks: 0,
            commit_empty,
            ..Default::default()
        })
        .await
        .with_context(|| format!("create {path}"))?;
    if commit_empty && created.committed.is_none() {
        bail!("create {path}: the metadata cluster did not commit the empty file with its creation (an earlier version?)");
    }
    Ok(created.file_id)
}

/// Create, then commit: a file's two metadata writes (of an empty file, so no chunks).
async fn create_and_commit(ctx: &OpContext, path: String) -> anyhow::Result<()> {
    let file_id = create(ctx, path.clone(), false).await?;
    ctx.client.call(proto::CommitFileRequest { file_id, ..Default::default() }).await.with_context(|| format!("commit {path}"))?;
    Ok(())
}

/// The value below which `q` of the sorted `values` lie (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Distinct free loopback ports: bound (all at once, so they differ) and released.
pub(crate) fn free_loopback_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>().context("cannot find a free port")?;
    listeners.iter().map(|l| l.local_addr().context("listener address")).collect()
}

/// Resident memory of process `pid` (VmRSS from /proc), in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).with_context(|| format!("{path} has no VmRSS"))?;
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("{path}: bad line {line:?}"))?;
    Ok(kib * 1024)
}

/// Peak resident memory of process `pid` so far (VmHWM from /proc), in bytes.
pub(crate) fn rss_hwm_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).with_context(|| format!("{path} has no VmHWM"))?;
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("{path}: bad line {line:?}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).with_context(|| format!("{path}: bad field {i}"));
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_sec)
}

/// CPU time this process (every thread) has used so far, in seconds.
pub(crate) fn own_cpu_secs() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our own rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    rusage_secs(&usage)
}

pub(crate) fn rusage_secs(usage: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// fsyncs per second of the disk holding `probe`: 4 KiB written in place and fdatasync'ed, in
/// a loop for `duration`.
fn fsync_rate(probe: &Path, duration: Duration) -> anyhow::Result<f64> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(probe)
        .with_context(|| format!("cannot create {}", probe.display()))?;
    let block = [0x5au8; 4096];
    file.write_all(&block)?;
    file.sync_all()?;
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        file.write_all_at(&block, 0)?;
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(probe);
    Ok(rate)
}
