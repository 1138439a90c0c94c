#!/usr/bin/env bash
# Benchmarks the scalestack HTTP load balancer against nginx, HAProxy and (when
# built) a minimal pingora proxy on loopback, in one go, with the load
# generator and backend of `scalestack bench`.
#
# For THREADS in 1 and 2 it starts `scalestack bench serve` (2 threads) on
# 127.0.0.1:9500, then in turn each proxy on its own port, proxying to that
# backend over keep-alive upstream connections with access logs off:
#   lb       scalestack lb   127.0.0.1:9600 (admin 9690)
#   nginx    nginx           127.0.0.1:9601  (worker_processes THREADS)
#   haproxy  haproxy         127.0.0.1:9602  (nbthread THREADS)
#   pingora  pingora-lb      127.0.0.1:9603  (threads THREADS; only when built)
# and, as a baseline, the backend directly (no proxy). Each target gets a
# closed-loop run (64 connections) and an open-loop run at RATE req/s, both
# 10 s after a 2 s warmup, and the script prints a markdown table with ratios
# against nginx.
#
#   scripts/bench-lb.sh
#   RATE=20000 BIN=target/release/scalestack scripts/bench-lb.sh
#
# Environment (defaults): BIN (target/release/scalestack), RATE (10000),
# DURATION (10s), WARMUP (2s), CONNECTIONS (64), LOAD_THREADS (1: threads of
# the load generator), THREADS_LIST ("1 2"), KEEP (unset: set to keep the
# working directory with configs, logs and raw JSON results), PINGORA_BIN
# (${CARGO_TARGET_DIR:-benches/pingora-lb/target}/release/pingora-lb).
#
# pingora-lb is the pingora reverse proxy of benches/pingora-lb, a standalone
# cargo project outside the workspace (its dependencies are heavy and only
# this script uses it). Build it once, then run the script:
#   (cd benches/pingora-lb && cargo build --release)
#   (cd benches/pingora-lb && CARGO_TARGET_DIR=/elsewhere cargo build --release)
#       then PINGORA_BIN=/elsewhere/release/pingora-lb scripts/bench-lb.sh
# (a relative CARGO_TARGET_DIR is taken from the repository root here). When
# the binary is missing, the script says how to build it and skips pingora.
#
# Everything shares the machine's cores, the load generator included, so the
# numbers compare proxies on equal terms rather than measure their ceilings.
set -euo pipefail

cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/scalestack}
RATE=${RATE:-10000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
LOAD_THREADS=${LOAD_THREADS:-1}
THREADS_LIST=${THREADS_LIST:-"1 2"}
PINGORA_BIN=${PINGORA_BIN:-${CARGO_TARGET_DIR:-benches/pingora-lb/target}/release/pingora-lb}

BACKEND_ADDR=127.0.0.1:9500
BACKEND_THREADS=2
declare -A PORT=([direct]=9500 [lb]=9600 [nginx]=9601 [haproxy]=9602 [pingora]=9603)
LB_ADMIN_ADDR=127.0.0.1:9690
PROXIES=(lb nginx haproxy)

die() {
    echo "bench-lb: $*" >&2
    exit 1
}

# --- prerequisites -----------------------------------------------------------

[[ -x $BIN ]] || die "$BIN not found: build it with 'cargo build --release -p scalestack' (or set BIN)"
[[ $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive whole number of requests per second, not '$RATE'"

# nginx and haproxy live in /usr/sbin, which is not on every user's PATH.
find_tool() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true
}
NGINX=$(find_tool nginx)
HAPROXY=$(find_tool haproxy)
if [[ -z $NGINX || -z $HAPROXY ]]; then
    die "nginx and haproxy are needed: run 'scripts/setup.sh --bench' to install them"
fi

# pingora is optional: its proxy is a separate cargo project, built by hand.
if [[ -x $PINGORA_BIN ]]; then
    PROXIES+=(pingora)
else
    echo "bench-lb: $PINGORA_BIN not found, skipping pingora; build it with" \
        "'(cd benches/pingora-lb && cargo build --release)' (or set PINGORA_BIN)" >&2
fi

# Succeeds when something accepts connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Succeeds when 127.0.0.1:$1 answers GET / with a 200.
answers_200() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
        IFS= read -r -t 2 status <&3 || exit 1
        [[ $status == "HTTP/1."?" 200"* ]]
    ) 2>/dev/null
}

for target in direct "${PROXIES[@]}"; do
    port=${PORT[$target]}
    ! port_open "$port" || die "port $port is already in use on 127.0.0.1; stop whatever listens there"
done
! port_open "${LB_ADMIN_ADDR##*:}" ||
    die "port ${LB_ADMIN_ADDR##*:} is already in use on 127.0.0.1; stop whatever listens there"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-lb.XXXXXX")
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# --- process handling --------------------------------------------------------

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP:-} ]]; then
        echo "bench-lb: configs, logs and raw results kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start LOG CMD...: starts CMD in the background, output to LOG; its pid goes to $STARTED.
start() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# stop PID: terminates a process started by `start` and waits for it.
stop() {
    local pid=$1 p kept=()
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# wait_ready NAME PID PORT LOG: waits up to 10 s for a 200 on PORT.
wait_ready() {
    local name=$1 pid=$2 port=$3 log=$4 i
    for ((i = 0; i < 100; i++)); do
        answers_200 "$port" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench-lb: $name exited before answering; its log:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "bench-lb: $name did not answer 200 on port $port within 10 s; its log:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
}

# --- proxy configurations ----------------------------------------------------

write_lb_config() {
    local threads=$1 file=$2
    cat >"$file" <<EOF
listen = "127.0.0.1:${PORT[lb]}"
admin_listen = "$LB_ADMIN_ADDR"
threads = $threads
access_log = false

[[backends]]
addr = "$BACKEND_ADDR"
EOF
}

write_nginx_config() {
    local threads=$1 dir=$2
    mkdir -p "$dir"
    # Workers keep the current user (root only keeps root if told so).
    local user_line=""
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes $threads;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    # Client connections stay open for the whole run (the default closes
    # them every 1000 requests, which no other proxy here does).
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream backend {
        server $BACKEND_ADDR;
        keepalive 64;
        keepalive_requests 1000000;
    }

    # The same work scalestack lb does on every request: the client's
    # address, scheme and host to the backend, a request id generated and
    # passed on, and returned to the client.
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
        }
    }
}
EOF
}

write_haproxy_config() {
    local threads=$1 file=$2
    # No `log` line anywhere: HAProxy logs nothing. maxconn is left to HAProxy,
    # which derives it from the file descriptor limit (64 connections need little).
    cat >"$file" <<EOF
global
    nbthread $threads

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s

# The same work scalestack lb does on every request (see nginx's).
frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-after-response set-header X-Request-Id %[unique-id]
    default_backend backend

backend backend
    server backend $BACKEND_ADDR
EOF
}

# start_proxy NAME THREADS: starts the proxy; its pid goes to $STARTED.
start_proxy() {
    local name=$1 threads=$2 dir=$WORK/$1-$2
    mkdir -p "$dir"
    case $name in
        lb)
            write_lb_config "$threads" "$dir/lb.toml"
            start "$dir/lb.log" "$BIN" lb --config "$dir/lb.toml"
            ;;
        nginx)
            write_nginx_config "$threads" "$dir"
            start "$dir/nginx.log" "$NGINX" -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log"
            ;;
        haproxy)
            write_haproxy_config "$threads" "$dir/haproxy.cfg"
            start "$dir/haproxy.log" "$HAPROXY" -f "$dir/haproxy.cfg"
            ;;
        pingora)
            # Round robin over the one backend, pingora's keep-alive upstream
            # pool, no access log, no health check (see benches/pingora-lb).
            start "$dir/pingora.log" "$PINGORA_BIN" --listen "127.0.0.1:${PORT[pingora]}" \
                --backend "$BACKEND_ADDR" --threads "$threads"
            ;;
    esac
}

# --- measurement -------------------------------------------------------------

# json_field JSON NAME: the value of a top-level field of the one-line JSON report.
json_field() {
    sed -E "s/.*\"$2\":(\"[^\"]*\"|[^,}]*).*/\1/; s/\"//g" <<<"$1"
}

# cpu_ticks PID: CPU time (user + system, in clock ticks) of PID and its
# children (nginx's workers), so far.
cpu_ticks() {
    local p total=0 stat
    for p in $1 $(ps -o pid= --ppid "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        # After the command name: state is field 3, utime 14 and stime 15.
        total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$total"
}

# seconds D: a duration such as 10s or 2s in whole seconds ("" if another form).
seconds() {
    [[ $1 =~ ^([0-9]+)s$ ]] && echo "${BASH_REMATCH[1]}"
}

# measure TARGET THREADS PID: closed then open loop against TARGET's port.
# The CPU time (user + system) that the proxy (PID), the backend and the load
# generator spend over each run is measured too, per request: what the proxy
# costs, free of the competition for cores that the closed loop's throughput
# suffers, and what the whole system costs with it in the path (a proxy
# that makes its peers work harder per request shows there).
measure() {
    local target=$1 threads=$2 pid=$3 mode json before_p before_b gen requests
    local url="http://127.0.0.1:${PORT[$target]}/"
    local run_secs=$(($(seconds "$DURATION") + $(seconds "$WARMUP")))
    for mode in closed open; do
        local rate_args=()
        [[ $mode == open ]] && rate_args=(--rate "$RATE")
        echo "bench-lb: $target, $threads thread(s), $mode loop ..." >&2
        before_p=$(cpu_ticks "$pid")
        before_b=$(cpu_ticks "$backend_pid")
        json=$(/usr/bin/time -f '%U %S' -o "$WORK/gen-time" "$BIN" bench http --url "$url" \
            --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
            --threads "$LOAD_THREADS" "${rate_args[@]}" --json)
        gen=$(awk '{ printf "%.0f", ($1 + $2) * 100 }' "$WORK/gen-time")
        if [[ $mode == open ]]; then
            requests=$((RATE * run_secs))
        else
            requests=$(awk -v r="$(json_field "$json" rps)" -v s="$run_secs" 'BEGIN { printf "%.0f", r * s }')
        fi
        # Proxy, then everything (proxy, backend, load generator); the
        # direct run has no proxy.
        local cpu
        cpu=$(awk -v p="$(($(cpu_ticks "$pid") - before_p))" -v b="$(($(cpu_ticks "$backend_pid") - before_b))" \
            -v g="$gen" -v hz="$(getconf CLK_TCK)" -v n="$requests" -v direct="$([[ $target == direct ]] && echo 1)" \
            'BEGIN {
                us = 1e6 / hz / n
                if (direct) printf "-\t%.2f", (b + g / 100 * hz) * us
                else printf "%.2f\t%.2f", p * us, (p + b + g / 100 * hz) * us
            }')
        echo "$target $threads $json" >>"$WORK/results.jsonl"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$threads" "$mode" \
            "$(json_field "$json" rps)" "$(json_field "$json" p50_us)" "$(json_field "$json" p99_us)" \
            "$(json_field "$json" p999_us)" "$(json_field "$json" errors)" \
            "$(json_field "$json" non_2xx)" "$cpu" >>"$RESULTS"
    done
}

# --- run ---------------------------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo)
echo "# Load balancer benchmark"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, kernel $(uname -r)"
echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), HAProxy: $("$HAPROXY" -v 2>&1 | awk 'NR == 1 {print $3}')"
if [[ " ${PROXIES[*]} " == *" pingora "* ]]; then
    pingora_version=$(sed -n '/^name = "pingora"$/{n;s/^version = "\(.*\)"$/\1/p;}' benches/pingora-lb/Cargo.lock 2>/dev/null || true)
    echo "- pingora: ${pingora_version:-unknown version} (benches/pingora-lb, $PINGORA_BIN)"
