//! How often each fault kind and fault site was on and fired, per run and over many runs, so
//! that an idle fault is visible.
//!
//! What it promises: `enabled(name)` and `fired(name)` count on this thread's run (reset with
//! `reset`); `encode` packs a run's counts into one whitespace-free field (`name:on:fired,..`)
//! that a child process prints and its parent `decode`s; `Table` adds runs up and `render`s one
//! line per fault, each starting with `[sim] ` (so plain `cargo test` shows it) and marking a
//! fault that was on but never fired `IDLE`.
//!
//! How it is driven: the scenario calls `enabled` when its plan turns a fault on for the run
//! and `fired` each time it acts; the seed runner collects and prints.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// One fault's counts in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub on: bool,
    pub fired: u64,
}

thread_local! {
    static RUN: RefCell<BTreeMap<String, Count>> = RefCell::default();
}

pub fn reset() {
    RUN.with(|r| r.borrow_mut().clear());
}

/// The fault `name` is on in this run.
pub fn enabled(name: &str) {
    RUN.with(|r| r.borrow_mut().entry(name.to_string()).or_default().on = true);
}

/// The fault `name` acted once.
pub fn fired(name: &str) {
    RUN.with(|r| {
        let mut r = r.borrow_mut();
        let c = r.entry(name.to_string()).or_default();
        c.on = true;
        c.fired += 1;
    });
}

/// Registers `name` as a fault of the scenario that is off in this run (so it is listed).
pub fn known(name: &str) {
    RUN.with(|r| {
        r.borrow_mut().entry(name.to_string()).or_default();
    });
}

pub fn run() -> BTreeMap<String, Count> {
    RUN.with(|r| r.borrow().clone())
}

/// `name:on:fired,...`; `-` when nothing was counted.
pub fn encode(run: &BTreeMap<String, Count>) -> String {
    if run.is_empty() {
        return "-".into();
    }
    run.iter().map(|(n, c)| format!("{n}:{}:{}", u8::from(c.on), c.fired)).collect::<Vec<_>>().join(",")
}

pub fn decode(field: &str) -> BTreeMap<String, Count> {
    field
        .split(',')
        .filter_map(|item| {
            let mut parts = item.rsplitn(3, ':');
            let fired = parts.next()?.parse().ok()?;
            let on = parts.next()? == "1";
            Some((parts.next()?.to_string(), Count { on, fired }))
        })
        .collect()
}

/// Counts over many runs.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub runs: u64,
    /// name → (runs it was on, runs it fired in, times fired)
    pub rows: BTreeMap<String, (u64, u64, u64)>,
}

impl Table {
    pub fn add(&mut self, run: &BTreeMap<String, Count>) {
        self.runs += 1;
        for (name, c) in run {
            let row = self.rows.entry(name.clone()).or_default();
            row.0 += u64::from(c.on);
            row.1 += u64::from(c.fired > 0);
            row.2 += c.fired;
        }
    }

    pub fn merge(&mut self, other: &Table) {
        self.runs += other.runs;
        for (name, (on, hit, fired)) in &other.rows {
            let row = self.rows.entry(name.clone()).or_default();
            row.0 += on;
            row.1 += hit;
            row.2 += fired;
        }
    }

    /// The faults that were on in some run but never fired in any.
    pub fn idle(&self) -> Vec<String> {
        self.rows.iter().filter(|(_, (on, hit, _))| *on > 0 && *hit == 0).map(|(name, _)| name.clone()).collect()
    }

    /// The table, one `[sim] ` line per fault.
    pub fn render(&self, title: &str) -> String {
        let mut out = format!("[sim] {title}: fault coverage over {} runs\n", self.runs);
        out.push_str(&format!("[sim]   {:<28} {:>8} {:>8} {:>8} {:>9}\n", "fault", "runs on", "runs hit", "fired", "per hit"));
        for (name, (on, hit, fired)) in &self.rows {
            let per_hit = if *hit > 0 { format!("{:.1}", *fired as f64 / *hit as f64) } else { "-".into() };
            let mark = if *on > 0 && *hit == 0 {
                "  IDLE"
            } else if *on == 0 {
                "  never on"
            } else if *hit * 100 < *on {
                "  (rare)"
            } else {
                ""
            };
            out.push_str(&format!("[sim]   {name:<28} {on:>8} {hit:>8} {fired:>8} {per_hit:>9}{mark}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_trip_through_a_child_and_idle_faults_are_marked() {
        reset();
        known("net.split");
        enabled("crash.storage");
        fired("crash.storage");
        fired("crash.storage");
        enabled("disk.enospc");
        let field = encode(&run());
        assert!(!field.contains(' '));
        let back = decode(&field);
        assert_eq!(back, run());
        let mut table = Table::default();
        table.add(&back);
        table.add(&back);
        let text = table.render("chaos");
        assert!(text.lines().all(|l| l.starts_with("[sim] ")));
        assert!(text.lines().any(|l| l.contains("disk.enospc") && l.ends_with("IDLE")), "{text}");
        assert!(text.lines().any(|l| l.contains("crash.storage") && l.contains(" 4 ")), "{text}");
        assert!(text.lines().any(|l| l.contains("net.split") && l.ends_with("never on")), "{text}");
        // On in a run, never fired in any: idle (a sweep fails on it); off throughout: not.
        assert_eq!(table.idle(), vec!["disk.enospc".to_string()]);
    }
}
