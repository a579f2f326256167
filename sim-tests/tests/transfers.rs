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
//!
//! `an_interrupted_tree_upload_resumes`: a `put -r` (`DfsClient::put_tree`, the walk and the
//! resume manifest on the simulated disk) stopped at a seeded moment, sometimes with the
//! client's disk losing power, one committed file then changed; the rerun skips exactly what
//! the manifest noted and is unchanged, and the remote tree ends equal to the local one.

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

// ---- an interrupted `put -r`, resumed ---------------------------------------------------

/// Where the simulated client keeps its resume manifests (`dfs`'s `~/.local/state/dfs/uploads`).
const RESUME_DIR: &str = "/state/uploads";
/// Files in the local tree: enough that an interruption leaves some up and some not.
const TREE_FILES: usize = 40;

/// Counts what `put_tree` said.
#[derive(Default)]
struct Heard {
    resumed: Mutex<Option<(usize, usize)>>,
}

impl dfs_core::client::tree::TreeObserver for Heard {
    fn resuming(&self, skipped: usize, files: usize) {
        *self.resumed.lock().unwrap() = Some((skipped, files));
    }
    fn file_progress(&self) -> Box<dyn dfs_core::client::Progress + '_> {
        Box::new(NoProgress)
    }
}

/// A local tree of `TREE_FILES` files in nested directories (sizes from empty to several
/// chunks) and one empty directory, made durable; what each remote path must hold.
async fn write_tree(disk: &SimDisk, root: &std::path::Path) -> BTreeMap<String, Bytes> {
    let mut expected = BTreeMap::new();
    disk.create_dir_all(&root.join("empty")).await.unwrap();
    for i in 0..TREE_FILES {
        let rel = format!("d{}/s{}/f{i}", i % 3, i % 2);
        let size = match i % 4 {
            0 => 0,
            1 => madsim::rand::thread_rng().gen_range(1..CHUNK),
            _ => madsim::rand::thread_rng().gen_range(1..4 * CHUNK),
        };
        let mut data = vec![0u8; size as usize];
        madsim::rand::thread_rng().fill(&mut data[..]);
        let path = root.join(&rel);
        disk.create_dir_all(path.parent().unwrap()).await.unwrap();
        disk.write_file(&path, Bytes::from(data.clone())).await.unwrap();
        expected.insert(format!("/tree/{rel}"), Bytes::from(data));
    }
    disk.sync_all(root).await.unwrap();
    expected
}

