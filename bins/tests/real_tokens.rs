//! Users' tokens, with real processes on 127.0.0.1 (`dfs cluster up`, TLS on): an admin makes
//! tokens (`dfs admin token create|list|revoke`); a token's holder gets exactly its role within
//! its prefix, even when the same client also holds the cluster's admin certificate (the token
//! wins); a caller with neither certificate nor token, a read-only token writing, a token for
//! another path, an altered, revoked or expired token are each refused in one line (exit 1),
//! the leader logs the refusal with who it was, and nothing refused is half-done.

#![cfg(not(madsim))]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::*;

struct Cluster {
    meta: String,
    config: std::path::PathBuf,
    ca: std::path::PathBuf,
    /// A config dir with no record of this cluster: a client there has only what it is given.
    bare: std::path::PathBuf,
}

impl Cluster {
    /// `dfs ARGS` as the local admin (the credentials `cluster up` wrote), with `token` if any.
    fn dfs(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(DFS);
        c.args(args).env("DFS_META", &self.meta).env("DFS_CONFIG_DIR", &self.config).env("DFS_TIMEOUT", "5s").env_remove("DFS_TOKEN");
        if let Some(t) = token {
            c.env("DFS_TOKEN", t);
        }
        c.output().expect("run dfs")
    }

    /// `dfs ARGS` with the cluster's CA and nothing else (no certificate), and `token` if any.
    fn bare(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(DFS);
        c.args(args).env("DFS_META", &self.meta).env("DFS_CONFIG_DIR", &self.bare).env("DFS_CA", &self.ca).env("DFS_TIMEOUT", "5s").env_remove("DFS_TOKEN");
        if let Some(t) = token {
            c.env("DFS_TOKEN", t);
        }
        c.output().expect("run dfs")
    }

    /// Makes a token; returns (id, token).
    fn token(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["admin", "token", "create", "--json"];
        all.extend(args);
        let out = self.dfs(None, &all);
        assert!(out.status.success(), "token create {args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn put(c: &Cluster, token: Option<&str>, local: &Path, remote: &str) -> Output {
    c.dfs(token, &["put", local.to_str().unwrap(), remote])
}

#[test]
fn tokens_grant_their_role_within_their_prefix_until_revoked_or_expired() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    let config = dir.join("config");
    let _up = cluster_up_tls(base, &data, &config);
    let c = Cluster {
        meta: format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2),
        config,
        ca: data.join("tls/ca.pem"),
        bare: dir.join("bare-config"),
    };
    let file = dir.join("f.bin");
    let bytes = test_bytes(1 << 20, 3);
    std::fs::write(&file, &bytes).unwrap();
    ok(put(&c, None, &file, "/home/alice/a.bin"), "put as admin");
    ok(put(&c, None, &file, "/other/b.bin"), "put as admin");

    // Neither certificate nor token: refused everything a user does.
    refused(c.bare(None, &["ls", "/"]), "needs a user's credential", "ls with neither");
    refused(c.bare(None, &["put", file.to_str().unwrap(), "/x.bin"]), "needs a user's credential", "put with neither");

    // A read-only token for /home/alice, used by a client that also holds the admin
    // certificate: the token wins.
    let (read_id, read) = c.token(&["--name", "alice-ro", "--role", "read", "--prefix", "/home/alice"]);
    assert_eq!(read_id.len(), 16, "{read_id}");
    assert!(read.starts_with("dfs1_") && read.contains(&read_id), "{read}");
    let back = dir.join("back.bin");
    ok(c.dfs(Some(&read), &["get", "/home/alice/a.bin", back.to_str().unwrap()]), "get with the read token");
    assert_same_file(&file, &back);
    assert!(ok(c.dfs(Some(&read), &["ls", "/home/alice"]), "ls").contains("a.bin"));
    refused(put(&c, Some(&read), &file, "/home/alice/new.bin"), &format!("needs the write role; token {read_id} (alice-ro) has read"), "put with a read token");
    refused(c.dfs(Some(&read), &["rm", "/home/alice/a.bin"]), "needs the write role", "rm with a read token");
    refused(c.dfs(Some(&read), &["get", "/other/b.bin", dir.join("b.bin").to_str().unwrap()]), "/other/b.bin is outside /home/alice", "get outside the prefix");
    refused(c.dfs(Some(&read), &["ls", "/"]), "/ is outside /home/alice", "ls of the root");
    refused(c.dfs(Some(&read), &["fsck", "/"]), "Fsck needs the admin role", "fsck with a read token");
    // The same token with only the CA (no certificate at all) works the same.
    ok(c.bare(Some(&read), &["stat", "/home/alice/a.bin"]), "stat with the token alone");
    // Nothing refused was half-done.
    refused(c.dfs(None, &["stat", "/home/alice/new.bin"]), "no such file", "the refused put left nothing");
    ok(c.dfs(None, &["stat", "/home/alice/a.bin"]), "the refused rm removed nothing");

