#!/usr/bin/env bash
# Benchmarks the job queue port on NATS JetStream (store_nats::NatsJobQueue)
# against a minimal raw async-nats client, side by side on the same servers,
# with `scalestack bench queue` (see crates/bench/src/queue.rs for what a
# run measures: enqueue, drain and end to end, each JOBS jobs).
#
# For each configuration it starts private nats-server processes itself
# (state in a temporary directory, stopped by pid at exit):
#   1 node,  sync default   (acked once written to the page cache, fsync every 2 min)
#   1 node,  sync always    (fsync before each ack)
#   3 nodes, sync default   stream replicas 3
#   3 nodes, sync always    stream replicas 3
# (on a cluster both clients connect to the first node), and runs the port
# and raw back to back on the same server, REPS times,
# alternating which goes first; each figure is the median of the REPS runs.
# It prints a markdown table with the ratio port/raw.
#
#   scripts/bench-queue.sh
#   JOBS=5000 REPS=1 CONFIGS="1:default" scripts/bench-queue.sh
#   JOB=photo JOBS=200 scripts/bench-queue.sh     # the photo job's work per job
#
# Environment (defaults): BIN (target/release/scalestack), NATS_SERVER (the
# newest /usr/local/lib/scalestack/nats-server-*/nats-server that
# scripts/setup.sh installs, else nats-server on PATH; 2.10 or later for
# sync always), JOBS (20000), PAYLOAD (64 bytes), PRODUCERS (8), CONSUMERS
# (8), BATCH (200: raw consumers' messages per pull request, async-nats's
# default), JOB (noop, or photo: each consumer renders a 1600x1200 JPEG's
# variants per job, in both modes), REPS (3), CONFIGS ("1:default 1:always 3:default 3:always":
# nodes:sync), PORT (14322: client ports PORT..PORT+2), CLUSTER_PORT
# (16322: route ports CLUSTER_PORT..+2), KEEP (unset: set to keep the
# working directory with configs, logs and raw JSON).
#
# Servers and clients share the machine's cores: the ratio compares the two
# clients on equal terms, the absolute rates are this machine's.
set -euo pipefail

cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/scalestack}
JOBS=${JOBS:-20000}
PAYLOAD=${PAYLOAD:-64}
PRODUCERS=${PRODUCERS:-8}
CONSUMERS=${CONSUMERS:-8}
BATCH=${BATCH:-200}
JOB=${JOB:-noop}
REPS=${REPS:-3}
CONFIGS=${CONFIGS:-"1:default 1:always 3:default 3:always"}
PORT=${PORT:-14322}
CLUSTER_PORT=${CLUSTER_PORT:-16322}

die() {
    echo "bench-queue: $*" >&2
    exit 1
}
note() {
    echo "bench-queue: $*" >&2
}

# --- prerequisites -----------------------------------------------------------

[[ -x $BIN ]] || die "$BIN not found: build it with 'cargo build --release -p scalestack' (or set BIN)"
"$BIN" bench queue --help >/dev/null 2>&1 || die "$BIN has no 'bench queue': rebuild it from this checkout"
for var in JOBS PAYLOAD PRODUCERS CONSUMERS BATCH REPS PORT CLUSTER_PORT; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive whole number, not '${!var}'"
done
((PAYLOAD >= 8)) || die "PAYLOAD must be at least 8 bytes (the publish time rides in it)"
if [[ -z ${NATS_SERVER:-} ]]; then
    NATS_SERVER=$(ls -d /usr/local/lib/scalestack/nats-server-*/nats-server 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n $NATS_SERVER ]] || NATS_SERVER=$(command -v nats-server || true)
fi
[[ -n $NATS_SERVER && -x $NATS_SERVER ]] || die "nats-server not found: run 'scripts/setup.sh' (or set NATS_SERVER)"
[[ $JOB == noop || $JOB == photo ]] || die "JOB must be noop or photo, not '$JOB'"
for config in $CONFIGS; do
    [[ $config =~ ^(1|3):(default|always)$ ]] || die "CONFIGS entries are nodes:sync with nodes 1 or 3 and sync default or always, not '$config'"
