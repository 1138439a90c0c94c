#!/usr/bin/env bash
# Benchmarks the scalestack geoDNS server (`scalestack dns`) against the
# authoritative servers a user would otherwise pick: gdnsd (the one peer with
# geoDNS and EDNS Client Subnet), Knot DNS, NSD, PowerDNS (bind backend) and
# BIND 9, all on loopback, in one go, with dnsperf as the load generator.
#
# Every server runs privately, as the current user (root: the peers keep it),
# from its own directory under the working directory (config, zone, pid and
# state files), with ONE server thread or worker (what each adds besides,
# e.g. a TCP thread, idles), no query log (startup lines and warnings only),
# no response rate limit and no recursion:
#   ours    scalestack dns   127.0.0.1:5400 (admin 5490)  threads = 1, no RRL
#   gdnsd   gdnsd            127.0.0.1:5401  udp_threads/tcp_threads 1
#   knot    knotd            127.0.0.1:5402  udp-workers/tcp-workers 1
#   nsd     nsd              127.0.0.1:5403  server-count 1
#   pdns    pdns_server      127.0.0.1:5404  bind backend, receiver-/distributor-threads 1
#   bind    named            127.0.0.1:5405  -n 1
# Each serves the zone photos.test: SOA, NS ns1 (127.0.0.1) and ns2
# (127.0.0.2), and www. For ours and gdnsd, www is a geo name: client
# networks 127.0.1.0/24 (and 10.0.0.0/8 for ours) go to dc1 (127.0.1.1),
# 127.0.2.0/24 and 10.9.0.0/16 to dc2 (127.0.2.1), everyone else to dc1, from
# the packet's source or from the EDNS Client Subnet option; no health checks,
# both sites always up. Knot, NSD, PowerDNS and BIND have no such geo answer
# here, so their www is a plain A 127.0.1.1 (their "geo" rows are plain
# lookups, marked as such).
#
# Before measuring, the script checks each server's answers with dig (and
# stops with its log if one is wrong), then, for each query file:
#   static   ns1.photos.test A                  (a static record, every server)
#   geo      www.photos.test A                  (geo for ours/gdnsd, plain elsewhere)
#   geo-ecs  www.photos.test A + ECS 10.9.0.0/16 (ours and gdnsd only)
# runs dnsperf closed-loop (no rate limit: CLIENTS sockets, OUTSTANDING
# queries in flight) for DURATION seconds after a WARMUP, and prints a
# markdown table: queries/s, average latency, lost queries, average answer
# size, the server's CPU time (user + system, from /proc, of all its threads
# and child processes) per answered query, alone and with dnsperf's (from GNU
# time) added, its resident memory after the run, and ratios against gdnsd.
#
#   scripts/bench-dns.sh
#   DURATION=3 SKIP_OURS=1 scripts/bench-dns.sh        # the peers only
#   BIN=/elsewhere/release/scalestack SERVERS="ours gdnsd" scripts/bench-dns.sh
#
# Environment (defaults): BIN (${CARGO_TARGET_DIR:-target}/release/scalestack,
# a relative CARGO_TARGET_DIR taken from the repository root), DURATION (10:
# seconds per run, "10s" works too), WARMUP (2 seconds, not measured),
# CLIENTS (4: dnsperf -c, its sockets), OUTSTANDING (64: dnsperf -q, queries
# in flight), SERVERS ("ours gdnsd knot nsd pdns bind": which, in that
# order), SKIP_OURS (unset: set to 1 to leave ours out, e.g. while it is
# still building), KEEP (unset: set to keep the working directory with
# configs, zones, logs and raw dnsperf output).
#
# The peers come from Debian: `scripts/setup.sh --bench` installs gdnsd,
# knot, nsd, pdns-server, pdns-backend-bind, bind9 and dnsperf (with services
# kept from starting). dnsperf shares the machine's cores with the server, so
# queries/s compares servers on equal terms rather than measures a ceiling;
# CPU µs/query does not depend on that competition and is the figure that
# separates them.
set -euo pipefail

cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/scalestack}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-64}
SERVERS=${SERVERS:-"ours gdnsd knot nsd pdns bind"}
DURATION=${DURATION%s}
WARMUP=${WARMUP%s}

