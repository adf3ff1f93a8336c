#!/usr/bin/env python3
"""Writes the catalogue of hostile model files that HostileModelFileTests loads into a
`loupe serve` process, one `models.load` each.

    python3 scripts/make_hostile_models.py OUT_DIR

Plain Python 3 and numpy; deterministic; well under a second; about 35 MB on disk
(unchanged weights are hard links to one copy; the two over-the-limit cases are sparse files
whose 4 GiB tails are holes). Every case is derived from a model that loads: the tiny GPT-2 and
Llama fixtures (Tests/Fixtures/models) as HF directories, and a tiny Llama GGUF written
here from llama-tiny's weights (F32, F16, Q8_0 and Q4_0 tensors, a 512-token byte-level
BPE vocabulary in its metadata). Those bases are listed as controls: the test loads them
first, so each case fails for the one defect it names and not for a broken base.

OUT_DIR/
  manifest.json   {"root", "max_model_mb", "controls": [...], "cases": [...]}; each case
                  {name, source (relative to the root), tests, expect (the error code on the
                  wire), mentions (text the error message must contain)}
  root/           the model root the daemon is given (--model-root)
  outside/        valid models outside the root, which some links in the root point to

The expected codes (Protocol/PROTOCOL.md, "Error codes" and `models.load`): `load_failed`
for a file that exists but is not a model Loupe can run, `not_found` for a path that
resolves to nothing, `bad_request` for a path outside the root, and `too_large` for a model
whose weights, all there, exceed `loupe serve --max-model-mb` as float32 (refused from the
headers, before any weight is read). Headers declaring more data than the file holds are a
bad file (`load_failed`), however large the declaration.
"""
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "Tests" / "Fixtures" / "models"
# The limit the test daemon runs with: SmolLM2 (540 MB as float32) fits, 50 GB does not.
MAX_MODEL_MB = 2048
# The over-the-limit cases' unused tensor: 4 GiB of float32, stored as a hole in a sparse file.
SPARSE_ROWS = 1 << 24
SPARSE_BYTES = SPARSE_ROWS * 64 * 4

# ----------------------------------------------------------------------------- tokenizer

