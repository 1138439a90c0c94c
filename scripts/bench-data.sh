#!/usr/bin/env bash
# Benchmarks the data tier: the photo endpoint (GET /api/photos/ID) and the
# list endpoint (GET /api/users/NAME/photos) through the load balancer, on
# PostgreSQL with 0, 1 and 2 replicas, each without a cache and with the
# Redis cache (+ near-cache); reports req/s, p50/p99 and the database
# transactions per second the run cost (summed over all nodes), so the
# queries the cache saves show directly.
#
#   cargo build --release && scripts/bench-data.sh
#
# Environment (defaults): BIN (target/release/scalestack), DURATION (8s),
# WARMUP (2s), CONNECTIONS (32), REPLICAS_LIST ("0 1 2"), KEEP (unset).
# Ports: LB 9700, admin 9791, control 9790, web 9711-9712, worker 9721,
# PostgreSQL 9730-9732, Redis 9740.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(realpath "${BIN:-target/release/scalestack}")
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
REPLICAS_LIST=${REPLICAS_LIST:-"0 1 2"}
PG_PORT=9730
[[ -x $BIN ]] || { echo "bench-data: build first: cargo build --release" >&2; exit 1; }
command -v psql >/dev/null || { echo "bench-data: psql missing: scripts/setup.sh" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-data.XXXXXX)
UP_PID=
cleanup() {
    [[ -n $UP_PID ]] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
    [[ -n ${KEEP:-} ]] && echo "bench-data: kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

field() { sed -E "s/.*\"$2\":(\"[^\"]*\"|[^,}]*).*/\1/; s/\"//g" <<<"$1"; }

# Committed transactions on every node of the cluster, summed.
xacts() {
    local total=0 n port
    for ((n = 0; n <= $1; n++)); do
        port=$((PG_PORT + n))
        total=$((total + $(psql -h 127.0.0.1 -p "$port" -U scalestack -d scalestack -Atc \
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'scalestack'" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# A 64x64 PNG, written without any image tool.
python3 - "$WORK/photo.png" <<'PY'
import struct, sys, zlib
w = h = 64
raw = b"".join(b"\x00" + bytes((x * 4 + y) % 256 for x in range(w) for _ in range(3)) for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY

RESULTS=$WORK/results.tsv
for replicas in $REPLICAS_LIST; do
    for cache in none redis; do  # none: no cache (single-flight still coalesces concurrent misses)
        run=$WORK/run-$replicas-$cache
        mkdir -p "$run"
        if [[ $cache == redis ]]; then
            cache_conf=$'[cache]\nkind = "redis"\n[sessions]\nkind = "redis"\n[redis]\nport = 9740'
            lists=60
        else
            cache_conf=$'[cache]\nkind = "embedded"'
            lists=0
        fi
        cat >"$run/topology.toml" <<TOML
[data]
dir = "$run/data"
[control]
listen = "127.0.0.1:9790"
[lb]
listen = "127.0.0.1:9700"
admin_listen = "127.0.0.1:9791"
access_log = false
threads = 1
[web]
count = 2
listen = "127.0.0.1:9711"
cache_ttl_secs = $((lists == 0 ? 0 : 60))
list_cache_ttl_secs = $lists
argon2_memory_kib = 1024
[worker]
metrics_listen = "127.0.0.1:9721"
[sql]
kind = "postgres"
[postgres]
port = $PG_PORT
replicas = $replicas
$cache_conf
TOML
        RUST_LOG=warn "$BIN" up --topology "$run/topology.toml" >"$run/up.log" 2>&1 &
        UP_PID=$!
        for _ in $(seq 1 120); do grep -q "scalestack is up" "$run/up.log" && break; sleep 0.5; done
        grep -q "scalestack is up" "$run/up.log" || { cat "$run/up.log" >&2; exit 1; }

        base=http://127.0.0.1:9700
        curl -sf -c "$run/jar" -H 'content-type: application/json' \
            -d '{"username":"bench","password":"password123"}' "$base/api/signup" >/dev/null
        for _ in 1 2 3 4 5; do
            curl -sf -b "$run/jar" -F file=@"$WORK/photo.png" "$base/api/photos" >/dev/null
        done
        for _ in $(seq 1 100); do
            curl -sf "$base/api/photos/5" | grep -q '"ready"' && break
            sleep 0.2
        done

        for endpoint in photo list; do
            url=$base/api/photos/3
            [[ $endpoint == list ]] && url=$base/api/users/bench/photos
            echo "bench-data: $replicas replica(s), cache $cache, $endpoint ..." >&2
            before=$(xacts "$replicas")
            json=$("$BIN" bench http --url "$url" --connections "$CONNECTIONS" --duration "$DURATION" \
                --warmup "$WARMUP" --json)
            after=$(xacts "$replicas")
            seconds=$(field "$json" seconds)
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$replicas" "$cache" "$endpoint" \
                "$(field "$json" rps)" "$(field "$json" p50_us)" "$(field "$json" p99_us)" \
                "$(field "$json" errors)/$(field "$json" non_2xx)" \
                "$(awk -v d=$((after - before)) -v s="$seconds" -v w="${WARMUP%s}" 'BEGIN {printf "%.0f", d / (s + w)}')" \
                >>"$RESULTS"
        done
        kill -TERM "$UP_PID"; wait "$UP_PID" || true; UP_PID=
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo)
echo "# Data tier benchmark"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, ${cpu:-unknown CPU}; $(psql --version)"
echo "- LB (1 thread) → 2 web servers → PostgreSQL (primary + N replicas); $CONNECTIONS connections, $DURATION after $WARMUP warmup"
echo
echo "| replicas | cache | endpoint | req/s | p50 ms | p99 ms | errors/non-2xx | DB xact/s |"
echo "|---:|---|---|---:|---:|---:|---|---:|"
awk -F'\t' '{ printf "| %s | %s | %s | %.0f | %.3f | %.3f | %s | %s |\n", $1, $2, $3, $4, $5 / 1000, $6 / 1000, $7, $8 }' "$RESULTS"
