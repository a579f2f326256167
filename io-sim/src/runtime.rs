//! openraft's `AsyncRuntime` on madsim: tasks, timers and the election-timeout RNG all come
//! from the simulator, so a seed fixes every Raft decision.
//!
//! A host may have a **clock rate** (`set_clock_rate`, the drift of `crate::ClockSkew`):
//! openraft's timers on that host then run fast or slow like its core clock does. Its
//! `Instant::now` reads host time (`anchor + elapsed × rate`), and a sleep of `d` host time
//! takes `d / rate` of the simulation's, so election timeouts and heartbeats drift apart
//! between hosts as they do on real machines. Rates are per simulation thread (each seed runs
//! on a fresh one) and keyed by madsim's node id, which a restarted node keeps.
//!
//! openraft's own `TokioRuntime` cannot be used: it calls the real tokio, which has no reactor
//! inside madsim. The RNG matters as much: on Linux madsim does not intercept `getrandom`, so
//! `rand::thread_rng` would make elections differ between runs of one seed.

use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::cell::RefCell;
use std::collections::HashMap;

use madsim::task::NodeId;
use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct SimRuntime;

/// A host's timer rate: host seconds per simulated second, from `anchor` on.
#[derive(Clone, Copy)]
struct Rate {
    anchor: std::time::Instant,
    rate: f64,
}

thread_local! {
    static RATES: RefCell<HashMap<NodeId, Rate>> = RefCell::new(HashMap::new());
}

/// Makes openraft's timers on `node` run at `rate` (1.02: 2 % fast) from now on. Call it from
/// the simulation's thread, once per host (not again on restart: the host's oscillator stays).
pub fn set_clock_rate(node: NodeId, rate: f64) {
    let anchor = madsim::time::Instant::now();
    RATES.with(|r| r.borrow_mut().insert(node, Rate { anchor, rate }));
}

/// The current host's rate, if it has one other than 1.
fn current_rate() -> Option<Rate> {
    let node = madsim::plugin::node();
    RATES.with(|r| r.borrow().get(&node).copied()).filter(|r| r.rate != 1.0)
}

/// Host time at simulated instant `t`.
fn host_instant(t: std::time::Instant) -> std::time::Instant {
    match current_rate() {
        Some(r) if t > r.anchor => r.anchor + (t - r.anchor).mul_f64(r.rate),
        _ => t,
    }
}

/// The simulated instant at which the current host's clock reads `host`.
fn sim_instant(host: std::time::Instant) -> std::time::Instant {
    match current_rate() {
        Some(r) if host > r.anchor => r.anchor + (host - r.anchor).div_f64(r.rate),
        _ => host,
    }
}

/// Simulated time a host-time duration takes on the current host.
fn sim_duration(d: Duration) -> Duration {
    match current_rate() {
        Some(r) => d.div_f64(r.rate),
        None => d,
    }
}

/// madsim's (simulated) `std::time::Instant`, wrapped because of the orphan rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimInstant(pub std::time::Instant);

impl Add<Duration> for SimInstant {
    type Output = SimInstant;
    fn add(self, d: Duration) -> SimInstant {
        SimInstant(self.0 + d)
    }
}
impl AddAssign<Duration> for SimInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d
    }
}
impl Sub<Duration> for SimInstant {
    type Output = SimInstant;
    fn sub(self, d: Duration) -> SimInstant {
        SimInstant(self.0 - d)
    }
}
impl Sub<SimInstant> for SimInstant {
    type Output = Duration;
    fn sub(self, other: SimInstant) -> Duration {
        self.0.saturating_duration_since(other.0)
    }
}
impl SubAssign<Duration> for SimInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d
    }
}
impl openraft::Instant for SimInstant {
    fn now() -> Self {
        SimInstant(host_instant(madsim::time::Instant::now()))
    }
}

#[derive(Debug)]
pub struct Elapsed;
impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}
impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// A nameable timeout future (madsim's `timeout` returns an `impl Future`).
    pub struct Timeout<F> {
        #[pin] future: F,
        #[pin] sleep: madsim::time::Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for SimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = SimInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(sim_duration(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(sim_instant(deadline.0))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout { future, sleep: madsim::time::sleep(sim_duration(duration)) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Timeout { future, sleep: madsim::time::sleep_until(sim_instant(deadline.0)) }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        madsim::rand::thread_rng()
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
