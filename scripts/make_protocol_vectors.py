#!/usr/bin/env python3
"""Writes Protocol/vectors/: golden request/reply pairs of the Loupe wire protocol.

Each pair is NN-name.request.msgpack / .request.json and NN-name.reply.msgpack / .reply.json,
and manifest.json lists them in replay order with the fields whose values vary between
runs. The replies are written from the protocol's definition (Protocol/PROTOCOL.md) and,
for numbers the model computes, from the HF reference activations committed with the tiny
fixture models (Tests/Fixtures/models/*/expected.safetensors), never from Loupe's own
output. Sweeps and traces patch activations, which the reference files cannot show: their
numbers come from a float64 numpy GPT-2 written here, checked first against those HF
reference logits, running every patch as its own full forward pass; the gradients a trace
reads, and an attribution sweep's estimates (the metric's derivatives along each unit's
clean - corrupted value), are central differences of that float64 model. Replay with
scripts/conformance.py or the Swift ConformanceTests against a daemon
serving with --models-dir Tests/Fixtures/models.

Needs msgpack and numpy. Run from anywhere: python3 scripts/make_protocol_vectors.py
"""
import json
import struct
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Protocol" / "vectors"
MODELS = ROOT / "Tests" / "Fixtures" / "models"

# Fields that differ from run to run (PROTOCOL.md, "Variable fields"); '*' matches any
# array element or map key.
VARIABLE = ["server_version", "job", "timing", "load_seconds", "idle_seconds", "age_seconds", "uptime_seconds",
            "requests", "rss_bytes", "pid", "endpoint", "error.message", "path", "source",
            "models.*.idle_seconds", "models.*.path", "models.*.source"]

PROTOCOL = 4

OPS = ["hello", "models.list", "models.load", "models.unload", "models.describe", "models.weights", "tokenize", "detokenize", "forward",
       "sweep", "trace", "jobs.status", "jobs.cancel", "jobs.result", "server.stats", "server.shutdown"]

GPT2_DIMENSIONS = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 4, "head_dim": 16, "vocab": 512, "context": 64}
LLAMA_DIMENSIONS = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "vocab": 512, "context": 64}


