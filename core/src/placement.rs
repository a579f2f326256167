//! Where a chunk's replicas go: on distinct live storage nodes, most free space first, ties
//! (free space within the same `FREE_SPACE_TIE_BYTES`) to the least loaded, and over two
//! racks or more whenever the candidates span more than one.
//!
//! Pure: the leader passes in what its health tracker knows (free space from the last
//! heartbeat less what it placed there since, and a load: chunks placed there since that
//! heartbeat plus repair copies in flight to it), and gets node ids back. Placing several
//! chunks in one call deducts each chunk from the chosen nodes' free space and adds it to
//! their load as it goes, so a batch spreads over the cluster instead of piling onto the
//! emptiest node, and nodes with about the same room share the writes (their disks work in
//! parallel) instead of the lowest id taking them all.

use crate::ids::StorageNodeId;

/// A live node that may receive replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: StorageNodeId,
    pub free_bytes: u64,
    /// Its failure domain; nodes with none count as one rack of their own kind.
    pub rack: Option<String>,
    /// Chunks being written to it (placed since its last heartbeat, repair copies).
    pub load: u64,
}

/// Free space this close counts as equal, and the load decides: a few chunks more or less
/// on a node with terabytes free should not send every write to it.
pub const FREE_SPACE_TIE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no live storage node has room for a {chunk_bytes}-byte chunk")]
    NoCandidates { chunk_bytes: u64 },
}

