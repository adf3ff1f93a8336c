#!/usr/bin/env python3
"""Reference activation-patching sweeps for Loupe, computed with nnsight.

NEEDS torch, transformers, gguf, accelerate and nnsight (0.8.x); einops is used when
installed (a plain reshape otherwise). If torch, transformers or nnsight cannot be
imported it prints one line to stderr and exits with code 3, so a benchmark can report
"nnsight not installed" instead of failing.

Reproduces the two batched experiments of nnsight's activation-patching tutorial on
SmolLM2-135M-Instruct (the Q4_1 GGUF dequantized to float32 by transformers, eager
attention, 2 torch threads) or, with --model gemma3, on Gemma 3 270M (its Q4_K_M GGUF
likewise), on the tutorial's IOI pair:

  clean      "After John and Mary went to the store, Mary gave a bottle of milk to"
  corrupted  "After John and Mary went to the store, John gave a bottle of milk to"
  answers    " John" (correct) and " Mary" (incorrect)

  residual   tutorial cell 13: one trace, one invoke for the clean prompt, one for the
             corrupted prompt, then one corrupted invoke per (layer, position) that
             overwrites [:, position, :] of that decoder layer's output with the clean
             run's. SmolLM2: 2 + 30 x 16 = 482 rows in one forward; Gemma 3, whose
             tokenizer puts BOS (id 2) first: 2 + 18 x 17 = 308.
  heads      tutorial cell 22 with the model's shapes (SmolLM2: 9 heads of 64, hidden
             576; Gemma 3: 4 heads of 256, hidden 640, attention width 1024): the input
             of self_attn.o_proj is rearranged 'b s (nh dh) -> b s nh dh', one head is
             replaced by the clean run's and the result written back through
             `o_proj.input = ...`. SmolLM2: 2 + 30 x 9 = 272 rows in one forward;
             Gemma 3: 2 + 18 x 4 = 74.

Each cell is the normalized logit difference
  (patched_diff - corrupted_diff) / (clean_diff - corrupted_diff)
with diff = logit(" John") - logit(" Mary") at the last position. The answers are
tokenized without special tokens (`add_special_tokens=False`), so each answer's id is at
index 0 for both models (Gemma's tokenizer would otherwise put BOS at index 0).

The traces run under torch.no_grad() (the tutorial leaves autograd on; the values are
the same and the batched forward needs far less memory without it).

  python3 scripts/nnsight_reference.py [--model smollm2|gemma3] [--out FILE]
      Runs both sweeps, checks them (see `check`), and writes the JSON fixture
      (default Tests/Fixtures/sweeps/smollm2-ioi-nnsight.json, gemma3-ioi-nnsight.json).
  python3 scripts/nnsight_reference.py [--model M] --time [--repeats N]
      Runs only the two batched traces, N times each after one small warm-up trace, and
      prints one JSON line {"residual_s": ..., "heads_s": ...} (medians, seconds).

The model is $LOUPE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf or
$LOUPE_MODELS/gemma-3-270m-q4_k_m.gguf (default ~/.cache/loupe/models;
scripts/fetch-models.sh puts them there), or --gguf FILE. With --hf-cache (as the
benchmarks use it) the dequantized weights are kept as an HF directory under
~/.cache/loupe/hf the first time and loaded from there after (see
scripts/reference_forward.py): transformers takes about 50 s to dequantize Gemma 3.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time
import warnings

EXIT_NO_TORCH = 3
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"
CORRECT, INCORRECT = " John", " Mary"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = os.path.join(REPO, "Tests", "Fixtures", "sweeps")


class Spec:
    """One model's file, fixture and what its checks expect."""

    def __init__(self, file, weights, fixture, diffs, first, residual_spots, head_spots):
        self.file, self.weights, self.fixture = file, weights, os.path.join(SWEEPS, fixture)
        # The seed pair's clean and corrupted logit differences (HF transformers, MODELS.md
        # and Tests/Fixtures/models/*-golden.json) and the first position where they differ.
        self.diffs, self.first = diffs, first
        # Cells re-run as one trace per patch (tutorial cell 10 style) to check the batched
        # sweeps: (layer, position) for the residual sweep, (layer, head) for the head sweep.
        self.residual_spots, self.head_spots = residual_spots, head_spots


