#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer: builds `udpecho-fuzz` with -sanitize=fuzzer,address (and the C shim with
# AddressSanitizer and UndefinedBehaviorSanitizer) in .build-fuzz, then runs TARGET for SECONDS from its seeds
# (Fuzz/corpus/TARGET, and what earlier runs here found in .build-fuzz/corpus/TARGET). A crash, a sanitizer report or
# a broken invariant stops the run and fails it; the input is left in .build-fuzz/crashes/TARGET: copy it into
# Fuzz/regressions/TARGET/, where the tests replay it (FuzzCorpusTests), and fix the fault.
#
# usage: scripts/fuzz.sh TARGET|all [SECONDS]   (default 30 s each; `all` runs every target in turn)
#        scripts/fuzz.sh list
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET|all|list [SECONDS]}
seconds=${2:-30}
targets=(stamp-reflector stamp-sender metrics-request peers-file arguments marking-report control-messages twamp-control-server
  twamp-control-client twamp-reflector key-file owamp-control-server owamp-messages owamp-test-packet exporter-config exporter-request
  xdp-program)
if [ "$target" = list ]; then printf '%s\n' "${targets[@]}"; exit 0; fi

# -use-ld=lld: gold stops with an internal error on the fuzzer's runtime. The fuzzer's coverage and AddressSanitizer
# instrument every Swift module (the packages' too) and, through -Xcc, every C one.
swift build --product udpecho-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING \
  -Xswiftc -use-ld=lld -Xcc -fsanitize=fuzzer-no-link,address,undefined -Xcc -fno-sanitize-recover=undefined >&2
binary=$(swift build --scratch-path .build-fuzz --show-bin-path)/udpecho-fuzz

run() {
  local name=$1
  local work=.build-fuzz/corpus/$name crashes=.build-fuzz/crashes/$name
  mkdir -p "$work" "$crashes"
  echo "== $name: ${seconds}s" >&2
  # -max_len 65536: a datagram's size. -rss_limit_mb: the targets keep nothing between inputs; growth is a leak.
  # -timeout 10: one input taking seconds is itself a finding (work that grows faster than the input).
  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$binary" "$name" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "$work" "Fuzz/corpus/$name" 2>"$work.log" || {
    tail -n 60 "$work.log" >&2
    echo "fuzz.sh: $name failed; the input is in $crashes/" >&2
    return 1
  }
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$work.log" | tr '\n' ' ' >&2
  echo >&2
}

if [ "$target" = all ]; then
  for name in "${targets[@]}"; do run "$name"; done
else
  [[ " ${targets[*]} " == *" $target "* ]] || { echo "fuzz.sh: no target $target (scripts/fuzz.sh list)" >&2; exit 64; }
  run "$target"
fi
