#!/usr/bin/env python3
"""Regenerates Loupe's gradient golden files (torch autograd) under Tests/Fixtures/models/.

NEEDS torch + transformers + safetensors (gguf and accelerate for the SmolLM2 part). Like
scripts/make_model_fixtures.py, whose models, sites and inputs it reuses, it runs on a
developer machine only: CI reads the committed outputs. torch runs on one thread in float32
with eager attention, so a rerun on the same torch build rewrites byte-identical files.

    python3 scripts/make_gradient_fixtures.py [--out DIR] [--smollm2 GGUF]
        [--only KIND]... [--skip-smollm2] [--no-float64-check]

--only KIND (repeatable) writes only that fixture: a tiny kind of make_model_fixtures.py's
TINY_KINDS, or `smollm2`. --smollm2 defaults to $LOUPE_MODELS (or ~/.cache/loupe/models)
/SmolLM2-135M-Instruct.Q4_1.gguf, which scripts/fetch-models.sh fetches.

What it writes
--------------
A) Tests/Fixtures/models/<kind>/gradients.safetensors for every tiny kind, the model loaded
   from its committed directory. Each sequence i of the kind's cases.json runs alone
   (batch 1, no mask, default position ids) with the metric

       metric.<i> = logits[last, A_i] - logits[last, W_i],
       A_i = (37 i + 11) % vocab,  W_i = (53 i + 29) % vocab        (shape [])

   and, for each value below, grad.<value>.<i> = d metric.<i> / d value, batch dimension
   dropped (T = the sequence's length):
     embed            [T, D]  output of the token embedding module (wte, embed_in,
                              embed_tokens). Gemma's module multiplies by sqrt(D) itself, so
                              there it is the SCALED embedding, what the first decoder layer
                              receives. In every family it equals grad.resid_pre.0 (GPT-2
                              adds the position embedding, which passes the gradient on
                              unchanged).
     resid_pre.<L>    [T, D]  decoder layer L's input;  resid_post.<L>  [T, D] its output.
                              grad.resid_pre.<L+1> == grad.resid_post.<L>.
     attn_out.<L>     [T, D]  output of the module make_model_fixtures.sites() calls attn_out
                              (the attention module; Gemma: post_attention_layernorm).
     mlp_out.<L>      [T, D]  the same for mlp_out (the MLP; Gemma: post_feedforward_layernorm).
     z.<L>            [T, H*dh]  input of the attention output projection.
     mlp_hidden.<L>   [T, I]  input of the MLP down projection (GPT-2 mlp.c_proj, GPT-NeoX
                              mlp.dense_4h_to_h, Llama/Qwen/Mistral/Gemma mlp.down_proj).
     q.<L>            [T, H, dh]    the attention kernel's query: after RoPE, after
                                    Qwen 3's / Gemma 3's q_norm.
     k.<L>, v.<L>     [T, Hkv, dh]  its key (after RoPE and k_norm) and value, BEFORE
                                    repeat_kv: a key/value head's gradient sums over the
                                    query heads that share it.
     pattern.<L>      [H, T, T]     the softmax probabilities (row = query, column = key).
                                    Autograd's gradient of EVERY entry, masked ones included:
                                    where the probability is 0 (key after the query, or
                                    outside a sliding window) the entry is still
                                    dO[query] . v[key], what the P @ V product's backward
                                    gives; compare only the unmasked entries if the engine
                                    computes those alone.
     final_norm       [T, D]  output of the final norm.
     logits           [T, V]  (after Gemma 2's final soft-cap): 1 at A_i and -1 at W_i of
                              the last row, 0 elsewhere.
   Every value has a hook point in every family above, so none is left out (the script
   stops if a gradient does not reach one).
   Each gradient is what .retain_grad() gives on the exact tensor the model passes on, so a
   value used twice (a layer input feeds the norm and the residual sum) gets its total
   gradient. q/k/v/pattern come from an attention function registered through
   transformers' AttentionInterface that is eager_attention_forward op for op (scaling,
   Gemma 2's attention soft-cap, the eager additive mask with its sliding windows); the
   script checks it gives plain eager's logits (< 1e-6) and output_attentions, that the
   forward values match the committed expected.safetensors, and checks every gradient
   against central finite differences on a float64 copy of the model (float64_copy): per
   value, one random direction d, (m(x + eps d) - m(x - eps d)) / 2 eps against <grad, d>,
   for every sequence of every kind (agreement to ~1e-9 of |grad| |d|). The printed
   "float32 vs float64" figure, max |g32 - g64| / max |g64| per kind of value, is the
   rounding any float32 engine can expect against these files (below 1e-5 here).

   Attribution patching on one clean/corrupted pair, in the same file:
     attribution.clean_tokens      [T] ids (float32) = sequence 2 (12 tokens)
     attribution.corrupted_tokens  [T] the same with positions 4 and 7 set to (id + 1) % vocab
     attribution.metric_clean, attribution.metric_corrupted  [] metric of sequence 2
                                   (A_2, W_2) on each run
   and the estimates sum((clean - corrupted) * grad) with grad the metric's gradient on the
   CORRUPTED run (activations of both runs, products summed in float64, stored float32):
     attribution.residual        [layers, T]   at resid_post, summed over hidden
     attribution.mlp             [layers, T]   at mlp_out, summed over hidden
     attribution.heads           [layers, H]   at z viewed [T, H, dh], summed over T and dh
     attribution.head_positions  [layers, H, T]  at z, summed over dh
     attribution.neurons_last    [layers, I]   at mlp_hidden, last position only
     attribution.neurons_sum     [layers, I]   at mlp_hidden, summed over positions

B) Tests/Fixtures/models/smollm2-gradients.safetensors: SmolLM2-135M-Instruct (the Q4_1
   GGUF dequantized to float32 by transformers, loaded as make_model_fixtures.make_real
   does; tokenizer from the GGUF, no BOS) on the seed IOI pair
     clean      "After John and Mary went to the store, Mary gave a bottle of milk to"
     corrupted  "After John and Mary went to the store, John gave a bottle of milk to"
   metric = logit(" John" = 2322) - logit(" Mary" = 5099) at the last position:
     clean_tokens, corrupted_tokens [T] (float32 ids); metric.clean, metric.corrupted [];
     grad.<value>.<L> for L in 0, 14, 29 (the values of A, no logits), grad.embed and
     grad.final_norm: gradients of the metric on the CORRUPTED run;
     attribution.residual / mlp / heads / head_positions / neurons_last / neurons_sum as in
     A, over all 30 layers.

Every file holds float32 tensors under sorted keys and one metadata key, "generator".
"""
import argparse
import copy
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, GPTNeoXForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_fixtures as mmf  # noqa: E402

