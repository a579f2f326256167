//! The S3 gateway with real processes and real S3 clients: `dfs cluster up --s3 PORT` (TLS on
//! between the cluster's nodes) serves S3 over HTTPS on 127.0.0.1 (its certificate from the
//! cluster CA, which the clients are given), keys come from
//! `dfs admin s3 key create`, and boto3 and aws-cli (from PyPI, into a virtualenv this test
//! makes once under the target dir) put, get, range, list, delete and fail as S3 clients expect
//! (`s3/boto3_client.py` holds those checks). What the gateway stored is checked with `dfs`
//! itself: objects are dfs files. A client that disconnects mid-upload leaves no object, and
//! its upload is dropped at once (its chunks collected).

#![cfg(not(madsim))]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::*;

/// The client versions the checks were written against.
const PIP_PACKAGES: &[&str] = &["boto3==1.44.18", "awscli==1.46.3"];

/// A Python with boto3 and aws-cli: `DFS_S3_PYTHON` if set, else a virtualenv made (once) in
/// the target dir.
fn clients_python() -> PathBuf {
    if let Some(p) = std::env::var_os("DFS_S3_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("s3-clients-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| Command::new(python).args(["-c", "import boto3, awscli"]).output().is_ok_and(|o| o.status.success());
    if !ready(&python) {
        let made = Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv).output().expect("python3 runs (.ci/run installs python3-venv)");
        assert!(made.status.success(), "python3 -m venv: {}", stderr(&made));
        let pip = Command::new(venv.join("bin/pip")).args(["install", "-q"]).args(PIP_PACKAGES).output().expect("pip runs");
        assert!(pip.status.success(), "pip install {PIP_PACKAGES:?}: {}", stderr(&pip));
        assert!(ready(&python), "boto3 and awscli import after installing");
    }
    python
}

struct Gateway {
    meta: String,
    config: PathBuf,
    endpoint: String,
}

impl Gateway {
    fn dfs(&self, args: &[&str]) -> Output {
        Command::new(DFS).args(args).env("DFS_META", &self.meta).env("DFS_CONFIG_DIR", &self.config).env("DFS_TIMEOUT", "10s").output().expect("run dfs")
    }

