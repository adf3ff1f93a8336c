#!/usr/bin/env python3
"""Writes Protocol/vectors/: golden request/reply pairs of the Loupe wire protocol.

Each pair is NN-name.request.msgpack / .request.json and NN-name.reply.msgpack / .reply.json,
and manifest.json lists them in replay order with the fields whose values vary between
runs. The replies are written from the protocol's definition (Protocol/PROTOCOL.md) and,
for numbers the model computes, from the HF reference activations committed with the tiny
fixture models (Tests/Fixtures/models/*/expected.safetensors), never from Loupe's own
output. Replay with scripts/conformance.py or the Swift ConformanceTests against a daemon
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

OPS = ["hello", "models.list", "models.load", "models.unload", "models.describe", "tokenize", "detokenize", "forward",
       "jobs.status", "jobs.cancel", "jobs.result", "server.stats", "server.shutdown"]

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


def top(logits, k):
    """The k largest logits, best first, as the protocol's {id, token, logit} (no tokenizer: token nil)."""
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:k]
    return [{"id": i, "token": None, "logit": float(logits[i])} for i in order]


def error(code, field):
    return {"status": "error", "error": {"code": code, "message": "", "field": field}}


def vectors():
    cases = json.loads((MODELS / "gpt2-tiny" / "cases.json").read_text())["sequences"]
    expected = safetensors(MODELS / "gpt2-tiny" / "expected.safetensors")
    ok = {"status": "ok"}
    yield "hello", {"op": "hello", "protocol": 1, "client": "conformance"}, {
        **ok, "protocol": 1, "server": "loupe", "server_version": "", "architectures": ["gpt2", "llama"],
        "interventions": [], "trace_ops": [], "ops": OPS,
        "limits": {"max_message_bytes": 256 << 20, "max_batch_tokens": 65536, "max_queue": 64}}, []
    yield "hello-version-mismatch", {"op": "hello", "protocol": 99}, error("version_mismatch", "protocol"), []
    yield "unknown-op", {"op": "models.frobnicate"}, error("unknown_op", "op"), []
    yield "missing-op", {"name": "tiny"}, error("bad_request", "op"), []
    yield "trace-reserved", {"op": "trace", "model": "tiny"}, error("not_implemented", "op"), []
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
    yield "forward-unknown-model", {"op": "forward", "model": "nope", "tokens": [[1]]}, error("unknown_model", "model"), []
    yield "jobs-status-not-found", {"op": "jobs.status", "job": 123456}, error("not_found", "job"), []
    yield "models-unload", {"op": "models.unload", "name": "tiny"}, {**ok, "name": "tiny", "freed": True}, []
    yield "models-load-not-found", {"op": "models.load", "name": "ghost", "source": "no-such-model.gguf"}, \
        error("not_found", "source"), ["job"]


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
    manifest = {"protocol": 1, "models_dir": "Tests/Fixtures/models", "variable": VARIABLE,
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
