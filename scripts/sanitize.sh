#!/usr/bin/env bash
# The library's tests (the UDPEchoTests target: the server's threads and event rings, the probe engine, STAMP both
# ways, the mesh prober, the metrics endpoint, the C shim) under ThreadSanitizer, then under AddressSanitizer with
# UndefinedBehaviorSanitizer on the C shim (swiftc has no -sanitize=undefined on Linux; clang instruments CUDPEcho
# through -Xcc). Each sanitizer builds in a folder of its own (.build-tsan, .build-asan), about 2.5 minutes from
# nothing here. Any report fails the run. The two tests that check the C shim stops the process on a bug run the test
# binary again as a child, which a sanitizer's own signal handling and process-exit checks change: they run in the
# plain `swift test` only (--skip).
#
# usage: scripts/sanitize.sh [thread|address]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
# At most 8 tests at once. Swift Testing otherwise starts all 173 together, and under a sanitizer (5 to 15 times
# slower) on 2 cores that start storms for seconds: a CI run's trivial parsing tests took 8 s, and nine TWAMP and
# OWAMP tests waited past 5 s for a server greeting that a starved event loop had not yet written. The tests are the
# same; only how many run at a time changes (about 45 s instead of 27 for the ThreadSanitizer run here).
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=8
if [ "$which" = both ] || [ "$which" = thread ]; then
  # halt_on_error: the first data race stops the run with its report.
  TSAN_OPTIONS=halt_on_error=1 swift test --sanitize=thread --scratch-path .build-tsan --filter UDPEchoTests \
    --skip StopsTheProcess
fi
if [ "$which" = both ] || [ "$which" = address ]; then
  # Leaks reported at exit are checked too, less the memory that libraries we did not write keep for the life of the
  # process (.ci/lsan-suppressions.txt says which, and why).
  LSAN_OPTIONS="suppressions=$PWD/.ci/lsan-suppressions.txt:print_suppressions=0" ASAN_OPTIONS=halt_on_error=1 \
    swift test --sanitize=address -Xcc -fsanitize=undefined -Xcc -fno-sanitize-recover=undefined \
    --scratch-path .build-asan --filter UDPEchoTests --skip StopsTheProcess
fi
