#!/usr/bin/env python3
"""Golden numbers for the Python client's tutorial tests, computed with nnsight.

NEEDS torch, transformers, gguf, accelerate, nnsight (0.8.x) and einops: a developer
machine, not CI. Writes these files under Tests/Fixtures/python/ (--model picks which;
repeat it for more, default all):

  tutorial-gpt2-random-nnsight.json
      The activation-patching tutorial's cells 7, 8, 9 and 13 (token ids of " John" and
      " Mary", the clean and corrupted logit differences, the batched residual-stream
      patching trace) on a GPT-2-small-shaped model with the seeded random weights of
      scripts/make_random_gpt2.py and GPT-2's real tokenizer (encoder.json + vocab.bpe
      from ~/.cache/loupe/models/gpt2-tokenizer, as scripts/fetch-models.sh fetches them).
  tutorial-smollm2-heads-nnsight.json                                   (--model smollm2)
      Cells 18-23 (attention-head patching with einops) with Llama-3.1-8B's constants
      replaced by SmolLM2-135M's (9 heads of 64, hidden 576, no BOS token so the answer ids
      sit at index 0), on the tutorial's own Lisa/Sarah prompts.
  tutorial-gemma3-heads-nnsight.json                                    (--model gemma3)
      The same cells with Gemma 3 270M's constants (4 heads of 256, hidden 640; its
      tokenizer adds BOS as Llama-3.1's does, so the answer ids sit at index 1, as the
      tutorial has them), on its Q4_K_M GGUF dequantized to float32.

The GPT-2 weights are written by scripts/make_random_gpt2.py into --gpt2-dir (default
$LOUPE_MODELS/gpt2-small-random) unless a model is already there.

nnsight 0.8 differs from the tutorial's 0.3 surface in three ways the cells below adapt
to: transformers 5 decoder layers return a bare tensor (no `[0]`), the prompt's token ids
are read from the embedding's input (no `tracer.invoker.inputs`), and the invokes of a
trace run as coroutines, so a module's output is read into a variable before writing into
it (see scripts/nnsight_reference.py).

  python3 scripts/make_tutorial_golden.py [--model gpt2|smollm2|gemma3]... [--gpt2-dir DIR]
      [--gguf FILE] [--gemma3-gguf FILE]
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nnsight_reference as ref  # noqa: E402  (the shared nnsight loading and JSON layout)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "Tests", "Fixtures", "python")
MODELS = os.environ.get("LOUPE_MODELS") or os.path.expanduser("~/.cache/loupe/models")

# Tutorial cell 6 and cells 18-19.
CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"
HEAD_PROMPTS = [
    "When Lisa and Sarah went to the cinema, Lisa gave the ticket to",
    "When Lisa and Sarah went to the cinema, Sarah gave the ticket to",
]
HEAD_ANSWERS = [(" Sarah", " Lisa"), (" Lisa", " Sarah")]


def gpt2_random(directory):
    """The seeded GPT-2-small-shaped weights with GPT-2's real tokenizer files beside them."""
    if not os.path.isfile(os.path.join(directory, "model.safetensors")):
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_random_gpt2.py"), directory],
                       check=True, stdout=subprocess.DEVNULL)
    for name in ("encoder.json", "vocab.bpe"):
        target = os.path.join(directory, name)
        if not os.path.exists(target):
            os.symlink(os.path.join(MODELS, "gpt2-tokenizer", name), target)
    torch, _, nnsight = ref.import_stack()
    from transformers import GPT2LMHeadModel, GPT2Tokenizer

    hf = GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = GPT2Tokenizer(os.path.join(directory, "encoder.json"), os.path.join(directory, "vocab.bpe"))
    return nnsight.LanguageModel(hf, tokenizer=tokenizer)


