#!/usr/bin/env bash
# The main job: set up, build, and run the tutorial's IOI experiment on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product loupe >&2
.build/release/loupe ioi "$@"
