//! Simulated time: madsim's virtual clock, as each host reads it. Sleeping advances nothing
//! but the simulation.
//!
//! A host's clock may be **skewed** (`ClockSkew`): its monotonic clock starts at an offset and
//! runs fast or slow by a rate (a drift of a few percent, as cheap oscillators do), and its wall
//! clock is off by an offset of its own and drifts along. Durations the host sleeps are its
//! own: a host whose clock runs 2% fast wakes from a 1 s sleep after 0.98 s of the simulation's
//! time. openraft's timers (`SimRuntime`) follow the host's rate once the harness calls
//! `runtime::set_clock_rate` for it (offsets do not matter to them: they only measure
//! durations); `set_rate` here changes only this clock.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_core::env::{Clock, Timestamp};

/// How one host's clock differs from the simulation's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockSkew {
    /// Added to the host's monotonic clock (it starts ahead; never behind, so it stays
    /// positive).
    pub monotonic_offset_ms: u64,
    /// Host seconds per simulated second (1.02: 2% fast).
    pub rate: f64,
    /// Added to the host's wall clock (negative: behind).
    pub wall_offset_ms: i64,
}

impl ClockSkew {
    pub const NONE: ClockSkew = ClockSkew { monotonic_offset_ms: 0, rate: 1.0, wall_offset_ms: 0 };
}

#[derive(Debug)]
struct Skewed {
    skew: ClockSkew,
    /// Simulated and host time (ms) when the rate last changed: host time is continuous.
    anchor_sim_ms: u64,
    anchor_host_ms: u64,
}

impl Skewed {
    fn host_ms(&self, sim_ms: u64) -> u64 {
        self.anchor_host_ms + (sim_ms.saturating_sub(self.anchor_sim_ms) as f64 * self.skew.rate) as u64
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimClock {
    skew: Option<Arc<Mutex<Skewed>>>,
}

fn sim_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

impl SimClock {
    /// A clock that differs from the simulation's by `skew` from now on.
    pub fn skewed(skew: ClockSkew) -> SimClock {
        let now = madsim::time::TimeHandle::try_current().map(|t| t.elapsed().as_millis() as u64).unwrap_or(0);
        SimClock { skew: Some(Arc::new(Mutex::new(Skewed { skew, anchor_sim_ms: now, anchor_host_ms: now + skew.monotonic_offset_ms }))) }
    }

    /// Changes the rate from now on (host time stays continuous and monotonic).
    pub fn set_rate(&self, rate: f64) {
        if let Some(s) = &self.skew {
            let mut s = s.lock().unwrap();
            let now = sim_ms();
            s.anchor_host_ms = s.host_ms(now);
            s.anchor_sim_ms = now;
            s.skew.rate = rate;
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        match &self.skew {
            None => Timestamp(sim_ms()),
            Some(s) => Timestamp(s.lock().unwrap().host_ms(sim_ms())),
        }
    }

    fn unix_ms(&self) -> u64 {
        let now = madsim::time::TimeHandle::current().now_time();
        let real = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let skew = match &self.skew {
            None => 0,
            Some(s) => {
                let s = s.lock().unwrap();
                let sim = sim_ms();
                // The wall clock drifts with the host's oscillator: what its monotonic clock
                // gained or lost beyond its start offset.
                let drift = s.host_ms(sim) as i64 - sim as i64 - s.skew.monotonic_offset_ms as i64;
                s.skew.wall_offset_ms + drift
            }
        };
        (real + skew).max(0) as u64
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let rate = self.skew.as_ref().map_or(1.0, |s| s.lock().unwrap().skew.rate);
        // A host-time duration in simulated time: a fast clock wakes early.
        madsim::time::sleep(if rate == 1.0 { duration } else { duration.div_f64(rate) })
    }
}