REPO = mmf.REPO
FIXTURES = os.path.join(REPO, "Tests", "Fixtures", "models")  # where the tiny models are read from
ATTN = "loupe_gradients"  # the recording attention function's name in AttentionInterface
SMOLLM2_LAYERS = (0, 14, 29)
SMOLLM2_ANSWERS = (2322, 5099)  # " John", " Mary"
CORRUPT_POSITIONS = (4, 7)
ATTRIBUTION_SEQUENCE = 2
FD_EPS = 1e-6
FD_SEED = 20250101
PER_LAYER = ("resid_pre", "resid_post", "attn_out", "mlp_out", "z", "mlp_hidden", "q", "k", "v", "pattern")


def answers(i, vocab):
    return (37 * i + 11) % vocab, (53 * i + 29) % vocab


def generator_tag():
    return f"scripts/make_gradient_fixtures.py, transformers {transformers.__version__}, torch {torch.__version__}"


# ----------------------------------------------------------------------------- recording
_ACTIVE = []  # the Recorder whose model is running (attention functions find it here)


def recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                        **kwargs):
    """eager_attention_forward of the GPT-2, GPT-NeoX, Llama, Qwen, Mistral and Gemma
    modeling files, op for op, marking the kernel's query, key, value (before repeat_kv)
    and softmax output. The softmax runs in the input's dtype: the same numbers as
    softmax(dtype=float32) for float32 input, and full precision for the float64 check."""
    assert dropout == 0.0 and not module.training
    rec = _ACTIVE[-1]
    L = module.layer_idx
    query = rec.mark(f"q.{L}", query)
    key = rec.mark(f"k.{L}", key)
    value = rec.mark(f"v.{L}", value)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key_states, value_states = key, value
    if n_rep > 1:  # transformers' repeat_kv
        b, hkv, t, dh = key.shape
        key_states = key[:, :, None].expand(b, hkv, n_rep, t, dh).reshape(b, hkv * n_rep, t, dh)
        value_states = value[:, :, None].expand(b, hkv, n_rep, t, dh).reshape(b, hkv * n_rep, t, dh)
    weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = weights / softcap
        weights = torch.tanh(weights)
        weights = weights * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    else:
        assert query.shape[2] == 1, "no causal mask reached the attention function"
    probs = torch.nn.functional.softmax(weights, dim=-1)
    probs = rec.mark(f"pattern.{L}", probs)
    out = torch.matmul(probs, value_states).transpose(1, 2).contiguous()
    return out, probs