MODELS = {
    "smollm2": Spec("SmolLM2-135M-Instruct.Q4_1.gguf",
                    "Q4_1 GGUF dequantized to float32 by transformers; eager attention",
                    "smollm2-ioi-nnsight.json", (5.137, -3.829), 9,
                    [(0, 9), (21, 15), (29, 15)], [(23, 3), (24, 4)]),
    # BOS (id 2) first: the pair is 17 tokens and differs at 10.
    "gemma3": Spec("gemma-3-270m-q4_k_m.gguf",
                   "Q4_K_M GGUF (Q5_0/Q4_K/Q8_0/Q6_K) dequantized to float32 by transformers; eager attention",
                   "gemma3-ioi-nnsight.json", (2.813, -4.809), 10,
                   [(0, 10), (12, 16), (17, 16)], [(9, 1), (14, 3)]),
}


def import_stack():
    try:
        import torch
        import transformers
        import nnsight
    except Exception as e:  # ImportError, or a broken install raising something else
        print(f"nnsight not installed: cannot import torch/transformers/nnsight "
              f"({type(e).__name__}: {e})".replace("\n", " "), file=sys.stderr)
        sys.exit(EXIT_NO_TORCH)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LanguageModel is deprecated.*")
    warnings.filterwarnings("ignore", message=".*requires_grad.*")
    return torch, transformers, nnsight