ZONE=photos.test
declare -A PORT=([ours]=5400 [gdnsd]=5401 [knot]=5402 [nsd]=5403 [pdns]=5404 [bind]=5405)
OURS_ADMIN=127.0.0.1:5490
# The servers that answer www by the client's network and read EDNS Client
# Subnet; the others serve a plain A.
GEO_SERVERS=" ours gdnsd "
# EDNS option 8 (Client Subnet, RFC 7871): family 1 (IPv4), source prefix 16,
# scope 0, address 10.9 (the prefix's two bytes): 10.9.0.0/16, in dc2's region.
ECS_OPTION=8:000110000a09
ECS_SUBNET=10.9.0.0/16

die() {
    echo "bench-dns: $*" >&2
    exit 1
}

# --- prerequisites -----------------------------------------------------------

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds, not '$DURATION'"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive whole number, not '$CLIENTS'"
[[ $OUTSTANDING =~ ^[1-9][0-9]*$ ]] || die "OUTSTANDING must be a positive whole number, not '$OUTSTANDING'"

selected=()
for s in $SERVERS; do
    [[ -n ${PORT[$s]:-} ]] || die "unknown server '$s' in SERVERS (known: ${!PORT[*]})"
    [[ $s == ours && ${SKIP_OURS:-0} != 0 ]] && continue
    selected+=("$s")
