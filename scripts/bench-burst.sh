#!/usr/bin/env bash
# The queue stage's burst, as a picture: `scalestack up` runs
# topologies/queue.toml (three NATS nodes, autoscaled workers and web
# servers) in a temporary directory; a burst of uploads arrives at once; the
# script samples the autoscaler every 500 ms (queue depth, workers running
# and desired) and counts finished photos, until the workers are back at
# their minimum, then draws docs/queue-burst.svg and writes the samples to
# docs/queue-burst.csv.
#
#   cargo build --release && scripts/bench-burst.sh
#
# Knobs: BIN (default target/release/scalestack), UPLOADS (120),
# PARALLEL (8, concurrent uploaders), SIZE (2400x1600, the photos' size),
# MAX_SECS (240). Needs curl, python3 and ImageMagick's `convert`
# (scripts/setup.sh --bench). Uses queue.toml's ports (8080, 8090, 8091,
# 9101.., 9201.., 4230.., 6230.., 8230..): they must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=${BIN:-$root/target/release/scalestack}
UPLOADS=${UPLOADS:-120}
PARALLEL=${PARALLEL:-8}
SIZE=${SIZE:-2400x1600}
MAX_SECS=${MAX_SECS:-240}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release first" >&2; exit 1; }
# Debian's ImageMagick (a `convert` earlier on PATH may be something else).
CONVERT=${CONVERT:-$(command -v /usr/bin/convert || command -v convert)}

work=$(mktemp -d)
up_pid=""
cleanup() {
    [[ -n $up_pid ]] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cp topologies/queue.toml "$work/topology.toml"
"$CONVERT" -size "$SIZE" plasma:fractal -quality 90 "$work/photo.jpg"
(cd "$work" && exec "$BIN" up --topology topology.toml >"$work/up.log" 2>&1) &
up_pid=$!
for _ in $(seq 1 240); do
    grep -q "scalestack is up" "$work/up.log" && break
    sleep 0.5
done
grep -q "scalestack is up" "$work/up.log" || { tail -20 "$work/up.log"; exit 1; }

web=http://127.0.0.1:8080
control=http://127.0.0.1:8090
jar=$work/cookies
curl -sf -c "$jar" -H 'content-type: application/json' \
    -d '{"username":"burst","password":"password123"}' "$web/api/signup" >/dev/null

# Samples: seconds, depth, workers running, workers desired, photos done
# (uploads accepted minus the queue's depth: what waits or runs).
start=$(date +%s.%N)
accepted=$work/accepted
: >"$accepted"
sample() {
    local auto
    auto=$(curl -sf "$control/api/autoscale")
    python3 - "$auto" "$start" "$(grep -c '^202$' "$accepted" || true)" <<'EOF'
import json, sys, time
tiers = json.loads(sys.argv[1]); w = tiers.get("worker", {}); last = w.get("last") or {}
cur = last.get("current", 0); depth = round(last.get("signal", 0) * max(cur, 1))
done = max(int(sys.argv[3] or 0) - depth, 0)
print(f'{time.time() - float(sys.argv[2]):.1f},{depth},{cur},{last.get("desired", 0)},{done}')
EOF
}
csv=$work/burst.csv
echo "secs,depth,workers,desired,ready" >"$csv"
for _ in 1 2 3 4; do sample >>"$csv"; sleep 0.5; done

# The burst: UPLOADS photos, PARALLEL at a time, in the background.
seq 1 "$UPLOADS" | xargs -P "$PARALLEL" -I{} curl -s -b "$jar" -o /dev/null -w '%{http_code}\n' \
    -F "file=@$work/photo.jpg" -F "caption=burst {}" "$web/api/photos" >>"$accepted" &
uploads=$!
deadline=$(($(date +%s) + MAX_SECS))
seen_max=0
while (($(date +%s) < deadline)); do
    line=$(sample)
    echo "$line" >>"$csv"
    IFS=, read -r _ depth workers _ ready <<<"$line"
    ((workers > seen_max)) && seen_max=$workers
    if ((ready >= UPLOADS && workers <= 1 && seen_max > 1)); then break; fi
    sleep 0.5
done
wait "$uploads" || true
for _ in 1 2 3 4; do sample >>"$csv"; sleep 0.5; done
events=$(curl -sf "$control/metrics" | grep '^scalestack_up_autoscale_scale_events_total' || true)

cp "$csv" docs/queue-burst.csv
python3 - "$csv" docs/queue-burst.svg "$UPLOADS" "$SIZE" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
t = [float(r["secs"]) for r in rows]
series = {k: [float(r[k]) for r in rows] for k in ("depth", "workers", "ready")}
rate = [0.0] + [max(series["ready"][i] - series["ready"][i - 1], 0) / max(t[i] - t[i - 1], 1e-3)
                for i in range(1, len(rows))]
W, H, L, B = 900, 420, 60, 40
tmax = max(t) or 1
def poly(values, vmax, color, dash=""):
    pts = " ".join(f"{L + x / tmax * (W - L - 20):.1f},{H - B - v / vmax * (H - B - 30):.1f}" for x, v in zip(t, values))
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" {dash} points="{pts}"/>'
dmax = max(max(series["depth"]), 1)
wmax = max(max(series["workers"]), 1) + 1
rmax = max(max(rate), 1)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{L}" y="18" font-size="14">Burst of {sys.argv[3]} uploads ({sys.argv[4]}) on topologies/queue.toml: queue depth, workers, completions</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="#888"/>',
       f'<line x1="{L}" y1="30" x2="{L}" y2="{H-B}" stroke="#888"/>']
for i in range(0, int(tmax) + 1, max(int(tmax / 10), 1)):
    x = L + i / tmax * (W - L - 20)
    out.append(f'<text x="{x:.0f}" y="{H-B+16}" text-anchor="middle">{i}s</text>')
out.append(poly(series["depth"], dmax, "#c33"))
out.append(poly(series["workers"], wmax, "#070"))
out.append(poly(rate, rmax, "#36c", 'stroke-dasharray="4"'))
out.append(f'<text x="{W-300}" y="40" fill="#c33">queue depth (max {dmax:.0f})</text>')
out.append(f'<text x="{W-300}" y="56" fill="#070">workers running (axis 0..{wmax:.0f})</text>')
out.append(f'<text x="{W-300}" y="72" fill="#36c">photos finished per second (max {rmax:.1f})</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out))
EOF
echo "burst: $UPLOADS uploads; workers peaked at $seen_max; samples in docs/queue-burst.csv, plot in docs/queue-burst.svg"
echo "$events"