def safetensors(path):
    """The tensors of a safetensors file as float32 numpy arrays."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F32", name
        start, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[8 + size + start:8 + size + end], dtype="<f4").reshape(entry["shape"])
    return tensors


# The trace language's ops (Sources/LoupeTrace/TRACE.md) and the built-in interventions.
TRACE_OPS = ["get", "set", "constant", "index", "setindex", "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "abs",
             "sqrt", "matmul", "sum", "mean", "max", "min", "argmax", "argmin", "softmax", "log_softmax", "reshape", "view",
             "transpose", "permute", "split_heads", "merge_heads", "clone", "zeros_like", "ones_like", "full_like", "full",
             "cat", "stack", "topk", "call", "weight", "intervene", "save", "backward", "grad", "set_grad"]
INTERVENTIONS = ["ablate", "head_patch", "residual_patch", "steer"]


class GPT2:
    """GPT-2 in float64 numpy, as HF's GPT2LMHeadModel computes it, with the edits a sweep
    makes: of the residual stream after a layer, of the heads' output (the input of
    attn.c_proj, split by head), of the MLP's hidden units or of its output."""

    def __init__(self, directory):
        self.w = {k: v.astype(np.float64) for k, v in safetensors(directory / "model.safetensors").items()}
        config = json.loads((directory / "config.json").read_text())
        self.layers, self.heads, self.eps = config["n_layer"], config["n_head"], config["layer_norm_epsilon"]
        self.neurons = self.w["transformer.h.0.mlp.c_fc.bias"].shape[0]

    def norm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def forward(self, ids, record=None, resid=None, edit=None):
        """Final logits [len, vocab]. record: dict filled with resid_post.L, z.L [len, heads, dh],
        mlp_hidden.L and mlp_out.L; resid: (layer, position, vector) written over the residual
        after that layer; edit: (name, layer, function) replacing z, mlp_hidden, mlp_out or
        resid_post of that layer by function(value)."""
        def edited(name, l, value):
            return edit[2](value.copy()) if edit is not None and edit[:2] == (name, l) else value
        w, n = self.w, len(ids)
        x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:n]
        for l in range(self.layers):
            p = f"transformer.h.{l}."
            h = self.norm(x, p + "ln_1")
            q, k, v = np.split(h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, axis=-1)
            dh = q.shape[-1] // self.heads
            q, k, v = (t.reshape(n, self.heads, dh).transpose(1, 0, 2) for t in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
            scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            z = ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2)  # [len, heads, dh]
            z = edited("z", l, z)
            if record is not None:
                record[f"z.{l}"] = z.copy()
            x = x + z.reshape(n, -1) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            h = self.norm(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
            h = edited("mlp_hidden", l, 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3))))
            if record is not None:
                record[f"mlp_hidden.{l}"] = h.copy()
            mlp = edited("mlp_out", l, h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
            if record is not None:
                record[f"mlp_out.{l}"] = mlp.copy()
            x = x + mlp
            if resid is not None and resid[0] == l:
                x = x.copy()
                x[resid[1]] = resid[2]
            x = edited("resid_post", l, x)
            if record is not None:
                record[f"resid_post.{l}"] = x.copy()
        return self.norm(x, "transformer.ln_f") @ w["transformer.wte.weight"].T


def log_softmax(logits):
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def scorer(metric, clean_last):
    def score(logits):
        if "logit_diff" in metric:
            return logits[metric["logit_diff"]["answer"]] - logits[metric["logit_diff"]["wrong"]]
        if "logprob" in metric:
            return log_softmax(logits)[metric["logprob"]["answer"]]
        p = log_softmax(clean_last)
        return float((np.exp(p) * (p - log_softmax(logits))).sum())
    return score


SITES = {"residual": "resid_post", "mlp": "mlp_out", "heads": "z", "head_positions": "z", "neurons": "mlp_hidden"}


def units(model, kind, n, neuron_positions="last"):
    """Each column's unit, in the protocol's column order: (positions, head or neuron or None)."""
    if kind in ("residual", "mlp"):
        return [(slice(t, t + 1), None) for t in range(n)]
    if kind == "heads":
        return [(slice(None), h) for h in range(model.heads)]
    if kind == "head_positions":
        return [(slice(t, t + 1), h) for h in range(model.heads) for t in range(n)]
    positions = slice(n - 1, n) if neuron_positions == "last" else slice(None)
    return [(positions, i) for i in range(model.neurons)]


def part(value, unit):
    return value[unit[0]] if unit[1] is None else value[unit[0], unit[1]]


def assign(value, unit, new):
    if unit[1] is None:
        value[unit[0]] = new
    else:
        value[unit[0], unit[1]] = new
    return value


def recorded(model, clean, corrupted, metric, reference=()):
    """Each prompt's recorded values and last logits, the metric, and its clean and corrupted values."""
    records = {}
    for name, ids in [("clean", clean), ("corrupted", corrupted)] + [(f"ref{i}", r) for i, r in enumerate(reference)]:
        if ids is not None:
            records[name] = {}
            records[name]["last"] = model.forward(ids, record=records[name])[-1]
    score = scorer(metric, records["clean"]["last"])
    c = score(records["clean"]["last"])
    k = score(records["corrupted"]["last"]) if corrupted is not None else None
    return records, score, float(c), None if k is None else float(k)


def unit_sweep(model, clean, corrupted, kind, metric, intervention="patch", mode=None, reference=(), neuron_positions="last"):
    """Any sweep, every cell its own full forward pass: patching edits the corrupted prompt
    with the clean run's unit; ablation edits the clean prompt, zeroing the unit, replacing
    it by its mean over the reference prompts, or by its value in the corrupted prompt.
    Returns the raw matrix and the clean and corrupted values (None without a corrupted prompt)."""
    records, score, c, k = recorded(model, clean, corrupted, metric, reference)
    target = clean if intervention == "ablate" else corrupted
    source = "clean" if intervention == "patch" else "corrupted"
    site = SITES[kind]
    values = []
    for l in range(model.layers):
        row = []
        for unit in units(model, kind, len(target), neuron_positions):
            def replace(value, unit=unit, l=l):
                if intervention == "ablate" and mode == "zero":
                    new = np.zeros_like(part(value, unit))
                elif intervention == "ablate" and mode == "mean":
                    new = np.mean([part(records[f"ref{i}"][f"{site}.{l}"], unit) for i in range(len(reference))], axis=0)
                else:
                    new = part(records[source][f"{site}.{l}"], unit)
                return assign(value, unit, new)
            row.append(float(score(model.forward(target, edit=(site, l, replace))[-1])))
        values.append(row)
    return values, c, k


def attribution_sweep(model, clean, corrupted, kind, metric, neuron_positions="last", step=1e-4):
    """Attribution patching's raw matrix, corrupted + estimate: each estimate the metric's
    derivative on the corrupted run along the unit's (clean - corrupted) value, by central
    differences of the float64 forward pass (what the gradient dotted with that value gives)."""
    records, score, c, k = recorded(model, clean, corrupted, metric)
    site = SITES[kind]
    values = []
    for l in range(model.layers):
        row = []
        for unit in units(model, kind, len(clean), neuron_positions):
            delta = part(records["clean"][f"{site}.{l}"], unit) - part(records["corrupted"][f"{site}.{l}"], unit)

            def moved(alpha):
                return score(model.forward(corrupted, edit=(site, l, lambda v: assign(v, unit, part(v, unit) + alpha * delta)))[-1])
            row.append(float(k + (moved(step) - moved(-step)) / (2 * step)))
        values.append(row)
    return values, c, k


def normalize(values, c, k):
    baseline = 0.0 if k is None else k
    return [[(v - baseline) / (c - baseline) for v in row] for row in values]


def top(logits, k):
    """The k largest logits, best first, as the protocol's {id, token, logit} (no tokenizer: token nil)."""
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:k]
    return [{"id": i, "token": None, "logit": float(logits[i])} for i in order]


def error(code, field):
    return {"status": "error", "error": {"code": code, "message": "", "field": field}}


