//! Bugs planted on purpose, to prove that the checkers catch what they say they catch.
//!
//! ## What it promises
//! - Compiled only with `--cfg dfs_planted`, which the simulations' build (`cargo sim`, and
//!   the nested build of plain `cargo test`) and the planted real-binary build of the
//!   power-cut test set, and which no release or ordinary build has: there `on` is a constant
//!   `false` and every planted branch is dead code the compiler removes.
//! - In a planted build, at most one bug is switched on, by name, through the `DFS_PLANTED`
//!   environment variable, read once per process; unset means none. An unknown name stops the
//!   process at once (a typo must not make a test pass vacuously by planting nothing).
//!
//! Each bug is a small, realistic mistake at one site (named on its variant); a test per bug
//! (in `sim-tests`, and the real-disk power-cut test) runs the scenario that should catch it
//! and passes only if a checker fails with the verdict it expects.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A retried request is applied again instead of answered from its kept result
    /// (`Namespace::apply_once`).
    DoubleApply,
    /// An upload is acknowledged once one replica has a chunk, not a majority
    /// (`namespace::write_quorum`).
    WriteQuorumOne,
    /// A chunk's directory entry is not made durable after the rename (`chunk_store`).
    NoDirFsync,
    /// A chunk's bytes are not made durable before the rename (`chunk_store`).
    NoFileFsync,
    /// A stored chunk is served (and scrubbed) without checking its checksums
    /// (`FrameReader::accept`).
    UncheckedRead,
    /// A metadata read is served from the local state without confirming leadership
    /// (`meta::server` reads).
    StaleRead,
    /// A repair may copy a chunk to a node already listed for it (`repair` target choice).
    RepairToHolder,
    /// Surplus removal keeps the copies on the nodes with the most free space among every
    /// listed copy, bad or dead ones included, and drops the rest (`repair` surplus).
    SurplusDropsValid,
    /// An upload whose commit ended in an ambiguous error (timeout, unreachable) is reported
    /// as done (`client::upload`).
    LostCommit,
    /// A node listed with a bad copy of a chunk is never a repair target while the chunk is
    /// under-replicated (the first-contact deadlock: `repair` keeps the bad listing until the
    /// chunk is whole, which on a cluster with no node to spare it never becomes).
    BadCopyNeverTarget,
    /// The certificate check admits every caller to the cluster's own calls (Raft, storage
    /// registration, replication), whatever its role (`auth::check`).
    RolesUnchecked,
    /// A metadata node admits every user call without weighing its caller (`admit`).
    UsersUnchecked,
}

impl Bug {
    pub const ALL: [Bug; 12] = [
        Bug::DoubleApply,
        Bug::WriteQuorumOne,
        Bug::NoDirFsync,
        Bug::NoFileFsync,
        Bug::UncheckedRead,
        Bug::StaleRead,
        Bug::RepairToHolder,
        Bug::SurplusDropsValid,
        Bug::LostCommit,
        Bug::BadCopyNeverTarget,
        Bug::RolesUnchecked,
        Bug::UsersUnchecked,
    ];

    /// The name `DFS_PLANTED` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::DoubleApply => "double-apply",
            Bug::WriteQuorumOne => "write-quorum-one",
            Bug::NoDirFsync => "no-dir-fsync",
            Bug::NoFileFsync => "no-file-fsync",
            Bug::UncheckedRead => "unchecked-read",
            Bug::StaleRead => "stale-read",
            Bug::RepairToHolder => "repair-to-holder",
            Bug::SurplusDropsValid => "surplus-drops-valid",
            Bug::LostCommit => "lost-commit",
            Bug::BadCopyNeverTarget => "bad-copy-never-target",
            Bug::RolesUnchecked => "roles-unchecked",
            Bug::UsersUnchecked => "users-unchecked",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The environment variable that names the bug to plant.
pub const ENV: &str = "DFS_PLANTED";

/// Whether this build can plant bugs at all.
pub const AVAILABLE: bool = cfg!(dfs_planted);

/// Whether `bug` is planted in this process.
#[cfg(dfs_planted)]
pub fn on(bug: Bug) -> bool {
    static ACTIVE: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let name = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
        let known = Bug::ALL.map(Bug::name).join(", ");
        Some(Bug::from_name(&name).unwrap_or_else(|| panic!("{ENV}={name:?} names no planted bug (known: {known})")))
    }) == Some(bug)
}

/// Whether `bug` is planted in this process: never, in a build without `--cfg dfs_planted`.
#[cfg(not(dfs_planted))]
#[inline(always)]
pub const fn on(_bug: Bug) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bug_has_a_distinct_name_that_reads_back() {
        let names: std::collections::BTreeSet<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(names.len(), Bug::ALL.len());
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(Bug::from_name("no-such-bug"), None);
    }
}
