#!/usr/bin/env python3
"""Generation, steering and the logit lens on SmolLM2-135M-Instruct: Loupe's Python client
against HF transformers and nnsight, in one run on the same weights.

  generate    batch 1, 32 new tokens, greedy: Loupe's `model.generate` through the client
              against HF's `generate` on the GGUF dequantized to float32
  steer       the same generation with a steering edit at every step (layer 10's output +=
              a fixed vector; Loupe's under `tracer.all()`, nnsight's in its loop over the
              steps, `for _ in tracer.iter[0:32]`): Loupe against nnsight's `generate`
  logit lens  every layer's output through `model.model.norm` and `model.lm_head` in one
              trace, softmax, each position's top probability and token: Loupe's module
              calls against nnsight's

Loupe runs against a `loupe serve` started here on a private endpoint; transformers and
nnsight on the dequantized directory scripts/reference_forward.py makes (float32, eager
attention, --threads torch threads, no_grad). Each repeat runs every case on every side in
turn after one warm-up each; medians are printed with other / Loupe, and the tokens and lens
values are compared (both sides stop at the model's EOS, as HF's generate does).

  python3 scripts/bench_generate.py [--loupe .build/release/loupe] [--repeats 5] [--threads 2]
      [--gguf FILE] [--new-tokens 32]

NEEDS torch, transformers, gguf and nnsight (a development machine).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Clients" / "python"))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_tutorial  # noqa: E402  (starting and stopping the daemon)
import reference_forward  # noqa: E402  (the dequantized HF directory)

PROMPT = "After John and Mary went to the store, Mary gave a bottle of milk to"
STEER_LAYER, STEER_SCALE = 10, 4.0


def steering_vector(hidden):
    vector = np.random.default_rng(0).standard_normal(hidden).astype(np.float32)
    return STEER_SCALE * vector / np.linalg.norm(vector) * np.sqrt(hidden)


# -- Loupe ---------------------------------------------------------------------------------

def loupe_generate(llm, n, vector=None):
    with llm.generate(PROMPT, max_new_tokens=n) as tracer:
        if vector is not None:
            with tracer.all():
                llm.model.layers[STEER_LAYER].output[:] += vector
    return tracer.generation["tokens"][0]


def loupe_lens(llm):
    with llm.trace(PROMPT):
        top, tokens = [], []
        for layer in llm.model.layers:
            probs = llm.lm_head(llm.model.norm(layer.output)).softmax(-1)
            top.append(probs.max(-1).save())
            tokens.append(probs.argmax(-1).save())
    return np.stack([t.numpy() for t in top]), np.stack([t.numpy() for t in tokens]).astype(np.int64)


# -- HF transformers and nnsight ----------------------------------------------------------

def hf_generate(torch, hf, ids, n):
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def nnsight_generate(torch, model, n, vector):
    with torch.no_grad():
        with model.generate(PROMPT, max_new_tokens=n, do_sample=False) as tracer:
            # nnsight 0.8 runs no code after `with tracer.all():`, and reading the output before
            # the edit runs the whole generation first: its loop over every step is the form
            # that edits each step and then reads the output.
            for _ in tracer.iter[0:n]:
                model.model.layers[STEER_LAYER].output[:] += vector
            out = model.generator.output.save()
    return out[0, len(model.tokenizer(PROMPT)["input_ids"]):].tolist()


def nnsight_lens(torch, model):
    top, tokens = [], []  # made outside the trace: nnsight hands back only what was saved in it
    with torch.no_grad():
        with model.trace(PROMPT):
            for layer in model.model.layers:
                probs = model.lm_head(model.model.norm(layer.output)).softmax(-1)
                top.append(probs.amax(-1).save())
                tokens.append(probs.argmax(-1).save())
    return torch.stack(list(top)).numpy(), torch.stack(list(tokens)).numpy()


def timed(fn, repeats):
    """(median seconds, every run's seconds, the last result) after one warm-up run."""
    result = fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, result


def agreement(a, b):
    same = sum(x == y for x, y in zip(a, b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    lengths = "" if len(a) == len(b) else f" (Loupe made {len(a)}, the other {len(b)})"
    return f"{same}/{max(len(a), len(b))} equal{lengths}" + ("" if first is None else f", first difference at token {first}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    models = os.environ.get("LOUPE_MODELS") or os.path.expanduser("~/.cache/loupe/models")
    ap.add_argument("--loupe", default=str(ROOT / ".build" / "release" / "loupe"))
    ap.add_argument("--gguf", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be positive")
    for path, what in ((args.gguf, "run scripts/fetch-models.sh or pass --gguf"),
                       (args.loupe, "swift build -c release --product loupe, or pass --loupe")):
        if not os.path.isfile(path):
            sys.exit(f"{path}: no such file ({what})")
    torch, transformers = reference_forward.import_stack()
    import nnsight

    warnings.filterwarnings("ignore", message=".*deprecated.*")  # nnsight 0.8's notes on its older forms
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    hf_dir = reference_forward.dequantized_directory(args.gguf)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    nn_model = nnsight.LanguageModel(hf_dir, dispatch=True, dtype=torch.float32, attn_implementation="eager")
    nn_model.eval()
    ids = torch.tensor([nn_model.tokenizer(PROMPT)["input_ids"]])
    n = args.new_tokens

    from loupe import LanguageModel

    workdir = tempfile.mkdtemp(prefix="loupe-bench-generate-")
    endpoint = f"ipc://{workdir}/loupe.sock"
    with open(os.path.join(workdir, "daemon.log"), "w") as log:
        daemon = bench_tutorial.start_daemon(args.loupe, endpoint, log)
    try:
        llm = LanguageModel(args.gguf, endpoint=endpoint)
        assert llm.tokenizer(PROMPT)["input_ids"] == ids[0].tolist(), "the two tokenizers disagree"
        vector = steering_vector(llm.config.hidden_size)
        torch_vector = torch.tensor(vector)
        cases = {
            "generate": (lambda: loupe_generate(llm, n), lambda: hf_generate(torch, hf, ids, n), "HF generate"),
            "steer": (lambda: loupe_generate(llm, n, vector), lambda: nnsight_generate(torch, nn_model, n, torch_vector),
                      "nnsight generate"),
            "logit lens": (lambda: loupe_lens(llm), lambda: nnsight_lens(torch, nn_model), "nnsight trace"),
        }
        results = {}
        for name, (ours, theirs, label) in cases.items():
            results[name] = (timed(ours, args.repeats), timed(theirs, args.repeats), label)
    finally:
        bench_tutorial.stop_daemon(args.loupe, endpoint, daemon)

    print(f"## Generation, steering and the logit lens (SmolLM2-135M-Instruct, batch 1, {n} new tokens, greedy)\n")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, nnsight {nnsight.__version__}, "
          f"{args.threads} torch threads, medians of {args.repeats} after a warm-up\n")
    print("| case | Loupe (s) | other (s) | other | other / Loupe | results |")
    print("|---|---|---|---|---|---|")
    for name, ((ours_s, _, ours), (theirs_s, _, theirs), label) in results.items():
        if name == "logit lens":
            top_diff = float(np.abs(ours[0] - theirs[0]).max())
            same = int((ours[1] == theirs[1]).sum())
            check = f"top tokens {same}/{ours[1].size} equal, top probabilities within {top_diff:.1e}"
        else:
            check = f"tokens {agreement(ours, theirs)}"
        print(f"| {name} | {ours_s:.3f} | {theirs_s:.3f} | {label} | {theirs_s / ours_s:.2f} | {check} |")
    (ours_s, _, ours), (theirs_s, _, theirs), _ = results["generate"]
    print(f"\nLoupe: {len(ours) / ours_s:.1f} tokens/s, HF: {len(theirs) / theirs_s:.1f} tokens/s")


if __name__ == "__main__":
    main()
