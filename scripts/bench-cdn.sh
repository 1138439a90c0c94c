#!/usr/bin/env bash
# Benchmarks CDN edges side by side on loopback, in one go: the scalestack
# edge (when the binary has `scalestack cdn`), Varnish, nginx proxy_cache,
# Squid and Apache Traffic Server, each in front of the same origin, with
# the load generator and origin of `scalestack bench`.
#
# It starts `scalestack bench origin` on 127.0.0.1:9700 (/small 2 KiB,
# /large 100 KiB, /zipf/<n> 100 KiB, all `Cache-Control: public,
# max-age=3600`; /slow/<name> after SLOW; requests counted per path), then
# in turn each edge on its own port, with the same memory for objects
# (MEMORY_MB), one worker thread or process per core (or the tool's norm)
# and access logs off:
#   cdn      scalestack cdn   127.0.0.1:9710 (admin 9790)  threads = cores
#   varnish  varnishd         127.0.0.1:9711               -s malloc,MEMORY_MB (2 thread pools)
#   nginx    nginx            127.0.0.1:9712               proxy_cache max_size=MEMORY_MB, proxy_cache_lock
#   squid    squid            127.0.0.1:9713               workers = cores, cache_mem MEMORY_MB (shared), no disk, collapsed_forwarding
#   ats      traffic_server   127.0.0.1:9714               RAM cache and cache file of MEMORY_MB, read-while-writer
# and measures, for each edge:
#   hits      /small and /large once cached: a closed-loop run (CONNECTIONS
#             connections: the throughput) and an open-loop run at RATE
#             (/small) or RATE_LARGE (/large) req/s (latency without
#             coordinated omission), DURATION each after WARMUP; CPU time of
#             the edge's processes per request; resident memory after.
#   stampede  STAMPEDE_CLIENTS concurrent clients, one request each, on a key
#             nobody has fetched, which the origin answers after SLOW: the
#             origin requests the edge let through.
#   zipf      ZIPF_OBJECTS objects of 100 KiB (more than MEMORY_MB) requested
#             with Zipf popularity (exponent ZIPF_S), open loop at ZIPF_RATE
#             req/s: ZIPF_FILL to fill the cache, then ZIPF_DURATION
#             measured with another seed; hit ratio = 1 - origin requests /
#             client requests over the measured part.
# and prints markdown tables with the raw numbers and ratios against
# Varnish and nginx.
#
#   scripts/bench-cdn.sh
#   EDGES="varnish nginx" DURATION=5s scripts/bench-cdn.sh
#
# Environment (defaults): BIN (target/release/scalestack), EDGES ("cdn
# varnish nginx squid ats"; an edge whose tool is missing is skipped with a
# note), MEMORY_MB (64), DURATION (10s), WARMUP (2s), CONNECTIONS (64),
# RATE (10000), RATE_LARGE (5000), LOAD_THREADS (1), STAMPEDE_CLIENTS (100),
# SLOW (200ms), ZIPF_OBJECTS (2000), ZIPF_S (1.0), ZIPF_RATE (1000),
# ZIPF_CONNECTIONS (16), ZIPF_FILL (10s), ZIPF_DURATION (20s), KEEP (unset:
# set to keep the working directory with configs, logs and raw JSON).
# With the defaults the whole run takes 7 to 9 minutes.
#
# Everything shares the machine's cores, the load generator and the origin
# included, so the numbers compare edges on equal terms rather than measure
# their ceilings.
set -euo pipefail

cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/scalestack}
EDGES=${EDGES:-"cdn varnish nginx squid ats"}
MEMORY_MB=${MEMORY_MB:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-10000}
RATE_LARGE=${RATE_LARGE:-5000}
LOAD_THREADS=${LOAD_THREADS:-1}
STAMPEDE_CLIENTS=${STAMPEDE_CLIENTS:-100}
SLOW=${SLOW:-200ms}
ZIPF_OBJECTS=${ZIPF_OBJECTS:-2000}
ZIPF_S=${ZIPF_S:-1.0}
ZIPF_RATE=${ZIPF_RATE:-1000}
ZIPF_CONNECTIONS=${ZIPF_CONNECTIONS:-16}
ZIPF_FILL=${ZIPF_FILL:-10s}
ZIPF_DURATION=${ZIPF_DURATION:-20s}

