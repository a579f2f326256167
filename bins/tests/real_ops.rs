//! Operations on real processes: `/metrics` parses as exposition text and its figures move
//! with work, `/healthz`, the status page (in headless Chromium too), JSON log lines, and a
//! rolling restart under load that fails no command, loses no file and starts no repair.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// `cluster up`'s HTTP ports are this far above each node's RPC port.
const HTTP_OFFSET: u16 = 200;

/// GET `path` from `addr`: (status code, body). `None` if nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8(reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A sample's name with its labels as written: `dfs_files`, `x_total{a="b"}`.
type Samples = BTreeMap<String, f64>;

/// Parses the text format strictly (OpenMetrics, which Prometheus reads): metadata lines
/// name a family once, each sample belongs to a declared family (with the suffixes its type
/// allows), labels are `name="value"` pairs, values are numbers, and `# EOF` ends it.
fn parse_exposition(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "text after # EOF: {line:?}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (parts.next().unwrap(), parts.next().expect("metadata names a family"), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad family name in {line:?}");
            match kind {
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "info", "summary", "stateset", "unknown", "gaugehistogram"].contains(&rest),
                        "unknown type in {line:?}"
                    );
                    assert!(types.insert(name.to_string(), rest.to_string()).is_none(), "family {name} declared twice");
                }
                "HELP" => assert!(!rest.is_empty(), "empty help: {line:?}"),
                "UNIT" => assert!(name.ends_with(&format!("_{rest}")), "a family's name ends with its unit: {line:?}"),
                _ => panic!("unknown metadata line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?} is not a number")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("labels of {line:?}"));
            let mut rest = inner;
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label of {line:?}"));
                assert!(valid_name(label), "bad label name in {line:?}");
                let end = after.find('"').unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
            }
        }
        let family = types
            .iter()
            .filter(|(f, _)| name.starts_with(f.as_str()))
            .max_by_key(|(f, _)| f.len())
            .unwrap_or_else(|| panic!("sample {name} of no declared family"));
        let suffix = &name[family.0.len()..];
        let allowed: &[&str] = match family.1.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "sample {name} does not fit its {} family {}", family.1, family.0);
        assert!(samples.insert(series.to_string(), value).is_none(), "sample {series} twice");
    }
    assert!(ended, "no # EOF at the end");
    samples
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn scrape(addr: &str) -> Samples {
    let (code, body) = http_get(addr, "/metrics").unwrap_or_else(|| panic!("{addr}/metrics does not answer"));
    assert_eq!(code, 200, "{addr}/metrics: {body}");
    parse_exposition(&body)
}

fn sample(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// A `cluster up` of 3 metadata and `storage` storage nodes in `dir/data`, every node
/// healthy and the leader seeing every storage node.
struct Up {
    _cluster: Proc,
    data: PathBuf,
    /// The metadata addresses, as `DFS_META` takes them.
    meta: String,
    /// The nodes' HTTP addresses.
    metas: Vec<String>,
    storages: Vec<String>,
}

fn up(dir: &TestDir, storage: u16) -> Up {
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.path().join("data");
    let cluster = cluster_up_with(base, &data, &["--storage", &storage.to_string()], Stdio::null());
    let meta = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    let metas: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i + HTTP_OFFSET)).collect();
    let storages: Vec<String> = (0..storage).map(|i| format!("127.0.0.1:{}", base + 100 + i + HTTP_OFFSET)).collect();
    wait_ready(&meta, storage as usize);
    wait_healthy(&metas);
    wait_healthy(&storages);
    Up { _cluster: cluster, data, meta, metas, storages }
}

/// Waits until every address answers `/healthz` with 200.
fn wait_healthy(addrs: &[String]) {
    for a in addrs {
        wait_for(Duration::from_secs(60), &format!("{a}/healthz to answer 200"), || http_get(a, "/healthz").filter(|(c, _)| *c == 200));
    }
}

/// The metadata node whose metrics say it leads.
fn leader_http(metas: &[String]) -> String {
    wait_for(Duration::from_secs(30), "a metadata node to say it leads", || {
        metas.iter().find(|a| http_get(a, "/metrics").is_some_and(|(_, b)| parse_exposition(&b).get("dfs_raft_leader") == Some(&1.0))).cloned()
    })
}

