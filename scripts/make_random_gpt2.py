#!/usr/bin/env python3
"""Writes a GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, vocab 50257) with
seeded random float32 weights as an HF directory (config.json + model.safetensors), using
numpy only, so benchmarks can run the same weights in Loupe and, where installed, in HF
transformers. Usage: make_random_gpt2.py DIR [--layers N]"""
import argparse, json, os, struct
import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("--layers", type=int, default=12)
args = parser.parse_args()

hidden, heads, vocab, context, layers = 768, 12, 50257, 1024, args.layers
rng = np.random.default_rng(0)
def normal(*shape, std=0.02):
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

tensors = {"transformer.wte.weight": normal(vocab, hidden), "transformer.wpe.weight": normal(context, hidden, std=0.01)}
for l in range(layers):
    p = f"transformer.h.{l}."
    tensors.update({
        p + "ln_1.weight": np.ones(hidden, np.float32), p + "ln_1.bias": np.zeros(hidden, np.float32),
        p + "attn.c_attn.weight": normal(hidden, 3 * hidden), p + "attn.c_attn.bias": np.zeros(3 * hidden, np.float32),
        p + "attn.c_proj.weight": normal(hidden, hidden), p + "attn.c_proj.bias": np.zeros(hidden, np.float32),
        p + "ln_2.weight": np.ones(hidden, np.float32), p + "ln_2.bias": np.zeros(hidden, np.float32),
        p + "mlp.c_fc.weight": normal(hidden, 4 * hidden), p + "mlp.c_fc.bias": np.zeros(4 * hidden, np.float32),
        p + "mlp.c_proj.weight": normal(4 * hidden, hidden), p + "mlp.c_proj.bias": np.zeros(hidden, np.float32),
    })
tensors["transformer.ln_f.weight"] = np.ones(hidden, np.float32)
tensors["transformer.ln_f.bias"] = np.zeros(hidden, np.float32)

os.makedirs(args.dir, exist_ok=True)
header, offset = {"__metadata__": {"format": "pt"}}, 0
for name, array in tensors.items():
    header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
encoded = json.dumps(header).encode()
encoded += b" " * (-len(encoded) % 8)
with open(os.path.join(args.dir, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    for array in tensors.values():
        f.write(array.tobytes())
config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": layers, "n_embd": hidden,
          "n_head": heads, "n_positions": context, "n_ctx": context, "vocab_size": vocab,
          "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True}
with open(os.path.join(args.dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
print(args.dir)