done
((${#selected[@]})) || die "no server to benchmark (SERVERS='$SERVERS', SKIP_OURS=${SKIP_OURS:-})"
SERVERS=("${selected[@]}")

# The daemons live in /usr/sbin, which is not on every user's PATH.
find_tool() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true
}
declare -A TOOL=([gdnsd]=gdnsd [knot]=knotd [nsd]=nsd [pdns]=pdns_server [bind]=named)
declare -A EXE=()
for s in "${SERVERS[@]}"; do
    if [[ $s == ours ]]; then
        [[ -x $BIN ]] || die "$BIN not found: build it with 'cargo build --release -p scalestack'" \
            "(or set BIN, or SKIP_OURS=1 to benchmark the peers only)"
        EXE[ours]=$BIN
    else
        EXE[$s]=$(find_tool "${TOOL[$s]}")
        [[ -n ${EXE[$s]} ]] || die "${TOOL[$s]} not found: run 'scripts/setup.sh --bench' to install the peers"
    fi
done
for t in dnsperf dig; do
    command -v "$t" >/dev/null || die "$t not found: run 'scripts/setup.sh --bench' (dnsperf, bind9-dnsutils)"
done
if [[ " ${SERVERS[*]} " == *" pdns "* ]] && ! ls /usr/lib/*/pdns/libbindbackend.so >/dev/null 2>&1; then
    die "PowerDNS's bind backend is missing: run 'scripts/setup.sh --bench' (pdns-backend-bind)"
fi

# Succeeds when something listens on 127.0.0.1:$1 over UDP or TCP.
port_busy() {
    [[ -n $(ss -Hlnu "sport = :$1" 2>/dev/null) || -n $(ss -Hlnt "sport = :$1" 2>/dev/null) ]]
}
for s in "${SERVERS[@]}"; do
    ! port_busy "${PORT[$s]}" || die "port ${PORT[$s]} is already in use on 127.0.0.1; stop whatever listens there"
done
if [[ " ${SERVERS[*]} " == *" ours "* ]]; then
    ! port_busy "${OURS_ADMIN##*:}" ||
        die "port ${OURS_ADMIN##*:} is already in use on 127.0.0.1; stop whatever listens there"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-dns.XXXXXX")
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
        echo "bench-dns: configs, zones, logs and raw results kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start LOG CMD...: starts CMD in the background (in the foreground as far as
# the daemon is concerned), output to LOG; its pid goes to $STARTED.
start() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# stop PID: terminates a process started by `start` and waits for it (the
# daemons stop their own child processes and threads on SIGTERM).
stop() {
    local pid=$1 p kept=()
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# tree PID: PID and all its descendants (NSD forks a main and a server process).
tree() {
    local p
    echo "$1"
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        tree "$p"
    done
}

# cpu_ticks PID: CPU time (user + system, in clock ticks, all threads) of PID
# and its descendants, so far.
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

# rss_kib PID: VmRSS of PID and its descendants, in KiB (for NSD's processes,
# the pages they share are counted in each).
rss_kib() {
    local p total=0 kib
    for p in $(tree "$1"); do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# --- zone and configurations -------------------------------------------------

# write_zone FILE WWW_LINE: the zone in RFC 1035 form, with WWW_LINE as www.
# TTLs as ours: 300 s for the static records and negative answers, 5 s for www.
write_zone() {
    cat >"$1" <<EOF
\$ORIGIN $ZONE.
\$TTL 300
@    SOA  ns1 hostmaster 1 7200 1800 259200 300
@    NS   ns1
@    NS   ns2
ns1  A    127.0.0.1
ns2  A    127.0.0.2
$2
EOF
}
STATIC_WWW="www  5 A 127.0.1.1"

write_ours_config() {
    local dir=$1
    # No `health` key on the sites: they are always up, as gdnsd's are. The
    # response rate limit is off: no peer here has one configured.
    cat >"$dir/dns.toml" <<EOF
listen = "127.0.0.1:${PORT[ours]}"
admin_listen = "$OURS_ADMIN"
zone = "$ZONE"
threads = 1

[rrl]
responses_per_second = 0

[[name_servers]]
name = "ns1"
addr = "127.0.0.1"

[[name_servers]]
name = "ns2"
addr = "127.0.0.2"

[[sites]]
name = "dc1"
www = ["127.0.1.1"]
cdn = ["127.0.1.2"]

[[sites]]
name = "dc2"
www = ["127.0.2.1"]
cdn = ["127.0.2.2"]

[[regions]]
name = "east"
networks = ["127.0.1.0/24", "10.0.0.0/8"]
sites = ["dc1", "dc2"]

[[regions]]
name = "west"
networks = ["127.0.2.0/24", "10.9.0.0/16"]
sites = ["dc2", "dc1"]
EOF
}

write_gdnsd_config() {
    local dir=$1
    mkdir -p "$dir/zones"
    # The geoip plugin with no GeoIP database: only `nets` maps networks to
    # datacenters (a `map` stanza would need geoip2_db), everyone else gets
    # the `datacenters` order, dc1 first. `service_types => up` is gdnsd's
    # built-in always-up state: nothing is probed, no datacenter goes down.
    # gdnsd logs no queries; its log (stderr here) has startup lines only.
    cat >"$dir/config" <<EOF
options => {
  listen => [ "127.0.0.1:${PORT[gdnsd]}" ]
  udp_threads => 1
  tcp_threads => 1
  edns_client_subnet => true
  run_dir => "$dir/run"
  state_dir => "$dir/state"
}
plugins => {
  geoip => {
    maps => {
      photos => {
        datacenters => [ dc1, dc2 ]
        nets => {
          127.0.1.0/24 => [ dc1, dc2 ]
          127.0.2.0/24 => [ dc2, dc1 ]
          10.9.0.0/16 => [ dc2, dc1 ]
        }
      }
    }
    resources => {
      prod_www => {
        map => photos
        service_types => up
        dcmap => {
          dc1 => 127.0.1.1
          dc2 => 127.0.2.1
        }
      }
    }
  }
}
EOF
    # gdnsd's DYNA TTL is max/min (the min defaults to half the max, under
    # its min_ttl of 5).
    write_zone "$dir/zones/$ZONE" "www  5/5 DYNA geoip!prod_www"
}

write_knot_config() {
    local dir=$1
    mkdir -p "$dir/db"
    write_zone "$dir/$ZONE.zone" "$STATIC_WWW"
    # Knot has no geo answer without its geoip module (a separate package):
    # www is a plain A. Knot logs no queries unless a module does.
    cat >"$dir/knot.conf" <<EOF
server:
    rundir: "$dir"
    pidfile: "$dir/knot.pid"
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    listen: 127.0.0.1@${PORT[knot]}

database:
    storage: "$dir/db"

log:
  - target: stderr
    any: warning

zone:
  - domain: $ZONE
    storage: "$dir"
    file: "$ZONE.zone"
    zonefile-sync: -1
    journal-content: none
EOF
}

write_nsd_config() {
    local dir=$1
    write_zone "$dir/$ZONE.zone" "$STATIC_WWW"
    # minimal-responses: no NS and glue added to every answer, as the others
    # (NSD's default adds them). NSD has no geo answer: www is a plain A.
    cat >"$dir/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@${PORT[nsd]}
    port: ${PORT[nsd]}
    server-count: 1
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "$dir"
    database: ""
    zonelistfile: "$dir/zone.list"
    xfrdfile: "$dir/xfrd.state"
    xfrdir: "$dir"
    pidfile: "$dir/nsd.pid"
    logfile: "$dir/nsd.log"
    verbosity: 0
    minimal-responses: yes
    # NSD's response rate limit is on by default (200 queries/s from one
    # /24): off, as no other server here has one.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0

remote-control:
    control-enable: no

zone:
    name: $ZONE
    zonefile: "$dir/$ZONE.zone"
EOF
}

write_pdns_config() {
    local dir=$1
    write_zone "$dir/$ZONE.zone" "$STATIC_WWW"
    cat >"$dir/named.conf" <<EOF
zone "$ZONE" { type master; file "$dir/$ZONE.zone"; };
EOF
    # One receiver and one distributor (backend) thread; packet cache at its
    # default, as shipped. No security poll (a DNS query to the Internet), no
    # web server or API, no query log. PowerDNS's geo answers need its geoip
    # or Lua backends: www is a plain A.
    cat >"$dir/pdns.conf" <<EOF
launch=bind
bind-config=$dir/named.conf
bind-check-interval=0
local-address=127.0.0.1
local-port=${PORT[pdns]}
receiver-threads=1
distributor-threads=1
daemon=no
guardian=no
socket-dir=$dir
disable-syslog=yes
log-dns-queries=no
log-dns-details=no
query-logging=no
loglevel=4
security-poll-suffix=
webserver=no
api=no
EOF
}

write_bind_config() {
    local dir=$1
    write_zone "$dir/$ZONE.zone" "$STATIC_WWW"
    # BIND could split www with views (match-clients 127.0.1.0/24 vs
    # 127.0.2.0/24), but views match the packet's source only: BIND 9 has no
    # authoritative EDNS Client Subnet. So www is a plain A here too.
    # minimal-responses as the others; no control channel, no query log.
    cat >"$dir/named.conf" <<EOF
options {
    directory "$dir";
    pid-file "$dir/named.pid";
    session-keyfile "$dir/session.key";
    managed-keys-directory "$dir";
    listen-on port ${PORT[bind]} { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    dnssec-validation no;
    notify no;
    minimal-responses yes;
    querylog no;
};

controls { };

logging {
    channel warnings { file "$dir/named.log"; severity warning; };
    category default { warnings; };
    category lame-servers { null; };
};

zone "$ZONE" { type primary; file "$dir/$ZONE.zone"; };
EOF
}

# start_server NAME: writes its configuration and starts it in the
# foreground; its pid goes to $STARTED, its log to $WORK/NAME/NAME.log.
start_server() {
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    local log=$dir/$name.log
    case $name in
        ours)
            write_ours_config "$dir"
            start "$log" env RUST_LOG=warn "${EXE[ours]}" dns --config "$dir/dns.toml"
            ;;
        gdnsd)
            write_gdnsd_config "$dir"
            start "$log" "${EXE[gdnsd]}" -c "$dir" start
            ;;
        knot)
            write_knot_config "$dir"
            start "$log" "${EXE[knot]}" -c "$dir/knot.conf"
            ;;
        nsd)
            write_nsd_config "$dir"
            # -d: stays in the foreground (its main and server processes are children).
            start "$log" "${EXE[nsd]}" -d -c "$dir/nsd.conf"
            ;;
        pdns)
            write_pdns_config "$dir"
            start "$log" "${EXE[pdns]}" --config-dir="$dir"
            ;;
        bind)
            write_bind_config "$dir"
            # -f: foreground, logging as configured; -n 1: one worker thread.
            start "$log" "${EXE[bind]}" -f -n 1 -c "$dir/named.conf"
            ;;
    esac
}

# --- answer checks -----------------------------------------------------------

# ask PORT QNAME [DIG_ARGS...]: "STATUS FLAGS ADDRESSES" of an A query.
ask() {
    local port=$1 qname=$2
    shift 2
    dig @127.0.0.1 -p "$port" +norec +tries=1 +timeout=1 +noall +comments +answer \
        "$qname" A "$@" 2>/dev/null | awk '
        /->>HEADER<<-/ { sub(/.*status: /, ""); sub(/,.*/, ""); status = $0 }
        /^;; flags:/ { sub(/^;; flags: /, ""); sub(/;.*/, ""); gsub(/ /, ","); flags = $0 }
        !/^;/ && $4 == "A" { addrs = addrs (addrs ? "," : "") $5 }
        END { printf "%s %s %s\n", status ? status : "TIMEOUT", flags ? flags : "-", addrs ? addrs : "-" }'
}