def rearrange_fns():
    """einops.rearrange for the two head reshapes, or an equivalent reshape."""
    try:
        import einops

        split = lambda z, nh: einops.rearrange(z, "b s (nh dh) -> b s nh dh", nh=nh)
        merge = lambda z, nh: einops.rearrange(z, "b s nh dh -> b s (nh dh)", nh=nh)
        return split, merge, "einops"
    except ImportError:
        split = lambda z, nh: z.reshape(z.shape[0], z.shape[1], nh, z.shape[2] // nh)
        merge = lambda z, nh: z.reshape(z.shape[0], z.shape[1], z.shape[2] * z.shape[3])
        return split, merge, "reshape"


def default_gguf(model="smollm2"):
    models = os.environ.get("LOUPE_MODELS") or os.path.expanduser("~/.cache/loupe/models")
    return os.path.join(models, MODELS[model].file)


def load(path, hf_cache=False):
    """nnsight's LanguageModel on the GGUF dequantized to float32 (eager attention); with
    hf_cache, from the HF directory scripts/reference_forward.py keeps of it."""
    torch, _, nnsight = import_stack()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isfile(path):
        sys.exit(f"{path}: no such file (run scripts/fetch-models.sh or pass --gguf)")
    if hf_cache:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import reference_forward

        hf_dir = reference_forward.dequantized_directory(path)
        hf = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        return nnsight.LanguageModel(hf, tokenizer=tokenizer)
    d, name = os.path.split(os.path.abspath(path))
    hf = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
    return nnsight.LanguageModel(hf, tokenizer=tokenizer)


def answer_ids(model):
    # Without special tokens: SmolLM2's tokenizer adds none, Gemma's adds BOS (id 2), so
    # `tokenizer(" John")` is [2, 3415] there (the tutorial's Llama-3.1 cell takes index 1
    # for the same reason). Without them the answer token is at index 0 for every model.
    ids = [model.tokenizer(word, add_special_tokens=False)["input_ids"] for word in (CORRECT, INCORRECT)]
    assert all(len(i) == 1 for i in ids), ids
    return ids[0][0], ids[1][0]


# -- tutorial cells 8-10: one trace per run -------------------------------------------

def clean_and_corrupted(model, correct, incorrect):
    """Cells 8 and 9: clean residual stream, o_proj inputs, both logit differences."""
    layers = model.model.layers
    # Created outside the trace: nnsight 0.8 hands back only values marked with
    # .save() (a list built inside the block stays inside), but an outer list is
    # filled in place.
    clean_z, clean_hs = [], []
    with model.trace(CLEAN):
        clean_tokens = model.model.embed_tokens.input.save()
        for layer in layers:
            clean_z.append(layer.self_attn.o_proj.input.save())
            clean_hs.append(layer.output.save())
        logits = model.lm_head.output
        clean_diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
    with model.trace(CORRUPTED):
        corrupted_tokens = model.model.embed_tokens.input.save()
        logits = model.lm_head.output
        corrupted_diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
    return dict(clean_tokens=clean_tokens[0].tolist(), corrupted_tokens=corrupted_tokens[0].tolist(),
                clean_hs=clean_hs, clean_z=clean_z,
                clean_diff=float(clean_diff), corrupted_diff=float(corrupted_diff))


def single_residual_patch(model, ref, layer_idx, token_idx, correct, incorrect):
    """Cell 10: one corrupted trace with one residual patch."""
    clean_hs = ref["clean_hs"]
    with model.trace(CORRUPTED):
        hs = model.model.layers[layer_idx].output
        hs[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]
        logits = model.lm_head.output
        diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
    return (float(diff) - ref["corrupted_diff"]) / (ref["clean_diff"] - ref["corrupted_diff"])


def single_head_patch(model, ref, layer_idx, head_idx, correct, incorrect):
    """Cell 22's patch for one (layer, head), in a trace of its own."""
    split, merge, _ = rearrange_fns()
    n_heads = model.config.num_attention_heads
    z_clean = split(ref["clean_z"][layer_idx], n_heads)[:, :, head_idx, :]
    with model.trace(CORRUPTED):
        o_proj = model.model.layers[layer_idx].self_attn.o_proj
        z = split(o_proj.input, n_heads)
        z[:, :, head_idx, :] = z_clean
        o_proj.input = merge(z, n_heads)
        logits = model.lm_head.output
        diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
    return (float(diff) - ref["corrupted_diff"]) / (ref["clean_diff"] - ref["corrupted_diff"])


# -- tutorial cell 13: the residual sweep in one batched trace -------------------------

def residual_sweep(model, n_tokens, correct, incorrect):
    layers = model.model.layers
    n_layers = len(layers)
    results = []
    t0 = time.perf_counter()
    with model.trace() as tracer:
        with tracer.invoke(CLEAN):
            # Llama decoder layers return a bare tensor in transformers 5: no [0].
            # Filled layer by layer rather than by the tutorial's list comprehension:
            # the invokes run as coroutines over one forward, so a comprehension would
            # bind `clean_hs` only after layer 29, and the patching invokes, which
            # need layer i's entry at layer i, would find no such name.
            clean_hs = []
            for layer_idx in range(n_layers):
                clean_hs.append(layers[layer_idx].output)
            clean_logits = model.lm_head.output
            clean_logit_diff = (clean_logits[0, -1, correct]
                                - clean_logits[0, -1, incorrect]).save()
        with tracer.invoke(CORRUPTED):
            corrupted_logits = model.lm_head.output
            corrupted_logit_diff = (corrupted_logits[0, -1, correct]
                                    - corrupted_logits[0, -1, incorrect]).save()
        for layer_idx in range(n_layers):
            row = []
            for token_idx in range(n_tokens):
                with tracer.invoke(CORRUPTED):
                    # Read the output into a variable, then write into it: Python
                    # evaluates the right-hand side of `x[...] = y` before `x`, so the
                    # one-line form would index clean_hs before this block has waited
                    # for the layer, i.e. before the clean block has appended it
                    # (IndexError in nnsight 0.8).
                    hs = layers[layer_idx].output
                    hs[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]
                    patched_logits = model.lm_head.output
                    patched_logit_diff = (patched_logits[0, -1, correct]
                                          - patched_logits[0, -1, incorrect])
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff)
                    row.append(patched_result.save())
            results.append(row)
    seconds = time.perf_counter() - t0
    return dict(clean_logit_diff=float(clean_logit_diff),
                corrupted_logit_diff=float(corrupted_logit_diff),
                values=[[float(v) for v in row] for row in results], seconds=seconds)


# -- tutorial cell 22: the head sweep in one batched trace -----------------------------