ORIGIN_ADDR=127.0.0.1:9700
ORIGIN_THREADS=2
OBJECT_BYTES=$((100 * 1024))
declare -A PORT=([cdn]=9710 [varnish]=9711 [nginx]=9712 [squid]=9713 [ats]=9714)
declare -A LABEL=([cdn]="scalestack cdn" [varnish]=Varnish [nginx]="nginx proxy_cache" [squid]=Squid [ats]="Traffic Server")
CDN_ADMIN_ADDR=127.0.0.1:9790
CORES=$(nproc)

die() {
    echo "bench-cdn: $*" >&2
    exit 1
}
note() {
    echo "bench-cdn: $*" >&2
}

# --- prerequisites -----------------------------------------------------------

[[ -x $BIN ]] || die "$BIN not found: build it with 'cargo build --release -p scalestack' (or set BIN)"
"$BIN" bench origin --help >/dev/null 2>&1 ||
    die "$BIN has no 'bench origin': rebuild it from this checkout"
for var in MEMORY_MB RATE RATE_LARGE CONNECTIONS LOAD_THREADS STAMPEDE_CLIENTS ZIPF_OBJECTS ZIPF_RATE ZIPF_CONNECTIONS; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive whole number, not '${!var}'"
done
# seconds D: a duration such as 10s in whole seconds ("" if another form).
seconds() {
    [[ $1 =~ ^([0-9]+)s$ ]] && echo "${BASH_REMATCH[1]}"
}
for var in DURATION WARMUP ZIPF_FILL ZIPF_DURATION; do
    [[ -n $(seconds "${!var}") ]] || die "$var must be whole seconds such as 10s, not '${!var}'"
done
command -v curl >/dev/null || die "curl is needed: run 'scripts/setup.sh'"

# Tools in /usr/sbin are not on every user's PATH.
find_tool() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true
}
VARNISHD=$(find_tool varnishd)
NGINX=$(find_tool nginx)
SQUID=$(find_tool squid)
TRAFFIC_SERVER=$(find_tool traffic_server)

# with_tool EDGE PATH NAME: runs EDGE if its tool was found, else says so.
with_tool() {
    if [[ -n $2 ]]; then
        RUN+=("$1")
    else
        note "$3 not found: skipping ${LABEL[$1]} (scripts/setup.sh --bench installs it)"
    fi
}

RUN=()
for edge in $EDGES; do
    case $edge in
        cdn)
            if "$BIN" cdn --help >/dev/null 2>&1; then
                RUN+=(cdn)
            else
                note "$BIN has no 'cdn' subcommand yet: skipping scalestack cdn"
            fi
            ;;
        varnish) with_tool "$edge" "$VARNISHD" varnishd ;;
        nginx) with_tool "$edge" "$NGINX" nginx ;;
        squid) with_tool "$edge" "$SQUID" squid ;;
        ats) with_tool "$edge" "$TRAFFIC_SERVER" traffic_server ;;
        *) die "unknown edge '$edge' in EDGES (known: cdn varnish nginx squid ats)" ;;
    esac