    fn dfs_ok(&self, args: &[&str]) -> String {
        let out = self.dfs(args);
        assert!(out.status.success(), "dfs {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A key: (access key id, secret).
    fn key(&self, name: &str, role: &str) -> (String, String) {
        let out = self.dfs_ok(&["admin", "s3", "key", "create", "--name", name, "--role", role, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        (v["access_key_id"].as_str().unwrap().to_string(), v["secret_access_key"].as_str().unwrap().to_string())
    }

    /// Uploads not committed under `path`.
    fn uploads(&self, path: &str) -> Vec<serde_json::Value> {
        let out = self.dfs_ok(&["--json", "uploads", path]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        v["uploads"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn s3_clients_round_trip_through_the_gateway() {
    let python = clients_python();
    let dir = TestDir::new();
    let base = free_ports(400);
    let s3_port = free_port();
    let config = dir.path().join("config");
    let _cluster = cluster_up_tls_with(base, &dir.path().join("data"), &config, &["--s3", &s3_port.to_string()]);
    let meta = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    // HTTPS by default on a TLS cluster, with a certificate from the cluster CA.
    let ca = dir.path().join("data/tls/ca.pem");
    let gw = Gateway { meta, config, endpoint: format!("https://127.0.0.1:{s3_port}") };
    wait_for(Duration::from_secs(30), "the S3 gateway to listen", || TcpStream::connect(("127.0.0.1", s3_port)).ok());

    // A certificate that cannot be loaded stops the gateway at once, named (exit 2).
    let bad = gw.dfs(&["s3", "--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--tls-cert /nonexistent/cert.pem"), "{}", stderr(&bad));

    let (admin_id, admin_secret) = gw.key("ci-admin", "admin");
    let (read_id, read_secret) = gw.key("ci-reader", "read");
    let listed = gw.dfs_ok(&["admin", "s3", "key", "list"]);
    assert!(listed.contains(&admin_id) && listed.contains("ci-reader"), "{listed}");
    assert!(!listed.contains(&admin_secret), "secrets are never listed: {listed}");

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/boto3_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&gw.endpoint, &admin_id, &admin_secret, &read_id, &read_secret])
        .arg(&work)
        .env("AWS_CA_BUNDLE", &ca)
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "boto3 checks failed:\n{text}\n{}", stderr(&out));
    assert!(text.contains("boto3: all checks passed"), "{text}");

    // What went through S3 is dfs's: the same bytes by dfs's own client, and refused puts
    // (wrong digests) left no upload behind.
    let small = gw.dfs(&["cat", "/photos/small.txt"]);
    assert!(small.status.success() && small.stdout.len() == 11, "dfs cat of an object put through S3: {small:?}");
    assert!(gw.uploads("/photos").is_empty(), "uploads left: {:?}", gw.uploads("/photos"));
    // A multipart object is a dfs file whose chunks are its parts' (of any size): dfs reads it
    // whole, and completed and aborted uploads left no part behind.
    let joined = work.join("multi-via-dfs");
    gw.dfs_ok(&["get", "-f", "/photos/multi/obj.bin", joined.to_str().unwrap()]);
    assert_same_file(&work.join("multi.bin"), &joined);
    let left = gw.dfs_ok(&["ls", "-R", "/.s3-uploads/photos"]);
    assert!(left.contains("Found 0 items"), "parts left behind: {left}");

    // aws-cli: a directory tree up with `s3 sync`, and back; dfs sees the same files.
    let tree = work.join("tree");
    for (i, name) in ["a.txt", "sub/b.bin", "sub/deeper/c.bin", "with space.txt"].iter().enumerate() {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, test_bytes(1000 + i * 700_000, i as u64 + 1)).unwrap();
    }
    let aws = |args: &[&str]| {
        let out = Command::new(&python)
            .args(["-m", "awscli", "--endpoint-url", &gw.endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &admin_id)
            .env("AWS_SECRET_ACCESS_KEY", &admin_secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CA_BUNDLE", &ca)
            .output()
            .expect("run aws");
        assert!(out.status.success(), "aws {args:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    aws(&["s3", "mb", "s3://tree"]);
    aws(&["s3", "sync", tree.to_str().unwrap(), "s3://tree/t"]);
    let listing = aws(&["s3", "ls", "--recursive", "s3://tree/"]);
    assert_eq!(listing.lines().count(), 4, "{listing}");
    let back = work.join("back");
    aws(&["s3", "sync", "s3://tree/t", back.to_str().unwrap()]);
    for name in ["a.txt", "sub/b.bin", "sub/deeper/c.bin", "with space.txt"] {
        assert_same_file(&tree.join(name), &back.join(name));
        let got = work.join("via-dfs");
        gw.dfs_ok(&["get", "-f", &format!("/tree/t/{name}"), got.to_str().unwrap()]);
        assert_same_file(&tree.join(name), &got);
    }
    // A second sync finds nothing to send: sizes and times agree.
    assert_eq!(aws(&["s3", "sync", tree.to_str().unwrap(), "s3://tree/t"]).trim(), "");
    // Over aws-cli's 8 MiB threshold, `cp` uploads in parts, copies within S3 part by part
    // (UploadPartCopy), and downloads in ranges.
    let large = work.join("large.bin");
    std::fs::write(&large, test_bytes(21 << 20, 9)).unwrap();
    aws(&["s3", "cp", large.to_str().unwrap(), "s3://tree/large.bin"]);
    aws(&["s3", "cp", "s3://tree/large.bin", "s3://tree/large-copy.bin"]);
    let large_back = work.join("large-back.bin");
    aws(&["s3", "cp", "s3://tree/large-copy.bin", large_back.to_str().unwrap()]);
    assert_same_file(&large, &large_back);
    gw.dfs_ok(&["get", "-f", "/tree/large.bin", large_back.to_str().unwrap()]);
    assert_same_file(&large, &large_back);
    let head = aws(&["s3api", "head-object", "--bucket", "tree", "--key", "large.bin"]);
    assert!(head.contains("-3\\\""), "a 21 MiB object in aws-cli's 8 MiB parts has a -3 ETag: {head}");

    // A client that goes away mid-upload: while it sends, the upload is in flight and nothing
    // is visible; once it is gone, the upload is dropped and the key still absent.
    // rclone (Debian's): a real tree up with `sync`, verified with `check` (sizes and MD5s,
    // multipart objects included: parts of 5 MiB for a 12 MiB file), and back.
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .args(["--ca-cert", ca.to_str().unwrap(), "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"])
            // A machine-wide AWS_CA_BUNDLE (some set one) makes rclone's S3 SDK refuse --ca-cert.
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_DFS_TYPE", "s3")
            .env("RCLONE_CONFIG_DFS_PROVIDER", "Other")
            .env("RCLONE_CONFIG_DFS_ENDPOINT", &gw.endpoint)
            .env("RCLONE_CONFIG_DFS_ACCESS_KEY_ID", &admin_id)
            .env("RCLONE_CONFIG_DFS_SECRET_ACCESS_KEY", &admin_secret)
            .env("RCLONE_CONFIG_DFS_FORCE_PATH_STYLE", "true")
            .output()
            .expect("run rclone (.ci/run installs it)");
        assert!(out.status.success(), "rclone {args:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out)
    };
    std::fs::write(tree.join("sub/twelve.bin"), test_bytes(12 << 20, 12)).unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    rclone(&["mkdir", "dfs:rclone"]);
    rclone(&["sync", tree.to_str().unwrap(), "dfs:rclone/t"]);
    let checked = rclone(&["check", tree.to_str().unwrap(), "dfs:rclone/t"]);
    assert!(checked.contains("0 differences found"), "rclone check: {checked}");
    let rback = work.join("rclone-back");
    rclone(&["sync", "dfs:rclone/t", rback.to_str().unwrap()]);
    let checked = rclone(&["check", tree.to_str().unwrap(), rback.to_str().unwrap()]);
    assert!(checked.contains("0 differences found"), "rclone check of the tree brought back: {checked}");
    // A file changed and one removed: the next sync sends and deletes just those.
    std::fs::write(tree.join("a.txt"), b"changed").unwrap();
    std::fs::remove_file(tree.join("with space.txt")).unwrap();
    rclone(&["sync", tree.to_str().unwrap(), "dfs:rclone/t"]);
    assert!(rclone(&["check", tree.to_str().unwrap(), "dfs:rclone/t"]).contains("0 differences found"));
    assert_eq!(gw.dfs_ok(&["cat", "/rclone/t/a.txt"]), "changed");
    assert!(!gw.dfs(&["stat", "/rclone/t/with space.txt"]).status.success(), "rclone sync deletes what the source lost");

    // Rust's `object_store` (Apache Arrow's), over plain HTTP to a second gateway started with
    // --plain-http (which this also tests).
    let plain_port = free_port();
    let plain_args: Vec<String> = ["s3", "--listen", &format!("127.0.0.1:{plain_port}"), "--plain-http"].map(String::from).to_vec();
    let _plain = spawn_bin(
        Path::new(DFS),
        "s3-plain",
        &plain_args,
        dir.path(),
        &[("DFS_META", &gw.meta), ("DFS_CONFIG_DIR", gw.config.to_str().unwrap()), ("DFS_INSECURE", "false")],
    );
    wait_for(Duration::from_secs(30), "the plain-HTTP gateway to listen", || TcpStream::connect(("127.0.0.1", plain_port)).ok());
    gw.dfs_ok(&["mkdir", "/rustobj"]);
    object_store_round_trip(&format!("http://127.0.0.1:{plain_port}"), &admin_id, &admin_secret);

    // An HTTP/1.1 client over TLS that declares 16 MiB, sends 6 and is killed.
    let url = std::fs::read_to_string(work.join("put_url")).unwrap();
    let cut_off = r#"
import socket, ssl, sys, time, urllib.parse
url, ca = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
conn = ssl.create_default_context(cafile=ca).wrap_socket(socket.create_connection((url.hostname, url.port)), server_hostname=url.hostname)
conn.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {16 << 20}\r\n\r\n".encode())
conn.sendall(bytes(6 << 20))
time.sleep(600)
"#;
    let mut client = Command::new(&python).args(["-c", cut_off, &url]).arg(&ca).stdout(Stdio::null()).spawn().expect("run python");
    wait_for(Duration::from_secs(30), "the cut-off upload to be in flight", || gw.uploads("/photos/cut").first().cloned());
    assert!(!gw.dfs(&["stat", "/photos/cut/short"]).status.success(), "an upload in flight is not visible");
    client.kill().unwrap();
    client.wait().unwrap();
    wait_for(Duration::from_secs(30), "the cut-off upload to be dropped", || gw.uploads("/photos/cut").is_empty().then_some(()));
    assert!(!gw.dfs(&["stat", "/photos/cut/short"]).status.success(), "nothing was committed");
}

/// `object_store` against the gateway: put, get, ranges, a multipart upload of parts it cuts
/// itself, listing with a delimiter, copy, delete, and NotFound.
fn object_store_round_trip(endpoint: &str, key: &str, secret: &str) {
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

    // reqwest is built on rustls without a provider of its own: ring's, as the gateway's.
    #[allow(deprecated)]
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name("rustobj")
            .with_region("us-east-1")
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("an S3 store");
        let small = ObjPath::from("dir/small.bin");
        let bytes = test_bytes(300_000, 31);
        store.put(&small, PutPayload::from(bytes.clone())).await.expect("object_store put");
        let got = store.get(&small).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), bytes.as_slice(), "object_store get");
        let range = store.get_range(&small, 1000..250_000).await.unwrap();
        assert_eq!(range.as_ref(), &bytes[1000..250_000], "object_store ranged get");
        let meta = store.head(&small).await.unwrap();
        assert_eq!(meta.size, 300_000);

        // Multipart: object_store cuts 5 MiB parts itself and sends them concurrently.
        let big = ObjPath::from("dir/big.bin");
        let big_bytes = test_bytes((17 << 20) + 5, 32);
        let upload = store.put_multipart(&big).await.expect("object_store multipart start");
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
        for piece in big_bytes.chunks(1 << 20) {
            writer.write(piece);
        }
        writer.finish().await.expect("object_store multipart finish");
        let got = store.get(&big).await.unwrap().bytes().await.unwrap();
        assert!(got.as_ref() == big_bytes.as_slice(), "object_store: the multipart object reads back whole");
        let across = store.get_range(&big, (5 << 20) - 7..(10 << 20) + 9).await.unwrap();
        assert_eq!(across.as_ref(), &big_bytes[(5 << 20) - 7..(10 << 20) + 9], "a range across parts");

        let copy = ObjPath::from("copy.bin");
        store.copy(&big, &copy).await.expect("object_store copy");
        assert_eq!(store.head(&copy).await.unwrap().size, big_bytes.len() as u64);
        let listed = store.list_with_delimiter(None).await.unwrap();
        assert_eq!(listed.common_prefixes, vec![ObjPath::from("dir")]);
        assert_eq!(listed.objects.iter().map(|o| o.location.to_string()).collect::<Vec<_>>(), vec!["copy.bin"]);
        store.delete(&copy).await.unwrap();
        assert!(matches!(store.head(&copy).await, Err(object_store::Error::NotFound { .. })), "a deleted object: NotFound");
    });
}
