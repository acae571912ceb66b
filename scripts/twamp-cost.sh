#!/usr/bin/env bash
# What a TWAMP reflector with many sessions costs per packet beside the STAMP reflector, on loopback: the server on
# one thread pinned to core 1, the load (scripts/twamp-load.c: COUNT sockets, one packet each per round, 44-byte
# unauthenticated test packets) pinned to core 0, at the same rate for every mode, modes interleaved round by round:
#   stamp           udpecho server --protocol stamp                  (stateless)
#   stamp-stateful  udpecho server --protocol stamp --stamp-stateful (a session table: address, port, SSID)
#   twamp           udpecho server --protocol twamp, COUNT sessions set up over TWAMP-Control beforehand
#                   (scripts/twamp-sessions.py), each sender's packets answered from the session table
# The server's CPU time (utime + stime from /proc, 10 ms ticks) over the packets it answered gives its CPU cost per
# packet. Prints one line per run and the median ratio of each mode to stamp.
#
# usage: scripts/twamp-cost.sh [ROUNDS] [SECONDS] [RATE] [COUNT]     (defaults 5, 5, 100000, 1000)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5} seconds=${2:-5} rate=${3:-100000} count=${4:-1000}
[ "$(nproc)" -ge 2 ] || { echo "twamp-cost.sh: needs 2 cores (server and load pinned apart)" >&2; exit 2; }

swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/twamp-load" "$here/scripts/twamp-load.c"
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
base=20000

# run MODE: one server, one load; prints "mode sent/s server-cpu% server-ns/packet answered lost"
run() {
  local mode=$1 port test pid control=""
  port=$(free_port)
  case $mode in
    stamp) taskset -c 1 "$ours" server -q --threads 1 --protocol stamp --address "127.0.0.1:$port" >"$work/server.out" 2>&1 & ;;
    stamp-stateful) taskset -c 1 "$ours" server -q --threads 1 --protocol stamp --stamp-stateful \
      --address "127.0.0.1:$port" >"$work/server.out" 2>&1 & ;;
    twamp) taskset -c 1 "$ours" server -q --threads 1 --protocol twamp --address "127.0.0.1:$port" --test-port 0 \
      --max-sessions-per-connection "$count" >"$work/server.out" 2>&1 & ;;
  esac
  pid=$!
  sleep 0.5
  test=$port
  if [ "$mode" = twamp ]; then
    # The last run's port must not be read while this one's client starts.
    rm -f "$work/sessions.out"
    mkfifo "$work/hold"
    python3 "$here/scripts/twamp-sessions.py" 127.0.0.1 "$port" "$base" "$count" <"$work/hold" >"$work/sessions.out" &
    control=$!
    exec 9>"$work/hold"
    while [ ! -s "$work/sessions.out" ]; do sleep 0.05; kill -0 "$control"; done
    test=$(cat "$work/sessions.out")
  fi
  local before after
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  taskset -c 0 "$work/twamp-load" 127.0.0.1 "$test" "$base" "$count" "$seconds" "$rate" >"$work/load.json"
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  if [ -n "$control" ]; then exec 9>&-; wait "$control" || true; rm -f "$work/hold"; fi
  kill -INT "$pid"; wait "$pid" || true
  local answered
  answered=$(grep -oE '(echoed|reflected)=[0-9]+' "$work/server.out" | head -1 | cut -d= -f2)
  python3 - "$mode" "$before" "$after" "${answered:-0}" "$work/load.json" "$(getconf CLK_TCK)" <<'PY'
import json, sys
mode, before, after, answered, path, tick = sys.argv[1:]
load = json.load(open(path))
cpu = (int(after) - int(before)) / int(tick)
print(f"{mode} {load['sent'] / load['seconds']:.0f} {100 * cpu / load['seconds']:.0f} "
      f"{cpu * 1e9 / max(int(answered), 1):.0f} {answered} {load['sent'] - load['received']}")
PY
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); scripts/twamp-cost.sh $rounds $seconds $rate $count"
echo "# mode sent/s server-cpu% server-ns/packet answered lost"
for round in $(seq "$rounds"); do
  for mode in stamp stamp-stateful twamp; do
    run "$mode" | tee -a "$work/results"
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for mode, rate, cpu, ns, answered, lost in rows:
    by.setdefault(mode, []).append((float(ns), int(lost)))
base = statistics.median(v[0] for v in by["stamp"])
print("# medians over rounds; ratio to stamp")
for mode, values in by.items():
    ns = statistics.median(v[0] for v in values)
    print(f"# {mode}: {ns:.0f} ns/packet, {ns / base:.2f}x stamp, lost {sum(v[1] for v in values)}")
PY