done
((${#RUN[@]})) || die "no edge to run"

# Succeeds when something accepts connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

for port in "${ORIGIN_ADDR##*:}" "${CDN_ADMIN_ADDR##*:}" "${PORT[@]}"; do
    ! port_open "$port" || die "port $port is already in use on 127.0.0.1; stop whatever listens there"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-cdn.XXXXXX")
# Varnish's cache process and Squid drop root for users of their own,
# which must reach their files here.
chmod 755 "$WORK"

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
        note "configs, logs and raw results kept in $WORK"
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

# http_status PORT PATH: the status of GET PATH on 127.0.0.1:PORT (000 if none).
http_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1$2" || true
}

# wait_ready NAME PID PORT LOG: waits up to 20 s for a 200 on GET / (through
# the edge, from the origin).
wait_ready() {
    local name=$1 pid=$2 port=$3 log=$4 i
    for ((i = 0; i < 200; i++)); do
        [[ $(http_status "$port" /) == 200 ]] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            note "$name exited before answering; its log:"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    note "$name did not answer 200 on port $port within 20 s; its log:"
    tail -n 20 "$log" >&2 || true
    exit 1
}

# origin_count QUERY: requests the origin received (prefix=P, path=P or all).
origin_count() {
    curl -sf --max-time 5 "http://$ORIGIN_ADDR/__origin/count${1:+?$1}" || die "the origin did not report its counts"
}

# tree PID: PID and all its descendants.
tree() {
    local p
    echo "$1"
    for p in $(ps -o pid= --ppid "$1"); do
        tree "$p"
    done
}

# cpu_ticks PID: CPU time (user + system, clock ticks) of PID and its descendants so far.
cpu_ticks() {
    local p total=0 stat
    for p in $(tree "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        # After the command name: state is field 3, utime 14 and stime 15.
        total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$total"
}

# memory_kib PID: resident memory of PID and its descendants, KiB, as the
# sum of their proportional set sizes: a page that several share (nginx's
# workers and master, Squid's shared memory cache) counts once. VmRSS where
# smaps_rollup cannot be read (another user's process without root).
memory_kib() {
    local p total=0 kib
    for p in $(tree "$1"); do
        kib=$(awk '/^Pss:/ {print $2; exit}' "/proc/$p/smaps_rollup" 2>/dev/null) ||
            kib=$(awk '/^VmRSS:/ {print $2; exit}' "/proc/$p/status" 2>/dev/null) || kib=0
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# json_field JSON NAME: the value of a top-level field of the one-line JSON report.
json_field() {
    sed -E "s/.*\"$2\":(\"[^\"]*\"|[^,}]*).*/\1/; s/\"//g" <<<"$1"
}

# --- edge configurations -----------------------------------------------------

write_cdn_config() {
    cat >"$1" <<EOF
listen = "127.0.0.1:${PORT[cdn]}"
admin_listen = "$CDN_ADMIN_ADDR"
origin = "$ORIGIN_ADDR"
threads = $CORES
access_log = false
memory_bytes = $((MEMORY_MB << 20))
EOF
}

write_varnish_vcl() {
    # Varnish's built-in VCL does the rest: lookups, Cache-Control, grace,
    # request coalescing (its waiting list).
    cat >"$1" <<EOF
vcl 4.1;

backend origin {
    .host = "${ORIGIN_ADDR%:*}";
    .port = "${ORIGIN_ADDR##*:}";
}
EOF
}

write_nginx_config() {
    local dir=$1
    # Workers keep the current user (root only keeps root if told so).
    local user_line=""
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes $CORES;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    # Cached files go out with sendfile, as in Debian's nginx.conf, but
    # without its tcp_nopush: with TCP_CORK a 100 KiB answer on loopback
    # waited ~40 ms for the client's delayed ACK (1 700 hits/s instead of
    # 12 000).
    sendfile on;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    # Objects are files (in the page cache); max_size bounds them as the
    # others' memory is bounded, the cache manager evicting the least
    # recently used: lazily, it wakes every few seconds, so the files can
    # exceed max_size in between (the report shows their size after the
    # Zipf runs). keys_zone holds the keys (8 MiB: ~64 000 keys).
    proxy_cache_path $dir/cache levels=1:2 keys_zone=edge:8m max_size=${MEMORY_MB}m inactive=1d use_temp_path=off;

    upstream origin {
        server $ORIGIN_ADDR;
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            # One request per missing key goes to the origin; the others wait.
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
        }
    }
}
EOF
}

write_squid_config() {
    local dir=$1
    # Memory only (no cache_dir); a worker per core sharing one memory cache.
    cat >"$dir/squid.conf" <<EOF
http_port 127.0.0.1:${PORT[squid]} accel defaultsite=${ORIGIN_ADDR%:*} no-vhost
cache_peer ${ORIGIN_ADDR%:*} parent ${ORIGIN_ADDR##*:} 0 no-query no-digest originserver name=origin
cache_peer_access origin allow all
http_access allow all
never_direct allow all
workers $CORES
cache_mem $MEMORY_MB MB
maximum_object_size_in_memory 1 MB
collapsed_forwarding on
access_log none
cache_store_log none
cache_log $dir/cache.log
pid_filename $dir/squid.pid
coredump_dir $dir
logfile_rotate 0
shutdown_lifetime 1 seconds
visible_hostname bench-squid
pinger_enable off
EOF
}

write_ats_config() {
    local dir=$1
    mkdir -p "$dir/etc" "$dir/run" "$dir/log" "$dir/cache"
    # A run root of our own: configuration, logs and cache under $dir.
    cat >"$dir/runroot.yaml" <<EOF
prefix: $dir
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/sbin
sysconfdir: $dir/etc
datadir: $dir/cache
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: /usr/lib/trafficserver/modules
localstatedir: $dir
runtimedir: $dir/run
logdir: $dir/log
cachedir: $dir/cache
EOF
    # The RAM cache and the cache file both of MEMORY_MB: what it keeps is
    # bounded like the others'. Read-while-writer with retries is how ATS
    # holds a stampede to one origin request.
    cat >"$dir/etc/records.config" <<EOF
CONFIG proxy.config.http.server_ports STRING 127.0.0.1:${PORT[ats]}
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT $CORES
CONFIG proxy.config.cache.ram_cache.size INT $((MEMORY_MB << 20))
CONFIG proxy.config.cache.enable_read_while_writer INT 1
CONFIG proxy.config.http.background_fill_completed_threshold FLOAT 0.0
CONFIG proxy.config.http.cache.max_open_read_retries INT 100
CONFIG proxy.config.http.cache.open_read_retry_time INT 10
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.crash_log_helper STRING /bin/true
CONFIG proxy.config.http.insert_request_via_str INT 0
CONFIG proxy.config.http.insert_response_via_str INT 0
CONFIG proxy.config.diags.debug.enabled INT 0
CONFIG proxy.config.net.connections_throttle INT 10000
EOF
    echo "map / http://$ORIGIN_ADDR/" >"$dir/etc/remap.config"
    echo "$dir/cache ${MEMORY_MB}M" >"$dir/etc/storage.config"
    cat >"$dir/etc/ip_allow.yaml" <<EOF
ip_allow:
  - apply: in
    ip_addrs: 127.0.0.1
    action: allow
    methods: ALL
EOF
    local f
    for f in plugin.config cache.config hosting.config volume.config parent.config logging.yaml \
        sni.yaml ssl_multicert.config strategies.yaml splitdns.config socks.config; do
        : >"$dir/etc/$f"
    done
}

# start_edge NAME: starts the edge; its pid goes to $STARTED.
start_edge() {
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    case $name in
        cdn)
            write_cdn_config "$dir/cdn.toml"
            start "$dir/cdn.log" "$BIN" cdn --config "$dir/cdn.toml"
            ;;
        varnish)
            write_varnish_vcl "$dir/bench.vcl"
            start "$dir/varnish.log" "$VARNISHD" -F -n "$dir/state" -a "127.0.0.1:${PORT[varnish]}" \
                -T none -f "$dir/bench.vcl" -s "malloc,${MEMORY_MB}M"
            ;;
        nginx)
            write_nginx_config "$dir"
            start "$dir/nginx.log" "$NGINX" -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log"
            ;;
        squid)
            write_squid_config "$dir"
            # As root Squid runs as its own user, which must write here.
            [[ $(id -u) -eq 0 ]] && id proxy >/dev/null 2>&1 && chown proxy "$dir"
            start "$dir/squid.log" "$SQUID" --foreground -f "$dir/squid.conf"
            ;;
        ats)
            write_ats_config "$dir"
            start "$dir/ats.log" "$TRAFFIC_SERVER" --run-root="$dir/runroot.yaml"
            ;;
    esac
}

