#!/usr/bin/env bash
# Compares `udpecho bench` with the shared instrument's load generator (udpload) as load generators: both drive the
# same C reference server (c-limit) with the same flows, window and size, alternately, round by round, and the
# echoes per second each reached are printed with their ratio. Loopback only. The server runs on CPU 1 and each
# generator on CPU 0.
#
# usage: scripts/load-generator.sh [ROUNDS] [SECONDS] [FLOWS] [WINDOW] [SIZE] [gso]
#   gso: both send each batch as one segmented write (udpload --gso, udpecho bench --gso) to the C reference server
#   with GRO/GSO (c-gro), the limit when clients batch
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH:-$here/../shared/bench}
tools=${TOOLS:-/tmp/udpbench}
rounds=${1:-3} seconds=${2:-3} flows=${3:-4} window=${4:-32} size=${5:-64} mode=${6:-}
reference=c-limit gso=()
if [ "$mode" = gso ]; then reference=c-gro gso=(--gso); fi

swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
[ -x "$tools/udpload" ] && [ -x "$tools/$reference" ] || "$bench/build.sh" "$tools" >&2

port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 "$tools/$reference" "$port" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 0.3

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr): $reference loaded by each generator ${gso[*]}, ${flows} flows x ${window} in flight, ${size} bytes, ${seconds}s, ${rounds} rounds, pinned"
udpload_rates=() ours_rates=()
for round in $(seq 1 "$rounds"); do
  u=$(taskset -c 0 "$tools/udpload" "${gso[@]}" --target "127.0.0.1:$port" --duration "$seconds" --sockets "$flows" --window "$window" --payload "$size" --json |
      python3 -c 'import json,sys; print(int(json.load(sys.stdin)["pps"]))')
  o=$(taskset -c 0 "$ours" bench "${gso[@]}" "127.0.0.1:$port" --duration "${seconds}s" --flows "$flows" --window "$window" --size "$size" --json |
      python3 -c 'import json,sys; print(int(json.load(sys.stdin)["echoes_per_second"]))')
  echo "round $round: udpload $u/s, udpecho bench $o/s"
  udpload_rates+=("$u") ours_rates+=("$o")
done
python3 - "${udpload_rates[*]}" "${ours_rates[*]}" <<'PY'
import statistics, sys
u = [int(x) for x in sys.argv[1].split()]
o = [int(x) for x in sys.argv[2].split()]
mu, mo = statistics.median(u), statistics.median(o)
print(f"median: udpload {mu:.0f}/s, udpecho bench {mo:.0f}/s, ratio {mo / mu:.2f}")
PY
