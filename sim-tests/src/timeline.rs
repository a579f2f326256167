//! The timeline of one simulated run: what happened, when, where, as typed records a person
//! can read (`render`) and filter by host, chunk, file, kind and time.
//!
//! What it promises: every record carries the simulated time, the host it happened on (`-` for
//! the harness itself) and a kind; records come from the harness (client operations and their
//! results, faults injected and healed, phases, checker verdicts), from the leader observer
//! (leaders elected), from the fault sites (what fired), and from core's own log events at
//! debug level and above (chunks written, deleted, repaired, replicas reported bad, nodes
//! registered), mapped by `Layer`. At most `RECORDS_MAX` are kept (the oldest are dropped and
//! counted). Its hash (`hash`) is over the records only, so it does not change with the log
//! filter.
//!
//! What it does not do: keep the raw log. That is `trace`'s job (and the replay's `--log`
//! file).
//!
//! How it is driven: one simulation per thread, so the timeline is thread-local; `reset` at the
//! start of a run. Core's events say where they happened through madsim's `node` span.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;

use dfs_core::ids::ChunkId;
use sha2::{Digest, Sha256};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Records kept per run; a 60 s chaos run makes a few thousand.
pub const RECORDS_MAX: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The scenario's phases and the fault plan.
    Phase,
    /// A client operation's start or end.
    Op,
    /// A fault injected or healed by the harness.
    Fault,
    /// A fault site fired inside a driver.
    Site,
    /// A metadata leader elected.
    Leader,
    /// A chunk written, deleted, found bad.
    Chunk,
    /// Repair and garbage collection.
    Repair,
    /// Nodes joining, registering, opening.
    Node,
    /// A checker's verdict.
    Check,
    /// Any other log event of core, at info level or above.
    Log,
}

impl Kind {
    pub const ALL: [Kind; 10] = [Kind::Phase, Kind::Op, Kind::Fault, Kind::Site, Kind::Leader, Kind::Chunk, Kind::Repair, Kind::Node, Kind::Check, Kind::Log];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Phase => "phase",
            Kind::Op => "op",
            Kind::Fault => "fault",
            Kind::Site => "site",
            Kind::Leader => "leader",
            Kind::Chunk => "chunk",
            Kind::Repair => "repair",
            Kind::Node => "node",
            Kind::Check => "check",
            Kind::Log => "log",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        let name = name.trim_end_matches('s');
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub at_us: u64,
    pub host: String,
    pub kind: Kind,
    pub text: String,
    /// The remote paths the record is about (an operation's source and destination).
    pub paths: Vec<String>,
    /// The file id it is about, if known (an operation's result, an upload).
    pub file: Option<u64>,
    pub chunk: Option<ChunkId>,
}

impl Record {
    fn hash_into(&self, h: &mut Sha256) {
        let _ = writeln!(Line(h), "{} {} {} {}|{:?}|{:?}|{:?}", self.at_us, self.host, self.kind.name(), self.text, self.paths, self.file, self.chunk);
    }
}

struct Line<'a>(&'a mut Sha256);
impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

#[derive(Default)]
struct State {
    records: VecDeque<Record>,
    dropped: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// Starts an empty timeline on this thread.
pub fn reset() {
    STATE.with(|s| *s.borrow_mut() = State::default());
}

/// Simulated time now, in µs (0 outside a simulation).
pub fn now_us() -> u64 {
    madsim::time::TimeHandle::try_current().map(|t| t.elapsed().as_micros() as u64).unwrap_or(0)
}

/// Records an event of the harness (host `-`) or of a named host.
pub fn record(kind: Kind, host: &str, text: impl Into<String>) {
    push(Record { at_us: now_us(), host: host.to_string(), kind, text: text.into(), paths: Vec::new(), file: None, chunk: None });
}

/// Records an event about remote paths (and, once known, the file id).
pub fn record_op(host: &str, text: impl Into<String>, paths: Vec<String>, file: Option<u64>) {
    push(Record { at_us: now_us(), host: host.to_string(), kind: Kind::Op, text: text.into(), paths, file, chunk: None });
}

/// Records an event about a chunk.
pub fn record_chunk(kind: Kind, host: &str, text: impl Into<String>, chunk: ChunkId) {
    push(Record { at_us: now_us(), host: host.to_string(), kind, text: text.into(), paths: Vec::new(), file: None, chunk: Some(chunk) });
}

pub fn push(record: Record) {
    if std::env::var_os("DFS_SIM_VERBOSE").is_some() {
        println!("{}", render_one(&record));
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.records.len() == RECORDS_MAX {
            s.records.pop_front();
            s.dropped += 1;
        }
        s.records.push_back(record);
    });
}

/// Every record kept, oldest first, and how many older ones were dropped.
pub fn records() -> (Vec<Record>, u64) {
    STATE.with(|s| {
        let s = s.borrow();
        (s.records.iter().cloned().collect(), s.dropped)
    })
}

