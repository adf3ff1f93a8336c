#!/usr/bin/env bash
# The engine benchmarks: SmolLM2 and a GPT-2-small-shaped model with seeded random weights,
# each in a process of its own. Every figure is a ratio against a baseline measured in the
# same run (sgemm on the same shapes; HF transformers and nnsight where torch is installed).
# With the sweeps, attribution patching of the residual stream, heads and MLPs at once on the
# IOI pair: against one forward pass of the pair, the exact sweeps (Loupe's, nnsight's batched
# cells, and on SmolLM2 nnsight's attribution patching), its correlation with the exact
# matrices and the backward's memory.
#   scripts/bench.sh [loupe-bench options]           (make bench)
#   scripts/bench.sh gemma3 [loupe-bench options]    (make bench-gemma3)
# `gemma3` runs Gemma 3 270M alone: its load from GGUF, resident memory, a 1x16 forward pass
# against HF transformers, and the tutorial's residual and head sweeps on the IOI pair
# against nnsight's batched cells in the same run. The torch and nnsight references load
# its dequantized weights from an HF directory under ~/.cache/loupe/hf, written on the first
# run (transformers takes about 50 s to dequantize the GGUF).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product loupe-bench >&2
models="${LOUPE_MODELS:-$HOME/.cache/loupe/models}"
if [ "${1:-}" = gemma3 ]; then
    shift
    exec .build/release/loupe-bench --name "Gemma 3 270M (GGUF Q4_K_M, dequantized to float32)" \
        --model "$models/gemma-3-270m-q4_k_m.gguf" --rows 1 --sweeps --sweep-kinds residual,heads "$@"
fi
gpt2="${LOUPE_BENCH_GPT2:-${TMPDIR:-/tmp}/loupe-gpt2-small-random}"
[ -f "$gpt2/model.safetensors" ] || python3 scripts/make_random_gpt2.py "$gpt2" >/dev/null
.build/release/loupe-bench --name "SmolLM2-135M (GGUF Q4_1, dequantized to float32)" --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --sweeps "$@"
.build/release/loupe-bench --name "GPT-2 small shape, seeded random float32 (scripts/make_random_gpt2.py)" --model "$gpt2" "$@"
