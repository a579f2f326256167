//! The status page: one server-rendered HTML document with no external assets (no script, no
//! font, no stylesheet to fetch), reloading itself every `REFRESH_SECS`. A metadata leader
//! shows the cluster as it sees it; a follower shows its own Raft state and links to the
//! leader's page. Elements carry ids and `data-` attributes so tools (and the browser test)
//! can read the page without scraping text.

use std::fmt::Write;
use std::time::Duration;

use dfs_core::meta::leader::FsckReport;
use dfs_core::meta::MetaView;
use dfs_core::storage_node::StorageView;

pub const REFRESH_SECS: u32 = 5;

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms ago", d.as_millis()),
        1..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}\
.bar{width:10em;height:.8em;background:#e4e4e4;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:100%;background:#4a7fd0}\
.alive,.voter,.healthy{color:#17762c}.suspect,.unknown,.draining,.joining,.learner{color:#a66b00}\
.dead,.leaving,.unhealthy,.damage{color:#b3261e}.muted{color:#777}";

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(title),
        escape(title)
    );
}

fn foot(out: &mut String) {
    let _ =
        write!(out, "<p class=\"muted\">Reloads every {REFRESH_SECS} s. <a href=\"/metrics\">metrics</a> · <a href=\"/healthz\">health</a></p></body></html>");
}

/// The page of a metadata node. `leader_page`: the leader's page address, for a follower.
pub fn render_meta(view: &MetaView, fsck: Option<&FsckReport>, leader_page: Option<&str>) -> String {
    let mut out = String::new();
    let role = view.server_state.to_lowercase();
    head(&mut out, &format!("dfs · metadata node {} ({role})", view.id));
    let r = &view.raft;
    let _ = write!(out, "<h2>Cluster</h2><table id=\"summary\">");
    let leader = match &r.leader {
        Some(l) => format!("node {} at {}", l.id, escape(&l.addr)),
        None => "none known (an election may be under way)".to_string(),
    };
    let _ = write!(out, "<tr><th>Leader</th><td id=\"leader\" data-leader=\"{}\">{leader}", r.leader.as_ref().map_or(0, |l| l.id));
    if let (None, Some(page)) = (&view.leader, leader_page) {
        let _ = write!(out, " · <a id=\"leader-page\" href=\"http://{0}/\">its status page ({0})</a>", escape(page));
    }
    let _ = write!(out, "</td></tr><tr><th>Term</th><td>{}</td></tr>", r.term);
    let _ = write!(out, "<tr><th>Log</th><td>last index {}, applied {}, snapshot {}</td></tr>", r.last_log_index, r.applied_index, r.snapshot_index);
    let _ = write!(
        out,
        "<tr><th>Files</th><td id=\"files\" data-files=\"{}\">{} file{}, {}</td></tr>",
        view.files,
        view.files,
        if view.files == 1 { "" } else { "s" },
        bytes(view.bytes)
    );
    let _ = write!(out, "<tr><th>Uploads in progress</th><td>{}</td></tr>", view.uploads_open);
    if let Some(l) = &view.leader {
        let alive = l.nodes.iter().filter(|(_, n)| matches!(n.state(), "alive" | "draining" | "decommissioned")).count();
        let capacity: u64 = l.nodes.iter().map(|(_, n)| n.stats.capacity_bytes).sum();
        let stored: u64 = l.nodes.iter().map(|(_, n)| n.stats.stored_bytes).sum();
        let _ = write!(
            out,
            "<tr><th>Storage nodes</th><td id=\"nodes-alive\" data-alive=\"{alive}\" data-total=\"{}\">{alive} of {} alive</td></tr>",
            l.nodes.len(),
            l.nodes.len()
        );
        let _ = write!(
            out,
            "<tr><th>Stored</th><td>{} in chunk files, on disks of {} (a disk shared by nodes counts once per node)</td></tr>",
            bytes(stored),
            bytes(capacity)
        );
    }
    out.push_str("</table>");

    let _ = write!(out, "<h2>Metadata members</h2><table id=\"members\"><tr><th>Id</th><th>Address</th><th>Role</th><th>Matched index</th><th>Lag</th></tr>");
    for m in &r.members {
        let lag = match (view.leader.is_some(), m.lag) {
            (false, _) => "<span class=\"muted\">(the leader knows)</span>".to_string(),
            (true, Some(l)) => l.to_string(),
            (true, None) => "not replicating".to_string(),
        };
        let leader_mark = if r.leader.as_ref().is_some_and(|l| l.id == m.id) { " (leader)" } else { "" };
        let _ = write!(
            out,
            "<tr data-member=\"{}\" data-role=\"{}\"><td>{}{leader_mark}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{lag}</td></tr>",
            m.id,
            escape(&m.role),
            m.id,
            escape(&m.addr),
            escape(&m.role),
            escape(&m.role),
            m.matched_index.map_or("-".to_string(), |i| i.to_string())
        );
    }
    out.push_str("</table>");

    let Some(l) = &view.leader else {
        out.push_str("<p>This node is not the leader: storage nodes, health and repairs are on the leader's page.</p>");
        foot(&mut out);
        return out;
    };

    let _ = write!(
        out,
        "<h2>Storage nodes</h2><table id=\"storage-nodes\"><tr><th>Node</th><th>Address</th><th>State</th><th>Rack</th><th>Disk used</th><th>Chunks</th><th>Stored</th><th>Last heartbeat</th><th>Repairs</th></tr>"
    );
    for (repairs, n) in &l.nodes {
        let s = &n.stats;
        let used = s.capacity_bytes.saturating_sub(s.free_bytes);
        let pct = if s.capacity_bytes == 0 { 0.0 } else { used as f64 * 100.0 / s.capacity_bytes as f64 };
        let heartbeat = n.last_heartbeat_ago.map_or("never (since this leader took office)".to_string(), ago);
        let state = n.state();
        let _ = write!(
            out,
            "<tr data-node=\"{}\" data-addr=\"{}\" data-state=\"{state}\"><td>{}</td><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td>\
<td><span class=\"bar\" title=\"{pct:.0}%\"><span style=\"width:{pct:.1}%\"></span></span> {} of {}</td><td>{}</td><td>{}</td><td>{heartbeat}</td><td>{repairs}</td></tr>",
            n.id,
            escape(&n.addr),
            n.id,
            escape(&n.addr),
            escape(n.rack.as_deref().unwrap_or("-")),
            bytes(used),
            bytes(s.capacity_bytes),
            s.chunk_count,
            bytes(s.stored_bytes)
        );
    }
    out.push_str("</table>");

    out.push_str("<h2>Health (fsck)</h2>");
    match fsck {
        Some(f) => {
            let verdict = if f.healthy() { "healthy" } else { "unhealthy" };
            let _ = write!(
                out,
                "<p id=\"fsck\" data-verdict=\"{verdict}\" data-under=\"{}\" data-missing=\"{}\"><b class=\"{verdict}\">{verdict}</b>: {} files, {} chunks, {}; \
under-replicated {}, over-replicated {}, corrupt {}, missing {}, unreachable {}</p>",
                f.under_replicated,
                f.missing,
                f.files,
                f.chunks,
                bytes(f.bytes),
                f.under_replicated,
                f.over_replicated,
                f.corrupt,
                f.missing,
                f.unreachable
            );
            if !f.problems.is_empty() {
                out.push_str("<table id=\"problems\"><tr><th>Path</th><th>Chunk</th><th>Problem</th><th>Valid copies</th></tr>");
                for p in &f.problems {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td></tr>",
                        escape(&p.path),
                        p.index,
                        escape(p.kind),
                        p.valid,
                        p.replication
                    );
                }
                out.push_str("</table>");
                if f.problems_truncated {
                    out.push_str("<p class=\"muted\">More problems: run <code>dfs fsck</code>.</p>");
                }
            }
        }
        None => out.push_str("<p id=\"fsck\" data-verdict=\"unknown\">Not known yet.</p>"),
    }

    let rs = &l.repair;
    let in_flight: usize = l.nodes.iter().map(|(r, _)| r).sum();
    let _ = write!(
        out,
        "<h2>Repairs</h2><p id=\"repairs\" data-in-flight=\"{in_flight}\">{in_flight} in flight, {} waiting; since this leader took office: {} planned, {} done ({}), {} failed, {} timed out</p>",
        l.repair_queued,
        rs.planned,
        rs.completed,
        bytes(rs.completed_bytes),
        rs.failed,
        rs.timed_out
    );

    out.push_str("<h2>Recent events</h2>");
    if l.events.is_empty() {
        out.push_str("<p id=\"events\" class=\"muted\">None since this leader took office.</p>");
    } else {
        out.push_str("<table id=\"events\"><tr><th>When</th><th>What</th></tr>");
        for (since, e) in l.events.iter().rev() {
            let _ = write!(out, "<tr data-kind=\"{}\"><td>{}</td><td class=\"{}\">{}</td></tr>", e.kind, ago(*since), e.kind, escape(&e.text));
        }
        out.push_str("</table>");
    }
    foot(&mut out);
    out
}