fi
echo "- load: $CONNECTIONS connections, $DURATION after $WARMUP warmup, open loop at $RATE req/s," \
    "load generator on $LOAD_THREADS thread(s), backend on $BACKEND_THREADS thread(s), all on loopback"
echo

for threads in $THREADS_LIST; do
    start "$WORK/backend-$threads.log" "$BIN" bench serve --listen "$BACKEND_ADDR" \
        --threads "$BACKEND_THREADS"
    backend_pid=$STARTED
    wait_ready backend "$backend_pid" "${PORT[direct]}" "$WORK/backend-$threads.log"

    measure direct "$threads" "$backend_pid"
    for proxy in "${PROXIES[@]}"; do
        start_proxy "$proxy" "$threads"
        proxy_pid=$STARTED
        wait_ready "$proxy" "$proxy_pid" "${PORT[$proxy]}" "$WORK/$proxy-$threads/$proxy.log"
        measure "$proxy" "$threads" "$proxy_pid"
        # Resident memory of the proxy and its children (nginx's workers), after the load.
        rss=$(ps -o rss= --pid "$proxy_pid" --ppid "$proxy_pid" | awk '{s += $1} END {print s}')
        printf '%s\t%s\t%s\n' "$proxy" "$threads" "$rss" >>"$WORK/rss.tsv"
        stop "$proxy_pid"
    done

    stop "$backend_pid"
done

# --- report ------------------------------------------------------------------

echo "| proxy | threads | mode | req/s | p50 ms | p99 ms | p99.9 ms | errors | non-2xx | CPU µs/req proxy | CPU µs/req all | req/s vs nginx | p99 vs nginx | proxy CPU vs nginx |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '
    { row[NR] = $0; if ($1 == "nginx") { rps[$2 "/" $3] = $4; p99[$2 "/" $3] = $6; cpu[$2 "/" $3] = $10 } }
    END {
        for (i = 1; i <= NR; i++) {
            split(row[i], f, "\t")
            key = f[2] "/" f[3]
            rr = (key in rps && rps[key] > 0) ? sprintf("%.2f", f[4] / rps[key]) : "-"
            pr = (key in p99 && p99[key] > 0) ? sprintf("%.2f", f[6] / p99[key]) : "-"
            cr = (f[10] != "-" && key in cpu && cpu[key] > 0) ? sprintf("%.2f", f[10] / cpu[key]) : "-"
            name = (f[1] == "direct") ? "direct (no proxy)" : f[1]
            printf "| %s | %s | %s | %.0f | %.3f | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s |\n",
                name, f[2], f[3], f[4], f[5] / 1000, f[6] / 1000, f[7] / 1000, f[8], f[9], f[10], f[11], rr, pr, cr
        }
    }' "$RESULTS"
echo
echo "Resident memory after the runs (proxy process and its children), MiB:"
echo
echo "| proxy | threads | RSS MiB |"
echo "|---|---:|---:|"
awk -F'\t' '{ printf "| %s | %s | %.1f |\n", $1, $2, $3 / 1024 }' "$WORK/rss.tsv"
echo
echo "Closed loop: each connection sends its next request when the previous answer is read." \
    "Open loop: $RATE req/s on a fixed schedule, latency from each request's intended start;" \
    "CPU µs/req: CPU time (user + system) per request over each run (warm-up included), of the proxy's processes" \
    "and of everything (proxy, backend, load generator)."