# server_fail NAME MESSAGE: stops the run with the server's log.
server_fail() {
    local name=$1
    shift
    echo "bench-dns: $name: $*; its log:" >&2
    tail -n 20 "$WORK/$name/$name.log" >&2 2>/dev/null || true
    for f in "$WORK/$name"/{nsd,named}.log; do
        [[ -f $f ]] && tail -n 20 "$f" >&2
    done
    exit 1
}

# wait_ready NAME PID: waits up to 15 s for an authoritative answer of ns1.
wait_ready() {
    local name=$1 pid=$2 i
    for ((i = 0; i < 60; i++)); do
        [[ $(ask "${PORT[$name]}" "ns1.$ZONE") == NOERROR* ]] && return 0
        kill -0 "$pid" 2>/dev/null || server_fail "$name" "exited before answering"
        sleep 0.25
    done
    server_fail "$name" "did not answer on port ${PORT[$name]} within 15 s"
}

# expect NAME WANT_STATUS WANT_ADDRESSES QNAME [DIG_ARGS...]: fails the run
# unless the server answers QNAME A with that status, authoritatively (aa)
# when it answers, and exactly those addresses ("-" for none).
expect() {
    local name=$1 want_status=$2 want_addrs=$3 qname=$4 status flags addrs
    shift 4
    read -r status flags addrs < <(ask "${PORT[$name]}" "$qname" "$@")
    if [[ $status != "$want_status" || $addrs != "$want_addrs" ||
        ($want_status != REFUSED && ,$flags, != *,aa,*) ]]; then
        server_fail "$name" "$qname A ${*:+($*) }answered '$status' flags '$flags' addresses '$addrs';" \
            "expected '$want_status' with aa and '$want_addrs'"
    fi
}

