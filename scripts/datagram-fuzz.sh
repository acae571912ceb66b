#!/usr/bin/env bash
# Starts a release udpecho server (default guards, 2 threads, metrics on) and runs scripts/datagram-fuzz.py against it:
# 10,000 random datagrams of random sizes 0..65507 from several sources, each echoed byte for byte or dropped by a
# guard and counted. Loopback only.
#
# usage: scripts/datagram-fuzz.sh [datagram-fuzz.py options, e.g. --count 20000 --seed 7]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
log=$(mktemp)
"$ours" server --address 127.0.0.1:0 --threads 2 --quiet --metrics 127.0.0.1:0 >"$log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null || true; wait $server 2>/dev/null || true; tail -n 3 "$log"; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q "^metrics on" "$log" && break; sleep 0.1; done
port=$(sed -n 's/^running as a server on .*:\([0-9]*\)$/\1/p' "$log")
url=$(sed -n 's/^metrics on //p' "$log")
python3 "$here/scripts/datagram-fuzz.py" "127.0.0.1:$port" "$url" "$@"