# --- measurements --------------------------------------------------------------

# hits EDGE PID: closed and open loop on /small and /large, already cached.
hits() {
    local edge=$1 pid=$2 object path rate mode json before after requests origin_before
    local url_base="http://127.0.0.1:${PORT[$edge]}"
    local run_secs=$(($(seconds "$DURATION") + $(seconds "$WARMUP")))
    for object in small large; do
        path=/$object
        rate=$RATE
        [[ $object == large ]] && rate=$RATE_LARGE
        # One miss to store it; the runs then measure hits.
        [[ $(http_status "${PORT[$edge]}" "$path") == 200 ]] || die "$edge did not answer 200 for $path"
        origin_before=$(origin_count "path=$path")
        for mode in closed open; do
            local rate_args=()
            [[ $mode == open ]] && rate_args=(--rate "$rate")
            note "$edge, $path hits, $mode loop ..."
            before=$(cpu_ticks "$pid")
            json=$("$BIN" bench http --url "$url_base$path" --connections "$CONNECTIONS" \
                --duration "$DURATION" --warmup "$WARMUP" --threads "$LOAD_THREADS" "${rate_args[@]}" --json)
            after=$(cpu_ticks "$pid")
            echo "$edge hits $path $mode $json" >>"$WORK/results.jsonl"
            if [[ $mode == open ]]; then
                requests=$((rate * run_secs))
            else
                requests=$(awk -v r="$(json_field "$json" rps)" -v s="$run_secs" 'BEGIN { printf "%.0f", r * s }')
            fi
            local cpu
            cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
                'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$edge" "$object" \
                "$mode$([[ $mode == open ]] && echo " $rate/s")" \
                "$(json_field "$json" rps)" "$(json_field "$json" p50_us)" "$(json_field "$json" p99_us)" \
                "$(json_field "$json" p999_us)" "$(json_field "$json" errors)" "$(json_field "$json" non_2xx)" \
                "$cpu" "$(($(origin_count "path=$path") - origin_before))" >>"$WORK/hits.tsv"
        done
    done
}