# check_answers NAME: the zone as every server must serve it, and www by
# network (source address or ECS) for the geo servers.
check_answers() {
    local name=$1
    expect "$name" NOERROR 127.0.0.1 "ns1.$ZONE"
    expect "$name" NOERROR 127.0.0.2 "ns2.$ZONE"
    expect "$name" NXDOMAIN - "nothing.$ZONE"
    expect "$name" REFUSED - example.com # authoritative only: no recursion
    expect "$name" NOERROR 127.0.1.1 "www.$ZONE"
    if [[ $GEO_SERVERS == *" $name "* ]]; then
        expect "$name" NOERROR 127.0.1.1 "www.$ZONE" -b 127.0.1.9
        expect "$name" NOERROR 127.0.2.1 "www.$ZONE" -b 127.0.2.9
        expect "$name" NOERROR 127.0.2.1 "www.$ZONE" "+subnet=$ECS_SUBNET"
        expect "$name" NOERROR 127.0.1.1 "www.$ZONE" "+subnet=10.1.0.0/16"
    fi
}

# --- measurement -------------------------------------------------------------

# dnsperf's own CPU time, when GNU time is there (package `time`).
TIMED=()
[[ -x /usr/bin/time ]] && TIMED=(/usr/bin/time -f '%U %S' -o "$WORK/time")

printf '%s A\n' "ns1.$ZONE" >"$WORK/static.queries"
printf '%s A\n' "www.$ZONE" >"$WORK/geo.queries"