def vectors():
    cases = json.loads((MODELS / "gpt2-tiny" / "cases.json").read_text())["sequences"]
    expected = safetensors(MODELS / "gpt2-tiny" / "expected.safetensors")
    model = GPT2(MODELS / "gpt2-tiny")
    for i, case in enumerate(cases):
        distance = np.abs(model.forward(case) - expected[f"logits.{i}"]).max()
        assert distance < 1e-4, f"the numpy GPT-2 is {distance} from HF's logits on case {i}"
    ok = {"status": "ok"}
    yield "hello", {"op": "hello", "protocol": PROTOCOL, "client": "conformance"}, {
        **ok, "protocol": PROTOCOL, "server": "loupe", "server_version": "", "instance": "", "started": "",
        "architectures": ["gpt2", "llama", "qwen2", "qwen3", "gpt_neox", "gemma3", "gemma2", "mistral"],
        "interventions": [{"name": name} for name in INTERVENTIONS], "trace_ops": TRACE_OPS, "ops": OPS,
        "sweep": {"kinds": ["residual", "heads", "head_positions", "mlp", "neurons"], "metrics": ["logit_diff", "logprob", "kl"],
                  "interventions": ["patch", "ablate"], "ablation_modes": ["zero", "mean", "resample"],
                  "methods": ["activation", "attribution"], "neuron_positions": ["last", "sum"]},
        "limits": {"max_message_bytes": 256 << 20, "max_batch_tokens": 65536, "max_queue": 64,
                   "max_generate_tokens": 16384}}, ["instance", "started"]
    yield "hello-version-mismatch", {"op": "hello", "protocol": 99}, error("version_mismatch", "protocol"), []
    yield "unknown-op", {"op": "models.frobnicate"}, error("unknown_op", "op"), []
    yield "missing-op", {"name": "tiny"}, error("bad_request", "op"), []
    yield "models-list-empty", {"op": "models.list"}, {**ok, "models": []}, []
    yield "models-load", {"op": "models.load", "name": "tiny", "source": "gpt2-tiny"}, {
        **ok, "name": "tiny", "architecture": "gpt2", "path": "", "dimensions": GPT2_DIMENSIONS, "load_seconds": 0.0,
        "shared": False, "job": 0, "timing": {}}, []
    yield "models-load-again", {"op": "models.load", "name": "tiny", "source": "gpt2-tiny"}, {
        **ok, "name": "tiny", "architecture": "gpt2", "path": "", "dimensions": GPT2_DIMENSIONS, "load_seconds": 0.0,
        "shared": True}, []
    yield "models-load-llama", {"op": "models.load", "name": "llama", "source": "llama-tiny"}, {
        **ok, "name": "llama", "architecture": "llama", "path": "", "dimensions": LLAMA_DIMENSIONS, "load_seconds": 0.0,
        "shared": False, "job": 0, "timing": {}}, []
    entry = {"source": "", "path": "", "shares_weights_with": [], "idle_seconds": 0.0, "queued": 0, "running": False}
    yield "models-list", {"op": "models.list"}, {**ok, "models": [
        {**entry, "name": "llama", "architecture": "llama"}, {**entry, "name": "tiny", "architecture": "gpt2"}]}, \
        ["models.*.weight_bytes"]
    yield "models-describe", {"op": "models.describe", "name": "tiny", "sites": False}, {
        **ok, "name": "tiny", "architecture": "gpt2", "source": "", "path": "", "dimensions": GPT2_DIMENSIONS,
        "tokenizer": None, "printed": "", "tree": {}, "weight_bytes": 0}, ["printed", "tree", "weight_bytes"]
    yield "tokenize-without-tokenizer", {"op": "tokenize", "model": "tiny", "text": "hello"}, error("bad_request", "model"), []
    yield "forward-top-k", {"op": "forward", "model": "tiny", "tokens": [cases[0], cases[1]], "top_k": 3}, {
        **ok, "tokens": [cases[0], cases[1]], "positions": [[len(cases[0]) - 1], [len(cases[1]) - 1]],
        "top": [[top(expected["logits.0"][-1], 3)], [top(expected["logits.1"][-1], 3)]], "job": 0, "timing": {}}, []
    logits = np.ascontiguousarray(expected["logits.3"][0:1].reshape(1, 1, 512), dtype="<f4")
    yield "forward-logits", {"op": "forward", "model": "tiny", "tokens": [cases[3]], "positions": [0], "logits": True}, {
        **ok, "tokens": [cases[3]], "positions": [[0]],
        "logits": {"dtype": "f32", "shape": [1, 1, 512], "data": logits.tobytes()}, "job": 0, "timing": {}}, []
    yield "forward-token-out-of-range", {"op": "forward", "model": "tiny", "tokens": [[1, 512]]}, \
        error("index_out_of_range", "tokens.0.1"), []
    yield "forward-position-out-of-range", {"op": "forward", "model": "tiny", "tokens": [[1, 2]], "positions": [2]}, \
        error("index_out_of_range", "positions.0"), []
    yield "forward-unknown-site", {"op": "forward", "model": "tiny", "tokens": [[1]], "save": ["transformer.h.7.output"]}, \
        error("unknown_site", "save.0"), []
    yield "forward-too-long", {"op": "forward", "model": "tiny", "tokens": [list(range(65))]}, error("too_large", "tokens"), []
    yield "forward-tensor-shape-mismatch", {"op": "forward", "model": "tiny", "tokens": {
        "dtype": "i32", "shape": [1, 3], "data": struct.pack("<2i", 1, 2)}}, error("shape_mismatch", "tokens"), []
    yield from sweep_vectors(model, cases)
    yield from trace_vectors(model, cases)
    yield "forward-unknown-model", {"op": "forward", "model": "nope", "tokens": [[1]]}, error("unknown_model", "model"), []
    yield "jobs-status-not-found", {"op": "jobs.status", "job": 123456}, error("not_found", "job"), []
    yield "models-unload", {"op": "models.unload", "name": "tiny"}, {**ok, "name": "tiny", "freed": True}, []
    yield "models-load-not-found", {"op": "models.load", "name": "ghost", "source": "no-such-model.gguf"}, \
        error("not_found", "source"), ["job"]
    # An id of a type PROTOCOL.md does not give it: refused, and the reply's id is nil.
    yield "id-wrong-type", {"id": [1], "op": "hello"}, {"id": None, **error("bad_request", "id")}, []
    # Added with version 3, after the others so that theirs keep their numbers.
    yield "models-load-tiny-again", {"op": "models.load", "name": "tiny", "source": "gpt2-tiny"}, {
        **ok, "name": "tiny", "architecture": "gpt2", "path": "", "dimensions": GPT2_DIMENSIONS, "load_seconds": 0.0,
        "shared": False, "job": 0, "timing": {}}, []
    yield from gradient_vectors(model, cases)
    yield from attribution_vectors(model, cases)
    yield from module_call_vectors(model, cases)
    # Added with version 4.
    yield from generation_vectors()