#[test]
fn metrics_parse_and_move_with_work_and_health_and_the_page_show_the_cluster() {
    let dir = TestDir::new();
    let Up { meta, metas, storages, _cluster, .. } = up(&dir, 3);
    let leader = leader_http(&metas);

    let before = scrape(&leader);
    let stored_before: f64 = storages.iter().map(|s| sample(&scrape(s), "dfs_storage_chunks")).sum();
    let received_before: f64 = storages.iter().map(|s| sample(&scrape(s), "dfs_rpc_received_bytes_total")).sum();
    for s in &storages {
        let m = scrape(s);
        assert!(sample(&m, "dfs_disk_capacity_bytes") > 0.0 && sample(&m, "dfs_disk_free_bytes") > 0.0, "{s} reports no disk: {m:?}");
    }

    let local = dir.path().join("five-mib");
    std::fs::write(&local, test_bytes(5 << 20, 11)).unwrap();
    dfs_ok(&meta, &["put", &local.display().to_string(), "/metrics-file"]);

    let commits = "dfs_rpc_server_duration_seconds_count{method=\"MetadataService/CommitFiles\",code=\"Ok\"}";
    let after = scrape(&leader);
    assert_eq!(sample(&after, "dfs_files"), sample(&before, "dfs_files") + 1.0, "dfs_files did not count the put");
    assert_eq!(sample(&after, "dfs_file_bytes"), sample(&before, "dfs_file_bytes") + (5 << 20) as f64);
    assert!(sample(&after, commits) > sample(&before, commits), "the commit RPC was not counted: {before:?} -> {after:?}");
    assert!(sample(&after, "dfs_raft_applied_index") > sample(&before, "dfs_raft_applied_index"));
    assert!(sample(&after, "dfs_raft_commit_index") >= sample(&after, "dfs_raft_applied_index"));
    assert_eq!(sample(&after, "dfs_storage_nodes{state=\"alive\"}"), 3.0);
    assert_eq!(sample(&after, "dfs_raft_members{role=\"voter\"}"), 3.0);
    // 5 MiB in 4 MiB chunks: 2 chunks, 3 copies each.
    let stored_after: f64 = storages.iter().map(|s| sample(&scrape(s), "dfs_storage_chunks")).sum();
    assert_eq!(stored_after, stored_before + 6.0, "storage nodes' chunk counts");
    let received_after: f64 = storages.iter().map(|s| sample(&scrape(s), "dfs_rpc_received_bytes_total")).sum();
    assert!(
        received_after - received_before >= 3.0 * (5 << 20) as f64,
        "storage nodes received {} bytes for 3 copies of 5 MiB",
        received_after - received_before
    );
    // The leader's repair pass counts the chunks within a housekeeping interval.
    wait_for(Duration::from_secs(30), "the leader's census to count the chunks", || (sample(&scrape(&leader), "dfs_chunks") >= 2.0).then_some(()));
    for m in &metas {
        assert_eq!(sample(&scrape(m), "dfs_raft_leader"), if *m == leader { 1.0 } else { 0.0 }, "{m}'s leader flag");
    }

    // The leader's page shows every storage node the cluster knows, as it knows it.
    let (code, page) = http_get(&leader, "/").unwrap();
    assert_eq!(code, 200);
    let nodes: serde_json::Value = serde_json::from_str(&dfs_ok(&meta, &["nodes", "--json"])).unwrap();
    let addrs: Vec<String> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["addr"].as_str().unwrap().to_string()).collect();
    assert_eq!(addrs.len(), 3);
    for a in &addrs {
        assert!(page.contains(&format!("data-addr=\"{a}\" data-state=\"alive\"")), "page lacks storage node {a} alive:\n{page}");
    }
    assert!(page.contains("data-files=\"1\""), "page lacks the file count");
    // Scrapers that send a request and never read the answer hold nothing the data path
    // needs: an upload and a read still go through.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(&leader).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    dfs_ok(&meta, &["put", &local.display().to_string(), "/while-scrapers-stall"]);
    assert_eq!(dfs(&meta, &["cat", "/while-scrapers-stall"]).stdout, std::fs::read(&local).unwrap());
    drop(idle);
    // A follower's page links to the leader's.
    let follower = metas.iter().find(|m| **m != leader).unwrap();
    let (_, page) = http_get(follower, "/").unwrap();
    assert!(page.contains(&format!("id=\"leader-page\" href=\"http://{leader}/\"")), "follower page does not link to the leader's {leader}:\n{page}");
    // /healthz says no when a node cannot serve: a storage node whose leader is gone still
    // answers, so check the words, and a path nobody serves is 404.
    assert_eq!(http_get(&leader, "/nothing").map(|(c, _)| c), Some(404));
}

