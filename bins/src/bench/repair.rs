//! `dfs bench repair`: how fast the cluster heals. A local cluster of 3 metadata and 4 storage
//! nodes (short timeouts: suspect after 2 s, dead after 4 s, heartbeats every second) is
//! filled with `--size` bytes at replication 3, in files of `--file-size` (uploaded
//! `UPLOADS_IN_FLIGHT` at a time); one storage node is SIGKILLed; the bench measures the time
//! until `fsck` is healthy again (from the kill, and from the node being declared dead), the
//! repair throughput (the replicas the node held, in chunks and bytes, over the repair time),
//! and beside it the disk's own throughput measured in the same run (one stream of 4 MiB
//! chunks written and fsynced, read back, like a repair copy). Then the node returns and the
//! bench times the removal of the surplus replicas. `--file-size 4KiB` measures the repair of
//! small chunks (copied many to a call), the default that of large ones.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use dfs_core::auth::Role;
use dfs_core::client::{ClientConfig, DfsClient, NoProgress};
use dfs_core::proto;
use dfs_io_real::RealEnv;

use crate::bench::free_loopback_addrs;
use crate::cluster::{spawn, stop, wait_ready, Node};

#[derive(Args)]
pub struct RepairBenchArgs {
    /// Bytes of files to store (each copied 3 times).
    #[arg(long, default_value = "2GiB")]
    size: ByteSize,
    /// Size of each file.
    #[arg(long, default_value = "256MiB")]
    file_size: ByteSize,
    /// Repair copies in and out of one node at once (`dfs meta --repair-streams-max`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    repair_streams_max: u64,
    /// Where the cluster's data goes (a temporary directory by default, removed at the end).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run the cluster without TLS (the default is TLS with a CA made for the run, as `dfs
    /// cluster up` does): to measure what TLS costs, side by side.
    #[arg(long)]
    insecure: bool,
}

const META_NODES: usize = 3;
const STORAGE_NODES: usize = 4;
const CHUNK: u64 = 4 * 1024 * 1024;
/// Uploads in flight while the bench fills the cluster with files smaller than a chunk.
const UPLOADS_IN_FLIGHT: usize = 64;
/// Longest wait for the cluster to heal or settle.
const HEAL_LIMIT: Duration = Duration::from_secs(1800);

