//! Linearizable reads, many under one leadership check: which reads a ReadIndex round answers.
//!
//! A read is linearizable when it sees every write acknowledged before it arrived. The leader
//! proves that with a round (openraft's `get_read_log_id`): it notes its commit index, then
//! confirms with a quorum that it still leads; a read served from state applied up to that
//! index is then current. One round per read costs a message to every follower for every
//! `stat`; this machine lets every read that arrives while a round runs share the next one.
//!
//! ## What it promises
//! - **Only a round that began after a read arrived answers it.** A round already running
//!   when a read arrives may have noted its index before a write the reader saw acknowledged
//!   was committed: that read waits for the next round. (Joining the running round would be a
//!   stale read; the unit tests and the proptest check this rule on every step.)
//! - **One round at a time.** When a round ends, every read that arrived meanwhile joins one
//!   new round: under load a read waits at most two rounds, and reads cost one round per
//!   batch, not one each.
//! - **Every read is answered once**, by exactly one round, unless it is refused on arrival.
//! - **Bounded.** At most `READS_WAITING_MAX` reads wait; a read beyond it is refused
//!   (`Arrival::Busy`), which the server answers as `Unavailable`, so the client retries.
//!
//! ## How it is driven
//! ```text
//! match rounds.arrive(reply) {              // a read arrives (what answers it is the driver's)
//!     StartRound => spawn: loop {           // this read starts the rounds going
//!         index = confirm leadership;       // get_read_log_id, for the reads of the round
//!         over = rounds.round_over();       // the reads it answers: give them `index`
//!         if !over.start_next { break }     // else the next round runs for those waiting
//!     },
//!     Joined => {}                          // a later round answers it
//!     Busy => refuse the read,
//! }
//! ```
//! No clock, no I/O: the driver runs the round and reports its end.

/// Most reads waiting for a round (in the one running and the next). Far above what the
/// request handlers of one node run at once; it only stops a flood from growing a queue.
pub const READS_WAITING_MAX: usize = 16_384;

/// What became of an arriving read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// No round was running: one starts now, for this read.
    StartRound,
    /// A round is running: the read waits for the next one.
    Joined,
    /// Too many reads wait: refused, nothing kept.
    Busy,
}

/// The end of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundOver<R> {
    /// The reads the round answers, in arrival order.
    pub answered: Vec<R>,
    /// Reads arrived meanwhile: the driver starts the next round for them at once.
    pub start_next: bool,
}

#[derive(Debug)]
pub struct ReadRounds<R> {
    /// The reads of the running round, if one runs.
    running: Option<Vec<R>>,
    /// Reads arrived while it runs: the next round's.
    next: Vec<R>,
    waiting_max: usize,
}

impl<R> Default for ReadRounds<R> {
    fn default() -> Self {
        ReadRounds::new(READS_WAITING_MAX)
    }
}

impl<R> ReadRounds<R> {
    pub fn new(waiting_max: usize) -> Self {
        ReadRounds { running: None, next: Vec::new(), waiting_max: waiting_max.max(1) }
    }