/// Chromium from Debian's packages: found, else installed when this runs as root (CI's set-up
/// installs it first); `None` if neither works.
fn chromium() -> Option<PathBuf> {
    let find = || ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|b| which(b));
    if let Some(c) = find() {
        return Some(c);
    }
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("installing chromium (apt-get install chromium) for the status page test");
        let _ = Command::new("apt-get").args(["install", "-y", "-q", "chromium"]).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).status();
    }
    find()
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(bin)).find(|p| p.is_file()))
}

/// Chromium run headless on `url` with `args`; its stdout.
fn headless(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_renders_in_headless_chromium_with_the_clusters_real_nodes() {
    let Some(chromium) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium (.ci/run installs it)");
        eprintln!("SKIPPED: no chromium, and it cannot be installed here (apt-get install chromium as root)");
        return;
    };
    let dir = TestDir::new();
    let Up { meta, metas, data, _cluster, .. } = up(&dir, 3);
    let leader = leader_http(&metas);
    let local = dir.path().join("one");
    std::fs::write(&local, test_bytes(300_000, 5)).unwrap();
    dfs_ok(&meta, &["put", &local.display().to_string(), "/one"]);
    // A node stopped by hand shows as not alive once the leader notices (it says so first).
    let stopped = Command::new(DFS).args(["cluster", "stop", "--data-dir", &data.display().to_string(), "storage-3"]).output().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let url = format!("http://{leader}/");
    let profile = dir.path().join("chromium-profile");
    let nodes: serde_json::Value = serde_json::from_str(&dfs_ok(&meta, &["nodes", "--json"])).unwrap();
    let dom = wait_for(Duration::from_secs(30), "the page to show the stopped node", || {
        let dom = headless(&chromium, &profile, &url, &["--dump-dom"]);
        dom.contains("data-state=\"suspect\"").then_some(dom)
    });
    // The rendered document (after the browser parsed it) has every node, with its state.
    for n in nodes["nodes"].as_array().unwrap() {
        let (addr, id) = (n["addr"].as_str().unwrap(), n["node_id"].as_str().unwrap());
        assert!(dom.contains(&format!("data-node=\"{id}\" data-addr=\"{addr}\"")), "no row for node {id} at {addr}");
    }
    assert_eq!(dom.matches("data-state=\"alive\"").count(), 2, "two nodes alive:\n{dom}");
    assert!(dom.contains("is stopping"), "the stop is among the recent events:\n{dom}");
    for i in 1..=3 {
        assert!(dom.contains(&format!("data-member=\"{i}\"")), "member {i} missing");
    }
    assert!(dom.contains("<title>dfs · metadata node"), "title");
    // And it draws: a screenshot with something on it (kept where DFS_STATUS_SCREENSHOT says,
    // which is how docs/status-page.png is made).
    let shot = dir.path().join("status.png");
    headless(&chromium, &profile, &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1400,1250"]);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot is {} bytes", png.len());
    if let Some(out) = std::env::var_os("DFS_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, out).unwrap();
    }
}