def generation_vectors():
    """Greedy generation on the tiny GPT-2 with the logits of every step saved, as HF's
    generate gives them (scripts/make_generation_fixtures.py), and generation's errors."""
    golden = json.loads((MODELS / "gpt2-tiny" / "generation.json").read_text())
    logits = safetensors(MODELS / "gpt2-tiny" / "generation.safetensors")["single.logits"]
    prompt, tokens = golden["single"]["prompt"], golden["single"]["tokens"]
    steps = len(tokens)
    nodes = [
        {"id": 1, "op": "get", "site": "logits", "steps": "all"},
        {"id": 2, "op": "index", "x": {"ref": 1}, "key": [0, -1], "steps": "all"},
        {"id": 3, "op": "save", "x": {"ref": 2}, "name": "logits", "steps": "all"},
    ]
    saved = [{"dtype": "f32", "shape": [512], "data": np.ascontiguousarray(logits[s], dtype="<f4").tobytes()} for s in range(steps)]
    yield "trace-generate", {"op": "trace", "model": "tiny", "invokes": [prompt], "nodes": nodes,
                             "generate": {"max_new_tokens": golden["new_tokens"]}}, {
        "status": "ok", "names": ["logits"], "saved": {"logits": saved}, "saved_steps": {"logits": list(range(steps))},
        "generation": {"steps": steps, "tokens": [tokens], "output": [prompt + tokens], "finish": ["length"]},
        "job": 0, "timing": {}}, []
    one = {"op": "trace", "model": "tiny", "invokes": [[1, 2]]}
    get = {"id": 1, "op": "get", "site": "blocks.0.resid_post"}
    yield "trace-generate-step-out-of-range", {**one, "nodes": [{**get, "steps": 3}], "generate": {"max_new_tokens": 3}}, \
        node_error("index_out_of_range", "nodes.0.steps", 1), []
    yield "trace-generate-other-steps", {**one, "generate": {"max_new_tokens": 3}, "nodes": [
        {**get, "steps": [1, 3]}, {"id": 2, "op": "save", "x": {"ref": 1}, "name": "x", "steps": "all"}]}, \
        node_error("out_of_order", "nodes.1.steps", 2), []
    yield "trace-steps-without-generate", {**one, "nodes": [{**get, "steps": 1}]}, \
        node_error("bad_request", "nodes.0.steps", 1), []
    yield "trace-generate-past-context", {**one, "nodes": [], "generate": {"max_new_tokens": 63}}, \
        error("too_large", "generate.max_new_tokens"), []
    yield "trace-generate-bad-field", {**one, "nodes": [], "generate": {"max_new_tokens": 2, "top_k": -1}}, \
        error("bad_request", "generate.top_k"), []


def sweep_vectors(model, cases):
    """Residual and head sweeps on gpt2-tiny, each metric, and the typed errors."""
    clean = cases[0]
    corrupted = list(clean)
    corrupted[3] = 7
    n, layers = len(clean), model.layers
    common = {"rows": [str(l) for l in range(layers)], "row_axis": "Layer", "clean_tokens": clean,
              "corrupted_tokens": corrupted, "first_difference": 3, "seconds": 0.0, "token_layers": 0,
              "job": 0, "timing": {}}
    variable = ["seconds", "token_layers"]
    for name, kind, metric, normalized in [
            ("sweep-residual-logit-diff", "residual", {"logit_diff": {"answer": 1, "wrong": 2}}, True),
            ("sweep-heads-logit-diff", "heads", {"logit_diff": {"answer": 1, "wrong": 2}}, True),
            ("sweep-residual-logprob", "residual", {"logprob": {"answer": 5}}, False),
            ("sweep-heads-kl", "heads", {"kl": {}}, False),
            ("sweep-head-positions-logit-diff", "head_positions", {"logit_diff": {"answer": 1, "wrong": 2}}, True)]:
        values, c, k = unit_sweep(model, clean, corrupted, kind, metric)
        if normalized:
            values = normalize(values, c, k)
        columns = {"residual": n, "heads": model.heads, "head_positions": model.heads * n}[kind]
        cols = {"residual": [f"{t}_{i}" for i, t in enumerate(clean)],
                "heads": [f"Head {h}" for h in range(model.heads)],
                "head_positions": [f"Head {h} @ {t}" for h in range(model.heads) for t in range(n)]}[kind]
        request = {"op": "sweep", "model": "tiny", "clean": clean, "corrupted": corrupted, "kind": kind, "metric": metric}
        if not normalized:
            request["normalized"] = False
        yield name, request, {
            "status": "ok", **common, "kind": kind, "metric": metric, "normalized": normalized, "values": values,
            "cols": cols, "col_axis": {"residual": "Position", "heads": "Head", "head_positions": "Head @ position"}[kind],
            "clean": c, "corrupted": k,
            "plain_token_layers": (2 + layers * columns) * n * layers}, variable
    yield from ablation_and_pair_vectors(model, cases, clean, corrupted)
    base = {"op": "sweep", "model": "tiny", "clean": clean, "corrupted": corrupted,
            "metric": {"logit_diff": {"answer": 1, "wrong": 2}}}
    yield "sweep-lengths-differ", {**base, "corrupted": corrupted[:-1]}, error("bad_request", "corrupted"), []
    yield "sweep-identical-prompts", {**base, "corrupted": clean}, error("bad_request", "corrupted"), []
    yield "sweep-answer-as-text-without-tokenizer", {**base, "metric": {"logit_diff": {"answer": " John", "wrong": 2}}}, \
        error("bad_request", "metric.logit_diff.answer"), []
    yield "sweep-answer-out-of-range", {**base, "metric": {"logprob": {"answer": 512}}}, \
        error("index_out_of_range", "metric.logprob.answer"), []
    yield "sweep-token-out-of-range", {**base, "clean": clean[:-1] + [600]}, error("index_out_of_range", "clean.6"), []
    yield "sweep-unknown-kind", {**base, "kind": "neuron"}, error("bad_request", "kind"), []
    yield "sweep-unknown-metric", {**base, "metric": {"accuracy": {}}}, error("bad_request", "metric"), []
    yield "sweep-unknown-model", {**base, "model": "nope"}, error("unknown_model", "model"), []


