//! Real processes on 127.0.0.1: transfers interrupted by SIGKILL and resumed.

#![cfg(not(madsim))]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// Lines in the resume manifests named `*.EXTENSION` under `dir`: one header per upload, then
/// one line per chunk stored (`upload`: a `put`) or per file committed (`tree`: a `put -r`).
fn manifest_lines(dir: &Path, extension: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == extension))
        .filter_map(|e| std::fs::File::open(e.path()).ok())
        .map(|f| BufReader::new(f).lines().count())
        .sum()
}

#[test]
fn a_put_killed_half_way_resumes_with_only_the_missing_chunks() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let _up = cluster_up(base, &dir.join("data"));
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    let state = dir.join("state");
    let manifests = state.join("uploads");

    let chunks = 160usize;
    let original = path(dir, "big.bin");
    std::fs::write(&original, test_bytes(chunks * 1024 * 1024 - 1000, 11)).unwrap();
    let put_args = ["put", "--chunk-size", "1MiB", "--parallelism", "1", original.to_str().unwrap(), "/big.bin"];
    let mut put =
        Command::new(DFS).args(put_args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it once a tenth of the chunks are stored (polled often: the upload is fast).
    let deadline = Instant::now() + Duration::from_secs(120);
    while manifest_lines(&manifests, "upload") < 1 + chunks / 10 {
        assert!(put.try_wait().unwrap().is_none(), "the put finished before it could be killed; make the file larger");
        assert!(Instant::now() < deadline, "the put stored nothing in 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    put.kill().unwrap();
    put.wait().unwrap();
    let stored_before = manifest_lines(&manifests, "upload") - 1;
    assert!(stored_before < chunks, "killed too late: {stored_before} chunks stored");
    // Nothing half-uploaded is visible.
    let listing = dfs_ok(&meta, &["ls", "/"]);
    assert!(listing.contains("Found 0 items"), "{listing}");

    let rerun = Command::new(DFS).args(put_args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).output().unwrap();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(rerun.status.success(), "rerun failed: {stderr}");
    let resumed: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rerun did not say it resumed: {stderr}"));
    assert!(resumed >= stored_before && resumed < chunks, "resumed {resumed} of {chunks}, {stored_before} were stored");
    assert!(stderr.contains(&format!("of {chunks} chunks already stored")), "{stderr}");
    assert_eq!(manifest_lines(&manifests, "upload"), 0, "the manifest outlived the upload");

    let back = path(dir, "back.bin");
    dfs_ok(&meta, &["get", "/big.bin", back.to_str().unwrap()]);
    assert_same_file(&original, &back);

    // A changed source starts over instead of resuming.
    let mut interrupted = Command::new(DFS)
        .args(["put", "--chunk-size", "1MiB", "--parallelism", "1", original.to_str().unwrap(), "/again.bin"])
        .env("DFS_META", &meta)
        .env("DFS_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while manifest_lines(&manifests, "upload") < 3 {
        assert!(interrupted.try_wait().unwrap().is_none(), "the put finished before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    interrupted.kill().unwrap();
    interrupted.wait().unwrap();
    std::fs::write(&original, test_bytes(chunks * 1024 * 1024 - 1000, 12)).unwrap();
    let fresh = Command::new(DFS)
        .args(["put", "--chunk-size", "1MiB", original.to_str().unwrap(), "/again.bin"])
        .env("DFS_META", &meta)
        .env("DFS_STATE_DIR", &state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&fresh.stderr);
    assert!(fresh.status.success() && !stderr.contains("resuming"), "{stderr}");
    dfs_ok(&meta, &["get", "/again.bin", path(dir, "again.bin").to_str().unwrap()]);
    assert_same_file(&original, &path(dir, "again.bin"));
}

#[test]
fn a_put_r_killed_half_way_resumes_with_only_the_missing_files() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let _up = cluster_up(base, &dir.join("data"));
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    let state = dir.join("state");
    let manifests = state.join("uploads");

    let files = 1500usize;
    let src = dir.join("src");
    for i in 0..files {
        let sub = src.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), test_bytes(1000 + i, i as u64)).unwrap();
    }
    let args = ["put", "-r", "--parallel", "4", src.to_str().unwrap(), "/tree"];
    let mut put = Command::new(DFS).args(args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while manifest_lines(&manifests, "tree") < 1 + 50 {
        assert!(put.try_wait().unwrap().is_none(), "put -r finished before it could be killed; use more files");
        assert!(Instant::now() < deadline, "put -r committed nothing in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    put.kill().unwrap();
    put.wait().unwrap();
    let noted = manifest_lines(&manifests, "tree") - 1;
    assert!(noted < files, "killed too late: {noted} files committed");

    // One file the killed run committed and noted is changed locally: the rerun replaces it.
    // (A file committed but not yet noted when the kill came is not known to be this upload's:
    // changed, it fails as any existing file would without --force.)
    let manifest = std::fs::read_dir(&manifests)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tree"))
        .expect("a tree manifest");
    let noted_line = std::fs::read_to_string(&manifest).unwrap().lines().nth(1).expect("a noted file").to_string();
    let changed_remote = noted_line.split("\"remote\":\"").nth(1).and_then(|r| r.split('"').next()).expect("the noted file's remote path").to_string();
    let changed_local = src.join(changed_remote.trim_start_matches("/tree/"));
    std::fs::write(&changed_local, b"changed after the interruption").unwrap();

    let rerun = Command::new(DFS).arg("--json").args(args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).output().unwrap();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(rerun.status.success(), "rerun failed: {stderr}");
    let skipped: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rerun did not say it resumed: {stderr}"));
    // Every file the manifest noted but the changed one is skipped; a file committed just
    // before the kill but not noted is verified by digest and counted too.
    assert!(skipped >= noted - 1 && skipped < files, "skipped {skipped} of {files}, {noted} were noted");
    assert!(stderr.contains(&format!("of {files} files already uploaded")), "{stderr}");
    let already: usize =
        stdout.split("\"files_already_uploaded\":").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).expect("files_already_uploaded");
    assert!(already >= skipped && already < files, "{already} reported already uploaded; {skipped} skipped");
    assert!(stdout.contains(&format!("\"files_copied\":{files}")), "{stdout}");
    assert_eq!(manifest_lines(&manifests, "tree"), 0, "the manifest outlived the upload");

    let back = dir.join("back");
    dfs_ok(&meta, &["get", "-r", "/tree", back.to_str().unwrap()]);
    for i in 0..files {
        let rel = format!("d{}/f{i}", i % 7);
        assert_same_file(&src.join(&rel), &back.join(&rel));
    }
}

/// 3 metadata nodes and `storage` storage nodes, each its own process.
struct Cluster {
    meta: String,
    _metas: Vec<Proc>,
    storage: Vec<Proc>,
}

fn start_cluster(dir: &Path, storage: usize) -> Cluster {
    let meta_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = meta_ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let meta = meta_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let metas = meta_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let data = dir.join(format!("meta-{}", i + 1)).display().to_string();
            let args: Vec<String> =
                ["meta", "--id", &(i + 1).to_string(), "--listen", &format!("127.0.0.1:{port}"), "--data-dir", &data, "--peers", &peers.join(",")]
                    .map(String::from)
                    .to_vec();
            spawn(&format!("meta-{}", i + 1), &args, dir)
        })
        .collect();
    let storage = (1..=storage)
        .map(|i| {
            let data = dir.join(format!("storage-{i}")).display().to_string();
            let args: Vec<String> =
                ["storage", "--listen", &format!("127.0.0.1:{}", free_port()), "--meta", &meta, "--data-dir", &data, "--heartbeat-ms", "500"]
                    .map(String::from)
                    .to_vec();
            spawn(&format!("storage-{i}"), &args, dir)
        })
        .collect::<Vec<_>>();
    wait_ready(&meta, storage.len());
    Cluster { meta, _metas: metas, storage }
}

#[test]
fn a_storage_node_killed_during_a_put_leaves_the_upload_completed_or_resumable() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mut cluster = start_cluster(dir, 4);
    let meta = cluster.meta.clone();
    let state = dir.join("state");
    let chunks = 120usize;
    let original = path(dir, "big.bin");
    std::fs::write(&original, test_bytes(chunks * 1024 * 1024 + 77, 21)).unwrap();
    let put_args = ["put", "--chunk-size", "1MiB", "--parallelism", "2", original.to_str().unwrap(), "/big.bin"];
    let mut put =
        Command::new(DFS).args(put_args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while manifest_lines(&state.join("uploads"), "upload") < 1 + chunks / 8 {
        assert!(Instant::now() < deadline, "the put stored nothing in 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed after the put ended, the node would test nothing about a put in flight.
    assert!(put.try_wait().unwrap().is_none(), "the put finished before storage-1 could be killed; make the file larger");
    eprintln!("SIGKILL storage-1 during the put");
    cluster.storage[0].sigkill();
    let first = put.wait_with_output().unwrap();
    if !first.status.success() {
        // Not completed: it must be resumable, and resume.
        eprintln!("the put failed: {}", String::from_utf8_lossy(&first.stderr));
        let rerun = Command::new(DFS).args(put_args).env("DFS_META", &meta).env("DFS_STATE_DIR", &state).output().unwrap();
        let stderr = String::from_utf8_lossy(&rerun.stderr);
        assert!(rerun.status.success() && stderr.contains("resuming: "), "the rerun did not resume: {stderr}");
    }
    let back = path(dir, "back.bin");
    dfs_ok(&meta, &["get", "/big.bin", back.to_str().unwrap()]);
    assert_same_file(&original, &back);
}

/// Every chunk file under a storage node's data directory.
fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "chunk") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_replica_corrupted_on_disk_changes_nothing_get_returns_and_stat_shows_it_bad() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = start_cluster(dir, 3);
    let meta = cluster.meta.clone();
    let original = path(dir, "f.bin");
    std::fs::write(&original, test_bytes(6 * 1024 * 1024 + 3, 31)).unwrap();
    dfs_ok(&meta, &["put", "--chunk-size", "1MiB", original.to_str().unwrap(), "/f.bin"]);

    // Rot one byte in the data of every chunk storage-1 holds: each chunk keeps two good
    // replicas elsewhere.
    let rotten = chunk_files(&dir.join("storage-1"));
    assert_eq!(rotten.len(), 7, "storage-1 should hold a replica of every chunk");
    for file in &rotten {
        let mut bytes = std::fs::read(file).unwrap();
        let i = bytes.len() - 1; // the data ends the file
        bytes[i] ^= 0x20;
        std::fs::write(file, bytes).unwrap();
    }
    // Reads rotate over the replicas: some chunks are asked of storage-1 first.
    for round in 0..3 {
        let back = path(dir, &format!("back-{round}.bin"));
        dfs_ok(&meta, &["get", "/f.bin", back.to_str().unwrap()]);
        assert_same_file(&original, &back);
    }
    let stat = wait_for(Duration::from_secs(30), "stat to show a bad replica", || {
        let json: serde_json::Value = serde_json::from_str(&dfs_ok(&meta, &["--json", "stat", "/f.bin"])).ok()?;
        let states: Vec<String> = json["chunks"]
            .as_array()?
            .iter()
            .flat_map(|c| c["replicas"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["state"].as_str().map(String::from))
            .collect();
        states.iter().any(|s| s == "bad").then_some(json)
    });
    // A bad replica is never one of the good ones: every chunk still has two ok replicas.
    for chunk in stat["chunks"].as_array().unwrap() {
        let ok = chunk["replicas"].as_array().unwrap().iter().filter(|r| r["state"] == "ok").count();
        assert!(ok >= 2, "chunk {} has {ok} good replicas: {chunk}", chunk["index"]);
    }
    let text = dfs_ok(&meta, &["stat", "/f.bin"]);
    assert!(text.contains("bad"), "{text}");
}
