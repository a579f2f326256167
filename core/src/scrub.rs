//! Background scrubbing of a storage node's chunks, paced: which chunk to verify next and
//! when, as a pure machine the storage node's scrub loop drives.
//!
//! ## What it promises
//! - Every stored chunk is verified once per pass, in chunk id order; a chunk stored during a
//!   pass is verified in that pass if its id is still ahead of the cursor, else in the next.
//! - Paced: after verifying `n` bytes the next verification waits `n / rate_bytes_per_sec`, so
//!   a scrub costs at most `rate_bytes_per_sec` of disk reads on average (a full pass of a
//!   2 TB node at the default 8 MiB/s takes about three days).
//! - `request_pass` (from `dfs admin scrub NODE`, via a heartbeat reply) starts a pass at once
//!   from the first chunk, unpaced, until it ends; then pacing resumes.
//!
//! ## How it is driven
//! The scrub loop calls `next(now, next_after)` with a lookup of the table's next chunk id
//! after a given one; it verifies what `Step::Verify` names (a damaged replica is quarantined
//! and reported by the read path) and reports `verified(now, bytes)`, or waits until
//! `Step::WaitUntil` (or a pass request). Nothing here does I/O or reads a clock.

use std::time::Duration;

use crate::env::Timestamp;
use crate::ids::ChunkId;

/// Default pace of background verification.
pub const SCRUB_RATE_DEFAULT_BYTES_PER_SEC: u64 = 8 * 1024 * 1024;
/// Longest wait between two verifications however large a chunk (so pacing never stalls a
/// pass for long after one huge chunk at a low rate).
const PACE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Wait before looking again when the table is empty.
const EMPTY_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Verify(ChunkId),
    WaitUntil(Timestamp),
}

/// Counters, for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubStats {
    pub chunks_verified: u64,
    pub bytes_verified: u64,
    pub passes_completed: u64,
}

#[derive(Debug)]
pub struct Scrubber {
    rate_bytes_per_sec: u64,
    /// The last chunk of this pass handed out; `None` at the start of a pass.
    cursor: Option<ChunkId>,
    not_before: Timestamp,
    urgent: bool,
    /// The last scrub request (numbered by the metadata leader) a pass was started for.
    request_seen: u64,
    stats: ScrubStats,
}

impl Scrubber {
    pub fn new(rate_bytes_per_sec: u64, now: Timestamp) -> Self {
        Scrubber { rate_bytes_per_sec: rate_bytes_per_sec.max(1), cursor: None, not_before: now, urgent: false, request_seen: 0, stats: ScrubStats::default() }
    }

    pub fn stats(&self) -> ScrubStats {
        self.stats
    }

    /// Whether a requested pass is running.
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    /// A scrub request from metadata (`request`: its number; 0 from a leader that numbers
    /// none): starts a pass unless one was started for this request already (the leader
    /// repeats it until the node's heartbeats name it). Returns whether a pass started.
    pub fn request(&mut self, now: Timestamp, request: u64) -> bool {
        if request != 0 && request == self.request_seen {
            return false;
        }
        self.request_seen = request;
        self.request_pass(now);
        true
    }

    /// The last scrub request a pass was started for, for the heartbeats to say so.
    pub fn request_seen(&self) -> u64 {
        self.request_seen
    }

    /// Starts a full pass now, unpaced.
    pub fn request_pass(&mut self, now: Timestamp) {
        self.urgent = true;
        self.cursor = None;
        self.not_before = now;
    }

    /// What to do next. `next_after(c)` is the first stored chunk id after `c` (after
    /// nothing: the first).
    pub fn next(&mut self, now: Timestamp, next_after: impl Fn(Option<ChunkId>) -> Option<ChunkId>) -> Step {
        if !self.urgent && now < self.not_before {
            return Step::WaitUntil(self.not_before);
        }
        match next_after(self.cursor) {
            Some(id) => {
                self.cursor = Some(id);
                Step::Verify(id)
            }
            None => {
                let was_pass = self.cursor.is_some();
                if was_pass {
                    self.stats.passes_completed += 1;
                }
                self.cursor = None;
                self.urgent = false;
                if !was_pass {
                    self.not_before = now.plus(EMPTY_WAIT);
                    return Step::WaitUntil(self.not_before);
                }
                // The next pass starts at once, paced as ever.
                self.next(now, next_after)
            }
        }
    }

