#!/usr/bin/env bash
# What answering as a STAMP reflector costs beside plain echo, per packet, on loopback: the server on one thread
# pinned to core 1, `udpecho bench` pinned to core 0 loading it with 44-byte packets (STAMP's base packet; the same
# size for the echo), modes interleaved round by round:
#   echo            udpecho server
#   stamp           udpecho server --protocol stamp                  (stateless; T2 from the kernel)
#   stamp-stateful  udpecho server --protocol stamp --stamp-stateful
#   stamp-auth      udpecho server --protocol stamp --stamp-key-file  (HMAC-SHA-256 checked and signed)
# Two loads: closed loop (4 flows x 32 in flight: the server's capacity) and open loop at a fixed rate (the same
# packets per second for every mode). The server's CPU time (utime + stime from /proc, 10 ms ticks) over the packets
# it answered gives its CPU cost per packet. Prints one line per run and the median ratio of each mode to echo, with
# the packets bench saw lost or corrupt.
#
# usage: scripts/stamp-cost.sh [ROUNDS] [SECONDS] [RATE]     (defaults 3, 5, 50000)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3} seconds=${2:-5} rate=${3:-50000}
[ "$(nproc)" -ge 2 ] || { echo "stamp-cost.sh: needs 2 cores (server and load pinned apart)" >&2; exit 2; }

swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf 'stamp-cost key' >"$work/key"
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

declare -A flags=(
  [echo]=""
  [stamp]="--protocol stamp"
  [stamp-stateful]="--protocol stamp --stamp-stateful"
  [stamp-auth]="--protocol stamp --stamp-key-file $work/key"
)
modes=(echo stamp stamp-stateful stamp-auth)

# run MODE LOAD...: one server, one bench; prints "mode load echoes/s cpu% ns/packet"
run() {
  local mode=$1 label=$2; shift 2
  local port; port=$(free_port)
  # shellcheck disable=SC2086
  taskset -c 1 "$ours" server -q --threads 1 --address "127.0.0.1:$port" ${flags[$mode]} >"$work/server.out" 2>&1 &
  local pid=$!
  sleep 0.3
  local stamp=() key=()
  [ "$mode" != echo ] && stamp=(--stamp)
  [ "$mode" = stamp-auth ] && key=(--stamp-key-file "$work/key")
  local before; before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  taskset -c 0 "$ours" bench "127.0.0.1:$port" "${stamp[@]}" "${key[@]}" -s $([ "$mode" = stamp-auth ] && echo 112 || echo 44) \
    -d "${seconds}s" "$@" --json >"$work/bench.json"
  local after; after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -INT "$pid"; wait "$pid" || true
  local echoed; echoed=$(sed -n 's/.*summary: received=[0-9]* echoed=\([0-9]*\).*/\1/p' "$work/server.out")
  python3 - "$mode" "$label" "$before" "$after" "$echoed" "$work/bench.json" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
mode, label, before, after, echoed, path, tick = sys.argv[1:]
bench = json.load(open(path))
cpu = (int(after) - int(before)) / int(tick)
print(f"{mode} {label} {bench['echoes_per_second']:.0f} {100 * cpu / bench['active_s']:.0f} "
      f"{cpu * 1e9 / max(int(echoed), 1):.0f} {bench['lost'] + bench['corrupt']}")
EOF
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); scripts/stamp-cost.sh $rounds $seconds $rate"
echo "# mode load echoes/s server-cpu% server-ns/packet lost+corrupt"
for round in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    run "$mode" closed --flows 4 --window 32 | tee -a "$work/results"
    run "$mode" "open-$rate" --flows 4 --rate "$rate" | tee -a "$work/results"
  done
done
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for mode, load, rate, cpu, ns, bad in rows:
    by.setdefault((mode, load), []).append((float(rate), float(ns), int(bad)))
print("# medians over rounds; ratios to echo in the same load")
for (mode, load), values in sorted(by.items(), key=lambda item: (item[0][1], item[0][0] != "echo", item[0][0])):
    rate = statistics.median(v[0] for v in values)
    ns = statistics.median(v[1] for v in values)
    echo_rate = statistics.median(v[0] for v in by[("echo", load)])
    echo_ns = statistics.median(v[1] for v in by[("echo", load)])
    print(f"{load:>12} {mode:>15}: {rate:9.0f} echoes/s ({rate / echo_rate:.2f}x echo), "
          f"{ns:6.0f} ns CPU/packet ({ns / echo_ns:.2f}x echo), lost or corrupt {sum(v[2] for v in values)}")
EOF
