//! The fault atlas: which faults a chaos run injects, how often, for how long, and what they
//! may break.
//!
//! What it promises: `Atlas::from_seed` is a pure function of the seed (its own generator,
//! not madsim's stream), so `dfs-sim atlas SEED` prints a run's plan without running it and a
//! change elsewhere in the scenario does not reshuffle plans. Each fault kind is on with chance
//! `KIND_ON` and then has its own rate and hold time; each fault site likewise ("swarm
//! testing": every kind runs alone, with others, rarely and often across seeds).
//!
//! **The budget** (what the atlas allows to break) comes from dfs's promises, never from the
//! state observed: crashes (any node, the leader, every metadata node at once, two storage
//! nodes at once, a client), partitions of every shape, slow and lossy networks, full storage
//! disks and the fault sites cost availability only, so they are unbounded. Bit flips destroy
//! a durable copy, so at most `write quorum - 1` = 1 copy of a chunk is damaged at a time (the
//! scenario's `Flips` keeps count): an acknowledged chunk has at least a write quorum of
//! durable copies, so one always stays intact to repair from.
//!
//! What it does not plan: clock offsets and drift (not modelled yet), full metadata disks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use dfs_core::fault::Site;
use dfs_io_sim::{ClockSkew, SplitMix};

/// Chance that a fault kind is on in a run.
const KIND_ON: f64 = 0.6;
/// Chance that a fault site is on in a run.
const SITE_ON: f64 = 0.35;
/// Events per simulated minute of a kind that is on: one of these.
const RATES_PER_MIN: [f64; 3] = [2.0, 6.0, 15.0];
/// Chance that a run skews its hosts' clocks.
const CLOCKS_ON: f64 = 0.6;
/// Largest drift of a skewed clock, either way (2%: a poor oscillator; dfs's timeouts assume
/// no worse).
const DRIFT_MAX: f64 = 0.02;
/// Largest wall-clock offset, either way: under half the chaos upload expiry (20 s), since a
/// new leader judges an upload's age by its own wall clock against the old leader's.
const WALL_OFFSET_MAX_MS: i64 = 5_000;
/// Storage nodes in a run: one of these (the replication factor and up).
const STORAGE_NODES: [u64; 3] = [3, 4, 5];
/// The replication factor every chaos file has.
pub const REPLICATION: u32 = 3;
/// Chance that the liveness phase drains a node (when the cluster has one to spare).
const DRAIN_AT_END: f64 = 0.5;
/// How often a site that is on fires, per visit: one of these.
const SITE_RATES: [f64; 3] = [0.01, 0.05, 0.2];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A power cut of one metadata node (any), restarted after the hold.
    CrashMeta,
    /// A power cut of the metadata leader.
    CrashLeader,
    /// A power cut of every metadata node at once.
    CrashAllMeta,
    /// A power cut of one storage node.
    CrashStorage,
    /// A power cut of two storage nodes at once (one rack).
    CrashRack,
    /// A power cut of a client host: its operations in flight end unanswered.
    CrashClient,
    /// One host cut off the network, both ways.
    IsolateHost,
    /// The metadata leader cut off, both ways.
    IsolateLeader,
    /// One host's outgoing or incoming messages lost (one way).
    OneWay,
    /// Every host in one of two groups; the groups do not reach each other.
    Split,
    /// A storage node cut from every metadata node (clients and peers still reach it).
    StorageFromMeta,
    /// Every message slow (up to 300 ms), some lost.
    SlowNet,
    /// A bit flipped in one durable copy of a chunk.
    BitFlip,
    /// A storage node's disk full (another tenant's ballast).
    DiskFull,
    /// An operator decommissions a storage node (`dfs admin decommission`), and undoes it
    /// (`recommission`) after the hold: not a fault, but the drain it starts runs through
    /// all the others, and on a cluster with no node to spare it cannot finish.
    Drain,
}

