//! Uploads and downloads while storage nodes lose power mid-stream and restart, are cut off
//! from everyone (both ways or one way), and silently corrupt stored chunks on fewer than RF
//! replicas.
//!
//! Phase 1 (faults on): three clients put files of awkward sizes and read back files that
//! were acknowledged, while one storage node at a time is killed or partitioned and bits flip
//! in stored chunks (at most one replica per chunk), the network turns slow and lossy for a
//! while, and core's fault sites fire as the seed's
//! plan says (`faults`: delays, disk write errors, lost forwards, reads and heartbeats).
//! Phase 2 (faults off, every node up):
//! every acknowledged upload is read back.
//!
//! Checkers: no download ever returns wrong bytes (an error is allowed only in phase 1);
//! every acknowledged upload downloads byte-identical in phase 2; no chunk file on any disk
//! is partial (every one decodes whole, except those whose bits we flipped).

#![cfg(madsim)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dfs_core::client::{ClientConfig, NoProgress};
use dfs_core::env::Disk;
use dfs_io_sim::SimDisk;
use dfs_sim_tests::cluster::{Cluster, ClusterConfig, Cut};
use dfs_sim_tests::seeds::{self, SimTest};
use dfs_sim_tests::trace;
use madsim::rand::Rng;

const CHUNK: u64 = 64 * 1024;
const STORAGE_NODES: u64 = 5;
const CLIENTS: u64 = 3;
/// How long phase 1 runs, in simulated time.
const FAULT_PHASE: Duration = Duration::from_secs(30);
/// Seeds `cargo test` runs.
const CI_SEEDS: u64 = 16;

type Oracle = Arc<Mutex<BTreeMap<String, Bytes>>>;
type SimClient = Arc<dfs_core::client::DfsClient<dfs_io_sim::SimEnv>>;

fn random_size() -> u64 {
    let mut rng = madsim::rand::thread_rng();
    match rng.gen_range(0..6) {
        0 => 0,
        1 => rng.gen_range(1..100),
        2 => CHUNK,
        _ => rng.gen_range(1..5) * CHUNK + rng.gen_range(0..CHUNK),
    }
}