done

# Succeeds when something accepts connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for ((i = 0; i < 3; i++)); do
    for port in $((PORT + i)) $((CLUSTER_PORT + i)); do
        ! port_open "$port" || die "port $port is already in use on 127.0.0.1; stop whatever listens there or set PORT / CLUSTER_PORT"
    done
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-queue.XXXXXX")

# --- process handling --------------------------------------------------------

PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    if [[ -n ${KEEP:-} ]]; then
        note "configs, logs and raw results kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# jetstream_up PORT: succeeds when the server on PORT greets with JetStream on.
jetstream_up() {
    local line
    line=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && read -r -t 2 line <&3 && echo "$line") 2>/dev/null) || true
    [[ $line == *'"jetstream":true'* ]]
}

# start_nodes DIR NODES SYNC: starts NODES servers (a cluster when 3) with
# state under DIR; the URL the clients use goes to $URLS.
start_nodes() {
    local dir=$1 nodes=$2 sync=$3 i j routes conf
    URLS=
    for ((i = 0; i < nodes; i++)); do
        mkdir -p "$dir/n$i"
        conf="$dir/n$i.conf"
        {
            echo "server_name: n$i"
            echo "listen: \"127.0.0.1:$((PORT + i))\""
            echo "log_file: \"$dir/n$i.log\""
            echo "jetstream {"
            echo "  store_dir: \"$dir/n$i/js\""
            [[ $sync == always ]] && echo "  sync_interval: always"
            echo "}"
            if ((nodes > 1)); then
                routes=
                for ((j = 0; j < nodes; j++)); do
                    ((j == i)) || routes+="    \"nats-route://127.0.0.1:$((CLUSTER_PORT + j))\""$'\n'
                done
                printf 'cluster {\n  name: bench\n  listen: "127.0.0.1:%s"\n  routes: [\n%s  ]\n}\n' \
                    "$((CLUSTER_PORT + i))" "$routes"
            fi
        } >"$conf"
        "$NATS_SERVER" -c "$conf" >"$dir/n$i.out" 2>&1 &
        PIDS+=("$!")
    done
    # Both clients connect to the first node only (the stream's copies are
    # on all three): equal terms, whatever the client's choice of node.
    URLS="nats://127.0.0.1:$PORT"
    for ((i = 0; i < nodes; i++)); do
        for ((j = 0; j < 100; j++)); do
            jetstream_up "$((PORT + i))" && break
            kill -0 "${PIDS[i]}" 2>/dev/null || { tail -n 20 "$dir/n$i.log" "$dir/n$i.out" >&2 || true; die "nats-server n$i exited"; }
            sleep 0.1
        done
        ((j < 100)) || die "nats-server n$i did not greet with JetStream within 10 s"
    done
}

# bench MODE NODES [JOBS]: one `bench queue` run, its JSON on stdout (the
# binary logs to stdout too: only warnings and errors, kept in bench.log).
bench() {
    local out
    out=$(RUST_LOG=warn "$BIN" bench queue --url "$URLS" --mode "$1" --replicas "$2" --jobs "${3:-$JOBS}" \
        --payload "$PAYLOAD" --producers "$PRODUCERS" --consumers "$CONSUMERS" --batch "$BATCH" --job "$JOB" --json \
        2>>"$WORK/bench.log") || { echo "$out" >>"$WORK/bench.log"; return 1; }
    grep -v '^{' <<<"$out" >>"$WORK/bench.log" || true
    grep '^{' <<<"$out" | tail -n 1
}

# warm_up NODES: a short run, retried while a new cluster elects its leaders.
warm_up() {
    local i
    for ((i = 0; i < 30; i++)); do
        bench raw "$1" 20 >/dev/null && return 0
        sleep 1
    done
    die "JetStream did not take a stream within 30 s (see $WORK/bench.log; KEEP=1 keeps it)"
}

