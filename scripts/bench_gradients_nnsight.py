#!/usr/bin/env python3
"""Times gradients on SmolLM2 with nnsight 0.8, as nnsight users write them, for comparison
with Loupe's reverse mode, and checks them against the torch-autograd golden file.

NEEDS torch, transformers, gguf, accelerate and nnsight (0.8.x). If torch, transformers or
nnsight cannot be imported it prints one line to stderr and exits with code 3, so a
benchmark can report "nnsight not installed" instead of failing.

The model is SmolLM2-135M-Instruct's Q4_1 GGUF dequantized to float32 by transformers
(the HF directory scripts/reference_forward.py keeps under ~/.cache/loupe/hf, made on
first use), loaded into nnsight.LanguageModel(dir, dispatch=True) with eager attention;
torch on --threads threads (default 2, as scripts/nnsight_reference.py). The seed IOI pair:

  clean      "After John and Mary went to the store, Mary gave a bottle of milk to"
  corrupted  "After John and Mary went to the store, John gave a bottle of milk to"
  metric     logit(" John") - logit(" Mary") at the last position (16 tokens)

Two cells, each timed --repeats times (default 5) after one warm-up run of both; medians:

  nnsight_gradient_trace_s   one trace of the corrupted prompt that takes the metric's
                             gradient at every decoder layer's output:
                                 with model.trace(CORRUPTED):
                                     outs = [layer.output for layer in layers]
                                     logits = model.lm_head.output
                                     logit_diff = logits[0, -1, john] - logits[0, -1, mary]
                                     with logit_diff.backward():
                                         for L in reversed(range(30)):
                                             grads[L] = outs[L].grad.save()
                             (nnsight 0.8 serves only .grad inside the backward block, and
                             in reverse forward order, so the outputs are taken before it.)
  nnsight_attribution_s      attribution patching over the residual stream: a clean trace
                             saving every layer output, a corrupted trace saving every
                             layer output and its gradient as above, then
                             ((clean - corrupted) * grad).sum(-1) per layer -> [30, 16].
  torch_gradient_s           for scale, the same gradients with plain torch: one forward
                             with hooks that retain_grad() each layer output, backward.

The weights keep requires_grad (nnsight's default: a backward needs a graph), so every
backward also computes the weight gradients; they are dropped between runs, outside the
timings. The gradients and the attribution matrix are compared with
Tests/Fixtures/models/smollm2-gradients.safetensors (scripts/make_gradient_fixtures.py):
grad.resid_post.{0,14,29}, grad.resid_pre.{14,29} (= the outputs of layers 13 and 28) and
attribution.residual, max |difference| relative to max(1, max |golden|) under 1e-5.

  python3 scripts/bench_gradients_nnsight.py [--gguf FILE] [--repeats 5] [--threads 2]

Prints one JSON line: {"nnsight_gradient_trace_s": ..., "nnsight_attribution_s": ...,
"torch_gradient_s": ..., "repeats": ..., "threads": ..., "grads_max_rel_diff": ...,
"attribution_max_rel_diff": ..., "match": true|false, ...}; exits 1 if match is false.
"""
import argparse
import json
import os
import statistics
import sys
import time

from nnsight_reference import CLEAN, CORRUPTED, EXIT_NO_TORCH, import_stack  # noqa: F401  (one prompt pair, one import path)

os.environ.setdefault("TQDM_DISABLE", "1")

CORRECT, INCORRECT = " John", " Mary"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "Tests", "Fixtures", "models", "smollm2-gradients.safetensors")
CHECKED = {0: "grad.resid_post.0", 13: "grad.resid_pre.14", 14: "grad.resid_post.14",
           28: "grad.resid_pre.29", 29: "grad.resid_post.29"}
TOL = 1e-5


def gradient_trace(model, john, mary):
    """nnsight: the metric's gradient at every decoder layer's output, corrupted prompt."""
    layers = model.model.layers
    grads = [None] * len(layers)  # outside the trace: filled in place
    with model.trace(CORRUPTED):
        outs = [layer.output for layer in layers]
        logits = model.lm_head.output
        logit_diff = logits[0, -1, john] - logits[0, -1, mary]
        with logit_diff.backward():
            for L in reversed(range(len(layers))):  # gradients arrive last layer first
                grads[L] = outs[L].grad.save()
    return grads