#[test]
fn json_log_lines_parse_and_name_their_node() {
    let dir = TestDir::new();
    let port = free_port();
    let args: Vec<String> = [
        "--log-format",
        "json",
        "meta",
        "--id",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &dir.path().join("m").display().to_string(),
        "--peers",
        &format!("1=127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut node = spawn("meta-json", &args, dir.path());
    let log = dir.path().join("meta-json.log");
    wait_for(Duration::from_secs(30), "the node to log that it serves", || std::fs::read_to_string(&log).ok().filter(|t| t.contains("metadata node serving")));
    node.sigkill();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert_eq!(v["role"], "meta", "{line}");
        assert_eq!(v["node"], "1", "{line}");
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(text.lines().count() >= 2);
}

#[test]
fn a_rolling_restart_under_load_fails_no_command_loses_no_file_and_starts_no_repair() {
    let dir = TestDir::new();
    let Up { meta, metas, storages, data, _cluster } = up(&dir, 4);

    // One client's load all along: uploads, each read back at once; bounded, and it stops
    // when told.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, meta, dir) = (stop.clone(), meta.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut failures = Vec::new();
            for i in 0..2_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let local = dir.join(format!("load-{i}"));
                std::fs::write(&local, test_bytes(64 * 1024 + i as usize * 97, i)).unwrap();
                let remote = format!("/load/{i}");
                let put = dfs(&meta, &["put", "-q", &local.display().to_string(), &remote]);
                if !put.status.success() {
                    failures.push(format!("put {remote}: {}", String::from_utf8_lossy(&put.stderr)));
                    continue;
                }
                let back = dfs(&meta, &["cat", &remote]);
                if !back.status.success() || back.stdout != std::fs::read(&local).unwrap() {
                    failures.push(format!("cat {remote}: {} {}", back.status, String::from_utf8_lossy(&back.stderr)));
                }
                done.push((remote, local));
            }
            (done, failures)
        })
    };

    let data_arg = data.display().to_string();
    let cluster = |verb: &str, node: &str| {
        let out = Command::new(DFS).args(["cluster", verb, "--data-dir", &data_arg, node]).output().unwrap();
        assert!(out.status.success(), "cluster {verb} {node}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let started = Instant::now();
    let nodes: Vec<(String, String)> =
        (1..=3).map(|i| (format!("meta-{i}"), metas[i - 1].clone())).chain((1..=4).map(|i| (format!("storage-{i}"), storages[i - 1].clone()))).collect();
    for (node, http) in &nodes {
        cluster("stop", node);
        cluster("start", node);
        wait_healthy(std::slice::from_ref(http));
        if node.starts_with("meta") {
            // Caught up before the next member goes.
            wait_for(Duration::from_secs(60), "the restarted member to catch up", || {
                let s: serde_json::Value = serde_json::from_str(&dfs_ok(&meta, &["admin", "meta", "status", "--json"])).ok()?;
                s["members"].as_array()?.iter().all(|m| m["lag"].as_u64() == Some(0)).then_some(())
            });
        } else {
            wait_ready(&meta, 4);
        }
    }
    let rolled = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (done, failures) = load.join().unwrap();
    assert!(failures.is_empty(), "{} of {} client commands failed during the rolling restart: {failures:#?}", failures.len(), done.len() + failures.len());
    assert!(done.len() >= 10, "the load ran only {} uploads", done.len());
    for (remote, local) in &done {
        let back = dfs(&meta, &["cat", remote]);
        assert!(back.status.success() && back.stdout == std::fs::read(local).unwrap(), "{remote} lost after the rolling restart");
    }
    // The figures: no repair was started by any leader, and how long the members went
    // without a leader (each counts from its own start).
    let mut leaderless = Vec::new();
    for m in &metas {
        let s = scrape(m);
        assert_eq!(sample(&s, "dfs_repairs_started_total"), 0.0, "{m} started repairs during a planned restart");
        leaderless.push(sample(&s, "dfs_raft_leaderless_seconds_total"));
    }
    // Below the shortest election timeout (1 s), which a leader lost without a hand-over
    // costs every follower at least.
    assert!(leaderless.iter().all(|s| *s < 1.0), "members went without a leader for {leaderless:?} s: was leadership handed over?");
    // No orphan: once garbage is collected, the nodes hold exactly 3 copies of each chunk.
    let leader = leader_http(&metas);
    wait_for(Duration::from_secs(60), "every stored replica to belong to a file", || {
        let stored: f64 = storages.iter().map(|s| sample(&scrape(s), "dfs_storage_chunks")).sum();
        let chunks = sample(&scrape(&leader), "dfs_chunks");
        (chunks > 0.0 && stored == 3.0 * chunks).then_some(())
    });
    let uploads: serde_json::Value = serde_json::from_str(&dfs_ok(&meta, &["uploads", "--json"])).unwrap();
    assert_eq!(uploads["uploads"].as_array().map(Vec::len), Some(0), "uploads left open: {uploads}");
    let fsck = dfs(&meta, &["fsck"]);
    assert!(fsck.status.success(), "fsck after the rolling restart: {}", String::from_utf8_lossy(&fsck.stdout));
    eprintln!(
        "rolling restart of 3 metadata + 4 storage nodes: {rolled:?}, {} uploads under it, 0 failed; leader-less seconds per member: {leaderless:?}",
        done.len()
    );
}