def head_sweep(model, correct, incorrect):
    split, merge, _ = rearrange_fns()
    layers = model.model.layers
    n_layers = len(layers)
    n_heads = model.config.num_attention_heads  # SmolLM2 9, Gemma 3 4
    results = []
    t0 = time.perf_counter()
    with model.trace() as tracer:
        with tracer.invoke(CLEAN):
            z_hs = {}
            for layer_idx in range(n_layers):
                z = layers[layer_idx].self_attn.o_proj.input  # SmolLM2 [1, 16, 576]
                z_reshaped = split(z, n_heads)  # SmolLM2 [1, 16, 9, 64]
                for head_idx in range(n_heads):
                    z_hs[layer_idx, head_idx] = z_reshaped[:, :, head_idx, :]
            clean_logits = model.lm_head.output
            clean_logit_diff = (clean_logits[0, -1, correct]
                                - clean_logits[0, -1, incorrect]).save()
        with tracer.invoke(CORRUPTED):
            corrupted_logits = model.lm_head.output
            corrupted_logit_diff = (corrupted_logits[0, -1, correct]
                                    - corrupted_logits[0, -1, incorrect]).save()
        for layer_idx in range(n_layers):
            row = []
            for head_idx in range(n_heads):
                with tracer.invoke(CORRUPTED):
                    z_corrupt = layers[layer_idx].self_attn.o_proj.input
                    z_corrupt = split(z_corrupt, n_heads)
                    z_corrupt[:, :, head_idx, :] = z_hs[layer_idx, head_idx]
                    z_corrupt = merge(z_corrupt, n_heads)
                    layers[layer_idx].self_attn.o_proj.input = z_corrupt
                    patched_logits = model.lm_head.output
                    patched_logit_diff = (patched_logits[0, -1, correct]
                                          - patched_logits[0, -1, incorrect])
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff)
                    row.append(patched_result.save())
            results.append(row)
    seconds = time.perf_counter() - t0
    return dict(clean_logit_diff=float(clean_logit_diff),
                corrupted_logit_diff=float(corrupted_logit_diff),
                values=[[float(v) for v in row] for row in results], seconds=seconds)


# -- checks ---------------------------------------------------------------------------

def check(spec, model, ref, residual, heads, correct, incorrect):
    """Sanity checks; returns a list of failure messages and the spot-check records."""
    failures, spot = [], {"residual": [], "heads": []}
    tol = 1e-4
    for name, sweep in (("residual", residual), ("heads", heads)):
        for key, want in (("clean_logit_diff", ref["clean_diff"]),
                          ("corrupted_logit_diff", ref["corrupted_diff"])):
            if abs(sweep[key] - want) > tol:
                failures.append(f"{name} {key} {sweep[key]:.6f} != single trace {want:.6f}")
    want_clean, want_corrupted = spec.diffs
    if abs(ref["clean_diff"] - want_clean) > 5e-3 or abs(ref["corrupted_diff"] - want_corrupted) > 5e-3:
        failures.append(f"logit diffs {ref['clean_diff']:.4f} / {ref['corrupted_diff']:.4f}, "
                        f"expected {want_clean} / {want_corrupted}")

    values = residual["values"]
    first = next(i for i, (a, b) in enumerate(zip(ref["clean_tokens"], ref["corrupted_tokens"]))
                 if a != b)
    if first != spec.first:
        failures.append(f"first differing token at {first}, expected {spec.first}")
    worst = max(abs(v) for row in values for v in row[:first])
    if worst > 1e-6:
        failures.append(f"residual cells before position {first} reach {worst:.3g}, expected 0")
    if abs(values[0][first] - 1.0) > 0.1:
        failures.append(f"residual[0][{first}] = {values[0][first]:.4f}, expected ~1")
    if abs(values[-1][-1] - 1.0) > 1e-4:
        failures.append(f"residual[-1][-1] = {values[-1][-1]:.6f}, expected 1")

    for layer_idx, token_idx in spec.residual_spots:
        single = single_residual_patch(model, ref, layer_idx, token_idx, correct, incorrect)
        batched = values[layer_idx][token_idx]
        spot["residual"].append({"layer": layer_idx, "position": token_idx,
                                 "single": single, "batched": batched})
        if abs(single - batched) > tol:
            failures.append(f"residual[{layer_idx}][{token_idx}]: batched {batched:.6f}, "
                            f"single trace {single:.6f}")
    for layer_idx, head_idx in spec.head_spots:
        single = single_head_patch(model, ref, layer_idx, head_idx, correct, incorrect)
        batched = heads["values"][layer_idx][head_idx]
        spot["heads"].append({"layer": layer_idx, "head": head_idx,
                              "single": single, "batched": batched})
        if abs(single - batched) > tol:
            failures.append(f"heads[{layer_idx}][{head_idx}]: batched {batched:.6f}, "
                            f"single trace {single:.6f}")
    return failures, spot


# -- output ---------------------------------------------------------------------------

_SCALAR = r'(?:-?[0-9][-+0-9.eE]*|"(?:[^"\\]|\\.)*")'
_FLAT_LIST = re.compile(r"\[\s*(" + _SCALAR + r"(?:,\s*" + _SCALAR + r")*)\s*\]")


