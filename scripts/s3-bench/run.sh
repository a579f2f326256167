#!/bin/bash
# The S3 gateway beside dfs, in one sitting (docs/PERFORMANCE.md, "The S3 gateway"): a fresh
# TLS cluster with the gateway (`cluster up --s3`, HTTPS with the cluster CA); `dfs put`/`get`
# of a 1 GiB file against boto3's single PutObject/GetObject and its multipart transfer of the
# same file through the gateway, alternated twice; a 5 GiB object in parts both ways with the
# gateway's peak RSS before and after; then 4 KiB PutObject and GetObject at concurrency 16.
#
# Usage: scripts/s3-bench/run.sh DFS_BINARY PYTHON_WITH_BOTO3 [WORK_DIR]
# (a copy of the release binary, so that a rebuild cannot swap it mid-run).
set -euo pipefail
D=$(realpath "$1"); PY=$2; W=${3:-/tmp/dfs-s3-bench}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$W"; mkdir -p "$W"
export DFS_CONFIG_DIR=$W/config DFS_META=127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003
head -c 1073741824 /dev/urandom > "$W/1g"
export AWS_CA_BUNDLE=$W/data/tls/ca.pem
E=https://127.0.0.1:29000
setsid "$D" cluster up --data-dir "$W/data" --base-port 27001 --s3 29000 > "$W/up.log" 2>&1 &
trap 'kill -INT $(pgrep -f "$D cluster up --data-dir $W/data") 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q ready "$W/up.log" && break; sleep 0.5; done
for _ in $(seq 60); do (echo > /dev/tcp/127.0.0.1/29000) 2>/dev/null && break; sleep 0.5; done
K=$("$D" admin s3 key create --name bench --role admin --json)
ID=$(echo "$K" | python3 -c "import json,sys;print(json.load(sys.stdin)['access_key_id'])")
SE=$(echo "$K" | python3 -c "import json,sys;print(json.load(sys.stdin)['secret_access_key'])")
GW=$(pgrep -f "$D s3 --listen 127.0.0.1:29000")
for round in 1 2; do
  t0=$(date +%s.%N); "$D" put -f -q "$W/1g" /d/1g; t1=$(date +%s.%N); "$D" get -f -q /d/1g "$W/back1"; t2=$(date +%s.%N)
  echo "round $round dfs: put $(echo "$t1 - $t0" | bc)s get $(echo "$t2 - $t1" | bc)s"
  for mode in single multipart; do
    "$PY" "$HERE/big.py" "$E" "$ID" "$SE" "$W/1g" "$W/back2" $mode | sed "s/^/round $round /"
    cmp "$W/1g" "$W/back2" && echo "round $round: the gateway's copy is identical"
    rm -f "$W/back2"
  done
  rm -f "$W/back1"
done
grep VmHWM "/proc/$GW/status" | sed 's/^/gateway peak RSS after the 1 GiB rounds: /'
rm -f "$W/1g"
head -c 5368709120 /dev/urandom > "$W/5g"
"$PY" "$HERE/big.py" "$E" "$ID" "$SE" "$W/5g" "$W/back5" multipart | sed "s/^/5 GiB /"
cmp "$W/5g" "$W/back5" && echo "5 GiB: the gateway's copy is identical"
rm -f "$W/5g" "$W/back5"
grep VmHWM "/proc/$GW/status" | sed 's/^/gateway peak RSS after the 5 GiB object: /'
"$PY" "$HERE/small_ops.py" "$E" "$ID" "$SE" 2000 16
