//! Real processes on 127.0.0.1: the `dfs` binary as metadata and storage nodes, driven by the
//! `dfs` client commands, with the metadata leader killed by SIGKILL.

#![cfg(not(madsim))]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::*;

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
    let _storage: Vec<Proc> = (1..=3).map(|i| spawn_storage(dir, i, &meta, &[])).collect();

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
    // Caller mistakes found before the cluster is asked exit 2 (docs/CLI.md), other failures 1.
    let cases: Vec<(Vec<String>, &str, i32)> = vec![
        (vec!["put".into(), dir.join("absent").display().to_string(), "/x".into()], "No such file", 2),
        (vec!["put".into(), dir.display().to_string(), "/x".into()], "is a directory (put -r uploads a tree)", 2),
        (
            vec![
                "meta".into(),
                "--id".into(),
                "4".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--peers".into(),
                "1=127.0.0.1:1".into(),
            ],
            "not among",
            1,
        ),
        (
            vec![
                "meta".into(),
                "--id".into(),
                "1".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--peers".into(),
                "1=nonsense".into(),
            ],
            "HOST:PORT",
            1,
        ),
        (vec!["put".into(), "--chunk-size".into(), "1KiB".into(), file_in(dir), "/x".into()], "chunk size", 2),
        (vec!["get".into(), "/x".into(), file_in(dir)], "already exists", 2),
    ];
    for (args, expected, code) in cases {
        let mut command = Command::new(DFS);
        command.args(&args).env("DFS_META", &nowhere);
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "dfs {args:?}: {stderr}");
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
    let base = free_ports(CLUSTER_PORTS);
    let up = cluster_up(base, &dir.join("data"));
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
    assert!(long.contains("Found 1 item\n") && long.contains("200000") && long.contains(" 3 "), "{long}");

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
    assert!(removed.contains("Moved /proj (2 files, 3 directories) to the trash"), "{removed}");
    assert!(dfs_ok(&meta, &["ls", "-R"]).contains("Found 0 items"));

    // Ctrl-C: the launcher stops every node and exits successfully.
    let mut up = up;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for(Duration::from_secs(30), "cluster up to exit", || up.child.try_wait().unwrap());
    assert!(status.success(), "cluster up exited with {status}");
    wait_for(Duration::from_secs(10), "the nodes' ports to be released", || {
        (0..3).chain(100..103).all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok()).then_some(())
    });
}