def byte_level_alphabet():
    """GPT-2's bytes_to_unicode: the character that stands for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


ALPHABET = byte_level_alphabet()
LETTERS = "abcdefghijklmnop"
MERGES = [(a, b) for a in LETTERS for b in LETTERS]           # 256 merges
TOKENS = ALPHABET + [a + b for a, b in MERGES]                 # 512 tokens: the fixtures' vocabulary


def tokenizer_json(vocab=None, merges=None, added=None, extra=None):
    """An HF tokenizer.json for byte-level BPE (as tokenizers writes it)."""
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added or [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab if vocab is not None else {t: i for i, t in enumerate(TOKENS)},
            "merges": merges if merges is not None else [f"{a} {b}" for a, b in MERGES],
        },
    }
    if extra:
        doc.update(extra)
    return json.dumps(doc, ensure_ascii=False).encode()

# ----------------------------------------------------------------------------- safetensors

def read_safetensors(path):
    """(header dict in file order, data bytes)."""
    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    return header, raw[8 + length:]


def safetensors_bytes(header, data, header_text=None):
    """The file: u64 header length, the JSON header padded with spaces to 8 bytes, the data."""
    text = header_text if header_text is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tensor_range(header, name):
    begin, end = header[name]["data_offsets"]
    return begin, end

# ----------------------------------------------------------------------------- GGUF

GT = dict(u8=0, i8=1, u16=2, i16=3, u32=4, i32=5, f32=6, bool=7, str=8, arr=9, u64=10, i64=11, f64=12)
F32, F16, Q4_0, Q8_0, Q8_1 = 0, 1, 2, 8, 9


def gguf_string(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def gguf_value(kind, value):
    if kind == "str":
        return gguf_string(value)
    if kind == "arr":
        sub, items = value
        return struct.pack("<IQ", GT[sub], len(items)) + b"".join(gguf_value(sub, item) for item in items)
    fmt = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f",
           "bool": "<B", "u64": "<Q", "i64": "<q", "f64": "<d"}[kind]
    return struct.pack(fmt, value)


def q8_0(x):
    """ggml's Q8_0: blocks of 32, a float16 scale and 32 int8."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    d = amax / 127
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    q = np.round(blocks * inv[:, None]).astype(np.int8)
    out = np.zeros((len(blocks), 34), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def q4_0(x):
    """ggml's Q4_0: blocks of 32, a float16 scale and 16 bytes of 4-bit values."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    index = np.abs(blocks).argmax(axis=1)
    peak = blocks[np.arange(len(blocks)), index]
    d = peak / -8
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, (blocks * inv[:, None] + 8.5).astype(np.int8)).astype(np.uint8)
    out = np.zeros((len(blocks), 18), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


class GGUF:
    """A GGUF v3 file being built: metadata and tensors, then `build()` lays it out and
    records where each section starts, so cases can cut or patch it at a chosen place."""

    def __init__(self):
        self.magic = b"GGUF"
        self.version = 3
        self.kvs = []        # [key, kind, value] or raw bytes
        self.tensors = []    # dicts: name, ne (ggml order), type, data, offset (None: laid out)
        self.tensor_count = None
        self.kv_count = None
        self.alignment = 32

    def copy(self):
        other = GGUF()
        other.magic, other.version, other.alignment = self.magic, self.version, self.alignment
        other.kvs = [list(kv) if isinstance(kv, list) else kv for kv in self.kvs]
        other.tensors = [dict(t) for t in self.tensors]
        other.tensor_count, other.kv_count = self.tensor_count, self.kv_count
        return other

    def set(self, key, kind, value):
        for kv in self.kvs:
            if isinstance(kv, list) and kv[0] == key:
                kv[1], kv[2] = kind, value
                return self
        self.kvs.append([key, kind, value])
        return self

    def drop(self, key):
        self.kvs = [kv for kv in self.kvs if not (isinstance(kv, list) and kv[0] == key)]
        return self

    def tensor(self, name):
        return next(t for t in self.tensors if t["name"] == name)

    def build(self):
        layout = {}
        out = bytearray(self.magic + struct.pack("<I", self.version))
        out += struct.pack("<QQ", len(self.tensors) if self.tensor_count is None else self.tensor_count,
                           len(self.kvs) if self.kv_count is None else self.kv_count)
        layout["header_end"] = len(out)
        layout["kv"] = {}
        for kv in self.kvs:
            if isinstance(kv, list):
                layout["kv"][kv[0]] = len(out)
                out += gguf_string(kv[0]) + struct.pack("<I", GT[kv[1]]) + gguf_value(kv[1], kv[2])
            else:
                out += kv
        layout["kv_end"] = len(out)
        offset, offsets = 0, []
        for t in self.tensors:
            offset += -offset % self.alignment
            offsets.append(offset if t.get("offset") is None else t["offset"])
            if t.get("offset") is None:
                offset += len(t["data"])
        layout["infos"] = []
        for t, at in zip(self.tensors, offsets):
            layout["infos"].append(len(out))
            out += gguf_string(t["name"]) + struct.pack("<I", len(t["ne"]))
            out += b"".join(struct.pack("<Q", n) for n in t["ne"])
            out += struct.pack("<IQ", t["type"], at)
        layout["infos_end"] = len(out)
        out += b"\0" * (-len(out) % self.alignment)
        layout["data_start"] = len(out)
        layout["tensor_data"] = {}
        for t, at in zip(self.tensors, offsets):
            if t.get("offset") is not None:
                continue
            out += b"\0" * (layout["data_start"] + at - len(out))
            layout["tensor_data"][t["name"]] = len(out)
            out += t["data"]
        return bytes(out), layout


def llama_gguf(weights):
    """llama-tiny as a GGUF file with its tokenizer in the metadata."""
    g = GGUF()
    g.set("general.architecture", "str", "llama")
    g.set("general.name", "str", "loupe-hostile-base")
    g.set("general.alignment", "u32", 32)
    g.set("llama.context_length", "u32", 64)
    g.set("llama.embedding_length", "u32", 64)
    g.set("llama.block_count", "u32", 2)
    g.set("llama.feed_forward_length", "u32", 128)
    g.set("llama.attention.head_count", "u32", 4)
    g.set("llama.attention.head_count_kv", "u32", 2)
    g.set("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5)
    g.set("llama.rope.freq_base", "f32", 10000.0)
    g.set("tokenizer.ggml.model", "str", "gpt2")
    g.set("tokenizer.ggml.pre", "str", "gpt2")
    g.set("tokenizer.ggml.tokens", "arr", ("str", TOKENS))
    g.set("tokenizer.ggml.merges", "arr", ("str", [f"{a} {b}" for a, b in MERGES]))
    g.set("tokenizer.ggml.eos_token_id", "u32", 0)

    def permute(w, heads):  # llama.cpp's conversion interleaves the rotary halves of q and k
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def add(name, array, kind):
        array = np.ascontiguousarray(array, dtype=np.float32)
        data = {F32: lambda a: a.tobytes(), F16: lambda a: a.astype(np.float16).tobytes(), Q8_0: q8_0, Q4_0: q4_0}[kind](array)
        g.tensors.append({"name": name, "ne": list(reversed(array.shape)), "type": kind, "data": data})

    add("token_embd.weight", weights["model.embed_tokens.weight"], F32)
    for layer in range(2):
        p, h = f"blk.{layer}.", f"model.layers.{layer}."
        add(p + "attn_norm.weight", weights[h + "input_layernorm.weight"], F32)
        add(p + "attn_q.weight", permute(weights[h + "self_attn.q_proj.weight"], 4), F32)
        add(p + "attn_k.weight", permute(weights[h + "self_attn.k_proj.weight"], 2), F32)
        add(p + "attn_v.weight", weights[h + "self_attn.v_proj.weight"], F32)
        add(p + "attn_output.weight", weights[h + "self_attn.o_proj.weight"], F32)
        add(p + "ffn_norm.weight", weights[h + "post_attention_layernorm.weight"], F32)
        add(p + "ffn_gate.weight", weights[h + "mlp.gate_proj.weight"], Q8_0)
        add(p + "ffn_up.weight", weights[h + "mlp.up_proj.weight"], Q4_0)
        add(p + "ffn_down.weight", weights[h + "mlp.down_proj.weight"], F16)
    add("output_norm.weight", weights["model.norm.weight"], F32)
    return g

# ----------------------------------------------------------------------------- the catalogue

class Catalogue:
    def __init__(self, out):
        self.out = Path(out)
        self.root = self.out / "root"
        self.outside = self.out / "outside"
        self.cases = []
        self.controls = []
        self.names = set()

    def path(self, name):
        assert name not in self.names, f"duplicate case {name}"
        self.names.add(name)
        return self.root / name

    def case(self, name, tests, expect="load_failed", mentions=None, source=None):
        self.cases.append({"name": name, "source": source or name, "tests": tests, "expect": expect,
                           "mentions": mentions or os.path.basename((source or name).rstrip("/"))})

    def control(self, name, tests):
        self.controls.append({"name": name, "source": name, "tests": tests})

    def write(self, name, data):
        path = self.path(name)
        path.write_bytes(data)
        return path

    def hf(self, name, base, replace=None, link=(), remove=()):
        """An HF directory: `base`'s files hard-linked (copied if that fails), those in
        `replace` written (bytes) or made by a callable given the path."""
        directory = self.path(name)
        directory.mkdir()
        replace = replace or {}
        for entry in sorted(os.listdir(base)):
            if entry in replace or entry in remove:
                continue
            try:
                os.link(base / entry, directory / entry)
            except OSError:
                shutil.copyfile(base / entry, directory / entry)
        for entry, content in replace.items():
            if callable(content):
                content(directory / entry)
            else:
                (directory / entry).write_bytes(content)
        return directory


def config_text(config, **changes):
    """config.json as transformers writes it: json.dumps, so NaN and Infinity appear as bare
    tokens, as they do in real HF configs."""
    doc = dict(config)
    for key, value in changes.items():
        if value is DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc, indent=2).encode()


DELETE = object()


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ["root", "outside"]:
        if (out / stale).exists() or (out / stale).is_symlink():
            shutil.rmtree(out / stale)
    c = Catalogue(out)
    c.root.mkdir()
    c.outside.mkdir()

    # --- The bases, and valid models outside the root.
    gpt2_config = json.loads((FIXTURES / "gpt2-tiny" / "config.json").read_text())
    llama_config = json.loads((FIXTURES / "llama-tiny" / "config.json").read_text())
    gpt2_header, gpt2_data = read_safetensors(FIXTURES / "gpt2-tiny" / "model.safetensors")
    llama_header, llama_data = read_safetensors(FIXTURES / "llama-tiny" / "model.safetensors")
    llama_weights = {}
    for name, entry in llama_header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        llama_weights[name] = np.frombuffer(llama_data[begin:end], dtype="<f4").reshape(entry["shape"])

    base_gpt2 = c.path("base-gpt2")
    base_gpt2.mkdir()
    (base_gpt2 / "config.json").write_bytes(config_text(gpt2_config))
    (base_gpt2 / "model.safetensors").write_bytes(safetensors_bytes(gpt2_header, gpt2_data))
    c.control("base-gpt2", "the tiny GPT-2 as an HF directory: every gpt2 case changes one thing of it")
    base_llama = c.path("base-llama")
    base_llama.mkdir()
    (base_llama / "config.json").write_bytes(config_text(llama_config))
    (base_llama / "model.safetensors").write_bytes(safetensors_bytes(llama_header, llama_data))
    (base_llama / "tokenizer.json").write_bytes(tokenizer_json())
    c.control("base-llama", "the tiny Llama as an HF directory with a 512-token tokenizer.json: every llama case changes one thing of it")
    base = llama_gguf(llama_weights)
    base_bytes, layout = base.build()
    c.write("base-llama.gguf", base_bytes)
    c.control("base-llama.gguf", "the tiny Llama as GGUF (F32, F16, Q8_0, Q4_0 tensors, tokenizer in the metadata): every gguf case changes one thing of it")

    (c.outside / "secret.gguf").write_bytes(base_bytes)
    shutil.copytree(base_gpt2, c.outside / "secret-hf")

    def gguf_case(name, tests, build, expect="load_failed"):
        name += ".gguf"  # the loader takes a .gguf file for GGUF, anything else for an HF directory
        g = base.copy()
        result = build(g)
        data = result if isinstance(result, (bytes, bytearray)) else g.build()[0]
        c.write(name, bytes(data))
        c.case(name, tests, expect)

    def patched(offset, new):
        data = bytearray(base_bytes)
        data[offset:offset + len(new)] = new
        return bytes(data)

    # --- GGUF: truncation at every section.
    tokens_at = layout["kv"]["tokenizer.ggml.tokens"]
    cuts = [
        ("gguf-empty", 0, "an empty file"),
        ("gguf-cut-in-magic", 2, "cut inside the magic"),
        ("gguf-cut-in-version", 6, "cut inside the version"),
        ("gguf-cut-in-counts", 12, "cut inside the tensor count"),
        ("gguf-cut-before-metadata", layout["header_end"], "the header only: metadata promised, none there"),
        ("gguf-cut-in-metadata-key", layout["kv"]["llama.block_count"] + 12, "cut inside a metadata key"),
        # Past the first 4096 bytes of the strings, so the 512 strings declared could still fit
        # in what is left and the cut is found by reading them.
        ("gguf-cut-in-metadata-value", tokens_at + 8 + len("tokenizer.ggml.tokens") + 4 + 12 + 4400, "cut inside the token list's strings"),
        # In the second tensor's entry: the first one's data offset (0) still lies inside the
        # file, so the cut is found by reading the table.
        ("gguf-cut-in-tensor-info", layout["infos"][1] + 12, "cut inside the tensor-info table (a tensor name)"),
        ("gguf-cut-in-tensor-dims", layout["infos"][1] + 8 + len(base.tensors[1]["name"]) + 4 + 4, "cut inside a tensor's dimensions"),
        ("gguf-cut-before-data", layout["infos_end"], "the tensor table complete, no tensor data"),
        ("gguf-cut-in-data", layout["tensor_data"]["blk.1.attn_q.weight"] + 100, "cut inside the tensor data"),
        ("gguf-cut-last-byte", len(base_bytes) - 1, "the last tensor one byte short"),
    ]
    for name, at, what in cuts:
        gguf_case(name, f"truncation: {what} (byte {at} of {len(base_bytes)})", lambda g, at=at: base_bytes[:at])

    # --- GGUF: the header and metadata.
    gguf_case("gguf-bad-magic", "magic 'GGUG'", lambda g: patched(0, b"GGUG"))
    gguf_case("gguf-version-99", "GGUF version 99", lambda g: patched(4, struct.pack("<I", 99)))
    gguf_case("gguf-tensor-count-huge", "tensor count 2^64-1 (more than the file could hold)", lambda g: patched(8, struct.pack("<Q", 2**64 - 1)))
    gguf_case("gguf-metadata-count-huge", "metadata count 2^63", lambda g: patched(16, struct.pack("<Q", 2**63)))
    key_at = layout["kv"]["general.architecture"]
    gguf_case("gguf-key-length-huge", "a metadata key declaring 2^64-1 bytes", lambda g: patched(key_at, struct.pack("<Q", 2**64 - 1)))
    count_at = tokens_at + 8 + len("tokenizer.ggml.tokens") + 4 + 4
    gguf_case("gguf-array-count-huge", "the token array declaring 2^62 strings", lambda g: patched(count_at, struct.pack("<Q", 2**62)))
    gguf_case("gguf-array-count-overflow", "the token array declaring 2^64-1 strings (count x size overflows)", lambda g: patched(count_at, struct.pack("<Q", 2**64 - 1)))

    def nested(g):
        depth = 10_000  # arrays of one array each, a u8 at the bottom
        g.kvs.insert(0, gguf_string("loupe.nested") + struct.pack("<I", GT["arr"])
                     + struct.pack("<IQ", GT["arr"], 1) * (depth - 1) + struct.pack("<IQ", GT["u8"], 1) + b"\x01")
    gguf_case("gguf-nested-arrays", "a metadata value of arrays nested 10,000 deep", nested)
    gguf_case("gguf-unknown-value-type", "a metadata value of type 99", lambda g: g.kvs.insert(1, gguf_string("loupe.odd") + struct.pack("<I", 99) + b"\0" * 8))
    gguf_case("gguf-duplicate-key", "the metadata key llama.block_count twice", lambda g: g.kvs.append(["llama.block_count", "u32", 2]))
    gguf_case("gguf-alignment-not-power-of-two", "general.alignment 24", lambda g: g.set("general.alignment", "u32", 24))
    gguf_case("gguf-alignment-zero", "general.alignment 0", lambda g: g.set("general.alignment", "u32", 0))

    # --- GGUF: the tensor table.
    def dims(name, ne):
        def edit(g):
            g.tensor(name)["ne"] = ne
        return edit
    gguf_case("gguf-dims-overflow-product", "a tensor of 4 dimensions of 2^31-1: the element count overflows 64 bits", dims("blk.0.attn_v.weight", [2**31 - 1] * 4))
    gguf_case("gguf-dims-overflow-bytes", "an F32 tensor of [2^31-1, 2^31-1]: the element count fits in 64 bits, the byte count does not", dims("blk.0.attn_v.weight", [2**31 - 1, 2**31 - 1]))
    gguf_case("gguf-dim-huge", "a dimension of 2^63", dims("blk.0.attn_v.weight", [64, 2**63]))
    gguf_case("gguf-rank-9", "a tensor of rank 9", dims("output_norm.weight", [64] + [1] * 8))
    gguf_case("gguf-tensor-shape-wrong", "blk.0.attn_q.weight [32, 64] where the metadata needs [64, 64]", dims("blk.0.attn_q.weight", [64, 32]))

    def offset(name, value):
        def edit(g):
            g.tensor(name)["offset"] = value
        return edit
    gguf_case("gguf-offset-past-end", "a tensor's data offset 2^40, past the end", offset("blk.1.attn_v.weight", 2**40))
    gguf_case("gguf-offset-overflow", "a tensor's data offset 2^64-32: offset + size overflows", offset("output_norm.weight", 2**64 - 32))
    gguf_case("gguf-offset-misaligned", "a tensor's data offset not a multiple of the alignment", offset("blk.0.attn_norm.weight", 4))

    def overlap(g):
        # attn_k's data placed on attn_q's (both F32; the k matrix is the smaller).
        data_q = layout["tensor_data"]["blk.0.attn_q.weight"] - layout["data_start"]
        g.tensor("blk.0.attn_k.weight")["offset"] = data_q
    gguf_case("gguf-overlapping-tensors", "blk.0.attn_k.weight's data lies inside blk.0.attn_q.weight's", overlap)

    def duplicate_tensor(g):
        g.tensors.append(dict(g.tensor("output_norm.weight")))
    gguf_case("gguf-duplicate-tensor-name", "output_norm.weight listed twice", duplicate_tensor)

    def retype(name, kind, data=None):
        def edit(g):
            g.tensor(name)["type"] = kind
            if data is not None:
                g.tensor(name)["data"] = data
        return edit
    gguf_case("gguf-unknown-quant-type", "blk.0.attn_q.weight of ggml type 99", retype("blk.0.attn_q.weight", 99))
    gguf_case("gguf-unknown-quant-type-huge", "blk.0.ffn_up.weight of ggml type 2^32-1", retype("blk.0.ffn_up.weight", 2**32 - 1))
    gguf_case("gguf-unconvertible-type", "blk.0.attn_q.weight as Q8_1 (a type Loupe has no converter for), its bytes all there",
              retype("blk.0.attn_q.weight", Q8_1, b"\0" * (64 * 2 * 40)))
    gguf_case("gguf-row-not-block-multiple", "a Q8_0 tensor whose rows (48) are not a multiple of the block size (32)", dims("blk.0.ffn_gate.weight", [48, 128]))
    gguf_case("gguf-q4-row-not-block-multiple", "a Q4_0 tensor whose rows (40) are not a multiple of the block size (32)", dims("blk.1.ffn_up.weight", [40, 128]))
    def declares_huge_embedding(g):
        # The embedding moved last and declared [209715200, 64] float32: 53.7 GB from its offset on.
        embedding = g.tensor("token_embd.weight")
        g.tensors.remove(embedding)
        g.tensors.append(embedding)
        embedding["ne"] = [64, 209_715_200]
    gguf_case("gguf-declares-50gb-truncated", f"token_embd.weight declared [209715200, 64] float32 (53.7 GB) in a file of {len(base_bytes)} bytes: "
              "its data is not there, so the file is bad whatever the size limit", declares_huge_embedding)

    # Over --max-model-mb with every byte in place: a sparse file (its 4 GiB tail a hole that
    # takes no disk), so only the size limit can refuse it, from the headers, before any weight
    # is read. The tensor is one the model does not use, so without the limit it loads.
    def unused_huge_tensor(g):
        g.tensors.append({"name": "loupe.unused.weight", "ne": [64, SPARSE_ROWS], "type": F32, "data": b""})
    g = base.copy()
    unused_huge_tensor(g)
    sparse, sparse_layout = g.build()
    with open(c.path("gguf-over-max-model-mb.gguf"), "wb") as f:
        f.write(sparse)
        f.truncate(sparse_layout["tensor_data"]["loupe.unused.weight"] + SPARSE_BYTES)
    c.case("gguf-over-max-model-mb.gguf", f"an unused tensor loupe.unused.weight [{SPARSE_ROWS}, 64] float32 ({SPARSE_BYTES >> 30} GiB, a hole in a sparse file): "
           f"over --max-model-mb {MAX_MODEL_MB}", "too_large")

    # --- GGUF: values that can only give NaN or Inf.
    nan16, inf16 = np.array([np.nan], dtype=np.float16).tobytes(), np.array([np.inf], dtype=np.float16).tobytes()
    gate_at = layout["tensor_data"]["blk.0.ffn_gate.weight"]
    up_at = layout["tensor_data"]["blk.1.ffn_up.weight"]
    gguf_case("gguf-nan-q8_0-scale", "NaN in the scale of a Q8_0 block (blk.0.ffn_gate.weight, block 3)", lambda g: patched(gate_at + 3 * 34, nan16))
    gguf_case("gguf-inf-q4_0-scale", "+Inf in the scale of a Q4_0 block (blk.1.ffn_up.weight, block 0)", lambda g: patched(up_at, inf16))
    gguf_case("gguf-nan-q4_0-scale", "NaN in the scale of a Q4_0 block (blk.1.ffn_up.weight, last block)", lambda g: patched(up_at + (128 * 64 // 32 - 1) * 18, nan16))
    norm_at = layout["tensor_data"]["blk.1.attn_norm.weight"]
    gguf_case("gguf-nan-norm-weight", "NaN in blk.1.attn_norm.weight", lambda g: patched(norm_at + 4 * 7, struct.pack("<f", float("nan"))))
    final_at = layout["tensor_data"]["output_norm.weight"]
    gguf_case("gguf-inf-norm-weight", "-Inf in output_norm.weight", lambda g: patched(final_at, struct.pack("<f", float("-inf"))))

    # --- GGUF: hyper-parameters out of range or contradicting the weights.
    def meta(key, kind, value):
        return lambda g: g.set(key, kind, value)
    gguf_case("gguf-block-count-huge", "llama.block_count 10^12", meta("llama.block_count", "u64", 10**12))
    gguf_case("gguf-block-count-negative", "llama.block_count -1 (int32)", meta("llama.block_count", "i32", -1))
    gguf_case("gguf-block-count-extra", "llama.block_count 3 with weights for 2 layers", meta("llama.block_count", "u32", 3))
    gguf_case("gguf-embedding-length-huge", "llama.embedding_length 2^62", meta("llama.embedding_length", "u64", 2**62))
    gguf_case("gguf-embedding-length-negative", "llama.embedding_length -64 (int64)", meta("llama.embedding_length", "i64", -64))
    gguf_case("gguf-head-count-zero", "llama.attention.head_count 0", meta("llama.attention.head_count", "u32", 0))
    gguf_case("gguf-heads-do-not-divide-hidden", "llama.attention.head_count 5 with embedding_length 64", meta("llama.attention.head_count", "u32", 5))
    gguf_case("gguf-kv-heads-do-not-divide-heads", "llama.attention.head_count_kv 3 with 4 heads", meta("llama.attention.head_count_kv", "u32", 3))
    gguf_case("gguf-feed-forward-huge", "llama.feed_forward_length 2^61", meta("llama.feed_forward_length", "u64", 2**61))
    gguf_case("gguf-context-huge", "llama.context_length 10^12", meta("llama.context_length", "u64", 10**12))
    gguf_case("gguf-context-negative", "llama.context_length -1 (int32)", meta("llama.context_length", "i32", -1))
    gguf_case("gguf-epsilon-nan", "llama.attention.layer_norm_rms_epsilon NaN", meta("llama.attention.layer_norm_rms_epsilon", "f32", float("nan")))
    gguf_case("gguf-epsilon-negative", "llama.attention.layer_norm_rms_epsilon -1 (every norm divides by the root of a negative)", meta("llama.attention.layer_norm_rms_epsilon", "f32", -1.0))
    gguf_case("gguf-rope-theta-negative", "llama.rope.freq_base -10000", meta("llama.rope.freq_base", "f32", -10000.0))
    gguf_case("gguf-rope-theta-inf", "llama.rope.freq_base +Inf", meta("llama.rope.freq_base", "f32", float("inf")))
    gguf_case("gguf-architecture-missing", "no general.architecture", lambda g: g.drop("general.architecture"))
    gguf_case("gguf-architecture-unknown", "general.architecture 'mamba'", meta("general.architecture", "str", "mamba"))
    gguf_case("gguf-missing-tensor", "blk.1.ffn_down.weight absent", lambda g: setattr(g, "tensors", [t for t in g.tensors if t["name"] != "blk.1.ffn_down.weight"]))

    # --- GGUF: the tokenizer in the metadata.
    gguf_case("gguf-merge-unknown-symbol", "a merge naming a symbol not in the vocabulary",
              meta("tokenizer.ggml.merges", "arr", ("str", [f"{a} {b}" for a, b in MERGES[:-1]] + ["q zz"])))
    gguf_case("gguf-bos-out-of-range", "tokenizer.ggml.bos_token_id 10^9", meta("tokenizer.ggml.bos_token_id", "u32", 10**9))
    gguf_case("gguf-tokens-not-strings", "tokenizer.ggml.tokens holding integers", meta("tokenizer.ggml.tokens", "arr", ("i32", list(range(512)))))
    gguf_case("gguf-tokenizer-model-missing", "no tokenizer.ggml.model", lambda g: g.drop("tokenizer.ggml.model"))

    # --- safetensors (the tiny GPT-2's weights): truncation at every section.
    st_bytes = safetensors_bytes(gpt2_header, gpt2_data)
    (st_header_length,) = struct.unpack("<Q", st_bytes[:8])

    def st_case(name, tests, data, base_dir=base_gpt2, expect="load_failed", mentions="model.safetensors", config=None):
        replace = {"model.safetensors": data}
        if config is not None:
            replace["config.json"] = config
        c.hf(name, base_dir, replace)
        c.case(name, tests, expect, mentions)

    for name, at, what in [
        ("st-empty", 0, "an empty model.safetensors"),
        ("st-cut-in-header-length", 5, "cut inside the header length"),
        ("st-cut-in-header", 8 + st_header_length // 2, "cut inside the JSON header"),
        ("st-cut-before-data", 8 + st_header_length, "the header complete, no data"),
        ("st-cut-in-data", 8 + st_header_length + len(gpt2_data) // 2, "cut in the middle of the data"),
        ("st-cut-last-byte", len(st_bytes) - 1, "the last tensor one byte short"),
    ]:
        st_case(name, f"truncation: {what} (byte {at} of {len(st_bytes)})", st_bytes[:at])

    def header_with(edit):
        header = json.loads(json.dumps(gpt2_header))
        edit(header)
        return safetensors_bytes(header, gpt2_data)

    st_case("st-header-length-huge", "a header length of 2^64-1", struct.pack("<Q", 2**64 - 1) + st_bytes[8:])
    st_case("st-header-length-past-end", "a header length past the end of the file", struct.pack("<Q", len(st_bytes)) + st_bytes[8:])
    st_case("st-header-not-json", "a header of binary garbage", struct.pack("<Q", 64) + bytes(range(64)) + gpt2_data)
    header_text = json.dumps(gpt2_header, separators=(",", ":")).encode()
    st_case("st-header-json-cut", "the header length ending inside the JSON (the rest read as data)",
            struct.pack("<Q", len(header_text) - 40) + header_text + gpt2_data)
    st_case("st-header-not-object", "a header that is a JSON array", safetensors_bytes(None, gpt2_data, b"[1,2,3]"))
    st_case("st-header-nested-deep", "a header of arrays nested 100,000 deep", safetensors_bytes(None, gpt2_data, b"[" * 100_000 + b"]" * 100_000))

    def set_entry(name, **fields):
        return lambda header: header[name].update(fields)
    wte = "transformer.wte.weight"
    wte_begin, wte_end = tensor_range(gpt2_header, wte)
    st_case("st-offsets-past-end", "transformer.ln_f.weight's data_offsets past the end of the data",
            header_with(set_entry("transformer.ln_f.weight", data_offsets=[len(gpt2_data) + 4096, len(gpt2_data) + 4096 + 256])))
    st_case("st-offsets-huge", "data_offsets of 2^70 (no 64-bit integer)", header_with(set_entry("transformer.ln_f.weight", data_offsets=[2**70, 2**70 + 256])))
    st_case("st-offsets-reversed", "data_offsets [end, begin]", header_with(set_entry(wte, data_offsets=[wte_end, wte_begin])))
    st_case("st-offsets-size-mismatch", "data_offsets holding fewer bytes than the shape needs", header_with(set_entry(wte, data_offsets=[wte_begin, wte_end - 4])))
    h0 = "transformer.h.0.ln_1.weight"
    st_case("st-overlapping-tensors", "transformer.h.0.ln_2.weight's data the same bytes as transformer.h.0.ln_1.weight's",
            header_with(set_entry("transformer.h.0.ln_2.weight", data_offsets=list(tensor_range(gpt2_header, h0)))))
    # The JSON header written by hand: a name twice, the second entry what the first was.
    entries = [f'"{k}":{json.dumps(v, separators=(",", ":"))}' for k, v in gpt2_header.items()]
    entries.append(f'"{h0}":{json.dumps(gpt2_header[h0], separators=(",", ":"))}')
    st_case("st-duplicate-name", f"{h0} named twice in the header", safetensors_bytes(None, gpt2_data, ("{" + ",".join(entries) + "}").encode()))
    st_case("st-shape-overflow", "a shape whose element count overflows 64 bits ([2^31, 2^31, 2^31])", header_with(set_entry(wte, shape=[2**31] * 3)))
    st_case("st-shape-bytes-overflow", "a shape whose element count fits in 64 bits but whose byte count does not ([2^31, 2^31 - 1] F32)",
            header_with(set_entry(wte, shape=[2**31, 2**31 - 1])))
    st_case("st-shape-negative", "a shape [-512, 64]", header_with(set_entry(wte, shape=[-512, 64])))
    st_case("st-shape-fractional", "a shape [512.5, 64]", header_with(set_entry(wte, shape=[512.5, 64])))
    st_case("st-unknown-dtype", "dtype F4 (not a safetensors dtype)", header_with(set_entry(wte, dtype="F4")))
    st_case("st-unsupported-dtype", "transformer.wte.weight as I32 (a dtype Loupe does not read as weights)", header_with(set_entry(wte, dtype="I32")))

    def declares_huge(header):
        rows = 209_715_200  # x 64 x 4 bytes = 53.7 GB
        header[wte]["shape"] = [rows, 64]
        header[wte]["data_offsets"] = [len(gpt2_data), len(gpt2_data) + rows * 64 * 4]
    st_case("st-declares-50gb-truncated", f"config and header agreeing on a vocabulary of 209,715,200 (transformer.wte.weight 53.7 GB) in a file of {len(st_bytes)} bytes: "
            "its data is not there, so the file is bad whatever the size limit",
            header_with(declares_huge), config=config_text(gpt2_config, vocab_size=209_715_200))

    def sparse_weights(path):
        header = json.loads(json.dumps(gpt2_header))
        header["loupe.unused.weight"] = {"dtype": "F32", "shape": [SPARSE_ROWS, 64], "data_offsets": [len(gpt2_data), len(gpt2_data) + SPARSE_BYTES]}
        data = safetensors_bytes(header, gpt2_data)
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(len(data) + SPARSE_BYTES)
    c.hf("st-over-max-model-mb", base_gpt2, {"model.safetensors": sparse_weights})
    c.case("st-over-max-model-mb", f"an unused tensor loupe.unused.weight [{SPARSE_ROWS}, 64] float32 ({SPARSE_BYTES >> 30} GiB, a hole in a sparse file): "
           f"over --max-model-mb {MAX_MODEL_MB}", "too_large")

    # --- NaN and Inf in safetensors weights.
    def float_patch(header, data, name, index, value):
        begin, _ = tensor_range(header, name)
        data = bytearray(data)
        data[begin + 4 * index:begin + 4 * index + 4] = struct.pack("<f", value)
        return safetensors_bytes(header, bytes(data))
    st_case("st-nan-norm-weight", "NaN in transformer.ln_f.weight", float_patch(gpt2_header, gpt2_data, "transformer.ln_f.weight", 3, float("nan")),
            mentions="transformer.ln_f.weight")
    st_case("st-inf-norm-weight", "+Inf in model.layers.0.input_layernorm.weight (Llama)",
            float_patch(llama_header, llama_data, "model.layers.0.input_layernorm.weight", 0, float("inf")), base_dir=base_llama,
            mentions="model.layers.0.input_layernorm.weight")
    st_case("st-nan-norm-bias", "NaN in transformer.h.1.ln_2.bias", float_patch(gpt2_header, gpt2_data, "transformer.h.1.ln_2.bias", 0, float("nan")),
            mentions="transformer.h.1.ln_2.bias")

    # --- Sharded weights: an index naming shards outside the directory.
    def sharded(name, shard, tests, expect="load_failed"):
        index = {"metadata": {}, "weight_map": {k: shard for k in gpt2_header if k != "__metadata__"}}
        directory = c.hf(name, base_gpt2, {"model.safetensors.index.json": json.dumps(index).encode()}, remove=("model.safetensors",))
        c.case(name, tests, expect, "model.safetensors.index.json")
        return directory
    sharded("st-index-shard-escapes", "../../outside/secret-hf/model.safetensors",
            "model.safetensors.index.json naming a shard '../../outside/secret-hf/model.safetensors' (a valid file outside the root)")
    sharded("st-index-shard-missing", "model-00001-of-00002.safetensors", "model.safetensors.index.json naming a shard that is not there")
    c.cases[-1]["mentions"] = "model-00001-of-00002.safetensors"

    # --- config.json: values out of range or contradicting the weights.
    def cfg_case(name, tests, base_dir, config, expect="load_failed", mentions="config.json"):
        c.hf(name, base_dir, {"config.json": config})
        c.case(name, tests, expect, mentions)

    g_cfg = lambda **kw: config_text(gpt2_config, **kw)
    l_cfg = lambda **kw: config_text(llama_config, **kw)
    cfg_case("cfg-empty", "an empty config.json", base_gpt2, b"")
    cfg_case("cfg-not-json", "config.json of garbage", base_gpt2, b"{\"model_type\": gpt2,,}")
    cfg_case("cfg-not-object", "config.json a JSON array", base_gpt2, b"[\"gpt2\"]")
    cfg_case("cfg-nested-deep", "config.json of objects nested 100,000 deep", base_gpt2, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    cfg_case("cfg-model-type-missing", "no model_type", base_gpt2, g_cfg(model_type=DELETE), mentions="model_type")
    cfg_case("cfg-model-type-unknown", "model_type 'mamba'", base_gpt2, g_cfg(model_type="mamba"), mentions="mamba")
    cfg_case("cfg-layers-huge", "num_hidden_layers 10^12 (Llama)", base_llama, l_cfg(num_hidden_layers=10**12))
    cfg_case("cfg-layers-negative", "num_hidden_layers -1 (Llama)", base_llama, l_cfg(num_hidden_layers=-1))
    cfg_case("cfg-layers-extra", "num_hidden_layers 3 with weights for 2 layers (Llama)", base_llama, l_cfg(num_hidden_layers=3), mentions="cfg-layers-extra")
    cfg_case("cfg-layers-fractional", "num_hidden_layers 2.5 (Llama)", base_llama, l_cfg(num_hidden_layers=2.5))
    cfg_case("cfg-layers-string", "num_hidden_layers \"two\" (Llama)", base_llama, l_cfg(num_hidden_layers="two"))
    cfg_case("cfg-gpt2-layers-huge", "n_layer 10^12 (GPT-2)", base_gpt2, g_cfg(n_layer=10**12))
    cfg_case("cfg-gpt2-layers-negative", "n_layer -2 (GPT-2)", base_gpt2, g_cfg(n_layer=-2))
    cfg_case("cfg-gpt2-hidden-overflow", "n_embd 2^62 (4 x n_embd, the default n_inner, overflows 64 bits)", base_gpt2, g_cfg(n_embd=2**62))
    cfg_case("cfg-gpt2-inner-overflow", "n_inner 2^62 (the MLP's parameter count overflows 64 bits)", base_gpt2, g_cfg(n_inner=2**62))
    cfg_case("cfg-hidden-huge", "hidden_size 2^40 (Llama)", base_llama, l_cfg(hidden_size=2**40), mentions="cfg-hidden-huge")
    cfg_case("cfg-hidden-zero", "hidden_size 0 (Llama)", base_llama, l_cfg(hidden_size=0))
    cfg_case("cfg-gpt2-heads-do-not-divide", "n_head 5 with n_embd 64 (GPT-2)", base_gpt2, g_cfg(n_head=5))
    cfg_case("cfg-heads-do-not-divide", "num_attention_heads 5 with hidden_size 64 (Llama)", base_llama, l_cfg(num_attention_heads=5), mentions="cfg-heads-do-not-divide")
    cfg_case("cfg-heads-zero", "num_attention_heads 0 (Llama)", base_llama, l_cfg(num_attention_heads=0))
    cfg_case("cfg-heads-negative", "num_attention_heads -4 (Llama)", base_llama, l_cfg(num_attention_heads=-4))
    cfg_case("cfg-kv-heads-do-not-divide", "num_key_value_heads 3 with 4 heads (Llama)", base_llama, l_cfg(num_key_value_heads=3))
    cfg_case("cfg-head-dim-odd", "head_dim 15 (Llama)", base_llama, l_cfg(head_dim=15))
    cfg_case("cfg-intermediate-contradicts", "intermediate_size 100 with [128, 64] MLP weights (Llama)", base_llama, l_cfg(intermediate_size=100), mentions="cfg-intermediate-contradicts")
    cfg_case("cfg-vocab-contradicts", "vocab_size 1000 with a [512, 64] embedding (GPT-2)", base_gpt2, g_cfg(vocab_size=1000), mentions="cfg-vocab-contradicts")
    cfg_case("cfg-vocab-negative", "vocab_size -512 (Llama)", base_llama, l_cfg(vocab_size=-512))
    cfg_case("cfg-context-huge", "max_position_embeddings 10^12 (Llama)", base_llama, l_cfg(max_position_embeddings=10**12))
    cfg_case("cfg-context-negative", "max_position_embeddings -1 (Llama)", base_llama, l_cfg(max_position_embeddings=-1))
    cfg_case("cfg-gpt2-positions-contradict", "n_positions 10^12 with a [64, 64] position embedding (GPT-2)", base_gpt2, g_cfg(n_positions=10**12), mentions="cfg-gpt2-positions-contradict")
    cfg_case("cfg-epsilon-nan", "rms_norm_eps NaN, written as json.dumps writes it (a bare NaN)", base_llama, l_cfg(rms_norm_eps=float("nan")))
    cfg_case("cfg-epsilon-infinity", "rms_norm_eps Infinity (a bare token)", base_llama, l_cfg(rms_norm_eps=float("inf")))
    cfg_case("cfg-epsilon-negative", "layer_norm_epsilon -1 (GPT-2: the root of a negative variance)", base_gpt2, g_cfg(layer_norm_epsilon=-1.0))
    cfg_case("cfg-gpt2-epsilon-nan", "layer_norm_epsilon NaN (GPT-2)", base_gpt2, g_cfg(layer_norm_epsilon=float("nan")))
    cfg_case("cfg-rope-theta-negative", "rope_theta -10000 (Llama)", base_llama, l_cfg(rope_theta=-10000.0))
    cfg_case("cfg-rope-theta-nan", "rope_theta NaN (Llama)", base_llama, l_cfg(rope_theta=float("nan")))
    cfg_case("cfg-rope-theta-zero", "rope_theta 0 (Llama)", base_llama, l_cfg(rope_theta=0.0))
    cfg_case("cfg-untied-without-lm-head", "tie_word_embeddings false and no lm_head.weight (Llama)", base_llama, l_cfg(tie_word_embeddings=False), mentions="lm_head")

    # --- tokenizer.json (the Llama directory's).
    def tok_case(name, tests, content, mentions="tokenizer.json", extra=None):
        replace = {"tokenizer.json": content}
        replace.update(extra or {})
        c.hf(name, base_llama, replace)
        c.case(name, tests, "load_failed", mentions)

    vocab = {t: i for i, t in enumerate(TOKENS)}
    tok_case("tok-not-json", "tokenizer.json of garbage", b"\x89PNG\r\n\x1a\n")
    tok_case("tok-nested-deep", "tokenizer.json of arrays nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000)
    tok_case("tok-id-negative", "a token with id -1", tokenizer_json(vocab=dict(vocab, **{"zz": -1})))
    tok_case("tok-id-huge", "a token with id 2^31-1 (the vocabulary would span 2^31 slots)", tokenizer_json(vocab=dict(vocab, **{"zz": 2**31 - 1})))
    tok_case("tok-id-fractional", "a token with id 3.5", tokenizer_json(vocab=dict(vocab, **{"zz": 3.5})))
    tok_case("tok-duplicate-ids", "two tokens with id 7", tokenizer_json(vocab=dict(vocab, **{"zz": 7})))
    tok_case("tok-merge-unknown-symbol", "a merge naming a symbol not in the vocabulary", tokenizer_json(merges=[f"{a} {b}" for a, b in MERGES] + ["q zz"]))
    tok_case("tok-merge-result-unknown", "a merge whose result ('aq') is not in the vocabulary", tokenizer_json(merges=[f"{a} {b}" for a, b in MERGES] + ["a q"]))
    tok_case("tok-merge-malformed", "a merge of three symbols", tokenizer_json(merges=["a b c"]))
    tok_case("tok-vocab-not-object", "model.vocab an array", tokenizer_json(vocab=TOKENS))
    tok_case("tok-added-token-id-huge", "an added token with id 2^31-1", tokenizer_json(added=[{"id": 2**31 - 1, "content": "<huge>", "special": True}]))
    tok_case("tok-bos-unknown", "tokenizer_config.json naming a BOS token not in the vocabulary", tokenizer_json(),
             mentions="tokenizer_config.json", extra={"tokenizer_config.json": json.dumps({"bos_token": "<s>"}).encode()})

    # --- Paths: links out of the root, things that are not there.
    def link(name, target, tests, expect, mentions=None):
        os.symlink(target, c.path(name))
        c.case(name, tests, expect, mentions)
    link("link-out-of-root.gguf", "../outside/secret.gguf", "a link to a valid GGUF file outside the root", "bad_request")
    link("link-out-of-root-dir", "../outside/secret-hf", "a link to a valid HF directory outside the root", "bad_request")
    link("link-to-etc-passwd.gguf", "/etc/passwd", "a link to /etc/passwd", "bad_request")
    link("link-to-dev-zero.gguf", "/dev/zero", "a link to /dev/zero (endless)", "bad_request")
    c.hf("weights-link-out", base_gpt2, {"model.safetensors": lambda p: os.symlink("../../outside/secret-hf/model.safetensors", p)})
    c.case("weights-link-out", "an HF directory whose model.safetensors links to a file outside the root", "bad_request")
    c.hf("tokenizer-link-out", base_llama, {"tokenizer.json": lambda p: os.symlink("/etc/passwd", p)})
    c.case("tokenizer-link-out", "an HF directory whose tokenizer.json links to /etc/passwd", "bad_request")
    c.case("dotdot-out-of-root", "'../outside/secret.gguf': out of the root through ..", "bad_request", "secret.gguf", source="../outside/secret.gguf")
    c.case("missing-file", "a .gguf path inside the root that does not exist", "not_found", source="no-such-model.gguf")
    c.case("missing-directory", "a directory path inside the root that does not exist", "not_found", source="no-such-model/")
    link("dangling-link.gguf", "no-such-target.gguf", "a link inside the root to nothing", "not_found")
    link("link-loop.gguf", "link-loop.gguf", "a link to itself", "not_found")

    # --- FIFOs and directories in place of files.
    def fifo(path):
        os.mkfifo(path)
    os.mkfifo(c.path("fifo.gguf"))
    c.case("fifo.gguf", "a FIFO named .gguf (nothing ever writes to it)")
    c.hf("fifo-weights", base_gpt2, {"model.safetensors": fifo})
    c.case("fifo-weights", "an HF directory whose model.safetensors is a FIFO", mentions="model.safetensors")
    c.hf("fifo-config", base_gpt2, {"config.json": fifo})
    c.case("fifo-config", "an HF directory whose config.json is a FIFO", mentions="config.json")
    c.hf("fifo-tokenizer", base_llama, {"tokenizer.json": fifo})
    c.case("fifo-tokenizer", "an HF directory whose tokenizer.json is a FIFO", mentions="tokenizer.json")
    c.hf("fifo-index", base_gpt2, {"model.safetensors.index.json": fifo}, remove=("model.safetensors",))
    c.case("fifo-index", "an HF directory whose model.safetensors.index.json is a FIFO", mentions="model.safetensors.index.json")
    c.path("directory.gguf").mkdir()
    c.case("directory.gguf", "a directory named .gguf")
    c.hf("directory-weights", base_gpt2, {"model.safetensors": lambda p: p.mkdir()})
    c.case("directory-weights", "an HF directory whose model.safetensors is a directory", mentions="model.safetensors")
    c.hf("directory-config", base_gpt2, {"config.json": lambda p: p.mkdir()})
    c.case("directory-config", "an HF directory whose config.json is a directory", mentions="config.json")
    c.hf("directory-tokenizer", base_llama, {"tokenizer.json": lambda p: p.mkdir()})
    c.case("directory-tokenizer", "an HF directory whose tokenizer.json is a directory", mentions="tokenizer.json")
    c.path("empty-directory").mkdir()
    c.case("empty-directory", "an empty directory: no config.json, no weights")
    c.hf("no-weights", base_gpt2, remove=("model.safetensors",))
    c.case("no-weights", "an HF directory without model.safetensors")
    c.write("not-a-model.bin", b"plain text, not a model\n")
    c.case("not-a-model.bin", "a regular file that is neither GGUF nor an HF directory")

    manifest = {
        "generator": "scripts/make_hostile_models.py",
        "root": "root",
        "max_model_mb": MAX_MODEL_MB,
        "controls": c.controls,
        "cases": c.cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().split("\n\n")[1])
    manifest = main(sys.argv[1])
    counts = {}
    for case in manifest["cases"]:
        counts[case["expect"]] = counts.get(case["expect"], 0) + 1
    print(f"{len(manifest['cases'])} cases ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) and "
          f"{len(manifest['controls'])} controls in {sys.argv[1]}")