def ablation_and_pair_vectors(model, cases, clean, corrupted):
    """The mlp kind, ablation sweeps (zero, mean, resample) and a sweep over two pairs, with
    their typed errors."""
    n, layers = len(clean), model.layers
    metric = {"logit_diff": {"answer": 1, "wrong": 2}}
    cols = {"residual": [f"{t}_{i}" for i, t in enumerate(clean)], "mlp": [f"{t}_{i}" for i, t in enumerate(clean)],
            "heads": [f"Head {h}" for h in range(model.heads)]}
    axis = {"residual": "Position", "mlp": "Position", "heads": "Head"}
    reference = [[(t * 3 + 1) % 512 for t in clean], [(t + 40) % 512 for t in clean]]
    common = {"rows": [str(l) for l in range(layers)], "row_axis": "Layer", "seconds": 0.0, "token_layers": 0,
              "job": 0, "timing": {}, "metric": metric, "normalized": True, "clean_tokens": clean}
    variable = ["seconds", "token_layers"]
    for name, kind, intervention, mode, with_corrupted in [
            ("sweep-mlp-patch", "mlp", "patch", None, True),
            ("sweep-ablate-heads-zero", "heads", "ablate", "zero", False),
            ("sweep-ablate-residual-mean", "residual", "ablate", "mean", False),
            ("sweep-ablate-mlp-resample", "mlp", "ablate", "resample", True)]:
        refs = reference if mode == "mean" else ()
        values, c, k = unit_sweep(model, clean, corrupted if with_corrupted else None, kind, metric, intervention, mode, refs)
        columns = len(cols[kind])
        request = {"op": "sweep", "model": "tiny", "clean": clean, "kind": kind, "metric": metric}
        reply = {"status": "ok", **common, "kind": kind, "values": normalize(values, c, k), "cols": cols[kind],
                 "col_axis": axis[kind], "clean": c, "corrupted": k, "intervention": intervention,
                 "corrupted_tokens": corrupted if with_corrupted else None,
                 "first_difference": 3 if with_corrupted else 0,
                 "plain_token_layers": ((2 if with_corrupted else 1) + len(refs) + layers * columns) * n * layers}
        if with_corrupted:
            request["corrupted"] = corrupted
        if intervention == "ablate":
            request["intervention"] = "ablate"
            request["params"] = {"mode": mode, **({"reference": refs} if mode == "mean" else {})}
            reply["params"] = {"mode": mode}
            if mode == "mean":
                reply["reference_tokens"] = refs
        yield name, request, reply, variable

    # Two pairs with their own answers, of different lengths (a heads sweep takes them):
    # each pair's matrix, and the mean of the raw metric normalised with the mean clean and corrupted values.
    other = cases[2][:9]
    other_corrupted = list(other)
    other_corrupted[5] = 9
    second = {"logit_diff": {"answer": 5, "wrong": 9}}
    pairs, raws = [], []
    for pair_clean, pair_corrupted, pair_metric in [(clean, corrupted, metric), (other, other_corrupted, second)]:
        values, c, k = unit_sweep(model, pair_clean, pair_corrupted, "heads", pair_metric)
        raws.append((values, c, k))
        pairs.append({"values": normalize(values, c, k), "clean": c, "corrupted": k, "clean_tokens": pair_clean,
                      "corrupted_tokens": pair_corrupted, "first_difference": pair_corrupted.index(next(
                          b for a, b in zip(pair_clean, pair_corrupted) if a != b)), "metric": pair_metric})
    mean = [[sum(r[0][l][h] for r in raws) / 2 for h in range(model.heads)] for l in range(layers)]
    c, k = sum(r[1] for r in raws) / 2, sum(r[2] for r in raws) / 2
    yield "sweep-pairs-heads", {
        "op": "sweep", "model": "tiny", "kind": "heads", "metric": metric,
        "pairs": [{"clean": clean, "corrupted": corrupted}, {"clean": other, "corrupted": other_corrupted, "metric": second}]}, {
        "status": "ok", **common, "kind": "heads", "values": normalize(mean, c, k), "cols": cols["heads"], "col_axis": "Head",
        "clean": c, "corrupted": k, "intervention": "patch", "corrupted_tokens": corrupted, "first_difference": 3,
        "pairs": pairs, "plain_token_layers": sum((2 + layers * model.heads) * len(p) for p in (clean, other)) * layers}, variable

    base = {"op": "sweep", "model": "tiny", "clean": clean, "corrupted": corrupted, "metric": metric}
    yield "sweep-ablate-unknown-mode", {**base, "intervention": "ablate", "params": {"mode": "half"}}, \
        error("bad_request", "params.mode"), []
    yield "sweep-ablate-mean-without-reference", {**base, "intervention": "ablate", "params": {"mode": "mean"}}, \
        error("bad_request", "params.reference"), []
    yield "sweep-ablate-reference-length", {**base, "intervention": "ablate", "params": {"mode": "mean", "reference": [clean[:-1]]}}, \
        error("shape_mismatch", "params.reference.0"), []
    yield "sweep-ablate-resample-without-corrupted", {
        "op": "sweep", "model": "tiny", "clean": clean, "metric": metric, "intervention": "ablate", "params": {"mode": "resample"}}, \
        error("bad_request", "corrupted"), []
    yield "sweep-pairs-of-different-lengths-by-position", {
        "op": "sweep", "model": "tiny", "kind": "residual", "metric": metric,
        "pairs": [{"clean": clean, "corrupted": corrupted}, {"clean": other, "corrupted": other_corrupted}]}, \
        error("shape_mismatch", "pairs.1.clean"), []