AttentionInterface.register(ATTN, recording_attention)
AttentionMaskInterface.register(ATTN, eager_mask)  # the same additive float mask as eager


def down_projections(model):
    blocks = mmf.sites(model)[0]
    if isinstance(model, GPT2LMHeadModel):
        return [b.mlp.c_proj for b in blocks]
    if isinstance(model, GPTNeoXForCausalLM):
        return [b.mlp.dense_4h_to_h for b in blocks]
    return [b.mlp.down_proj for b in blocks]


def to_stored(name, t):
    """Model layout [1, ...] -> stored layout (q/k/v [1, H, T, dh] -> [T, H, dh])."""
    t = t[0]
    if name.split(".")[0] in ("q", "k", "v"):
        t = t.transpose(0, 1)
    return t.contiguous()


def to_model(name, t):
    if name.split(".")[0] in ("q", "k", "v"):
        t = t.transpose(0, 1)
    return t.unsqueeze(0)


class Recorder:
    """Hooks on one model that mark every value named in the docstring: keep the tensor,
    retain its gradient when the forward tracks gradients, and add `perturb[name]` to it
    when asked (the finite-difference check)."""

    def __init__(self, model):
        self.model = model
        self.values, self.perturb, self.track = {}, {}, False
        model.requires_grad_(False)  # gradients of activations only, none for the weights
        model.set_attn_implementation(ATTN)
        blocks, _, attn_outs, mlp_outs, oprojs, fnorm = mmf.sites(model)
        downs = down_projections(model)
        self.layers = len(blocks)
        self.heads = model.config.num_attention_heads
        hooks = [model.get_input_embeddings().register_forward_hook(self._output("embed"))]
        for L in range(self.layers):
            hooks += [
                blocks[L].register_forward_pre_hook(self._input(f"resid_pre.{L}"), with_kwargs=True),
                blocks[L].register_forward_hook(self._output(f"resid_post.{L}")),
                attn_outs[L].register_forward_hook(self._output(f"attn_out.{L}")),
                mlp_outs[L].register_forward_hook(self._output(f"mlp_out.{L}")),
                oprojs[L].register_forward_pre_hook(self._input(f"z.{L}"), with_kwargs=True),
                downs[L].register_forward_pre_hook(self._input(f"mlp_hidden.{L}"), with_kwargs=True),
            ]
        hooks.append(fnorm.register_forward_hook(self._output("final_norm")))
        self.hooks = hooks

    def names(self):
        per_layer = [f"{s}.{L}" for L in range(self.layers) for s in PER_LAYER]
        return ["embed"] + per_layer + ["final_norm", "logits"]

    def mark(self, name, x):
        if name in self.perturb:
            x = x + self.perturb[name].to(x.dtype)
        if self.track:
            if not x.requires_grad:  # the embedding output: a leaf, the weights being frozen
                assert x.is_leaf, name
                x.requires_grad_(True)
            else:
                x.retain_grad()
        assert name not in self.values, f"{name} marked twice"
        self.values[name] = x
        return x

    def _output(self, name):
        def hook(module, args, out):
            if isinstance(out, (tuple, list)):
                new = self.mark(name, out[0])
                return None if new is out[0] else type(out)((new, *out[1:]))
            new = self.mark(name, out)
            return None if new is out else new
        return hook

    def _input(self, name):
        def hook(module, args, kwargs):
            if args:
                new = self.mark(name, args[0])
                return None if new is args[0] else ((new, *args[1:]), kwargs)
            new = self.mark(name, kwargs["hidden_states"])
            return None if new is kwargs["hidden_states"] else (args, dict(kwargs, hidden_states=new))
        return hook

    def forward(self, ids, track):
        """Runs `ids` (a list) as a batch of 1; returns the logits [1, T, V]."""
        self.values, self.track = {}, track
        _ACTIVE.append(self)
        try:
            with torch.set_grad_enabled(track):
                out = self.model(torch.tensor([ids]), use_cache=False)
            return self.mark("logits", out.logits)
        finally:
            _ACTIVE.pop()

    def metric(self, ids, answer, wrong, perturb=None):
        self.perturb = perturb or {}
        try:
            logits = self.forward(ids, track=False)
        finally:
            self.perturb = {}
        return (logits[0, -1, answer] - logits[0, -1, wrong]).item()

    def activations(self, ids, answer, wrong):
        """(metric, {name: activation}) of a forward without gradients."""
        logits = self.forward(ids, track=False)
        metric = logits[0, -1, answer] - logits[0, -1, wrong]
        acts = {n: to_stored(n, v) for n, v in self.values.items()}
        self.values = {}
        return metric, acts

    def gradients(self, ids, answer, wrong, names=None):
        """(metric, {name: gradient}, {name: activation}) in the stored layouts."""
        logits = self.forward(ids, track=True)
        metric = logits[0, -1, answer] - logits[0, -1, wrong]
        metric.backward()
        names = names or self.names()
        missing = [n for n in names if n not in self.values or self.values[n].grad is None]
        assert not missing, f"no gradient reached {missing}"
        grads = {n: to_stored(n, self.values[n].grad) for n in names}
        acts = {n: to_stored(n, self.values[n].detach()) for n in names}
        self.values = {}
        return metric.detach(), grads, acts


