#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (Sources/loupe-fuzz, scripts/fuzz.sh):

- Tests/Fuzz/corpus/ (target `request`): every request of the protocol vectors
  (Protocol/vectors/*.request.msgpack) and the activation-patching tutorial's experiments as
  trace, sweep and forward requests on the tiny GPT-2 fixture (model name `tiny`: 2 layers,
  4 heads, hidden 64, vocabulary 512, context 64), some with their tensor data in attachment
  frames. An input is a message's frames joined by four 0xc1 bytes.
- Tests/Fuzz/corpus-gguf/: the GGUF fixtures (every tensor type Loupe dequantizes) and small
  GGUF files written here: every metadata value type, nested arrays, an alignment of 64, a
  tensor of a type Loupe does not convert, an empty tensor, a tokenizer.
- Tests/Fuzz/corpus-safetensors/: the safetensors fixture and small files written here:
  every dtype, unaligned float32, an empty tensor, a scalar, metadata, a padded header.
- Tests/Fuzz/corpus-config/: every fixture model's config.json and variants that still
  load with the tiny GPT-2 and Llama weights.
- Tests/Fuzz/corpus-tokenizer/: a small byte-level BPE (256 byte tokens and merges learned
  here from Tests/Fixtures/tokenizers/corpus.json) in every format Loupe reads. The first
  byte picks the format (0 tokenizer.json, 1 vocab.json + merges.txt, 2 encoder.json +
  vocab.bpe, 3 GGUF); the files follow, joined by four 0xc1 bytes (a tokenizer_config.json
  last, when there is one).

Every seed is small (under 64 KiB), so that mutations stay fast.

    python3 scripts/make_fuzz_corpus.py [TARGET...]   # all targets when none is named
"""
import glob
import json
import os
import struct
import sys

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


def attribution():
    """Attribution patching at layer 0's output, with the gradient of layer 1's doubled on the way."""
    nodes = [
        {"id": 0, "op": "get", "site": "blocks.0.resid_post", "invoke": 0},
        {"id": 1, "op": "get", "site": "blocks.0.resid_post", "invoke": 1},
        {"id": 2, "op": "get", "site": "blocks.1.resid_post", "invoke": 1},
        {"id": 3, "op": "get", "site": "logits", "invoke": 1},
    ] + logit_diff(3, 4)
    nodes += [
        {"id": 10, "op": "backward", "x": {"ref": 8}},
        {"id": 11, "op": "grad", "x": {"ref": 2}},
        {"id": 12, "op": "mul", "x": {"ref": 11}, "y": 2},
        {"id": 13, "op": "set_grad", "x": {"ref": 2}, "value": {"ref": 12}},
        {"id": 14, "op": "grad", "x": {"ref": 1}},
        {"id": 15, "op": "sub", "x": {"ref": 0}, "y": {"ref": 1}},
        {"id": 16, "op": "mul", "x": {"ref": 15}, "y": {"ref": 14}},
        {"id": 17, "op": "sum", "x": {"ref": 16}, "dim": -1},
        {"id": 18, "op": "save", "x": {"ref": 17}, "name": "attribution"},
    ]
    return trace(nodes)


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
    yield "trace-attribution", [msgpack.packb(attribution(), use_bin_type=True)]
    yield "models-load-outside", [msgpack.packb({"id": 5, "op": "models.load", "name": "x", "source": "../../etc/passwd"})]
    yield "jobs-result", [msgpack.packb({"id": 6, "op": "jobs.result", "job": 1, "mode": "stream"})]


# MARK: The model readers' corpora

FIXTURES = os.path.join(ROOT, "Tests", "Fixtures")


def gguf_file(metadata, tensors, version=3, alignment=32):
    """A GGUF file: metadata as (key, type id, value) with arrays as (element type, values),
    tensors as (name, ne (innermost first), ggml type id, data bytes)."""
    def string(text):
        data = text.encode("utf-8")
        return struct.pack("<Q", len(data)) + data

    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind, item):
        if kind == 8:
            return string(item)
        if kind == 9:
            element, items = item
            return struct.pack("<IQ", element, len(items)) + b"".join(value(element, x) for x in items)
        return struct.pack("<" + scalars[kind], item)

    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, kind, item in metadata:
        out += string(key) + struct.pack("<I", kind) + value(kind, item)
    offset = 0
    for name, ne, kind, data in tensors:
        out += string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", kind, offset)
        offset += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % alignment)
    return out


def floats(count, scale=0.25):
    return struct.pack("<%df" % count, *[scale * (i % 7 - 3) for i in range(count)])


def halves(count):
    return struct.pack("<%de" % count, *[0.5 * (i % 5 - 2) for i in range(count)])


def gguf_seeds():
    for name in ("all_types.gguf", "all_types_v2.gguf"):
        with open(os.path.join(FIXTURES, "formats", name), "rb") as source:
            yield name, source.read()
    every_type = [
        ("general.architecture", 8, "llama"), ("general.alignment", 4, 64),
        ("u8", 0, 200), ("i8", 1, -100), ("u16", 2, 60000), ("i16", 3, -30000), ("u32", 4, 4000000000),
        ("i32", 5, -2000000000), ("f32", 6, 1.5), ("bool", 7, True), ("u64", 10, 1 << 40), ("i64", 11, -(1 << 40)),
        ("f64", 12, 2.25), ("strings", 9, (8, ["a", "", "é"])), ("nested", 9, (9, [(4, [1, 2]), (8, ["x"])])),
        ("llama.block_count", 4, 1), ("llama.context_length", 4, 16), ("llama.embedding_length", 4, 8),
        ("llama.attention.head_count", 4, 2),
    ]
    yield "metadata-every-type-aligned-64", gguf_file(every_type, [
        ("f32", [8, 2], 0, floats(16)),
        ("f16", [4, 3, 2], 1, halves(24)),
        ("q2_k-not-converted", [256], 10, b"\1" * 84),
        ("empty", [0, 4], 0, b""),
        ("scalar", [], 0, floats(1)),
    ], alignment=64)
    yield "v2-one-tensor", gguf_file([("general.name", 8, "tiny")], [("w", [4], 0, floats(4))], version=2)
    yield "no-tensors", gguf_file([("general.architecture", 8, "gpt2")], [])
    yield "tokenizer-smollm", tokenizer_gguf("smollm")


def safetensors_file(tensors, metadata=None, pad=0, shift=0):
    """A safetensors file: tensors as (name, dtype, shape, data bytes), data packed in order
    from `shift` bytes into the data section."""
    header, offset = {}, shift
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + b"\0" * shift + b"".join(t[3] for t in tensors)


def safetensors_seeds():
    with open(os.path.join(FIXTURES, "formats", "tiny.safetensors"), "rb") as source:
        yield "tiny.safetensors", source.read()
    every = [("bool", "BOOL", [3], b"\0\1\1"), ("u8", "U8", [2], b"\1\2"), ("i8", "I8", [2], b"\xff\1"),
             ("f8e5m2", "F8_E5M2", [2], b"\x3c\x40"), ("f8e4m3", "F8_E4M3", [2], b"\x38\x40"),
             ("i16", "I16", [2], struct.pack("<2h", -1, 1)), ("u16", "U16", [1], struct.pack("<H", 9)),
             ("f16", "F16", [2, 3], halves(6)), ("bf16", "BF16", [4], struct.pack("<4H", 0x3f80, 0xbf80, 0, 0x4000)),
             ("i32", "I32", [1], struct.pack("<i", -5)), ("u32", "U32", [1], struct.pack("<I", 5)),
             ("f32", "F32", [2, 2], floats(4)), ("i64", "I64", [1], struct.pack("<q", -5)),
             ("u64", "U64", [1], struct.pack("<Q", 5)), ("f64", "F64", [2], struct.pack("<2d", 0.5, -0.5))]
    yield "every-dtype", safetensors_file(every, metadata={"format": "pt"})
    yield "f32-unaligned-padded", safetensors_file([("w", "F32", [3, 2], floats(6)), ("b", "F32", [3], floats(3))], pad=6, shift=2)
    yield "empty-and-scalar", safetensors_file([("empty", "F32", [0, 5], b""), ("scalar", "F16", [], halves(1)),
                                                 ("x", "BF16", [2, 1, 2], struct.pack("<4H", 1, 2, 3, 4))])
    gpt2 = [("transformer.wte.weight", "F32", [4, 2], floats(8)), ("transformer.h.0.ln_1.weight", "F32", [2], floats(2)),
            ("transformer.h.0.attn.c_attn.weight", "F16", [2, 6], halves(12))]
    yield "gpt2-names", safetensors_file(gpt2, metadata={"format": "pt", "note": "fuzz seed"})
    yield "no-tensors", safetensors_file([], metadata={})


def config_seeds():
    for path in sorted(glob.glob(os.path.join(FIXTURES, "models", "*", "config.json"))):
        with open(path, "rb") as source:
            yield os.path.basename(os.path.dirname(path)), source.read()

    def load(model):
        with open(os.path.join(FIXTURES, "models", model, "config.json")) as source:
            return json.load(source)

    gpt2 = load("gpt2-tiny")
    yield "gpt2-inner-scaled-untied", json.dumps({**gpt2, "n_inner": 256, "scale_attn_by_inverse_layer_idx": True,
                                                  "tie_word_embeddings": False, "activation_function": "gelu_pytorch_tanh"}).encode()
    yield "gpt2-minimal", json.dumps({k: gpt2[k] for k in ("model_type", "n_layer", "n_embd", "n_head", "vocab_size", "n_positions")}).encode()
    llama = load("llama-tiny")
    transformers5 = {k: v for k, v in llama.items() if k != "rope_theta"}
    yield "llama-rope-parameters", json.dumps({**transformers5, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
                                              "head_dim": 16}).encode()
    yield "llama-nan-epsilon", json.dumps({**llama, "rms_norm_eps": 1e-05}).encode().replace(b'"rms_norm_eps": 1e-05', b'"rms_norm_eps": NaN')


def byte_level_alphabet():
    """GPT-2's bytes_to_unicode: the character spelling each byte, in GPT-2's id order."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return spelled, [spelled[b] for b in order]


def small_bpe(merge_count=200):
    """A byte-level BPE learned from the tokenizer fixtures' corpus: (vocab, merges)."""
    import re
    spelled, alphabet = byte_level_alphabet()
    with open(os.path.join(FIXTURES, "tokenizers", "corpus.json")) as source:
        strings = json.load(source)["strings"]
    pattern = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")
    words = {}
    for text in strings[:1500]:
        for piece in pattern.findall(text):
            word = tuple(spelled[b] for b in piece.encode("utf-8"))
            words[word] = words.get(word, 0) + 1
    vocab = {token: i for i, token in enumerate(alphabet)}
    merges = []
    for _ in range(merge_count):
        pairs = {}
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        merged = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    return vocab, merges


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tokenizer_json(style):
    vocab, merges = small_bpe()
    added = []
    for special in SPECIALS:
        vocab[special] = len(vocab)
        added.append({"id": vocab[special], "content": special, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": vocab, "merges": [list(pair) for pair in merges]}
    json_file = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                 "pre_tokenizer": byte_level, "post_processor": None,
                 "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                 "model": model}
    if style == "smollm":
        json_file["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        model["merges"] = [" ".join(pair) for pair in merges]  # the older spelling, "a b"
    elif style == "llama3":
        regex = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
        json_file["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex.replace("\\\\", "\\")}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}
        model["ignore_merges"] = True
        json_file["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": SPECIALS[1], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {SPECIALS[1]: {"id": SPECIALS[1], "ids": [vocab[SPECIALS[1]]], "tokens": [SPECIALS[1]]}}}]}
        json_file["decoder"] = {"type": "Sequence", "decoders": [json_file["decoder"]]}
    elif style == "unknown-token":
        model["unk_token"] = SPECIALS[0]
        model["fuse_unk"] = True
        del vocab["\u0100"]  # byte 0 has no token: the unknown token stands in
        vocab["\u0100x"] = max(vocab.values()) + 1
    return json.dumps(json_file, ensure_ascii=False, separators=(",", ":")).encode()


TOKENIZER_CONFIG = json.dumps({"bos_token": SPECIALS[1], "eos_token": {"content": SPECIALS[2]}, "add_bos_token": False}).encode()


def tokenizer_gguf(pre):
    vocab, merges = small_bpe()
    tokens = sorted(vocab, key=vocab.get) + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
    metadata = [("general.architecture", 8, "llama"), ("tokenizer.ggml.model", 8, "gpt2"), ("tokenizer.ggml.pre", 8, pre),
                ("tokenizer.ggml.tokens", 9, (8, tokens)), ("tokenizer.ggml.token_type", 9, (5, types)),
                ("tokenizer.ggml.merges", 9, (8, [" ".join(pair) for pair in merges])),
                ("tokenizer.ggml.bos_token_id", 4, len(tokens) - 2), ("tokenizer.ggml.eos_token_id", 4, len(tokens) - 1),
                ("tokenizer.ggml.add_bos_token", 7, pre == "llama-bpe")]
    return gguf_file(metadata, [])


def tokenizer_seeds():
    json_files = {style: tokenizer_json(style) for style in ("gpt2", "smollm", "llama3", "unknown-token")}
    for style, data in json_files.items():
        yield "json-" + style, b"\0" + data
    yield "json-with-config", b"\0" + json_files["gpt2"] + SEPARATOR + TOKENIZER_CONFIG
    vocab, merges = small_bpe()
    for special in SPECIALS:
        vocab[special] = len(vocab)
    vocab_json = json.dumps(vocab, ensure_ascii=False).encode()
    merges_txt = ("#version: 0.2\n" + "".join("%s %s\n" % pair for pair in merges)).encode()
    yield "vocab-merges", b"\1" + vocab_json + SEPARATOR + merges_txt
    yield "vocab-merges-config-crlf", b"\1" + vocab_json + SEPARATOR + merges_txt.replace(b"\n", b"\r\n") + SEPARATOR + TOKENIZER_CONFIG
    yield "encoder-vocab-bpe", b"\2" + vocab_json + SEPARATOR + merges_txt
    for pre in ("gpt2", "smollm", "llama-bpe"):
        yield "gguf-" + pre, b"\3" + tokenizer_gguf(pre)


SEEDS = {"gguf": gguf_seeds, "safetensors": safetensors_seeds, "config": config_seeds, "tokenizer": tokenizer_seeds}


def write_request_corpus():
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


def write_reader_corpus(target):
    out = os.path.join(ROOT, "Tests", "Fuzz", "corpus-" + target)
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "*")):
        os.remove(old)
    total = 0
    for name, data in SEEDS[target]():
        assert len(data) <= 64 * 1024, "%s/%s is %d bytes" % (target, name, len(data))
        with open(os.path.join(out, name), "wb") as file:
            file.write(data)
        total += len(data)
    print("%d seeds (%d bytes) in %s" % (len(os.listdir(out)), total, os.path.relpath(out, ROOT)))


def main():
    targets = sys.argv[1:] or ["request"] + list(SEEDS)
    for target in targets:
        if target == "request":
            write_request_corpus()
        elif target in SEEDS:
            write_reader_corpus(target)
        else:
            sys.exit("unknown target %s (request, %s)" % (target, ", ".join(SEEDS)))


if __name__ == "__main__":
    main()
