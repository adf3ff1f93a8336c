#!/usr/bin/env bash
# Replays Protocol/vectors/ against a real `loupe serve` process (the debug build), then
# stops it with `loupe stop` and checks that it removed its socket file.
set -euo pipefail
cd "$(dirname "$0")/.."
loupe=${LOUPE:-.build/debug/loupe}
socket=$(mktemp -u /tmp/loupe-conformance-XXXXXX.sock)
endpoint="ipc://$socket"
"$loupe" serve --endpoint "$endpoint" --models-dir Tests/Fixtures/models --log-level warning &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true' EXIT
python3 scripts/conformance.py --endpoint "$endpoint" >/dev/null
"$loupe" stop --endpoint "$endpoint" >/dev/null
wait "$daemon"
if [ -e "$socket" ]; then echo "conformance: the daemon left $socket behind" >&2; exit 1; fi
echo "conformance: Protocol/vectors pass against loupe serve"