/// The page of a storage node: what it holds; the cluster is on the metadata leader's page.
pub fn render_storage(id: &str, v: &StorageView) -> String {
    let mut out = String::new();
    head(&mut out, &format!("dfs · storage node {id}"));
    let _ = write!(
        out,
        "<table id=\"summary\"><tr><th>Registered</th><td>{}</td></tr><tr><th>Chunks</th><td>{} ({})</td></tr><tr><th>Disk</th><td>{} free of {} (reserve {})</td></tr>\
<tr><th>Writes in progress</th><td>{}</td></tr><tr><th>Scrub</th><td>{} chunks ({}) verified, {} passes, {} damaged found</td></tr>\
<tr><th>Repairs</th><td>{} running, {} done, {} failed</td></tr></table>",
        if v.registered { "yes" } else { "not yet" },
        v.chunks,
        bytes(v.stored_bytes),
        bytes(v.free_bytes),
        bytes(v.capacity_bytes),
        bytes(v.reserve_bytes),
        v.writes_in_progress,
        v.scrub.chunks_verified,
        bytes(v.scrub.bytes_verified),
        v.scrub.passes_completed,
        v.scrub_damaged,
        v.repairs_running,
        v.repairs_done,
        v.repairs_failed
    );
    foot(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped_and_sizes_read_well() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
