//! A storage node's side of the heartbeat protocol, as a pure machine: when it registers and
//! heartbeats, when it reports its whole inventory, and what a reply asks of it.
//!
//! ## How it is driven
//! The node's heartbeat loop asks `handle_timeout(now)` whenever `poll_timeout()` has passed
//! (or `wake` was called): it answers with the call to make (`Beat`), if one is due, and
//! whether an inventory pass starts first. The loop makes the call and reports it with
//! `handle_registered`, `handle_reply` (which returns what the reply asks, in the order to do
//! it) or `handle_failed`.
//!
//! ## What it promises
//! - One call at a time; after each, at least `gap_min` before the next, and otherwise one
//!   per `interval`. A `wake` (a repair finished, a forward to a peer the last reply did not
//!   list) brings the next call forward to the end of the gap; wakes before a call started
//!   are carried by it.
//! - A node registers before it heartbeats, and again whenever a leader asks (a new leader
//!   that does not know it): a registration that fails is retried, never skipped. A
//!   registration (to a new leader, perhaps) is followed by a full inventory.
//! - Once `say_stopping` is called, every call says so, and `stopping_heard` turns true once
//!   a heartbeat saying so was answered.

use std::time::Duration;

use crate::env::Timestamp;

#[derive(Clone, Copy, Debug)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    /// Least time between the end of one call and the start of the next.
    pub gap_min: Duration,
    /// How often the whole inventory is reported besides after each registration.
    pub inventory_interval: Duration,
}

/// The call to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Register (the leader does not know this node yet), then heartbeat.
    Register,
    Heartbeat,
}

/// What the loop does at a timeout, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Start an inventory pass (the periodic one) before the call.
    pub inventory: bool,
    pub beat: Option<Beat>,
}

/// What a heartbeat reply says, as far as this machine decides about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The leader does not know this node (a new leader): register again.
    pub register: bool,
    /// It wants a full inventory.
    pub inventory_wanted: bool,
}

/// What a reply asks of the node, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    /// Start an inventory pass (unless one is running).
    pub inventory: bool,
    /// The reply's list of peers is current: take it (not when it asks to register again:
    /// a leader that does not know this node sends no list).
    pub take_peers: bool,
}

pub struct Heartbeats {
    config: HeartbeatConfig,
    registered: bool,
    in_flight: bool,
    /// A wake arrived while a call was in flight.
    woken_in_flight: bool,
    next_at: Timestamp,
    /// The end of the last call plus the gap.
    earliest: Timestamp,
    next_inventory: Timestamp,
    stopping: bool,
    /// A call that said stopping is in flight.
    saying_stopping: bool,
    stopping_heard: bool,
}

impl Heartbeats {
    /// A node that starts at `now`: it registers at once.
    pub fn new(config: HeartbeatConfig, now: Timestamp) -> Self {
        Heartbeats {
            config,
            registered: false,
            in_flight: false,
            woken_in_flight: false,
            next_at: now,
            earliest: now,
            next_inventory: now.plus(config.inventory_interval),
            stopping: false,
            saying_stopping: false,
            stopping_heard: false,
        }
    }

