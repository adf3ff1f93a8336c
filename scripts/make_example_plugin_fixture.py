#!/usr/bin/env python3
"""Writes Tests/Fixtures/models/example-mlp-tiny: the tiny model of the example plugin
(Plugins/Examples/ExampleMLP), with what it must compute.

The model is Llama with a plain GELU MLP, down(gelu_tanh(up(x))), in place of the gated
SiLU one: HF model_type "loupe_example_mlp", which no built-in architecture runs. Its weights
are seeded random float32 (model.safetensors, written by hand: no torch needed) and
expected.json holds what a float64 numpy forward pass of the same math gives on two token
sequences that differ at one position: the logits of both, the MLP activation of layer 0
on the first, and the residual-stream patching sweep (clean: the first, corrupted: the
second) with a logit-difference metric, each cell its own full forward pass; and, for
the conformance suite (`loupe conformance`), cases.json, expected.safetensors (each
sequence's logits and residual stream alone, and the padded batch's logits) and
conformance.json. The reference is this float64 numpy forward pass, not HF's: no HF class
runs this model type.

Needs numpy. Run from anywhere: python3 scripts/make_example_plugin_fixture.py
"""
import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "models" / "example-mlp-tiny"

CONFIG = {
    "architectures": ["LoupeExampleMLPForCausalLM"],
    "model_type": "loupe_example_mlp",
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "vocab_size": 32,
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}
CLEAN = [3, 17, 5, 9, 30, 12]
CORRUPTED = [3, 17, 22, 9, 30, 12]
ANSWER, WRONG = 7, 11


def weights(rng):
    c = CONFIG
    hidden, inner, heads, kv, dh = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                                    c["num_key_value_heads"], c["head_dim"])
    w = {"model.embed_tokens.weight": rng.standard_normal((c["vocab_size"], hidden)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(hidden)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((heads * dh, hidden)) / np.sqrt(hidden)
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv * dh, hidden)) / np.sqrt(hidden)
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv * dh, hidden)) / np.sqrt(hidden)
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((hidden, heads * dh)) / np.sqrt(heads * dh)
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((inner, hidden)) / np.sqrt(hidden)
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, inner)) / np.sqrt(inner)
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_safetensors(path, tensors):
    """u64 header length, the JSON header padded with spaces to 8 bytes, then the data."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        data = tensors[name].astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class ExampleMLP:
    """The model in float64 numpy: HF Llama's attention (RMSNorm, rotary embeddings with
    rotate_half, grouped-query attention), then down(gelu_tanh(up(x)))."""

    def __init__(self, w):
        self.w = {k: v.astype(np.float64) for k, v in w.items()}
        c = CONFIG
        self.layers, self.heads, self.kv, self.dh = (c["num_hidden_layers"], c["num_attention_heads"],
                                                     c["num_key_value_heads"], c["head_dim"])
        self.eps, self.theta = c["rms_norm_eps"], c["rope_theta"]

    def norm(self, x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.w[name + ".weight"]

    def rotate(self, t, n):
        """t: [heads, n, dh], rotated by position as HF's apply_rotary_pos_emb does."""
        inv = 1.0 / self.theta ** (np.arange(0, self.dh, 2) / self.dh)
        freqs = np.outer(np.arange(n), inv)
        cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
        half = self.dh // 2
        rotated = np.concatenate([-t[..., half:], t[..., :half]], -1)
        return t * cos + rotated * sin

    def forward(self, ids, record=None, patch=None):
        """Logits [len, vocab]. record: filled with act.L (the MLP activation) and resid_post.L;
        patch: (layer, position, vector) written over the residual stream after that layer."""
        w, n = self.w, len(ids)
        x = w["model.embed_tokens.weight"][ids]
        for l in range(self.layers):
            p = f"model.layers.{l}."
            h = self.norm(x, p + "input_layernorm")
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, self.heads, self.dh).transpose(1, 0, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, self.kv, self.dh).transpose(1, 0, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, self.kv, self.dh).transpose(1, 0, 2)
            q, k = self.rotate(q, n), self.rotate(k, n)
            group = self.heads // self.kv
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(self.dh)
            scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            z = ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
            x = x + z @ w[p + "self_attn.o_proj.weight"].T
            up = self.norm(x, p + "post_attention_layernorm") @ w[p + "mlp.up_proj.weight"].T
            act = 0.5 * up * (1 + np.tanh(np.sqrt(2 / np.pi) * (up + 0.044715 * up ** 3)))
            if record is not None:
                record[f"act.{l}"] = act
            x = x + act @ w[p + "mlp.down_proj.weight"].T
            if patch is not None and patch[0] == l:
                x = x.copy()
                x[patch[1]] = patch[2]
            if record is not None:
                record[f"resid_post.{l}"] = x
        return self.norm(x, "model.norm") @ w["model.embed_tokens.weight"].T


def main():
    rng = np.random.default_rng(20240611)
    w = weights(rng)
    model = ExampleMLP(w)
    record = {}
    clean_logits = model.forward(CLEAN, record)
    corrupted_logits = model.forward(CORRUPTED)

    def diff(logits):
        return logits[-1, ANSWER] - logits[-1, WRONG]

    clean, corrupted = diff(clean_logits), diff(corrupted_logits)
    sweep = [[(diff(model.forward(CORRUPTED, patch=(l, t, record[f"resid_post.{l}"][t]))) - corrupted) / (clean - corrupted)
              for t in range(len(CLEAN))] for l in range(model.layers)]

    def rounded(a):
        return [rounded(row) for row in a] if np.ndim(a) > 0 else float(f"{a:.9g}") + 0.0

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    write_safetensors(OUT / "model.safetensors", w)
    expected = {
        "clean": CLEAN, "corrupted": CORRUPTED, "answer": ANSWER, "wrong": WRONG,
        "clean_logits": rounded(clean_logits), "corrupted_logits": rounded(corrupted_logits),
        "act_0": rounded(record["act.0"]),
        "logit_diff": {"clean": rounded(clean), "corrupted": rounded(corrupted)},
        "residual_sweep": rounded(np.array(sweep)),
    }
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in expected.items()]
    (OUT / "expected.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")

    # What the conformance suite reads (Sources/LoupeConformance/ConformanceFixture.swift):
    # sequences of different lengths, each one's logits and residual stream alone, and the
    # logits of all of them as one left-padded batch (each row is its sequence alone, padded).
    sequences = [CLEAN, CORRUPTED, CLEAN[:4]]
    reference = {}
    for i, ids in enumerate(sequences):
        record = {}
        reference[f"logits.{i}"] = model.forward(ids, record)
        for l in range(model.layers):
            reference[f"resid_post.{l}.{i}"] = record[f"resid_post.{l}"]
    longest = max(map(len, sequences))
    reference["batched.logits"] = np.stack([np.pad(reference[f"logits.{i}"], ((longest - len(ids), 0), (0, 0)))
                                            for i, ids in enumerate(sequences)])
    write_safetensors(OUT / "expected.safetensors", reference)
    (OUT / "cases.json").write_text(json.dumps({"sequences": sequences}) + "\n")
    (OUT / "conformance.json").write_text(json.dumps({"not_applicable": {
        "tokenizer": "seeded-random weights over 32 ids; no tokenizer files"}}) + "\n")
    print(f"wrote {OUT}: clean logit difference {clean:.4f}, corrupted {corrupted:.4f}")


if __name__ == "__main__":
    main()