async fn get_checked(client: &SimClient, disk: &SimDisk, remote: &str, expected: &Bytes, out: PathBuf) -> Result<(), String> {
    match client.get(remote, &out, &NoProgress).await {
        Ok(info) => {
            let got = disk.read_file(&out).await.map_err(|e| e.to_string())?;
            assert!(
                got == *expected && info.size == expected.len() as u64,
                "WRONG BYTES: {remote} downloaded {} bytes that differ from the {} uploaded",
                got.len(),
                expected.len()
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One client: puts new files and reads back acknowledged ones until `end`.
async fn client_loop(k: u64, client: SimClient, disk: SimDisk, oracle: Oracle, end: madsim::time::Instant) -> (u64, u64, u64) {
    let (mut puts, mut gets, mut errors) = (0, 0, 0);
    let mut i = 0;
    while madsim::time::Instant::now() < end {
        i += 1;
        // Think time: the faults, not the volume of work, are what this scenario is about.
        let think = madsim::rand::thread_rng().gen_range(0..600);
        madsim::time::sleep(Duration::from_millis(think)).await;
        let size = random_size();
        let mut data = vec![0u8; size as usize];
        madsim::rand::thread_rng().fill(&mut data[..]);
        let data = Bytes::from(data);
        let local = PathBuf::from(format!("/in/c{k}/f{i}"));
        disk.create_dir_all(local.parent().unwrap()).await.unwrap();
        disk.write_file(&local, data.clone()).await.unwrap();
        let remote = format!("/c{k}/f{i}");
        match client.put(&local, &remote, false, &NoProgress).await {
            Ok(info) => {
                assert_eq!(info.size, size);
                trace::event(format!("client {k}: put {remote} size={size} ok"));
                oracle.lock().unwrap().insert(remote, data);
                puts += 1;
            }
            Err(e) => {
                trace::event(format!("client {k}: put {remote} failed: {e}"));
                errors += 1;
            }
        }
        let pick = {
            let o = oracle.lock().unwrap();
            (!o.is_empty()).then(|| {
                let n = madsim::rand::thread_rng().gen_range(0..o.len());
                o.iter().nth(n).map(|(p, d)| (p.clone(), d.clone())).unwrap()
            })
        };
        if let Some((remote, expected)) = pick {
            let out = PathBuf::from(format!("/out/c{k}/g{i}"));
            disk.create_dir_all(out.parent().unwrap()).await.unwrap();
            match get_checked(&client, &disk, &remote, &expected, out).await {
                Ok(()) => gets += 1,
                Err(e) => {
                    trace::event(format!("client {k}: get {remote} failed: {e}"));
                    errors += 1;
                }
            }
        }
    }
    (puts, gets, errors)
}

/// Faults, one storage node at a time, until `end`; returns the chunk files whose bits it
/// flipped.
async fn fault_loop(cluster: &Cluster, end: madsim::time::Instant) -> BTreeSet<PathBuf> {
    let mut flipped: BTreeSet<PathBuf> = BTreeSet::new();
    let mut flipped_chunks: BTreeSet<String> = BTreeSet::new();
    while madsim::time::Instant::now() < end {
        let (pause, victim, kind, hold) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_range(500..3000), rng.gen_range(1..=STORAGE_NODES), rng.gen_range(0..7), rng.gen_range(300..5000))
        };
        madsim::time::sleep(Duration::from_millis(pause)).await;
        match kind {
            0 | 1 => {
                cluster.kill_storage(victim);
                madsim::time::sleep(Duration::from_millis(hold)).await;
                cluster.restart_storage(victim);
            }
            2 | 3 => {
                let cut = [Cut::Both, Cut::Outgoing, Cut::Incoming][madsim::rand::thread_rng().gen_range(0..3)];
                cluster.partition_storage(victim, cut);
                madsim::time::sleep(Duration::from_millis(hold)).await;
                cluster.heal_storage(victim);
            }
            6 => {
                let (latency_ms, loss) = {
                    let mut rng = madsim::rand::thread_rng();
                    (rng.gen_range(10..200), rng.gen_range(0.0..0.05))
                };
                cluster.degrade_network(Duration::from_millis(1)..Duration::from_millis(latency_ms), loss);
                madsim::time::sleep(Duration::from_millis(hold)).await;
                cluster.restore_network();
            }
            _ => {
                // A bit flip on one replica of a chunk no other flip has touched.
                let files = cluster.chunk_files(victim).await;
                let candidates: Vec<&PathBuf> = files.iter().filter(|f| !flipped_chunks.contains(f.file_name().unwrap().to_str().unwrap())).collect();
                if candidates.is_empty() {
                    continue;
                }
                let (file, byte, bit) = {
                    let mut rng = madsim::rand::thread_rng();
                    (candidates[rng.gen_range(0..candidates.len())].clone(), rng.gen_range(0..usize::MAX), rng.gen_range(0..8u8))
                };
                if cluster.storage[victim as usize - 1].disk.flip_bit(&file, byte, bit) {
                    trace::event(format!("flip a bit of {} on storage-{victim}", file.display()));
                    flipped_chunks.insert(file.file_name().unwrap().to_str().unwrap().to_string());
                    flipped.insert(file);
                }
            }
        }
    }
    flipped
}

async fn scenario() {
    let cluster = Arc::new(Cluster::start(ClusterConfig { storage_nodes: STORAGE_NODES, ..ClusterConfig::default() }));
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(STORAGE_NODES as usize, Duration::from_secs(30)).await;

    let disk = SimDisk::new(1 << 30);
    // A short transfer timeout: a partition blackholes a stream until it expires.
    let config = ClientConfig { chunk_size: CHUNK, transfer_timeout: Duration::from_secs(5), ..ClientConfig::default() };
    let client: SimClient = Arc::new(cluster.client(config, &disk));
    let oracle: Oracle = Arc::default();
    let end = madsim::time::Instant::now() + FAULT_PHASE;

    let clients: Vec<_> = (1..=CLIENTS).map(|k| cluster.spawn_on_client(client_loop(k, client.clone(), disk.clone(), oracle.clone(), end))).collect();
    dfs_sim_tests::faults::enable();
    let flipped = fault_loop(&cluster, end).await;
    let mut totals = (0, 0, 0);
    for c in clients {
        let (p, g, e) = c.await.expect("client task");
        totals = (totals.0 + p, totals.1 + g, totals.2 + e);
    }
    dfs_sim_tests::faults::disable();
    trace::event(format!("phase 1 over: {} puts, {} gets acknowledged, {} errors; {} bits flipped", totals.0, totals.1, totals.2, flipped.len()));
    assert!(totals.0 > 0, "no upload succeeded in phase 1");

    // Phase 2: no faults, every node up; every acknowledged file reads back.
    cluster.wait_for_storage(STORAGE_NODES as usize, Duration::from_secs(60)).await;
    let acknowledged: Vec<(String, Bytes)> = oracle.lock().unwrap().iter().map(|(p, d)| (p.clone(), d.clone())).collect();
    for (i, (remote, expected)) in acknowledged.iter().enumerate() {
        let (c, d, r, e) = (client.clone(), disk.clone(), remote.clone(), expected.clone());
        let out = PathBuf::from(format!("/out/final/{i}"));
        disk.create_dir_all(out.parent().unwrap()).await.unwrap();
        let result = cluster.on_client(async move { get_checked(&c, &d, &r, &e, out).await }).await;
        if let Err(e) = result {
            panic!("LOST: acknowledged {remote} does not download with every node up: {e}");
        }
    }
    trace::event(format!("phase 2: {} acknowledged files byte-identical", acknowledged.len()));

    // No partial chunk anywhere: every chunk file decodes whole, except the flipped ones.
    for index in 1..=STORAGE_NODES {
        let disk = &cluster.storage[index as usize - 1].disk;
        for file in cluster.chunk_files(index).await {
            if flipped.contains(&file) {
                continue;
            }
            // The cluster is live: a surplus or garbage replica listed a moment ago may be
            // deleted before it is read. Gone is fine; only a visible partial chunk is not.
            let bytes = match disk.read_file(&file).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{} on storage-{index}: {e}", file.display()),
            };
            if let Err(e) = dfs_core::chunk_store::decode_file(bytes) {
                panic!("PARTIAL: {} on storage-{index} does not decode: {e}", file.display());
            }
        }
    }
}

#[test]
fn transfers_survive_storage_crashes_partitions_and_bit_flips() {
    // ~6 s of wall time per seed: fewer seeds than the default in CI; MADSIM_TEST_NUM for more.
    seeds::run_seeds(SimTest { file: "transfers", name: "transfers_survive_storage_crashes_partitions_and_bit_flips" }, CI_SEEDS, scenario);
}