    /// Reads waiting, in the running round and for the next.
    pub fn waiting(&self) -> usize {
        self.running.as_ref().map_or(0, Vec::len) + self.next.len()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Read `read` arrives (kept until its round is over; dropped when refused).
    pub fn arrive(&mut self, read: R) -> Arrival {
        if self.waiting() >= self.waiting_max {
            return Arrival::Busy;
        }
        match &mut self.running {
            None => {
                self.running = Some(vec![read]);
                Arrival::StartRound
            }
            Some(_) => {
                self.next.push(read);
                Arrival::Joined
            }
        }
    }

    /// The running round ended (its leadership confirmed or not): the reads it answers; those
    /// that arrived meanwhile become the next round, which the driver starts when told.
    pub fn round_over(&mut self) -> RoundOver<R> {
        let answered = self.running.take().unwrap_or_default();
        let start_next = !self.next.is_empty();
        if start_next {
            self.running = Some(std::mem::take(&mut self.next));
        }
        RoundOver { answered, start_next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_read_that_arrives_during_a_round_waits_for_the_next() {
        let mut r = ReadRounds::new(10);
        assert_eq!(r.arrive(1), Arrival::StartRound);
        assert_eq!(r.arrive(2), Arrival::Joined);
        assert_eq!(r.arrive(3), Arrival::Joined);
        assert_eq!(r.round_over(), RoundOver { answered: vec![1], start_next: true });
        assert_eq!(r.arrive(4), Arrival::Joined);
        assert_eq!(r.round_over(), RoundOver { answered: vec![2, 3], start_next: true });
        assert_eq!(r.round_over(), RoundOver { answered: vec![4], start_next: false });
        assert!(!r.is_running());
        assert_eq!(r.arrive(5), Arrival::StartRound, "an idle machine starts a round at once");
    }

    #[test]
    fn reads_beyond_the_bound_are_refused_and_kept_nowhere() {
        let mut r = ReadRounds::new(3);
        assert_eq!(r.arrive(1), Arrival::StartRound);
        assert_eq!(r.arrive(2), Arrival::Joined);
        assert_eq!(r.arrive(3), Arrival::Joined);
        assert_eq!(r.arrive(4), Arrival::Busy);
        assert_eq!(r.waiting(), 3);
        assert_eq!(r.round_over().answered, vec![1]);
        assert_eq!(r.arrive(5), Arrival::Joined, "room again once a round answered");
        assert_eq!(r.round_over().answered, vec![2, 3]);
        assert_eq!(r.round_over().answered, vec![5]);
    }

    /// One step of the world: a read arrives, or the running round ends.
    #[derive(Clone, Debug)]
    enum Step {
        Arrive,
        RoundOver,
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-read-rounds.txt")))),
            ..ProptestConfig::default()
        })]
        /// Against a log of when each read arrived and when each round started: a read is
        /// answered once, by a round that started after it arrived; one round runs at a time;
        /// the bound holds; and a read is never left waiting with no round running.
        #[test]
        fn every_read_is_answered_once_by_a_round_that_began_after_it(
            steps in proptest::collection::vec(prop_oneof![3 => Just(Step::Arrive), 1 => Just(Step::RoundOver)], 1..300),
            waiting_max in 1usize..20,
        ) {
            let mut r = ReadRounds::new(waiting_max);
            let (mut clock, mut next_id) = (0u64, 0u64);
            let mut arrived_at = std::collections::BTreeMap::new();
            let mut answered = std::collections::BTreeSet::new();
            let mut refused = 0u64;
            // When the running round started (the driver calls get_read_log_id).
            let mut round_started: Option<u64> = None;
            for step in steps {
                clock += 1;
                match step {
                    Step::Arrive => {
                        next_id += 1;
                        match r.arrive(next_id) {
                            Arrival::StartRound => {
                                prop_assert!(round_started.is_none(), "a second round while one runs");
                                arrived_at.insert(next_id, clock);
                                clock += 1;
                                round_started = Some(clock);
                            }
                            Arrival::Joined => {
                                prop_assert!(round_started.is_some(), "joined with no round running");
                                arrived_at.insert(next_id, clock);
                            }
                            Arrival::Busy => {
                                prop_assert!(r.waiting() >= waiting_max, "refused below the bound");
                                refused += 1;
                            }
                        }
                    }
                    Step::RoundOver => {
                        let Some(started) = round_started else { continue };
                        let over = r.round_over();
                        for id in over.answered {
                            prop_assert!(arrived_at[&id] < started, "read {} arrived at {} after its round began at {}", id, arrived_at[&id], started);
                            prop_assert!(answered.insert(id), "read {} answered twice", id);
                        }
                        clock += 1;
                        round_started = over.start_next.then_some(clock);
                    }
                }
                prop_assert!(r.waiting() <= waiting_max);
                prop_assert_eq!(r.is_running(), round_started.is_some());
                prop_assert!(r.waiting() == 0 || r.is_running(), "reads wait with no round running");
            }
            // Drain: every read not refused is answered.
            while round_started.is_some() {
                let over = r.round_over();
                answered.extend(over.answered);
                round_started = over.start_next.then_some(0);
            }
            prop_assert_eq!(answered.len() as u64 + refused, next_id);
        }
    }
}
