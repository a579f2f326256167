//! `dfs bench transfer`: put and get of a large file and of many small files on a local
//! 3 + 3 cluster (child processes of this one, every replica fsynced), each beside the
//! hardware floor measured in the same run on the same disk:
//!
//! - put floor: the same bytes written as 3 copies in parallel, each fsynced, plus one SHA-256
//!   pass over them (what 3 replicas and end-to-end checksums cost at least);
//! - get floor: the file read and written to a new file, fsynced (`cat` + `sync`), its source
//!   in the page cache; and, when the bench may empty the page cache (root), the same copy
//!   read from the disk: a get reads its chunks from the disk (the cache was emptied, and
//!   large chunks bypass it anyway), which the cached floor never does;
//! - small files: `cp -r` of the same tree, then `sync`.
//!
//! Large transfers run `dfs put`/`dfs get` as child processes, so their peak RSS is the
//! client's own (from `wait4`); the storage nodes' peak RSS is their VmHWM at the end. Each
//! figure is the median of `--runs` runs, each measurement started from the same state
//! (`settle`: dirty pages written back, the page cache emptied when run as root, the source
//! cached).
//!
//! It also reports the CPU time a put and a get used, summed over the client, the storage
//! nodes and the metadata nodes, beside the floor's own: on a machine with few cores, a
//! transfer cannot take less wall time than its CPU time divided by the cores, whatever the
//! disk.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::bench::{cpu_secs, free_loopback_addrs, own_cpu_secs, rss_hwm_bytes, rusage_secs};
use crate::cluster::{spawn, stop, wait_ready, Node};
use dfs_core::auth::Role;

