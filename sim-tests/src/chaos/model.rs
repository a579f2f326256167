//! The chaos scenario's oracle: what a group of two paths may hold, given every operation on
//! it and its result, including operations whose outcome is unknown.
//!
//! What it promises: `Group::observe` accepts an operation's result only if some order of
//! events consistent with real time explains it: the operations of the group (one worker owns
//! a group, so they are sequential) each took effect atomically inside their call, and every
//! *ambiguous* one (an error that does not say whether it happened: a timeout, a lost reply, a
//! crash) took effect once at any later moment, or never. This is linearizability for one
//! sequential client with pending operations. An acknowledged `put` is therefore never lost: a
//! later read of the path must return it, or what a later (or still pending) operation wrote.
//!
//! What it does not do: see bytes. The caller decodes a read's content to its version (and
//! checks the bytes against it) before calling `observe`.
//!
//! How it is driven: the workload calls `observe` after each operation; a `Err(Violation)` is
//! the verdict. Pure, so unit-tested without a simulation.

use std::collections::BTreeSet;

/// One of the group's two paths.
pub type Slot = usize;

/// What the world may look like: each path's version (`None`: nothing there), and which
/// pending operations have already taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct World {
    at: [Option<u64>; 2],
    applied: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `put --force`: the path holds `version` whatever it held.
    Put { slot: Slot, version: u64 },
    /// `mv from to`: only if `from` exists and `to` does not.
    Mv { from: Slot, to: Slot },
    /// `rm`: only if the path exists.
    Rm { slot: Slot },
}

/// An operation's result, as far as the oracle cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// "no such file" (of the source, for `mv`).
    NotFound,
    /// "already exists" (the destination of `mv`).
    Exists,
}

/// Most pending operations a group may have; the workload only reads a group that has this many.
pub const PENDING_MAX: usize = 6;

fn apply(w: World, m: Mutation) -> (World, Outcome) {
    let mut at = w.at;
    let outcome = match m {
        Mutation::Put { slot, version } => {
            at[slot] = Some(version);
            Outcome::Done
        }
        Mutation::Mv { from, to } => match (at[from], at[to]) {
            (None, _) => Outcome::NotFound,
            (Some(_), Some(_)) => Outcome::Exists,
            (Some(v), None) => {
                at[to] = Some(v);
                at[from] = None;
                Outcome::Done
            }
        },
        Mutation::Rm { slot } => match at[slot] {
            None => Outcome::NotFound,
            Some(_) => {
                at[slot] = None;
                Outcome::Done
            }
        },
    };
    (World { at, applied: w.applied }, outcome)
}

/// An operation's result that no order of events explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What the paths could have held just before the operation.
    pub possible: Vec<[Option<u64>; 2]>,
}

#[derive(Clone, Debug)]
pub struct Group {
    worlds: BTreeSet<World>,
    pending: Vec<Mutation>,
}

impl Default for Group {
    fn default() -> Self {
        Group { worlds: [World { at: [None, None], applied: 0 }].into(), pending: Vec::new() }
    }
}

impl Group {
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Every world reachable by letting pending operations take effect now.
    fn settle(&mut self) {
        let mut frontier: Vec<World> = self.worlds.iter().copied().collect();
        while let Some(w) = frontier.pop() {
            for (i, m) in self.pending.iter().enumerate() {
                if w.applied & (1 << i) == 0 {
                    let (mut next, _) = apply(w, *m);
                    next.applied |= 1 << i;
                    if self.worlds.insert(next) {
                        frontier.push(next);
                    }
                }
            }
        }
    }

    fn possible(&self) -> Vec<[Option<u64>; 2]> {
        let set: BTreeSet<[Option<u64>; 2]> = self.worlds.iter().map(|w| w.at).collect();
        set.into_iter().collect()
    }

    fn keep(&mut self, next: BTreeSet<World>, before: Vec<[Option<u64>; 2]>) -> Result<(), Violation> {
        if next.is_empty() {
            return Err(Violation { possible: before });
        }
        self.worlds = next;
        Ok(())
    }