    /// The chunk `next` named was verified (or found damaged, or gone): `bytes` were read.
    pub fn verified(&mut self, now: Timestamp, bytes: u64) {
        self.stats.chunks_verified += 1;
        self.stats.bytes_verified += bytes;
        let wait = Duration::from_millis(bytes.saturating_mul(1000) / self.rate_bytes_per_sec).min(PACE_WAIT_MAX);
        self.not_before = now.plus(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FileId;
    use std::collections::BTreeSet;

    fn ids(n: u32) -> BTreeSet<ChunkId> {
        (0..n).map(|i| ChunkId::derive(FileId(1), i)).collect()
    }

    fn after(table: &BTreeSet<ChunkId>) -> impl Fn(Option<ChunkId>) -> Option<ChunkId> + '_ {
        move |c| match c {
            None => table.iter().next().copied(),
            Some(c) => table.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)).next().copied(),
        }
    }

    /// Runs the scrubber on virtual time until `until`, each chunk `bytes` long; returns the
    /// chunks verified in order.
    fn run(s: &mut Scrubber, table: &BTreeSet<ChunkId>, now: &mut Timestamp, until: Timestamp, bytes: u64) -> Vec<ChunkId> {
        let mut seen = Vec::new();
        while *now < until {
            match s.next(*now, after(table)) {
                Step::Verify(id) => {
                    seen.push(id);
                    s.verified(*now, bytes);
                }
                Step::WaitUntil(t) => *now = t.max(now.plus(Duration::from_millis(1))),
            }
        }
        seen
    }

    #[test]
    fn every_chunk_once_per_pass_at_the_paced_rate() {
        let table = ids(10);
        let mut s = Scrubber::new(1024 * 1024, Timestamp(0));
        let mut now = Timestamp(0);
        // 10 chunks of 1 MiB at 1 MiB/s: a pass takes about 10 s.
        let seen = run(&mut s, &table, &mut now, Timestamp(10_000), 1024 * 1024);
        assert_eq!(seen, table.iter().copied().collect::<Vec<_>>());
        assert_eq!(s.stats().bytes_verified, 10 * 1024 * 1024);
        let seen = run(&mut s, &table, &mut now, Timestamp(20_000), 1024 * 1024);
        assert_eq!(seen.len(), 10, "the next pass follows, paced the same");
        assert!(s.stats().passes_completed >= 1);
    }

    #[test]
    fn a_requested_pass_starts_at_once_and_is_not_paced() {
        let table = ids(5);
        let mut s = Scrubber::new(1, Timestamp(0)); // 1 byte/s: one chunk per minute at most
        let mut now = Timestamp(0);
        let seen = run(&mut s, &table, &mut now, Timestamp(1), 4096);
        assert_eq!(seen.len(), 1);
        s.request_pass(now);
        let mut urgent = Vec::new();
        while let Step::Verify(id) = s.next(now, after(&table)) {
            urgent.push(id);
            s.verified(now, 4096);
            if !s.urgent() {
                break;
            }
        }
        assert_eq!(urgent, table.iter().copied().collect::<Vec<_>>(), "the whole pass, from the first chunk, with no wait");
        assert!(!s.urgent(), "pacing resumes after the requested pass");
    }

    #[test]
    fn a_repeated_request_starts_one_pass_and_a_new_one_another() {
        let mut s = Scrubber::new(1, Timestamp(0));
        assert_eq!(s.request_seen(), 0);
        assert!(s.request(Timestamp(0), 7), "a new request starts a pass");
        assert_eq!(s.request_seen(), 7);
        assert!(s.urgent());
        let table = ids(3);
        while s.urgent() {
            if let Step::Verify(_) = s.next(Timestamp(1), after(&table)) {
                s.verified(Timestamp(1), 1);
            }
        }
        assert!(!s.request(Timestamp(2), 7), "the leader repeating a request the node saw starts nothing");
        assert!(!s.urgent());
        assert!(s.request(Timestamp(3), 8), "a new request does");
        assert!(s.request(Timestamp(4), 0) && s.request(Timestamp(5), 0), "an unnumbered one (an older leader) always does");
    }

    #[test]
    fn an_empty_table_waits() {
        let table = BTreeSet::new();
        let mut s = Scrubber::new(1024, Timestamp(0));
        assert!(matches!(s.next(Timestamp(0), after(&table)), Step::WaitUntil(t) if t > Timestamp(0)));
    }
}
