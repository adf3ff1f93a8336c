#!/usr/bin/env bash
# Every test: the Swift unit and integration tests (they need the models that
# scripts/fetch-models.sh fetches), then the wire protocol and the patch commands against
# a live daemon.
# Ends with one line counting what passed and failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
# Release builds, tests included: the parity tests run real models, about three times faster
# optimised, and the daemon the live checks and the Python tests start is this same build.
# `-enable-testing` lets the tests' `@testable import`s see internal symbols.
build=(-c release -Xswiftc -enable-testing)
swift build "${build[@]}" --build-tests || exit 1
bin="$(swift build "${build[@]}" --show-bin-path)"

log=$(mktemp)
swift test "${build[@]}" --skip-build 2>&1 | tee "$log"
swift_status=${PIPESTATUS[0]}
# XCTest's closing line for all suites: "Executed N tests, with M failures ..." or, when
# some were skipped, "Executed N tests, with S tests skipped and M failures ..."
summary=$(grep -E "^\s*Executed [0-9]+ tests?, with ([0-9]+ tests? skipped and )?[0-9]+ failures?" "$log" | tail -1)
executed=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
failed=$(echo "$summary" | sed -E 's/.* ([0-9]+) failures?.*/\1/')
skipped=$(echo "$summary" | sed -nE 's/.*with ([0-9]+) tests? skipped.*/\1/p')
executed=$((executed - ${skipped:-0}))
rm -f "$log"
if [ -z "$summary" ]; then echo "swift test printed no summary" >&2; exit 1; fi

# The wire protocol against a real `loupe serve` process.
if LOUPE="$bin/loupe" scripts/conformance_live.sh; then conformance_passed=1; conformance_failed=0; else conformance_passed=0; conformance_failed=1; fi

# loupe patch / loupe heads (JSON, SVG, HTML) against a real `loupe serve` process.
if LOUPE="$bin/loupe" scripts/patch_live.sh; then patch_passed=1; patch_failed=0; else patch_passed=0; patch_failed=1; fi

# The fuzz targets, built here with libFuzzer, each from its seed corpus: the request path for
# 60 s (RELIABILITY.md, "Hostile input"), then the model readers for 20 s each ("Model files").
# Each target counts as one test; a toolchain that cannot build the fuzzer fails them all.
fuzz_passed=0; fuzz_failed=0
for run in "60 request" "20 gguf" "20 safetensors" "20 config" "20 tokenizer"; do
    if scripts/fuzz.sh $run; then fuzz_passed=$((fuzz_passed + 1)); else fuzz_failed=$((fuzz_failed + 1)); fi
done

# The Python client (Clients/python): its pytest tests start and stop their own daemon, the
# release build above.
python3 -m pip install --quiet -e Clients/python 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages -e Clients/python || exit 1
log=$(mktemp)
LOUPE_BIN="$bin/loupe" python3 -m pytest Clients/python/tests -q -p no:cacheprovider 2>&1 | tee "$log"
# pytest's closing line: "N passed, M failed, E errors in ..." (each part only when nonzero)
pytest_summary=$(grep -E "^=*\s*[0-9]+ (passed|failed|errors?)" "$log" | tail -1)
python_passed=$(echo "$pytest_summary" | sed -nE 's/.*\b([0-9]+) passed.*/\1/p')
python_failed=$(( $(echo "$pytest_summary" | sed -nE 's/.*\b([0-9]+) failed.*/\1/p' | grep . || echo 0) \
    + $(echo "$pytest_summary" | sed -nE 's/.*\b([0-9]+) errors?.*/\1/p' | grep . || echo 0) ))
rm -f "$log"
if [ -z "$pytest_summary" ]; then echo "pytest printed no summary" >&2; python_failed=1; fi

passed=$((executed - failed + conformance_passed + patch_passed + fuzz_passed + ${python_passed:-0}))
failed=$((failed + conformance_failed + patch_failed + fuzz_failed + python_failed))
echo "tests: $passed passed, $failed failed"
[ "$swift_status" -eq 0 ] && [ "$failed" -eq 0 ]