# dnsperf_field FILE LABEL N: the N-th word after "LABEL:" in dnsperf's report.
dnsperf_field() {
    awk -v label="$2:" -v n="$3" 'index($0, label) { sub(/.*: +/, ""); split($0, f, " "); print f[n]; exit }' "$1"
}

# measure NAME PID QUERY: warm-up, then one closed-loop dnsperf run of QUERY
# (static, geo or geo-ecs) against the server, with its CPU time and memory.
measure() {
    local name=$1 pid=$2 query=$3 file args=() out before after
    case $query in
        static) file=$WORK/static.queries ;;
        geo) file=$WORK/geo.queries ;;
        geo-ecs)
            file=$WORK/geo.queries
            args=(-E "$ECS_OPTION")
            ;;
    esac
    args+=(-s 127.0.0.1 -p "${PORT[$name]}" -d "$file" -c "$CLIENTS" -q "$OUTSTANDING" -t 2)
    echo "bench-dns: $name, $query ..." >&2
    if ((WARMUP > 0)); then
        dnsperf "${args[@]}" -l "$WARMUP" >"$WORK/$name-$query.warmup" 2>&1 ||
            server_fail "$name" "dnsperf failed in the warm-up (see $WORK/$name-$query.warmup)"
    fi
    out=$WORK/$name-$query.dnsperf
    before=$(cpu_ticks "$pid")
    "${TIMED[@]}" dnsperf "${args[@]}" -l "$DURATION" >"$out" 2>&1 || {
        cat "$out" >&2
        server_fail "$name" "dnsperf failed"
    }
    after=$(cpu_ticks "$pid")
    kill -0 "$pid" 2>/dev/null || server_fail "$name" "exited during the run"
    local completed lost qps latency codes size gen=""
    completed=$(dnsperf_field "$out" "Queries completed" 1)
    lost=$(dnsperf_field "$out" "Queries lost" 1)
    size=$(dnsperf_field "$out" "Average packet size" 4)
    qps=$(dnsperf_field "$out" "Queries per second" 1)
    latency=$(dnsperf_field "$out" "Average Latency (s)" 1)
    codes=$(awk -F': +' '/Response codes:/ { print $2; exit }' "$out")
    [[ -n $completed && -n $qps && -n $latency ]] || {
        cat "$out" >&2
        die "cannot read dnsperf's report for $name, $query"
    }
    ((completed > 0)) || server_fail "$name" "no query of $query answered"
    # Every answer must be a NOERROR (the checks above showed they are right).
    [[ $codes =~ ^NOERROR\ [0-9]+\ \(100\.00%\)$ ]] ||
        server_fail "$name" "$query: not every answer was NOERROR: $codes"
    ((lost * 100 <= completed)) ||
        echo "bench-dns: warning: $name, $query: $lost queries lost (timed out) for $completed answered" >&2
    # Server, then server + dnsperf: loopback charges part of the kernel's
    # network work to the sender, so the second shows what the first misses.
    [[ -s $WORK/time ]] && gen=$(awk '{ print $1 + $2 }' "$WORK/time")
    local cpu
    cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$completed" -v g="$gen" \
        'BEGIN { printf "%.2f\t%s", t / hz * 1e6 / n, g == "" ? "-" : sprintf("%.2f", (t / hz + g) * 1e6 / n) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$query" "$qps" "$latency" "$completed" \
        "$lost" "$cpu" "$(rss_kib "$pid")" "$size" >>"$RESULTS"
}

# --- run ---------------------------------------------------------------------

