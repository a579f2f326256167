//! Wildcards in remote paths, expanded by the client as a shell expands local ones:
//! `dfs rm /logs/2026-*`, `dfs get '/data/*/part-?' ./out`. Quote them, or the local shell
//! may expand them first.
//!
//! `*`, `?` and `[...]` match within one path component (never a `/`); a name that starts with
//! `.` matches only a pattern that does too. A path without wildcards is taken as it is, even
//! when nothing is there (the command then says so); a pattern that matches nothing is an
//! error, as in most shells. Expansion lists only the directories the pattern walks through,
//! one page at a time.

use dfs_core::client::DfsClient;
use dfs_core::proto::EntryKind;
use dfs_io_real::RealEnv;

use crate::cli::{join_remote, remote_path, shown, usage};

/// Whether a path argument holds wildcards.
pub fn has_wildcards(arg: &str) -> bool {
    arg.contains(['*', '?', '['])
}

/// Paths a pattern matches most (a bound on what one argument may expand to).
const MATCHES_MAX: usize = 100_000;

/// The remote paths `arg` names: itself (checked) if it has no wildcards, else every
/// existing path it matches, sorted.
pub async fn expand(client: &DfsClient<RealEnv>, arg: &str) -> anyhow::Result<Vec<String>> {
    if !has_wildcards(arg) {
        return Ok(vec![remote_path(arg)?]);
    }
    // Checked as a path first (length, control characters...); the wildcards are valid there.
    let path = remote_path(arg)?;
    let options = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
    let mut current = vec!["/".to_string()];
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (k, component) in components.iter().enumerate() {
        let last = k + 1 == components.len();
        let mut next = Vec::new();
        if !has_wildcards(component) {
            next.extend(current.iter().map(|dir| join_remote(dir, component)));
        } else {
            let pattern = glob::Pattern::new(component).map_err(|e| usage(format!("{}: not a valid pattern: {e}", shown(arg))))?;
            for dir in &current {
                let entries = match client.list_dir(dir, false).await {
                    Ok(entries) => entries,
                    // A path that is not there (or a file where a directory was expected)
                    // matches nothing.
                    Err(e) if matches!(e.rpc(), Some(dfs_core::rpc::RpcError::NotFound(_))) => continue,
                    Err(e) => return Err(e.into()),
                };
                for e in entries {
                    // A directory lists its children; a file "lists" itself: not a child.
                    if e.path == *dir {
                        continue;
                    }
                    if pattern.matches_with(&e.name, options) && (last || e.kind == EntryKind::Directory as i32) {
                        next.push(e.path);
                    }
                }
            }
        }
        if next.len() > MATCHES_MAX {
            return Err(usage(format!("{}: matches more than {MATCHES_MAX} paths; narrow it", shown(arg))));
        }
        current = next;
    }
    // Literal components after the last wildcard are not checked by a listing: keep what exists
    // (a pattern ending in a wildcard matched listed entries only: no lookup per match).
    let trailing_literal = components.last().is_some_and(|c| !has_wildcards(c));
    let mut found = Vec::new();
    for p in current {
        if !trailing_literal || client.entry(&p).await?.is_some() {
            found.push(p);
        }
    }
    if found.is_empty() {
        anyhow::bail!("{}: no match", shown(arg));
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// `expand` of every argument, in order.
pub async fn expand_all(client: &DfsClient<RealEnv>, args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        out.extend(expand(client, a).await?);
    }
    Ok(out)
}
