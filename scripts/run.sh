#!/usr/bin/env bash
# The main job: set up, build, and run the activation-patching tutorial's IOI experiment
# through the daemon: the residual-stream sweep (layers x positions) and the head sweep
# (layers x heads), each drawn in the terminal and written as SVG and HTML heatmaps.
# Uses the daemon already answering on the endpoint, or starts one and stops it at the end.
#
#   scripts/run.sh [smollm2|gemma3]     (make run, or make run MODEL=gemma3)
# SmolLM2-135M-Instruct by default; Gemma 3 270M with `gemma3`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product loupe >&2
loupe=.build/release/loupe
endpoint=${LOUPE_ENDPOINT:-tcp://127.0.0.1:5557}
models="${LOUPE_MODELS:-$HOME/.cache/loupe/models}"
case "${1:-smollm2}" in
    smollm2) name=SmolLM2-135M-Instruct model="$models/SmolLM2-135M-Instruct.Q4_1.gguf" title=SmolLM2 ;;
    gemma3) name=gemma-3-270m model="$models/gemma-3-270m-q4_k_m.gguf" title="Gemma 3" ;;
    *) echo "usage: scripts/run.sh [smollm2|gemma3]" >&2; exit 2 ;;
esac
mkdir -p out

daemon=""
stop_daemon() {
    if [ -n "$daemon" ]; then
        "$loupe" stop --endpoint "$endpoint" >/dev/null 2>&1 || kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
}
if ! "$loupe" ps --endpoint "$endpoint" --timeout 0.5 >/dev/null 2>&1; then
    "$loupe" serve --endpoint "$endpoint" --log-level warning 2>>out/daemon.log &
    daemon=$!
    trap stop_daemon EXIT
    for _ in $(seq 100); do
        "$loupe" ps --endpoint "$endpoint" --timeout 0.2 >/dev/null 2>&1 && break
        kill -0 "$daemon" 2>/dev/null || { echo "loupe serve did not start; see out/daemon.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "started loupe serve on $endpoint (pid $daemon); it stops when this run ends"
else
    echo "using the daemon already serving on $endpoint"
fi

"$loupe" load "$name" "$model" --endpoint "$endpoint"
ioi=(--clean "After John and Mary went to the store, Mary gave a bottle of milk to"
     --corrupt "After John and Mary went to the store, John gave a bottle of milk to"
     --answer " John" --wrong " Mary" --endpoint "$endpoint")
echo
"$loupe" patch "$name" "${ioi[@]}" --title "Patching $title Residual Stream on IOI task" \
    --svg out/ioi-residual.svg --html out/ioi-residual.html
echo
"$loupe" heads "$name" "${ioi[@]}" --title "Patching $title Attention Heads on IOI task" \
    --svg out/ioi-heads.svg --html out/ioi-heads.html
echo
echo "heatmaps:"
for file in out/ioi-residual.svg out/ioi-residual.html out/ioi-heads.svg out/ioi-heads.html; do
    echo "  $(pwd)/$file"
done
