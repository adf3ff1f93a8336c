#!/usr/bin/env python3
"""Writes the fuzz target's seed corpus, Tests/Fuzz/corpus/: every request of the protocol
vectors (Protocol/vectors/*.request.msgpack) and the activation-patching tutorial's
experiments as trace, sweep and forward requests on the tiny GPT-2 fixture (model name
`tiny`: 2 layers, 4 heads, hidden 64, vocabulary 512, context 64), some with their tensor
data in attachment frames. An input is a message's frames joined by four 0xc1 bytes
(Sources/loupe-fuzz/Fuzz.swift).

    python3 scripts/make_fuzz_corpus.py
"""
import glob
import os
import struct

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fuzz", "corpus")
SEPARATOR = b"\xc1\xc1\xc1\xc1"

# The tutorial's prompts in the fixture's vocabulary: equal lengths, one token apart.
CLEAN = [226, 166, 280, 485, 436, 17, 429]
CORRUPTED = [226, 166, 280, 7, 436, 17, 429]
ANSWER, WRONG = 33, 44
ALL = {"slice": [None, None, None]}


def tensor(dtype, shape, values):
    code = {"f32": "<%df", "i32": "<%di", "i64": "<%dq"}[dtype]
    return {"dtype": dtype, "shape": shape, "data": struct.pack(code % len(values), *values)}


def in_frames(body):
    """The message with every tensor's data moved to an attachment frame."""
    frames = []

    def move(value):
        if isinstance(value, dict):
            if {"dtype", "shape", "data"} <= value.keys() and isinstance(value["data"], bytes):
                frames.append(value["data"])
                return {**value, "data": {"frame": len(frames)}}
            return {key: move(item) for key, item in value.items()}
        if isinstance(value, list):
            return [move(item) for item in value]
        return value

    moved = move(body)
    return [msgpack.packb(moved, use_bin_type=True)] + frames


def trace(nodes, invokes=(CLEAN, CORRUPTED), **extra):
    return {"id": 1, "op": "trace", "model": "tiny", "invokes": [list(t) for t in invokes], "nodes": nodes, **extra}


def logit_diff(logits_ref, first_id):
    """Nodes computing logits[0, -1, ANSWER] - logits[0, -1, WRONG] from node `logits_ref`."""
    last = {"id": first_id, "op": "index", "x": {"ref": logits_ref}, "key": [0, -1]}
    return [
        last,
        {"id": first_id + 1, "op": "index", "x": {"ref": first_id}, "key": [[ANSWER, WRONG]]},
        {"id": first_id + 2, "op": "index", "x": {"ref": first_id + 1}, "key": 0},
        {"id": first_id + 3, "op": "index", "x": {"ref": first_id + 1}, "key": 1},
        {"id": first_id + 4, "op": "sub", "x": {"ref": first_id + 2}, "y": {"ref": first_id + 3}},
        {"id": first_id + 5, "op": "save", "x": {"ref": first_id + 4}, "name": "logit_diff"},
    ]


def residual_patch_by_hand(layer, position):
    """The tutorial's cell: h[L].output[0][:, t, :] of the clean run into the corrupted run."""
    return trace([
        {"id": 0, "op": "get", "site": "transformer.h.%d" % layer, "item": 0, "invoke": 0},
        {"id": 1, "op": "index", "x": {"ref": 0}, "key": [ALL, position, ALL]},
        {"id": 2, "op": "get", "site": "transformer.h.%d" % layer, "item": 0, "invoke": 1},
        {"id": 3, "op": "setindex", "x": {"ref": 2}, "key": [":", position, ":"], "value": {"ref": 1}},
        {"id": 4, "op": "get", "site": "lm_head.output", "invoke": 1},
    ] + logit_diff(4, 5))


def head_patch():
    return trace([
        {"id": 0, "op": "intervene", "name": "head_patch", "invoke": 1,
         "params": {"source": 0, "layer": 1, "head": 2, "positions": [3]}},
        {"id": 1, "op": "get", "site": "logits", "invoke": 1},
    ] + logit_diff(1, 2))


def heads_by_hand():
    """Head 1 of layer 0 from the clean run, through split_heads on the o_proj input."""
    return trace([
        {"id": 0, "op": "get", "site": "transformer.h.0.attn.c_proj", "io": "input", "item": 0, "invoke": 0},
        {"id": 1, "op": "split_heads", "x": {"ref": 0}, "heads": 4},
        {"id": 2, "op": "get", "site": "transformer.h.0.attn.c_proj", "io": "input", "item": 0, "invoke": 1},
        {"id": 3, "op": "split_heads", "x": {"ref": 2}, "heads": 4},
        {"id": 4, "op": "index", "x": {"ref": 1}, "key": ["...", 1, ":"]},
        {"id": 5, "op": "setindex", "x": {"ref": 3}, "key": ["...", 1, ":"], "value": {"ref": 4}},
        {"id": 6, "op": "get", "site": "blocks.1.attn.pattern", "invoke": 1},
        {"id": 7, "op": "save", "x": {"ref": 6}, "name": "pattern"},
    ])


