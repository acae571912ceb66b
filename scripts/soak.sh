#!/usr/bin/env bash
# Soak: a release udpecho server under load for several minutes, its memory sampled every 10 s. It passes when the
# resident memory has stopped growing: the highest sample of the last third of the run is at most 1 MiB above the
# highest of the first third. Load, all on loopback and bounded in time: `udpecho bench` closed loop (4 flows x 32,
# 64 bytes), a second bench of large datagrams (1 flow x 4, 16000 bytes), and a Python sender spraying datagrams of
# random sizes from 2000 loopback sources at a low rate, so that the rate limiter's table (on for loopback here) fills
# and evicts all the time.
#
# usage: scripts/soak.sh [SECONDS]   (default 300)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-300}
swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
log=$(mktemp)
"$ours" server --address 127.0.0.1:0 --quiet --limit-loopback --rate-limit 1000000 --rate-table 1024 >"$log" 2>&1 &
server=$!
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; kill -INT $server 2>/dev/null || true; wait $server 2>/dev/null || true; tail -n 2 "$log"; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q "^running" "$log" && break; sleep 0.1; done
port=$(sed -n 's/^running as a server on .*:\([0-9]*\)$/\1/p' "$log")

"$ours" bench "127.0.0.1:$port" --duration "${seconds}s" --flows 4 --window 32 --size 64 >/dev/null &
pids+=($!)
"$ours" bench "127.0.0.1:$port" --duration "${seconds}s" --flows 1 --window 4 --size 16000 >/dev/null &
pids+=($!)
python3 - "$port" "$seconds" <<'PY' &
import random, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
sockets = []
for i in range(2000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"127.2.{i // 250}.{1 + i % 250}", 0))
    s.setblocking(False)
    sockets.append(s)
while time.monotonic() < end:
    for s in random.sample(sockets, 50):
        s.sendto(random.randbytes(random.randint(0, 4000)), ("127.0.0.1", port))
        try:
            while True:
                s.recv(65536)
        except BlockingIOError:
            pass
    time.sleep(0.01)
PY
pids+=($!)

samples=()
echo "second rss_kib"
for ((t = 10; t <= seconds; t += 10)); do
  sleep 10
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
  samples+=("$rss")
  echo "$t $rss"
done
python3 - "${samples[@]}" <<'PY'
import sys
rss = [int(x) for x in sys.argv[1:]]
third = max(1, len(rss) // 3)
first, last = max(rss[:third]), max(rss[-third:])
verdict = "stopped growing" if last <= first + 1024 else "still growing"
print(f"rss KiB: first third max {first}, last third max {last}: {verdict}")
print(f"{1 if last <= first + 1024 else 0} passed, {0 if last <= first + 1024 else 1} failed")
sys.exit(0 if last <= first + 1024 else 1)
PY
