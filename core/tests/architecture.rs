//! The layering rules of DESIGN.md, checked on every `cargo test`:
//!
//! - `dfs-core` does not depend, even indirectly, on tonic, madsim, a network stack, or the
//!   environment crates, and its sources reach no real I/O, time, threads or entropy;
//! - `dfs-io-real` and `dfs-io-sim` do not depend on each other;
//! - nothing depends on the binaries.
//!
//! Dependencies are read from Cargo.lock (offline, every target platform at once).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// package name → names of its dependencies, from Cargo.lock.
fn lock_graph() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace().join("Cargo.lock")).expect("Cargo.lock is committed");
    let lock: toml::Table = text.parse().expect("Cargo.lock parses");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in lock["package"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap().to_string();
        let deps = package.get("dependencies").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        let entry = graph.entry(name).or_default();
        for dep in deps {
            // "name", "name version" or "name version (source)"
            entry.insert(dep.as_str().unwrap().split(' ').next().unwrap().to_string());
        }
    }
    graph
}

fn closure(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(graph.get(&p).into_iter().flatten().cloned());
        }
    }
    seen.remove(root);
    seen
}

#[test]
fn core_depends_on_no_backend_network_stack_or_simulator() {
    let deps = closure(&lock_graph(), "dfs-core");
    let forbidden: Vec<&String> = deps
        .iter()
        .filter(|d| {
            d.starts_with("tonic")
                || d.starts_with("madsim")
                || d.starts_with("hyper")
                || d.as_str() == "h2"
                || d.starts_with("dfs-io")
                || d.as_str() == "dfs"
                || d.as_str() == "dfs-sim-tests"
        })
        .collect();
    assert!(forbidden.is_empty(), "dfs-core depends on {forbidden:?}");
    assert!(deps.contains("openraft") && deps.contains("prost"), "the lock graph looks wrong: {deps:?}");
}

#[test]
fn environments_do_not_depend_on_each_other_and_nothing_depends_on_the_binaries() {
    let graph = lock_graph();
    assert!(!closure(&graph, "dfs-io-real").contains("dfs-io-sim"), "dfs-io-real depends on dfs-io-sim");
    assert!(!closure(&graph, "dfs-io-sim").contains("dfs-io-real"), "dfs-io-sim depends on dfs-io-real");
    for package in graph.keys().filter(|p| p.as_str() != "dfs") {
        assert!(!closure(&graph, package).contains("dfs"), "{package} depends on the dfs binaries");
    }
}

/// Text that means real I/O, real time, threads or entropy in Rust source.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "Instant::now",
    "SystemTime::now",
    "UNIX_EPOCH",
    "thread_rng",
    "rand::",
    "OsRng",
    "getrandom",
    "tokio::",
    "tonic::",
    "madsim::",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_sources_reach_no_real_io_time_threads_or_entropy() {
    let mut files = Vec::new();
    rust_files(&workspace().join("core/src"), &mut files);
    assert!(files.len() > 5, "found too few sources: {files:?}");
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for pattern in FORBIDDEN_IN_CORE {
                if code.contains(pattern) {
                    hits.push(format!("{}:{}: {pattern}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "dfs-core reaches the world directly:\n{}", hits.join("\n"));
}

#[test]
fn core_manifest_names_no_backend() {
    let manifest: toml::Table = std::fs::read_to_string(workspace().join("core/Cargo.toml")).unwrap().parse().unwrap();
    let deps: Vec<&String> = manifest["dependencies"].as_table().unwrap().keys().collect();
    for bad in ["tokio", "tonic", "madsim", "dfs-io-real", "dfs-io-sim", "rand"] {
        assert!(!deps.iter().any(|d| d.as_str() == bad), "core/Cargo.toml depends on {bad}");
    }
}

/// Every property test keeps its failing cases in `proptest-regressions/` at the top (so they
/// are committed and replayed first): proptest's default writes them beside the source, where
/// nobody looks, or nowhere.
#[test]
fn every_property_test_keeps_its_regressions_in_the_shared_directory() {
    let mut files = Vec::new();
    for dir in ["core/src", "io-sim/src", "io-real/src", "bins/src", "sim-tests/src", "sim-tests/tests", "bins/tests"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut blocks = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if !line.trim_start().trim_start_matches("proptest::").starts_with("proptest! {") {
                continue;
            }
            blocks += 1;
            let config = lines[n + 1..(n + 8).min(lines.len())].join("\n");
            if !(config.contains("#![proptest_config(") && config.contains("/../proptest-regressions/")) {
                missing.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(blocks >= 10, "found only {blocks} proptest! blocks: is the scan looking in the right places?");
    assert!(missing.is_empty(), "proptest! blocks without a failure_persistence file in proptest-regressions/:\n{}", missing.join("\n"));
}

/// The three roles (the client, the metadata node, the storage node) share what they agree
/// on through neutral modules (`limits`, `rpc`, `proto`, `meta_client`, `namespace`, ...),
/// never through another role's internals, so each can change alone.
#[test]
fn no_role_imports_another_roles_internals() {
    let roles = [("client", "core/src/client"), ("meta", "core/src/meta"), ("storage_node", "core/src/storage_node")];
    let mut hits = Vec::new();
    let mut scanned = 0;
    for (role, dir) in roles {
        let mut files = Vec::new();
        rust_files(&workspace().join(dir), &mut files);
        files.push(workspace().join(format!("{dir}.rs")));
        for file in files.iter().filter(|f| f.exists()) {
            scanned += 1;
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for (other, _) in roles.iter().filter(|(other, _)| *other != role) {
                    if code.contains(&format!("crate::{other}::")) || code.contains(&format!("crate::{other}}}")) || code.contains(&format!("crate::{other};"))
                    {
                        hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(scanned > 20, "found only {scanned} role sources: is the scan looking in the right places?");
    assert!(hits.is_empty(), "a role reaches into another's internals:\n{}", hits.join("\n"));
}
