#!/usr/bin/env bash
# How accurate udpecho's round trips are, beside tools that measure the same thing, in one run on loopback:
# 300 probes 10 ms apart each from
#   - kernel ping (ICMP, answered inside the kernel: no echo server in user space reaches it; there for scale),
#   - irtt's client against irtt's server (Debian's irtt: its own protocol, user-space timestamps),
#   - a reference client of this script's own (Python) that reads the kernel's receive timestamp (SO_TIMESTAMPNS)
#     and takes its send time just before send(), against `udpecho server`,
#   - `udpecho ping` against `udpecho server` and against the shared instrument's C server (c-limit);
# then `udpecho bench --rate 20000 --flows 2` against `udpload --rate 20000 --sockets 2`, both on c-limit (service
# round trip p50 of each). Prints one table with medians and the goals of issue 8. Loopback only, bounded in time
# (about 30 s).
#
# usage: scripts/accuracy.sh [ROUNDS]     (default 1; each round runs every tool once, in turn)
# Needs: iputils-ping, irtt (apt-get install iputils-ping irtt), python3, gcc (for the C server), Swift.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH:-$here/../shared/bench}
tools=${TOOLS:-/tmp/udpbench}
rounds=${1:-1}
for tool in ping irtt python3; do
  command -v "$tool" >/dev/null || { echo "accuracy.sh: $tool is missing (apt-get install iputils-ping irtt)" >&2; exit 2; }
done

swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
[ -x "$tools/udpload" ] && [ -x "$tools/c-limit" ] || "$bench/build.sh" "$tools" >&2

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
echo_port=$(free_port) c_port=$(free_port) irtt_port=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$ours" server -q --address "127.0.0.1:$echo_port" >/dev/null 2>&1 & pids+=($!)
"$tools/c-limit" "$c_port" >/dev/null 2>&1 & pids+=($!)
irtt server -b "127.0.0.1:$irtt_port" >/dev/null 2>&1 & pids+=($!)
sleep 0.5

# The reference client: 64-byte datagrams on a connected socket, each sent 10 ms after the last was due; its
# round trip is the kernel's receive timestamp minus the clock read just before send().
reference='
import socket, statistics, struct, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
SO_TIMESTAMPNS = 35
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.connect(("127.0.0.1", port))
s.settimeout(1)
rtts, due = [], time.monotonic()
for i in range(count):
    payload = struct.pack("<Q", i) + bytes(56)
    sent = time.time_ns()
    s.send(payload)
    data, ancillary, _, _ = s.recvmsg(100, 64)
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            rtts.append(seconds * 1_000_000_000 + nanoseconds - sent)
    due += 0.01
    time.sleep(max(0, due - time.monotonic()))
print(statistics.median(rtts) / 1e6)
'
median_of_ping() { ping -n -c 300 -i 0.01 127.0.0.1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.stdin))'; }
median_of_irtt() { irtt client -i 10ms -d 3s -Q -o - "127.0.0.1:$irtt_port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["rtt"]["median"] / 1e6)'; }
median_of_udpecho() { "$ours" ping "127.0.0.1:$1" -c 300 -i 10ms -q --json | tail -n 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["rtt_ms"]["p50"])'; }
bench_p50() { "$ours" bench "127.0.0.1:$c_port" --rate 20000 --flows 2 -d 3s --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rtt_ms"]["p50"])'; }
udpload_p50() { "$tools/udpload" --target "127.0.0.1:$c_port" --rate 20000 --sockets 2 --duration 3 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rtt_us_p50"] / 1000)'; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); 300 probes 10 ms apart; median round trip in ms"
declare -A results
for round in $(seq 1 "$rounds"); do
  results[icmp]+=" $(median_of_ping)"
  results[irtt]+=" $(median_of_irtt)"
  results[reference]+=" $(python3 -c "$reference" "$echo_port" 300)"
  results[udpecho]+=" $(median_of_udpecho "$echo_port")"
  results[udpecho-c]+=" $(median_of_udpecho "$c_port")"
  results[bench]+=" $(bench_p50)"
  results[udpload]+=" $(udpload_p50)"
done
python3 - "${results[icmp]}" "${results[irtt]}" "${results[reference]}" "${results[udpecho]}" "${results[udpecho-c]}" \
  "${results[bench]}" "${results[udpload]}" <<'PY'
import statistics, sys
names = [
    ("icmp", "kernel ping (ICMP, answered by the kernel)"),
    ("irtt", "irtt client -> irtt server"),
    ("reference", "reference client (SO_TIMESTAMPNS receive) -> udpecho server"),
    ("udpecho", "udpecho ping -> udpecho server"),
    ("udpecho-c", "udpecho ping -> c-limit"),
    ("bench", "udpecho bench --rate 20000 --flows 2 -> c-limit (rtt p50)"),
    ("udpload", "udpload --rate 20000 --sockets 2 -> c-limit (rtt p50)"),
]
values = {key: [float(x) for x in arg.split()] for (key, _), arg in zip(names, sys.argv[1:])}
median = {key: statistics.median(v) for key, v in values.items()}
for key, label in names:
    rounds = " ".join(f"{x:.3f}" for x in values[key])
    print(f"{label:<62} {median[key]:7.3f}   rounds: {rounds}")
print()
def goal(text, ratio, limit):
    print(f"{text:<62} {ratio:7.2f}   goal <= {limit}: {'met' if ratio <= limit else 'MISSED'}")
goal("udpecho ping / irtt", median["udpecho"] / median["irtt"], 0.6)
goal("udpecho ping / reference client", median["udpecho"] / median["reference"], 1.0)
goal("udpecho bench / udpload (service rtt p50)", median["bench"] / median["udpload"], 1.2)
PY
