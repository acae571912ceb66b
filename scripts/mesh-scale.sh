#!/usr/bin/env bash
# How a mesh agent scales with its peers: one agent probing N peers at 1/s each, the peers being addresses
# 127.0.x.y of one wildcard echo server on this host (loopback only). Prints, per N, the agent's CPU share over
# the measured window, its peak RSS, and the time and size of a scrape of its metrics.
#
# Also the series of one scrape, in the text format and with native histograms (protobuf), and that scrape's size
# (scripts/scrape-series.py). With AGGREGATE=1 the peers carry a label zone=z0..z19 and the agent runs with
# --aggregate-by zone.
#
# usage: [AGGREGATE=1] scripts/mesh-scale.sh [SECONDS] [N...]      (default: 20 s, 1000 and 10000 peers)
# The agent runs on CPU 0, the server on CPU 1.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
shift || true
counts=("${@:-1000 10000}")
[ $# -eq 0 ] && counts=(1000 10000)
swift build -c release --product udpecho --package-path "$here" >&2
bin=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=17337
metrics=19337
taskset -c 1 "$bin" server --quiet --address "0.0.0.0:$port" >/dev/null 2>&1 &
sleep 1
ticks=$(getconf CLK_TCK)
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); agent on CPU 0, server on CPU 1, ${seconds}s measured"
printf '%8s %10s %9s %10s %14s %12s %10s %8s %12s %12s %10s\n' peers "probes/s" "cpu %" "rss MiB" "peak (scrape)" \
  "scrape ms" "scrape MB" lost "series text" "series nat." "native MB"
aggregate=()
[ "${AGGREGATE:-0}" = 1 ] && aggregate=(--aggregate-by zone)
for n in "${counts[@]}"; do
  python3 -c "
import sys
n, port = int(sys.argv[1]), sys.argv[2]
zones = sys.argv[3] == '1'
for i in range(n):
    print(f'127.{1 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}:{port}' + (f' zone=z{i % 20}' if zones else ''))" \
    "$n" "$port" "${AGGREGATE:-0}" > "$work/peers"
  taskset -c 0 "$bin" mesh --address 127.0.0.1:0 --peers "$work/peers" --interval 1s \
    --max-rate $((n + n / 10)) --max-bytes-rate $(((n + n / 10) * 100)) --metrics "127.0.0.1:$metrics" \
    ${aggregate[@]+"${aggregate[@]}"} >/dev/null 2>&1 &
  agent=$!
  sleep 5  # every peer's first probe (a random point of the first second) and the warm-up
  cpu0=$(awk '{print $14 + $15}' /proc/$agent/stat)
  sleep "$seconds"
  cpu1=$(awk '{print $14 + $15}' /proc/$agent/stat)
  steady=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
  scrape=$(curl -s -o "$work/scrape" -w '%{time_total}' "http://127.0.0.1:$metrics/metrics")
  size=$(stat -c %s "$work/scrape")
  sent=$(grep '^udpecho_mesh_probes_sent_total' "$work/scrape" | awk '{s += $2} END {print s}')
  lost=$(grep '^udpecho_mesh_probes_lost_total' "$work/scrape" | awk '{s += $2} END {print s}')
  rss=$(awk '/VmHWM/ {print $2}' /proc/$agent/status)
  read -r series_text _ series_native native_bytes < <(python3 "$here/scripts/scrape-series.py" "http://127.0.0.1:$metrics/metrics")
  kill -TERM $agent; wait $agent 2>/dev/null || true
  awk -v n="$n" -v c0="$cpu0" -v c1="$cpu1" -v t="$ticks" -v s="$seconds" -v rss="$rss" -v steady="$steady" -v sc="$scrape" -v sz="$size" \
    -v sent="$sent" -v lost="$lost" -v st="$series_text" -v sn="$series_native" -v nb="$native_bytes" \
    'BEGIN { printf "%8d %10.0f %9.1f %10.1f %14.1f %12.0f %10.1f %8d %12d %12d %10.1f\n", n, sent / (s + 5), (c1 - c0) / t / s * 100, steady / 1024, rss / 1024, sc * 1000, sz / 1e6, lost, st, sn, nb / 1e6 }'
  metrics=$((metrics + 1))
done
