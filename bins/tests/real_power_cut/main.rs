//! Power cuts on a real disk: the real `dfs meta` and `dfs storage` binaries keep their data on
//! a FUSE file system of this test's own (`lazyfs`) that holds unsynced writes in memory and
//! drops them on command, directory entries included. Between SIGKILLs, the page cache
//! survives and an `fsync` missing from the real disk code would pass every other test; here
//! it loses data.
//!
//! A run: one metadata node and three storage nodes (replication 3) on the file system;
//! files uploaded one after the other; the file system freezes at a mutating call chosen by
//! seed (a power cut at that instant: nothing from then on reaches it), every process is
//! SIGKILLed, everything unsynced is dropped, the nodes start again on what is left, and then:
//! every acknowledged file downloads byte-identical, and the upload that was in flight is
//! either absent or whole (never half there). Then the next cut. `DFS_POWER_CUTS` sets the
//! number of cuts (default `CUTS_DEFAULT`), `DFS_POWER_CUT_SEED` the seed.
//!
//! Also, from the file system's log: by the time `put` returns, every chunk it stored has, on
//! at least a write quorum of nodes, been written, fsynced, renamed into place and its
//! directory fsynced, in that order.
//!
//! With a bug planted (`core/src/planted.rs`, a build of `dfs` with `--cfg dfs_planted` made
//! here into `target/planted`): no file fsync, or no directory fsync, must make a check fail.
//!
//! Chunks are kept larger than the small-chunk batch limit: a batch is made durable with one
//! `syncfs(2)`, which the kernel does not pass to a FUSE file system, so this file system
//! cannot see it (`lazyfs` module docs).

#[path = "../common/mod.rs"]
mod common;
mod lazyfs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use lazyfs::{LazyFs, Op};

/// Power cuts per run unless `DFS_POWER_CUTS` says otherwise.
const CUTS_DEFAULT: u64 = 30;
/// A cut falls on one of the next this many mutating calls (an upload of a few MiB makes a
/// few hundred: creates, writes, fsyncs, renames on three nodes, and metadata's log).
const CUT_WITHIN_CALLS: u64 = 600;
/// Uploads per round at most before the cut is forced (the armed call never came).
const UPLOADS_PER_ROUND_MAX: usize = 6;
const STORAGE_NODES: usize = 3;
const WRITE_QUORUM: usize = 2;
const MIB: usize = 1 << 20;
/// The client batches chunks up to this size (`limits::SMALL_CHUNK_BYTES_MAX`): every chunk here
/// is larger (see the module docs).
const SMALL_CHUNK_BYTES_MAX: usize = 256 * 1024;

