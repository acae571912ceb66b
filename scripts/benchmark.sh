#!/usr/bin/env bash
# Measures udpecho's server beside the reference servers with the shared instrument (../shared/bench):
# the C single-core limit (c-limit), the C limit with UDP GRO/GSO (c-gro, the limit when clients batch), the
# article's Go server (without prints), and SwiftNIO's example with gathering reads.
# Our server runs with its default flags, as a user starts it (per-packet lines on, collapsed past 50 a second).
#
# usage: scripts/benchmark.sh [compare.py options, e.g. --quick, --rounds 3, --scenarios pipelined-64]
#        scripts/benchmark.sh --pin --rounds 5 --scenarios pingpong-64,pipelined-64,pipelined-1400,fanin-64,pipelined-64-gso,pipelined-1400-gso,pingpong-64-busy
#                                     the headline run of BENCHMARKS.md
#        EXTRA='name=command {port}' scripts/benchmark.sh   adds a server to the table
# Everything runs on loopback. Needs gcc, python3, golang-go (for the Go server) and Swift.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH:-$here/../shared/bench}
tools=${TOOLS:-/tmp/udpbench}

swift build -c release --product udpecho --package-path "$here" >&2
ours=$(swift build -c release --package-path "$here" --show-bin-path)/udpecho
if [ ! -x "$tools/nio-example" ] || [ ! -x "$tools/udpload" ] || [ ! -x "$tools/c-gro" ]; then
  "$bench/build.sh" "$tools" --nio >&2
fi

servers=(
  "c-limit=$tools/c-limit {port}"
  "c-gro=$tools/c-gro {port}"
  "udpecho=$ours server --address 127.0.0.1:{port}"
  "nio-example=$tools/nio-example --enable-gathering-reads 127.0.0.1 {port}"
)
[ -x "$tools/go-seed" ] && servers+=("go-seed=$tools/go-seed -quiet -address 127.0.0.1:{port}")
[ -n "${EXTRA:-}" ] && servers+=("$EXTRA")

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# scripts/benchmark.sh $*"
exec python3 "$bench/compare.py" --udpload "$tools/udpload" "$@" "${servers[@]}"
