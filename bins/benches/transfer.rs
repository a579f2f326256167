//! `cargo bench -p dfs --bench transfer`: upload and download throughput of a local cluster,
//! side by side with `cp` of the same bytes on the same disk, in one run.
//!
//! Starts `dfs cluster up` (3 metadata + 3 storage nodes on loopback, in a temporary
//! directory), then for each size: `cp`, three fsynced copies written by this process (what
//! replication 3 must at least cost when all replicas share one disk, as here), `dfs put`,
//! `dfs get`, each timed with the median of `DFS_BENCH_ROUNDS` runs (default 3). Prints MiB/s
//! and ratios. `cp` writes once without fsync: put/cp is the price of durability and
//! replication; put/3xfsync is what the code adds to the disk's own cost.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DFS: &str = env!("CARGO_BIN_EXE_dfs");

fn main() {
    let rounds: usize = std::env::var("DFS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let sizes_mib: Vec<u64> = std::env::var("DFS_BENCH_SIZES_MIB")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 256]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let base = (20_000..40_000u16)
        .step_by(211)
        .find(|b| (0..3).chain(100..103).all(|o| TcpListener::bind(("127.0.0.1", b + o)).is_ok()))
        .expect("a free block of ports");
    let mut up = Command::new(DFS)
        .args(["cluster", "up", "--base-port", &base.to_string(), "--data-dir", &dir.join("data").display().to_string(), "--heartbeat-ms", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cluster");
    let ready = BufReader::new(up.stdout.take().unwrap()).lines().map_while(Result::ok).any(|l| l.contains("ready"));
    assert!(ready, "the cluster did not start");
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);

    println!("dfs transfer benchmark: 3 metadata + 3 storage nodes on loopback, replication 3, 4 MiB chunks, median of {rounds}");
    println!(
        "{:>8}  {:>10}  {:>13}  {:>10}  {:>10}  {:>8}  {:>14}  {:>8}",
        "size", "cp MiB/s", "3xfsync MiB/s", "put MiB/s", "get MiB/s", "put/cp", "put/3xfsync", "get/cp"
    );
    for mib in sizes_mib {
        let src = dir.join(format!("src-{mib}.bin"));
        write_pseudo_random(&src, mib << 20);
        let cp = median(rounds, || {
            let dst = dir.join("cp.bin");
            let t = timed(|| run(Command::new("cp").arg(&src).arg(&dst)));
            std::fs::remove_file(&dst).unwrap();
            t
        });
        let fsynced = median(rounds, || timed(|| write_three_fsynced_copies(&src, dir)));
        let put = median(rounds, || timed(|| run(Command::new(DFS).args(["put", "--force", src.to_str().unwrap(), "/bench.bin"]).env("DFS_META", &meta))));
        let get = median(rounds, || {
            let dst = dir.join("get.bin");
            let t = timed(|| run(Command::new(DFS).args(["get", "--force", "/bench.bin", dst.to_str().unwrap()]).env("DFS_META", &meta)));
            assert_eq!(std::fs::metadata(&dst).unwrap().len(), mib << 20);
            std::fs::remove_file(&dst).unwrap();
            t
        });
        let rate = |d: Duration| mib as f64 / d.as_secs_f64();
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{:>4} MiB  {:>10.1}  {:>13.1}  {:>10.1}  {:>10.1}  {:>7.2}x  {:>13.2}x  {:>7.2}x",
            mib,
            rate(cp),
            rate(fsynced),
            rate(put),
            rate(get),
            ratio(put, cp),
            ratio(put, fsynced),
            ratio(get, cp)
        );
        std::fs::remove_file(&src).unwrap();
    }
    // SAFETY: signalling our own child (Ctrl-C), which stops every node.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGINT) };
    let _ = up.wait();
}

/// Writes `src` three times, each copy fsynced: the disk's share of a replication-3 upload.
fn write_three_fsynced_copies(src: &Path, dir: &Path) {
    use std::io::Write;
    let data = std::fs::read(src).unwrap();
    for i in 0..3 {
        let path = dir.join(format!("fsync-{i}.bin"));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("run");
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..rounds.max(1)).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

fn write_pseudo_random(path: &Path, len: u64) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = Vec::with_capacity(len as usize);
    while (data.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len as usize);
    std::fs::write(path, data).unwrap();
}
