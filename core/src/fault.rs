//! Fault sites (FoundationDB's BUGGIFY): named points in core's drivers where a simulation may
//! inject what the world could do there anyway: a delay, or a failure the code around the site
//! must already survive (a disk write that errs, a peer that does not answer).
//!
//! What it promises: in production builds (without `cfg(madsim)`) every site compiles to
//! nothing: `inject` returns `Ok(())` at once and no hook can be installed. In a simulation,
//! a site does what the hook installed on this thread (one simulation per thread) decides; with
//! no hook, nothing.
//!
//! What it does not do: decide. Which sites are active, how often they fire and with what, is
//! the simulation's plan (`sim-tests`), drawn from the seed so that a run replays exactly.
//!
//! How it is driven: a driver awaits `inject(clock, Site::X)` at the site and maps
//! `Err(Injected)` to the error the real failure would produce there.

use std::time::Duration;

use crate::env::Clock;

/// The fault sites. Each names one point in one driver and what may happen there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// A storage node about to write a chunk (or a batch) to disk: delay, or a disk error.
    StorageStore,
    /// A primary about to relay a chunk to a replica: delay, or the replica unreachable.
    StorageForward,
    /// A storage node about to serve a read: delay, or the node too busy.
    StorageRead,
    /// A storage node about to send a heartbeat: delay, or the heartbeat lost.
    StorageHeartbeat,
    /// The metadata leader about to propose a batch of commands to Raft: delay.
    MetaPropose,
    /// A client about to send a chunk to its primary: delay.
    ClientSend,
    /// The simulated network, a server about to answer a call it carried out: fail = the
    /// answer is lost (the caller cannot tell whether the call took effect).
    NetLoseReply,
    /// The simulated network, a caller making a call: delay = it gives up after that long,
    /// cancelling the handler mid-call wherever it is.
    NetAbandonCall,
}

impl Site {
    pub const ALL: [Site; 8] = [
        Site::StorageStore,
        Site::StorageForward,
        Site::StorageRead,
        Site::StorageHeartbeat,
        Site::MetaPropose,
        Site::ClientSend,
        Site::NetLoseReply,
        Site::NetAbandonCall,
    ];

    /// Whether the site may fail (some may only be delayed: a failure there would not be the
    /// world's doing).
    pub fn may_fail(self) -> bool {
        !matches!(self, Site::MetaPropose | Site::ClientSend | Site::NetAbandonCall)
    }

    pub fn name(self) -> &'static str {
        match self {
            Site::StorageStore => "storage.store",
            Site::StorageForward => "storage.forward",
            Site::StorageRead => "storage.read",
            Site::StorageHeartbeat => "storage.heartbeat",
            Site::MetaPropose => "meta.propose",
            Site::ClientSend => "client.send",
            Site::NetLoseReply => "net.lose_reply",
            Site::NetAbandonCall => "net.abandon_call",
        }
    }
}

/// What a site does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Delay(Duration),
    /// Fail as the world would there (the site's caller says how).
    Fail,
}

/// A site fired with `Fault::Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injected(pub Site);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault injected at {}", self.0.name())
    }
}

#[cfg(madsim)]
mod hook {
    use std::cell::RefCell;

    use super::{Fault, Site};

    type Hook = Box<dyn FnMut(Site) -> Option<Fault>>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub fn install(hook: impl FnMut(Site) -> Option<Fault> + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    pub fn remove() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }

    pub fn decide(site: Site) -> Option<Fault> {
        // A fault never fails a site that may not fail, whatever the hook says.
        HOOK.with(|h| h.borrow_mut().as_mut().and_then(|hook| hook(site))).filter(|f| *f != Fault::Fail || site.may_fail())
    }
}

/// Installs the simulation's decision for every site reached on this thread.
#[cfg(madsim)]
pub fn install(hook: impl FnMut(Site) -> Option<Fault> + 'static) {
    hook::install(hook);
}

/// Removes this thread's hook: no site fires any more.
#[cfg(madsim)]
pub fn remove() {
    hook::remove();
}

/// What the site does this time (nothing, in production builds).
#[inline(always)]
pub fn decide(site: Site) -> Option<Fault> {
    #[cfg(madsim)]
    return hook::decide(site);
    #[cfg(not(madsim))]
    {
        let _ = site;
        None
    }
}

/// Runs the site: sleeps on a delay, returns `Err` on a failure.
pub async fn inject<C: Clock>(clock: &C, site: Site) -> Result<(), Injected> {
    match decide(site) {
        None => Ok(()),
        Some(Fault::Delay(d)) => {
            clock.sleep(d).await;
            Ok(())
        }
        Some(Fault::Fail) => Err(Injected(site)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_simulation_no_site_fires() {
        for site in Site::ALL {
            assert_eq!(decide(site), None, "{}", site.name());
        }
    }
}
