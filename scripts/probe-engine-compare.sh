#!/usr/bin/env bash
# Two builds of udpecho's probe engine side by side: `udpecho bench` (closed loop, window 32 x 4 flows; and open loop
# at 100,000/s) against the shared instrument's C server (c-limit) pinned to core 0, each generator pinned to core 1,
# rounds interleaved (A B A B ...). Prints one line per run: mode, build, round, echoes/s, lost, corrupt, p50 ms.
# Loopback only, bounded (3 s a run).
#
# usage: scripts/probe-engine-compare.sh BEFORE AFTER [ROUNDS]   (two udpecho binaries; default 5 rounds)
set -euo pipefail
before=${1:?usage: probe-engine-compare.sh BEFORE AFTER [ROUNDS]} after=${2:?usage} rounds=${3:-5}
tools=${TOOLS:-/tmp/udpbench}
[ -x "$tools/c-limit" ] || "$(dirname "$0")/../../shared/bench/build.sh" "$tools" >&2
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$tools/c-limit" "$port" >/dev/null 2>&1 &
srv=$!
taskset -pc 0 $srv >/dev/null
sleep 0.5
for mode in closed "open"; do
  for round in $(seq "$rounds"); do
    for who in before after; do
      binary=$before; [ "$who" = after ] && binary=$after
      extra=(); [ "$mode" = open ] && extra=(--rate 100000)
      taskset -c 1 "$binary" bench "127.0.0.1:$port" -d 3s --json "${extra[@]}" 2>/dev/null | tail -1 |
        python3 -c "import json,sys; o=json.loads(sys.stdin.read()); print('$mode', '$who', $round, int(o['echoes_per_second']), o['lost'], o['corrupt'], round(o.get('rtt_ms',{}).get('p50',0) if isinstance(o.get('rtt_ms'),dict) else 0,4))"
    done
  done
done
kill $srv