# json_field JSON NAME: the value of a top-level field of the one-line JSON report.
json_field() {
    sed -E "s/.*\"$2\":(\"[^\"]*\"|[^,}]*).*/\1/; s/\"//g" <<<"$1"
}

# --- run ---------------------------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo)
echo "# Job queue benchmark (NATS JetStream)"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, kernel $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- server: $("$NATS_SERVER" --version 2>&1 | head -n 1), file storage under ${TMPDIR:-/tmp} ($(df -T "$WORK" | awk 'NR == 2 {print $2}'))"
echo "- each run: $JOBS $JOB jobs of $PAYLOAD B per phase, $PRODUCERS producers, $CONSUMERS consumers, one connection;" \
    "raw consumers pull $BATCH messages per request, the port's pulls are sized by its callers; median of $REPS runs per mode, alternating order"
echo

: >"$WORK/results.tsv"
for config in $CONFIGS; do
    nodes=${config%%:*}
    sync=${config##*:}
    dir="$WORK/$nodes-$sync"
    mkdir -p "$dir"
    note "$nodes node(s), sync $sync: starting nats-server ..."
    start_nodes "$dir" "$nodes" "$sync"
    warm_up "$nodes"
    for ((rep = 1; rep <= REPS; rep++)); do
        order="port raw"
        ((rep % 2 == 0)) && order="raw port"
        for mode in $order; do
            note "$nodes node(s), sync $sync, run $rep/$REPS, $mode ..."
            json=$(bench "$mode" "$nodes") || die "bench queue failed (see $WORK/bench.log; KEEP=1 keeps it)"
            echo "$nodes $sync $mode $json" >>"$WORK/results.jsonl"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$nodes" "$sync" "$mode" \
                "$(json_field "$json" enqueue_jobs_per_s)" "$(json_field "$json" drain_jobs_per_s)" \
                "$(json_field "$json" e2e_jobs_per_s)" "$(json_field "$json" e2e_p50_us)" \
                "$(json_field "$json" e2e_p99_us)" >>"$WORK/results.tsv"
        done
    done
    stop_all
done

# --- report ------------------------------------------------------------------

echo "| nodes | sync | enqueue port | enqueue raw | ratio | drain port | drain raw | ratio | end to end port | end to end raw | ratio | e2e p50 / p99 ms port | e2e p50 / p99 ms raw |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '
    function median(key,    n, i, j, t, v) {
        n = split(vals[key], v, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
    function rate(x) { return (x < 100) ? sprintf("%.1f", x) : sprintf("%.0f", x) }
    {
        c = $1 "\t" $2
        if (!(c in seen)) { seen[c] = 1; order[++configs] = c }
        for (f = 4; f <= 8; f++) vals[c, $3, f] = vals[c, $3, f] " " $f
    }
    END {
        for (k = 1; k <= configs; k++) {
            c = order[k]
            split(c, cf, "\t")
            for (f = 4; f <= 8; f++) { p[f] = median(c SUBSEP "port" SUBSEP f); r[f] = median(c SUBSEP "raw" SUBSEP f) }
            printf "| %s | %s | %s | %s | **%s** | %s | %s | **%s** | %s | %s | **%s** | %.1f / %.1f | %.1f / %.1f |\n",
                cf[1], cf[2], rate(p[4]), rate(r[4]), ratio(p[4], r[4]), rate(p[5]), rate(r[5]), ratio(p[5], r[5]),
                rate(p[6]), rate(r[6]), ratio(p[6], r[6]),
                p[7] / 1000, p[8] / 1000, r[7] / 1000, r[8] / 1000
        }
    }' "$WORK/results.tsv"
echo
echo "enqueue: jobs/s acknowledged by JetStream, no consumer running. drain: jobs/s taken and acked (confirmed) from the" \
    "queue the enqueue phase filled. end to end: producers and consumers together, jobs/s from the first publish to the" \
    "last confirmed ack; latency from just before a job's publish to its confirmed ack. ratio: port / raw."