# version NAME: the server's name and version (some exit non-zero after printing it).
version() {
    local out
    case $1 in
        ours)
            echo "scalestack $(git describe --always --dirty 2>/dev/null || echo '(unknown commit)') ($BIN)"
            return
            ;;
        gdnsd) out=$("${EXE[gdnsd]}" -V 2>&1 || true) ;;
        knot) out=$("${EXE[knot]}" -V 2>&1 || true) ;;
        nsd) out=$("${EXE[nsd]}" -v 2>&1 || true) ;;
        pdns) out=$("${EXE[pdns]}" --version 2>&1 || true) ;;
        bind) out=$("${EXE[bind]}" -v 2>&1 || true) ;;
    esac
    case $1 in
        gdnsd) sed -n 's/^gdnsd version /gdnsd /p' <<<"$out" ;;
        knot) sed -n 's/.*version /Knot DNS /p' <<<"$out" ;;
        nsd) sed -n 's/^NSD version /NSD /p' <<<"$out" ;;
        pdns) sed -n 's/.*\(PowerDNS Authoritative Server [^ ]*\).*/\1/p' <<<"$out" | head -n 1 ;;
        bind) awk 'NR == 1 { print $1, $2 }' <<<"$out" ;;
    esac
}

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo)
versions=()
for s in "${SERVERS[@]}"; do
    versions+=("$(version "$s")")
done
echo "# geoDNS benchmark"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, kernel $(uname -r)"
echo "- servers: $(IFS=,; echo "${versions[*]}" | sed 's/,/, /g'), each with one server thread or worker"
echo "- load: dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p'), closed loop (no rate limit), $CLIENTS clients," \
    "$OUTSTANDING queries in flight, ${DURATION} s after ${WARMUP} s warm-up, over UDP on loopback"
echo

for s in "${SERVERS[@]}"; do
    start_server "$s"
    pid=$STARTED
    wait_ready "$s" "$pid"
    check_answers "$s"
    echo "bench-dns: $s answers correctly" >&2
    queries=(static geo)
    [[ $GEO_SERVERS == *" $s "* ]] && queries+=(geo-ecs)
    for q in "${queries[@]}"; do
        measure "$s" "$pid" "$q"
    done
    stop "$pid"
done

# --- report ------------------------------------------------------------------

echo "| server | query | queries/s | avg latency ms | lost | answer bytes | CPU µs/query server | CPU µs/query server + dnsperf | RSS MiB | queries/s vs gdnsd | CPU/query vs gdnsd |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' -v geo="$GEO_SERVERS" '
    { row[NR] = $0; if ($1 == "gdnsd") { qps[$2] = $3; cpu[$2] = $7 } }
    END {
        label["ours"] = "**scalestack dns**"; label["gdnsd"] = "gdnsd"; label["knot"] = "Knot DNS"
        label["nsd"] = "NSD"; label["pdns"] = "PowerDNS (bind)"; label["bind"] = "BIND 9"
        for (i = 1; i <= NR; i++) {
            split(row[i], f, "\t")
            q = f[2]
            if (q == "geo" && index(geo, " " f[1] " ") == 0) q = "geo (plain A)"
            if (q == "geo-ecs") q = "geo + ECS"
            qr = (f[2] in qps && qps[f[2]] > 0) ? sprintf("%.2f", f[3] / qps[f[2]]) : "-"
            cr = (f[2] in cpu && cpu[f[2]] > 0) ? sprintf("%.2f", f[7] / cpu[f[2]]) : "-"
            if (f[1] == "ours") { qr = "**" qr "**"; cr = "**" cr "**" }
            printf "| %s | %s | %.0f | %.3f | %s | %s | %s | %s | %.1f | %s | %s |\n",
                label[f[1]], q, f[3], f[4] * 1000, f[6], f[10], f[7], f[8], f[9] / 1024, qr, cr
        }
    }' "$RESULTS"
echo
echo "Closed loop: dnsperf keeps $OUTSTANDING queries in flight over $CLIENTS sockets, each sent when an answer frees" \
    "a slot. geo: www by the client's network (the packet's source, 127.0.0.1: dc1) for scalestack dns and gdnsd," \
    "a plain A record for the others; geo + ECS: the query carries EDNS Client Subnet $ECS_SUBNET (dc2)." \
    "Answer bytes: dnsperf's average answer size (every server gives minimal answers, no NS or glue added)." \
    "CPU µs/query: the server's CPU time (user + system, all threads and child processes) over the run," \
    "per answered query, and with dnsperf's added (on loopback, the kernel charges part of the receive path" \
    "to the sender); RSS: resident memory after the run (summed over NSD's processes)." \
    "dnsperf shares the cores with the server: CPU µs/query, not queries/s, is what separates the servers."
