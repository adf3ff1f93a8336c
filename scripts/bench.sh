#!/usr/bin/env bash
# The engine benchmarks: SmolLM2 and a GPT-2-small-shaped model with seeded random weights,
# each in a process of its own. Every figure is a ratio against a baseline measured in the
# same run (sgemm on the same shapes; HF transformers where torch is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product loupe-bench >&2
gpt2="${LOUPE_BENCH_GPT2:-${TMPDIR:-/tmp}/loupe-gpt2-small-random}"
[ -f "$gpt2/model.safetensors" ] || python3 scripts/make_random_gpt2.py "$gpt2" >/dev/null
models="${LOUPE_MODELS:-$HOME/.cache/loupe/models}"
.build/release/loupe-bench --name "SmolLM2-135M (GGUF Q4_1, dequantized to float32)" --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --sweeps "$@"
.build/release/loupe-bench --name "GPT-2 small shape, seeded random float32 (scripts/make_random_gpt2.py)" --model "$gpt2" "$@"
