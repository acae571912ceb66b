#!/usr/bin/env bash
# Start-up time of udpecho binaries: `BINARY --version`, 10 runs each, median (and range), in rounds interleaved so
# that the machine's drift hits each alike; /bin/true as the floor of starting any process here.
# usage: scripts/startup-time.sh [ROUNDS] BINARY...     (e.g. /usr/bin/udpecho .build/release/udpecho)
set -euo pipefail
rounds=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
exec python3 - "$rounds" "$@" /bin/true <<'PYTHON'
import statistics, subprocess, sys, time
rounds, binaries = int(sys.argv[1]), sys.argv[2:]
for r in range(rounds):
    cells = []
    for binary in binaries:
        times = []
        for _ in range(10):
            start = time.perf_counter()
            subprocess.run([binary] if binary == "/bin/true" else [binary, "--version"], stdout=subprocess.DEVNULL,
                           check=True)
            times.append((time.perf_counter() - start) * 1000)
        cells.append(f"{binary}: {statistics.median(times):.1f} ms ({min(times):.1f}-{max(times):.1f})")
    print(f"round {r + 1}: " + " | ".join(cells), flush=True)
PYTHON
