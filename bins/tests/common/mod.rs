//! What the real-process tests share: child processes killed on drop, ports, running `dfs`
//! commands, waiting on conditions with deadlines, test data.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DFS: &str = env!("CARGO_BIN_EXE_dfs");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn sigkill(&mut self) {
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
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn new() -> Self {
        TestDir(Some(tempfile::tempdir().unwrap()))
    }
    pub fn path(&self) -> &Path {
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
pub fn free_ports(count: u16) -> u16 {
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

/// Ports `cluster up` takes from its base: metadata, storage (+100), and their HTTP ports
/// (+200, +300), for up to 10 storage nodes.
pub const CLUSTER_PORTS: u16 = 310;

pub fn free_port() -> u16 {
    free_ports(1)
}

pub fn spawn(name: &str, args: &[String], log_dir: &Path) -> Proc {
    spawn_bin(Path::new(DFS), name, args, log_dir, &[])
}

/// `spawn` of another build of the binary (`bin`), with `env` added; its log is appended to.
pub fn spawn_bin(bin: &Path, name: &str, args: &[String], log_dir: &Path, env: &[(&str, &str)]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(format!("{name}.log"))).unwrap();
    // Nodes started by hand in tests run plaintext (TLS has its own tests, `real_tls`); a node
    // with neither TLS flags nor --insecure refuses to start.
    let child = Command::new(bin)
        .env("DFS_INSECURE", "1")
        .envs(env.iter().copied())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc { name: name.into(), child }
}

pub fn dfs(meta: &str, args: &[&str]) -> Output {
    Command::new(DFS).args(args).env("DFS_META", meta).output().expect("run dfs")
}

pub fn dfs_ok(meta: &str, args: &[&str]) -> String {
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
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
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
pub fn wait_ready(meta: &str, storage: usize) -> u64 {
    wait_for(Duration::from_secs(60), "a leader and live storage nodes", || {
        let out = dfs(meta, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let leader = text.lines().find_map(|l| l.strip_prefix("leader: "))?.split_whitespace().next()?.parse().ok()?;
        let alive = text.lines().filter(|l| l.contains(" alive ")).count();
        (out.status.success() && alive >= storage).then_some(leader)
    })
}

/// Deterministic, incompressible-looking bytes (xorshift), so no test depends on an RNG crate.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
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

pub fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} ({} bytes) differs from {} ({} bytes)", a.display(), x.len(), b.display(), y.len());
}

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `dfs cluster up` on ports from `base` (metadata) and `base + 100` (storage), once it says
/// it is ready.
pub fn cluster_up(base: u16, data: &Path) -> Proc {
    cluster_up_with(base, data, &[], Stdio::null())
}

/// `cluster_up` with more flags, its stderr going to `stderr`. Plaintext (`--insecure`), so that
/// clients need no credentials; `cluster_up_tls` runs the default, TLS.
pub fn cluster_up_with(base: u16, data: &Path, extra: &[&str], stderr: impl Into<Stdio>) -> Proc {
    let mut args = vec!["--insecure"];
    args.extend_from_slice(extra);
    cluster_up_env(base, data, &args, stderr, &[])
}

/// `dfs cluster up` as a user runs it (TLS), writing the client's credentials into `config`
/// (`DFS_CONFIG_DIR`).
pub fn cluster_up_tls(base: u16, data: &Path, config: &Path) -> Proc {
    cluster_up_tls_with(base, data, config, &[])
}

/// `cluster_up_tls` with more flags for `cluster up` (`--storage 4`).
pub fn cluster_up_tls_with(base: u16, data: &Path, config: &Path, extra: &[&str]) -> Proc {
    cluster_up_env(base, data, extra, Stdio::null(), &[("DFS_CONFIG_DIR", config.to_str().unwrap())])
}

fn cluster_up_env(base: u16, data: &Path, extra: &[&str], stderr: impl Into<Stdio>, env: &[(&str, &str)]) -> Proc {
    let mut up = Command::new(DFS)
        .args(["cluster", "up", "--base-port", &base.to_string(), "--data-dir", &data.display().to_string(), "--heartbeat-ms", "500"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| panic!("cluster up never became ready: {seen:?}"));
        if line.contains("ready") {
            break;
        }
        seen.push(line);
    }
    Proc { name: "cluster up".into(), child: up }
}

/// `dfs storage` number `i` of a test cluster: on a free port, its data in `dir/storage-i`,
/// heartbeats every 500 ms, metadata at `meta`, and `extra` flags.
pub fn spawn_storage(dir: &Path, i: usize, meta: &str, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = [
        "storage".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--meta".into(),
        meta.to_string(),
        "--data-dir".into(),
        dir.join(format!("storage-{i}")).display().to_string(),
        "--heartbeat-ms".into(),
        "500".into(),
    ]
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn(&format!("storage-{i}"), &args, dir)
}

/// A finished command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `out` failed with exit 1 and one line on stderr, `dfs: ...` containing `expected`, and no
/// panic: how the client refuses.
pub fn refused(out: Output, expected: &str, what: &str) {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(err.starts_with("dfs: ") && err.contains(expected), "{what}: stderr {err:?} lacks {expected:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err:?}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}
