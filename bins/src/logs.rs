//! Logs: one line per event on stderr, as text or (`--log-format json`) as JSON objects, each
//! naming the node that wrote it (role and id), so that lines from many nodes gathered in one
//! place (docker-compose logs, a log shipper) still say whose they are.

use std::fmt;
use std::sync::RwLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The node this process is: role and id (the id may be learned after start-up, e.g. a
/// storage node's, read from its data dir).
static NODE: RwLock<Option<(String, String)>> = RwLock::new(None);

pub fn set_node(role: &str, id: &str) {
    *NODE.write().unwrap_or_else(|e| e.into_inner()) = Some((role.to_string(), id.to_string()));
}

fn node() -> Option<(String, String)> {
    NODE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

struct NodeFormat {
    json: bool,
    text: Format<Full>,
}

/// An event's fields as JSON values; `message` kept apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
}

impl<S, N> FormatEvent<S, N> for NodeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let node = node();
        if !self.json {
            if let Some((role, id)) = &node {
                write!(writer, "[{role}{}{id}] ", if id.is_empty() { "" } else { " " })?;
            }
            return self.text.format_event(ctx, writer, event);
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        if let Some((role, id)) = node {
            line.insert("role".into(), role.into());
            line.insert("node".into(), id.into());
        }
        line.insert("target".into(), event.metadata().target().into());
        line.insert("message".into(), fields.message.unwrap_or_default().into());
        if !fields.fields.is_empty() {
            line.insert("fields".into(), fields.fields.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Logs go to stderr, one line per event, level from `RUST_LOG`. Daemons log `info` by
/// default; client commands only warnings, so their output stays readable.
pub fn init(daemon: bool, format: LogFormat) {
    // openraft warns about routine election races; its errors still show.
    let default = if daemon { "info,openraft=error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::format().with_ansi(ansi).with_target(false);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(NodeFormat { json: format == LogFormat::Json, text })
        .init();
}
