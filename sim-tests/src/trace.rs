//! The trace of one simulated run: scenario events and every log line, in order, hashed.
//!
//! madsim runs a whole simulation on one OS thread, so the trace is thread-local; one global
//! `tracing` subscriber appends formatted log lines to it. (Per-run subscribers would race
//! with tracing's global callsite cache when tests run in parallel and lose lines.)

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;

use sha2::{Digest, Sha256};

/// Log lines kept per run (a runaway loop that logs must not eat the machine's memory); the
/// rest are counted.
const LINES_MAX: usize = 2_000_000;

thread_local! {
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static DROPPED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn push_line(t: &mut Vec<String>, line: String) {
    if t.len() < LINES_MAX {
        t.push(line);
    } else {
        DROPPED.with(|d| d.set(d.get() + 1));
    }
}

/// Starts an empty trace on this thread. `install_subscriber` must have run first (before the
/// thread started: building the filter creates `HashMap`s, and madsim can seed std's hasher
/// only on a thread that has created none).
pub fn reset() {
    DROPPED.with(|d| d.set(0));
    TRACE.with(|t| t.borrow_mut().clear());
}

/// Records a scenario event, stamped with simulated time.
pub fn event(message: impl AsRef<str>) {
    let ms = madsim::time::TimeHandle::try_current().map(|t| t.elapsed().as_millis()).unwrap_or(0);
    let line = format!("[{ms:>7}ms] {}", message.as_ref());
    if std::env::var_os("DFS_SIM_VERBOSE").is_some() {
        println!("{line}");
    }
    TRACE.with(|t| push_line(&mut t.borrow_mut(), line));
}

/// Hash of everything recorded on this thread since `reset`.
pub fn hash() -> String {
    TRACE.with(|t| {
        let mut h = Sha256::new();
        h.update(DROPPED.with(|d| d.get()).to_le_bytes());
        for line in t.borrow().iter() {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        hex(&h.finalize()[..8])
    })
}

pub fn len() -> usize {
    TRACE.with(|t| t.borrow().len())
}

/// Whether a line recorded so far contains every one of `parts`.
pub fn contains(parts: &[&str]) -> bool {
    TRACE.with(|t| t.borrow().iter().any(|line| parts.iter().all(|p| line.contains(p))))
}

/// Every line recorded so far.
pub fn lines() -> Vec<String> {
    TRACE.with(|t| t.borrow().clone())
}

/// madsim numbers tasks from a process-wide counter, so a second run of one seed in the same
/// process sees other task ids in log spans (`task{id=N}`); nothing else differs. Drop them.
fn mask_task_ids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("task{id=") {
        out.push_str(&rest[..i]);
        out.push_str("task{id=_");
        let after = &rest[i + "task{id=".len()..];
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct TraceWriter;

impl Write for TraceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        TRACE.with(|t| {
            let mut t = t.borrow_mut();
            for line in text.lines() {
                push_line(&mut t, mask_task_ids(line));
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's one subscriber: the log lines (filter `RUST_LOG`, by default
/// `info,dfs_core=debug,openraft=warn`) go to the trace, and core's events at debug and above
/// to the timeline whatever `RUST_LOG` says, so that the timeline (and its hash) does not
/// change with the log filter.
pub fn install_subscriber() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,dfs_core=debug,openraft=warn"));
        let log = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(|| TraceWriter).with_filter(filter);
        // madsim's `node` spans (level error) name the host an event happened on.
        let events = crate::timeline::Layer.with_filter(
            tracing_subscriber::filter::Targets::new().with_target("dfs_core", tracing::Level::DEBUG).with_target("madsim", tracing::Level::ERROR),
        );
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log).with(events));
    });
}