# stampede EDGE: STAMPEDE_CLIENTS concurrent requests for one slow key nobody fetched yet.
stampede() {
    local edge=$1 path=/slow/$1 json
    note "$edge, stampede of $STAMPEDE_CLIENTS clients on $path ..."
    json=$("$BIN" bench http --url "http://127.0.0.1:${PORT[$edge]}$path" \
        --connections "$STAMPEDE_CLIENTS" --requests "$STAMPEDE_CLIENTS" --duration 60s --timeout 20s \
        --threads "$LOAD_THREADS" --json)
    echo "$edge stampede $path $json" >>"$WORK/results.jsonl"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$edge" "$STAMPEDE_CLIENTS" "$(origin_count "path=$path")" \
        "$(json_field "$json" p50_us)" "$(json_field "$json" p99_us)" "$(json_field "$json" max_us)" \
        "$(json_field "$json" errors)" "$(json_field "$json" non_2xx)" >>"$WORK/stampede.tsv"
}

# zipf EDGE PID: fill with one seed, then measure the hit ratio with another.
zipf() {
    local edge=$1 pid=$2 json before origin client
    local url="http://127.0.0.1:${PORT[$edge]}/zipf/"
    local keys=(--keys "$ZIPF_OBJECTS" --zipf "$ZIPF_S" --rate "$ZIPF_RATE" --connections "$ZIPF_CONNECTIONS"
        --threads "$LOAD_THREADS" --json)
    note "$edge, Zipf fill ($ZIPF_FILL) ..."
    json=$("$BIN" bench http --url "$url" "${keys[@]}" --seed 1 --duration "$ZIPF_FILL")
    echo "$edge zipf-fill /zipf/ $json" >>"$WORK/results.jsonl"
    note "$edge, Zipf hit ratio ($ZIPF_DURATION) ..."
    before=$(origin_count "prefix=/zipf/")
    json=$("$BIN" bench http --url "$url" "${keys[@]}" --seed 2 --duration "$ZIPF_DURATION")
    origin=$(($(origin_count "prefix=/zipf/") - before))
    echo "$edge zipf /zipf/ $json" >>"$WORK/results.jsonl"
    # Every request sent: the answered ones and the failed ones.
    client=$(($(json_field "$json" requests) + $(json_field "$json" errors)))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$edge" "$client" "$origin" \
        "$(awk -v o="$origin" -v c="$client" 'BEGIN { printf "%.3f", (c > 0 ? 1 - o / c : 0) }')" \
        "$(json_field "$json" rps)" "$(json_field "$json" p50_us)" "$(json_field "$json" p99_us)" \
        "$(json_field "$json" errors)" "$(memory_kib "$pid")" >>"$WORK/zipf.tsv"
}

