//! Real processes on 127.0.0.1: metadata that never forgets. Uploads acknowledged while the
//! metadata leader is SIGKILLed, then while all three metadata nodes are; a follower that
//! missed more than the log keeps catches up by snapshot; nodes join and leave at runtime;
//! `dfs cluster up` restarted on its data dir has every file.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// A metadata node's command line, kept so it can be restarted after a SIGKILL.
struct MetaNode {
    id: u64,
    addr: String,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl MetaNode {
    fn new(id: u64, dir: &Path, peers: Option<&str>, extra: &[&str]) -> MetaNode {
        MetaNode::at(id, free_port(), dir, peers, extra)
    }

    /// Node `id` listening on 127.0.0.1:`port`.
    fn at(id: u64, port: u16, dir: &Path, peers: Option<&str>, extra: &[&str]) -> MetaNode {
        let addr = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = ["meta", "--id", &id.to_string(), "--listen", &addr, "--data-dir", &dir.join(format!("meta-{id}")).display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(peers) = peers {
            args.extend(["--peers".to_string(), peers.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        MetaNode { id, addr, args, proc: None }
    }

    fn start(&mut self, log_dir: &Path) {
        assert!(self.proc.is_none(), "meta-{} already runs", self.id);
        // Each start logs to a file of its own, so a restart does not overwrite the last log.
        let mut n = 0;
        while log_dir.join(format!("meta-{}.{n}.log", self.id)).exists() {
            n += 1;
        }
        self.proc = Some(spawn(&format!("meta-{}.{n}", self.id), &self.args, log_dir));
    }

    fn sigkill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            eprintln!("SIGKILL meta-{}", self.id);
            p.sigkill();
        }
    }
}

/// Three metadata nodes (formed from --peers) and three storage nodes.
fn start_cluster(dir: &Path, meta_extra: &[&str]) -> (Vec<MetaNode>, Vec<Proc>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let peers = peers.join(",");
    let mut metas: Vec<MetaNode> = (1..=3).map(|id| MetaNode::at(id, ports[id as usize - 1], dir, Some(&peers), meta_extra)).collect();
    for m in &mut metas {
        m.start(dir);
    }
    let meta = metas.iter().map(|m| m.addr.clone()).collect::<Vec<_>>().join(",");
    let storage = (1..=3)
        .map(|i| {
            let args: Vec<String> = [
                "storage",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--meta",
                &meta,
                "--data-dir",
                &dir.join(format!("storage-{i}")).display().to_string(),
                "--heartbeat-ms",
                "500",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            spawn(&format!("storage-{i}"), &args, dir)
        })
        .collect();
    (metas, storage, meta)
}

/// The local copy of every upload attempted, and whether `dfs put` reported it done.
#[derive(Default)]
struct Oracle {
    files: BTreeMap<String, (PathBuf, bool)>,
}

impl Oracle {
    /// Every acknowledged upload downloads byte-identical; a failed one is absent or intact.
    fn check(&self, meta: &str, dir: &Path, when: &str) {
        let mut acked = 0;
        for (i, (remote, (local, ok))) in self.files.iter().enumerate() {
            let out = dir.join(format!("check-{}-{i}", when.replace(' ', "-")));
            let got = dfs(meta, &["get", remote, out.to_str().unwrap()]);
            if got.status.success() {
                assert_same_file(local, &out);
                acked += usize::from(*ok);
            } else {
                let stderr = String::from_utf8_lossy(&got.stderr);
                assert!(!ok, "{remote} was acknowledged, but {when} `dfs get` fails: {stderr}");
                assert!(stderr.contains("no such file"), "{remote} (a failed upload) {when}: {stderr}");
            }
        }
        eprintln!("{when}: {acked} acknowledged uploads intact");
    }
}

/// `dfs admin meta status`, parsed: (last log index, purged index, member id → matched index).
fn meta_status(meta: &str) -> Option<(u64, u64, BTreeMap<u64, Option<u64>>)> {
    let out = dfs(meta, &["admin", "meta", "status"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.contains(name))?;
        line.split(name).nth(1)?.split_whitespace().next()?.parse().ok()
    };
    let members = text
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let id = cols.first()?.parse().ok()?;
            Some((id, cols.get(3).and_then(|m| m.parse().ok())))
        })
        .collect();
    Some((field("last log index: ")?, field("purged index: ")?, members))
}

#[test]
fn acknowledged_uploads_survive_sigkill_of_the_leader_and_of_every_metadata_node() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let (mut metas, _storage, meta) = start_cluster(dir, &["--snapshot-every", "10"]);
    let leader = wait_ready(&meta, 3);

    // A stream of uploads in the background: each reports back as it ends.
    const UPLOADS: usize = 24;
    let (done_tx, done_rx) = mpsc::channel::<(String, PathBuf, bool)>();
    let uploader = {
        let (meta, dir) = (meta.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            for i in 0..UPLOADS {
                let local = dir.join(format!("up-{i}.bin"));
                std::fs::write(&local, test_bytes(1000 + i * 20_000, i as u64)).unwrap();
                let remote = format!("/stream/file-{i}");
                let out = dfs(&meta, &["put", "--chunk-size", "64KiB", local.to_str().unwrap(), &remote]);
                done_tx.send((remote, local, out.status.success())).unwrap();
            }
        })
    };
    let mut oracle = Oracle::default();
    let record = |oracle: &mut Oracle, (remote, local, ok): (String, PathBuf, bool)| {
        oracle.files.insert(remote, (local, ok));
    };
    // SIGKILL the leader once a few uploads are through, and bring it back later.
    while oracle.files.len() < 4 {
        record(&mut oracle, done_rx.recv_timeout(Duration::from_secs(60)).expect("uploads progress"));
    }
    metas[leader as usize - 1].sigkill();
    while oracle.files.len() < 12 {
        record(&mut oracle, done_rx.recv_timeout(Duration::from_secs(60)).expect("uploads progress after the leader died"));
    }
    metas[leader as usize - 1].start(dir);
    for result in done_rx.iter() {
        record(&mut oracle, result);
    }
    uploader.join().unwrap();
    let acked = oracle.files.values().filter(|(_, ok)| *ok).count();
    assert!(acked >= UPLOADS / 2, "only {acked} of {UPLOADS} uploads succeeded across one leader failover");
    oracle.check(&meta, dir, "after the leader was killed");