/// `put -r` of a local tree is stopped at a random moment (its task dropped, as a killed
/// client stops), sometimes with the client's disk losing power too (the manifest is
/// written without fsync); one committed file is then changed locally; the rerun must skip
/// exactly the files the manifest notes and are unchanged, replace the changed one, send
/// the rest, and leave the remote tree equal to the local one.
async fn tree_scenario() {
    let cluster = Arc::new(Cluster::start(ClusterConfig::default()));
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(3, Duration::from_secs(30)).await;
    let disk = SimDisk::new(1 << 30);
    let config = ClientConfig { chunk_size: CHUNK, resume_dir: Some(PathBuf::from(RESUME_DIR)), ..ClientConfig::default() };
    let client: SimClient = Arc::new(cluster.client(config.clone(), &disk));
    let root = PathBuf::from("/home/u/tree");
    let mut expected = write_tree(&disk, &root).await;
    let flags = dfs_core::client::tree::TreeFlags::default();

    // The first run, stopped after a seeded while.
    let (c, r) = (client.clone(), root.clone());
    let first = cluster.spawn_on_client(async move { c.put_tree(&r, "/tree", 4, flags, &Heard::default()).await.map(|_| ()) });
    let stop_after = Duration::from_millis(madsim::rand::thread_rng().gen_range(50..1500));
    madsim::time::sleep(stop_after).await;
    first.abort();
    // Requests the stopped run had sent still land (a killed client's last packets are on
    // the wire): simulated time for them to, before looking at what is up.
    madsim::time::sleep(Duration::from_secs(5)).await;
    let power_cut = madsim::rand::thread_rng().gen_bool(0.3);
    if power_cut {
        disk.crash();
    }
    let manifest_dir = PathBuf::from(RESUME_DIR);
    let manifests: Vec<String> = disk.list_dir(&manifest_dir).await.unwrap().into_iter().filter(|n| n.ends_with(".tree")).collect();
    let key = dfs_core::client::tree_resume::TreeKey {
        local_root: root.display().to_string(),
        remote_prefix: "/tree".into(),
        cluster: cluster.meta_addrs().join(","),
        chunk_size: CHUNK,
        replication: config.replication,
        overwrite: false,
    };
    let noted = match manifests.as_slice() {
        [] => None,
        [one] => disk.read_file(&manifest_dir.join(one)).await.ok().and_then(|b| dfs_core::client::tree_resume::parse(&b, &key)),
        more => panic!("one tree upload, {} manifests: {more:?}", more.len()),
    };
    let c = client.clone();
    let up_before: BTreeMap<String, u64> =
        cluster.on_client(async move { c.list("/tree").await }).await.map(|l| l.into_iter().map(|f| (f.path, f.file_id)).collect()).unwrap_or_default();
    let noted_count = noted.as_ref().map_or(0, |n| n.len());
    assert!(noted_count <= up_before.len(), "the manifest notes {noted_count} files, {} are up", up_before.len());
    trace::event(format!("put -r stopped after {stop_after:?} (power cut: {power_cut}): {} files up, {noted_count} noted", up_before.len()));

    // One noted file changes locally: the rerun must send it again, not skip it. (A file
    // committed but not noted, changed, is refused without --update: not this test's.)
    let mut changed = None;
    if let Some(noted) = &noted {
        for (remote, file_id) in &up_before {
            let local = root.join(remote.strip_prefix("/tree/").unwrap());
            let probe = dfs_core::client::tree_resume::RemoteFile { file_id: *file_id, size: 0, sha256: None };
            if noted.decide(remote, disk.stamp(&local).await.unwrap(), Some(&probe)) == dfs_core::client::tree_resume::Decision::Skip {
                let data = Bytes::from_static(b"changed");
                disk.write_file(&local, data.clone()).await.unwrap();
                expected.insert(remote.clone(), data);
                changed = Some(remote.clone());
                break;
            }
        }
    }
    let skips_expected = noted_count - usize::from(changed.is_some());

    // The rerun: every file up, the noted unchanged ones skipped without being read.
    let heard = Arc::new(Heard::default());
    let (c, r, h) = (client.clone(), root.clone(), heard.clone());
    let report = cluster.on_client(async move { c.put_tree(&r, "/tree", 4, flags, &*h).await }).await.unwrap_or_else(|e| panic!("rerun of put -r: {e}"));
    for f in &report.files {
        assert!(f.error.is_none(), "rerun: {} -> {}: {:?}", f.local.display(), f.remote, f.error);
    }
    let skipped = heard.resumed.lock().unwrap().map_or(0, |(skipped, _)| skipped);
    assert_eq!(skipped, skips_expected, "the rerun skipped {skipped} files; the manifest noted {noted_count}, one changed: {changed:?}");
    let already = report.files.iter().filter(|f| f.already_uploaded).count();
    assert!(already >= up_before.len() - usize::from(changed.is_some()), "{already} files counted as up, {} were", up_before.len());
    assert!(disk.list_dir(&manifest_dir).await.unwrap().iter().all(|n| !n.ends_with(".tree")), "the manifest outlived a complete upload");

    // The remote tree is the local one, byte for byte, the empty directory included.
    let c = client.clone();
    let listed: Vec<String> = cluster.on_client(async move { c.list("/tree").await }).await.expect("list").into_iter().map(|f| f.path).collect();
    assert_eq!(listed, expected.keys().cloned().collect::<Vec<_>>());
    for (i, (remote, data)) in expected.iter().enumerate() {
        let (c, d, r, e) = (client.clone(), disk.clone(), remote.clone(), data.clone());
        let out = PathBuf::from(format!("/out/tree/{i}"));
        disk.create_dir_all(out.parent().unwrap()).await.unwrap();
        cluster.on_client(async move { get_checked(&c, &d, &r, &e, out).await }).await.unwrap_or_else(|e| panic!("{remote}: {e}"));
    }
    let c = client.clone();
    let empty = cluster.on_client(async move { c.entry("/tree/empty").await }).await.expect("entry");
    assert!(empty.is_some_and(|e| e.kind == dfs_core::proto::EntryKind::Directory as i32), "the empty directory was not made");
    trace::event(format!("rerun: {skipped} skipped, {already} already up, {} files byte-identical", expected.len()));
}

#[test]
fn an_interrupted_tree_upload_resumes() {
    seeds::run_seeds(SimTest { file: "transfers", name: "an_interrupted_tree_upload_resumes" }, CI_SEEDS, tree_scenario);
}