    /// When the next call is due (`handle_timeout` then); `None` while one is in flight.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (!self.in_flight).then_some(self.next_at)
    }

    /// Brings the next call forward to the end of the gap after the last one.
    pub fn wake(&mut self, now: Timestamp) {
        if self.in_flight {
            self.woken_in_flight = true;
        } else {
            self.next_at = self.next_at.min(self.earliest.max(now));
        }
    }

    /// The call due at `now`, if any, and whether the periodic inventory starts first.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Due {
        if self.in_flight || now < self.next_at {
            return Due::default();
        }
        let inventory = now >= self.next_inventory;
        if inventory {
            self.next_inventory = now.plus(self.config.inventory_interval);
        }
        self.in_flight = true;
        self.woken_in_flight = false;
        self.saying_stopping = self.stopping;
        Due { inventory, beat: Some(if self.registered { Beat::Heartbeat } else { Beat::Register }) }
    }

    /// Whether calls say this node is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// A planned stop begins: every call from now on says so; the next comes as soon as it may.
    pub fn say_stopping(&mut self, now: Timestamp) {
        self.stopping = true;
        self.wake(now);
    }

    /// A heartbeat saying this node is stopping was answered: the leader knows.
    pub fn stopping_heard(&self) -> bool {
        self.stopping_heard
    }

    /// The registration of a `Register` beat succeeded; its heartbeat follows in the same
    /// call. Returns that an inventory pass starts (the leader, perhaps new, learns
    /// everything this node holds).
    pub fn handle_registered(&mut self) -> bool {
        self.registered = true;
        true
    }

    /// The call ended with a heartbeat reply at `now`.
    pub fn handle_reply(&mut self, now: Timestamp, reply: Reply) -> Asked {
        self.ended(now);
        if self.saying_stopping {
            self.stopping_heard = true;
        }
        if reply.register {
            self.registered = false;
        }
        Asked { inventory: reply.inventory_wanted, take_peers: !reply.register }
    }

    /// The call failed at `now` (registration or heartbeat): it is made again in an interval.
    pub fn handle_failed(&mut self, now: Timestamp) {
        self.ended(now);
    }

    fn ended(&mut self, now: Timestamp) {
        self.in_flight = false;
        self.earliest = now.plus(self.config.gap_min.min(self.config.interval));
        self.next_at = if self.woken_in_flight { self.earliest } else { now.plus(self.config.interval) };
        self.woken_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(3);
    const GAP: Duration = Duration::from_millis(200);

    fn machine() -> (Heartbeats, Timestamp) {
        let now = Timestamp(1_000_000);
        (Heartbeats::new(HeartbeatConfig { interval: INTERVAL, gap_min: GAP, inventory_interval: Duration::from_secs(3600) }, now), now)
    }

    #[test]
    fn a_node_registers_first_then_heartbeats_once_per_interval() {
        let (mut h, now) = machine();
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Register));
        assert_eq!(h.poll_timeout(), None, "one call at a time");
        assert_eq!(h.handle_timeout(now), Due::default());
        assert!(h.handle_registered(), "a registration starts an inventory");
        let done = now.plus(Duration::from_millis(5));
        assert_eq!(h.handle_reply(done, Reply::default()), Asked { inventory: false, take_peers: true });
        assert_eq!(h.poll_timeout(), Some(done.plus(INTERVAL)));
        assert_eq!(h.handle_timeout(done.plus(INTERVAL)).beat, Some(Beat::Heartbeat));
    }

    /// The leader changed between two heartbeats and the new one does not know this node yet:
    /// the node registers again, and a registration that fails (that leader lost office too)
    /// is retried rather than skipped.
    #[test]
    fn a_registration_racing_a_leader_change_is_made_again_until_one_succeeds() {
        let (mut h, mut now) = machine();
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Register));
        h.handle_registered();
        let asked = h.handle_reply(now, Reply::default());
        assert!(asked.take_peers);
        now = now.plus(INTERVAL);
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Heartbeat));
        // The new leader answers: register.
        let asked = h.handle_reply(now, Reply { register: true, ..Reply::default() });
        assert!(!asked.take_peers, "a leader that does not know the node sends no peers");
        now = now.plus(INTERVAL);
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Register));
        // Not the leader any more: the registration fails.
        h.handle_failed(now);
        now = now.plus(INTERVAL);
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Register), "a failed registration is never skipped");
        h.handle_registered();
        h.handle_reply(now, Reply::default());
        now = now.plus(INTERVAL);
        assert_eq!(h.handle_timeout(now).beat, Some(Beat::Heartbeat));
    }

    #[test]
    fn a_wake_brings_the_next_call_to_the_end_of_the_gap_never_sooner() {
        let (mut h, now) = machine();
        let _ = h.handle_timeout(now);
        h.handle_registered();
        let done = now.plus(Duration::from_millis(10));
        h.handle_reply(done, Reply::default());
        h.wake(done.plus(Duration::from_millis(50)));
        assert_eq!(h.poll_timeout(), Some(done.plus(GAP)), "not sooner than the gap");
        h.wake(done.plus(Duration::from_secs(1)));
        assert_eq!(h.poll_timeout(), Some(done.plus(GAP)), "a later wake does not postpone it");
        // A wake during a call: the next one right after the gap.
        let start = done.plus(GAP);
        let _ = h.handle_timeout(start);
        h.wake(start);
        let end = start.plus(Duration::from_millis(30));
        h.handle_reply(end, Reply::default());
        assert_eq!(h.poll_timeout(), Some(end.plus(GAP)));
    }

    #[test]
    fn a_stopping_node_says_so_in_every_call_and_learns_when_it_was_heard() {
        let (mut h, now) = machine();
        let _ = h.handle_timeout(now);
        h.handle_registered();
        h.handle_reply(now, Reply::default());
        // Said while a call that does not carry it is in flight: not heard by that reply.
        let later = now.plus(INTERVAL);
        let _ = h.handle_timeout(later);
        h.say_stopping(later);
        h.handle_reply(later, Reply::default());
        assert!(h.stopping() && !h.stopping_heard());
        assert_eq!(h.poll_timeout(), Some(later.plus(GAP)), "the next call comes as soon as it may");
        let _ = h.handle_timeout(later.plus(GAP));
        h.handle_failed(later.plus(GAP));
        assert!(!h.stopping_heard(), "a failed call told nobody");
        let at = h.poll_timeout().unwrap();
        let _ = h.handle_timeout(at);
        h.handle_reply(at, Reply::default());
        assert!(h.stopping_heard());
    }

    #[test]
    fn the_whole_inventory_is_reported_every_inventory_interval() {
        let (mut h, mut now) = machine();
        let mut passes = 0;
        for _ in 0..2400 {
            let due = h.handle_timeout(now);
            passes += due.inventory as usize;
            if due.beat == Some(Beat::Register) {
                h.handle_registered();
            }
            h.handle_reply(now, Reply::default());
            now = h.poll_timeout().unwrap();
        }
        // 2,400 heartbeats 3 s apart: two hours.
        assert_eq!(passes, 1, "periodic passes in {} s", 2400 * 3);
    }
}