    // A write token for /home/alice: writes there, not elsewhere, and not across the border.
    let (_, write) = c.token(&["--name", "alice", "--role", "write", "--prefix", "/home/alice/"]);
    ok(put(&c, Some(&write), &file, "/home/alice/w.bin"), "put with the write token");
    ok(c.bare(Some(&write), &["mv", "/home/alice/w.bin", "/home/alice/w2.bin"]), "mv inside the prefix");
    refused(put(&c, Some(&write), &file, "/other/w.bin"), "/other/w.bin is outside /home/alice", "put outside the prefix");
    refused(c.dfs(Some(&write), &["mv", "/home/alice/w2.bin", "/other/w2.bin"]), "is outside /home/alice", "mv out of the prefix");
    refused(c.dfs(Some(&write), &["admin", "token", "list"]), "ListTokens needs the admin role", "token list with a write token");
    ok(c.dfs(None, &["stat", "/home/alice/w2.bin"]), "the refused mv left the file");

    // An admin token for /home makes tokens within /home only.
    let (_, home_admin) = c.token(&["--name", "home-admin", "--role", "admin", "--prefix", "/home"]);
    let out = c.bare(Some(&home_admin), &["admin", "token", "create", "--name", "bob", "--role", "write", "--prefix", "/home/bob"]);
    let bob = ok(out, "an admin token for /home makes one for /home/bob");
    assert!(bob.trim().starts_with("dfs1_") && bob.trim().lines().count() == 1, "the token alone on stdout: {bob:?}");
    refused(c.bare(Some(&home_admin), &["admin", "token", "create", "--name", "root", "--role", "admin"]), "/ is outside /home", "widening");

    // Altered and malformed tokens.
    let mut altered = read.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    let altered = String::from_utf8(altered).unwrap();
    refused(c.dfs(Some(&altered), &["ls", "/home/alice"]), "bad signature", "an altered token");
    refused(c.dfs(Some("hunter2"), &["ls", "/home/alice"]), "the token is malformed", "garbage for a token");

    // The list shows every token, without the secrets.
    let list = ok(c.dfs(None, &["admin", "token", "list"]), "token list");
    for name in ["alice-ro", "alice", "home-admin", "bob"] {
        assert!(list.lines().any(|l| l.split_whitespace().nth(1) == Some(name)), "{name} in {list}");
    }
    assert!(!list.contains(&read[20..]), "the list shows no token: {list}");
    let json: serde_json::Value = serde_json::from_slice(&c.dfs(None, &["admin", "token", "list", "--json"]).stdout).unwrap();
    let listed = json.as_array().unwrap().iter().find(|t| t["id"] == read_id.as_str()).expect("the read token listed").clone();
    assert_eq!((listed["role"].as_str(), listed["prefix"].as_str()), (Some("read"), Some("/home/alice")));

    // Revoked: refused at once; revoking again is an error.
    let out = ok(c.dfs(None, &["admin", "token", "revoke", &read_id]), "revoke");
    assert!(out.contains(&read_id) && out.contains("alice-ro"), "{out}");
    refused(c.dfs(Some(&read), &["ls", "/home/alice"]), "is not known to this cluster", "a revoked token");
    refused(c.dfs(None, &["admin", "token", "revoke", &read_id]), "is not known to this cluster", "revoking twice");
    let out = c.dfs(None, &["admin", "token", "revoke", "nothex"]);
    assert_eq!(out.status.code(), Some(2), "a bad id is a usage error: {}", stderr(&out));

    // Expired: refused once its time has passed.
    let (_, brief) = c.token(&["--name", "brief", "--role", "read", "--ttl", "1s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = c.dfs(Some(&brief), &["ls", "/home"]);
        if !out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    refused(out, "expired at", "an expired token");

    // Bad input to create: a usage error (exit 2), nothing made.
    for bad in [&["--name", "a b", "--role", "read"][..], &["--name", "x", "--role", "root"], &["--name", "x", "--role", "read", "--ttl", "soon"]] {
        let mut args = vec!["admin", "token", "create"];
        args.extend(bad);
        let out = c.dfs(None, &args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }

    // The leader logged refusals with who asked.
    let logged = wait_for(Duration::from_secs(10), "a token refusal in a metadata node's log", || {
        (1..=3).find_map(|i| {
            std::fs::read_to_string(data.join(format!("logs/meta-{i}.log")))
                .ok()
                .filter(|l| l.contains("needs the write role; token") && l.contains("refused: "))
        })
    });
    assert!(logged.contains("alice-ro") && logged.contains("peer="), "the refusal names the token and the peer: {logged}");
}
