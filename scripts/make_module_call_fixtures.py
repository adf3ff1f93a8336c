#!/usr/bin/env python3
"""Regenerates Loupe's module-call golden files (the trace ops `call` and `weight`).

NEEDS torch + transformers + safetensors (gguf for the SmolLM2 part). Like
scripts/make_gradient_fixtures.py it runs on a developer machine only, reuses the committed
tiny models of scripts/make_model_fixtures.py, runs torch on one thread in float32, and CI
reads the committed outputs.

    python3 scripts/make_module_call_fixtures.py [--only KIND]... [--smollm2 GGUF] [--skip-smollm2]

What it writes
--------------
A) Tests/Fixtures/models/<kind>/module-calls.safetensors for every tiny kind, from HF's
   modules called directly on sequence 0 of the kind's cases.json (T tokens, batch 1):
     hidden.<L>              [T, D]  decoder layer L's output (element 0 of a tuple), as the
                                     forward pass computes it.
     lens.<NORM>.<L>         [T, V]  lm_head(NORM(hidden.<L>)): the logit lens, NORM the base
                                     model's final norm by its module path (model.norm,
                                     transformer.ln_f, gpt_neox.final_layer_norm), no final
                                     soft-cap (that is not lm_head's).
     input.<PATH>, call.<PATH>       a module called on an input: PATH = layer 0's MLP on
                                     hidden.0, and layer 1 itself on hidden.0 (its output is
                                     hidden.1, positions 0..T-1).
     param_sum.<NAME>        [2]     sum and sum of |x| (float64, stored float32) of every
                                     parameter, tied ones included (named_parameters with
                                     duplicates), in HF's shape and layout.
     param_row.<NAME>        [<=16]  its first 16 values, flattened.
   The Swift conformance suite (`module-calls`) compares every key it finds.

B) Tests/Fixtures/models/smollm2-lens.safetensors, from the dequantized GGUF loaded into
   transformers (as make_model_fixtures.py's SmolLM2 golden): for the 16-token prompt
   below, tokens [16] (float32 ids), and per decoder layer L the logit lens at the last
   position, lm_head(model.norm(layers[L].output))[-1]: top_values [layers, 5] and
   top_ids [layers, 5] (float32 ids, best first).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import make_model_fixtures as mmf

torch.set_num_threads(1)
torch.manual_seed(0)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "models")
SMOLLM2_PROMPT = "The Eiffel Tower is in the city of Paris, and the Colosseum"


def parts(model):
    """(base model path, final norm path, layer list path) of a causal LM, by HF's names."""
    for base in ("model", "transformer", "gpt_neox"):
        if hasattr(model, base):
            module = getattr(model, base)
            norm = next(n for n in ("norm", "ln_f", "final_layer_norm") if hasattr(module, n))
            layers = next(n for n in ("layers", "h") if hasattr(module, n))
            return base, f"{base}.{norm}", f"{base}.{layers}"
    raise SystemExit(f"no base model in {type(model).__name__}")


def layer_outputs(model, layers_path, ids):
    """Each decoder layer's output (element 0 of a tuple) on ids, batch dimension dropped."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out)[0].detach()))
             for layer in model.get_submodule(layers_path)]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return outputs


def save(tensors, path):
    for k, v in tensors.items():
        assert v.dtype == torch.float32, k
    save_file({k: v.contiguous().clone() for k, v in sorted(tensors.items())}, path, metadata={"generator": "make_module_call_fixtures.py"})
    return os.path.getsize(path)


def make_tiny(kind):
    d = os.path.join(FIXTURES, kind)
    with open(os.path.join(d, "cases.json")) as f:
        ids = json.load(f)["sequences"][0]
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    _, norm_path, layers_path = parts(model)
    norm, head = model.get_submodule(norm_path), model.get_output_embeddings()
    hidden = layer_outputs(model, layers_path, ids)
    t = {}
    with torch.no_grad():
        for L, h in enumerate(hidden):
            t[f"hidden.{L}"] = h
            t[f"lens.{norm_path}.{L}"] = head(norm(h))
        mlp_path = f"{layers_path}.0.mlp"
        t[f"input.{mlp_path}"] = hidden[0]
        t[f"call.{mlp_path}"] = model.get_submodule(mlp_path)(hidden[0][None])[0]
        if len(hidden) > 1:
            t[f"input.{layers_path}.1"] = hidden[0]
            t[f"call.{layers_path}.1"] = hidden[1]
        for name, p in model.named_parameters(remove_duplicate=False):
            p64 = p.detach().double()
            t[f"param_sum.{name}"] = torch.tensor([p64.sum().item(), p64.abs().sum().item()], dtype=torch.float32)
            t[f"param_row.{name}"] = p.detach().reshape(-1)[:16].clone()
    path = os.path.join(d, "module-calls.safetensors")
    return path, save(t, path)


def make_smollm2(gguf):
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(SMOLLM2_PROMPT)["input_ids"]
    assert len(ids) == 16, (len(ids), ids)
    hidden = layer_outputs(model, "model.layers", ids)
    with torch.no_grad():
        lens = torch.stack([model.lm_head(model.model.norm(h[-1])) for h in hidden])
    values, indices = lens.topk(5, dim=-1)
    path = os.path.join(FIXTURES, "smollm2-lens.safetensors")
    return path, save({"tokens": torch.tensor(ids, dtype=torch.float32), "top_values": values,
                       "top_ids": indices.to(torch.float32)}, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=mmf.TINY_KINDS + ["smollm2"])
    ap.add_argument("--smollm2", default=os.path.join(os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models")),
                                                       "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    for kind in mmf.TINY_KINDS:
        if not args.only or kind in args.only:
            print(*make_tiny(kind))
    if not args.skip_smollm2 and (not args.only or "smollm2" in args.only):
        print(*make_smollm2(args.smollm2))


if __name__ == "__main__":
    main()