def check_against_eager(rec, seqs, tol=1e-6):
    """The recording attention is eager: same logits (< tol) and the pattern equals
    output_attentions. Returns the worst logit difference."""
    model, worst = rec.model, 0.0
    for s in seqs:
        rec.values = {}  # the hooks mark the eager run's values too
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                ref = model(torch.tensor([s]), output_attentions=True, use_cache=False)
        finally:
            model.set_attn_implementation(ATTN)
        logits = rec.forward(s, track=False)
        d = (logits - ref.logits).abs().max().item()
        worst = max(worst, d)
        assert d < tol, f"recording attention differs from eager by {d}"
        for L, a in enumerate(ref.attentions):
            p = rec.values[f"pattern.{L}"]
            assert (p - a).abs().max().item() < tol, f"pattern.{L} != output_attentions"
    return worst


def check_against_expected(acts, expected, i, kind):
    """The marked activations are the values make_model_fixtures.py recorded."""
    worst = 0.0
    for name, want in expected.items():
        base, _, seq = name.rpartition(".")
        if seq != str(i) or base not in acts or base.startswith("batched"):
            continue
        d = (acts[base] - want).abs().max().item()
        worst = max(worst, d)
        assert d < 1e-4, f"{kind}: {base} of sequence {i} differs from expected.safetensors by {d}"
    return worst


def check_chain(grads, layers, where):
    for L in range(layers - 1):
        assert torch.equal(grads[f"resid_pre.{L + 1}"], grads[f"resid_post.{L}"]), \
            f"{where}: grad resid_pre.{L + 1} != grad resid_post.{L}"
    assert torch.equal(grads["embed"], grads["resid_pre.0"]), f"{where}: grad embed != grad resid_pre.0"