# --- run ---------------------------------------------------------------------

: >"$WORK/hits.tsv"
: >"$WORK/stampede.tsv"
: >"$WORK/zipf.tsv"
: >"$WORK/rss.tsv"

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo)
versions=()
for edge in "${RUN[@]}"; do
    case $edge in
        cdn) versions+=("scalestack $("$BIN" --version 2>/dev/null | awk '{print $2}')") ;;
        varnish) versions+=("Varnish $("$VARNISHD" -V 2>&1 | sed -n 's/.*varnish-\([0-9.]*\).*/\1/p;q')") ;;
        nginx) versions+=("nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')") ;;
        squid) versions+=("Squid $("$SQUID" -v | sed -n 's/^Squid Cache: Version //p')") ;;
        ats) versions+=("Traffic Server $("$TRAFFIC_SERVER" --version 2>&1 | sed -n 's/.*Traffic Server \([0-9.]*\).*/\1/p' | head -1)") ;;
    esac
done
echo "# CDN edge benchmark"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- machine: $CORES CPUs, ${cpu:-unknown CPU}, kernel $(uname -r)"
joined=$(printf '%s, ' "${versions[@]}")
echo "- edges: ${joined%, }"
echo "- every edge: ${MEMORY_MB} MiB for objects, $CORES worker threads or processes (Varnish: its 2 thread pools), no access log"
echo "- hits: $CONNECTIONS connections, $DURATION after $WARMUP warmup, open loop at $RATE req/s (2 KiB) and $RATE_LARGE req/s (100 KiB)," \
    "load generator on $LOAD_THREADS thread(s), origin on $ORIGIN_THREADS thread(s), all on loopback"
echo "- stampede: $STAMPEDE_CLIENTS clients at once on one key the origin answers after $SLOW"
echo "- Zipf: $ZIPF_OBJECTS objects of 100 KiB ($((ZIPF_OBJECTS * OBJECT_BYTES >> 20)) MiB), s = $ZIPF_S, $ZIPF_RATE req/s over" \
    "$ZIPF_CONNECTIONS connections, $ZIPF_FILL fill then $ZIPF_DURATION measured"
echo

start "$WORK/origin.log" "$BIN" bench origin --listen "$ORIGIN_ADDR" --threads "$ORIGIN_THREADS" \
    --slow "$SLOW" --zipf-bytes "$OBJECT_BYTES"
origin_pid=$STARTED
wait_ready origin "$origin_pid" "${ORIGIN_ADDR##*:}" "$WORK/origin.log"

for edge in "${RUN[@]}"; do
    start_edge "$edge"
    edge_pid=$STARTED
    wait_ready "$edge" "$edge_pid" "${PORT[$edge]}" "$WORK/$edge/$edge.log"
    hits "$edge" "$edge_pid"
    rss_hits=$(memory_kib "$edge_pid")
    stampede "$edge"
    zipf "$edge" "$edge_pid"
    # nginx keeps its objects in files, outside its processes' memory.
    files=-
    [[ $edge == nginx ]] && files=$(du -sk "$WORK/nginx/cache" | cut -f1)
    printf '%s\t%s\t%s\t%s\n' "$edge" "$rss_hits" "$(memory_kib "$edge_pid")" "$files" >>"$WORK/rss.tsv"
    stop "$edge_pid"
done
stop "$origin_pid"

# --- report ------------------------------------------------------------------

labels=$(for edge in "${!LABEL[@]}"; do printf '%s=%s;' "$edge" "${LABEL[$edge]}"; done)

