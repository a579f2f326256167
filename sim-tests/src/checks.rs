//! Cluster-wide checkers shared by scenarios: where chunks are on the disks, whether every
//! listed chunk has its replicas, and whether anything is left over.
//!
//! What they promise: each looks at the harness's own view (every storage disk, read directly)
//! against what metadata says (`stat` through a client), so that a replica metadata lists but
//! no disk holds, a copy no file lists, or a damaged copy counted as good is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dfs_core::chain::{checksum, Chain};
use dfs_core::client::DfsClient;
use dfs_core::env::Disk;
use dfs_core::ids::ChunkId;
use dfs_io_sim::SimEnv;

use crate::cluster::Cluster;

/// Chunk id → the storage indexes (1-based) whose disks hold a file of it.
pub async fn chunks_on_disks(cluster: &Cluster) -> BTreeMap<ChunkId, BTreeSet<u64>> {
    let mut held: BTreeMap<ChunkId, BTreeSet<u64>> = BTreeMap::new();
    for index in 1..=cluster.storage.len() as u64 {
        for file in cluster.chunk_files(index).await {
            let name = file.file_name().unwrap().to_str().unwrap();
            let id = ChunkId::from_hex(name.trim_end_matches(".chunk")).expect("chunk files are named by id");
            held.entry(id).or_default().insert(index);
        }
    }
    held
}

/// Storage node id → its index, for the nodes that are up.
pub fn storage_indexes(cluster: &Cluster) -> BTreeMap<u64, u64> {
    (1..=cluster.storage.len() as u64).filter_map(|i| cluster.storage_node(i).map(|n| (n.id().0, i))).collect()
}

/// What is wrong with the replicas of the files at `paths` now, if anything: a chunk listed on
/// fewer (or, with `exact`, other) than RF live nodes holding it; with `exact`, also a copy on
/// a disk that no file lists there (an orphan or a surplus), and a listed copy that does not
/// decode whole. Copies on `draining` nodes (storage indexes) do not count toward RF; they may
/// stay listed (a decommissioned node keeps its copies until it is switched off).
pub async fn replica_problems(cluster: &Cluster, client: &Arc<DfsClient<SimEnv>>, paths: &[String], exact: bool) -> Option<String> {
    replica_problems_draining(cluster, client, paths, exact, &BTreeSet::new()).await
}

/// `replica_problems`, with some storage nodes (by index) draining.
pub async fn replica_problems_draining(
    cluster: &Cluster,
    client: &Arc<DfsClient<SimEnv>>,
    paths: &[String],
    exact: bool,
    draining: &BTreeSet<u64>,
) -> Option<String> {
    let up = storage_indexes(cluster);
    let on_disk = chunks_on_disks(cluster).await;
    let mut listed: BTreeSet<ChunkId> = BTreeSet::new();
    // What metadata says each listed chunk holds: every copy must be exactly that.
    let mut expected: BTreeMap<ChunkId, (u64, Vec<u8>, Option<Chain>)> = BTreeMap::new();
    let mut listed_on: BTreeSet<(ChunkId, u64)> = BTreeSet::new();
    for remote in paths {
        let c = client.clone();
        let r = remote.clone();
        let stat = match cluster.on_client(async move { c.stat(&r).await }).await {
            Ok(s) => s,
            Err(e) => return Some(format!("stat {remote}: {e}")),
        };
        // No file info would make the factor 0 and every replica count pass vacuously.
        let Some(file) = stat.file.as_ref() else {
            return Some(format!("stat {remote}: no file info"));
        };
        let replication = file.replication as usize;
        if replication == 0 {
            return Some(format!("stat {remote}: replication factor 0"));
        }
        for chunk in &stat.chunks {
            let id = ChunkId::from_slice(&chunk.chunk_id).unwrap();
            listed.insert(id);
            // Metadata's chain (its `before` is the previous chunk's recorded checksum), never
            // the copy's own header.
            let chain = match Chain::from_proto_opt(chunk.chain.as_ref()) {
                Ok(chain) => chain,
                Err(e) => return Some(format!("{remote} chunk {}: {e}", chunk.index)),
            };
            expected.insert(id, (chunk.size, chunk.sha256.to_vec(), chain));
            let all: Vec<u64> = chunk.replica_status.iter().filter_map(|s| s.node.as_ref().map(|n| n.id)).collect();
            listed_on.extend(all.iter().filter_map(|n| up.get(n)).map(|i| (id, *i)));
            let nodes: Vec<u64> = all.iter().copied().filter(|n| !up.get(n).is_some_and(|i| draining.contains(i))).collect();
            let good: Vec<u64> = nodes.iter().copied().filter(|n| up.get(n).is_some_and(|i| on_disk.get(&id).is_some_and(|held| held.contains(i)))).collect();
            if good.len() < replication || (exact && nodes.len() != replication) || (exact && good.len() != nodes.len()) {
                return Some(format!("{remote} chunk {} ({id}): listed on {nodes:?}, live holders {good:?}, factor {replication}", chunk.index));
            }
        }
    }
    if exact {
        if let Some((id, holders)) = on_disk.iter().find(|(id, _)| !listed.contains(id)) {
            return Some(format!("orphan chunk {id} on storage {holders:?}"));
        }
        // A copy on a node the chunk is not listed on (a surplus not deleted) is an orphan too.
        for (id, holders) in &on_disk {
            if let Some(h) = holders.iter().find(|h| !listed_on.contains(&(*id, **h))) {
                return Some(format!("chunk {id} on storage-{h}, which it is not listed on"));
            }
        }
        // What counts must be valid: every listed copy decodes whole (a flipped bit not yet
        // found by a scrub fails this), and holds what metadata says the chunk holds: its size
        // and SHA-256, hashed here rather than trusted from the copy's own header (a copy
        // consistent with itself may still be another chunk's bytes or a stale version).
        let layout = dfs_core::chunk_store::ChunkLayout::new("/data");
        for (id, holders) in on_disk.iter().filter(|(id, _)| listed.contains(id)) {
            let (size, sha256, chain) = &expected[id];
            for h in holders {
                let bytes = cluster.storage[*h as usize - 1].disk.read_file(&layout.chunk_path(*id)).await.unwrap_or_default();
                let problem = match dfs_core::chunk_store::decode_file(bytes) {
                    Err(e) => Some(format!("does not decode ({e})")),
                    Ok((_, data)) if data.len() as u64 != *size => Some(format!("holds {} bytes, metadata says {size}", data.len())),
                    Ok((_, data)) if checksum(&data, chain.as_ref()).0.as_slice() != sha256.as_slice() => {
                        Some("does not match metadata's checksum".to_string())
                    }
                    Ok(_) => None,
                };
                if let Some(problem) = problem {
                    return Some(format!("chunk {id} on storage-{h} is damaged: {problem}"));
                }
            }
        }
    }
    None
}

/// Asks every storage node to verify all it holds (a scrub), through the metadata leader.
pub async fn scrub_all(cluster: &Cluster) {
    for host in &cluster.storage {
        let addr = host.addr.to_string();
        let meta = cluster.meta_addrs();
        let env = cluster.admin_env(&dfs_io_sim::SimDisk::new(1 << 20));
        cluster
            .on_client(async move {
                let admin = dfs_core::meta_client::MetaClient::new(env, meta, Default::default());
                admin.call(dfs_core::proto::ScrubStorageNodeRequest { node: addr }).await
            })
            .await
            .expect("scrub request");
    }
}
