//! The first end-to-end simulation: files of awkward sizes stored and read back through a
//! 3 + 3 cluster, across the loss of the metadata leader.
//!
//! Checkers: every download is byte-identical to what was uploaded (the oracle); no two
//! metadata nodes lead one term; the killed leader, restarted on its disk, and the survivors
//! converge on one namespace that lists exactly the oracle's files; the same seed gives the
//! same trace, and different seeds differ.

#![cfg(madsim)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dfs_core::client::{ClientConfig, NoProgress};
use dfs_core::env::Disk;
use dfs_io_sim::SimDisk;
use dfs_sim_tests::cluster::{Cluster, ClusterConfig};
use dfs_sim_tests::seeds::{self, SimTest};
use dfs_sim_tests::trace;
use madsim::rand::Rng;

const CHUNK: u64 = 64 * 1024;

/// Sizes that hit every edge of the chunking: empty, one byte, exactly one chunk, and several
/// chunks plus a tail.
fn sizes() -> Vec<u64> {
    vec![0, 1, CHUNK, 3 * CHUNK + 123]
}

async fn write_local(disk: &SimDisk, path: &Path, size: u64) -> Bytes {
    let mut data = vec![0u8; size as usize];
    madsim::rand::thread_rng().fill(&mut data[..]);
    let data = Bytes::from(data);
    disk.create_dir_all(path.parent().unwrap()).await.unwrap();
    disk.write_file(path, data.clone()).await.unwrap();
    data
}

async fn scenario() {
    let cluster = Cluster::start(ClusterConfig::default());
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    trace::event(format!("leader is meta-{leader}"));
    cluster.wait_for_storage(3, Duration::from_secs(30)).await;

    let disk = SimDisk::new(1 << 30);
    let config = ClientConfig { chunk_size: CHUNK, ..ClientConfig::default() };
    let client = std::sync::Arc::new(cluster.client(config, &disk));
    let mut oracle: BTreeMap<String, Bytes> = BTreeMap::new();

    // Round 1: upload and read back.
    upload_round(&cluster, &client, &disk, &mut oracle, "round1", sizes()).await;
    check_downloads(&cluster, &client, &disk, &oracle, "before failover").await;

    // Kill the metadata leader, then upload and download again.
    let old_leader = cluster.leader().expect("a leader");
    cluster.kill_meta(old_leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    assert_ne!(new_leader, old_leader, "a killed node cannot lead");
    trace::event(format!("new leader is meta-{new_leader}"));

    let round2 = sizes().into_iter().enumerate().map(|(i, size)| size + i as u64).collect(); // other sizes than round 1
    upload_round(&cluster, &client, &disk, &mut oracle, "round2", round2).await;
    check_downloads(&cluster, &client, &disk, &oracle, "after failover").await;

    // The namespace lists exactly the oracle's files, and the survivors agree on it.
    let c = client.clone();
    let listed = cluster.on_client(async move { c.list("/").await }).await.expect("list");
    let listed: Vec<(String, u64)> = listed.into_iter().map(|f| (f.path, f.size)).collect();
    let expected: Vec<(String, u64)> = oracle.iter().map(|(p, d)| (p.clone(), d.len() as u64)).collect();
    assert_eq!(listed, expected);

    // The killed leader comes back on its own disk and catches up: every member, not only the
    // survivors, must hold the namespace the files are in.
    cluster.restart_meta(old_leader);
    cluster.wait_all_meta_converged(Duration::from_secs(60)).await;
    let back = cluster.meta_server(old_leader).expect("the restarted leader is up");
    let mut held: Vec<String> = back.local_state().namespace.files().map(|f| f.path.to_string()).collect();
    held.sort();
    let expected: Vec<String> = oracle.keys().cloned().collect();
    assert_eq!(held, expected, "meta-{old_leader}, restarted, does not hold the namespace");
    trace::event(format!("converged, the old leader too; leaders by term: {:?}", cluster.observed_leaders()));
}

type SimClient = std::sync::Arc<dfs_core::client::DfsClient<dfs_io_sim::SimEnv>>;

/// Uploads a file of each size under `/<round>/`, recording what was sent in the oracle.
async fn upload_round(cluster: &Cluster, client: &SimClient, disk: &SimDisk, oracle: &mut BTreeMap<String, Bytes>, round: &str, sizes: Vec<u64>) {
    for (i, size) in sizes.into_iter().enumerate() {
        let (local, remote) = (PathBuf::from(format!("/in/{round}-{i}")), format!("/{round}/file-{i}"));
        let data = write_local(disk, &local, size).await;
        let (c, r) = (client.clone(), remote.clone());
        let info = cluster.on_client(async move { c.put(&local, &r, false, &NoProgress).await }).await.unwrap_or_else(|e| panic!("upload {remote}: {e}"));
        assert_eq!(info.size, size);
        trace::event(format!("put {remote} size={size} chunks={}", info.chunk_count));
        oracle.insert(remote, data);
    }
}

async fn check_downloads(cluster: &Cluster, client: &SimClient, disk: &SimDisk, oracle: &BTreeMap<String, Bytes>, when: &str) {
    for (i, (remote, expected)) in oracle.iter().enumerate() {
        let out = PathBuf::from(format!("/out/{}-{i}", when.replace(' ', "-")));
        disk.create_dir_all(out.parent().unwrap()).await.unwrap();
        let (c, r, o) = (client.clone(), remote.clone(), out.clone());
        cluster.on_client(async move { c.get(&r, &o, &NoProgress).await }).await.unwrap_or_else(|e| panic!("get {remote} {when}: {e}"));
        let got = disk.read_file(&out).await.unwrap();
        assert!(got == *expected, "{remote} downloaded {when} differs from what was uploaded ({} vs {} bytes)", got.len(), expected.len());
    }
    trace::event(format!("{} downloads byte-identical {when}", oracle.len()));
}

#[test]
fn files_survive_metadata_leader_loss() {
    seeds::run_all(SimTest { file: "first_file", name: "files_survive_metadata_leader_loss" }, scenario);
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    seeds::check_determinism(SimTest { file: "first_file", name: "same_seed_same_trace_different_seed_different_trace" }, scenario);
}