    /// A mutation ended with `outcome` (`None`: unknown whether it took effect).
    pub fn mutated(&mut self, m: Mutation, outcome: Option<Outcome>) -> Result<(), Violation> {
        self.settle();
        match outcome {
            None => {
                assert!(self.pending.len() < 32, "too many pending operations for the oracle");
                self.pending.push(m);
                Ok(())
            }
            Some(seen) => {
                let before = self.possible();
                let next = self
                    .worlds
                    .iter()
                    .filter_map(|w| {
                        let (after, outcome) = apply(*w, m);
                        (outcome == seen).then_some(after)
                    })
                    .collect();
                self.keep(next, before)
            }
        }
    }

    /// A read of `slot` found `version` (`None`: no such file).
    pub fn read(&mut self, slot: Slot, version: Option<u64>) -> Result<(), Violation> {
        self.settle();
        let before = self.possible();
        let next = self.worlds.iter().copied().filter(|w| w.at[slot] == version).collect();
        self.keep(next, before)
    }

    /// Whether `slot` surely holds nothing in every world (so a `put` without `--force`, or
    /// a `mv` to it, is expected to work).
    pub fn surely_empty(&self, slot: Slot) -> bool {
        self.worlds.iter().all(|w| w.at[slot].is_none()) && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledged_put_is_never_lost() {
        let mut g = Group::default();
        g.mutated(Mutation::Put { slot: 0, version: 1 }, Some(Outcome::Done)).unwrap();
        g.read(0, Some(1)).unwrap();
        assert!(g.read(0, None).is_err(), "a read that lost the acknowledged write");
        let mut g = Group::default();
        g.mutated(Mutation::Put { slot: 0, version: 1 }, Some(Outcome::Done)).unwrap();
        assert!(g.read(0, Some(2)).is_err(), "a version nobody wrote");
    }

    #[test]
    fn an_ambiguous_put_may_land_late_but_only_once_and_not_before_it_began() {
        let mut g = Group::default();
        g.read(0, None).unwrap();
        g.mutated(Mutation::Put { slot: 0, version: 1 }, None).unwrap();
        g.read(0, None).unwrap(); // not yet
        g.read(0, Some(1)).unwrap(); // now
        assert!(g.read(0, None).is_err(), "once it took effect, it stays (no one removed it)");
        // An acknowledged put after a pending one: the pending one may still land over it.
        let mut g = Group::default();
        g.mutated(Mutation::Put { slot: 0, version: 1 }, None).unwrap();
        g.mutated(Mutation::Put { slot: 0, version: 2 }, Some(Outcome::Done)).unwrap();
        g.read(0, Some(2)).unwrap();
        g.read(0, Some(1)).unwrap();
        assert!(g.read(0, Some(2)).is_err(), "the late one landed once; 2 cannot come back");
    }

    #[test]
    fn moves_and_removes_follow_their_results() {
        let mut g = Group::default();
        g.mutated(Mutation::Put { slot: 0, version: 5 }, Some(Outcome::Done)).unwrap();
        g.mutated(Mutation::Mv { from: 0, to: 1 }, Some(Outcome::Done)).unwrap();
        g.read(1, Some(5)).unwrap();
        g.read(0, None).unwrap();
        assert!(g.mutated(Mutation::Mv { from: 0, to: 1 }, Some(Outcome::Done)).is_err(), "moved a file that was not there");
        g.mutated(Mutation::Mv { from: 0, to: 1 }, Some(Outcome::NotFound)).unwrap();
        g.mutated(Mutation::Put { slot: 0, version: 6 }, Some(Outcome::Done)).unwrap();
        g.mutated(Mutation::Mv { from: 0, to: 1 }, Some(Outcome::Exists)).unwrap();
        g.mutated(Mutation::Rm { slot: 1 }, Some(Outcome::Done)).unwrap();
        assert!(g.read(1, Some(5)).is_err(), "a removed file came back");
        g.mutated(Mutation::Rm { slot: 1 }, Some(Outcome::NotFound)).unwrap();
        // An ambiguous remove: either is fine, but not both in turn.
        g.mutated(Mutation::Rm { slot: 0 }, None).unwrap();
        g.read(0, Some(6)).unwrap();
        g.read(0, None).unwrap();
        assert!(g.read(0, Some(6)).is_err());
    }

    #[test]
    fn a_violation_names_what_was_possible() {
        let mut g = Group::default();
        g.mutated(Mutation::Put { slot: 1, version: 3 }, Some(Outcome::Done)).unwrap();
        let v = g.read(1, Some(4)).unwrap_err();
        assert_eq!(v.possible, vec![[None, Some(3)]]);
    }
}
