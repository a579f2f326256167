//! The trace of one simulated run: scenario events and every log line, in order, hashed.
//!
//! madsim runs a whole simulation on one OS thread, so the trace is thread-local; one global
//! `tracing` subscriber appends formatted log lines to it. (Per-run subscribers would race
//! with tracing's global callsite cache when tests run in parallel and lose lines.)

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;

use sha2::{Digest, Sha256};

thread_local! {
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Starts an empty trace on this thread. `install_subscriber` must have run first (before the
/// thread started: building the filter creates `HashMap`s, and madsim can seed std's hasher
/// only on a thread that has created none).
pub fn reset() {
    TRACE.with(|t| t.borrow_mut().clear());
}

/// Records a scenario event, stamped with simulated time.
pub fn event(message: impl AsRef<str>) {
    let ms = madsim::time::TimeHandle::try_current().map(|t| t.elapsed().as_millis()).unwrap_or(0);
    let line = format!("[{ms:>7}ms] {}", message.as_ref());
    if std::env::var_os("DFS_SIM_VERBOSE").is_some() {
        println!("{line}");
    }
    TRACE.with(|t| t.borrow_mut().push(line));
}

/// Hash of everything recorded on this thread since `reset`.
pub fn hash() -> String {
    TRACE.with(|t| {
        let mut h = Sha256::new();
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
                t.push(mask_task_ids(line));
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn install_subscriber() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,dfs_core=debug,openraft=warn"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| TraceWriter)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