#[derive(Args)]
pub struct TransferBenchArgs {
    /// Size of the large file.
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Runs of each large transfer (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Number of small files (0 skips that part).
    #[arg(long, default_value_t = 2000)]
    small_files: u64,
    /// Size of each small file.
    #[arg(long, default_value = "4KiB")]
    small_size: ByteSize,
    /// Whether small chunks travel to and from storage nodes in batches (`false`: one stream
    /// each, as before batching; for comparison). Passed to `dfs put -r` / `get -r`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    small_chunk_batches: bool,
    /// Where the cluster's data and the test files go (a temporary directory by default,
    /// removed at the end). Put it on the disk you want to measure.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run the nodes and the client from this `dfs` binary instead of this one: another build
    /// measured by the same harness, side by side (alternate the two in one session).
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Run the cluster without TLS (the default is TLS with a CA made for the run, as `dfs
    /// cluster up` does): to measure what TLS costs, side by side.
    #[arg(long)]
    insecure: bool,
}

impl TransferBenchArgs {
    /// The binary the nodes and the client run.
    fn exe(&self) -> anyhow::Result<PathBuf> {
        match &self.exe {
            Some(exe) if exe.is_file() => Ok(exe.clone()),
            Some(exe) => bail!("--exe {}: no such file", exe.display()),
            None => std::env::current_exe().context("cannot find the dfs executable"),
        }
    }
}

const STORAGE_NODES: usize = 3;
const META_NODES: usize = 3;

pub async fn transfer(args: TransferBenchArgs) -> anyhow::Result<()> {
    let (dir, remove) = match &args.dir {
        Some(d) => (d.join(format!("dfs-bench-transfer-{}", std::process::id())), false),
        None => (std::env::temp_dir().join(format!("dfs-bench-transfer-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let outcome = transfer_in(&args, &dir).await;
    if remove || outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn transfer_in(args: &TransferBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let exe = args.exe()?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let meta_addrs = free_loopback_addrs(META_NODES)?;
    let storage_addrs = free_loopback_addrs(STORAGE_NODES)?;
    let meta: Vec<String> = meta_addrs.iter().map(SocketAddr::to_string).collect();
    let peers: Vec<String> = meta.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let pki = crate::security::local_cluster(dir, args.insecure, &meta)?;
    let client_env = crate::security::local_env(pki.as_ref(), Role::Client, "bench-client")?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut started = || -> anyhow::Result<()> {
        for (i, addr) in meta_addrs.iter().enumerate() {
            let name = format!("meta-{}", i + 1);
            let data = dir.join(&name).to_string_lossy().into_owned();
            let id = (i + 1).to_string();
            let env = crate::security::local_env(pki.as_ref(), Role::Meta, &name)?;
            nodes.push(spawn(
                &exe,
                &name,
                &["meta", "--id", &id, "--listen", &addr.to_string(), "--data-dir", &data, "--peers", &peers.join(",")],
                &env,
                &logs,
            )?);
        }
        for (i, addr) in storage_addrs.iter().enumerate() {
            let name = format!("storage-{}", i + 1);
            let data = dir.join(&name).to_string_lossy().into_owned();
            let argv = ["storage", "--listen", &addr.to_string(), "--meta", &meta.join(","), "--data-dir", &data, "--heartbeat-ms", "500"];
            let env = crate::security::local_env(pki.as_ref(), Role::Storage, &name)?;
            nodes.push(spawn(&exe, &name, &argv, &env, &logs)?);
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
        let pids: Vec<u32> = nodes.iter().filter_map(|n| n.child.id()).collect();
        let reach = Reach { meta: meta.clone(), env: client_env.clone() };
        let large = large_file(args, dir, &exe, &reach, &pids, &say).await?;
        let storage_rss: Vec<u64> = nodes[META_NODES..].iter().filter_map(|n| n.child.id()).filter_map(|pid| rss_hwm_bytes(pid).ok()).collect();
        let small = if args.small_files > 0 { Some(small_files(args, dir, &reach, &say).await?) } else { None };
        Ok::<_, anyhow::Error>((large, storage_rss, small))
    }
    .await;
    stop(&mut nodes).await;
    let (large, storage_rss, small) = outcome?;
    let storage_peak = storage_rss.iter().copied().max().unwrap_or(0);
    say(format!(
        "storage node peak RSS: {} (max of {})",
        ByteSize(storage_peak),
        storage_rss.iter().map(|b| ByteSize(*b).to_string()).collect::<Vec<_>>().join(", ")
    ));
    if args.json {
        let mut json = serde_json::json!({
            "size_bytes": args.size.as_u64(),
            "runs": args.runs,
            "put_seconds": large.put,
            "put_floor_seconds": large.put_floor,
            "put_ratio": large.put / large.put_floor,
            "get_seconds": large.get,
            "get_floor_seconds": large.get_floor,
            "get_ratio": large.get / large.get_floor,
            "get_floor_uncached_seconds": large.get_floor_uncached,
            "warm_get_seconds": large.warm_get,
            "warm_get_ratio": large.warm_get / large.get_floor,
            "warm_get_cpu_seconds": { "client": large.warm_get_cpu.client, "storage_nodes": large.warm_get_cpu.storage, "metadata_nodes": large.warm_get_cpu.meta },
            "put_cpu_seconds": { "client": large.put_cpu.client, "storage_nodes": large.put_cpu.storage, "metadata_nodes": large.put_cpu.meta },
            "get_cpu_seconds": { "client": large.get_cpu.client, "storage_nodes": large.get_cpu.storage, "metadata_nodes": large.get_cpu.meta },
            "put_floor_cpu_seconds": large.put_floor_cpu,
            "cores": cores(),
            "client_put_peak_rss_bytes": large.put_rss,
            "client_get_peak_rss_bytes": large.get_rss,
            "storage_peak_rss_bytes": storage_peak,
        });
        if let Some(s) = small {
            json["small_files"] = serde_json::json!({
                "files": args.small_files,
                "file_bytes": args.small_size.as_u64(),
                "chunk_batches": args.small_chunk_batches,
                "put_files_per_sec": s.put_rate,
                "get_files_per_sec": s.get_rate,
                "cp_sync_files_per_sec": s.cp_rate,
            });
        }
        println!("{json}");
    }
    Ok(())
}

struct Large {
    put: f64,
    put_floor: f64,
    get: f64,
    get_floor: f64,
    /// The get floor with its source read from the disk (`None`: the cache could not be emptied).
    get_floor_uncached: Option<f64>,
    put_rss: u64,
    get_rss: u64,
    /// A second get right after the first, nothing emptied in between: what a file read
    /// twice costs the second time.
    warm_get: f64,
    /// CPU time of the median put, and of the floor run beside it; of the median get and warm get.
    put_cpu: Cpu,
    put_floor_cpu: f64,
    get_cpu: Cpu,
    warm_get_cpu: Cpu,
}

/// Where a transfer's CPU time went, in seconds.
#[derive(Clone, Copy, Default)]
struct Cpu {
    client: f64,
    storage: f64,
    meta: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.client + self.storage + self.meta
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time used so far by the metadata nodes and by the storage nodes (`pids`: metadata
/// first), in seconds.
fn nodes_cpu(pids: &[u32]) -> (f64, f64) {
    let sum = |p: &[u32]| p.iter().filter_map(|pid| cpu_secs(*pid).ok()).sum::<f64>();
    let split = META_NODES.min(pids.len());
    (sum(&pids[..split]), sum(&pids[split..]))
}

/// How a client command reaches the bench's cluster: its metadata addresses and its TLS
/// settings (`security::local_env`).
struct Reach {
    meta: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// `run_dfs`, with the CPU time every process spent on it: the client's, and the nodes' over
/// the same span (`pids`: metadata first).
fn run_measured(exe: &Path, meta: &Reach, dir: &Path, pids: &[u32], args: &[&str]) -> anyhow::Result<(f64, u64, Cpu)> {
    let (meta_before, storage_before) = nodes_cpu(pids);
    let (secs, rss, client) = run_dfs(exe, meta, dir, args)?;
    let (meta_after, storage_after) = nodes_cpu(pids);
    Ok((secs, rss, Cpu { client, storage: storage_after - storage_before, meta: meta_after - meta_before }))
}

async fn large_file(args: &TransferBenchArgs, dir: &Path, exe: &Path, meta: &Reach, pids: &[u32], say: &impl Fn(String)) -> anyhow::Result<Large> {
    let size = args.size.as_u64();
    let source = dir.join("large.bin");
    write_pattern(&source, size)?;
    let dropped = tokio::task::block_in_place(|| settle(&source))?;
    say(format!(
        "before each measurement: dirty pages written back, {}the source read into the page cache",
        if dropped { "the page cache emptied, " } else { "the page cache NOT emptied (needs root: floors may vary with what earlier steps cached), " }
    ));
    let (mut put, mut put_floor, mut get, mut get_floor, mut get_floor_uncached) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut put_rss, mut get_rss) = (0u64, 0u64);
    let (mut put_cpu, mut floor_cpu, mut get_cpu) = (vec![], vec![], vec![]);
    let (mut warm_get, mut warm_get_cpu) = (vec![], vec![]);
    for run in 0..args.runs {
        tokio::task::block_in_place(|| settle(&source))?;
        let own = own_cpu_secs();
        put_floor.push(tokio::task::block_in_place(|| put_floor_once(&source, dir))?);
        floor_cpu.push(own_cpu_secs() - own);
        let remote = format!("/bench/large-{run}.bin");
        tokio::task::block_in_place(|| settle(&source))?;
        let (secs, rss, cpu) = run_measured(exe, meta, dir, pids, &["put", "--force", &source.to_string_lossy(), &remote])?;
        put_cpu.push(cpu);
        put.push(secs);
        put_rss = put_rss.max(rss);
        tokio::task::block_in_place(|| settle(&source))?;
        get_floor.push(tokio::task::block_in_place(|| get_floor_once(&source, dir))?);
        if dropped && tokio::task::block_in_place(empty_page_cache) {
            get_floor_uncached.push(tokio::task::block_in_place(|| get_floor_once(&source, dir))?);
        }
        let dest = dir.join("large.back");
        tokio::task::block_in_place(|| settle(&source))?;
        let (secs, rss, cpu) = run_measured(exe, meta, dir, pids, &["get", "--force", &remote, &dest.to_string_lossy()])?;
        get_cpu.push(cpu);
        get.push(secs);
        get_rss = get_rss.max(rss);
        if !same_file(&source, &dest)? {
            bail!("the downloaded file differs from the uploaded one");
        }
        std::fs::remove_file(&dest)?;
        // The same file again at once: whatever the first get left in memory anywhere counts.
        let (secs, rss, cpu) = run_measured(exe, meta, dir, pids, &["get", "--force", &remote, &dest.to_string_lossy()])?;
        warm_get_cpu.push(cpu);
        warm_get.push(secs);
        get_rss = get_rss.max(rss);
        std::fs::remove_file(&dest)?;
        say(format!(
            "run {}: put {:.2}s (floor {:.2}s)  get {:.2}s (floor {:.2}s{})  warm get {:.2}s",
            run + 1,
            put[run as usize],
            put_floor[run as usize],
            get[run as usize],
            get_floor[run as usize],
            get_floor_uncached.get(run as usize).map(|s| format!(", uncached {s:.2}s")).unwrap_or_default(),
            warm_get[run as usize],
        ));
    }
    // The CPU figures of the run whose transfer took the median time.
    let middle = |times: &[f64]| {
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by(|a, b| times[*a].total_cmp(&times[*b]));
        order[order.len() / 2]
    };
    let (put_middle, get_middle, warm_middle) = (middle(&put), middle(&get), middle(&warm_get));
    let large = Large {
        put: median(&put),
        put_floor: median(&put_floor),
        get: median(&get),
        get_floor: median(&get_floor),
        get_floor_uncached: (!get_floor_uncached.is_empty()).then(|| median(&get_floor_uncached)),
        put_rss,
        get_rss,
        warm_get: median(&warm_get),
        put_cpu: put_cpu[put_middle],
        put_floor_cpu: floor_cpu[put_middle],
        get_cpu: get_cpu[get_middle],
        warm_get_cpu: warm_get_cpu[warm_middle],
    };
    say(format!(
        "{} at replication 3, median of {}: put {:.2}s = {:.2}x the floor ({:.2}s, {:.0} MiB/s); get {:.2}s = {:.2}x the floor ({:.2}s, {:.0} MiB/s)",
        ByteSize(size),
        args.runs,
        large.put,
        large.put / large.put_floor,
        large.put_floor,
        size as f64 / large.put / MIB,
        large.get,
        large.get / large.get_floor,
        large.get_floor,
        size as f64 / large.get / MIB,
    ));
    if let Some(uncached) = large.get_floor_uncached {
        say(format!("get against the floor read from the disk, as a get reads its chunks: {:.2}x ({uncached:.2}s)", large.get / uncached));
    }
    say(format!(
        "warm get (the same file again at once) {:.2}s = {:.2}x the floor of a cached file (cat + sync, {:.2}s)",
        large.warm_get,
        large.warm_get / large.get_floor,
        large.get_floor
    ));
    let gib = size as f64 / (1u64 << 30) as f64;
    let cpu_line = |what: &str, run: usize, cpu: Cpu| {
        format!(
            "{what} CPU (run {}): client {:.2}s + storage nodes {:.2}s + metadata nodes {:.2}s = {:.2}s ({:.2}s per GiB), so at least {:.2}s of wall time on {} cores",
            run + 1,
            cpu.client,
            cpu.storage,
            cpu.meta,
            cpu.total(),
            cpu.total() / gib,
            cpu.total() / cores() as f64,
            cores(),
        )
    };
    say(format!("{}; the floor used {:.2}s of CPU", cpu_line("put", put_middle, large.put_cpu), large.put_floor_cpu));
    say(cpu_line("get", get_middle, large.get_cpu));
    say(cpu_line("warm get", warm_middle, large.warm_get_cpu));
    say(format!("client peak RSS: put {}, get {}", ByteSize(large.put_rss), ByteSize(large.get_rss)));
    std::fs::remove_file(&source)?;
    Ok(large)
}

/// Puts the machine in the same state before each measurement, so that no step pays for what
/// the one before it left behind: every dirty page written back (`sync`), the page cache
/// emptied where the bench may (`/proc/sys/vm/drop_caches`, root only), then the source read
/// back in (every measurement reads a cached source, as `cp` of a file just written would).
/// Without this, the floors moved by 2-3x with what the system under test had cached: a put
/// that leaves 3 GiB of chunks in the page cache slowed the next floor's writes (memory to
/// reclaim) and so flattered the ratios (measured: get floor 4.1-4.3 s after such a put,
/// 1.5-1.8 s after one that caches nothing). Returns whether the cache was emptied.
fn settle(source: &Path) -> anyhow::Result<bool> {
    let dropped = empty_page_cache();
    std::io::copy(&mut std::fs::File::open(source)?, &mut std::io::sink())?;
    Ok(dropped)
}

/// `sync`, then empties the page cache if this process may (root); whether it did.
fn empty_page_cache() -> bool {
    // SAFETY: `sync` takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

const MIB: f64 = 1024.0 * 1024.0;
/// Bytes per read and write of the test files (pattern, comparison).
const BLOCK_BYTES: usize = 4 << 20;
/// Bytes per read and write in the floors: what `cat` and `cp` use (coreutils' 128 KiB).
/// Copying in 4 MiB blocks, as the floors did before, took 3.3-3.8 s per GiB here against
/// 0.9-1.0 s with 128 KiB (`dd bs=4M` vs `bs=128K`, + `sync`), a floor slower than the
/// `cat` + `sync` it stands for, which flattered every ratio.
const FLOOR_BLOCK_BYTES: usize = 128 << 10;

/// 3 fsynced copies written in parallel, then one SHA-256 pass.
fn put_floor_once(source: &Path, dir: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let copies: Vec<_> = (0..STORAGE_NODES)
            .map(|i| {
                let dest = dir.join(format!("floor-copy-{i}"));
                s.spawn(move || copy_synced(source, &dest))
            })
            .collect();
        copies.into_iter().try_for_each(|c| c.join().expect("copy thread"))
    })?;
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(source)?;
    let mut block = vec![0u8; FLOOR_BLOCK_BYTES];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    std::hint::black_box(hasher.finalize());
    let secs = started.elapsed().as_secs_f64();
    for i in 0..STORAGE_NODES {
        std::fs::remove_file(dir.join(format!("floor-copy-{i}")))?;
    }
    Ok(secs)
}

/// The file read and written to a new file, fsynced.
fn get_floor_once(source: &Path, dir: &Path) -> anyhow::Result<f64> {
    let dest = dir.join("floor-get");
    let started = Instant::now();
    copy_synced(source, &dest)?;
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&dest)?;
    Ok(secs)
}

fn copy_synced(source: &Path, dest: &Path) -> std::io::Result<()> {
    let mut from = std::fs::File::open(source)?;
    let mut to = std::fs::File::create(dest)?;
    let mut block = vec![0u8; FLOOR_BLOCK_BYTES];
    loop {
        let n = from.read(&mut block)?;
        if n == 0 {
            break;
        }
        to.write_all(&block[..n])?;
    }
    to.sync_all()
}

/// Runs `dfs ARGS` against the cluster; returns its wall time, peak RSS and CPU time.
fn run_dfs(exe: &Path, meta: &Reach, dir: &Path, args: &[&str]) -> anyhow::Result<(f64, u64, f64)> {
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        .args(args)
        .env("DFS_META", meta.meta.join(","))
        .envs(meta.env.iter().map(|(k, v)| (k, v)))
        .env("DFS_STATE_DIR", dir.join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run dfs {args:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("piped");
    let mut errors = String::new();
    let _ = stderr.read_to_string(&mut errors);
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("dfs {args:?} failed: {}", errors.trim());
    }
    // ru_maxrss is in KiB on Linux.
    Ok((secs, usage.ru_maxrss as u64 * 1024, rusage_secs(&usage)))
}

struct Small {
    put_rate: f64,
    get_rate: f64,
    cp_rate: f64,
}

async fn small_files(args: &TransferBenchArgs, dir: &Path, meta: &Reach, say: &impl Fn(String)) -> anyhow::Result<Small> {
    let n = args.small_files;
    let tree = dir.join("small");
    for i in 0..n {
        let sub = tree.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:06}")), pattern(args.small_size.as_u64() as usize, i))?;
    }
    let copy = dir.join("small-cp");
    let started = Instant::now();
    let cp = std::process::Command::new("cp").arg("-r").arg(&tree).arg(&copy).status().context("cannot run cp")?;
    let sync = std::process::Command::new("sync").status().context("cannot run sync")?;
    if !cp.success() || !sync.success() {
        bail!("cp -r or sync failed");
    }
    let cp_rate = n as f64 / started.elapsed().as_secs_f64();

    // The real commands, as a user runs them (their default files in flight).
    let exe = args.exe()?;
    let batches = args.small_chunk_batches.to_string();
    let tree_arg = tree.to_string_lossy().into_owned();
    let (put_secs, _, _) = run_dfs(&exe, meta, dir, &["put", "-r", "--quiet", "--chunk-batches", &batches, &tree_arg, "/bench/small"])?;
    let put_rate = n as f64 / put_secs;

    let back = dir.join("small-back");
    let back_arg = back.to_string_lossy().into_owned();
    let (get_secs, _, _) = run_dfs(&exe, meta, dir, &["get", "-r", "--quiet", "--chunk-batches", &batches, "/bench/small", &back_arg])?;
    let get_rate = n as f64 / get_secs;
    for i in 0..n {
        let rel = format!("d{:03}/f{i:06}", i / 100);
        if !same_file(&tree.join(&rel), &back.join(&rel))? {
            bail!("small file {rel} came back different");
        }
    }
    say(format!(
        "{n} files of {} in 100-file directories, `dfs put -r` / `get -r`, chunk batches {}: put {put_rate:.0} files/s ({:.2}x cp), get {get_rate:.0} files/s; cp -r + sync {cp_rate:.0} files/s",
        ByteSize(args.small_size.as_u64()),
        if args.small_chunk_batches { "on" } else { "off" },
        put_rate / cp_rate,
    ));
    Ok(Small { put_rate, get_rate, cp_rate })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Incompressible-looking bytes (xorshift), different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_pattern(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0u64;
    let mut seed = 1;
    while written < size {
        let block = pattern((size - written).min(BLOCK_BYTES as u64) as usize, seed);
        file.write_all(&block)?;
        written += block.len() as u64;
        seed += 1;
    }
    file.flush()?;
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut x, mut y) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if x.metadata()?.len() != y.metadata()?.len() {
        return Ok(false);
    }
    let (mut p, mut q) = (vec![0u8; BLOCK_BYTES], vec![0u8; BLOCK_BYTES]);
    loop {
        let n = x.read(&mut p)?;
        if n == 0 {
            return Ok(true);
        }
        y.read_exact(&mut q[..n])?;
        if p[..n] != q[..n] {
            return Ok(false);
        }
    }
}
