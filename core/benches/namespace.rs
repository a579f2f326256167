//! `cargo bench -p dfs-core --bench namespace`: the leader's namespace at a million files
//! (`DFS_BENCH_FILES=10000000` for ten million). Each file is what the memory target counts:
//! 4 MiB, one chunk, three replicas, at a path of a realistic length in a tree of directories
//! of 1,000 files. Prints the heap the namespace holds per file (the allocator's own count of
//! live bytes, and the process's resident memory beside it), how long a page of a directory
//! takes to list, and how long a snapshot takes to write and to load, and its size, in the
//! binary form a metadata node writes and in the JSON form earlier versions wrote. Figures,
//! not assertions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dfs_core::ids::{Sha256Digest, StorageNodeId};
use dfs_core::meta::config::SNAPSHOT_FILES_PER_ENTRY;
use dfs_core::namespace::{ChunkRecord, Command, Namespace, Outcome};

/// The system allocator, counting the bytes it has handed out and not yet got back: what the
/// program asked for, without the allocator's own overhead (resident memory shows that).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident memory of this process (VmRSS), in bytes; 0 where /proc has none.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kib| kib * 1024)
}

const FILES_PER_DIR: u64 = 1000;
const FILE_BYTES: u64 = 4 << 20;

/// File `i`'s path: 47 bytes, in a directory of `FILES_PER_DIR` files two levels down.
fn path_of(i: u64) -> String {
    let dir = i / FILES_PER_DIR;
    format!("/projects/p{:04}/batch-{:05}/part-{:06}.parquet", dir / 1000, dir % 1000 * 7, i % FILES_PER_DIR)
}

/// Creates and commits file `i` (one 4 MiB chunk on three replicas), as the log would: each
/// command is shown to `log` before it is applied.
fn add_file(ns: &mut Namespace, i: u64, mut log: impl FnMut(&Command)) {
    let create = Command::CreateFile {
        path: path_of(i),
        size: FILE_BYTES,
        chunk_size: FILE_BYTES,
        replication: 3,
        overwrite: false,
        expect_file_id: None,
        request_id: None,
        unix_ms: 1,
        attrs: Default::default(),
    };
    log(&create);
    let Ok(Outcome::FileCreated(id)) = ns.apply(create) else { panic!("create {i}") };
    let mut sha = [0u8; 32];
    sha[..8].copy_from_slice(&i.to_le_bytes());
    let chunk = ChunkRecord {
        index: 0,
        size: FILE_BYTES,
        sha256: Sha256Digest(sha),
        replicas: [StorageNodeId(1), StorageNodeId(2), StorageNodeId(3)].into_iter().collect(),
        sum: Default::default(),
    };
    let commit = Command::CommitFile { file: id, unix_ms: 2, sha256: Some(Sha256Digest(sha)), chunks: vec![chunk], object: None };
    log(&commit);
    ns.apply(commit).expect("commit");
}