# ----------------------------------------------------------------------------- float64
def float64_copy(model):
    """A float64 copy of `model` that computes in float64 throughout: the RMSNorms of these
    modeling files cast their input to float32 whatever its dtype, which would leave
    float32 rounding (~1e-7) in every perturbed metric and swamp the finite differences, so
    they are replaced by the same formula without the cast (Gemma: x / rms * (1 + w);
    others: w * x / rms). RoPE's cos/sin stay float32-derived constants: the same function
    for every perturbation. check_against_eager then bounds the whole copy against HF."""
    m64 = copy.deepcopy(model).double()
    for mod in m64.modules():
        cls = type(mod).__name__
        if not cls.endswith("RMSNorm"):
            continue
        if cls.startswith("Gemma"):
            def forward(x, mod=mod):
                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.eps) * (1.0 + mod.weight)
        else:
            def forward(x, mod=mod):
                return mod.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))
        mod.forward = forward
    return m64


def finite_difference_check(rec64, ids, answer, wrong, grads64, seed):
    """Central differences along one random direction per value, on the float64 model:
    (m(x + eps d) - m(x - eps d)) / 2 eps against <grad, d>. Returns the worst error
    relative to |grad| |d| (the largest <grad, d> could be)."""
    g = torch.Generator().manual_seed(seed)
    worst, where = 0.0, None
    for name, grad in grads64.items():
        d = torch.randn(grad.shape, generator=g, dtype=torch.float64)
        step = to_model(name, FD_EPS * d)
        plus = rec64.metric(ids, answer, wrong, {name: step})
        minus = rec64.metric(ids, answer, wrong, {name: -step})
        fd = (plus - minus) / (2 * FD_EPS)
        analytic = (grad * d).sum().item()
        err = abs(fd - analytic) / (grad.norm().item() * d.norm().item() + 1e-300)
        if err > worst:
            worst, where = err, name
    return worst, where


def float32_gap(grads32, grads64):
    """Per kind of value, max |g32 - g64| / max |g64|."""
    gap = {}
    for name, g64 in grads64.items():
        kind = name.split(".")[0]
        scale = g64.abs().max().item()
        d = (grads32[name].double() - g64).abs().max().item() / (scale if scale > 0 else 1.0)
        gap[kind] = max(gap.get(kind, 0.0), d)
    return dict(sorted(gap.items()))


# ----------------------------------------------------------------------------- attribution
def attribution(rec, clean, corrupted, answer, wrong):
    """Attribution-patching estimates: the metric's gradient on the corrupted run times
    (clean - corrupted activation), summed as the docstring says."""
    metric_clean, acts_clean = rec.activations(clean, answer, wrong)
    metric_corrupted, grads, acts = rec.gradients(corrupted, answer, wrong)
    n_heads = rec.heads
    out = {"residual": [], "mlp": [], "heads": [], "head_positions": [], "neurons_last": [], "neurons_sum": []}
    for L in range(rec.layers):
        def prod(site):
            n = f"{site}.{L}"
            return (acts_clean[n].double() - acts[n].double()) * grads[n].double()
        out["residual"].append(prod("resid_post").sum(-1))
        out["mlp"].append(prod("mlp_out").sum(-1))
        z = prod("z")
        z = z.view(z.shape[0], n_heads, -1).sum(-1)  # [T, H]
        out["head_positions"].append(z.T)
        out["heads"].append(z.sum(0))
        hidden = prod("mlp_hidden")
        out["neurons_last"].append(hidden[-1])
        out["neurons_sum"].append(hidden.sum(0))
    tensors = {f"attribution.{k}": torch.stack(v).float().contiguous() for k, v in out.items()}
    tensors["attribution.metric_clean"] = metric_clean.float().reshape(())
    tensors["attribution.metric_corrupted"] = metric_corrupted.float().reshape(())
    return tensors, grads, acts


def corrupt(seq, vocab):
    out = list(seq)
    for p in CORRUPT_POSITIONS:
        out[p] = (out[p] + 1) % vocab
    return out


def save(tensors, path):
    for k, v in tensors.items():
        assert v.dtype == torch.float32, k
    # One metadata key only: safetensors writes the metadata map in hash order, so several
    # keys would make the file bytes differ from run to run.
    # (Cloned: equal gradients, e.g. embed and resid_pre.0, can be one tensor.)
    save_file({k: v.clone() for k, v in sorted(tensors.items())}, path, metadata={"generator": generator_tag()})
    return os.path.getsize(path)