def attribution_vectors(model, cases):
    """Neurons patched exactly, attribution sweeps of every kind at once and compared with the
    exact sweep, and their typed errors (on sweep_vectors' pair)."""
    clean = cases[0]
    corrupted = list(clean)
    corrupted[3] = 7
    n, layers = len(clean), model.layers
    cols = {"residual": [f"{t}_{i}" for i, t in enumerate(clean)], "mlp": [f"{t}_{i}" for i, t in enumerate(clean)],
            "heads": [f"Head {h}" for h in range(model.heads)],
            "head_positions": [f"Head {h} @ {t}" for h in range(model.heads) for t in range(n)],
            "neurons": [f"Neuron {i}" for i in range(model.neurons)]}
    axis = {"residual": "Position", "mlp": "Position", "heads": "Head", "head_positions": "Head @ position", "neurons": "Neuron"}
    request = {"op": "sweep", "model": "tiny", "clean": clean, "corrupted": corrupted}
    variable = ["seconds", "token_layers"]

    def reply(kind, metric, normalized, values, c, k, method):
        result = {"status": "ok", "rows": [str(l) for l in range(layers)], "row_axis": "Layer", "clean_tokens": clean,
                  "corrupted_tokens": corrupted, "first_difference": 3, "seconds": 0.0, "token_layers": 0,
                  "kind": kind, "metric": metric, "normalized": normalized, "intervention": "patch",
                  "values": normalize(values, c, k) if normalized else values, "cols": cols[kind], "col_axis": axis[kind],
                  "clean": c, "corrupted": k, "method": method, "approximation": method == "attribution",
                  "plain_token_layers": (2 + layers * len(cols[kind])) * n * layers}
        return {**result, "backward": {}} if method == "attribution" else result

    logprob = {"logprob": {"answer": 5}}
    values, c, k = unit_sweep(model, clean, corrupted, "neurons", logprob, neuron_positions="sum")
    yield "sweep-neurons-sum", {**request, "kind": "neurons", "neuron_positions": "sum", "metric": logprob, "normalized": False}, {
        **reply("neurons", logprob, False, values, c, k, "activation"), "neuron_positions": "sum", "job": 0, "timing": {}}, variable

    metric = {"logit_diff": {"answer": 1, "wrong": 2}}
    kinds = ["residual", "heads", "head_positions", "mlp", "neurons"]
    results = {}
    for kind in kinds:
        results[kind] = reply(kind, metric, True, *attribution_sweep(model, clean, corrupted, kind, metric), "attribution")
        del results[kind]["status"]
    results["neurons"]["neuron_positions"] = "last"
    yield "sweep-attribution-kinds", {**request, "kind": kinds, "method": "attribution", "metric": metric}, {
        "status": "ok", "method": "attribution", "approximation": True, "kinds": kinds, "results": results, "backward": {},
        "seconds": 0.0, "job": 0, "timing": {}},         ["seconds", "backward", "results.*.seconds", "results.*.token_layers", "results.*.backward"]

    # KL, whose gradient passes through the log-softmax, against the exact heads sweep.
    kl = {"kl": {}}
    estimates, c, k = attribution_sweep(model, clean, corrupted, "heads", kl)
    exact, _, _ = unit_sweep(model, clean, corrupted, "heads", kl)
    a, e = np.array(estimates).ravel(), np.array(exact).ravel()
    worst = int(np.abs(a - e).argmax())
    assert np.sort(np.abs(a - e))[-2] < 0.9 * np.abs(a - e)[worst], "the worst cell is a near tie"
    yield "sweep-attribution-compare-heads", {**request, "kind": "heads", "method": "attribution", "compare": True, "metric": kl,
                                              "normalized": False}, {
        **reply("heads", kl, False, estimates, c, k, "attribution"), "job": 0, "timing": {},
        "exact": {"values": exact, "seconds": 0.0, "token_layers": 0},
        "comparison": {"correlation": float(np.corrcoef(a, e)[0, 1]),
                       "worst": {"row": worst // model.heads, "col": worst % model.heads, "attribution": float(a[worst]),
                                 "exact": float(e[worst]), "difference": float(a[worst] - e[worst])}}},         variable + ["backward", "exact.seconds", "exact.token_layers"]

    base = {**request, "metric": metric, "method": "attribution"}
    yield "sweep-unknown-method", {**base, "method": "gradient"}, error("bad_request", "method"), []
    yield "sweep-attribution-ablate", {**base, "intervention": "ablate", "params": {"mode": "zero"}}, error("bad_request", "method"), []
    yield "sweep-kinds-without-attribution", {**base, "method": "activation", "kind": ["residual", "heads"]}, error("bad_request", "kind"), []
    yield "sweep-compare-without-attribution", {**base, "method": "activation", "compare": True}, error("bad_request", "compare"), []
    yield "sweep-unknown-neuron-positions", {**base, "kind": "neurons", "neuron_positions": "first"},         error("bad_request", "neuron_positions"), []


def trace_vectors(model, cases):
    """The tutorial's residual patch (one layer, one position) as a trace, and trace errors."""
    clean = cases[0]
    corrupted = list(clean)
    corrupted[3] = 7
    record = {}
    model.forward(clean, record=record)
    patched = model.forward(corrupted, resid=(0, 3, record["resid_post.0"][3]))[-1]
    everything = {"slice": [None, None, None]}
    nodes = [
        {"id": 0, "op": "get", "site": "transformer.h.0", "io": "output", "item": 0, "invoke": 0},
        {"id": 1, "op": "index", "x": {"ref": 0}, "key": [everything, 3, everything]},
        {"id": 2, "op": "get", "site": "transformer.h.0", "io": "output", "item": 0, "invoke": 1},
        {"id": 3, "op": "setindex", "x": {"ref": 2}, "key": [":", 3, ":"], "value": {"ref": 1}},
        {"id": 4, "op": "get", "site": "lm_head", "io": "output", "invoke": 1},
        {"id": 5, "op": "index", "x": {"ref": 4}, "key": [0, -1, 1]},
        {"id": 6, "op": "index", "x": {"ref": 4}, "key": [0, -1, 2]},
        {"id": 7, "op": "sub", "x": {"ref": 5}, "y": {"ref": 6}},
        {"id": 8, "op": "save", "x": {"ref": 7}, "name": "patched_logit_diff"},
        {"id": 9, "op": "save", "x": {"ref": 1}, "name": "clean_resid"},
    ]
    scalar = np.array(patched[1] - patched[2], dtype="<f4")
    resid = np.ascontiguousarray(record["resid_post.0"][3].reshape(1, -1), dtype="<f4")
    yield "trace-residual-patch", {"op": "trace", "model": "tiny", "invokes": [clean, {"tokens": corrupted}], "nodes": nodes}, {
        "status": "ok", "names": ["patched_logit_diff", "clean_resid"], "logits": "last", "slots": 2 * len(clean),
        "rows": 0, "token_layers": 0, "plain_token_layers": 2 * len(clean) * model.layers,
        "saved": {"patched_logit_diff": {"dtype": "f32", "shape": [], "data": scalar.tobytes()},
                  "clean_resid": {"dtype": "f32", "shape": [1, 64], "data": resid.tobytes()}},
        "job": 0, "timing": {}}, ["rows", "token_layers"]
    one = {"op": "trace", "model": "tiny", "invokes": [[1, 2]]}
    yield "trace-unknown-site", {**one, "nodes": [{"id": 5, "op": "get", "site": "transformer.h.9.output"}]}, \
        node_error("unknown_site", "nodes.0.site", 5), []
    yield "trace-unknown-op", {**one, "nodes": [{"id": 5, "op": "frobnicate", "x": 1}]}, \
        node_error("unknown_op", "nodes.0.op", 5), []
    yield "trace-unknown-intervention", {**one, "nodes": [{"id": 7, "op": "intervene", "name": "nope", "invoke": 0, "params": {}}]}, \
        node_error("unknown_intervention", "nodes.0.name", 7), []
    yield "trace-forward-reference", {**one, "nodes": [{"id": 0, "op": "save", "x": {"ref": 1}, "name": "x"},
                                                       {"id": 1, "op": "constant", "value": 1}]}, \
        node_error("bad_request", "nodes.0.x", 0), []