fn main() {
    let files: u64 = std::env::var("DFS_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000).max(FILES_PER_DIR);
    let base_live = live_bytes();
    let base_rss = rss_bytes();
    let mut ns = Namespace::default();
    for node in 1..=3 {
        let register = Command::RegisterStorageNode { node: StorageNodeId(node), addr: format!("10.0.0.{node}:7001"), capacity_bytes: 1 << 40, rack: None };
        ns.apply(register).expect("register");
    }
    let started = Instant::now();
    for i in 0..files {
        add_file(&mut ns, i, |_| {});
    }
    let build = started.elapsed();
    let (live, rss) = (live_bytes() - base_live, rss_bytes().saturating_sub(base_rss));
    println!(
        "namespace: {files} files of one 4 MiB chunk on 3 replicas, {} directories of {FILES_PER_DIR}, paths of {} bytes; built in {:.1} s ({:.0} creates+commits/s applied)",
        files / FILES_PER_DIR,
        path_of(0).len(),
        build.as_secs_f64(),
        files as f64 / build.as_secs_f64()
    );
    println!(
        "memory per file: {:.0} bytes live on the heap (allocator's count), {:.0} bytes resident (VmRSS growth)",
        live as f64 / files as f64,
        rss as f64 / files as f64
    );

    let dir = path_of(files / 2).rsplit_once('/').map(|(d, _)| d.to_string()).expect("a directory");
    for (what, start_after) in [("first page", String::new()), ("last page", format!("part-{:06}.parquet", FILES_PER_DIR - 100))] {
        let t = Instant::now();
        let rounds = 100;
        let mut listed = 0;
        for _ in 0..rounds {
            let (page, _) = ns.list_dir(&dir, &start_after, 1000).expect("list");
            listed = page.len();
        }
        println!("list_dir {dir}, {what} of {listed} entries: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / rounds as f64);
    }

    // What taking a snapshot holds the state's lock for, if it encodes from a copy.
    let t = Instant::now();
    let copy = ns.clone();
    let copied = t.elapsed();
    drop(copy);
    println!("copy of the namespace (what a snapshot would hold the state's lock for): {:.2} s", copied.as_secs_f64());

    // The snapshot form (`Namespace::write_snapshot`), and the JSON form earlier versions
    // wrote, side by side.
    let t = Instant::now();
    let mut bytes = Vec::new();
    ns.write_snapshot(&mut bytes);
    let write = t.elapsed();
    let t = Instant::now();
    let json = serde_json::to_vec(&ns).expect("serialize");
    let json_write = t.elapsed();
    // Loaded into a fresh process would hold only the loaded copy: drop the built one first,
    // so ten million files fit the machine.
    drop(ns);
    let before_load = live_bytes();
    let t = Instant::now();
    // As a metadata node loads a snapshot (`state_machine::decode`).
    let mut back = Namespace::read_snapshot(&bytes).expect("read the snapshot");
    let load = t.elapsed();
    let loaded_live = live_bytes() - before_load;
    assert_eq!(back.file_count(), files);
    // What a restart re-applies after loading the snapshot, at most: a snapshot is put off
    // until `files / SNAPSHOT_FILES_PER_ENTRY` entries have been applied since the last. Each
    // entry here is one command (under load the log groups several per entry), decoded from
    // its JSON as the log store does, then applied to the loaded namespace.
    let entries = (files / SNAPSHOT_FILES_PER_ENTRY).max(2);
    let mut log = Vec::with_capacity(entries as usize);
    let mut copy = back.clone();
    for i in files..files + entries / 2 {
        add_file(&mut copy, i, |command| log.push(serde_json::to_vec(command).expect("a command serializes")));
    }
    drop(copy);
    let t = Instant::now();
    for entry in &log {
        let command: Command = serde_json::from_slice(entry).expect("a command deserializes");
        back.apply(command).expect("re-applied");
    }
    let replay = t.elapsed();
    drop((back, log));
    let t = Instant::now();
    let mut back: Namespace = serde_json::from_slice(&json).expect("deserialize");
    back.shrink_to_fit();
    let json_load = t.elapsed();
    assert_eq!(back.file_count(), files);
    for (form, len, write, load) in [("binary", bytes.len(), write, load), ("JSON (before version 2)", json.len(), json_write, json_load)] {
        println!(
            "snapshot, {form}: {:.1} MiB ({:.0} bytes per file), written in {:.2} s, loaded in {:.2} s",
            len as f64 / (1 << 20) as f64,
            len as f64 / files as f64,
            write.as_secs_f64(),
            load.as_secs_f64(),
        );
    }
    println!("memory per file once loaded from a snapshot: {:.0} bytes live", loaded_live as f64 / files as f64);
    println!(
        "re-applying the longest log a restart finds at this size ({entries} entries, one command each, decoded from JSON): {:.2} s",
        replay.as_secs_f64()
    );
}