def residual_cells(model):
    """Cells 7, 8, 9 and 13 on GPT-2."""
    correct_index = model.tokenizer(" John")["input_ids"][0]
    incorrect_index = model.tokenizer(" Mary")["input_ids"][0]
    layers = model.transformer.h
    n_layers = len(layers)
    with model.trace(CLEAN):
        clean_tokens = model.transformer.wte.input.save()
    clean_tokens = clean_tokens[0].tolist()

    ioi_patching_results = []
    with model.trace() as tracer:
        with tracer.invoke(CLEAN):
            clean_hs = []
            for layer_idx in range(n_layers):
                clean_hs.append(layers[layer_idx].output)
            clean_logits = model.lm_head.output
            clean_logit_diff = (clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]).save()
        with tracer.invoke(CORRUPTED):
            corrupted_logits = model.lm_head.output
            corrupted_logit_diff = (
                corrupted_logits[0, -1, correct_index] - corrupted_logits[0, -1, incorrect_index]).save()
        for layer_idx in range(n_layers):
            _ioi_patching_results = []
            for token_idx in range(len(clean_tokens)):
                with tracer.invoke(CORRUPTED):
                    hs = layers[layer_idx].output
                    hs[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]
                    patched_logits = model.lm_head.output
                    patched_logit_diff = (patched_logits[0, -1, correct_index]
                                          - patched_logits[0, -1, incorrect_index])
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff)
                    _ioi_patching_results.append(patched_result.save())
            ioi_patching_results.append(_ioi_patching_results)
    decoded = [model.tokenizer.decode(token) for token in clean_tokens]
    return {
        "clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED,
        "correct_index": correct_index, "incorrect_index": incorrect_index,
        "clean_tokens": clean_tokens,
        "token_labels": [f"{token}_{index}" for index, token in enumerate(decoded)],
        "clean_logit_diff": float(clean_logit_diff), "corrupted_logit_diff": float(corrupted_logit_diff),
        "values": [[float(v) for v in row] for row in ioi_patching_results],
    }


# The tutorial's constants per model: heads, hidden size, and where the answer's id sits in
# `tokenizer(answer)["input_ids"]` (after BOS where the tokenizer adds one).
HEAD_CONSTANTS = {"smollm2": (9, 576, 0), "gemma3": (4, 640, 1)}


