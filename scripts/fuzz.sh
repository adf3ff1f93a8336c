#!/usr/bin/env bash
# Builds the fuzz targets (Sources/loupe-fuzz, one binary) with libFuzzer and AddressSanitizer,
# and runs one of them from its committed seed corpus (scripts/make_fuzz_corpus.py) for SECONDS
# (default 60), or as the extra libFuzzer flags say (-runs=N).
#
#   scripts/fuzz.sh [SECONDS] [TARGET] [libFuzzer flags...]
#
# TARGET (default request, or $LOUPE_FUZZ_TARGET):
#   request      the daemon's request path            Tests/Fuzz/corpus
#   gguf         GGUF files, every tensor converted    Tests/Fuzz/corpus-gguf
#   safetensors  safetensors files, every tensor       Tests/Fuzz/corpus-safetensors
#   config       config.json for every architecture    Tests/Fuzz/corpus-config
#   tokenizer    every tokenizer format                Tests/Fuzz/corpus-tokenizer
#
# Exits 0 only when the run ended without a crash, a hang (-timeout), an allocation over
# -malloc_limit_mb (1100 for request and config, 64 for the file readers) or a resident size
# over -rss_limit_mb. A toolchain that cannot build a
# fuzzer fails here, loudly: the build's error is the message. New inputs the run finds go
# to a scratch directory; a crashing input is written to $LOUPE_FUZZ_ARTIFACTS (default
# .build-fuzzer/artifacts) as TARGET-crash-..., and replays with the plain build:
# `loupe-fuzz --target TARGET FILE`. The reader targets write each input to a file in a
# scratch directory under /dev/shm ($LOUPE_FUZZ_TMP), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
target="${LOUPE_FUZZ_TARGET:-request}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    target="$1"
    shift
fi
# The largest single allocation allowed. The request path and the config target build models
# (a config may declare a context of 2^20 positions, whose RoPE table a real model of that
# context needs); the file readers' inputs are at most 64 KiB, so 64 MB from one is absurd.
case "$target" in
    request) corpus=Tests/Fuzz/corpus; malloc_limit=1100 ;;
    config) corpus="Tests/Fuzz/corpus-$target"; malloc_limit=1100 ;;
    gguf|safetensors|tokenizer) corpus="Tests/Fuzz/corpus-$target"; malloc_limit=64 ;;
    *) echo "fuzz: unknown target $target (request, gguf, safetensors, config, tokenizer)" >&2; exit 2 ;;
esac
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
files="$(mktemp -d "${LOUPE_FUZZ_TMP:-/dev/shm}/loupe-fuzz.XXXXXX" 2>/dev/null || mktemp -d)"
trap 'rm -rf "$grown" "$files"' EXIT

# Swift's own crash reporter would sit between a crash and libFuzzer's report.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}"
export LOUPE_FUZZ_TMP="$files"
echo "fuzz: running $target for ${seconds}s from $corpus ($(ls "$corpus" | wc -l) seeds)"
"$binary" --target "$target" "$grown" "$corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb="$malloc_limit" -max_len=65536 \
    -artifact_prefix="$artifacts/$target-" -print_final_stats=1 "$@"
echo "fuzz: $target: no crash, hang or oversized allocation"