fn seed() -> u64 {
    std::env::var("DFS_POWER_CUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

fn cuts() -> u64 {
    let n = std::env::var("DFS_POWER_CUTS").ok().map(|v| v.parse().expect("DFS_POWER_CUTS is a number")).unwrap_or(CUTS_DEFAULT);
    assert!(n > 0, "DFS_POWER_CUTS=0 would cut nothing and prove nothing");
    n
}

/// xorshift: the test's choices, by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A size whose every chunk (1 MiB) is larger than the batch limit.
fn file_size(rng: &mut Rng) -> usize {
    let whole = rng.below(3) as usize;
    let tail = SMALL_CHUNK_BYTES_MAX + 1 + rng.below((MIB - SMALL_CHUNK_BYTES_MAX - 1) as u64) as usize;
    whole * MIB + if whole > 0 && rng.below(3) == 0 { 0 } else { tail }
}

/// One metadata node and three storage nodes, their data on a `LazyFs`.
struct Rig {
    bin: PathBuf,
    env: Vec<(&'static str, &'static str)>,
    logs: PathBuf,
    fs: LazyFs,
    meta: String,
    args: Vec<(String, Vec<String>)>,
    procs: Vec<Proc>,
    _session: fuser::BackgroundSession,
}

impl Rig {
    fn start(dir: &Path, bin: &Path, env: &[(&'static str, &'static str)]) -> Rig {
        assert!(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse (FUSE) and root to mount a file system");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = LazyFs::new();
        let session = fs.mount(&mnt).unwrap_or_else(|e| panic!("mount the test's FUSE file system at {}: {e}", mnt.display()));
        let port = free_port();
        let meta = format!("127.0.0.1:{port}");
        let mut args = vec![(
            "meta-1".to_string(),
            ["meta", "--id", "1", "--listen", &meta, "--data-dir", &mnt.join("meta-1").display().to_string(), "--peers", &format!("1={meta}")]
                .map(String::from)
                .to_vec(),
        )];
        for i in 1..=STORAGE_NODES {
            let data = mnt.join(format!("storage-{i}")).display().to_string();
            let listen = format!("127.0.0.1:{}", free_port());
            args.push((
                format!("storage-{i}"),
                ["storage", "--listen", &listen, "--meta", &meta, "--data-dir", &data, "--heartbeat-interval", "1s"].map(String::from).to_vec(),
            ));
        }
        let mut rig = Rig { bin: bin.to_path_buf(), env: env.to_vec(), logs: dir.to_path_buf(), fs, meta, args, procs: Vec::new(), _session: session };
        rig.boot();
        rig
    }

    fn boot(&mut self) {
        for (name, args) in &self.args {
            self.procs.push(spawn_bin(&self.bin, name, args, &self.logs, &self.env));
        }
        wait_ready(&self.meta, STORAGE_NODES);
    }

    /// Kills every node, drops what was not synced, starts them again.
    fn power_cut_and_restart(&mut self) {
        // SIGKILL first, without waiting: a process blocked in a call the frozen file system
        // holds dies only once that call is answered, and `cut` answers it (with EIO, which
        // it never sees: no code of a process runs once SIGKILL is pending).
        for p in &mut self.procs {
            let _ = p.child.kill();
        }
        self.fs.cut();
        for mut p in self.procs.drain(..) {
            p.sigkill();
        }
        self.boot();
    }

    /// Chunk files on the storage nodes' disks, by path inside the file system.
    fn chunk_paths(&self) -> Vec<PathBuf> {
        self.fs.files_ending_with(".chunk")
    }
}

/// How `put` ended.
enum Put {
    Acknowledged,
    Failed,
    /// The power went while it ran.
    InFlight,
}

/// Runs `dfs put` until it ends or the file system freezes (then it is killed with the nodes).
fn put(rig: &Rig, local: &Path, remote: &str) -> Put {
    let log_path = rig.logs.join("client.log");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    let _ = writeln!(log, "---- put {remote} ({} bytes)", std::fs::metadata(local).map(|m| m.len()).unwrap_or(0));
    let mut child = Command::new(DFS)
        .args(["put", "--force", "--chunk-size", "1MiB", local.to_str().unwrap(), remote])
        .env("DFS_META", &rig.meta)
        .env("DFS_STATE_DIR", rig.logs.join("client-state"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    match until_exit_or_cut(rig, &mut child, &format!("put {remote}")) {
        Some(status) if status.success() => Put::Acknowledged,
        Some(_) => Put::Failed,
        None => Put::InFlight,
    }
}

/// Waits for `child` to end; if the file system freezes first (the power went), kills it and
/// returns `None`: a client's call may never be answered then.
fn until_exit_or_cut(rig: &Rig, child: &mut std::process::Child, what: &str) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if rig.fs.frozen() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        assert!(Instant::now() < deadline, "{what} neither ended nor froze in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The chunk ids (hex) of `remote`, from metadata; `None` if the power goes first.
fn stat_chunks(rig: &Rig, remote: &str) -> Option<Vec<String>> {
    let out = rig.logs.join("stat.json");
    let mut child = Command::new(DFS).args(["--json", "stat", remote]).env("DFS_META", &rig.meta).stdout(std::fs::File::create(&out).unwrap()).spawn().unwrap();
    let status = until_exit_or_cut(rig, &mut child, &format!("stat {remote}"))?;
    assert!(status.success(), "stat {remote} failed with the power on");
    let stat: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("stat --json prints JSON");
    Some(stat["chunks"].as_array().expect("chunks").iter().map(|c| c["chunk_id"].as_str().unwrap().to_string()).collect())
}

/// What `dfs get` finds at `remote` after a cut: the bytes, or `None` if there is no such file.
/// Errors that could be the cluster settling are retried for a while; an error that lasts is
/// returned.
fn get(rig: &Rig, remote: &str) -> Result<Option<Vec<u8>>, String> {
    let out = rig.logs.join("got.bin");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new(DFS).args(["get", "--force", remote, out.to_str().unwrap()]).env("DFS_META", &rig.meta).output().unwrap();
        if o.status.success() {
            return Ok(Some(std::fs::read(&out).unwrap()));
        }
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        if stderr.contains("no such file") || stderr.contains("not found") {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(stderr.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The chunks (by id) with fewer than a write quorum of copies whose file was written, fsynced,
/// renamed into place and its directory fsynced, in that order, according to `log`.
fn unsafely_written(log: &[Op], chunks: &[PathBuf]) -> Vec<String> {
    let mut safe: BTreeMap<String, usize> = BTreeMap::new();
    for path in chunks {
        let id = path.file_name().unwrap().to_string_lossy().to_string();
        let entry = safe.entry(id).or_default();
        let Some(renamed) = log.iter().rposition(|op| matches!(op, Op::Rename(_, to) if to == path)) else {
            continue;
        };
        let Op::Rename(tmp, _) = &log[renamed] else { unreachable!() };
        let before = &log[..renamed];
        let last_write = before.iter().rposition(|op| matches!(op, Op::Write(p) | Op::Truncate(p) if p == tmp));
        let synced = before.iter().rposition(|op| matches!(op, Op::Fsync(p) if p == tmp));
        let data_durable = matches!((last_write, synced), (Some(w), Some(s)) if s > w);
        let dir = path.parent().unwrap();
        let name_durable = log[renamed + 1..].iter().any(|op| matches!(op, Op::FsyncDir(d) if d == dir));
        if data_durable && name_durable {
            *entry += 1;
        }
    }
    safe.into_iter().filter(|(_, n)| *n < WRITE_QUORUM).map(|(id, n)| format!("{id} ({n} safe copies)")).collect()
}

/// The run: `cuts` power cuts at calls chosen by `seed`; with `order`, the write order is
/// checked after every acknowledged put too. `Err` says what broke.
fn run(dir: &Path, bin: &Path, env: &[(&'static str, &'static str)], cuts: u64, seed: u64, order: bool) -> Result<String, String> {
    let mut rig = Rig::start(dir, bin, env);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut checked_order: BTreeSet<String> = BTreeSet::new();
    let mut uploads = 0usize;
    let started = Instant::now();
    for cut in 1..=cuts {
        let at = 1 + rng.below(CUT_WITHIN_CALLS);
        rig.fs.arm(at);
        // Paths whose last put failed or was cut short: any of these versions (`None`: no
        // file) may be there after the cut, and nothing else.
        let mut unsure: BTreeMap<String, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        for _ in 0..UPLOADS_PER_ROUND_MAX {
            uploads += 1;
            let remote = format!("/f{}", uploads % 7); // overwrites too: `put --force` replaces
            let data = test_bytes(file_size(&mut rng), seed ^ uploads as u64);
            let local = dir.join("upload.bin");
            std::fs::write(&local, &data).unwrap();
            match put(&rig, &local, &remote) {
                Put::Acknowledged => {
                    // The write path's order, as the file system saw it, for the file's chunks
                    // (each needs a write quorum of safe copies once its put returned). Not
                    // when the power went meanwhile: metadata may then never answer.
                    if !order {
                        acked.insert(remote, data);
                        continue;
                    }
                    let Some(ids) = stat_chunks(&rig, &remote) else {
                        acked.insert(remote, data);
                        break;
                    };
                    let chunks: Vec<PathBuf> = rig
                        .chunk_paths()
                        .into_iter()
                        .filter(|p| ids.iter().any(|id| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(id.as_str()))))
                        .collect();
                    let unsafe_chunks = unsafely_written(&rig.fs.log(), &chunks);
                    if !unsafe_chunks.is_empty() {
                        let log = rig.fs.log();
                        let id = unsafe_chunks[0].split('.').next().unwrap_or_default().to_string();
                        let id = id.strip_suffix(".chunk").unwrap_or(&id).to_string();
                        let about: Vec<String> = log.iter().filter(|op| format!("{op:?}").contains(&id)).map(|op| format!("{op:?}")).collect();
                        return Err(format!(
                            "put {remote} returned with chunks not durably written, in order: {unsafe_chunks:?}\nthe file system's calls about {id}:\n  {}",
                            about.join("\n  ")
                        ));
                    }
                    checked_order.extend(chunks.iter().map(|c| c.file_name().unwrap().to_string_lossy().to_string()));
                    acked.insert(remote, data);
                }
                Put::Failed | Put::InFlight => {
                    let old = acked.remove(&remote);
                    unsure.insert(remote, vec![old, Some(data)]);
                }
            }
            if rig.fs.frozen() {
                break;
            }
        }
        if !rig.fs.frozen() {
            // The armed call never came (an idle cluster writes nothing): the power goes now.
            rig.fs.freeze();
        }
        rig.power_cut_and_restart();
        eprintln!("[power-cut] cut {cut} at mutating call {at} of the round; {} files acknowledged so far", acked.len() + unsure.len());
        // Every acknowledged file is intact; one whose put failed or was cut short holds one
        // of its versions, whole, or (if it had none before) nothing.
        for (remote, data) in &acked {
            match get(&rig, remote) {
                Ok(Some(got)) if got == *data => {}
                Ok(Some(got)) => {
                    return Err(format!("cut {cut} (call {at}): acknowledged {remote} reads {} bytes that differ from the upload's {}", got.len(), data.len()))
                }
                Ok(None) => return Err(format!("cut {cut} (call {at}): acknowledged {remote} is gone")),
                Err(e) => return Err(format!("cut {cut} (call {at}): acknowledged {remote} cannot be read: {e}")),
            }
        }
        for (remote, versions) in unsure {
            match get(&rig, &remote) {
                Ok(found) if versions.contains(&found) => {
                    if let Some(bytes) = found {
                        acked.insert(remote, bytes);
                    }
                }
                Ok(found) => {
                    return Err(format!(
                        "cut {cut} (call {at}): {remote}, not acknowledged, holds {} which no put wrote",
                        found.map_or("nothing".to_string(), |b| format!("{} bytes", b.len()))
                    ))
                }
                Err(e) => return Err(format!("cut {cut} (call {at}): {remote}, not acknowledged, is half there: {e}")),
            }
        }
    }
    Ok(format!(
        "{cuts} power cuts (seed {seed}), {uploads} uploads, {} mutating calls, {} files checked after every cut, write order checked for {} chunks, {:.1} s",
        rig.fs.applied(),
        acked.len(),
        checked_order.len(),
        started.elapsed().as_secs_f64()
    ))
}

#[test]
fn acknowledged_files_survive_power_cuts_and_nothing_unacknowledged_is_half_there() {
    let tmp = TestDir::new();
    let report = run(tmp.path(), Path::new(DFS), &[], cuts(), seed(), true).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("[power-cut] {report}");
}

/// The `dfs` binary built with `--cfg dfs_planted` (once per test process), into
/// `target/planted`, so that the ordinary build is never rebuilt by this one.
fn planted_dfs() -> PathBuf {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("planted");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustflags = format!("{} --cfg dfs_planted", std::env::var("RUSTFLAGS").unwrap_or_default());
    let started = Instant::now();
    let out = Command::new(cargo)
        .current_dir(workspace)
        .env("RUSTFLAGS", rustflags.trim())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "dfs", "--bin", "dfs"])
        .output()
        .expect("run cargo to build the planted dfs");
    assert!(out.status.success(), "building dfs with --cfg dfs_planted failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("[power-cut] planted dfs built in {:.1} s", started.elapsed().as_secs_f64());
    let path = target.join("debug").join("dfs");
    *built = Some(path.clone());
    path
}

/// Runs with `bug` planted and expects each check to fail on its own: the power cuts (a file
/// lost or damaged), and the write order (a chunk acknowledged before it was durable).
fn planted_bug_is_caught(bug: &'static str) {
    let bin = planted_dfs();
    for (order, expected) in [(false, "acknowledged"), (true, "not durably written")] {
        let tmp = TestDir::new();
        let what = if order { "the write order" } else { "the power cuts alone" };
        match run(tmp.path(), &bin, &[("DFS_PLANTED", bug)], cuts(), seed(), order) {
            Ok(report) => panic!("planted bug {bug} was not caught by {what}: {report}"),
            Err(verdict) => {
                assert!(verdict.contains(expected), "planted bug {bug}: {what} failed otherwise than expected ({expected:?}): {verdict}");
                eprintln!("[power-cut] planted {bug}: caught by {what}: {}", verdict.lines().next().unwrap_or_default());
            }
        }
    }
}

#[test]
fn a_missing_file_fsync_is_caught() {
    planted_bug_is_caught("no-file-fsync");
}

#[test]
fn a_missing_directory_fsync_is_caught() {
    planted_bug_is_caught("no-dir-fsync");
}