def dumps(obj):
    """indent=1 JSON with every list of scalars (a matrix row, the tokens) on one line."""
    text = json.dumps(obj, indent=1)
    return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def summary(name, sweep, cols):
    values = sweep["values"]
    cells = [(v, i, j) for i, row in enumerate(values) for j, v in enumerate(row)]
    hi, lo = max(cells), min(cells)
    return (f"{name}: clean {sweep['clean_logit_diff']:.4f}, corrupted "
            f"{sweep['corrupted_logit_diff']:.4f}, max {hi[0]:.4f} at layer {hi[1]} {cols} "
            f"{hi[2]}, min {lo[0]:.4f} at layer {lo[1]} {cols} {lo[2]}, "
            f"{sweep['seconds']:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    ap.add_argument("--gguf", default=None, help="model file (default $LOUPE_MODELS/ and the model's file name)")
    ap.add_argument("--out", default=None, help="fixture to write (default Tests/Fixtures/sweeps/MODEL-ioi-nnsight.json)")
    ap.add_argument("--time", action="store_true", help="only time the two batched traces")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--hf-cache", action="store_true",
                    help="load the dequantized weights from (or first save them to) an HF directory under ~/.cache/loupe/hf")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be positive")
    spec = MODELS[args.model]

    torch, transformers, nnsight = import_stack()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = load(args.gguf or default_gguf(args.model), hf_cache=args.hf_cache)
    load_s = time.perf_counter() - t0
    correct, incorrect = answer_ids(model)
    n_tokens = len(model.tokenizer(CLEAN)["input_ids"])  # with BOS where the tokenizer adds it

    with torch.no_grad():
        if args.time:
            with model.trace(CORRUPTED):  # warm-up: first-trace costs stay out of the timings
                model.lm_head.output.save()
            res_t, head_t = [], []
            for _ in range(args.repeats):
                res_t.append(residual_sweep(model, n_tokens, correct, incorrect)["seconds"])
                head_t.append(head_sweep(model, correct, incorrect)["seconds"])
            print(json.dumps({"residual_s": statistics.median(res_t),
                              "heads_s": statistics.median(head_t)}), flush=True)
            return

        ref = clean_and_corrupted(model, correct, incorrect)
        residual = residual_sweep(model, n_tokens, correct, incorrect)
        print(summary("residual", residual, "position"), file=sys.stderr)
        heads = head_sweep(model, correct, incorrect)
        print(summary("heads", heads, "head"), file=sys.stderr)
        failures, spot = check(spec, model, ref, residual, heads, correct, incorrect)

    if failures:
        for f in failures:
            print("CHECK FAILED: " + f, file=sys.stderr)
        sys.exit(1)

    import importlib.metadata as md
    _, _, how = rearrange_fns()
    tok = model.tokenizer
    out = {
        "model": spec.file.rsplit(".gguf", 1)[0],
        "weights": spec.weights,
        "nnsight_version": md.version("nnsight"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "clean_prompt": CLEAN,
        "corrupted_prompt": CORRUPTED,
        "clean_tokens": ref["clean_tokens"],
        "corrupted_tokens": ref["corrupted_tokens"],
        "token_labels": [f"{tok.decode([t])}_{i}" for i, t in enumerate(ref["clean_tokens"])],
        "answers": [CORRECT, INCORRECT],
        "answer_ids": [correct, incorrect],
        "answer_tokenization": "tokenizer(answer, add_special_tokens=False)['input_ids'][0]",
        "metric": "(patched_diff - corrupted_diff) / (clean_diff - corrupted_diff), "
                  "diff = logit[answer_ids[0]] - logit[answer_ids[1]] at the last position",
        "load_seconds": load_s,
        "residual": {
            "patch": "model.layers[layer].output[:, position, :] <- clean run's "
                     "(one batched trace, tutorial cell 13)",
            "shape": [len(residual["values"]), len(residual["values"][0])],
            **residual,
        },
        "heads": {
            "patch": f"model.layers[layer].self_attn.o_proj.input, head slice "
                     f"[:, :, head, :] of 'b s (nh dh) -> b s nh dh' ({how}) <- clean "
                     "run's (one batched trace, tutorial cell 22)",
            "shape": [len(heads["values"]), len(heads["values"][0])],
            **heads,
        },
        "single_trace_checks": spot,
    }
    path = args.out or spec.fixture
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(dumps(out) + "\n")
    print(path)


if __name__ == "__main__":
    main()
