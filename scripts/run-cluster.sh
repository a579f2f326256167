#!/usr/bin/env bash
# A dfs cluster in Docker containers: writes scripts/docker-compose.yml for -m metadata nodes,
# -s storage nodes and (-c) a client container, builds the image when needed, then runs
# docker-compose with the rest of the arguments.
#
#   ./scripts/run-cluster.sh -m 3 -s 5 -c up -d --build
#   ./scripts/run-cluster.sh ps | logs -f | down | down -v
#   ./scripts/run-cluster.sh rolling-restart
#
# TLS is on by default: before `up` the script makes a cluster CA and a certificate per node
# (and an admin one for the client container) with `dfs cert`, under DFS_TLS_DIR (default
# scripts/dfs-tls, beside the compose file; kept across runs). Each container mounts only its
# own directory of it, read-only, at /tls. --insecure (before the other arguments) runs every
# node in plaintext instead.
#
# The image is built FROM scratch (no registry is needed): a release `dfs` binary and the
# shared libraries `ldd` lists for it. Each node keeps its data on a named volume, so `down`
# then `up` keeps every file and `down -v` removes them. Host ports (bound to 127.0.0.1):
# metadata node i serves RPCs on 7000+i and HTTP (/metrics, /healthz, the status page) on
# 9000+i; storage node i on 7100+i and 9100+i.
#
# Environment: DFS_COMPOSE_FILE (default scripts/docker-compose.yml), DFS_HOST_PORTS=0 to
# publish no port on the host, DFS_IMAGE (default dfs:local), DFS_TLS_DIR, CARGO_TARGET_DIR,
# DFS_BINARY (a dfs binary to put in the image instead of building the release one: the
# container tests use the one `cargo test` built, which saves CI a release build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
compose_file="${DFS_COMPOSE_FILE:-$root/scripts/docker-compose.yml}"
image="${DFS_IMAGE:-dfs:local}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
context="$target_dir/docker-image"
tls_dir="${DFS_TLS_DIR:-$(dirname "$compose_file")/dfs-tls}"
# docker-compose takes a relative bind-mount path from the compose file's directory: make it
# absolute from here.
[[ "$tls_dir" == /* ]] || tls_dir="$PWD/$tls_dir"

usage() {
    echo "usage: $0 [--insecure] [-m N] [-s N] [-c] COMPOSE-ARGS... (e.g. -m 3 -s 5 -c up -d --build; ps; logs -f; down -v; rolling-restart)" >&2
}
fail() {
    echo "run-cluster.sh: $*" >&2
    exit 1
}

metas="" storages="" client="" insecure=""
if [[ "${1:-}" == --insecure ]]; then
    insecure=1
    shift
fi
while getopts ":m:s:ch" opt; do
    case "$opt" in
    m) metas="$OPTARG" ;;
    s) storages="$OPTARG" ;;
    c) client=1 ;;
    h) usage; exit 0 ;;
    :) echo "run-cluster.sh: -$OPTARG needs a number" >&2; usage; exit 2 ;;
    *) echo "run-cluster.sh: unknown option -$OPTARG" >&2; usage; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [[ $# -eq 0 ]]; then
    echo "run-cluster.sh: no docker-compose command given" >&2
    usage
    exit 2
fi
if [[ -n "$metas" && ! "$metas" =~ ^[1-9]$ ]]; then
    echo "run-cluster.sh: -m $metas: the number of metadata nodes is 1 to 9" >&2; usage; exit 2
fi
if [[ -n "$storages" && ! "$storages" =~ ^[1-9][0-9]?$ ]]; then
    echo "run-cluster.sh: -s $storages: the number of storage nodes is 1 to 99" >&2; usage; exit 2
fi

if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    fail "docker-compose is not installed (neither docker-compose nor the docker compose plugin was found)"
fi
command -v docker >/dev/null 2>&1 || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine is not running or not reachable (docker info failed)"

# The shape: as given, else the one the last generated file has, else 1 metadata + 3 storage.
# Likewise plaintext: given, or what the last generated file has.
if [[ -z "$metas$storages$client" && -f "$compose_file" ]]; then
    metas=$(grep -c '^  meta[0-9]*:$' "$compose_file" || true)
    storages=$(grep -c '^  storage[0-9]*:$' "$compose_file" || true)
    grep -q '^  client:$' "$compose_file" && client=1
fi
if [[ -z "$insecure" && -f "$compose_file" ]] && grep -q 'DFS_INSECURE' "$compose_file" && [[ "$1" != up ]]; then
    insecure=1
fi
metas="${metas:-1}"
storages="${storages:-3}"
[[ "$metas" -ge 1 ]] || metas=1
[[ "$storages" -ge 1 ]] || storages=3

meta_port() { echo $((7000 + $1)); }
storage_port() { echo $((7100 + $1)); }
meta_http() { echo $((9000 + $1)); }
storage_http() { echo $((9100 + $1)); }

host_ports=()
# What every node's service ends with: its health check, its volume, and its published ports.
node_tail() {
    local name="$1" rpc="$2" http="$3"
    echo "    healthcheck: {test: [\"CMD\", \"dfs\", \"health\", \"127.0.0.1:$http\"], interval: 2s, timeout: 2s, retries: 3}"
    if [[ -n "$insecure" ]]; then
        echo "    volumes: [\"$name:/data\"]"
    else
        echo "    volumes: [\"$name:/data\", \"$tls_dir/$name:/tls:ro\"]"
    fi
    if [[ -n "$publish" ]]; then
        echo "    ports: [\"127.0.0.1:$rpc:$rpc\", \"127.0.0.1:$http:$http\"]"
        host_ports+=("$rpc" "$http")
    fi
}

# A service's TLS settings: its own credentials under /tls, or plaintext.
tls_env() {
    local indent="$1"
    if [[ -n "$insecure" ]]; then
        echo "${indent}DFS_INSECURE: \"1\""
    else
        echo "${indent}DFS_CA: /tls/ca.pem"
        echo "${indent}DFS_CERT: /tls/cert.pem"
        echo "${indent}DFS_KEY: /tls/key.pem"
    fi
}

# The cluster CA (its key stays in $tls_dir/ca, mounted nowhere) and, for each service, a
# directory with the CA, its certificate and its key; made once, kept across runs.
ensure_pki() {
    [[ -z "$insecure" ]] || return 0
    local bin i
    bin="$(dfs_binary)"
    mkdir -p "$tls_dir/ca"
    if [[ ! -f "$tls_dir/ca/ca.pem" ]]; then
        "$bin" cert init --dir "$tls_dir/ca" >/dev/null || fail "cannot make the cluster CA in $tls_dir/ca"
    fi
    issue() {
        local role="$1" name="$2" out="$tls_dir/$2"
        shift 2
        [[ -f "$out/cert.pem" && -f "$out/key.pem" && -f "$out/ca.pem" ]] && return 0
        rm -rf "$out" "$out.tmp"
        mkdir -p "$out.tmp"
        "$bin" cert issue --dir "$tls_dir/ca" --out "$out.tmp" --role "$role" --name "$name" "$@" >/dev/null || fail "cannot issue the certificate of $name"
        mv "$out.tmp/$name.pem" "$out.tmp/cert.pem"
        mv "$out.tmp/$name.key" "$out.tmp/key.pem"
        cp "$tls_dir/ca/ca.pem" "$out.tmp/ca.pem"
        mv "$out.tmp" "$out"
    }
    for ((i = 1; i <= metas; i++)); do issue meta "meta$i" --san "meta$i" localhost 127.0.0.1; done
    for ((i = 1; i <= storages; i++)); do issue storage "storage$i" --san "storage$i" localhost 127.0.0.1; done
    [[ -z "$client" ]] || issue admin client
}

write_compose() {
    local peers="" meta_addrs="" i
    for ((i = 1; i <= metas; i++)); do
        peers+="${peers:+,}$i=meta$i:$(meta_port "$i")"
        meta_addrs+="${meta_addrs:+,}meta$i:$(meta_port "$i")"
    done
    publish=1
    [[ "${DFS_HOST_PORTS:-1}" == 0 ]] && publish=""
    {
        echo "# Written by scripts/run-cluster.sh -m $metas -s $storages${client:+ -c}; edits are overwritten."
        echo "version: \"3.7\""
        echo "x-node: &node"
        echo "  image: $image"
        echo "  build: $context"
        echo "  restart: unless-stopped"
        # SIGTERM first: a metadata leader hands over, a storage node finishes its writes.
        echo "  stop_grace_period: 30s"
        echo "  environment: &env"
        echo "    RUST_LOG: info,openraft=error"
        echo "    DFS_LOG_FORMAT: \${DFS_LOG_FORMAT:-text}"
        tls_env "    "
        echo "services:"
        for ((i = 1; i <= metas; i++)); do
            echo "  meta$i:"
            echo "    <<: *node"
            echo "    hostname: meta$i"
            echo "    command: [\"meta\"]"
            echo "    environment:"
            echo "      <<: *env"
            echo "      DFS_ID: \"$i\""
            echo "      DFS_LISTEN: 0.0.0.0:$(meta_port "$i")"
            echo "      DFS_PEERS: \"$peers\""
            echo "      DFS_DATA_DIR: /data"
            echo "      DFS_HTTP_LISTEN: 0.0.0.0:$(meta_http "$i")"
            node_tail "meta$i" "$(meta_port "$i")" "$(meta_http "$i")"
        done
        for ((i = 1; i <= storages; i++)); do
            echo "  storage$i:"
            echo "    <<: *node"
            echo "    hostname: storage$i"
            echo "    command: [\"storage\"]"
            echo "    environment:"
            echo "      <<: *env"
            echo "      DFS_LISTEN: 0.0.0.0:$(storage_port "$i")"
            echo "      DFS_ADVERTISE: storage$i:$(storage_port "$i")"
            echo "      DFS_META: \"$meta_addrs\""
            echo "      DFS_DATA_DIR: /data"
            echo "      DFS_HTTP_LISTEN: 0.0.0.0:$(storage_http "$i")"
            node_tail "storage$i" "$(storage_port "$i")" "$(storage_http "$i")"
        done
        if [[ -n "$client" ]]; then
            echo "  client:"
            echo "    <<: *node"
            echo "    hostname: client"
            echo "    restart: \"no\""
            echo "    stop_grace_period: 1s"
            # The client finds the cluster through DFS_META; `idle` keeps the container up for
            # `docker-compose exec client dfs ...`.
            echo "    command: [\"idle\"]"
            echo "    environment:"
            echo "      RUST_LOG: warn"
            echo "      DFS_META: \"$meta_addrs\""
            tls_env "      "
            [[ -z "$insecure" ]] && echo "    volumes: [\"$tls_dir/client:/tls:ro\"]"
        fi
        echo "volumes:"
        for ((i = 1; i <= metas; i++)); do echo "  meta$i: {}"; done
        for ((i = 1; i <= storages; i++)); do echo "  storage$i: {}"; done
    } >"$compose_file.tmp"
    mv "$compose_file.tmp" "$compose_file"
}

# The dfs binary the image holds: $DFS_BINARY if set, else the release build (made or brought
# up to date here).
dfs_binary() {
    if [[ -n "${DFS_BINARY:-}" ]]; then
        [[ -x "$DFS_BINARY" ]] || fail "DFS_BINARY=$DFS_BINARY is not an executable file"
        echo "$DFS_BINARY"
        return 0
    fi
    # Up to date already, the second call (the image after the certificates) takes a moment.
    echo "run-cluster.sh: building the release binary (cargo build --release -p dfs)" >&2
    (cd "$root" && cargo build --release -p dfs) >&2 || fail "cargo build --release -p dfs failed (see above)"
    [[ -x "$target_dir/release/dfs" ]] || fail "no binary at $target_dir/release/dfs after the build"
    echo "$target_dir/release/dfs"
}

# The image's files: the dfs binary and what the dynamic loader needs for it.
build_image_context() {
    local bin
    bin="$(dfs_binary)"
    rm -rf "$context"
    mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/tmp" "$context/rootfs/root" "$context/rootfs/data" "$context/rootfs/etc"
    cp "$bin" "$context/rootfs/usr/local/bin/dfs"
    local lib
    for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$context/rootfs$(dirname "$lib")"
        cp -L "$lib" "$context/rootfs$lib"
    done
    echo "root:x:0:0:root:/root:/usr/local/bin/dfs" >"$context/rootfs/etc/passwd"
    echo "hosts: files dns" >"$context/rootfs/etc/nsswitch.conf"
    chmod 1777 "$context/rootfs/tmp"
    cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin HOME=/root USER=root
WORKDIR /root
ENTRYPOINT ["/usr/local/bin/dfs"]
EOF
}

running() {
    [[ -f "$compose_file" ]] && [[ -n "$("${compose[@]}" -f "$compose_file" ps -q 2>/dev/null)" ]]
}

# Ports on the host the cluster would publish that something else already holds.
check_ports() {
    local p
    for p in "${host_ports[@]}"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            fail "port $p on 127.0.0.1 is already taken (a local 'dfs cluster up'?); stop what holds it, or run with DFS_HOST_PORTS=0"
        fi
    done
}

rolling_restart() {
    local svc deadline
    for svc in $("${compose[@]}" -f "$compose_file" config --services | grep -E '^(meta|storage)[0-9]+$'); do
        echo "run-cluster.sh: restarting $svc" >&2
        "${compose[@]}" -f "$compose_file" restart -t 30 "$svc"
        deadline=$((SECONDS + 120))
        until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" -f "$compose_file" ps -q "$svc")" 2>/dev/null)" == healthy ]]; do
            ((SECONDS < deadline)) || fail "$svc is not healthy 120 s after its restart"
            sleep 1
        done
    done
    echo "run-cluster.sh: rolling restart done" >&2
}

was_running=""
running && was_running=1
write_compose
if [[ "$1" == rolling-restart ]]; then
    rolling_restart
    exit 0
fi
wants_build=""
for arg in "$@"; do
    case "$arg" in
    --build | build) wants_build=1 ;;
    esac
done
if [[ "$1" == up || "$1" == build || "$1" == create ]]; then
    if [[ -n "$wants_build" ]] || ! docker image inspect "$image" >/dev/null 2>&1; then
        build_image_context
        "${compose[@]}" -f "$compose_file" build || fail "docker-compose build failed (see above)"
    fi
    [[ "$1" == up && -z "$was_running" ]] && check_ports
    ensure_pki
fi
exec "${compose[@]}" -f "$compose_file" "$@"
