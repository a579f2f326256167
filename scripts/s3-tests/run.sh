#!/bin/bash
# A subset of Ceph's S3 conformance tests (github.com/ceph/s3-tests) against `dfs s3`, as the
# closing note of issue 23 reports it. Not run by `cargo test` (it needs the tests' checkout,
# which CI cannot fetch); run by hand:
#
#   git clone https://github.com/ceph/s3-tests /tmp/s3-tests
#   scripts/s3-tests/run.sh /tmp/s3-tests target/debug/dfs [WORK_DIR]
#
# The subset: the tests of what the gateway serves (buckets, object reads and writes, listings,
# copies, multipart, ranges, conditional reads), less those marked for what it does not
# (versioning is not a marker, so its tests stay in and fail: see the note), ACLs and policies
# aside. It prints pytest's summary and writes junit.xml in WORK_DIR.
set -euo pipefail
T=$(realpath "$1"); D=$(realpath "$2"); W=${3:-/tmp/dfs-s3-tests}
rm -rf "$W"; mkdir -p "$W"
export DFS_CONFIG_DIR=$W/config DFS_META=127.0.0.1:28000,127.0.0.1:28001,127.0.0.1:28002
setsid "$D" cluster up --data-dir "$W/data" --base-port 28000 > "$W/up.log" 2>&1 &
trap 'kill -INT $(pgrep -f "$D cluster up --data-dir $W/data") $(pgrep -f "$D s3 --listen 127.0.0.1:28950") 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q ready "$W/up.log" && break; sleep 0.5; done
# The tests speak plain HTTP here: a second gateway on loopback with --plain-http.
setsid env DFS_INSECURE=false "$D" s3 --listen 127.0.0.1:28950 --plain-http > "$W/s3.log" 2>&1 &
for _ in $(seq 60); do (echo > /dev/tcp/127.0.0.1/28950) 2>/dev/null && break; sleep 0.5; done
"$D" admin s3 key create --name main --role admin --json > "$W/main.json"
"$D" admin s3 key create --name alt --role admin --json > "$W/alt.json"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
keys = {n: json.load(open(f"{w}/{n}.json")) for n in ("main", "alt")}
def section(name, k, extra=""):
    return (f"[{name}]\ndisplay_name = {name}\nuser_id = {name.replace(' ', '-')}\nemail = {name.replace(' ', '-')}@example.com\n"
            f"api_name = default\naccess_key = {k['access_key_id']}\nsecret_key = {k['secret_access_key']}\n{extra}\n")
conf = "[DEFAULT]\nhost = 127.0.0.1\nport = 28950\nis_secure = False\nssl_verify = False\n\n[fixtures]\nbucket prefix = dfst-{random}-\n\n"
conf += section("s3 main", keys["main"]) + section("s3 alt", keys["alt"]) + section("s3 tenant", keys["alt"], "tenant = testx")
conf += section("iam", keys["main"]) + section("iam root", keys["main"]) + section("iam alt root", keys["alt"])
open(f"{w}/s3tests.conf", "w").write(conf)
PY
python3 -m venv "$W/venv"
"$W/venv/bin/pip" install -q -r "$T/requirements.txt"
K="bucket_list or bucket_create or object_write or object_read or object_head or object_copy or multipart or ranged"
K="$K or get_object_if or object_metadata or object_delete or bucket_delete or atomic or object_set_get or bucket_head"
K="$K or put_object or get_object or head_object or list_buckets or buckets_create"
M="not fails_on_aws and not bucket_logging and not bucket_logging_cleanup and not encryption and not lifecycle"
M="$M and not bucket_policy and not tagging and not sse_s and not object_ownership and not conditional_write"
M="$M and not checksum and not bucket_encryption and not cloud_transition and not cloud_restore and not iam_user and not iam_account"
cd "$T"
S3TEST_CONF=$W/s3tests.conf "$W/venv/bin/python" -m pytest s3tests/functional/test_s3.py -k "$K" -m "$M" -q --tb=line \
  -p no:cacheprovider --junitxml="$W/junit.xml" | tail -1 || true
