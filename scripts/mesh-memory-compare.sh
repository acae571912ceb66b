#!/usr/bin/env bash
# Two builds of the mesh agent side by side: each probes N peers at 1/s (addresses 127.0.x.y of one wildcard echo
# server on this host, loopback only), alternated for ROUNDS rounds. Prints, per round and build, the agent's CPU share
# over SECONDS (after 5 s of warm-up), its RSS while probing, and its peak RSS after a text scrape of its metrics.
#
# usage: scripts/mesh-memory-compare.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [SECONDS] [N]   (default: 3, 15, 10000)
# The agents run on CPU 0, the server (BEFORE_BINARY's) on CPU 1.
set -euo pipefail
before=$1 after=$2 rounds=${3:-3} seconds=${4:-15} n=${5:-10000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=17338
metrics=19600
python3 -c "
import sys
n, port = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    print(f'127.{1 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}:{port}')" "$n" "$port" > "$work/peers"
taskset -c 1 "$before" server --quiet --address "0.0.0.0:$port" >/dev/null 2>&1 &
sleep 1
ticks=$(getconf CLK_TCK)
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); $n peers, ${seconds}s measured a run"
for round in $(seq "$rounds"); do
  for which in before after; do
    bin=$before
    [ "$which" = after ] && bin=$after
    taskset -c 0 "$bin" mesh --address 127.0.0.1:0 --peers "$work/peers" --interval 1s --max-rate $((n + n / 10)) \
      --max-bytes-rate $(((n + n / 10) * 100)) --metrics "127.0.0.1:$metrics" >/dev/null 2>&1 &
    agent=$!
    sleep 5
    cpu0=$(awk '{print $14 + $15}' /proc/$agent/stat)
    sleep "$seconds"
    cpu1=$(awk '{print $14 + $15}' /proc/$agent/stat)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
    curl -s -o /dev/null "http://127.0.0.1:$metrics/metrics"
    peak=$(awk '/VmHWM/ {print $2}' /proc/$agent/status)
    kill -TERM $agent; wait $agent 2>/dev/null || true
    awk -v w="$which" -v r="$round" -v c0="$cpu0" -v c1="$cpu1" -v t="$ticks" -v s="$seconds" -v rss="$rss" -v peak="$peak" \
      'BEGIN { printf "round %d %-6s cpu %5.1f %%  rss %5.1f MiB  peak after a scrape %5.1f MiB\n", r, w, (c1 - c0) / t / s * 100, rss / 1024, peak / 1024 }'
    metrics=$((metrics + 1))
  done
done
