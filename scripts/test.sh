#!/usr/bin/env bash
# Every test: Swift unit and integration tests (they need the fetched models).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
swift test --skip-build --parallel --num-workers 2
# The wire protocol against a real `loupe serve` process.
scripts/conformance_live.sh
