//! `scripts/run-cluster.sh` and chaos on real containers: the image the script builds
//! (`FROM scratch`), a private Docker network per test, real `docker kill`, real partitions
//! (`docker network disconnect`), restarts and a rolling restart, under a client's load.
//! Skipped, saying so, where there is no Docker engine (CI has one: it must not skip there).
//! Each test removes its containers, network and volumes, also when it fails.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{test_bytes, wait_for};

const IMAGE: &str = "dfs:test";

/// One cluster at a time: two would fight over two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-cluster.sh")
}

fn docker_available() -> bool {
    let ok = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        && (Command::new("docker-compose").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
            || Command::new("docker").args(["compose", "version"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success()));
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must run the container tests: no Docker engine or docker-compose here");
        eprintln!("SKIPPED: no Docker engine (docker info failed) or no docker-compose");
    }
    ok
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A cluster of the script's, in its own directory (so its own compose project, network and
/// volumes), with no host ports; torn down with its volumes when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("dfsdocker").tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        Cluster { dir, file }
    }

    fn project(&self) -> String {
        self.dir.path().file_name().unwrap().to_string_lossy().to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect()
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("DFS_COMPOSE_FILE", &self.file)
            .env("DFS_HOST_PORTS", "0")
            .env("DFS_IMAGE", IMAGE)
            // The binary `cargo test` built: what every real-process test runs, and CI is
            // spared a release build (the script's own build is `cargo build --release`).
            .env("DFS_BINARY", env!("CARGO_BIN_EXE_dfs"))
            .stdin(Stdio::null())
            .output()
            .expect("run run-cluster.sh")
    }

    fn script_ok(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(out.status.success(), "run-cluster.sh {args:?}: {}\n{}", out.status, text(&out));
        text(&out)
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose").arg("-f").arg(&self.file).args(args).stdin(Stdio::null()).output().expect("run docker-compose")
    }

    /// `dfs ARGS` in the client container, `input` on its stdin.
    fn dfs(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = Command::new("docker-compose")
            .arg("-f")
            .arg(&self.file)
            .args(["exec", "-T", "client", "dfs"])
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-compose exec");
        if let Some(bytes) = input {
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(bytes);
        }
        child.wait_with_output().unwrap()
    }

    fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container for {service}: {}", text(&out));
        id
    }

    fn docker(&self, args: &[&str]) {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    }

    /// `dfs status --json` from the client, once it answers.
    fn status(&self) -> Option<serde_json::Value> {
        let out = self.dfs(&["status", "--json", "--timeout", "5s"], None);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    fn wait_alive(&self, storage: usize, limit: Duration) {
        wait_for(limit, &format!("{storage} storage nodes alive"), || {
            let s = self.status()?;
            let alive = s["storage_nodes"].as_array()?.iter().filter(|n| n["state"] == "alive").count();
            (alive == storage).then_some(())
        });
    }

    fn volumes(&self) -> Vec<String> {
        let out =
            Command::new("docker").args(["volume", "ls", "-q", "--filter", &format!("label=com.docker.compose.project={}", self.project())]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.file.exists() {
            let logs = Command::new("docker-compose").arg("-f").arg(&self.file).args(["logs", "--no-color", "--tail", "200"]).output();
            let kept = self.dir.path().join("cluster.log");
            let _ = std::fs::write(&kept, logs.map(|l| l.stdout).unwrap_or_default());
            eprintln!("container logs (last 200 lines of each) in {}", kept.display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
        if self.file.exists() {
            let _ = Command::new("docker-compose").arg("-f").arg(&self.file).args(["down", "-v", "--remove-orphans", "-t", "2"]).output();
        }
    }
}

#[test]
fn the_script_refuses_bad_options_before_building_anything() {
    let c = Cluster::new();
    for bad in [&["-m", "x", "up"][..], &["-s", "0", "up"], &["-z", "up"], &["-m"], &["-m", "3"]] {
        let out = c.script(bad);
        assert_eq!(out.status.code(), Some(2), "run-cluster.sh {bad:?}: {}", text(&out));
        assert!(text(&out).contains("usage: "), "no usage line for {bad:?}: {}", text(&out));
        assert!(!c.file.exists(), "{bad:?} wrote a compose file");
    }
}

#[test]
fn the_script_brings_up_a_cluster_that_keeps_its_files_across_down_and_up() {
    if !docker_available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::new();
    let started = Instant::now();
    c.script_ok(&["-m", "3", "-s", "5", "-c", "up", "-d", "--build"]);
    let up = started.elapsed();
    c.wait_alive(5, Duration::from_secs(120));
    let bytes = test_bytes(5 << 20, 3);
    let put = c.dfs(&["put", "-", "/x"], Some(&bytes));
    assert!(put.status.success(), "put: {}", text(&put));
    let cat = c.dfs(&["cat", "/x"], None);
    assert!(cat.status.success() && cat.stdout == bytes, "cat /x: {}", String::from_utf8_lossy(&cat.stderr));
    // TLS by default: the same client in plaintext is not answered.
    let plain = c.dfs(&["ls", "/", "--insecure", "--timeout", "5s"], None);
    assert!(!plain.status.success() && text(&plain).contains("did not answer in plaintext"), "ls --insecure: {}", text(&plain));

    c.script_ok(&["down"]);
    assert!(!c.volumes().is_empty(), "down removed the volumes");
    c.script_ok(&["up", "-d"]);
    c.wait_alive(5, Duration::from_secs(120));
    let cat = c.dfs(&["cat", "/x"], None);
    assert!(cat.status.success() && cat.stdout == bytes, "after down and up, cat /x: {}", String::from_utf8_lossy(&cat.stderr));

    c.script_ok(&["down", "-v"]);
    assert_eq!(c.volumes(), Vec::<String>::new(), "down -v left volumes");
    eprintln!("run-cluster.sh -m 3 -s 5 -c up -d --build: {up:?} (with the test's binary: no release build)");
}

/// What the client knows of a path: the bytes of its last acknowledged write, `None` once an
/// acknowledged delete removed it; paths whose last operation failed are left out (either
/// outcome is allowed).
type Acked = BTreeMap<String, Option<Vec<u8>>>;

#[test]
fn containers_survive_kills_partitions_restarts_and_a_rolling_restart() {
    if !docker_available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = Arc::new(Cluster::new());
    let started = Instant::now();
    c.script_ok(&["-m", "3", "-s", "4", "-c", "up", "-d", "--build"]);
    c.wait_alive(4, Duration::from_secs(120));
    let network = format!("{}_default", c.project());

    // The workload: uploads, reads, overwrites and deletes, all along the faults; bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked = Acked::new();
            let mut uncertain = BTreeMap::<String, usize>::new();
            let (mut ops, mut failed) = (0u64, 0u64);
            for i in 0..5_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let path = format!("/w/{}", i % 40);
                ops += 1;
                let ok = match i % 10 {
                    // Deletes.
                    7 => {
                        let out = c.dfs(&["rm", "--skip-trash", &path], None);
                        let missing = String::from_utf8_lossy(&out.stderr).contains("no such");
                        if out.status.success() || (missing && acked.get(&path).is_some_and(Option::is_none)) {
                            acked.insert(path.clone(), None);
                            true
                        } else {
                            missing && !acked.contains_key(&path)
                        }
                    }
                    // Reads of what the client knows.
                    3 | 5 => match acked.get(&path) {
                        Some(Some(bytes)) => {
                            let out = c.dfs(&["cat", &path], None);
                            if out.status.success() {
                                assert!(out.stdout == *bytes, "{path} read back other bytes during the faults");
                            }
                            out.status.success()
                        }
                        _ => true,
                    },
                    // Writes and overwrites: sizes from one byte to three chunks.
                    _ => {
                        let bytes = test_bytes(1 + (i as usize * 7919) % (9 << 20), i);
                        let out = c.dfs(&["put", "-f", "-", &path], Some(&bytes));
                        if out.status.success() {
                            acked.insert(path.clone(), Some(bytes));
                        } else {
                            acked.remove(&path);
                        }
                        out.status.success()
                    }
                };
                if !ok {
                    failed += 1;
                    *uncertain.entry(path).or_default() += 1;
                }
            }
            (acked, ops, failed)
        })
    };
    let mut injected = Vec::new();

    // 1. The metadata leader dies (SIGKILL) and comes back.
    let leader = wait_for(Duration::from_secs(60), "a leader", || c.status()?["leader"]["id"].as_u64());
    let victim = c.container(&format!("meta{leader}"));
    c.docker(&["kill", &victim]);
    let next = wait_for(Duration::from_secs(60), "a new leader", || c.status()?["leader"]["id"].as_u64().filter(|l| *l != leader));
    c.docker(&["start", &victim]);
    injected.push(format!("docker kill meta{leader} (the leader; meta{next} took over), then docker start"));

    // 2. A storage node dies and stays down past the dead timeout (its chunks are repaired).
    let storage2 = c.container("storage2");
    c.docker(&["kill", &storage2]);
    injected.push("docker kill storage2, down until the leader declared it dead".to_string());

    // 3. A storage node is cut off by a real partition until the leader suspects it.
    let storage3 = c.container("storage3");
    c.docker(&["network", "disconnect", &network, &storage3]);
    wait_for(Duration::from_secs(60), "the leader to suspect storage3", || {
        let s = c.status()?;
        s["storage_nodes"].as_array()?.iter().any(|n| n["addr"].as_str().is_some_and(|a| a.starts_with("storage3:")) && n["state"] != "alive").then_some(())
    });
    c.docker(&["network", "connect", "--alias", "storage3", &network, &storage3]);
    injected.push("docker network disconnect storage3 until suspect, then reconnect".to_string());

    // 4. A metadata follower is cut off, the cluster commits without it, then it returns.
    let leader = wait_for(Duration::from_secs(60), "a leader", || c.status()?["leader"]["id"].as_u64());
    let follower = (1..=3).find(|m| *m != leader).unwrap();
    let cut = c.container(&format!("meta{follower}"));
    c.docker(&["network", "disconnect", &network, &cut]);
    let commit = c.status().and_then(|s| s["commit_index"].as_u64()).unwrap_or(0);
    wait_for(Duration::from_secs(60), "commits without the cut-off follower", || (c.status()?["commit_index"].as_u64()? > commit + 5).then_some(()));
    c.docker(&["network", "connect", "--alias", &format!("meta{follower}"), &network, &cut]);
    injected.push(format!("docker network disconnect meta{follower} (a follower) while the cluster committed, then reconnect"));

    // 2, continued: storage2 declared dead, then restarted.
    wait_for(Duration::from_secs(120), "the leader to declare storage2 dead", || {
        let s = c.status()?;
        s["storage_nodes"].as_array()?.iter().any(|n| n["addr"].as_str().is_some_and(|a| a.starts_with("storage2:")) && n["state"] == "dead").then_some(())
    });
    c.docker(&["start", &storage2]);

    // 5. A rolling restart of every node, under the same load.
    c.script_ok(&["rolling-restart"]);
    injected.push("rolling-restart of all 7 nodes (SIGTERM, wait healthy, next)".to_string());

    stop.store(true, Ordering::SeqCst);
    let (acked, ops, failed) = workload.join().unwrap();
    assert!(acked.values().filter(|v| v.is_some()).count() >= 5, "the workload acknowledged too little: {acked:?}");

    // Healthy within the bound: every chunk whole, nothing missing.
    let healed = Instant::now();
    wait_for(Duration::from_secs(180), "fsck healthy", || c.dfs(&["fsck"], None).status.success().then_some(()));
    let heal_time = healed.elapsed();
    for (path, state) in &acked {
        match state {
            Some(bytes) => {
                let out = c.dfs(&["cat", path], None);
                assert!(out.status.success(), "acknowledged {path} cannot be read: {}", text(&out));
                assert!(out.stdout == *bytes, "acknowledged {path} reads back other bytes");
            }
            None => {
                let out = c.dfs(&["stat", path], None);
                assert!(!out.status.success(), "deleted {path} came back");
            }
        }
    }
    eprintln!(
        "container chaos: {:?} in all; {ops} client operations, {failed} failed under the faults, {} paths checked; fsck healthy {heal_time:?} after the last fault; injected: {injected:#?}",
        started.elapsed(),
        acked.len()
    );
}