def head_cells(llm, name):
    """Cells 20-22 with the model's constants."""
    import einops

    n_heads, d_model, answer_index = HEAD_CONSTANTS[name]
    answer_token_indices = [[llm.tokenizer(HEAD_ANSWERS[i][j])["input_ids"][answer_index] for j in range(2)]
                            for i in range(len(HEAD_ANSWERS))]
    # The index picks the answer's own token, not BOS.
    assert answer_token_indices == [[llm.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in pair]
                                    for pair in HEAD_ANSWERS], answer_token_indices
    n_layers = len(llm.model.layers)
    prompt_id = 0
    corrupt_id = prompt_id + 1 if prompt_id % 2 == 0 else prompt_id - 1
    ioi_patching_results = []
    with llm.trace() as tracer:
        with tracer.invoke(HEAD_PROMPTS[prompt_id]):
            clean_tokens = llm.model.embed_tokens.input.save()
            z_hs = {}
            for layer_idx in range(n_layers):
                z = llm.model.layers[layer_idx].self_attn.o_proj.input
                z_reshaped = einops.rearrange(z, "b s (nh dh) -> b s nh dh", nh=n_heads)
                for head_idx in range(n_heads):
                    z_hs[layer_idx, head_idx] = z_reshaped[:, :, head_idx, :]
            clean_logits = llm.lm_head.output
            clean_logit_diff = (clean_logits[0, -1, answer_token_indices[prompt_id][0]]
                                - clean_logits[0, -1, answer_token_indices[prompt_id][1]]).save()
        with tracer.invoke(HEAD_PROMPTS[corrupt_id]):
            corrupted_logits = llm.lm_head.output
            corrupted_logit_diff = (corrupted_logits[0, -1, answer_token_indices[prompt_id][0]]
                                    - corrupted_logits[0, -1, answer_token_indices[prompt_id][1]]).save()
        for layer_idx in range(n_layers):
            _ioi_patching_results = []
            for head_idx in range(n_heads):
                with tracer.invoke(HEAD_PROMPTS[corrupt_id]):
                    z_corrupt = llm.model.layers[layer_idx].self_attn.o_proj.input
                    z_corrupt = einops.rearrange(z_corrupt, "b s (nh dh) -> b s nh dh", nh=n_heads)
                    z_corrupt[:, :, head_idx, :] = z_hs[layer_idx, head_idx]
                    z_corrupt = einops.rearrange(z_corrupt, "b s nh dh -> b s (nh dh)", nh=n_heads)
                    llm.model.layers[layer_idx].self_attn.o_proj.input = z_corrupt
                    patched_logits = llm.lm_head.output
                    patched_logit_diff = (patched_logits[0, -1, answer_token_indices[prompt_id][0]]
                                          - patched_logits[0, -1, answer_token_indices[prompt_id][1]])
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff)
                    _ioi_patching_results.append(patched_result.save())
            ioi_patching_results.append(_ioi_patching_results)
    assert d_model == llm.config.hidden_size and n_heads == llm.config.num_attention_heads
    return {
        "prompts": HEAD_PROMPTS, "answers": HEAD_ANSWERS, "prompt_id": prompt_id,
        "answer_token_indices": answer_token_indices,
        "clean_tokens": clean_tokens[0].tolist(),
        "n_heads": n_heads, "d_model": d_model, "answer_index": answer_index,
        "clean_logit_diff": float(clean_logit_diff), "corrupted_logit_diff": float(corrupted_logit_diff),
        "values": [[float(v) for v in row] for row in ioi_patching_results],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpt2-dir", default=os.path.join(MODELS, "gpt2-small-random"))
    ap.add_argument("--gguf", default=ref.default_gguf("smollm2"), help="SmolLM2's GGUF")
    ap.add_argument("--gemma3-gguf", default=ref.default_gguf("gemma3"), help="Gemma 3 270M's GGUF")
    ap.add_argument("--model", action="append", choices=["gpt2", "smollm2", "gemma3"],
                    help="which golden file to write (repeatable; default all)")
    args = ap.parse_args()
    chosen = args.model or ["gpt2", "smollm2", "gemma3"]
    torch, transformers, nnsight = ref.import_stack()
    torch.set_num_threads(2)
    import importlib.metadata as md

    versions = {"nnsight_version": md.version("nnsight"), "transformers_version": transformers.__version__,
                "torch_version": torch.__version__}
    os.makedirs(OUT_DIR, exist_ok=True)
    if "gpt2" in chosen:
        write_gpt2(args, versions)
    models = {
        "smollm2": (args.gguf, "SmolLM2-135M-Instruct.Q4_1 (GGUF dequantized to float32 by transformers; eager attention)"),
        "gemma3": (args.gemma3_gguf, "gemma-3-270m-q4_k_m (Q4_K_M GGUF dequantized to float32 by transformers; eager attention)"),
    }
    for name in ("smollm2", "gemma3"):
        if name not in chosen:
            continue
        gguf, description = models[name]
        with torch.no_grad():
            heads = head_cells(ref.load(gguf), name)
        heads = {"model": description, **versions, **heads}
        with open(os.path.join(OUT_DIR, f"tutorial-{name}-heads-nnsight.json"), "w") as f:
            f.write(ref.dumps(heads) + "\n")
        print(f"{name} heads: clean {heads['clean_logit_diff']:.4f}, corrupted {heads['corrupted_logit_diff']:.4f}",
              file=sys.stderr)


def write_gpt2(args, versions):
    torch, _, _ = ref.import_stack()
    with torch.no_grad():
        gpt2 = residual_cells(gpt2_random(args.gpt2_dir))
    gpt2 = {"model": "GPT-2 small shape, seeded random weights (scripts/make_random_gpt2.py), GPT-2's tokenizer",
            **versions, **gpt2}
    with open(os.path.join(OUT_DIR, "tutorial-gpt2-random-nnsight.json"), "w") as f:
        f.write(ref.dumps(gpt2) + "\n")
    print(f"gpt2: clean {gpt2['clean_logit_diff']:.4f}, corrupted {gpt2['corrupted_logit_diff']:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