# ----------------------------------------------------------------------------- A: tiny kinds
def make_tiny(out_root, kind, float64_check=True):
    d = os.path.join(FIXTURES, kind)
    with open(os.path.join(d, "cases.json")) as f:
        seqs = json.load(f)["sequences"]
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    model64 = float64_copy(model) if float64_check else None  # before any hook
    rec = Recorder(model)
    eager_gap = check_against_eager(rec, seqs)
    expected = load_file(os.path.join(d, "expected.safetensors"))

    tensors, expected_gap = {}, 0.0
    per_seq = []
    for i, s in enumerate(seqs):
        a, w = answers(i, vocab)
        metric, grads, acts = rec.gradients(s, a, w)
        check_chain(grads, rec.layers, f"{kind} sequence {i}")
        expected_gap = max(expected_gap, check_against_expected(acts, expected, i, kind))
        tensors[f"metric.{i}"] = metric.float().reshape(())
        for n, g in grads.items():
            tensors[f"grad.{n}.{i}"] = g
        per_seq.append(grads)

    clean = seqs[ATTRIBUTION_SEQUENCE]
    corrupted = corrupt(clean, vocab)
    a, w = answers(ATTRIBUTION_SEQUENCE, vocab)
    attr, _, _ = attribution(rec, clean, corrupted, a, w)
    tensors.update(attr)
    tensors["attribution.clean_tokens"] = torch.tensor(clean, dtype=torch.float32)
    tensors["attribution.corrupted_tokens"] = torch.tensor(corrupted, dtype=torch.float32)
    assert abs(attr["attribution.metric_clean"].item() - tensors[f"metric.{ATTRIBUTION_SEQUENCE}"].item()) < 1e-6
    assert not attr["attribution.residual"][:, :min(CORRUPT_POSITIONS)].any(), "attribution before the first change"

    report = {"eager_max_abs_logits": eager_gap, "expected_max_abs": expected_gap}
    if model64 is not None:
        rec64 = Recorder(model64)
        # HF's float64 model still takes softmax and RMSNorm in float32; this copy does not,
        # hence the looser bound.
        check_against_eager(rec64, seqs, tol=1e-5)
        fd_worst, fd_where, gap = 0.0, None, {}
        for i, s in enumerate(seqs):
            a, w = answers(i, vocab)
            _, g64, _ = rec64.gradients(s, a, w)
            check_chain(g64, rec64.layers, f"{kind} float64 sequence {i}")
            err, where = finite_difference_check(rec64, s, a, w, g64, FD_SEED + i)
            if err >= fd_worst:
                fd_worst, fd_where = err, f"{where}.{i}"
            for k, v in float32_gap(per_seq[i], g64).items():
                gap[k] = max(gap.get(k, 0.0), v)
        assert fd_worst < 1e-6, f"{kind}: finite differences disagree with autograd: {fd_worst} at {fd_where}"
        report.update(fd_worst=fd_worst, fd_where=fd_where, float32_vs_float64=gap)

    os.makedirs(os.path.join(out_root, kind), exist_ok=True)
    path = os.path.join(out_root, kind, "gradients.safetensors")
    report["bytes"] = save(tensors, path)
    report["keys"] = len(tensors)
    return path, report