echo "## Cache hits"
echo
echo "| edge | object | mode | req/s | p50 ms | p99 ms | p99.9 ms | errors | non-2xx | CPU µs/req | origin reqs | req/s vs Varnish | p99 vs Varnish | CPU vs Varnish | req/s vs nginx | p99 vs nginx | CPU vs nginx |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' -v labels="$labels" '
    BEGIN { n = split(labels, l, ";"); for (i = 1; i <= n; i++) if (split(l[i], kv, "=") == 2) label[kv[1]] = kv[2] }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
    {
        row[NR] = $0
        key = $2 "/" $3
        if ($1 == "varnish") { vr[key] = $4; vp[key] = $6; vc[key] = $10 }
        if ($1 == "nginx") { nr[key] = $4; np[key] = $6; nc[key] = $10 }
    }
    END {
        for (i = 1; i <= NR; i++) {
            split(row[i], f, "\t")
            key = f[2] "/" f[3]
            printf "| %s | %s | %s | %.0f | %.3f | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                label[f[1]], (f[2] == "small" ? "2 KiB" : "100 KiB"), f[3], f[4], f[5] / 1000, f[6] / 1000, f[7] / 1000,
                f[8], f[9], f[10], f[11],
                ratio(f[4], vr[key]), ratio(f[6], vp[key]), ratio(f[10], vc[key]),
                ratio(f[4], nr[key]), ratio(f[6], np[key]), ratio(f[10], nc[key])
        }
    }' "$WORK/hits.tsv"
echo
echo "## Stampede"
echo
echo "| edge | clients | origin requests | p50 ms | p99 ms | max ms | errors | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' -v labels="$labels" '
    BEGIN { n = split(labels, l, ";"); for (i = 1; i <= n; i++) if (split(l[i], kv, "=") == 2) label[kv[1]] = kv[2] }
    { printf "| %s | %s | %s | %.1f | %.1f | %.1f | %s | %s |\n", label[$1], $2, $3, $4 / 1000, $5 / 1000, $6 / 1000, $7, $8 }' \
    "$WORK/stampede.tsv"
echo
echo "## Hit ratio under a Zipf workload larger than memory"
echo
echo "| edge | client requests | origin requests | hit ratio | req/s | p50 ms | p99 ms | errors | hit ratio vs Varnish | hit ratio vs nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' -v labels="$labels" '
    BEGIN { n = split(labels, l, ";"); for (i = 1; i <= n; i++) if (split(l[i], kv, "=") == 2) label[kv[1]] = kv[2] }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
    { row[NR] = $0; if ($1 == "varnish") v = $4; if ($1 == "nginx") g = $4 }
    END {
        for (i = 1; i <= NR; i++) {
            split(row[i], f, "\t")
            printf "| %s | %s | %s | %s | %.0f | %.3f | %.3f | %s | %s | %s |\n",
                label[f[1]], f[2], f[3], f[4], f[5], f[6] / 1000, f[7] / 1000, f[8], ratio(f[4], v), ratio(f[4], g)
        }
    }' "$WORK/zipf.tsv"
echo
echo "## Resident memory (proportional set size of the edge's processes), MiB"
echo
echo "| edge | after the hit runs | after the Zipf runs (cache full) | cache files after the Zipf runs |"
echo "|---|---:|---:|---:|"
awk -F'\t' -v labels="$labels" '
    BEGIN { n = split(labels, l, ";"); for (i = 1; i <= n; i++) if (split(l[i], kv, "=") == 2) label[kv[1]] = kv[2] }
    { printf "| %s | %.1f | %.1f | %s |\n", label[$1], $2 / 1024, $3 / 1024, ($4 == "-" ? "-" : sprintf("%.1f", $4 / 1024)) }' "$WORK/rss.tsv"
echo
echo "Closed loop: each connection sends its next request when the previous answer is read." \
    "Open loop: requests on a fixed schedule, latency from each request's intended start." \
    "CPU µs/req: CPU time (user + system) of the edge's processes per request over each run (warm-up included)." \
    "origin reqs: requests for the object the origin received during the two runs (0: every answer was a hit)." \
    "Hit ratio: 1 - origin requests / client requests over the measured Zipf run."