def module_call_vectors(model, cases):
    """The trace ops call and weight, and models.weights (added with issue 13, after the
    others so that theirs keep their numbers)."""
    clean = cases[0]
    one = {"op": "trace", "model": "tiny", "invokes": [[1, 2]]}
    # The logit lens after layer 0: lm_head(ln_f(h)), by module calls.
    record = {}
    model.forward(clean, record=record)
    lens = model.norm(record["resid_post.0"][-1], "transformer.ln_f") @ model.w["transformer.wte.weight"].T
    nodes = [{"id": 0, "op": "get", "site": "transformer.h.0", "invoke": 0},
             {"id": 1, "op": "call", "module": "transformer.ln_f", "x": {"ref": 0}},
             {"id": 2, "op": "call", "module": "lm_head", "x": {"ref": 1}},
             {"id": 3, "op": "index", "x": {"ref": 2}, "key": [0, -1, {"slice": [0, 4]}]},
             {"id": 4, "op": "save", "x": {"ref": 3}, "name": "lens"}]
    yield "trace-logit-lens", {"op": "trace", "model": "tiny", "invokes": [clean], "nodes": nodes}, {
        "status": "ok", "names": ["lens"], "logits": "none", "slots": len(clean), "rows": 1, "token_layers": len(clean) * model.layers,
        "plain_token_layers": len(clean) * model.layers,
        "saved": {"lens": {"dtype": "f32", "shape": [4], "data": np.asarray(lens[:4], dtype="<f4").tobytes()}},
        "job": 0, "timing": {}}, []
    yield "trace-call-not-callable", {**one, "nodes": [{"id": 0, "op": "get", "site": "transformer.h.0"},
                                                      {"id": 1, "op": "call", "module": "transformer.h.0.attn", "x": {"ref": 0}}]}, \
        node_error("bad_request", "nodes.1.module", 1), []
    yield "trace-weight-read-only", {**one, "nodes": [{"id": 0, "op": "weight", "module": "transformer.ln_f", "name": "weight"},
                                                     {"id": 1, "op": "setindex", "x": {"ref": 0}, "key": [0], "value": 1}]}, \
        node_error("bad_request", "nodes.1.x", 1), []
    yield from weights_vectors(model)


def weights_vectors(model):
    """models.weights: a parameter by name, the list, an unknown name."""
    bias = np.asarray(model.w["transformer.ln_f.bias"], dtype="<f4")
    yield "models-weights", {"op": "models.weights", "model": "tiny", "names": ["transformer.ln_f.bias"]}, {
        "status": "ok", "weights": {"transformer.ln_f.bias": {"dtype": "f32", "shape": [64], "data": bias.tobytes()}}}, []
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for l in range(model.layers):
        p = f"transformer.h.{l}."
        names += [p + m + "." + w for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
                  for w in ("weight", "bias")]
    names += ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
    shape = {n: list(model.w[n].shape) for n in names if n in model.w}
    shape["lm_head.weight"] = shape["transformer.wte.weight"]
    yield "models-weights-list", {"op": "models.weights", "model": "tiny", "list": True}, {
        "status": "ok", "parameters": [{"name": n, "shape": shape[n]} for n in names]}, []
    yield "models-weights-unknown", {"op": "models.weights", "model": "tiny", "names": ["transformer.ln_f.bias", "lm_head.bias"]}, \
        error("unknown_site", "names.1"), []


def resid_gradient(model, ids, layer, score):
    """d score(the last position's logits) / d resid_post.layer [len, hidden], by central
    differences of the float64 model, element by element."""
    record = {}
    model.forward(ids, record=record)
    gradient = np.zeros_like(record[f"resid_post.{layer}"])
    step = 1e-6
    for index in np.ndindex(gradient.shape):
        def moved(by, index=index):
            def edit(value):
                value[index] += by
                return value
            return score(model.forward(ids, edit=("resid_post", layer, edit))[-1])
        gradient[index] = (moved(step) - moved(-step)) / (2 * step)
    return gradient


