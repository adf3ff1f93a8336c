#!/usr/bin/env python3
"""The activation-patching tutorial end to end on a warm model: Loupe's Python client
against nnsight on HF transformers, the same cells in one run; then the cold start.

Warm: the tutorial's cells on SmolLM2-135M-Instruct and the seed's IOI pair, written as
the tutorial writes them (SmolLM2's shapes: 30 layers, 9 heads of 64, no BOS token):

  cells 8-9   the clean run (every layer's output saved) and the corrupted run: the two
              logit differences " John" - " Mary"
  cell 10     the per-patch loop: one trace per (layer, position), 30 x 16 = 480 traces
  cell 13     the same matrix as one batched trace (2 + 480 invocations)
  cell 22     the head cell: one batched trace, each of 30 x 9 heads of o_proj's input
              patched through einops.rearrange

and, beyond the tutorial, attribution patching: on Loupe one sweep estimating every
residual, head and MLP cell (`llm.sweep(..., kind=[...], method="attribution")`), on nnsight
its attribution-patching pattern over the residual stream alone (a clean trace, a
corrupted trace with the backward of the logit difference, (clean - corrupted) * grad
summed; scripts/bench_gradients_nnsight.py's cell). Their residual estimates are compared.

Loupe runs them through `Clients/python` (loupe.LanguageModel) against a `loupe serve`
started here on a private endpoint; nnsight runs the same cells from
scripts/nnsight_reference.py (nnsight on transformers, the same GGUF dequantized to
float32, 2 torch threads, no_grad). Drawing is left out of both: the same plotly call on
the same matrix. Each repeat runs every cell on both sides in turn, after one warm-up
trace each; medians are printed with nnsight / Loupe, and the matrices are compared.

Cold start: a fresh Python process starts `loupe serve` (no daemon running, no model
loaded), imports the client, waits for the daemon to answer, loads SmolLM2 through
`LanguageModel(...)` and runs cells 8-9; the figure is the time from starting the daemon
to the logit differences (then to the residual heatmap's matrix, `llm.sweep`). Beside
it, a fresh Python process doing the same with nnsight (import, load, cells 8-9). The GGUF
file is in the page cache for both (it is read on every run).

And, before the repeats, Clients/python/examples/activation_patching.py against the warm
daemon, timed as a whole process (Python start, imports, every cell, the heatmap files).
Interrupted (Ctrl-C) during the repeats, it reports those it finished.

  python3 scripts/bench_tutorial.py [--loupe .build/release/loupe] [--repeats 3]
      [--cold-repeats 3] [--nnsight-cold-repeats 1] [--no-nnsight] [--gguf FILE]

Prints a Markdown section for BENCHMARKS.md. nnsight, torch and transformers exist only
on a development machine: without them the nnsight columns say so.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Clients" / "python"))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_gradients_nnsight as gradients  # noqa: E402  (nnsight's attribution patching)
import nnsight_reference as reference  # noqa: E402  (the nnsight cells; imports torch lazily)

CLEAN, CORRUPTED = reference.CLEAN, reference.CORRUPTED
EXAMPLE = ROOT / "Clients" / "python" / "examples" / "activation_patching.py"


# -- the daemon ---------------------------------------------------------------------------

def answers(endpoint, timeout):
    """True when a daemon answers `hello` at `endpoint` within `timeout` seconds."""
    import msgpack
    import zmq

    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(msgpack.packb({"id": 1, "op": "hello"}))
        return bool(socket.poll(int(timeout * 1000)))
    finally:
        socket.close(0)


def start_daemon(loupe, endpoint, log):
    """`loupe serve` on `endpoint`, returned once it answers."""
    daemon = subprocess.Popen([loupe, "serve", "--endpoint", endpoint, "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not answers(endpoint, 0.05):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise SystemExit(f"loupe serve did not start on {endpoint} (exit {daemon.poll()})")
    return daemon


def stop_daemon(loupe, endpoint, daemon):
    subprocess.run([loupe, "stop", "--endpoint", endpoint], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


# -- the cells on Loupe, as the tutorial writes them --------------------------------------

def loupe_cells(llm, correct_index, incorrect_index):
    """Cells 8-10, 13 and 22 through the client; returns seconds per cell and the matrices."""
    import einops
    from loupe import Proxy, util

    seconds, out = {}, {}
    start = time.perf_counter()
    # [8]
    N_LAYERS = len(llm.model.layers)
    with llm.trace(CLEAN) as tracer:
        clean_tokens = tracer.invoker.inputs[0]['input_ids'][0]
        # Llama's decoder layers return a bare tensor (GPT-2's a tuple: .output[0]).
        clean_hs = [
            llm.model.layers[layer_idx].output.save()
            for layer_idx in range(N_LAYERS)
        ]
        clean_logits = llm.lm_head.output
        clean_logit_diff = (
            clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
        ).save()
    # [9]
    with llm.trace(CORRUPTED) as tracer:
        corrupted_logits = llm.lm_head.output
        corrupted_logit_diff = (
            corrupted_logits[0, -1, correct_index]
            - corrupted_logits[0, -1, incorrect_index]
        ).save()
    out["clean_logit_diff"], out["corrupted_logit_diff"] = float(clean_logit_diff), float(corrupted_logit_diff)
    seconds["cells 8-9"] = time.perf_counter() - start

    # [10]
    start = time.perf_counter()
    ioi_patching_results = []
    for layer_idx in range(len(llm.model.layers)):
        _ioi_patching_results = []
        for token_idx in range(len(clean_tokens)):
            with llm.trace(CORRUPTED) as tracer:
                llm.model.layers[layer_idx].output[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]
                patched_logits = llm.lm_head.output
                patched_logit_diff = (
                    patched_logits[0, -1, correct_index]
                    - patched_logits[0, -1, incorrect_index]
                )
                patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                    clean_logit_diff - corrupted_logit_diff
                )
                _ioi_patching_results.append(patched_result.save())
        ioi_patching_results.append(_ioi_patching_results)
    out["cell 10"] = np.array(util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy))
    seconds["cell 10"] = time.perf_counter() - start

    # [13]
    start = time.perf_counter()
    with llm.trace() as tracer:
        with tracer.invoke(CLEAN) as invoker:
            clean_tokens = invoker.inputs[0]['input_ids'][0]
            clean_hs = [
                llm.model.layers[layer_idx].output
                for layer_idx in range(N_LAYERS)
            ]
            clean_logits = llm.lm_head.output
            clean_logit_diff = (
                clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
            ).save()
        with tracer.invoke(CORRUPTED) as invoker:
            corrupted_logits = llm.lm_head.output
            corrupted_logit_diff = (
                corrupted_logits[0, -1, correct_index]
                - corrupted_logits[0, -1, incorrect_index]
            ).save()
        ioi_patching_results = []
        for layer_idx in range(len(llm.model.layers)):
            _ioi_patching_results = []
            for token_idx in range(len(clean_tokens)):
                with tracer.invoke(CORRUPTED) as invoker:
                    llm.model.layers[layer_idx].output[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]
                    patched_logits = llm.lm_head.output
                    patched_logit_diff = (
                        patched_logits[0, -1, correct_index]
                        - patched_logits[0, -1, incorrect_index]
                    )
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff
                    )
                    _ioi_patching_results.append(patched_result.save())
            ioi_patching_results.append(_ioi_patching_results)
    out["cell 13"] = np.array(util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy))
    seconds["cell 13"] = time.perf_counter() - start

    # [22] with SmolLM2's constants
    start = time.perf_counter()
    N_HEADS = 9
    with llm.trace(remote=True) as tracer:
        with tracer.invoke(CLEAN) as invoker:
            z_hs = {}
            for layer_idx in range(N_LAYERS):
                z = llm.model.layers[layer_idx].self_attn.o_proj.input
                z_reshaped = einops.rearrange(z, 'b s (nh dh) -> b s nh dh', nh=9)
                for head_idx in range(N_HEADS):
                    z_hs[layer_idx, head_idx] = z_reshaped[:, :, head_idx, :]
            clean_logits = llm.lm_head.output
            clean_logit_diff = (
                clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
            ).save()
        with tracer.invoke(CORRUPTED) as invoker:
            corrupted_logits = llm.lm_head.output
            corrupted_logit_diff = (
                corrupted_logits[0, -1, correct_index] - corrupted_logits[0, -1, incorrect_index]
            ).save()
        ioi_patching_results = []
        for layer_idx in range(len(llm.model.layers)):
            _ioi_patching_results = []
            for head_idx in range(N_HEADS):
                with tracer.invoke(CORRUPTED) as invoker:
                    z_corrupt = llm.model.layers[layer_idx].self_attn.o_proj.input
                    z_corrupt = einops.rearrange(z_corrupt, 'b s (nh dh) -> b s nh dh', nh=9)
                    z_corrupt[:, :, head_idx, :] = z_hs[layer_idx, head_idx]
                    z_corrupt = einops.rearrange(z_corrupt, 'b s nh dh -> b s (nh dh)', nh=9)
                    llm.model.layers[layer_idx].self_attn.o_proj.input = z_corrupt
                    patched_logits = llm.lm_head.output
                    patched_logit_diff = (
                        patched_logits[0, -1, correct_index]
                        - patched_logits[0, -1, incorrect_index]
                    )
                    patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                        clean_logit_diff - corrupted_logit_diff
                    )
                    _ioi_patching_results.append(patched_result.save())
            ioi_patching_results.append(_ioi_patching_results)
    out["cell 22"] = np.array(util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy))
    seconds["cell 22"] = time.perf_counter() - start

    # Attribution patching: every residual, head and MLP cell from one clean and one corrupted pass.
    start = time.perf_counter()
    sweeps = llm.sweep(CLEAN, CORRUPTED, kind=["residual", "heads", "mlp"], answer=correct_index, wrong=incorrect_index,
                       method="attribution", normalized=False)
    out["attribution"] = sweeps["residual"].values - sweeps["residual"].corrupted
    seconds["attribution"] = time.perf_counter() - start

    # The gradient trace as nnsight 0.8 users write it: every layer output's gradient of the
    # corrupted prompt's logit difference.
    start = time.perf_counter()
    with llm.trace(CORRUPTED):
        outs = [layer.output for layer in llm.model.layers]
        logits = llm.lm_head.output
        with (logits[0, -1, correct_index] - logits[0, -1, incorrect_index]).backward():
            grads = [o.grad.save() for o in reversed(outs)][::-1]
    out["gradients"] = np.stack([g.value[0] for g in grads])
    seconds["gradients"] = time.perf_counter() - start
    return seconds, out


# -- the same cells on nnsight (scripts/nnsight_reference.py) ----------------------------

def nnsight_cells(model, correct, incorrect, n_tokens):
    import torch

    seconds, out = {}, {}
    with torch.no_grad():
        start = time.perf_counter()
        ref = reference.clean_and_corrupted(model, correct, incorrect)
        out["clean_logit_diff"], out["corrupted_logit_diff"] = ref["clean_diff"], ref["corrupted_diff"]
        seconds["cells 8-9"] = time.perf_counter() - start

        start = time.perf_counter()
        n_layers = len(model.model.layers)
        out["cell 10"] = np.array([[reference.single_residual_patch(model, ref, layer, position, correct, incorrect)
                                    for position in range(n_tokens)] for layer in range(n_layers)])
        seconds["cell 10"] = time.perf_counter() - start

        start = time.perf_counter()
        out["cell 13"] = np.array(reference.residual_sweep(model, n_tokens, correct, incorrect)["values"])
        seconds["cell 13"] = time.perf_counter() - start

        start = time.perf_counter()
        out["cell 22"] = np.array(reference.head_sweep(model, correct, incorrect)["values"])
        seconds["cell 22"] = time.perf_counter() - start

    start = time.perf_counter()
    out["attribution"] = gradients.attribution(model, correct, incorrect).numpy()
    seconds["attribution"] = time.perf_counter() - start
    model._module.zero_grad(set_to_none=True)  # the weight gradients its backward leaves behind

    start = time.perf_counter()
    out["gradients"] = np.stack([g.detach()[0].numpy() for g in gradients.gradient_trace(model, correct, incorrect)])
    seconds["gradients"] = time.perf_counter() - start
    model._module.zero_grad(set_to_none=True)
    return seconds, out


# -- cold start, each in a fresh process ---------------------------------------------------

def cold_child_loupe(loupe, gguf):
    """Runs in a fresh process: prints one JSON line of seconds since `loupe serve` started."""
    workdir = tempfile.mkdtemp(prefix="loupe-cold-")
    endpoint = f"ipc://{workdir}/loupe.sock"
    log = open(os.path.join(workdir, "daemon.log"), "w")
    start = time.perf_counter()
    daemon = subprocess.Popen([loupe, "serve", "--endpoint", endpoint, "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        from loupe import LanguageModel
        while not answers(endpoint, 0.05):
            if daemon.poll() is not None:
                raise SystemExit("loupe serve exited at start")
        answering = time.perf_counter() - start
        llm = LanguageModel(gguf, endpoint=endpoint, progress=False)
        loaded = time.perf_counter() - start
        correct = llm.tokenizer(" John")["input_ids"][0]
        incorrect = llm.tokenizer(" Mary")["input_ids"][0]
        with llm.trace(CLEAN):
            logits = llm.lm_head.output
            clean_logit_diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
        with llm.trace(CORRUPTED):
            logits = llm.lm_head.output
            corrupted_logit_diff = (logits[0, -1, correct] - logits[0, -1, incorrect]).save()
        first_result = time.perf_counter() - start
        sweep = llm.sweep(CLEAN, CORRUPTED, answer=" John", wrong=" Mary", progress=False)
        heatmap = time.perf_counter() - start
        print(json.dumps({"answering": answering, "loaded": loaded, "first_result": first_result,
                          "heatmap": heatmap, "clean": float(clean_logit_diff),
                          "corrupted": float(corrupted_logit_diff), "sweep_shape": list(sweep.values.shape)}),
              flush=True)
    finally:
        stop_daemon(loupe, endpoint, daemon)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def cold_child_nnsight(gguf):
    """Runs in a fresh process: import, load and cells 8-9 on nnsight; one JSON line."""
    start = time.perf_counter()
    torch, _, _ = reference.import_stack()
    torch.set_num_threads(2)
    imported = time.perf_counter() - start
    model = reference.load(gguf)
    loaded = time.perf_counter() - start
    correct, incorrect = reference.answer_ids(model)
    with torch.no_grad():
        ref = reference.clean_and_corrupted(model, correct, incorrect)
    first_result = time.perf_counter() - start
    print(json.dumps({"imported": imported, "loaded": loaded, "first_result": first_result,
                      "clean": ref["clean_diff"], "corrupted": ref["corrupted_diff"]}), flush=True)


def cold_start(arguments):
    """Wall time from spawning the child to its JSON line, and the child's own breakdown."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return None, result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
    return {"wall": wall, **json.loads(result.stdout.strip().splitlines()[-1])}, None