# ----------------------------------------------------------------------------- B: SmolLM2
def make_smollm2(out_root, gguf, float64_check=True):
    clean_text, corrupted_text, correct, wrong = mmf.SEED_IOI
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    a = tok.encode(correct, add_special_tokens=False)
    w = tok.encode(wrong, add_special_tokens=False)
    assert (a[0], w[0]) == SMOLLM2_ANSWERS and len(a) == len(w) == 1, (a, w)
    a, w = SMOLLM2_ANSWERS
    clean = tok(clean_text)["input_ids"]
    corrupted = tok(corrupted_text)["input_ids"]
    assert len(clean) == len(corrupted), (clean, corrupted)
    model64 = float64_copy(model) if float64_check else None
    rec = Recorder(model)
    eager_gap = check_against_eager(rec, [clean, corrupted])
    attr, grads, _ = attribution(rec, clean, corrupted, a, w)
    check_chain(grads, rec.layers, "smollm2 corrupted")

    keep = ["embed", "final_norm"] + [f"{s}.{L}" for L in SMOLLM2_LAYERS for s in PER_LAYER]
    tensors = {f"grad.{n}": grads[n] for n in keep}
    tensors.update(attr)
    tensors["metric.clean"] = attr["attribution.metric_clean"].clone()
    tensors["metric.corrupted"] = attr["attribution.metric_corrupted"].clone()
    tensors["clean_tokens"] = torch.tensor(clean, dtype=torch.float32)
    tensors["corrupted_tokens"] = torch.tensor(corrupted, dtype=torch.float32)

    # The same numbers as the committed golden file of make_model_fixtures.py.
    with open(os.path.join(FIXTURES, mmf.REAL_MODELS["smollm2"]["golden"])) as f:
        golden = json.load(f)["ioi_seed"]
    assert golden["clean"]["ids"] == clean and golden["corrupted"]["ids"] == corrupted
    for run in ("clean", "corrupted"):
        got = tensors[f"metric.{run}"].item()
        assert abs(got - golden[run]["logit_diff"]) < 1e-4, (run, got, golden[run]["logit_diff"])
    first = next(p for p, (x, y) in enumerate(zip(clean, corrupted)) if x != y)
    assert not tensors["attribution.residual"][:, :first].any(), "attribution before the first differing token"

    report = {"eager_max_abs_logits": eager_gap, "tokens": len(corrupted),
              "metric_clean": tensors["metric.clean"].item(), "metric_corrupted": tensors["metric.corrupted"].item()}
    if model64 is not None:
        rec64 = Recorder(model64)
        _, g64, _ = rec64.gradients(corrupted, a, w, names=keep)
        report["float32_vs_float64"] = float32_gap({n: grads[n] for n in keep}, g64)
    path = os.path.join(out_root, "smollm2-gradients.safetensors")
    report["bytes"] = save(tensors, path)
    report["keys"] = len(tensors)
    return path, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=FIXTURES, help="where to write (the tiny models are always read from %(default)s)")
    models = os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models"))
    ap.add_argument("--smollm2", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"),
                    help="the SmolLM2-135M-Instruct Q4_1 GGUF")
    ap.add_argument("--only", action="append", choices=mmf.TINY_KINDS + ["smollm2"],
                    help="write only this fixture (repeatable)")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--no-float64-check", action="store_true",
                    help="skip the float64 finite-difference and precision checks")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the last bits of float32 results depend on the thread count
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    check64 = not args.no_float64_check

    for kind in mmf.TINY_KINDS:
        if args.only and kind not in args.only:
            continue
        path, r = make_tiny(args.out, kind, check64)
        line = (f"{kind}: {os.path.relpath(path, args.out)} {r['bytes']} bytes, {r['keys']} tensors; "
                f"vs eager {r['eager_max_abs_logits']:.2g}, vs expected.safetensors {r['expected_max_abs']:.2g}")
        if check64:
            worst = max(r["float32_vs_float64"].items(), key=lambda kv: kv[1])
            line += (f"; finite differences (float64) worst {r['fd_worst']:.2g} at {r['fd_where']}; "
                     f"float32 vs float64 worst {worst[1]:.2g} ({worst[0]})")
        print(line, flush=True)

    if args.skip_smollm2 or (args.only and "smollm2" not in args.only):
        return
    if not os.path.exists(args.smollm2):
        sys.exit(f"{args.smollm2} missing: run scripts/fetch-models.sh (or pass --skip-smollm2)")
    path, r = make_smollm2(args.out, args.smollm2, check64)
    print(f"smollm2: {os.path.relpath(path, args.out)} {r['bytes']} bytes, {r['keys']} tensors, {r['tokens']} tokens; "
          f"metric clean {r['metric_clean']:.4f}, corrupted {r['metric_corrupted']:.4f}; "
          f"vs eager {r['eager_max_abs_logits']:.2g}")
    if check64:
        print(f"smollm2: float32 vs float64 gradients (max |diff| / max |g|): {r['float32_vs_float64']}")


if __name__ == "__main__":
    main()
