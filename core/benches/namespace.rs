//! `cargo bench -p dfs-core --bench namespace`: the namespace at a million files. Prints how
//! long one page of a huge directory takes to list (server-side pagination), how long a
//! snapshot of it takes to write and to load, and its size. Figures, not assertions.

use std::time::Instant;

use dfs_core::namespace::{Command, Namespace, Outcome};

fn main() {
    let files: u64 = std::env::var("DFS_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut ns = Namespace::default();
    let started = Instant::now();
    for i in 0..files {
        let create = Command::CreateFile {
            path: format!("/big/f{i:08}"),
            size: 0,
            chunk_size: 64 * 1024,
            replication: 3,
            overwrite: false,
            expect_file_id: None,
            request_id: None,
            unix_ms: 1,
            attrs: Default::default(),
        };
        let Ok(Outcome::FileCreated(id)) = ns.apply(create) else { panic!("create {i}") };
        ns.apply(Command::CommitFile { file: id, unix_ms: 2, sha256: None, chunks: vec![] }).expect("commit");
    }
    let build = started.elapsed();
    println!(
        "namespace: {files} files in one directory, built in {:.1} s ({:.0} creates+commits/s applied)",
        build.as_secs_f64(),
        files as f64 / build.as_secs_f64()
    );

    for (what, start_after) in [("first page", String::new()), ("middle page", format!("f{:08}", files / 2)), ("last page", format!("f{:08}", files - 500))] {
        let t = Instant::now();
        let rounds = 100;
        let mut listed = 0;
        for _ in 0..rounds {
            let (page, _) = ns.list_dir("/big", &start_after, 1000).expect("list");
            listed = page.len();
        }
        println!("list_dir /big, {what} of {listed} entries: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / rounds as f64);
    }

    let t = Instant::now();
    let bytes = serde_json::to_vec(&ns).expect("serialize");
    let write = t.elapsed();
    let t = Instant::now();
    let back: Namespace = serde_json::from_slice(&bytes).expect("deserialize");
    let load = t.elapsed();
    assert_eq!(back.file_count(), files);
    println!(
        "snapshot: {:.1} MiB ({:.0} bytes per file), serialized in {:.2} s, loaded in {:.2} s",
        bytes.len() as f64 / (1 << 20) as f64,
        bytes.len() as f64 / files as f64,
        write.as_secs_f64(),
        load.as_secs_f64()
    );
}
