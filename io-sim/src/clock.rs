//! Simulated time: madsim's virtual clock. Sleeping advances nothing but the simulation.

use std::future::Future;
use std::time::Duration;

use dfs_core::env::{Clock, Timestamp};

#[derive(Clone, Debug, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp(madsim::time::TimeHandle::current().elapsed().as_millis() as u64)
    }

    fn unix_ms(&self) -> u64 {
        let now = madsim::time::TimeHandle::current().now_time();
        now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        madsim::time::sleep(duration)
    }
}