/// The nodes of the running `cluster up` on `data`: name -> (state, pid, restarts).
fn cluster_nodes(data: &Path) -> std::collections::BTreeMap<String, (String, Option<u64>, u64)> {
    let out = Command::new(DFS).args(["cluster", "status", "--json", "--data-dir", &data.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "cluster status: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_string(), (n["state"].as_str().unwrap().to_string(), n["pid"].as_u64(), n["restarts"].as_u64().unwrap())))
        .collect()
}

/// `cluster up` with `extra` flags in `dir`, its stderr in `dir/up.err`: the launcher, its
/// base port, its data dir.
fn supervised(dir: &Path, extra: &[&str]) -> (Proc, u16, std::path::PathBuf) {
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let stderr = std::fs::File::create(dir.join("up.err")).unwrap();
    (cluster_up_with(base, &data, extra, stderr), base, data)
}

fn cluster_cmd(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(DFS).arg("cluster").args(args).args(["--data-dir", &data.display().to_string()]).output().unwrap()
}

/// One node SIGKILLed under `cluster up`: the others keep running, the launcher says so and
/// starts it again after its back-off; `cluster stop` (clean or --kill) and `cluster start`
/// act on one node by hand, and a stopped node stays down; Ctrl-C still stops everything.
#[test]
fn cluster_up_survives_a_node_dying_and_stop_start_act_on_one_node() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let (mut up, base, data) = supervised(dir, &[]);
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    let nodes = cluster_nodes(&data);
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    assert!(nodes.values().all(|(state, pid, _)| state == "running" && pid.is_some()), "{nodes:?}");

    // SIGKILL of one storage node: the cluster keeps running and the node comes back.
    let victim = nodes["storage-2"].1.unwrap();
    // SAFETY: a process this test's cluster started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let again = wait_for(Duration::from_secs(30), "storage-2 to be started again", || {
        let n = cluster_nodes(&data);
        let (state, pid, restarts) = n["storage-2"].clone();
        (state == "running" && pid != Some(victim) && restarts == 1).then(|| pid.unwrap())
    });
    assert!(up.child.try_wait().unwrap().is_none(), "cluster up exited when one node died");
    let said = std::fs::read_to_string(dir.join("up.err")).unwrap();
    assert!(said.contains("storage-2 died (signal: 9") && said.contains("the rest keeps running") && said.contains("storage-2 started again"), "{said}");
    wait_ready(&meta, 3);
    let file = path(dir, "f.bin");
    std::fs::write(&file, test_bytes(300_000, 1)).unwrap();
    dfs_ok(&meta, &["put", file.to_str().unwrap(), "/f.bin"]);

    // By hand: a clean stop and a crash; both stay down, the others keep serving.
    let stop = cluster_cmd(&data, &["stop", "storage-2"]);
    assert!(stop.status.success() && String::from_utf8_lossy(&stop.stdout).contains("storage-2 stopped"), "{stop:?}");
    // (A write quorum of 2 of 3 holds the file: one of the other two serves it.)
    let back = path(dir, "back.bin");
    dfs_ok(&meta, &["get", "/f.bin", back.to_str().unwrap()]);
    assert_same_file(&file, &back);
    let kill = cluster_cmd(&data, &["stop", "--kill", "storage-3"]);
    assert!(kill.status.success() && String::from_utf8_lossy(&kill.stdout).contains("signal: 9"), "{kill:?}");
    let n = cluster_nodes(&data);
    assert_eq!((n["storage-2"].0.as_str(), n["storage-2"].1), ("stopped", None), "{n:?}");
    assert_eq!((n["storage-3"].0.as_str(), n["storage-3"].1), ("stopped", None), "{n:?}");
    // SAFETY: probing a pid this test's cluster started (signal 0 sends nothing).
    assert_ne!(unsafe { libc::kill(again as libc::pid_t, 0) }, 0, "the stopped node's process still runs");
    let unknown = cluster_cmd(&data, &["stop", "storage-9"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no node \"storage-9\""), "{unknown:?}");
    for name in ["storage-2", "storage-3"] {
        let start = cluster_cmd(&data, &["start", name]);
        assert!(start.status.success() && String::from_utf8_lossy(&start.stdout).contains("started"), "{start:?}");
    }
    let twice = cluster_cmd(&data, &["start", "storage-2"]);
    assert_eq!(twice.status.code(), Some(1), "{twice:?}");
    wait_ready(&meta, 3);

    // Ctrl-C stops every node, restarted ones included.
    let pids: Vec<u64> = cluster_nodes(&data).values().filter_map(|(_, pid, _)| *pid).collect();
    assert_eq!(pids.len(), 6);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for(Duration::from_secs(30), "cluster up to exit", || up.child.try_wait().unwrap());
    assert!(status.success(), "cluster up exited with {status}");
    // SAFETY: probing pids (signal 0 sends nothing).
    wait_for(Duration::from_secs(10), "every node to be gone", || pids.iter().all(|p| unsafe { libc::kill(*p as libc::pid_t, 0) } != 0).then_some(()));
    let none = cluster_cmd(&data, &["status"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no `dfs cluster up` answers"), "{none:?}");
}

/// Every storage node stopped and the metadata nodes restarted: nothing can be read, and
/// fsck must say so (unreachable, exit 1) rather than "missing: 0" until the nodes have been
/// silent for the dead timeout; once they are back, it is healthy again.
#[test]
fn fsck_reports_chunks_no_live_node_serves_as_unreachable() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    let _up = cluster_up(base, &data);
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    let file = path(dir, "f.bin");
    std::fs::write(&file, test_bytes(200_000, 4)).unwrap();
    dfs_ok(&meta, &["put", file.to_str().unwrap(), "/f.bin"]);
    let fsck = |meta: &str| -> (Option<i32>, serde_json::Value) {
        let out = dfs(meta, &["--json", "fsck"]);
        (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or_default())
    };
    assert_eq!(fsck(&meta).0, Some(0));
    for node in ["storage-1", "storage-2", "storage-3", "meta-1", "meta-2", "meta-3"] {
        let out = cluster_cmd(&data, &["stop", node]);
        assert!(out.status.success(), "stop {node}: {out:?}");
    }
    for node in ["meta-1", "meta-2", "meta-3"] {
        assert!(cluster_cmd(&data, &["start", node]).status.success());
    }
    let (code, report) = wait_for(Duration::from_secs(30), "fsck from the restarted metadata cluster", || {
        let (code, report) = fsck(&meta);
        (code.is_some() && report.get("unreachable").is_some()).then_some((code, report))
    });
    assert_eq!(code, Some(1), "{report}");
    assert_eq!((report["unreachable"].as_u64(), report["missing"].as_u64(), report["healthy"].as_bool()), (Some(1), Some(0), Some(false)), "{report}");
    assert_eq!(report["problems"][0]["kind"], "unreachable", "{report}");
    let cat = dfs(&meta, &["cat", "/f.bin"]);
    assert_eq!(cat.status.code(), Some(1), "a read succeeded while fsck said unreachable");
    for node in ["storage-1", "storage-2", "storage-3"] {
        assert!(cluster_cmd(&data, &["start", node]).status.success());
    }
    wait_for(Duration::from_secs(30), "fsck healthy once the storage nodes are back", || (fsck(&meta).0 == Some(0)).then_some(()));
    let back = path(dir, "back.bin");
    dfs_ok(&meta, &["get", "/f.bin", back.to_str().unwrap()]);
    assert_same_file(&file, &back);
}

/// `--restart never`: a node that dies stays down (state `exited`, no restart scheduled) and
/// the rest keeps running; `cluster start` brings it back by hand.
#[test]
fn cluster_up_with_restart_never_leaves_a_dead_node_down() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let (mut up, _, data) = supervised(dir, &["--restart", "never"]);
    let victim = cluster_nodes(&data)["storage-1"].1.unwrap();
    // SAFETY: a process this test's cluster started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let state = wait_for(Duration::from_secs(30), "storage-1's death to be seen", || {
        let (state, pid, _) = cluster_nodes(&data)["storage-1"].clone();
        (pid.is_none()).then_some(state)
    });
    assert_eq!(state, "exited", "a dead node was scheduled for a restart under --restart never");
    assert!(std::fs::read_to_string(dir.join("up.err")).unwrap().contains("storage-1 died (signal: 9 (SIGKILL)); the rest keeps running (--restart never)"));
    assert!(up.child.try_wait().unwrap().is_none(), "cluster up exited");
    assert!(cluster_cmd(&data, &["start", "storage-1"]).status.success());
    assert_eq!(cluster_nodes(&data)["storage-1"].0, "running");
}