def ablate_and_steer():
    vector = tensor("f32", [64], [0.01 * i for i in range(64)])
    return trace([
        {"id": 0, "op": "intervene", "name": "ablate", "invoke": 0,
         "params": {"component": "head", "layer": 0, "head": 3, "mode": "zero"}},
        {"id": 1, "op": "intervene", "name": "steer", "invoke": 1,
         "params": {"layers": [1], "vector": vector, "scale": 2.0, "positions": [-1]}},
        {"id": 2, "op": "get", "site": "blocks.1.resid_post", "invoke": 1},
        {"id": 3, "op": "mean", "x": {"ref": 2}, "dim": -1, "keepdim": True},
        {"id": 4, "op": "softmax", "x": {"ref": 2}, "dim": -1},
        {"id": 5, "op": "topk", "x": {"ref": 4}, "k": 3, "indices": True},
        {"id": 6, "op": "save", "x": {"ref": 5}, "name": "top"},
        {"id": 7, "op": "save", "x": {"ref": 3}, "name": "mean"},
    ])


def batched_residual():
    """The tutorial's batched cell: one invocation per (layer, position), clean and corrupted first."""
    invokes = [CLEAN, CORRUPTED] + [CORRUPTED] * 4
    nodes = []
    cell = 2
    for layer in range(2):
        for position in (3, 6):
            nodes.append({"id": len(nodes), "op": "intervene", "name": "residual_patch", "invoke": cell,
                          "params": {"source": 0, "layers": layer, "positions": [position]}})
            cell += 1
    nodes.append({"id": len(nodes), "op": "get", "site": "logits", "invoke": 5})
    nodes.extend(logit_diff(len(nodes) - 1, len(nodes)))
    return trace(nodes, invokes=invokes)


def math_ops():
    x = tensor("f32", [2, 3], [1.0, -2.0, 3.5, 0.0, 4.0, -1.0])
    return trace([
        {"id": 0, "op": "constant", "value": x},
        {"id": 1, "op": "full", "shape": [3, 2], "value": 0.5},
        {"id": 2, "op": "matmul", "x": {"ref": 0}, "y": {"ref": 1}},
        {"id": 3, "op": "exp", "x": {"ref": 2}},
        {"id": 4, "op": "cat", "xs": [{"ref": 2}, {"ref": 3}], "dim": 1},
        {"id": 5, "op": "stack", "xs": [{"ref": 4}, {"ref": 4}]},
        {"id": 6, "op": "permute", "x": {"ref": 5}, "dims": [2, 0, 1]},
        {"id": 7, "op": "reshape", "x": {"ref": 6}, "shape": [-1]},
        {"id": 8, "op": "argmax", "x": {"ref": 7}, "dim": None},
        {"id": 9, "op": "save", "x": {"ref": 8}, "name": "argmax"},
        {"id": 10, "op": "log_softmax", "x": {"ref": 7}, "dim": 0},
        {"id": 11, "op": "save", "x": {"ref": 10}, "name": "log_softmax"},
    ], invokes=[CLEAN])


def messages():
    yield "sweep-residual", [msgpack.packb({"id": 2, "op": "sweep", "model": "tiny", "clean": CLEAN, "corrupted": CORRUPTED,
                                           "metric": {"logit_diff": {"answer": ANSWER, "wrong": WRONG}}})]
    yield "sweep-heads-kl", [msgpack.packb({"id": 3, "op": "sweep", "model": "tiny", "kind": "heads", "clean": {"tokens": CLEAN},
                                           "corrupted": {"tokens": CORRUPTED}, "metric": "kl", "mode": "detach"})]
    yield "forward-tensor-tokens", in_frames({"id": 4, "op": "forward", "model": "tiny", "frames": True, "logits": True,
                                              "tokens": tensor("i64", [2, 7], CLEAN + CORRUPTED), "positions": [0, -1],
                                              "save": ["blocks.0.attn.q.output", "transformer.h.1.mlp.output"]})
    yield "trace-residual-by-hand", [msgpack.packb(residual_patch_by_hand(1, 3), use_bin_type=True)]
    yield "trace-head-patch", [msgpack.packb(head_patch(), use_bin_type=True)]
    yield "trace-heads-by-hand", [msgpack.packb(heads_by_hand(), use_bin_type=True)]
    yield "trace-ablate-steer", [msgpack.packb(ablate_and_steer(), use_bin_type=True)]
    yield "trace-ablate-steer-frames", in_frames(ablate_and_steer())
    yield "trace-batched-residual", [msgpack.packb(batched_residual(), use_bin_type=True)]
    yield "trace-math", in_frames(math_ops())
    yield "models-load-outside", [msgpack.packb({"id": 5, "op": "models.load", "name": "x", "source": "../../etc/passwd"})]
    yield "jobs-result", [msgpack.packb({"id": 6, "op": "jobs.result", "job": 1, "mode": "stream"})]


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in glob.glob(os.path.join(OUT, "*")):
        os.remove(old)
    count = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "Protocol", "vectors", "*.request.msgpack"))):
        name = os.path.basename(path).replace(".request.msgpack", "")
        with open(path, "rb") as source, open(os.path.join(OUT, "vector-" + name), "wb") as out:
            out.write(source.read())
        count += 1
    for name, frames in messages():
        with open(os.path.join(OUT, "tutorial-" + name), "wb") as out:
            out.write(SEPARATOR.join(frames))
        count += 1
    print("%d seeds in %s" % (count, os.path.relpath(OUT, ROOT)))


if __name__ == "__main__":
    main()