pub async fn repair(args: RepairBenchArgs) -> anyhow::Result<()> {
    let (dir, remove) = match &args.dir {
        Some(d) => (d.join(format!("dfs-bench-repair-{}", std::process::id())), false),
        None => (std::env::temp_dir().join(format!("dfs-bench-repair-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let outcome = repair_in(&args, &dir).await;
    if remove || outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

struct Figures {
    lost_chunks: u64,
    lost_bytes: u64,
    to_dead: Duration,
    to_healthy: Duration,
    repair_secs: f64,
    disk_bytes_per_sec: f64,
    surplus_removed: Duration,
}

async fn repair_in(args: &RepairBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let exe = std::env::current_exe().context("cannot find the dfs executable")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let meta_addrs = free_loopback_addrs(META_NODES)?;
    let storage_addrs = free_loopback_addrs(STORAGE_NODES)?;
    let meta: Vec<String> = meta_addrs.iter().map(SocketAddr::to_string).collect();
    let peers: Vec<String> = meta.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let streams = args.repair_streams_max.to_string();
    let pki = crate::security::local_cluster(dir, args.insecure, &meta)?;
    let storage_env = |i: usize| crate::security::local_env(pki.as_ref(), Role::Storage, &format!("storage-{}", i + 1));
    let mut nodes: Vec<Node> = Vec::new();
    let storage_argv = |i: usize| -> Vec<String> {
        let data = dir.join(format!("storage-{}", i + 1)).to_string_lossy().into_owned();
        [
            "storage",
            "--listen",
            &storage_addrs[i].to_string(),
            "--meta",
            &meta.join(","),
            "--data-dir",
            &data,
            "--heartbeat-interval",
            "1s",
            "--repair-streams-max",
            &streams,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut started = || -> anyhow::Result<()> {
        for (i, addr) in meta_addrs.iter().enumerate() {
            let name = format!("meta-{}", i + 1);
            let data = dir.join(&name).to_string_lossy().into_owned();
            let id = (i + 1).to_string();
            let argv = [
                "meta",
                "--id",
                &id,
                "--listen",
                &addr.to_string(),
                "--data-dir",
                &data,
                "--peers",
                &peers.join(","),
                "--suspect-after",
                "2s",
                "--dead-after",
                "4s",
                "--repair-streams-max",
                &streams,
            ];
            nodes.push(spawn(&exe, &name, &argv, &crate::security::local_env(pki.as_ref(), Role::Meta, &name)?, &logs)?);
        }
        for i in 0..storage_addrs.len() {
            let argv = storage_argv(i);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            nodes.push(spawn(&exe, &format!("storage-{}", i + 1), &argv, &storage_env(i)?, &logs)?);
        }
        Ok(())
    };
    if let Err(e) = started() {
        stop(&mut nodes).await;
        return Err(e);
    }
    let outcome = async {
        wait_ready(meta.clone(), STORAGE_NODES).await?;
        say(format!("cluster: {META_NODES} metadata + {STORAGE_NODES} storage nodes on loopback, data in {}", dir.display()));
        let client = DfsClient::new(crate::security::env(), meta.clone(), ClientConfig { chunk_size: CHUNK, ..ClientConfig::default() });
        let files = (args.size.as_u64() / args.file_size.as_u64().max(1)).max(1);
        let source = dir.join("source.bin");
        write_random(&source, args.file_size.as_u64())?;
        let filled = Instant::now();
        use futures::stream::{StreamExt, TryStreamExt};
        let (client_ref, source_ref) = (&client, &source);
        // Small files many at a time (they share batches); large ones one at a time, each
        // with its chunks in parallel (as a user's put would be).
        let in_flight = if args.file_size.as_u64() < CHUNK { UPLOADS_IN_FLIGHT } else { 1 };
        futures::stream::iter(0..files)
            .map(|k| async move { client_ref.put(source_ref, &format!("/bench/f{k}"), true, &NoProgress).await.map_err(anyhow::Error::new) })
            .buffer_unordered(in_flight)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        say(format!("stored {} in {files} files at replication 3 in {:.1}s", ByteSize(files * args.file_size.as_u64()), filled.elapsed().as_secs_f64()));
        let disk_bytes_per_sec = disk_copy_rate(dir, 256 * CHUNK)?;
        say(format!("disk: one stream of {} chunks written, fsynced and read back: {}/s", ByteSize(CHUNK), ByteSize(disk_bytes_per_sec as u64)));

        // The victim: the storage node holding the most bytes.
        let status = client.status().await?;
        let victim = status
            .storage_nodes
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| n.chunk_count)
            .map(|(i, _)| i)
            .context("no storage node")?;
        let victim_addr = status.storage_nodes[victim].node.clone().unwrap_or_default().addr;
        let index = storage_addrs.iter().position(|a| a.to_string() == victim_addr).context("the victim is one of ours")?;
        let (lost_chunks, lost_bytes) = held(&dir.join(format!("storage-{}", index + 1)).join("chunks"));
        let killed = Instant::now();
        nodes[META_NODES + index].child.start_kill()?;
        let _ = nodes[META_NODES + index].child.wait().await;
        say(format!("SIGKILLed storage-{} holding {lost_chunks} replicas ({})", index + 1, ByteSize(lost_bytes)));
        let to_dead = wait_until(&client, &meta, HEAL_LIMIT, |s: &proto::ClusterStatusResponse, _| {
            s.storage_nodes.iter().any(|n| n.node.as_ref().is_some_and(|x| x.addr == victim_addr) && n.state == "dead")
        })
        .await?
            - killed;
        let healthy = wait_until(&client, &meta, HEAL_LIMIT, |_, fsck: &proto::FsckResponse| fsck.under_replicated + fsck.missing == 0 && fsck.corrupt == 0).await?;
        let to_healthy = healthy - killed;
        let repair_secs = (to_healthy - to_dead).as_secs_f64().max(0.001);
        say(format!(
            "healthy again {:.1}s after the kill ({:.1}s after it was declared dead): {lost_chunks} chunks ({}) repaired at {:.0} chunks/s, {}/s, {:.0}% of the disk's rate",
            to_healthy.as_secs_f64(),
            repair_secs,
            ByteSize(lost_bytes),
            lost_chunks as f64 / repair_secs,
            ByteSize((lost_bytes as f64 / repair_secs) as u64),
            100.0 * lost_bytes as f64 / repair_secs / disk_bytes_per_sec
        ));

        // The node returns: its replicas are surplus now, and go.
        let argv = storage_argv(index);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        nodes[META_NODES + index] = spawn(&exe, &format!("storage-{}-again", index + 1), &argv, &storage_env(index)?, &logs)?;
        let back = Instant::now();
        let settled = wait_until(&client, &meta, HEAL_LIMIT, |s: &proto::ClusterStatusResponse, fsck: &proto::FsckResponse| {
            fsck.over_replicated == 0 && fsck.under_replicated == 0 && s.storage_nodes.iter().all(|n| n.state == "alive")
        })
        .await?;
        let surplus_removed = settled - back;
        say(format!("storage-{} back: surplus replicas removed in {:.1}s", index + 1, surplus_removed.as_secs_f64()));
        Ok::<_, anyhow::Error>(Figures { lost_chunks, lost_bytes, to_dead, to_healthy, repair_secs, disk_bytes_per_sec, surplus_removed })
    }
    .await;
    stop(&mut nodes).await;
    let f = outcome?;
    if args.json {
        let json = serde_json::json!({
            "stored_bytes": args.size.as_u64(),
            "file_bytes": args.file_size.as_u64(),
            "lost_replicas": f.lost_chunks,
            "lost_replica_bytes": f.lost_bytes,
            "repair_chunks_per_sec": f.lost_chunks as f64 / f.repair_secs,
            "seconds_to_dead": f.to_dead.as_secs_f64(),
            "seconds_to_healthy": f.to_healthy.as_secs_f64(),
            "repair_seconds": f.repair_secs,
            "repair_bytes_per_sec": f.lost_bytes as f64 / f.repair_secs,
            "disk_bytes_per_sec": f.disk_bytes_per_sec,
            "repair_to_disk_ratio": f.lost_bytes as f64 / f.repair_secs / f.disk_bytes_per_sec,
            "seconds_to_remove_surplus": f.surplus_removed.as_secs_f64(),
            "repair_streams_max": args.repair_streams_max,
        });
        println!("{json}");
    }
    Ok(())
}

/// Polls status and fsck until `done` says so; returns when.
async fn wait_until(
    client: &DfsClient<RealEnv>,
    meta: &[String],
    limit: Duration,
    done: impl Fn(&proto::ClusterStatusResponse, &proto::FsckResponse) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let meta = dfs_core::meta_client::MetaClient::new(crate::security::env(), meta.to_vec(), Default::default());
    loop {
        if let (Ok(status), Ok(fsck)) = (client.status().await, meta.call(proto::FsckRequest { path: String::new(), problems_max: 1 }).await) {
            if done(&status, &fsck) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not get there within {limit:?}; see the logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_random(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What a repair copy costs the disk, measured: `total` bytes written as files of one chunk
/// each, each fsynced, then read back.
fn disk_copy_rate(dir: &Path, total: u64) -> anyhow::Result<f64> {
    let probe = dir.join("disk-probe");
    std::fs::create_dir_all(&probe)?;
    let chunk = vec![0x5au8; CHUNK as usize];
    let started = Instant::now();
    let n = (total / CHUNK).max(1);
    for i in 0..n {
        let path = probe.join(format!("{i}"));
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&chunk)?;
        f.sync_all()?;
    }
    for i in 0..n {
        std::hint::black_box(std::fs::read(probe.join(format!("{i}")))?);
    }
    let rate = (n * CHUNK) as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&probe)?;
    Ok(rate)
}

/// Chunk files under `chunks`, and their bytes.
fn held(chunks: &Path) -> (u64, u64) {
    let (mut count, mut total) = (0, 0);
    let mut stack = vec![chunks.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".chunk") {
                count += 1;
                total += meta.len();
            }
        }
    }
    (count, total)
}