def run_example(gguf, endpoint, notes):
    """Seconds the example takes as a whole process on the warm daemon, or None."""
    if not EXAMPLE.is_file():
        notes.append(f"{EXAMPLE.relative_to(ROOT)} does not exist yet: not timed")
        return None
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, str(EXAMPLE), gguf, "--endpoint", endpoint, "--out", out],
                             capture_output=True, text=True,
                             env={**os.environ, "LOUPE_PROGRESS": "0", "PYTHONPATH": str(ROOT / "Clients" / "python")})
        seconds = time.perf_counter() - start
    if run.returncode != 0:
        notes.append(f"the example failed ({run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
        return None
    return seconds


# -- the report ---------------------------------------------------------------------------

def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        system = platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError, AttributeError):
        system = platform.system()
    return f"{os.cpu_count()} cores, {cpu}, {system}, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--loupe", default=str(ROOT / ".build" / "release" / "loupe"))
    parser.add_argument("--gguf", default=None, help="SmolLM2's GGUF (default $LOUPE_MODELS/...)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-repeats", type=int, default=3, help="fresh Loupe processes to time")
    parser.add_argument("--nnsight-cold-repeats", type=int, default=1,
                        help="fresh nnsight processes to time (each loads the model: about a minute)")
    parser.add_argument("--no-nnsight", action="store_true")
    parser.add_argument("--cold-child", choices=["loupe", "nnsight"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    gguf = args.gguf or reference.default_gguf()
    if args.cold_child == "loupe":
        return cold_child_loupe(args.loupe, gguf)
    if args.cold_child == "nnsight":
        return cold_child_nnsight(gguf)
    if not os.path.isfile(args.loupe):
        raise SystemExit(f"{args.loupe}: build it first (swift build -c release --product loupe)")
    if not os.path.isfile(gguf):
        raise SystemExit(f"{gguf}: run scripts/fetch-models.sh")
    log_line = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    loads = [load_average()]
    started = datetime.datetime.now(datetime.timezone.utc)

    # Cold start first, while no daemon of ours runs.
    cold = {"loupe": [], "nnsight": []}
    notes = []
    for side in ("loupe", "nnsight"):
        if side == "nnsight" and args.no_nnsight:
            continue
        for _ in range(args.cold_repeats if side == "loupe" else args.nnsight_cold_repeats):
            run, error = cold_start(["--cold-child", side, "--loupe", args.loupe, "--gguf", gguf])
            if run is None:
                notes.append(f"{side} cold start failed: {' '.join(error)}")
                break
            cold[side].append(run)
            log_line(f"cold {side}: {run}")
    loads.append(load_average())

    # Warm: one daemon, one nnsight model, the cells in turn.
    from loupe import LanguageModel

    workdir = tempfile.mkdtemp(prefix="loupe-bench-")
    endpoint = f"ipc://{workdir}/loupe.sock"
    log = open(os.path.join(workdir, "daemon.log"), "w")
    daemon = start_daemon(args.loupe, endpoint, log)
    warm = {"loupe": [], "nnsight": []}
    results = {}
    example = None
    try:
        llm = LanguageModel(gguf, endpoint=endpoint, progress=False)
        correct = llm.tokenizer(" John")["input_ids"][0]
        incorrect = llm.tokenizer(" Mary")["input_ids"][0]
        n_tokens = len(llm.tokenizer(CLEAN)["input_ids"])
        with llm.trace(CORRUPTED):  # warm-up, as for nnsight below
            llm.lm_head.output.save()
        model = None
        if not args.no_nnsight:
            try:
                torch, _, _ = reference.import_stack()
            except SystemExit:
                notes.append("nnsight not installed: no nnsight column")
            else:
                torch.set_num_threads(2)
                model = reference.load(gguf)
                assert reference.answer_ids(model) == (correct, incorrect)
                with torch.no_grad(), model.trace(CORRUPTED):
                    model.lm_head.output.save()
        example = run_example(gguf, endpoint, notes)
        try:
            for repeat in range(args.repeats):
                seconds, results["loupe"] = loupe_cells(llm, correct, incorrect)
                warm["loupe"].append(seconds)
                log_line(f"repeat {repeat + 1} loupe: {seconds}")
                if model is not None:
                    seconds, results["nnsight"] = nnsight_cells(model, correct, incorrect, n_tokens)
                    warm["nnsight"].append(seconds)
                    log_line(f"repeat {repeat + 1} nnsight: {seconds}")
                loads.append(load_average())
        except KeyboardInterrupt:  # report what was measured
            notes.append(f"interrupted: {len(warm['loupe'])} repeats on Loupe, {len(warm['nnsight'])} on nnsight")
            if not warm["loupe"]:
                raise
        del model
    finally:
        stop_daemon(args.loupe, endpoint, daemon)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    loads.append(load_average())

    report(args, started, loads, cold, warm, results, example, notes)


def report(args, started, loads, cold, warm, results, example, notes):
    cells = ["cells 8-9", "cell 10", "cell 13", "cell 22"]
    what = {"cells 8-9": "clean and corrupted runs (2 traces)",
            "cell 10": "per-patch loop (480 traces)",
            "cell 13": "batched residual cell (1 trace, 482 invocations)",
            "cell 22": "batched head cell (1 trace, 272 invocations, einops)"}
    has_nnsight = bool(warm["nnsight"])
    print("### The tutorial end to end, and the cold start\n")
    print(f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine()}, by `make bench-tutorial` "
          f"(`python3 scripts/bench_tutorial.py --loupe {os.path.relpath(args.loupe, ROOT)} "
          f"--repeats {args.repeats} --cold-repeats {args.cold_repeats} --nnsight-cold-repeats "
          f"{args.nnsight_cold_repeats}`); load average "
          f"{min(loads):.1f}-{max(loads):.1f} during the run. SmolLM2-135M-Instruct (Q4_1 GGUF; "
          f"nnsight on the same weights dequantized to float32), the seed's IOI pair.\n")
    print(f"Warm model, median of {len(warm['loupe'])} (each repeat runs every cell on both sides in turn):\n")
    print("| cell | Loupe (Python client, daemon) | nnsight | nnsight / Loupe |")
    print("|---|---|---|---|")
    totals = {}
    for side in ("loupe", "nnsight"):
        if warm[side]:
            totals[side] = statistics.median(sum(run[c] for c in cells) for run in warm[side])
    what["attribution"] = ("attribution patching (Loupe: residual, heads and MLPs in one sweep; "
                           "nnsight: the residual stream, 2 traces and a backward)")
    what["gradients"] = "gradient trace: every layer output's gradient of the logit difference (1 trace and its backward)"
    for cell in cells + ["total", "attribution", "gradients"]:
        loupe_s = totals["loupe"] if cell == "total" else median_of(warm["loupe"], cell)
        label = "the whole tutorial (these cells)" if cell == "total" else f"{cell}: {what[cell]}"
        if has_nnsight:
            nnsight_s = totals["nnsight"] if cell == "total" else median_of(warm["nnsight"], cell)
            print(f"| {label} | {loupe_s:.2f} s | {nnsight_s:.2f} s | {nnsight_s / loupe_s:.1f}x |")
        else:
            print(f"| {label} | {loupe_s:.2f} s | (not installed) | |")
    print()
    loupe_out = results["loupe"]
    agreement = [f"cell 10 against cell 13 on Loupe: {np.abs(loupe_out['cell 10'] - loupe_out['cell 13']).max():.1e}"]
    if has_nnsight:
        nn = results["nnsight"]
        for cell in ("cell 10", "cell 13", "cell 22"):
            agreement.append(f"{cell} Loupe against nnsight: {np.abs(loupe_out[cell] - nn[cell]).max():.1e}")
        agreement.append("attribution patching's residual estimates Loupe against nnsight: "
                         f"{np.abs(loupe_out['attribution'] - nn['attribution']).max():.1e}")
        agreement.append(f"the gradient trace's gradients Loupe against nnsight: {np.abs(loupe_out['gradients'] - nn['gradients']).max():.1e}")
        agreement.append(f"logit differences {loupe_out['clean_logit_diff']:.4f} / {loupe_out['corrupted_logit_diff']:.4f} "
                         f"(nnsight {nn['clean_logit_diff']:.4f} / {nn['corrupted_logit_diff']:.4f})")
    print("Largest difference between the matrices: " + "; ".join(agreement) + ".\n")
    loupe_cold, nn_cold = cold["loupe"], cold["nnsight"]
    if example is not None:
        print(f"`Clients/python/examples/activation_patching.py` as a whole process on the warm daemon "
              f"(Python start, imports, its cells, writing the heatmaps): {example:.2f} s.\n")

    counts = f"median of {len(loupe_cold)} fresh processes for Loupe"
    if nn_cold:
        counts += f", {len(nn_cold)} for nnsight"
    print(f"Cold start, {counts}:\n")
    print("| from a fresh process | Loupe | nnsight |")
    print("|---|---|---|")

    def cell(runs, key):
        return f"{median_of(runs, key):.2f} s" if runs and key in runs[0] else ""

    rows = [("the daemon answers (`loupe serve` started)", "answering", None),
            ("torch, transformers and nnsight imported", None, "imported"),
            ("SmolLM2 loaded", "loaded", "loaded"),
            ("**first IOI result**: both logit differences (cells 8-9)", "first_result", "first_result"),
            ("the residual heatmap's matrix (`llm.sweep`, 30 x 16)", "heatmap", None)]
    for label, loupe_key, nn_key in rows:
        print(f"| {label} | {cell(loupe_cold, loupe_key) if loupe_key else ''} | "
              f"{cell(nn_cold, nn_key) if nn_key else ''} |")
    print()
    print("Loupe's times count from starting `loupe serve` (the client imported in the same fresh "
          "process, no model loaded); nnsight's from the start of its process.")
    for note in notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    main()