    // Power cut for the whole metadata cluster: SIGKILL all three at once, start them again.
    for m in &mut metas {
        m.sigkill();
    }
    for m in &mut metas {
        m.start(dir);
    }
    wait_ready(&meta, 3);
    oracle.check(&meta, dir, "after every metadata node was killed");
    let local = dir.join("after-restart.bin");
    std::fs::write(&local, test_bytes(300_000, 99)).unwrap();
    dfs_ok(&meta, &["put", "--chunk-size", "64KiB", local.to_str().unwrap(), "/after-restart"]);
    oracle.files.insert("/after-restart".into(), (local, true));

    // A follower stopped while the log is purged past it catches up by snapshot.
    let leader = wait_ready(&meta, 3);
    let follower = metas.iter().map(|m| m.id).find(|&id| id != leader).unwrap();
    metas[follower as usize - 1].sigkill();
    let (stopped_at, _, _) = wait_for(Duration::from_secs(30), "metadata status", || meta_status(&meta));
    for i in 0..12 {
        let local = dir.join(format!("late-{i}.bin"));
        std::fs::write(&local, test_bytes(5000 + i, 1000 + i as u64)).unwrap();
        let remote = format!("/late/file-{i}");
        dfs_ok(&meta, &["put", "--chunk-size", "64KiB", local.to_str().unwrap(), &remote]);
        oracle.files.insert(remote, (local, true));
    }
    let (_, purged, _) =
        wait_for(Duration::from_secs(30), "the log purged past the stopped follower", || meta_status(&meta).filter(|(_, purged, _)| *purged > stopped_at));
    eprintln!("follower meta-{follower} stopped at log index {stopped_at}; the leader purged up to {purged}");
    metas[follower as usize - 1].start(dir);
    wait_for(Duration::from_secs(60), "the restarted follower to catch up", || {
        let (last, _, members) = meta_status(&meta)?;
        (members.get(&follower).copied().flatten() == Some(last)).then_some(())
    });
    let installed = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("meta-{follower}.")))
        .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default().contains("installed snapshot from the leader"));
    assert!(installed, "meta-{follower} caught up without installing a snapshot");
    oracle.check(&meta, dir, "after the follower caught up by snapshot");
}

