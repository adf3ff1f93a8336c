#!/usr/bin/env python3
"""Reference helper for Loupe's benchmarks: HF transformers on the same weights.

NEEDS torch + transformers (gguf and accelerate too for .gguf sources). If torch or
transformers cannot be imported it prints one line to stderr and exits with code 3, so a
benchmark can report "torch not installed" instead of failing.

  python3 scripts/reference_forward.py --model gpt2-small-random --write DIR
      Writes a GPT-2-small-shaped GPT2LMHeadModel (12 layers, 768 wide, 12 heads,
      vocab 50257, 1024 positions) with HF's default initialisation under
      torch.manual_seed(0), as an HF directory: DIR/config.json + DIR/model.safetensors
      (float32, tied lm_head not stored). Prints DIR.

  python3 scripts/reference_forward.py --time SOURCE --batch B --seq T --repeats N
      SOURCE is an HF model directory or a .gguf file (dequantized to float32 by
      transformers). Times model(input_ids) under torch.no_grad() in float32 with
      torch.set_num_threads(2), use_cache=False, no attention mask, on a [B, T] batch of
      seeded random token ids, after one untimed warm-up forward. Prints one JSON line:
      {"median_s": ..., "min_s": ..., "batch": B, "seq": T}
      --attn picks HF's attention implementation (default: sdpa, HF's own default).
      --hf-cache: a .gguf SOURCE is loaded from the HF directory dequantized_directory()
      keeps of it (made on first use), not dequantized again.

dequantized_directory(GGUF) is the float32 HF directory of a GGUF's weights and tokenizer
(transformers' own dequantization, saved with save_pretrained) under $LOUPE_HF_CACHE
(default ~/.cache/loupe/hf), written on first use: loading Gemma 3 270M from its GGUF takes
transformers about 50 s, from this directory a few seconds. The benchmarks use it.
"""
import argparse
import json
import os
import statistics
import sys
import time

EXIT_NO_TORCH = 3
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's own progress bar


def import_stack():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising something else
        print(f"torch not installed: cannot import torch/transformers ({type(e).__name__}: {e})"
              .replace("\n", " "), file=sys.stderr)
        sys.exit(EXIT_NO_TORCH)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return torch, transformers


def write_gpt2_small_random(out_dir):
    torch, transformers = import_stack()
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5: always model.safetensors
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name == "generation_config.json":
            os.remove(path)
        else:
            os.chmod(path, 0o644)  # save_pretrained leaves model.safetensors at 0600
    print(out_dir)


def dequantized_directory(gguf):
    """The float32 HF directory of `gguf` (config, safetensors, tokenizer), made on first use."""
    torch, transformers = import_stack()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    root = os.environ.get("LOUPE_HF_CACHE") or os.path.expanduser("~/.cache/loupe/hf")
    st = os.stat(gguf)
    # Named by the file and its size and time: a new file of the same name gets a new directory.
    out = os.path.join(root, f"{os.path.basename(gguf).rsplit('.gguf', 1)[0]}-{st.st_size}-{int(st.st_mtime)}-f32")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    d, name = os.path.split(os.path.abspath(gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
    os.makedirs(root, exist_ok=True)
    staging = f"{out}.partial-{os.getpid()}"
    # The weights are plain float32 tensors by now, but transformers still marks the model as
    # GGUF-quantized and refuses to save it: unmark it.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.rename(staging, out)
    except OSError:  # another process made it meanwhile
        import shutil
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load(source, attn, hf_cache=False):
    torch, transformers = import_stack()
    from transformers import AutoModelForCausalLM
    kw = dict(dtype=torch.float32, attn_implementation=attn)
    if os.path.isfile(source) and source.endswith(".gguf") and hf_cache:
        model = AutoModelForCausalLM.from_pretrained(dequantized_directory(source), **kw)
    elif os.path.isfile(source) and source.endswith(".gguf"):
        d, name = os.path.split(os.path.abspath(source))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, **kw)
    elif os.path.isdir(source):
        model = AutoModelForCausalLM.from_pretrained(source, **kw)
    else:
        sys.exit(f"{source}: neither an HF model directory nor a .gguf file")
    return model.eval()


def time_forward(source, batch, seq, repeats, attn, hf_cache=False):
    torch, _ = import_stack()
    torch.set_num_threads(2)
    model = load(source, attn, hf_cache)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    times = []
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "min_s": min(times),
                      "batch": batch, "seq": seq}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DIR", help="write --model as an HF directory")
    mode.add_argument("--time", metavar="SOURCE", help="HF directory or .gguf file to time")
    ap.add_argument("--model", default="gpt2-small-random", choices=["gpt2-small-random"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--hf-cache", action="store_true", help="load a .gguf from its dequantized HF directory")
    args = ap.parse_args()
    if args.write:
        write_gpt2_small_random(args.write)
    else:
        if args.batch < 1 or args.seq < 1 or args.repeats < 1:
            ap.error("--batch, --seq and --repeats must be positive")
        time_forward(args.time, args.batch, args.seq, args.repeats, args.attn, args.hf_cache)


if __name__ == "__main__":
    main()