impl FaultKind {
    pub const ALL: [FaultKind; 15] = [
        FaultKind::CrashMeta,
        FaultKind::CrashLeader,
        FaultKind::CrashAllMeta,
        FaultKind::CrashStorage,
        FaultKind::CrashRack,
        FaultKind::CrashClient,
        FaultKind::IsolateHost,
        FaultKind::IsolateLeader,
        FaultKind::OneWay,
        FaultKind::Split,
        FaultKind::StorageFromMeta,
        FaultKind::SlowNet,
        FaultKind::BitFlip,
        FaultKind::DiskFull,
        FaultKind::Drain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::CrashMeta => "crash.meta",
            FaultKind::CrashLeader => "crash.leader",
            FaultKind::CrashAllMeta => "crash.all_meta",
            FaultKind::CrashStorage => "crash.storage",
            FaultKind::CrashRack => "crash.rack",
            FaultKind::CrashClient => "crash.client",
            FaultKind::IsolateHost => "net.isolate",
            FaultKind::IsolateLeader => "net.isolate_leader",
            FaultKind::OneWay => "net.one_way",
            FaultKind::Split => "net.split",
            FaultKind::StorageFromMeta => "net.storage_from_meta",
            FaultKind::SlowNet => "net.slow_lossy",
            FaultKind::BitFlip => "disk.bit_flip",
            FaultKind::DiskFull => "disk.full",
            FaultKind::Drain => "op.drain",
        }
    }

    /// How long a fault of this kind lasts before it is healed, in ms (low, high).
    fn holds_ms(self) -> (u64, u64) {
        match self {
            FaultKind::CrashAllMeta | FaultKind::CrashClient => (100, 3_000),
            FaultKind::CrashMeta | FaultKind::CrashLeader | FaultKind::CrashStorage | FaultKind::CrashRack => (200, 10_000),
            FaultKind::BitFlip => (0, 1),
            FaultKind::Drain => (2_000, 20_000),
            _ => (1_000, 10_000),
        }
    }

    /// Weight of a kind that is on, in a run where its rate is drawn: rare kinds stay rare.
    fn rate_scale(self) -> f64 {
        match self {
            FaultKind::CrashAllMeta => 0.3,
            _ => 1.0,
        }
    }
}