pub fn len() -> usize {
    STATE.with(|s| s.borrow().records.len())
}

/// Hash of the records since `reset` (the determinism check compares it).
pub fn hash() -> String {
    STATE.with(|s| {
        let s = s.borrow();
        let mut h = Sha256::new();
        h.update(s.dropped.to_le_bytes());
        for r in &s.records {
            r.hash_into(&mut h);
        }
        h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Which records to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only records of this host (others' faults and leader changes still show as context).
    pub host: Option<String>,
    /// Only records about chunks whose hex id starts with this.
    pub chunk: Option<String>,
    /// Only records about this remote path: its operations, and the chunks of every file that
    /// was at the path.
    pub path: Option<String>,
    /// Only these kinds (all when empty).
    pub kinds: BTreeSet<Kind>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Hide the context records (faults, leaders, phases, checks) that a subject filter keeps.
    pub no_context: bool,
}

impl Filter {
    fn has_subject(&self) -> bool {
        self.host.is_some() || self.chunk.is_some() || self.path.is_some()
    }
}

fn is_context(kind: Kind) -> bool {
    matches!(kind, Kind::Phase | Kind::Fault | Kind::Leader | Kind::Check)
}

/// The records that pass `filter`, in order.
pub fn select<'a>(records: &'a [Record], filter: &Filter) -> Vec<&'a Record> {
    // File ids that were ever at the path, learned from the records about it.
    let files: BTreeSet<u64> = match &filter.path {
        Some(p) => records.iter().filter(|r| r.paths.iter().any(|q| q == p)).filter_map(|r| r.file).collect(),
        None => BTreeSet::new(),
    };
    records
        .iter()
        .filter(|r| filter.kinds.is_empty() || filter.kinds.contains(&r.kind))
        .filter(|r| filter.from_ms.is_none_or(|ms| r.at_us >= ms * 1000))
        .filter(|r| filter.to_ms.is_none_or(|ms| r.at_us <= ms * 1000))
        .filter(|r| {
            if !filter.has_subject() {
                return true;
            }
            let host = filter.host.as_ref().is_none_or(|h| &r.host == h || r.text.contains(h.as_str()));
            let chunk = filter.chunk.as_ref().is_none_or(|c| r.chunk.is_some_and(|id| chunk_matches(&id, c)));
            let path = filter.path.as_ref().is_none_or(|p| {
                r.paths.iter().any(|q| q == p)
                    || r.file.is_some_and(|f| files.contains(&f))
                    || r.chunk.and_then(|c| c.owner()).is_some_and(|(f, _)| files.contains(&f.0))
            });
            (host && chunk && path) || (!filter.no_context && is_context(r.kind))
        })
        .collect()
}

/// `c` names the chunk `id`: a prefix of its hex id, or `FILE:INDEX` as the timeline shows it.
fn chunk_matches(id: &ChunkId, c: &str) -> bool {
    match c.split_once(':') {
        Some((file, index)) => id.owner().is_some_and(|(f, i)| f.0.to_string() == file && i.to_string() == index),
        None => id.to_hex().starts_with(c),
    }
}

pub fn render_one(r: &Record) -> String {
    let chunk = r.chunk.map(|c| format!(" [chunk {}]", short(&c))).unwrap_or_default();
    format!("{:>10.3}  {:<10} {:<6} {}{chunk}", r.at_us as f64 / 1e6, r.host, r.kind.name(), r.text)
}

/// A chunk id as people read it: the file and the index (the hash prefix is noise).
fn short(c: &ChunkId) -> String {
    match c.owner() {
        Some((f, i)) => format!("{}:{i}", f.0),
        None => c.to_hex(),
    }
}

/// The records that pass `filter` as text, one line each, with a header; at most the `last`
/// ones when given.
pub fn render(records: &[Record], filter: &Filter, last: Option<usize>) -> String {
    let chosen = select(records, filter);
    let skip = last.map(|n| chosen.len().saturating_sub(n)).unwrap_or(0);
    let mut out = format!("{:>10}  {:<10} {:<6} event\n", "t (s)", "host", "kind");
    if skip > 0 {
        let _ = writeln!(out, "{:>10}  ({skip} earlier records not shown)", "...");
    }
    for r in &chosen[skip..] {
        out.push_str(&render_one(r));
        out.push('\n');
    }
    out
}

/// Collects an event's fields as `message key=value ...`, and the ones the timeline indexes.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    chunk: Option<ChunkId>,
    file: Option<u64>,
    remote: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_text(field, text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_text(field, value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "file" {
            self.file = Some(value);
        }
        self.record_text(field, value.to_string());
    }
}

impl Fields {
    fn record_text(&mut self, field: &Field, text: String) {
        match field.name() {
            "message" => self.message = text,
            name => {
                if name == "chunk" {
                    self.chunk = ChunkId::from_hex(&text);
                }
                if name == "remote" {
                    self.remote = Some(text.clone());
                }
                if name == "file" && self.file.is_none() {
                    self.file = text.parse().ok();
                }
                let _ = write!(self.rest, " {name}={text}");
            }
        }
    }
}

/// Which kind a core event is, from its message; `None` to leave it out (per-attempt retries
/// and other noise that the debug log still has).
fn classify(level: &tracing::Level, message: &str, has_chunk: bool) -> Option<Kind> {
    let m = message;
    if m == "fault site fired" {
        return Some(Kind::Site);
    }
    if m.contains("retrying") || m.contains("following metadata leader") || m.contains("early writeback") {
        return None;
    }
    if m.contains("repair") || m.contains("garbage") || m.contains("delete") && !has_chunk {
        return Some(Kind::Repair);
    }
    if has_chunk || m.contains("chunk") || m.contains("replica") {
        return Some(Kind::Chunk);
    }
    if m.contains("registered") || m.contains("joined") || m.contains("opened") || m.contains("member") || m.contains("storage node") {
        return Some(Kind::Node);
    }
    if m.contains("upload") || m.contains("committed") {
        return Some(Kind::Op);
    }
    (*level <= tracing::Level::INFO).then_some(Kind::Log)
}

/// Adds core's log events (target `dfs_core`, debug and above) to the timeline of the thread
/// they happen on.
pub struct Layer;

/// The host a madsim `node` span stands for.
struct NodeName(String);

struct NameField(Option<String>);
impl Visit for NameField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_string());
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Layer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut name = NameField(None);
        attrs.record(&mut name);
        if let (Some(name), Some(span)) = (name.0, ctx.span(id)) {
            span.extensions_mut().insert(NodeName(name));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("dfs_core") || *meta.level() > tracing::Level::DEBUG {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(kind) = classify(meta.level(), &fields.message, fields.chunk.is_some()) else { return };
        // madsim runs each host's tasks inside a span `node{id=.. name=".."}`.
        let host = ctx
            .event_scope(event)
            .and_then(|scope| scope.from_root().find_map(|span| span.extensions().get::<NodeName>().map(|n| n.0.clone())))
            .unwrap_or_else(|| "-".into());
        let level = if *meta.level() <= tracing::Level::WARN { format!("{}: ", meta.level()) } else { String::new() };
        push(Record {
            at_us: now_us(),
            host,
            kind,
            text: format!("{level}{}{}", fields.message, fields.rest),
            paths: fields.remote.into_iter().collect(),
            file: fields.file,
            chunk: fields.chunk,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: u64, host: &str, kind: Kind, text: &str, paths: &[&str], file: Option<u64>, chunk: Option<ChunkId>) -> Record {
        Record { at_us: at_ms * 1000, host: host.into(), kind, text: text.into(), paths: paths.iter().map(|p| p.to_string()).collect(), file, chunk }
    }

    #[test]
    fn a_path_filter_follows_the_files_that_were_at_the_path_to_their_chunks() {
        use dfs_core::ids::FileId;
        let c7 = ChunkId::derive(FileId(7), 0);
        let c8 = ChunkId::derive(FileId(8), 1);
        let records = vec![
            rec(1, "client-1", Kind::Op, "put /g1/a -> ok", &["/g1/a"], Some(7), None),
            rec(2, "storage-1", Kind::Chunk, "chunk written", &[], None, Some(c7)),
            rec(3, "storage-2", Kind::Chunk, "chunk written", &[], None, Some(c8)),
            rec(4, "-", Kind::Fault, "crash storage-2", &[], None, None),
            rec(5, "client-1", Kind::Op, "get /g1/b", &["/g1/b"], None, None),
        ];
        let f = Filter { path: Some("/g1/a".into()), ..Filter::default() };
        let shown: Vec<u64> = select(&records, &f).iter().map(|r| r.at_us / 1000).collect();
        assert_eq!(shown, vec![1, 2, 4], "the op, its file's chunk, and the fault as context");
        let f = Filter { path: Some("/g1/a".into()), no_context: true, ..Filter::default() };
        assert_eq!(select(&records, &f).len(), 2);
        let f = Filter { chunk: Some(c8.to_hex()[..6].to_string()), no_context: true, ..Filter::default() };
        assert_eq!(select(&records, &f).len(), 1);
        let f = Filter { chunk: Some("8:1".into()), no_context: true, ..Filter::default() };
        assert_eq!(select(&records, &f).len(), 1);
        let f = Filter { host: Some("storage-2".into()), no_context: true, ..Filter::default() };
        assert_eq!(select(&records, &f).len(), 2, "its own record and the fault that names it");
        let f = Filter { kinds: [Kind::Op].into(), from_ms: Some(2), ..Filter::default() };
        assert_eq!(select(&records, &f).len(), 1);
        assert!(render(&records, &Filter::default(), Some(2)).contains("3 earlier records not shown"));
    }
}
