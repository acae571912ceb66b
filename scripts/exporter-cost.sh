#!/usr/bin/env bash
# What a probe through `udpecho exporter` costs against `udpecho ping` doing the same: ROUNDS rounds, each one probe
# of COUNT echo packets INTERVAL apart to one server on loopback, through the exporter (a scrape of /probe) and by
# ping, alternated. Prints per round the CPU time each used (the exporter's process over its probe; ping's whole
# process: its start included) and the round trips' median each reported.
#
# usage: scripts/exporter-cost.sh [ROUNDS] [COUNT] [INTERVAL]      (default: 5 rounds of 100 packets 10ms apart)
# The server runs on CPU 1, the exporter and ping on CPU 0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5}
count=${2:-100}
interval=${3:-10ms}
swift build -c release --product udpecho --package-path "$here" >&2
bin=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
taskset -c 1 "$bin" server --quiet --address 127.0.0.1:17401 >/dev/null 2>&1 &
cat > "$work/exporter.yml" <<YAML
modules:
  echo:
    protocol: echo
    count: $count
    interval: $interval
    timeout: 1s
allow:
  - 127.0.0.1
YAML
taskset -c 0 "$bin" exporter --config "$work/exporter.yml" --listen 127.0.0.1:19401 -q >/dev/null 2>&1 &
exporter=$!
sleep 1
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); $count packets ${interval} apart; CPU in ms (clock ticks of 1000/$ticks ms)"
printf '%6s %14s %14s %16s %16s\n' round "exporter cpu" "ping cpu" "exporter p50 ms" "ping p50 ms"
for round in $(seq "$rounds"); do
  before=$(cpu "$exporter")
  curl -s -H 'X-Prometheus-Scrape-Timeout-Seconds: 60' 'http://127.0.0.1:19401/probe?target=127.0.0.1:17401&module=echo' \
    > "$work/probe"
  after=$(cpu "$exporter")
  exporter_p50=$(awk '/^udpecho_probe_rtt_seconds\{quantile="0.5"\}/ {printf "%.3f", $2 * 1000}' "$work/probe")
  /usr/bin/time -f '%U %S' -o "$work/time" taskset -c 0 "$bin" ping 127.0.0.1:17401 -c "$count" -i "$interval" -q \
    > "$work/ping"
  ping_p50=$(awk -F'= ' '/^rtt p50/ {split($2, v, "/"); print v[1]}' "$work/ping")
  awk -v r="$round" -v b="$before" -v a="$after" -v t="$ticks" -v ep="$exporter_p50" -v pp="$ping_p50" \
    '{ printf "%6d %14.0f %14.0f %16s %16s\n", r, (a - b) * 1000 / t, ($1 + $2) * 1000, ep, pp }' "$work/time"
done
