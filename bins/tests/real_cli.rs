//! The `dfs` command line as a user drives it: real processes on 127.0.0.1, one small cluster
//! shared by every check of a test (CI has two cores), commands run with exactly the names
//! and flags `docs/CLI.md` documents, `--json` output parsed and checked field by field, and
//! the exit codes: 0 success, 1 failure, 2 usage error.

#![cfg(not(madsim))]

use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

/// Runs `dfs` with `DFS_META`, its spool directory under `cache`, and `stdin` piped in.
fn run(meta: &str, cache: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(DFS)
        .args(args)
        .env("DFS_META", meta)
        .env("XDG_CACHE_HOME", cache)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dfs");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(out: Output, args: &[&str]) -> Vec<u8> {
    assert!(
        out.status.success(),
        "dfs {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a command expected to succeed with `--json` and parses its one line of output.
fn json(meta: &str, cache: &Path, args: &[&str]) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let stdout = String::from_utf8(ok(run(meta, cache, &with_json, None), &with_json)).unwrap();
    assert_eq!(stdout.lines().count(), 1, "--json prints one line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("dfs {with_json:?}: not JSON ({e}): {stdout}"))
}

/// Runs a command expected to fail with `code`, a one-line error on stderr naming `expected`,
/// and no panic.
fn fails(meta: &str, cache: &Path, args: &[&str], code: i32, expected: &str) {
    let out = run(meta, cache, args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "dfs {args:?}: {stderr}");
    assert!(stderr.contains(expected), "dfs {args:?}: stderr {stderr:?} lacks {expected:?}");
    assert!(!stderr.contains("panicked"), "dfs {args:?} panicked: {stderr}");
    assert!(stderr.starts_with("dfs: ") && stderr.lines().count() == 1, "dfs {args:?}: the error is not one 'dfs: ' line: {stderr:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `root` by relative path, with its bytes, and every directory.
fn tree_contents(root: &Path) -> (BTreeMap<PathBuf, Vec<u8>>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (BTreeMap::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                dirs.push(rel);
                stack.push(path);
            } else {
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    dirs.sort();
    (files, dirs)
}

/// Nothing left in the spool directory: stdin and stdout transfers clean up after themselves.
fn assert_spool_empty(cache: &Path) {
    let spool = cache.join("dfs");
    let left: Vec<_> = std::fs::read_dir(&spool).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
}

#[test]
fn the_cli_against_one_cluster() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let base = free_ports(CLUSTER_PORTS);
    let _up = cluster_up(base, &dir.join("data"));
    let meta = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    wait_ready(&meta, 3);

    round_trips(&meta, &cache, dir);
    aliases(&meta, &cache, dir);
    json_shapes(&meta, &cache, dir);
    trees(&meta, &cache, dir);
    bad_input(&meta, &cache, dir);
    long_names(&meta, &cache, dir);
    special_destinations(&meta, &cache, dir);
    space_shown(&meta, &cache);
    everyday_commands(&meta, &cache, dir);
    trash(&meta, &cache, dir);
    put_and_get_details(&meta, &cache, dir);
    messages(&meta, &cache, dir);
}

/// The commands `hdfs dfs`, `mc` and `weed` users reach for first.
fn everyday_commands(meta: &str, cache: &Path, dir: &Path) {
    let bytes = test_bytes(5 * 65_536 + 1234, 61);
    let file = dir.join("every.bin");
    std::fs::write(&file, &bytes).unwrap();
    ok(run(meta, cache, &["put", "--chunk-size", "64KiB", s(&file), "/ev/a.bin"], None), &["put"]);

    // cp on the servers: the copy lists the same chunks (no byte moved), reads the same bytes,
    // and outlives its source.
    let cp = json(meta, cache, &["cp", "/ev/a.bin", "/ev/copy.bin"]);
    assert_eq!((cp["files"].as_u64(), cp["bytes"].as_u64()), (Some(1), Some(bytes.len() as u64)), "{cp}");
    let chunks = |p: &str| -> Vec<String> {
        json(meta, cache, &["stat", p])["chunks"].as_array().unwrap().iter().map(|c| c["chunk_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(chunks("/ev/a.bin"), chunks("/ev/copy.bin"), "a copy shares its source's chunks");
    ok(run(meta, cache, &["rm", "--skip-trash", "/ev/a.bin"], None), &["rm"]);
    assert_eq!(ok(run(meta, cache, &["cat", "/ev/copy.bin"], None), &["cat copy"]), bytes, "the copy lost its chunks with its source");
    fails(meta, cache, &["cp", "/ev", "/ev2"], 2, "cp -r copies a tree");
    let tree = json(meta, cache, &["cp", "-r", "/ev", "/ev2"]);
    assert_eq!(tree["files"], 1, "{tree}");
    fails(meta, cache, &["cp", "/ev/copy.bin", "/ev2/copy.bin"], 1, "already exists");

    // touch: a new empty file, then only its time.
    ok(run(meta, cache, &["touch", "/ev/empty"], None), &["touch"]);
    let first = json(meta, cache, &["stat", "/ev/empty"]);
    assert_eq!(first["file"]["size"], 0);
    std::thread::sleep(Duration::from_millis(20)); // the clock must move for the time to change
    ok(run(meta, cache, &["touch", "/ev/empty"], None), &["touch again"]);
    let second = json(meta, cache, &["stat", "/ev/empty"]);
    assert_eq!(second["file"]["file_id"], first["file"]["file_id"], "touch replaced the file");
    assert!(second["file"]["mtime_unix_ms"].as_u64() > first["file"]["mtime_unix_ms"].as_u64(), "{first} {second}");

    // head, tail, and ranges: exactly those bytes, across chunk and frame boundaries.
    assert_eq!(ok(run(meta, cache, &["head", "-c", "100", "/ev/copy.bin"], None), &["head"]), &bytes[..100]);
    assert_eq!(ok(run(meta, cache, &["head", "/ev/copy.bin"], None), &["head"]), &bytes[..1024], "head shows 1 KiB by default");
    assert_eq!(ok(run(meta, cache, &["tail", "-c", "70000", "/ev/copy.bin"], None), &["tail"]), &bytes[bytes.len() - 70_000..]);
    let range = ok(run(meta, cache, &["cat", "--offset", "65000", "--length", "140000", "/ev/copy.bin"], None), &["cat range"]);
    assert_eq!(range, &bytes[65_000..205_000]);
    assert!(ok(run(meta, cache, &["cat", "--offset", "999999999", "/ev/copy.bin"], None), &["cat past the end"]).is_empty());

    // find by name, size, age and kind; wildcards in paths.
    ok(run(meta, cache, &["put", s(&file), "/ev/logs/2026-01.log"], None), &["put"]);
    ok(run(meta, cache, &["put", s(&file), "/ev/logs/2026-02.log"], None), &["put"]);
    ok(run(meta, cache, &["put", s(&file), "/ev/logs/2025-12.log"], None), &["put"]);
    let found = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["find", "/ev"];
        a.extend_from_slice(args);
        json(meta, cache, &a)["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(found(&["-name", "2026-*"]), ["/ev/logs/2026-01.log", "/ev/logs/2026-02.log"]);
    assert_eq!(found(&["-type", "d"]), ["/ev/logs"]);
    assert_eq!(found(&["-size", "-1"]), ["/ev/empty"]);
    assert_eq!(found(&["-size", "+300KiB"]).len(), 4);
    // The logs keep their source's time; one touched later is newer, as is the empty file.
    ok(run(meta, cache, &["touch", "/ev/logs/2025-12.log"], None), &["touch"]);
    assert_eq!(found(&["-newer", "/ev/logs/2026-02.log", "-type", "f"]), ["/ev/empty", "/ev/logs/2025-12.log"]);
    let listed = String::from_utf8(ok(run(meta, cache, &["ls", "/ev/logs/2026-*"], None), &["ls glob"])).unwrap();
    assert!(listed.contains("/ev/logs/2026-01.log") && listed.contains("/ev/logs/2026-02.log") && !listed.contains("2025"), "{listed}");
    fails(meta, cache, &["rm", "/ev/logs/2027-*"], 1, "no match");

    // Several sources at once: put, mv, get, rm.
    let (x, y) = (dir.join("x.txt"), dir.join("y.txt"));
    std::fs::write(&x, b"x").unwrap();
    std::fs::write(&y, b"y").unwrap();
    ok(run(meta, cache, &["put", s(&x), s(&y), "/ev/multi/"], None), &["put several"]);
    ok(run(meta, cache, &["mv", "/ev/multi/x.txt", "/ev/multi/y.txt", "/ev/moved/"], None), &["mv several"]);
    let out = dir.join("multi-out");
    std::fs::create_dir_all(&out).unwrap();
    ok(run(meta, cache, &["get", "/ev/moved/*.txt", s(&out)], None), &["get several"]);
    assert_eq!((std::fs::read(out.join("x.txt")).unwrap(), std::fs::read(out.join("y.txt")).unwrap()), (b"x".to_vec(), b"y".to_vec()));
    fails(meta, cache, &["put", s(&x), s(&y), "/ev/nodir"], 2, "must be a directory");
    ok(run(meta, cache, &["rm", "--skip-trash", "/ev/logs/2026-*", "/ev/logs/2025-12.log"], None), &["rm several"]);
    assert!(found(&["-name", "*.log"]).is_empty());

    // setrep: down to 2, waited for; the chunks then have two copies. (A chunk shared with a
    // copy keeps the copy's factor too: the highest of the files holding it.)
    ok(run(meta, cache, &["put", "--chunk-size", "64KiB", s(&file), "/ev/rep.bin"], None), &["put"]);
    ok(run(meta, cache, &["setrep", "-w", "--wait-timeout", "60s", "2", "/ev/rep.bin"], None), &["setrep -w"]);
    let stat = json(meta, cache, &["stat", "/ev/rep.bin"]);
    assert_eq!(stat["file"]["replication"], 2);
    assert!(stat["chunks"].as_array().unwrap().iter().all(|c| c["replicas"].as_array().unwrap().len() == 2), "{stat}");
    ok(run(meta, cache, &["setrep", "2", "/ev/copy.bin"], None), &["setrep of a shared file"]);
    assert!(json(meta, cache, &["fsck", "/ev/copy.bin"])["healthy"] == true, "a chunk shared with a file at 3 must keep 3 copies");
    fails(meta, cache, &["setrep", "9", "/ev/copy.bin"], 1, "needs 9 storage nodes");

    // uploads: one abandoned (created, never committed) is listed, then aborted.
    let big = dir.join("abandoned.bin");
    std::fs::write(&big, test_bytes(40 << 20, 62)).unwrap();
    let mut child = Command::new(DFS)
        .args(["put", "-q", "--chunk-size", "1MiB", "--parallel", "1", s(&big), "/ev/abandoned.bin"])
        .env("DFS_META", meta)
        .env("DFS_STATE_DIR", dir.join("state"))
        .spawn()
        .unwrap();
    let listed = wait_for(Duration::from_secs(30), "the upload to be created", || {
        let u = json(meta, cache, &["uploads", "/ev"]);
        u["uploads"].as_array().unwrap().first().map(|u| u["id"].as_u64().unwrap())
    });
    let _ = child.kill();
    let _ = child.wait();
    ok(run(meta, cache, &["uploads", "--abort", &listed.to_string()], None), &["uploads --abort"]);
    assert!(json(meta, cache, &["uploads"])["uploads"].as_array().unwrap().is_empty());
    fails(meta, cache, &["uploads", "--abort", &listed.to_string()], 1, "no upload");
}

/// `rm` keeps what it deletes in the user's trash; restore and empty; `rm -r /` refused.
fn trash(meta: &str, cache: &Path, dir: &Path) {
    let file = dir.join("t.bin");
    std::fs::write(&file, b"keep me").unwrap();
    ok(run(meta, cache, &["put", s(&file), "/tr/a/t.bin"], None), &["put"]);
    let rm = json(meta, cache, &["rm", "/tr/a/t.bin"]);
    let to = rm["trashed_to"].as_str().unwrap().to_string();
    // /.trash/<user>/<minute>/tr/a/t.bin
    let parts: Vec<&str> = to.split('/').collect();
    assert!(to.starts_with("/.trash/") && to.ends_with("/tr/a/t.bin") && parts.len() == 7 && !parts[2].is_empty(), "{to}");
    assert!(dfs_core_bucket(parts[3]), "{to}");
    fails(meta, cache, &["cat", "/tr/a/t.bin"], 1, "no such file");
    assert_eq!(ok(run(meta, cache, &["cat", &to], None), &["cat in trash"]), b"keep me");
    let listing = String::from_utf8(ok(run(meta, cache, &["ls", "-R", "/"], None), &["ls"])).unwrap();
    assert!(!listing.contains("/.trash"), "ls shows the trash without -a: {listing}");
    assert!(String::from_utf8(ok(run(meta, cache, &["ls", "-a", "/"], None), &["ls -a"])).unwrap().contains("/.trash"));
    let everything = dir.join("everything");
    ok(run(meta, cache, &["get", "-r", "/", s(&everything)], None), &["get -r /"]);
    assert!(!everything.join(".trash").exists(), "get -r / copied the trash");
    ok(run(meta, cache, &["trash", "restore", "/tr/a/t.bin"], None), &["trash restore"]);
    assert_eq!(ok(run(meta, cache, &["cat", "/tr/a/t.bin"], None), &["cat restored"]), b"keep me");
    ok(run(meta, cache, &["rm", "-r", "/tr"], None), &["rm -r"]);
    let listed = String::from_utf8(ok(run(meta, cache, &["trash", "list"], None), &["trash list"])).unwrap();
    assert!(listed.contains("/tr/a/t.bin"), "{listed}");
    ok(run(meta, cache, &["trash", "empty"], None), &["trash empty"]);
    fails(meta, cache, &["trash", "restore", "/tr/a/t.bin"], 1, "not in");
    // Deleting everything needs --force; nothing was deleted without it.
    fails(meta, cache, &["rm", "-r", "/"], 2, "refusing to delete everything");
    assert!(json(meta, cache, &["ls", "/"])["entries"].as_array().unwrap().len() > 1);
}

/// `put` into a directory; mode and time kept and restored; links; files whose size lies.
fn put_and_get_details(meta: &str, cache: &Path, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("modes.sh");
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o750)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(when).unwrap();
    ok(run(meta, cache, &["mkdir", "-p", "/pd"], None), &["mkdir"]);
    // A directory as the destination receives the file under its name, as cp does.
    ok(run(meta, cache, &["put", s(&file), "/pd"], None), &["put into a directory"]);
    let stat = json(meta, cache, &["stat", "/pd/modes.sh"]);
    assert_eq!((stat["file"]["mode"].as_u64(), stat["file"]["mtime_unix_ms"].as_u64()), (Some(0o750), Some(1_600_000_000_000)), "{stat}");
    let long = String::from_utf8(ok(run(meta, cache, &["ls", "-l", "/pd"], None), &["ls -l"])).unwrap();
    assert!(long.contains("-rwxr-x---") && long.contains("2020-09-13"), "{long}");
    let back = dir.join("modes-back.sh");
    ok(run(meta, cache, &["get", "-p", "/pd/modes.sh", s(&back)], None), &["get -p"]);
    let meta_back = std::fs::metadata(&back).unwrap();
    assert_eq!(meta_back.permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta_back.modified().unwrap(), when);
    // A file whose size says 0 but that reads bytes is refused, not stored empty.
    fails(meta, cache, &["put", "/proc/self/status", "/pd/status"], 2, "its size says 0 bytes");
    // A directory without -r says what to do.
    fails(meta, cache, &["put", s(dir), "/pd/dir"], 2, "put -r uploads a tree");
}

/// Errors say the command that failed, their cause once, and counts in the right number.
fn messages(meta: &str, cache: &Path, dir: &Path) {
    let out = run(meta, cache, &["cat", "/nowhere.bin"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("dfs: cat /nowhere.bin"), "cat's error names cat: {stderr}");
    let f = dir.join("one.bin");
    std::fs::write(&f, b"1").unwrap();
    let put = String::from_utf8(ok(run(meta, cache, &["put", s(&f), "/msg/one.bin"], None), &["put"])).unwrap();
    assert!(put.contains("1 chunk,"), "{put}");
    let ls = String::from_utf8(ok(run(meta, cache, &["ls", "/msg"], None), &["ls"])).unwrap();
    assert!(ls.starts_with("Found 1 item\n"), "{ls}");
    // An unreadable local directory: the cause said once.
    let locked = dir.join("locked.bin");
    std::fs::write(&locked, b"x").unwrap();
    let out = run(meta, cache, &["put", s(&dir.join("missing.bin")), "/msg/x"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

/// Names up to 255 bytes (the local limit) go up and come back, into a directory and with
/// `get -r`: the temporary name a download uses fits too.
fn long_names(meta: &str, cache: &Path, dir: &Path) {
    let src = dir.join("long");
    std::fs::create_dir_all(&src).unwrap();
    for len in [228usize, 229, 240, 255] {
        let name = "n".repeat(len - 4) + ".bin";
        std::fs::write(src.join(&name), test_bytes(len * 10, len as u64)).unwrap();
    }
    let accented = "é".repeat(126) + ".b"; // 254 bytes, cut on a character boundary
    std::fs::write(src.join(&accented), b"accented").unwrap();
    ok(run(meta, cache, &["put", "-r", s(&src), "/long"], None), &["put -r long names"]);
    let into = dir.join("long-get");
    std::fs::create_dir_all(&into).unwrap();
    let name = "n".repeat(251) + ".bin";
    ok(run(meta, cache, &["get", &format!("/long/{name}"), s(&into)], None), &["get a 255-byte name into a directory"]);
    assert_same_file(&src.join(&name), &into.join(&name));
    let back = dir.join("long-back");
    ok(run(meta, cache, &["get", "-r", "/long", s(&back)], None), &["get -r long names"]);
    assert_eq!(tree_contents(&src), tree_contents(&back));
    // No temporary file left behind anywhere.
    let left: Vec<_> = std::fs::read_dir(&into)
        .unwrap()
        .chain(std::fs::read_dir(&back).unwrap())
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".dfs-part-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `get` to what is not a plain new file, as `cp` does it: devices and FIFOs written through
/// (never replaced), symlinks followed, the rest refused.
fn special_destinations(meta: &str, cache: &Path, dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let bytes = test_bytes(300_000, 51);
    let file = dir.join("special.bin");
    std::fs::write(&file, &bytes).unwrap();
    ok(run(meta, cache, &["put", "--chunk-size", "64KiB", s(&file), "/special.bin"], None), &["put"]);

    // A character device: written through, with or without --force, and still a device.
    for args in [vec!["get", "/special.bin", "/dev/null"], vec!["get", "--force", "/special.bin", "/dev/null"]] {
        let out = String::from_utf8(ok(run(meta, cache, &args, None), &args)).unwrap();
        assert!(out.contains("-> /dev/null"), "{out}");
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null was replaced");
    fails(meta, cache, &["get", "--force", "/special.bin", "/dev/full"], 1, "No space left on device");
    assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device(), "/dev/full was replaced");

    // A FIFO: its reader gets every byte; the FIFO stays a FIFO.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    ok(run(meta, cache, &["get", "--force", "/special.bin", s(&fifo)], None), &["get into a FIFO"]);
    assert_eq!(reader.join().unwrap(), bytes, "the FIFO's reader got other bytes");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");

    // A symbolic link: its target is replaced (with --force), the link stays a link.
    let target = dir.join("link-target.bin");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.join("link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    fails(meta, cache, &["get", "/special.bin", s(&link)], 2, "already exists");
    ok(run(meta, cache, &["get", "--force", "/special.bin", s(&link)], None), &["get through a link"]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
    let dangling = dir.join("dangling.bin");
    std::os::unix::fs::symlink(dir.join("nowhere/at/all"), &dangling).unwrap();
    fails(meta, cache, &["get", "--force", "/special.bin", s(&dangling)], 2, "a symbolic link to nothing");

    // A socket: refused, and left as it was.
    let socket = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fails(meta, cache, &["get", "--force", "/special.bin", s(&socket)], 2, "a socket");
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
}

/// `dfs nodes` tells what dfs stores and what it may still use, and counts the one disk the
/// three local nodes share once.
fn space_shown(meta: &str, cache: &Path) {
    let nodes = json(meta, cache, &["nodes"]);
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for n in list {
        let (free, reserve, usable) = (n["free_bytes"].as_u64().unwrap(), n["reserve_bytes"].as_u64().unwrap(), n["usable_bytes"].as_u64().unwrap());
        assert_eq!(reserve, 64 << 20, "{n}");
        assert_eq!(usable, free.saturating_sub(reserve), "{n}");
        assert!(n["stored_bytes"].as_u64().unwrap() > 0 && n["stored_bytes"] == n["used_bytes"], "{n}");
        assert!(n["stored_bytes"].as_u64().unwrap() < n["disk_used_bytes"].as_u64().unwrap(), "{n}");
        assert_eq!(n["shares_disk_with"].as_array().unwrap().len(), 2, "{n}");
    }
    assert_eq!(nodes["total"]["disks"], 1, "{nodes}");
    assert_eq!(nodes["total"]["capacity_bytes"], list[0]["capacity_bytes"], "{nodes}");
    let text = String::from_utf8(ok(run(meta, cache, &["nodes"], None), &["nodes"])).unwrap();
    assert!(text.contains("stored") && text.contains("usable") && text.contains("total: 3 nodes on 1 disk") && text.contains("share"), "{text}");
}

fn round_trips(meta: &str, cache: &Path, dir: &Path) {
    // Several 64 KiB chunks and a tail.
    let original = dir.join("original.bin");
    let bytes = test_bytes(5 * 65_536 + 4_321, 11);
    std::fs::write(&original, &bytes).unwrap();
    let args = ["put", "--chunk-size", "64KiB", "--replication", "2", "--parallel", "3", s(&original), "/rt/original.bin"];
    let put = String::from_utf8(ok(run(meta, cache, &args, None), &args)).unwrap();
    assert!(put.contains("6 chunks") && put.contains("replication 2"), "{put}");

    let back = dir.join("back.bin");
    ok(run(meta, cache, &["get", "/rt/original.bin", s(&back)], None), &["get"]);
    assert_same_file(&original, &back);
    assert_eq!(ok(run(meta, cache, &["cat", "/rt/original.bin"], None), &["cat"]), bytes);
    assert_eq!(ok(run(meta, cache, &["get", "/rt/original.bin", "-"], None), &["get -"]), bytes);

    // Standard input in, standard output out.
    let piped = test_bytes(200_000, 12);
    ok(run(meta, cache, &["put", "-q", "--chunk-size", "64KiB", "-", "/rt/stdin.bin"], Some(&piped)), &["put -"]);
    assert_eq!(ok(run(meta, cache, &["cat", "/rt/stdin.bin"], None), &["cat"]), piped);
    ok(run(meta, cache, &["put", "-", "/rt/empty.bin"], Some(b"")), &["put - (empty)"]);
    assert!(ok(run(meta, cache, &["cat", "/rt/empty.bin"], None), &["cat"]).is_empty());
    assert_spool_empty(cache);

    // --force replaces, remotely and locally; `put` into a directory keeps the local name.
    let other = dir.join("other.bin");
    std::fs::write(&other, test_bytes(1000, 13)).unwrap();
    ok(run(meta, cache, &["put", "--force", s(&other), "/rt/original.bin"], None), &["put --force"]);
    ok(run(meta, cache, &["get", "-f", "/rt/original.bin", s(&back)], None), &["get -f"]);
    assert_same_file(&other, &back);
    ok(run(meta, cache, &["put", s(&other), "/rt/"], None), &["put into dir"]);
    assert_eq!(ok(run(meta, cache, &["cat", "/rt/other.bin"], None), &["cat"]), std::fs::read(&other).unwrap());

    // stat names the chunks and their replicas, du adds up.
    let stat = String::from_utf8(ok(run(meta, cache, &["stat", "/rt/stdin.bin"], None), &["stat"])).unwrap();
    assert!(stat.contains("size:          195.3 KiB (200000 bytes)") && stat.contains("chunks:        4"), "{stat}");
    assert_eq!(stat.lines().filter(|l| l.trim_end().ends_with(" ok")).count(), 4 * 3, "4 chunks x 3 replicas: {stat}");
    let du = String::from_utf8(ok(run(meta, cache, &["du", "-s", "/rt"], None), &["du"])).unwrap();
    let total = du.lines().last().unwrap();
    assert!(total.split_whitespace().collect::<Vec<_>>() == ["202000", "4", "0", "/rt"], "{du}");
    let du_h = String::from_utf8(ok(run(meta, cache, &["du", "-h", "/"], None), &["du -h"])).unwrap();
    assert!(du_h.lines().any(|l| l.contains("197.3 KiB") && l.ends_with(" /rt")), "{du_h}");
}

fn aliases(meta: &str, cache: &Path, dir: &Path) {
    let file = dir.join("seed.bin");
    std::fs::write(&file, test_bytes(100_000, 21)).unwrap();
    ok(run(meta, cache, &["upload", "--file", s(&file), "--name", "/seed/a.bin", "--parallelism", "2"], None), &["upload"]);
    ok(run(meta, cache, &["upload", "--file", s(&file), "--name", "/seed/b.bin"], None), &["upload"]);
    let out = dir.join("seed-back.bin");
    ok(run(meta, cache, &["download", "--name", "/seed/a.bin", "--out", s(&out)], None), &["download"]);
    assert_same_file(&file, &out);
    let list = String::from_utf8(ok(run(meta, cache, &["list", "--prefix", "/seed"], None), &["list"])).unwrap();
    assert!(list.starts_with("Found 2 files") && list.contains("/seed/a.bin") && list.contains("/seed/b.bin"), "{list}");

    ok(run(meta, cache, &["delete", "--name", "/seed/a.bin"], None), &["delete --name"]);
    let listed = json(meta, cache, &["list", "--prefix", "/seed"]);
    let id = listed["files"][0]["file_id"].as_u64().unwrap();
    assert_eq!(listed["files"][0]["path"], "/seed/b.bin");
    let deleted = json(meta, cache, &["delete", "--id", &id.to_string()]);
    assert_eq!(deleted["path"], "/seed/b.bin");
    assert_eq!(deleted["file_id"], id);
    fails(meta, cache, &["delete", "--id", &id.to_string()], 1, "no file has id");
    fails(meta, cache, &["delete"], 2, "--name");
    let listed = json(meta, cache, &["list", "--prefix", "/seed"]);
    assert_eq!(listed["files"].as_array().unwrap().len(), 0, "{listed}");
    // `del` is `rm`.
    ok(run(meta, cache, &["del", "-r", "/seed"], None), &["del"]);
}

fn json_shapes(meta: &str, cache: &Path, dir: &Path) {
    let file = dir.join("j.bin");
    std::fs::write(&file, test_bytes(70_000, 31)).unwrap();

    let put = json(meta, cache, &["put", "--chunk-size", "64KiB", s(&file), "/j/j.bin"]);
    assert_eq!(put["local"], s(&file));
    assert_eq!(put["remote"], "/j/j.bin");
    let f = &put["file"];
    assert_eq!(f["path"], "/j/j.bin");
    assert_eq!(f["size"], 70_000);
    assert_eq!(f["chunk_size"], 65_536);
    assert_eq!(f["replication"], 3);
    assert_eq!(f["chunk_count"], 2);
    assert!(f["file_id"].as_u64().unwrap() > 0);
    assert!(f["committed_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    // The whole file's SHA-256 is what put sent with the commit: exactly the local bytes'.
    let local_sha: String = sha2::Sha256::digest(std::fs::read(&file).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(f["sha256"].as_str(), Some(local_sha.as_str()), "{f}");
    let file_id = f["file_id"].clone();

    let back = dir.join("j-back.bin");
    let get = json(meta, cache, &["get", "/j/j.bin", s(&back)]);
    assert_eq!(get["remote"], "/j/j.bin");
    assert_eq!(get["local"], s(&back));
    assert_eq!(get["file"]["file_id"], file_id);
    assert_same_file(&file, &back);

    let stat = json(meta, cache, &["stat", "/j/j.bin"]);
    assert_eq!(stat["path"], "/j/j.bin");
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["file"]["file_id"], file_id);
    let chunks = stat["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0]["index"], 0);
    assert_eq!(chunks[0]["size"], 65_536);
    assert_eq!(chunks[1]["size"], 70_000 - 65_536);
    assert_eq!(chunks[0]["sha256"].as_str().unwrap().len(), 64);
    // One hash pass: the chunks' checksums are chained, and the last one is the file's SHA-256.
    assert_eq!((chunks[0]["checksum"].as_str(), chunks[1]["checksum"].as_str()), (Some("chained"), Some("chained-last")));
    assert_eq!(chunks[1]["sha256"].as_str(), Some(local_sha.as_str()));
    for c in chunks {
        let replicas = c["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3, "{c}");
        for r in replicas {
            assert_eq!(r["node_id"].as_str().unwrap().len(), 16, "{r}");
            assert!(r["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
            assert_eq!(r["state"], "ok");
        }
    }
    let dir_stat = json(meta, cache, &["stat", "/j"]);
    assert_eq!(dir_stat["kind"], "directory");
    assert!(dir_stat["file"].is_null() && dir_stat["chunks"].as_array().unwrap().is_empty());

    let mkdir = json(meta, cache, &["mkdir", "-p", "/j/sub/deeper"]);
    assert_eq!(mkdir["path"], "/j/sub/deeper");
    assert_eq!(mkdir["parents"], true);
    let mv = json(meta, cache, &["mv", "/j/j.bin", "/j/sub/"]);
    assert_eq!(mv["src"], "/j/j.bin");
    assert_eq!(mv["dst"], "/j/sub/j.bin");

    let ls = json(meta, cache, &["ls", "/j"]);
    assert_eq!(ls["path"], "/j");
    assert_eq!(ls["recursive"], false);
    let entries = ls["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["path"], "/j/sub");
    assert_eq!(entries[0]["name"], "sub");
    assert_eq!(entries[0]["kind"], "directory");
    assert!(entries[0]["file"].is_null());
    let ls = json(meta, cache, &["ls", "-R", "/j"]);
    let paths: Vec<&str> = ls["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/j/sub", "/j/sub/deeper", "/j/sub/j.bin"]);
    assert_eq!(ls["entries"][2]["kind"], "file");
    assert_eq!(ls["entries"][2]["file"]["size"], 70_000);
    assert!(ls["entries"][2]["modified_unix_ms"].as_u64().unwrap() > 0);

    let list = json(meta, cache, &["list", "--prefix", "/j"]);
    assert_eq!(list["prefix"], "/j");
    assert_eq!(list["files"][0]["path"], "/j/sub/j.bin");
    assert_eq!(list["files"][0]["file_id"], file_id);

    let du = json(meta, cache, &["du", "/j"]);
    assert_eq!(du["path"], "/j");
    assert_eq!(du["bytes"], 70_000);
    assert_eq!(du["files"], 1);
    assert_eq!(du["directories"], 2);
    assert_eq!(du["children"].as_array().unwrap().len(), 1);
    assert_eq!(du["children"][0]["path"], "/j/sub");
    assert_eq!(du["children"][0]["bytes"], 70_000);
    assert_eq!(du["children"][0]["directories"], 1);
    let du_s = json(meta, cache, &["du", "-s", "/j/sub/j.bin"]);
    assert_eq!(du_s["bytes"], 70_000);
    assert_eq!(du_s["files"], 1);
    assert!(du_s["children"].as_array().unwrap().is_empty());

    let status = json(meta, cache, &["status"]);
    assert!(status["leader"]["id"].as_u64().unwrap() >= 1);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["file_count"].as_u64().unwrap() >= 1);
    let nodes = status["storage_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["state"], "alive", "{n}");
        assert_eq!(n["node_id"].as_str().unwrap().len(), 16);
        assert!(n["capacity_bytes"].as_u64().unwrap() >= n["free_bytes"].as_u64().unwrap());
        assert!(n["chunk_count"].is_u64() && n["last_heartbeat_ms_ago"].is_u64(), "{n}");
    }
    let meta_status = json(meta, cache, &["admin", "meta", "status"]);
    assert_eq!(meta_status["leader"], status["leader"]);
    assert!(meta_status["applied_index"].as_u64().unwrap() >= 1);
    assert!(meta_status["last_log_index"].as_u64().unwrap() >= meta_status["applied_index"].as_u64().unwrap());
    assert!(meta_status["snapshot_index"].is_u64() && meta_status["purged_index"].is_u64());
    let members = meta_status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["role"] == "voter" && m["addr"].as_str().unwrap().starts_with("127.0.0.1:")), "{meta_status}");

    let rm = json(meta, cache, &["rm", "/j/sub/j.bin"]);
    assert_eq!(rm["path"], "/j/sub/j.bin");
    assert_eq!(rm["kind"], "file");
    assert_eq!(rm["file_id"], file_id);
    let rm = json(meta, cache, &["delete", "--name", "/j", "-r"]);
    assert_eq!(rm["kind"], "directory");
    assert!(rm["file_id"].is_null());
    assert_eq!(rm["files_deleted"], 0);
    assert_eq!(rm["dirs_deleted"], 3);
}

fn trees(meta: &str, cache: &Path, dir: &Path) {
    // 36 files over nested directories, sizes from empty to several chunks, and an empty
    // directory, which must come back too.
    let src = dir.join("tree");
    let mut n = 0u64;
    for d in ["", "a", "a/b", "a/b/c", "d e", "f/g"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        for i in 0..6 {
            n += 1;
            let len = [0, 1, 4_096, 65_536, 150_001, 7][i] as usize;
            std::fs::write(src.join(d).join(format!("file-{i}.bin")), test_bytes(len, n)).unwrap();
        }
    }
    std::fs::create_dir_all(src.join("empty/also-empty")).unwrap();

    let put = json(meta, cache, &["put", "-r", "--chunk-size", "64KiB", "--parallel", "8", s(&src), "/trees/one"]);
    assert_eq!(put["files_copied"], 36, "{put}");
    assert_eq!(put["files_failed"], 0);
    assert_eq!(put["files"].as_array().unwrap().len(), 36);
    assert!(put["files"].as_array().unwrap().iter().all(|f| f["error"].is_null()));
    assert_eq!(put["directories"], 8);
    assert_eq!(put["destination"], "/trees/one");

    let dst = dir.join("tree-back");
    let get = String::from_utf8(ok(run(meta, cache, &["get", "-r", "/trees/one", s(&dst)], None), &["get -r"])).unwrap();
    assert!(get.contains("36 files") && get.contains("0 failed"), "{get}");
    assert_eq!(tree_contents(&src), tree_contents(&dst), "the tree came back different");

    // Again, unchanged: every file is there with the same content, so nothing is sent and
    // nothing fails.
    let again = json(meta, cache, &["put", "-r", s(&src), "/trees/one"]);
    assert_eq!((again["files_already_uploaded"].as_u64(), again["files_failed"].as_u64()), (Some(36), Some(0)), "{again}");
    // One file changed locally: without --update (or --force) it alone fails, named, exit 1;
    // `sync --dry-run` names it and sends nothing; `sync` (put -r --update) sends it alone.
    std::fs::write(src.join("a/b/file-3.bin"), b"changed").unwrap();
    let out = run(meta, cache, &["put", "-r", s(&src), "/trees/one"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("already exists with other content")).count(), 1, "{stderr}");
    assert!(stderr.lines().last().unwrap().contains("1 of 36 files failed"), "{stderr}");
    let dry = String::from_utf8(ok(run(meta, cache, &["sync", "--dry-run", s(&src), "/trees/one"], None), &["sync -n"])).unwrap();
    assert_eq!(dry.lines().filter(|l| l.starts_with("would send")).count(), 1, "{dry}");
    assert!(dry.contains("file-3.bin") && dry.contains("(changed"), "{dry}");
    assert_eq!(
        ok(run(meta, cache, &["cat", "/trees/one/a/b/file-3.bin"], None), &["cat"]),
        std::fs::read(dir.join("tree-back/a/b/file-3.bin")).unwrap(),
        "a dry run sent"
    );
    let synced = json(meta, cache, &["sync", s(&src), "/trees/one"]);
    assert_eq!((synced["files_already_uploaded"].as_u64(), synced["files_failed"].as_u64()), (Some(35), Some(0)), "{synced}");
    assert_eq!(ok(run(meta, cache, &["cat", "/trees/one/a/b/file-3.bin"], None), &["cat"]), b"changed");
    let out = run(meta, cache, &["get", "-r", "/trees/one", s(&dst)], None);
    assert_eq!(out.status.code(), Some(1), "get -r onto existing files needs --force");
    let out = run(meta, cache, &["get", "-r", "--force", "/trees/one", s(&dst)], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree_contents(&src), tree_contents(&dst));

    // One local file the upload cannot take (a FIFO): it alone fails, the rest arrive. A
    // symbolic link is no failure: it is skipped, with one note.
    let partial = dir.join("partial");
    std::fs::create_dir_all(partial.join("sub")).unwrap();
    std::fs::write(partial.join("sub/good.bin"), b"good").unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), partial.join("sub/dangling")).unwrap();
    std::os::unix::fs::symlink(partial.join("sub/good.bin"), partial.join("sub/link")).unwrap();
    let fifo = std::ffi::CString::new(s(&partial.join("sub/fifo"))).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = run(meta, cache, &["--json", "put", "-r", s(&partial), "/trees/partial"], None);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_copied"], 1);
    assert_eq!(report["files_failed"], 1);
    let failed: Vec<&Value> = report["files"].as_array().unwrap().iter().filter(|f| !f["error"].is_null()).collect();
    assert!(failed[0]["local"].as_str().unwrap().ends_with("fifo"), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().filter(|l| l.contains("skipping the symbolic link")).count(), 2, "{stderr}");
    assert!(!stderr.contains("rerun"), "a refusal a rerun would repeat was called resumable: {stderr}");
    assert_eq!(ok(run(meta, cache, &["cat", "/trees/partial/sub/good.bin"], None), &["cat"]), b"good");
}

fn bad_input(meta: &str, cache: &Path, dir: &Path) {
    let file = dir.join("bad.bin");
    std::fs::write(&file, test_bytes(1000, 41)).unwrap();
    ok(run(meta, cache, &["put", s(&file), "/bad/exists.bin"], None), &["put"]);
    let before = String::from_utf8(ok(run(meta, cache, &["ls", "-R", "/"], None), &["ls"])).unwrap();

    // Remote: unknown file, collision, too few storage nodes (exit 1).
    fails(meta, cache, &["get", "/bad/absent.bin", s(&dir.join("absent.bin"))], 1, "no such file");
    fails(meta, cache, &["cat", "/bad/absent.bin"], 1, "no such file");
    fails(meta, cache, &["stat", "/bad/absent.bin"], 1, "no such file");
    fails(meta, cache, &["get", "/bad", s(&dir.join("a-dir"))], 1, "is a directory");
    fails(meta, cache, &["put", s(&file), "/bad/exists.bin"], 1, "--force");
    fails(meta, cache, &["put", "--replication", "4", s(&file), "/bad/four.bin"], 1, "needs 4 storage nodes");
    fails(meta, cache, &["mkdir", "/bad"], 1, "already exists");
    assert!(!dir.join("absent.bin").exists() && !dir.join("a-dir").exists());

    // Caller mistakes (exit 2): a local collision, bad chunk sizes, hostile remote names.
    let local = dir.join("local.bin");
    std::fs::write(&local, b"mine").unwrap();
    fails(meta, cache, &["get", "/bad/exists.bin", s(&local)], 2, "already exists");
    fails(meta, cache, &["download", "--name", "/bad/exists.bin", "--out", s(&local)], 2, "--force");
    assert_eq!(std::fs::read(&local).unwrap(), b"mine", "a refused get touched the local file");
    for size in ["1KiB", "65MiB", "0"] {
        fails(meta, cache, &["put", "--chunk-size", size, s(&file), "/bad/chunks.bin"], 2, "chunk size");
    }
    fails(meta, cache, &["put", "--chunk-size", "lots", s(&file), "/bad/chunks.bin"], 2, "chunk-size");
    fails(meta, cache, &["put", "--parallel", "0", s(&file), "/bad/p.bin"], 2, "parallel");
    let long_name = format!("/bad/{}", "n".repeat(256));
    let long_path = "/deep".repeat(1000);
    for hostile in ["/bad/../etc", "/bad//x", "", "/bad/a\u{1}b", "/bad/\u{1b}[31mred", &long_name, &long_path] {
        fails(meta, cache, &["put", s(&file), hostile], 2, "invalid remote path");
        fails(meta, cache, &["mkdir", "-p", hostile], 2, "invalid remote path");
    }
    // A NUL cannot travel in an argument; a name with one from a tree walk cannot either.
    let out = run(meta, cache, &["put", s(&file), "/bad/\u{1b}[31mred"], None);
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'), "an escape sequence reached the terminal");
    fails(meta, cache, &["put", "-", "/bad/"], 2, "standard input has no name");
    fails(meta, cache, &["put", s(&dir.join("no-such-file")), "/bad/x"], 2, "No such file");
    fails(meta, cache, &["put", "-r", s(&file), "/bad/x"], 2, "not a directory");
    fails(meta, cache, &["delete", "--id", "x"], 2, "invalid value");

    // Nothing of the above left anything behind, remotely or in the spool directory.
    let after = String::from_utf8(ok(run(meta, cache, &["ls", "-R", "/"], None), &["ls"])).unwrap();
    assert_eq!(before, after, "a failed command changed the namespace");
    assert_spool_empty(cache);
}

/// With no cluster: usage errors exit 2 at once, an unreachable cluster exits 1 within its
/// --timeout with a message naming the addresses tried.
#[test]
fn no_cluster_usage_errors_and_unreachable() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let nowhere = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let file = dir.join("f.bin");
    std::fs::write(&file, b"x").unwrap();

    for (args, expected) in [
        (vec!["put"], "(usage: dfs put"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["du", "--bogus"], "unexpected argument"),
        (vec!["ls", "--meta", "nonsense", "/"], "HOST:PORT"),
        (vec!["put", s(&file), "/a/./b"], "invalid remote path"),
        (vec!["get", "--timeout", "1ms", "/a", "x"], "at least 100ms"),
    ] {
        let started = Instant::now();
        let out = run(&nowhere, &cache, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "dfs {args:?}: {stderr}");
        assert!(stderr.contains(expected), "dfs {args:?}: {stderr}");
        assert!(stderr.starts_with("dfs: ") && stderr.lines().count() == 1, "dfs {args:?}: not one line: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "a usage error waited for the cluster");
    }

    let started = Instant::now();
    let out = run(&nowhere, &cache, &["ls", "--timeout", "2s", "/"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreachable") && stderr.contains(&nowhere), "the message names the addresses: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // The same for stdin: nothing spooled is left behind when the cluster is not there.
    let out = run(&nowhere, &cache, &["put", "--timeout", "1s", "-", "/x"], Some(b"some bytes"));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_spool_empty(&cache);

    // --json errors stay on stderr.
    let out = run(&nowhere, &cache, &["--json", "stat", "--timeout", "1s", "/x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && String::from_utf8_lossy(&out.stderr).starts_with("dfs: "));
}

/// A put that no storage node has room for (every node's reserve is larger than its disk's
/// free space) fails at once, naming space, instead of retrying until the timeout and blaming
/// the nodes.
#[test]
fn a_put_no_node_has_room_for_fails_at_once_naming_space() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let meta_port = free_port();
    let meta = format!("127.0.0.1:{meta_port}");
    let _meta = spawn(
        "meta",
        &[
            "meta".into(),
            "--id".into(),
            "1".into(),
            "--listen".into(),
            meta.clone(),
            "--data-dir".into(),
            dir.join("meta").display().to_string(),
            "--peers".into(),
            format!("1={meta}"),
        ],
        dir,
    );
    let reserve = (1u64 << 60).to_string();
    let _storage: Vec<Proc> = (1..=3).map(|i| spawn_storage(dir, i, &meta, &["--space-reserve-bytes", &reserve])).collect();
    wait_ready(&meta, 3);
    let file = dir.join("f.bin");
    std::fs::write(&file, test_bytes(100_000, 1)).unwrap();
    let started = Instant::now();
    fails(&meta, &cache, &["put", "--timeout", "120s", s(&file), "/f.bin"], 1, "no storage node has 97.7 KiB free above its 1.0 EiB reserve");
    assert!(started.elapsed() < Duration::from_secs(60), "the put waited for its timeout instead of failing at once");
    let nodes = json(&meta, &cache, &["nodes"]);
    assert!(nodes["nodes"].as_array().unwrap().iter().all(|n| n["usable_bytes"] == 0), "{nodes}");
}

/// Whether a trash bucket name is a minute in UTC (`2026-12-06T09:31:00Z`, maybe `.N`).
fn dfs_core_bucket(name: &str) -> bool {
    let stamp = name.split_once("Z.").map(|(s, _)| s).unwrap_or(name.trim_end_matches('Z'));
    stamp.len() == 19 && stamp.ends_with(":00") && stamp.as_bytes()[10] == b'T'
}
