//! The seed's plan for core's fault sites (`dfs_core::fault`), and what fired.
//!
//! What it promises: `enable` draws, from the simulation's seeded random stream, which sites
//! are on in this run (each with chance `SITE_ON`) and how often each fires (one of
//! `FIRE_RATES`), so that across seeds every site runs alone, together with others, rarely and
//! often ("swarm testing"); a site that may fail does so half the times it fires, and is
//! delayed (up to `DELAY_MAX`) otherwise. The same seed gives the same plan and the same
//! firings. `disable` turns every site off (the liveness phase); `fired` says how often each
//! site fired, for the trace and coverage.
//!
//! How it is driven: a scenario calls `enable` at the start of its fault phase and `disable`
//! at its end. One simulation per thread, so the plan is thread-local.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use dfs_core::fault::{self, Fault, Site};
use madsim::rand::Rng;

use crate::coverage;
use crate::trace;

/// Chance that a site is on in a run.
const SITE_ON: f64 = 0.5;
/// How often an active site fires, per visit: one of these, per site and run.
const FIRE_RATES: [f64; 3] = [0.01, 0.05, 0.2];
/// The longest delay a site injects.
const DELAY_MAX: Duration = Duration::from_millis(2_000);

thread_local! {
    static FIRED: Rc<RefCell<BTreeMap<Site, u64>>> = Rc::default();
}

/// Draws this run's plan and installs it.
pub fn enable() {
    let plan: BTreeMap<Site, f64> = {
        let mut rng = madsim::rand::thread_rng();
        let mut plan = BTreeMap::new();
        for site in Site::ALL {
            if rng.gen_bool(SITE_ON) {
                plan.insert(site, FIRE_RATES[rng.gen_range(0..FIRE_RATES.len())]);
            }
        }
        plan
    };
    enable_plan(plan);
}

/// Installs `plan` (site → chance it fires per visit). Each firing is counted for coverage
/// and put on the timeline, at the host where it happened.
pub fn enable_plan(plan: BTreeMap<Site, f64>) {
    trace::event(format!("fault sites on: {}", plan.iter().map(|(s, rate)| format!("{}@{rate}", s.name())).collect::<Vec<_>>().join(" ")));
    for site in Site::ALL {
        coverage::known(&coverage_name(site));
    }
    for site in plan.keys() {
        coverage::enabled(&coverage_name(*site));
    }
    let fired = FIRED.with(Rc::clone);
    fault::install(move |site| {
        let rate = *plan.get(&site)?;
        let mut rng = madsim::rand::thread_rng();
        if !rng.gen_bool(rate) {
            return None;
        }
        *fired.borrow_mut().entry(site).or_default() += 1;
        coverage::fired(&coverage_name(site));
        let fault = if site.may_fail() && rng.gen_bool(0.5) {
            Fault::Fail
        } else {
            Fault::Delay(Duration::from_millis(rng.gen_range(1..DELAY_MAX.as_millis() as u64)))
        };
        // Through tracing, so that the timeline learns the host from madsim's span.
        tracing::info!(target: "dfs_core::fault_site", site = site.name(), ?fault, "fault site fired");
        Some(fault)
    });
}

fn coverage_name(site: Site) -> String {
    format!("site.{}", site.name())
}

/// No site fires any more; records what fired in the trace.
pub fn disable() {
    fault::remove();
    trace::event(format!("fault sites off; fired: {}", fired().iter().map(|(s, n)| format!("{}={n}", s.name())).collect::<Vec<_>>().join(" ")));
}

/// How often each site fired in this run so far.
pub fn fired() -> BTreeMap<Site, u64> {
    FIRED.with(|f| f.borrow().clone())
}