/// Chooses up to `replication` distinct nodes for each chunk in `chunk_sizes`.
///
/// A chunk gets fewer than `replication` nodes only when fewer candidates have room; the
/// caller decides whether that still reaches its write quorum. Ties in free space go to the
/// least loaded node, then to the lower node id, so the result depends on nothing but the
/// inputs.
pub fn place(candidates: &[Candidate], exclude: &[StorageNodeId], replication: usize, chunk_sizes: &[u64]) -> Result<Vec<Vec<StorageNodeId>>, PlacementError> {
    let mut pool: Vec<Candidate> = candidates.iter().filter(|c| !exclude.contains(&c.id)).cloned().collect();
    pool.sort_by_key(|c| c.id);
    pool.dedup_by_key(|c| c.id);

    let mut placements = Vec::with_capacity(chunk_sizes.len());
    for &chunk_bytes in chunk_sizes {
        pool.sort_by_key(|c| (std::cmp::Reverse(c.free_bytes / FREE_SPACE_TIE_BYTES), c.load, c.id));
        let fits: Vec<&Candidate> = pool.iter().filter(|c| c.free_bytes >= chunk_bytes).collect();
        let mut chosen: Vec<StorageNodeId> = fits.iter().take(replication).map(|c| c.id).collect();
        // One rack for every replica while another rack has room: trade the last (least free)
        // choice for the best node of another rack, so a rack's loss never takes every copy.
        if chosen.len() >= 2 {
            let rack_of = |id: StorageNodeId| fits.iter().find(|c| c.id == id).map(|c| &c.rack);
            let first = rack_of(chosen[0]);
            if chosen.iter().all(|id| rack_of(*id) == first) {
                if let Some(other) = fits.iter().find(|c| Some(&c.rack) != first) {
                    let last = chosen.len() - 1;
                    chosen[last] = other.id;
                }
            }
        }
        if chosen.is_empty() {
            return Err(PlacementError::NoCandidates { chunk_bytes });
        }
        for c in pool.iter_mut().filter(|c| chosen.contains(&c.id)) {
            c.free_bytes -= chunk_bytes;
            c.load += 1;
        }
        placements.push(chosen);
    }
    Ok(placements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const GIB: u64 = FREE_SPACE_TIE_BYTES;

    /// A candidate with `free` GiB free.
    fn node(id: u64, free: u64) -> Candidate {
        Candidate { id: StorageNodeId(id), free_bytes: free * GIB, rack: None, load: 0 }
    }

    fn racked(id: u64, free: u64, rack: &str) -> Candidate {
        Candidate { id: StorageNodeId(id), free_bytes: free * GIB, rack: Some(rack.into()), load: 0 }
    }

    #[test]
    fn replicas_span_two_racks_when_there_are_two() {
        // The three emptiest nodes are all in rack a: the third copy goes to rack b.
        let nodes = [racked(1, 100, "a"), racked(2, 90, "a"), racked(3, 80, "a"), racked(4, 10, "b")];
        let p = place(&nodes, &[], 3, &[1]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(1), StorageNodeId(2), StorageNodeId(4)]]);
        // One rack only: most free space, as ever.
        let p = place(&nodes[..3], &[], 2, &[1]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(1), StorageNodeId(2)]]);
        // A full node of the other rack is no candidate.
        let p = place(&[racked(1, 100, "a"), racked(2, 90, "a"), racked(4, 0, "b")], &[], 2, &[1]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(1), StorageNodeId(2)]]);
    }

    #[test]
    fn most_free_first_and_distinct() {
        let nodes = [node(1, 10), node(2, 30), node(3, 20), node(4, 5)];
        let p = place(&nodes, &[], 3, &[1]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(2), StorageNodeId(3), StorageNodeId(1)]]);
    }

    #[test]
    fn excluded_and_full_nodes_are_skipped() {
        let nodes = [node(1, 100), node(2, 100), node(3, 3)];
        let p = place(&nodes, &[StorageNodeId(1)], 3, &[4 * GIB]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(2)]]);
        assert_eq!(place(&nodes, &[StorageNodeId(1), StorageNodeId(2)], 3, &[4 * GIB]), Err(PlacementError::NoCandidates { chunk_bytes: 4 * GIB }));
        assert!(place(&[], &[], 3, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_batch_spreads_primaries() {
        let nodes = [node(1, 100), node(2, 100), node(3, 100), node(4, 100)];
        let p = place(&nodes, &[], 1, &[10, 10, 10, 10]).unwrap();
        let primaries: BTreeSet<_> = p.iter().map(|r| r[0]).collect();
        assert_eq!(primaries.len(), 4);
    }

    #[test]
    fn about_as_much_room_goes_to_the_least_loaded() {
        // Free space within the tie band: the load decides, then the id.
        let mut nodes = [node(1, 100), node(2, 100), node(3, 100), node(4, 100)];
        nodes[0].free_bytes += GIB / 2;
        nodes[0].load = 3;
        nodes[1].load = 1;
        let p = place(&nodes, &[], 3, &[1]).unwrap();
        assert_eq!(p, vec![vec![StorageNodeId(3), StorageNodeId(4), StorageNodeId(2)]]);
        // Many chunks, one call: every node gets its share.
        let p = place(&[node(1, 100), node(2, 100), node(3, 100), node(4, 100)], &[], 3, &[1; 40]).unwrap();
        let mut per_node = std::collections::BTreeMap::new();
        for r in p.iter().flatten() {
            *per_node.entry(*r).or_insert(0) += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![30; 4]);
        // More room by a clear margin still wins over load.
        let mut nodes = [node(1, 200), node(2, 100), node(3, 100)];
        nodes[0].load = 50;
        assert_eq!(place(&nodes, &[], 1, &[1]).unwrap(), vec![vec![StorageNodeId(1)]]);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-placement.txt")))),
            ..ProptestConfig::default()
        })]
        #[test]
        fn placements_are_distinct_allowed_and_fit(
            frees in proptest::collection::vec((0u64..1000, 0u8..3, 0u64..4), 0..8),
            excluded in proptest::collection::vec(0u64..8, 0..3),
            replication in 1usize..5,
            sizes in proptest::collection::vec(0u64..200, 0..20),
        ) {
            // Bytes, not GiB: every node ties on free space and sizes matter.
            let nodes: Vec<_> = frees
                .iter()
                .enumerate()
                .map(|(i, (f, rack, load))| Candidate { id: StorageNodeId(i as u64), free_bytes: *f, rack: Some(rack.to_string()), load: *load })
                .collect();
            let exclude: Vec<_> = excluded.iter().map(|&i| StorageNodeId(i)).collect();
            let mut free: std::collections::BTreeMap<_, _> = nodes.iter().map(|c| (c.id, c.free_bytes)).collect();
            match place(&nodes, &exclude, replication, &sizes) {
                Ok(p) => {
                    prop_assert_eq!(p.len(), sizes.len());
                    for (replicas, size) in p.iter().zip(&sizes) {
                        let before = free.clone();
                        let distinct: BTreeSet<_> = replicas.iter().collect();
                        prop_assert_eq!(distinct.len(), replicas.len());
                        prop_assert!(!replicas.is_empty() && replicas.len() <= replication);
                        for r in replicas {
                            prop_assert!(!exclude.contains(r));
                            let f = free.get_mut(r).unwrap();
                            prop_assert!(*f >= *size);
                            *f -= size;
                        }
                        // fewer than asked only if no other allowed node had room
                        if replicas.len() < replication {
                            let others = free.iter().filter(|(id, f)| !exclude.contains(id) && !replicas.contains(id) && **f >= *size).count();
                            prop_assert_eq!(others, 0);
                        }
                        // one rack for all only if no allowed node of another rack had room
                        let rack = |id: &StorageNodeId| nodes.iter().find(|c| c.id == *id).unwrap().rack.clone();
                        let racks: BTreeSet<_> = replicas.iter().map(rack).collect();
                        if replicas.len() >= 2 && racks.len() == 1 {
                            let only = racks.iter().next().unwrap().clone();
                            let elsewhere = nodes.iter().filter(|c| !exclude.contains(&c.id) && c.rack != only && before[&c.id] >= *size).count();
                            prop_assert_eq!(elsewhere, 0);
                        }
                    }
                }
                Err(PlacementError::NoCandidates { chunk_bytes }) => {
                    prop_assert!(sizes.contains(&chunk_bytes));
                }
            }
        }
    }
}