def attribution(model, john, mary):
    """nnsight's attribution-patching pattern over the residual stream: [layers, T]."""
    import torch

    layers = model.model.layers
    n = len(layers)
    clean_out, corrupted_out, grads = [], [], [None] * n
    with model.trace(CLEAN):
        for layer in layers:
            clean_out.append(layer.output.save())
    with model.trace(CORRUPTED):
        for layer in layers:
            corrupted_out.append(layer.output.save())
        logits = model.lm_head.output
        logit_diff = logits[0, -1, john] - logits[0, -1, mary]
        with logit_diff.backward():
            for L in reversed(range(n)):
                grads[L] = corrupted_out[L].grad.save()
    with torch.no_grad():
        return torch.stack([((clean_out[L] - corrupted_out[L]) * grads[L]).sum(-1)[0] for L in range(n)])


def torch_gradients(hf, ids, john, mary):
    """Plain torch: retain_grad() on each decoder layer's output, one backward."""
    outs = []

    def keep(module, args, out):
        t = out[0] if isinstance(out, tuple) else out
        t.retain_grad()
        outs.append(t)

    hooks = [layer.register_forward_hook(keep) for layer in hf.model.layers]
    try:
        logits = hf(ids, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    (logits[0, -1, john] - logits[0, -1, mary]).backward()
    return [t.grad for t in outs]


def timed(fn, repeats, reset):
    times, result = [], None
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    models = os.environ.get("LOUPE_MODELS") or os.path.expanduser("~/.cache/loupe/models")
    ap.add_argument("--gguf", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--golden", default=GOLDEN)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be positive")
    if not os.path.isfile(args.gguf):
        sys.exit(f"{args.gguf}: no such file (run scripts/fetch-models.sh or pass --gguf)")
    torch, transformers, nnsight = import_stack()
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_forward

    hf_dir = reference_forward.dequantized_directory(args.gguf)
    t0 = time.perf_counter()
    model = nnsight.LanguageModel(hf_dir, dispatch=True, dtype=torch.float32, attn_implementation="eager")
    load_s = time.perf_counter() - t0
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    john = model.tokenizer(CORRECT, add_special_tokens=False)["input_ids"]
    mary = model.tokenizer(INCORRECT, add_special_tokens=False)["input_ids"]
    assert len(john) == len(mary) == 1, (john, mary)
    john, mary = john[0], mary[0]
    ids = torch.tensor([model.tokenizer(CORRUPTED)["input_ids"]])

    def reset():  # the weight gradients each backward leaves behind
        model._module.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)

    reset()
    gradient_trace(model, john, mary)  # warm-up
    attribution(model, john, mary)
    torch_gradients(hf, ids, john, mary)
    grad_s, grad_all, grads = timed(lambda: gradient_trace(model, john, mary), args.repeats, reset)
    attr_s, attr_all, attr = timed(lambda: attribution(model, john, mary), args.repeats, reset)
    torch_s, torch_all, tgrads = timed(lambda: torch_gradients(hf, ids, john, mary), args.repeats, reset)
    reset()

    out = {"nnsight_gradient_trace_s": grad_s, "nnsight_attribution_s": attr_s, "torch_gradient_s": torch_s,
           "repeats": args.repeats, "threads": args.threads, "load_s": load_s,
           "nnsight_gradient_trace_all_s": grad_all, "nnsight_attribution_all_s": attr_all,
           "torch_gradient_all_s": torch_all, "nnsight": nnsight.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__}

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / max(1.0, b.abs().max().item())).item()

    # nnsight's and plain torch's gradients agree everywhere; the golden file has five layers.
    out["nnsight_vs_torch_max_rel_diff"] = max(rel(g[0], t[0]) for g, t in zip(grads, tgrads))
    if os.path.isfile(args.golden):
        golden = load_file(args.golden)
        out["grads_max_rel_diff"] = max(rel(grads[L][0], golden[key]) for L, key in CHECKED.items())
        out["attribution_max_rel_diff"] = rel(attr, golden["attribution.residual"])
        out["match"] = max(out["grads_max_rel_diff"], out["attribution_max_rel_diff"],
                           out["nnsight_vs_torch_max_rel_diff"]) < TOL
    else:
        out["match"] = out["nnsight_vs_torch_max_rel_diff"] < TOL
        out["note"] = f"{os.path.relpath(args.golden, REPO)} missing: compared with plain torch only"
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["match"] else 1)


if __name__ == "__main__":
    main()