def gradient_vectors(model, cases):
    """Attribution patching as a trace (the gradient of the corrupted run's logit difference at
    each layer's output, and (clean - corrupted) . gradient summed over hidden), a set_grad,
    and the gradient errors."""
    clean = cases[0]
    corrupted = list(clean)
    corrupted[3] = 7
    n = len(clean)

    def score(logits):
        return logits[1] - logits[2]

    record = {}
    model.forward(clean, record=record)
    clean_resid = record["resid_post.0"]
    record = {}
    model.forward(corrupted, record=record)
    corrupted_resid = record["resid_post.0"]
    gradients = [resid_gradient(model, corrupted, layer, score) for layer in range(model.layers)]
    attribution = ((clean_resid - corrupted_resid) * gradients[0]).sum(-1)

    def f32(array, shape):
        return {"dtype": "f32", "shape": shape, "data": np.ascontiguousarray(array, dtype="<f4").tobytes()}

    nodes = [
        {"id": 0, "op": "get", "site": "blocks.0.resid_post", "invoke": 0},
        {"id": 1, "op": "get", "site": "blocks.0.resid_post", "invoke": 1},
        {"id": 2, "op": "get", "site": "blocks.1.resid_post", "invoke": 1},
        {"id": 3, "op": "get", "site": "logits", "invoke": 1},
        {"id": 4, "op": "index", "x": {"ref": 3}, "key": [0, -1, 1]},
        {"id": 5, "op": "index", "x": {"ref": 3}, "key": [0, -1, 2]},
        {"id": 6, "op": "sub", "x": {"ref": 4}, "y": {"ref": 5}},
        {"id": 7, "op": "backward", "x": {"ref": 6}},
        {"id": 8, "op": "grad", "x": {"ref": 1}},
        {"id": 9, "op": "grad", "x": {"ref": 2}},
        {"id": 10, "op": "sub", "x": {"ref": 0}, "y": {"ref": 1}},
        {"id": 11, "op": "mul", "x": {"ref": 10}, "y": {"ref": 8}},
        {"id": 12, "op": "sum", "x": {"ref": 11}, "dim": -1},
        {"id": 13, "op": "save", "x": {"ref": 12}, "name": "attribution"},
        {"id": 14, "op": "save", "x": {"ref": 8}, "name": "grad_0"},
        {"id": 15, "op": "save", "x": {"ref": 9}, "name": "grad_1"},
    ]
    common = {"status": "ok", "logits": "last", "slots": 2 * n, "rows": 0, "token_layers": 0,
              "plain_token_layers": 2 * n * model.layers, "backward": {"saved_bytes": 0, "peak_bytes": 0, "records": 0},
              "job": 0, "timing": {}}
    variable = ["rows", "token_layers", "backward.saved_bytes", "backward.peak_bytes", "backward.records"]
    request = {"op": "trace", "model": "tiny", "invokes": [clean, corrupted]}
    yield "trace-gradients-attribution", {**request, "nodes": nodes}, {
        **common, "names": ["attribution", "grad_0", "grad_1"],
        "saved": {"attribution": f32(attribution, [1, n]), "grad_0": f32(gradients[0], [1, n, 64]),
                  "grad_1": f32(gradients[1], [1, n, 64])}}, variable
    # nnsight's `h.grad = h.grad * 2` at layer 1's output: layer 0's gradient doubles.
    doubling = nodes[:10] + [
        {"id": 10, "op": "mul", "x": {"ref": 9}, "y": 2},
        {"id": 11, "op": "set_grad", "x": {"ref": 2}, "value": {"ref": 10}},
        {"id": 12, "op": "save", "x": {"ref": 8}, "name": "grad_0"},
    ]
    yield "trace-set-grad", {**request, "nodes": doubling}, {
        **common, "names": ["grad_0"], "saved": {"grad_0": f32(2 * gradients[0], [1, n, 64])}}, variable

    one = {"op": "trace", "model": "tiny", "invokes": [[1, 2]]}
    resid = {"id": 0, "op": "get", "site": "blocks.0.resid_post"}
    difference = [{"id": 1, "op": "get", "site": "logits"}, {"id": 2, "op": "index", "x": {"ref": 1}, "key": [0, -1, 1]}]
    yield "trace-backward-of-a-tensor", {**one, "nodes": [resid, {"id": 1, "op": "backward", "x": {"ref": 0}}]}, \
        node_error("shape_mismatch", "nodes.1.x", 1), []
    yield "trace-second-backward", {**one, "nodes": [*difference, {"id": 3, "op": "backward", "x": {"ref": 2}},
                                                     {"id": 4, "op": "backward", "x": {"ref": 2}}]}, \
        node_error("bad_request", "nodes.3.op", 4), []
    yield "trace-grad-without-backward", {**one, "nodes": [resid, {"id": 1, "op": "grad", "x": {"ref": 0}}]}, \
        node_error("bad_request", "nodes.1.op", 1), []
    yield "trace-write-from-a-gradient", {**one, "nodes": [
        resid, *difference, {"id": 3, "op": "backward", "x": {"ref": 2}}, {"id": 4, "op": "grad", "x": {"ref": 0}},
        {"id": 5, "op": "set", "site": "blocks.1.resid_post", "value": {"ref": 4}}]}, \
        node_error("out_of_order", "nodes.5.value", 5), []
    yield "trace-gradient-of-an-independent-value", {**one, "nodes": [
        resid, {"id": 1, "op": "get", "site": "blocks.1.resid_post"}, {"id": 2, "op": "sum", "x": {"ref": 0}},
        {"id": 3, "op": "backward", "x": {"ref": 2}}, {"id": 4, "op": "grad", "x": {"ref": 1}}]}, \
        node_error("bad_request", "nodes.4.x", 4), []


def node_error(code, field, node):
    return {"status": "error", "error": {"code": code, "message": "", "field": field, "node": node}}


def twin(value):
    """JSON twin: binary as {"$binary": base64}."""
    import base64
    if isinstance(value, bytes):
        return {"$binary": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: twin(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [twin(item) for item in value]
    return value


def pack(value):
    """Canonical MessagePack: map keys sorted, floats as float64, as the daemon writes."""
    def canonical(value):
        if isinstance(value, dict):
            return {key: canonical(value[key]) for key in sorted(value)}
        if isinstance(value, list):
            return [canonical(item) for item in value]
        return value
    return msgpack.packb(canonical(value), use_bin_type=True)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    manifest = {"protocol": PROTOCOL, "models_dir": "Tests/Fixtures/models", "variable": VARIABLE,
                "float_tolerance": {"absolute": 1e-3, "relative": 1e-3}, "vectors": []}
    for number, (name, request, reply, variable) in enumerate(vectors(), start=1):
        stem = f"{number:02d}-{name}"
        request = {"id": number, **request} if name != "missing-op" else {"id": "four", **request}
        reply = {"id": request["id"], **reply}
        for suffix, value in (("request", request), ("reply", reply)):
            (OUT / f"{stem}.{suffix}.msgpack").write_bytes(pack(value))
            (OUT / f"{stem}.{suffix}.json").write_text(json.dumps(twin(value), indent=1) + "\n")
        manifest["vectors"].append({"name": stem, "variable": variable})
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest['vectors'])} vector pairs to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
