//! Real processes on 127.0.0.1: the `dfs` binary as metadata and storage nodes, driven by the
//! `dfs` client commands, with the metadata leader killed by SIGKILL.

#![cfg(not(madsim))]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DFS: &str = env!("CARGO_BIN_EXE_dfs");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn sigkill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A temporary directory kept (and named on stderr) when the test fails, for its node logs.
struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    fn new() -> Self {
        TestDir(Some(tempfile::tempdir().unwrap()))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.0.take().unwrap().keep();
            eprintln!("test failed: node logs kept in {}", kept.display());
        }
    }
}

/// Ports for the nodes of these tests: below Linux's ephemeral range (32768..), so that no
/// outgoing connection can take a port between the test choosing it and a node binding it,
/// and handed out once per process, so parallel tests never share one. Each is checked free.
fn free_ports(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 10_000 + (std::process::id() % 1_000) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let base = NEXT.fetch_add(count, Ordering::SeqCst);
        assert!(base < 32_000, "ran out of test ports");
        if (base..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

fn free_port() -> u16 {
    free_ports(1)
}

fn spawn(name: &str, args: &[String], log_dir: &Path) -> Proc {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(DFS)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc { name: name.into(), child }
}

fn dfs(meta: &str, args: &[&str]) -> Output {
    Command::new(DFS).args(args).env("DFS_META", meta).output().expect("run dfs")
}

fn dfs_ok(meta: &str, args: &[&str]) -> String {
    let out = dfs(meta, args);
    assert!(
        out.status.success(),
        "dfs {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `probe` every 200 ms until it yields or `limit` passes.
fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dfs status` once the leader sees `storage` live storage nodes; returns the leader's id.
fn wait_ready(meta: &str, storage: usize) -> u64 {
    wait_for(Duration::from_secs(60), "a leader and live storage nodes", || {
        let out = dfs(meta, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let leader = text.lines().find_map(|l| l.strip_prefix("leader: "))?.split_whitespace().next()?.parse().ok()?;
        let alive = text.lines().filter(|l| l.contains(" alive ")).count();
        (out.status.success() && alive >= storage).then_some(leader)
    })
}

/// Deterministic, incompressible-looking bytes (xorshift), so no test depends on an RNG crate.
fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} ({} bytes) differs from {} ({} bytes)", a.display(), x.len(), b.display(), y.len());
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn files_survive_sigkill_of_the_metadata_leader() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let meta_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = meta_ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let meta = meta_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");

    let mut metas: Vec<Proc> = meta_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let args = [
                "meta".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                dir.join(format!("meta-{}", i + 1)).display().to_string(),
                "--peers".into(),
                peers.join(","),
            ];
            spawn(&format!("meta-{}", i + 1), &args, dir)
        })
        .collect();
    let _storage: Vec<Proc> = (1..=3)
        .map(|i| {
            let args = [
                "storage".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--meta".into(),
                meta.clone(),
                "--data-dir".into(),
                dir.join(format!("storage-{i}")).display().to_string(),
                "--heartbeat-ms".into(),
                "500".into(),
            ];
            spawn(&format!("storage-{i}"), &args, dir)
        })
        .collect();

    let leader = wait_ready(&meta, 3);

    // A multi-chunk file: 5 whole 1 MiB chunks and a tail.
    let original = path(dir, "original.bin");
    std::fs::write(&original, test_bytes(5 * 1024 * 1024 + 12_345, 7)).unwrap();
    let put = dfs_ok(&meta, &["put", "--chunk-size", "1MiB", original.to_str().unwrap(), "/test/original.bin"]);
    assert!(put.contains("6 chunks"), "unexpected put output: {put}");
    let first = path(dir, "first.bin");
    dfs_ok(&meta, &["get", "/test/original.bin", first.to_str().unwrap()]);
    assert_same_file(&original, &first);

    // SIGKILL the leader; the client must find the new one.
    let killed = &mut metas[leader as usize - 1];
    eprintln!("SIGKILL {} (the leader)", killed.name);
    killed.sigkill();
    let after = path(dir, "after-failover.bin");
    dfs_ok(&meta, &["get", "/test/original.bin", after.to_str().unwrap()]);
    assert_same_file(&original, &after);

    // Writes work on the new leader too.
    let second = path(dir, "second.bin");
    std::fs::write(&second, test_bytes(3 * 1024 * 1024 + 1, 9)).unwrap();
    dfs_ok(&meta, &["put", "--chunk-size", "1MiB", second.to_str().unwrap(), "/test/second.bin"]);
    let second_back = path(dir, "second-back.bin");
    dfs_ok(&meta, &["get", "/test/second.bin", second_back.to_str().unwrap()]);
    assert_same_file(&second, &second_back);
    let listing = dfs_ok(&meta, &["ls", "/test"]);
    assert!(listing.contains("Found 2 items") && listing.contains("/test/original.bin") && listing.contains("/test/second.bin"), "{listing}");
    let new_leader = wait_ready(&meta, 3);
    assert_ne!(new_leader, leader, "the killed node is still reported as leader");
}

#[test]
fn bad_input_gets_a_clear_error_and_an_exit_code() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    // Nothing listens on this port: client commands fail with a clear message, not a panic.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["put".into(), dir.join("absent").display().to_string(), "/x".into()], "No such file"),
        (vec!["put".into(), dir.display().to_string(), "/x".into()], "not a regular file"),
        (vec!["meta".into(), "--id".into(), "4".into(), "--listen".into(), "127.0.0.1:0".into(), "--data-dir".into(), dir.display().to_string(), "--peers".into(), "1=127.0.0.1:1".into()], "not among"),
        (vec!["meta".into(), "--id".into(), "1".into(), "--listen".into(), "127.0.0.1:0".into(), "--data-dir".into(), dir.display().to_string(), "--peers".into(), "1=nonsense".into()], "HOST:PORT"),
        (vec!["put".into(), "--chunk-size".into(), "1KiB".into(), file_in(dir), "/x".into()], "chunk size"),
        (vec!["get".into(), "/x".into(), file_in(dir)], "already exists"),
    ];
    for (args, expected) in cases {
        let mut command = Command::new(DFS);
        command.args(&args).env("DFS_META", &nowhere);
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "dfs {args:?}: {stderr}");
        assert!(stderr.starts_with("dfs: ") && stderr.contains(expected), "dfs {args:?}: stderr {stderr:?} lacks {expected:?}");
        assert!(!stderr.contains("panicked"), "dfs {args:?} panicked: {stderr}");
    }
    // Usage errors are clap's: exit code 2.
    let out = Command::new(DFS).args(["put"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn file_in(dir: &Path) -> String {
    let f = dir.join("exists.bin");
    std::fs::write(&f, b"x").unwrap();
    f.display().to_string()
}

/// `dfs cluster up` in the foreground, the client commands against it with no --meta flag
/// pointing anywhere else, then SIGINT (Ctrl-C) stops everything.
#[test]
fn cluster_up_serves_put_ls_get_rm_and_stops_on_ctrl_c() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    // cluster up puts metadata on base.. and storage on base+100..
    let base = free_ports(103);
    let mut up = Command::new(DFS)
        .args(["cluster", "up", "--base-port", &base.to_string(), "--data-dir", &dir.join("data").display().to_string(), "--heartbeat-ms", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = Proc { name: "cluster up".into(), child: up };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| panic!("cluster up never became ready: {seen:?}"));
        if line.contains("ready") {
            break;
        }
        seen.push(line);
    }
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);

    let original = path(dir, "big.bin");
    std::fs::write(&original, test_bytes(50 * 1024 * 1024, 3)).unwrap();
    dfs_ok(&meta, &["put", original.to_str().unwrap(), "/big.bin"]);
    let listing = dfs_ok(&meta, &["ls"]);
    assert!(listing.contains("52428800") && listing.contains("/big.bin"), "{listing}");
    let back = path(dir, "back.bin");
    dfs_ok(&meta, &["get", "/big.bin", back.to_str().unwrap()]);
    assert_same_file(&original, &back);
    dfs_ok(&meta, &["rm", "/big.bin"]);
    assert!(dfs_ok(&meta, &["ls"]).contains("Found 0 items"));
    let missing = dfs(&meta, &["get", "/big.bin", path(dir, "gone.bin").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));

    // Directories: mkdir -p, put into a directory, ls (direct entries), ls -R.
    dfs_ok(&meta, &["mkdir", "-p", "/proj/data/raw"]);
    dfs_ok(&meta, &["mkdir", "-p", "/proj/data"]);
    let again = dfs(&meta, &["mkdir", "/proj/data"]);
    assert_eq!(again.status.code(), Some(1), "mkdir of an existing directory without -p");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let small = path(dir, "small.bin");
    std::fs::write(&small, test_bytes(200_000, 5)).unwrap();
    dfs_ok(&meta, &["put", "--chunk-size", "64KiB", small.to_str().unwrap(), "/proj/data/"]);
    dfs_ok(&meta, &["put", small.to_str().unwrap(), "/proj/top.bin"]);
    let ls = dfs_ok(&meta, &["ls", "/proj"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    assert_eq!(lines[0], "Found 2 items", "{ls}");
    assert!(lines[1].starts_with('d') && lines[1].ends_with(" /proj/data"), "{ls}");
    assert!(lines[2].starts_with('-') && lines[2].ends_with(" /proj/top.bin") && lines[2].contains("200000"), "{ls}");
    let tree = dfs_ok(&meta, &["ls", "-R", "/proj"]);
    let paths: Vec<&str> = tree.lines().skip(1).filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(paths, ["/proj/data", "/proj/data/raw", "/proj/data/small.bin", "/proj/top.bin"], "{tree}");
    assert!(tree.starts_with("Found 4 items"), "{tree}");
    let long = dfs_ok(&meta, &["ls", "-l", "/proj/top.bin"]);
    assert!(long.contains("Found 1 items") && long.contains("200000") && long.contains(" 3 "), "{long}");

    // mv of a directory, then get from the new path.
    dfs_ok(&meta, &["mv", "/proj/data", "/proj/moved"]);
    let moved = path(dir, "moved.bin");
    dfs_ok(&meta, &["get", "/proj/moved/small.bin", moved.to_str().unwrap()]);
    assert_same_file(&small, &moved);
    let old = dfs(&meta, &["get", "/proj/data/small.bin", path(dir, "old.bin").to_str().unwrap()]);
    assert_eq!(old.status.code(), Some(1));

    // rm of a non-empty directory needs -r.
    let refused = dfs(&meta, &["rm", "/proj"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("dfs: ") && stderr.contains("not empty") && stderr.lines().count() == 1, "{stderr}");
    assert!(dfs_ok(&meta, &["ls", "-R", "/proj"]).starts_with("Found 4 items"));
    let removed = dfs_ok(&meta, &["rm", "-r", "/proj"]);
    assert!(removed.contains("Deleted /proj (2 files, 3 directories)"), "{removed}");
    assert!(dfs_ok(&meta, &["ls", "-R"]).contains("Found 0 items"));

    // Ctrl-C: the launcher stops every node and exits successfully.
    let mut up = up;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for(Duration::from_secs(30), "cluster up to exit", || up.child.try_wait().unwrap());
    assert!(status.success(), "cluster up exited with {status}");
    let ports_free = wait_for(Duration::from_secs(10), "the nodes' ports to be released", || {
        (0..3).chain(100..103).all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok()).then_some(())
    });
    let () = ports_free;
}