/// One kind's plan in one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KindPlan {
    pub per_min: f64,
    pub hold_ms: (u64, u64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Atlas {
    pub seed: u64,
    pub meta_nodes: u64,
    /// Storage nodes: from the replication factor (no node to spare: a lost or bad copy can
    /// only be made again on a node that held one) up to 5.
    pub storage_nodes: u64,
    /// Whether the liveness phase decommissions a storage node (only with one to spare) and
    /// requires the drain to finish: `decommissioned`, every chunk whole without it.
    pub drain_at_end: bool,
    pub kinds: BTreeMap<FaultKind, KindPlan>,
    /// Sites on in this run, with how often each fires.
    pub sites: BTreeMap<Site, f64>,
    /// Faults active at once, at most.
    pub active_max: usize,
    /// Skewed clocks, by host name (empty: every host reads the simulation's clock).
    pub clocks: BTreeMap<String, ClockSkew>,
    /// Whether clients send small chunks in batches (the default) or each as a stream.
    pub chunk_batches: bool,
}

/// One of `of`, drawn from the atlas's own generator (splitmix64, independent of madsim's
/// stream).
fn pick<T: Copy>(rng: &mut SplitMix, of: &[T]) -> T {
    of[(rng.next_u64() % of.len() as u64) as usize]
}

impl Atlas {
    pub fn from_seed(seed: u64) -> Atlas {
        let mut rng = SplitMix(seed ^ 0xa71a_5000_0000_0000);
        let meta_nodes = if rng.unit() < 0.7 { 3 } else { 5 };
        let mut kinds = BTreeMap::new();
        for kind in FaultKind::ALL {
            if rng.unit() < KIND_ON {
                kinds.insert(kind, KindPlan { per_min: pick(&mut rng, &RATES_PER_MIN) * kind.rate_scale(), hold_ms: kind.holds_ms() });
            }
        }
        let mut sites = BTreeMap::new();
        for site in Site::ALL {
            if rng.unit() < SITE_ON {
                sites.insert(site, pick(&mut rng, &SITE_RATES));
            }
        }
        let active_max = pick(&mut rng, &[1, 2, 3]);
        let mut clocks = BTreeMap::new();
        if rng.unit() < CLOCKS_ON {
            let hosts =
                (1..=meta_nodes).map(|i| format!("meta-{i}")).chain((1..=5).map(|i| format!("storage-{i}"))).chain((1..=3).map(|i| format!("client-{i}")));
            for host in hosts {
                let skew = ClockSkew {
                    monotonic_offset_ms: rng.next_u64() % 3_600_000,
                    rate: 1.0 + DRIFT_MAX * (2.0 * rng.unit() - 1.0),
                    wall_offset_ms: (rng.next_u64() % (2 * WALL_OFFSET_MAX_MS as u64 + 1)) as i64 - WALL_OFFSET_MAX_MS,
                };
                clocks.insert(host, skew);
            }
        }
        let chunk_batches = rng.unit() < 0.5;
        // Drawn last, so that the draws above are what they were before these existed.
        let storage_nodes = pick(&mut rng, &STORAGE_NODES);
        clocks.retain(|host, _| host.strip_prefix("storage-").and_then(|i| i.parse::<u64>().ok()).is_none_or(|i| i <= storage_nodes));
        let drain_at_end = storage_nodes > REPLICATION as u64 && rng.unit() < DRAIN_AT_END;
        Atlas { seed, meta_nodes, storage_nodes, drain_at_end, kinds, sites, active_max, clocks, chunk_batches }
    }

    /// Events per simulated minute, all kinds together.
    pub fn total_per_min(&self) -> f64 {
        self.kinds.values().map(|k| k.per_min).sum()
    }

    /// Draws the next kind to inject, weighted by rate (`unit` in [0, 1)).
    pub fn pick_kind(&self, unit: f64) -> Option<FaultKind> {
        let mut left = unit * self.total_per_min();
        for (kind, plan) in &self.kinds {
            if left < plan.per_min {
                return Some(*kind);
            }
            left -= plan.per_min;
        }
        self.kinds.keys().last().copied()
    }

    pub fn hold(&self, kind: FaultKind, unit: f64) -> Duration {
        let (lo, hi) = self.kinds.get(&kind).map(|k| k.hold_ms).unwrap_or((0, 1));
        Duration::from_millis(lo + ((hi - lo) as f64 * unit) as u64)
    }

    /// The plan, as people read it.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "atlas of seed {}: {} metadata nodes, {} storage nodes{}, at most {} faults at once, small chunks {}\n",
            self.seed,
            self.meta_nodes,
            self.storage_nodes,
            if self.drain_at_end { " (one drained at the end)" } else { "" },
            self.active_max,
            if self.chunk_batches { "in batches" } else { "streamed one by one" }
        );
        if self.clocks.is_empty() {
            out.push_str("  clocks                   exact\n");
        }
        for (host, c) in &self.clocks {
            let _ = writeln!(out, "  clock {host:<18} {:+.2}% drift, wall {:+} ms", (c.rate - 1.0) * 100.0, c.wall_offset_ms);
        }
        for kind in FaultKind::ALL {
            match self.kinds.get(&kind) {
                Some(p) => {
                    let _ = writeln!(out, "  {:<24} on   {:>5.1}/min, held {}-{} ms", kind.name(), p.per_min, p.hold_ms.0, p.hold_ms.1);
                }
                None => {
                    let _ = writeln!(out, "  {:<24} off", kind.name());
                }
            }
        }
        for site in Site::ALL {
            match self.sites.get(&site) {
                Some(rate) => {
                    let _ = writeln!(out, "  site {:<19} on   fires at {:.0}% of visits", site.name(), rate * 100.0);
                }
                None => {
                    let _ = writeln!(out, "  site {:<19} off", site.name());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gets_the_same_plan_and_seeds_differ() {
        assert_eq!(Atlas::from_seed(7), Atlas::from_seed(7));
        let plans: std::collections::BTreeSet<String> = (0..50).map(|s| Atlas::from_seed(s).describe().split_once('\n').unwrap().1.to_string()).collect();
        assert!(plans.len() > 40, "50 seeds gave only {} distinct plans", plans.len());
    }

    #[test]
    fn over_many_seeds_every_kind_and_site_is_on_and_off() {
        let atlases: Vec<Atlas> = (0..200).map(Atlas::from_seed).collect();
        for kind in FaultKind::ALL {
            let on = atlases.iter().filter(|a| a.kinds.contains_key(&kind)).count();
            assert!((60..=180).contains(&on), "{} on in {on} of 200 plans", kind.name());
        }
        for site in Site::ALL {
            let on = atlases.iter().filter(|a| a.sites.contains_key(&site)).count();
            assert!((30..=120).contains(&on), "{} on in {on} of 200 plans", site.name());
        }
        for n in STORAGE_NODES {
            let runs = atlases.iter().filter(|a| a.storage_nodes == n).count();
            assert!(runs >= 40, "{n} storage nodes in {runs} of 200 plans");
        }
        assert!(atlases.iter().any(|a| a.drain_at_end) && atlases.iter().all(|a| !a.drain_at_end || a.storage_nodes > REPLICATION as u64));
        let a = atlases.iter().find(|a| a.kinds.len() > 3).unwrap();
        let picked: std::collections::BTreeSet<FaultKind> = (0..100).filter_map(|i| a.pick_kind(i as f64 / 100.0)).collect();
        assert_eq!(picked.len(), a.kinds.len(), "every kind that is on gets picked");
    }
}
