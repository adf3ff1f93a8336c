#!/usr/bin/env bash
# Builds the fuzz target (Sources/loupe-fuzz) with libFuzzer and AddressSanitizer, and runs
# it from the committed seed corpus (Tests/Fuzz/corpus, scripts/make_fuzz_corpus.py) for
# SECONDS (default 60), or as the extra libFuzzer flags say (-runs=N).
#
#   scripts/fuzz.sh [SECONDS] [libFuzzer flags...]
#
# Exits 0 only when the run ended without a crash, a hang (-timeout), an allocation over
# -malloc_limit_mb or a resident size over -rss_limit_mb. A toolchain that cannot build a
# fuzzer fails here, loudly: the build's error is the message. New inputs the run finds go
# to a scratch directory; a crashing input is written to $LOUPE_FUZZ_ARTIFACTS (default
# .build-fuzzer/artifacts) and replays with the plain build: `loupe-fuzz FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
scratch="${LOUPE_FUZZ_SCRATCH:-.build-fuzzer}"
flags=(-c release --product loupe-fuzz --scratch-path "$scratch"
       -Xswiftc -sanitize=fuzzer,address -Xswiftc -DLOUPE_FUZZER)

echo "fuzz: building the fuzzer ($scratch)"
log="$(mktemp)"
if ! swift build "${flags[@]}" > "$log" 2>&1; then
    grep -v "Cannot export local symbol" "$log" | tail -40 >&2
    echo "fuzz: FAILED: the fuzzer does not build with this toolchain" >&2
    exit 1
fi
rm -f "$log"
binary="$(swift build "${flags[@]}" --show-bin-path)/loupe-fuzz"
if [ ! -x "$binary" ] || ! nm "$binary" 2>/dev/null | grep LLVMFuzzerRunDriver >/dev/null; then
    echo "fuzz: FAILED: no libFuzzer binary at $binary (does this Swift toolchain ship libclang_rt.fuzzer?)" >&2
    exit 1
fi

artifacts="${LOUPE_FUZZ_ARTIFACTS:-$scratch/artifacts}"
mkdir -p "$artifacts"
grown="$(mktemp -d)"
trap 'rm -rf "$grown"' EXIT

# Swift's own crash reporter would sit between a crash and libFuzzer's report.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}"
echo "fuzz: running for ${seconds}s from Tests/Fuzz/corpus ($(ls Tests/Fuzz/corpus | wc -l) seeds)"
"$binary" "$grown" Tests/Fuzz/corpus \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb=1100 -max_len=65536 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$@"
echo "fuzz: no crash, hang or oversized allocation"