#[test]
fn metadata_nodes_join_and_leave_at_runtime() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let (_metas, _storage, meta) = start_cluster(dir, &[]);
    wait_ready(&meta, 3);
    let local = dir.join("f.bin");
    std::fs::write(&local, test_bytes(100_000, 5)).unwrap();
    dfs_ok(&meta, &["put", local.to_str().unwrap(), "/before-join"]);

    // A fourth node, started with no --peers, waits until it is added.
    let mut fourth = MetaNode::new(4, dir, None, &[]);
    fourth.start(dir);
    let added = dfs_ok(&meta, &["admin", "meta", "add", &format!("4={}", fourth.addr)]);
    assert!(added.contains("added metadata node 4"), "{added}");
    let status = dfs_ok(&meta, &["admin", "meta", "status"]);
    assert_eq!(status.lines().filter(|l| l.contains(" voter ")).count(), 4, "{status}");
    // It serves clients (redirecting them to the leader) and holds the namespace.
    let back = dir.join("back.bin");
    dfs_ok(&fourth.addr, &["get", "/before-join", back.to_str().unwrap()]);
    assert_same_file(&local, &back);

    // Restarted on its data dir with no flags about membership, it rejoins as a voter.
    fourth.sigkill();
    fourth.start(dir);
    wait_for(Duration::from_secs(60), "the fourth node to rejoin", || {
        let (last, _, members) = meta_status(&meta)?;
        (members.get(&4).copied().flatten() == Some(last)).then_some(())
    });

    let removed = dfs_ok(&meta, &["admin", "meta", "remove", "4"]);
    assert!(removed.contains("removed metadata node 4"), "{removed}");
    let status = dfs_ok(&meta, &["admin", "meta", "status"]);
    assert_eq!(status.lines().filter(|l| l.contains(" voter ")).count(), 3, "{status}");
    // Bad requests: a clear error; exit code 1 for what the cluster refuses, 2 for a malformed
    // argument (docs/CLI.md).
    let again = dfs(&meta, &["admin", "meta", "remove", "4"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not a member"));
    let bad = dfs(&meta, &["admin", "meta", "add", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ID=HOST:PORT"));
}

/// `dfs cluster up` on a data dir, files put, Ctrl-C; `dfs cluster up` again on the same dir
/// has every file, and new uploads work.
#[test]
fn cluster_up_restarted_on_its_data_dir_keeps_every_file() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for round in 0..2 {
        let mut up = cluster_up(base, &data);
        for (remote, local) in &files {
            let out = dir.join(format!("back-{round}.bin"));
            dfs_ok(&meta, &["get", "--force", remote, out.to_str().unwrap()]);
            assert_same_file(local, &out);
        }
        let local = dir.join(format!("round-{round}.bin"));
        std::fs::write(&local, test_bytes(3 * 1024 * 1024 + round, round as u64)).unwrap();
        let remote = format!("/round-{round}.bin");
        dfs_ok(&meta, &["put", local.to_str().unwrap(), &remote]);
        files.push((remote, local));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(up.child.id() as libc::pid_t, libc::SIGINT) };
        let status = wait_for(Duration::from_secs(30), "cluster up to exit", || up.child.try_wait().unwrap());
        assert!(status.success(), "cluster up exited with {status}");
        wait_for(Duration::from_secs(10), "the nodes' ports to be released", || {
            (0..3).chain(100..103).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()).then_some(())
        });
    }
}

/// A storage node remembers the cluster it joined; another metadata cluster refuses it, with a
/// clear error on both sides, so two clusters' chunks never mix.
#[test]
fn a_storage_node_of_another_cluster_is_refused() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let (_metas, mut storage, meta) = start_cluster(dir, &[]);
    wait_ready(&meta, 3);
    let local = dir.join("f.bin");
    std::fs::write(&local, test_bytes(100_000, 5)).unwrap();
    dfs_ok(&meta, &["put", local.to_str().unwrap(), "/in-cluster-a"]);
    let cluster_a = std::fs::read_to_string(dir.join("storage-1").join("cluster_id")).expect("storage-1 remembers its cluster");

    // A second cluster of one metadata node.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let port = free_port();
    let mut b = MetaNode::at(1, port, &other, Some(&format!("1=127.0.0.1:{port}")), &[]);
    b.start(&other);
    wait_for(Duration::from_secs(30), "the second cluster's leader", || dfs(&b.addr, &["status"]).status.success().then_some(()));

    // storage-1 of cluster A, restarted against cluster B.
    storage[0].sigkill();
    let args: Vec<String> = [
        "storage",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--meta",
        &b.addr,
        "--data-dir",
        &dir.join("storage-1").display().to_string(),
        "--heartbeat-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _stray = spawn("storage-1-stray", &args, dir);
    let log = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    wait_for(Duration::from_secs(30), "both sides to report the refusal", || {
        let refused_here = log(dir.join("storage-1-stray.log")).contains("refuses this node");
        let refused_there = log(other.join("meta-1.0.log")).contains("storage node of another cluster refused");
        (refused_here && refused_there).then_some(())
    });
    let status = dfs_ok(&b.addr, &["status"]);
    assert!(status.contains("storage nodes: 0"), "cluster B admitted cluster A's node: {status}");
    assert_eq!(std::fs::read_to_string(dir.join("storage-1").join("cluster_id")).unwrap(), cluster_a, "the node forgot its cluster");
}
