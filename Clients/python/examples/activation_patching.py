#!/usr/bin/env python3
"""nnsight's activation-patching tutorial (the IOI task), run on Loupe in the tutorial's
own style: the clean and corrupted logit differences, the residual stream patched one
trace per (layer, position) (cell 10) and in one batched trace (cell 13), and attention
heads patched through einops (cell 22). Prints each result and, with plotly installed,
writes the heatmaps (SVG with kaleido, and self-contained HTML) to --out.

    python3 examples/activation_patching.py [MODEL] [--endpoint tcp://127.0.0.1:5557] [--out out]

MODEL is a GGUF file or an HF directory of any architecture the daemon runs, or `gemma3` for
Gemma 3 270M ($LOUPE_MODELS/gemma-3-270m-q4_k_m.gguf); default SmolLM2-135M
($LOUPE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf). The daemon must be running (`loupe serve`).
"""
import argparse
import os
import sys
import time

import numpy as np

from loupe import LanguageModel, Proxy, util

MODELS = os.environ.get("LOUPE_MODELS") or os.path.expanduser("~/.cache/loupe/models")
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("model", nargs="?", default=os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"))
parser.add_argument("--endpoint", default=None, help="the daemon (default $LOUPE_ENDPOINT or tcp://127.0.0.1:5557)")
parser.add_argument("--out", default="out", help="where the heatmaps go")
parser.add_argument("--skip-loop", action="store_true", help="skip cell 10's one-trace-per-patch loop")
args = parser.parse_args()
if args.model == "gemma3":
    args.model = os.path.join(MODELS, "gemma-3-270m-q4_k_m.gguf")

# Load the model (in the daemon, or attach to it there)
model = LanguageModel(args.model, endpoint=args.endpoint)
print(model)

# GPT-2's blocks return a tuple whose element 0 is the hidden state, as the tutorial indexes
# it; Llama's decoder layers return the hidden state itself.
IS_GPT2 = model.config.architecture == "gpt2"
layers = model.transformer.h if IS_GPT2 else model.model.layers


def hidden_state(layer):
    return layer.output[0] if IS_GPT2 else layer.output


def attention_output_projection(layer):
    return layer.attn.c_proj if IS_GPT2 else layer.self_attn.o_proj


def show(title, values, x_labels):
    """Prints a matrix as the heatmap's numbers, one row per layer."""
    values = np.asarray(values)
    print(f"\n{title}")
    print("layer " + " ".join(f"{label.strip()[:6]:>6}" for label in x_labels))
    for layer_idx, row in enumerate(values):
        print(f"{layer_idx:5d} " + " ".join(f"{v:6.2f}" for v in row))


def plot_ioi_patching_results(model, ioi_patching_results, x_labels, plot_title, file_stem, x_title="Position"):
    """Cell 11: the heatmap (when plotly is installed), written as SVG and HTML."""
    ioi_patching_results = util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy)
    show(plot_title, ioi_patching_results, x_labels)
    try:
        from loupe import plot
        fig = plot.heatmap(ioi_patching_results, x_labels=x_labels, title=plot_title, x_title=x_title)
    except ImportError:
        print("(plotly is not installed: no heatmap files; pip install plotly 'kaleido==0.2.1')")
        return None
    for extension in (".svg", ".html"):
        path = os.path.join(args.out, file_stem + extension)
        try:
            print("wrote", os.path.abspath(plot.write(fig, path)))
        except Exception as error:  # SVG needs kaleido; the HTML page does not
            print(f"could not write {path}: {error}")
    return fig


# Cell 6: the clean and the corrupted prompt
clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
corrupted_prompt = (
    "After John and Mary went to the store, John gave a bottle of milk to"
)

# Cell 7: the answer tokens
# A tokenizer that adds BOS (Gemma's, Llama 3's) puts it first: the answer is then at index 1.
ANSWER = 1 if model.tokenizer.info.get("adds_bos") else 0
correct_index = model.tokenizer(" John")["input_ids"][ANSWER] # includes a space
incorrect_index = model.tokenizer(" Mary")["input_ids"][ANSWER] # includes a space

print(f"' John': {correct_index}")
print(f"' Mary': {incorrect_index}")

# Cell 8: clean run
N_LAYERS = len(layers)

with model.trace(clean_prompt) as tracer:
    clean_tokens = tracer.invoker.inputs[0]['input_ids'][0]

    # Get hidden states of all layers in the network.
    clean_hs = [
        hidden_state(layers[layer_idx]).save()
        for layer_idx in range(N_LAYERS)
    ]

    # Get logits from the lm_head.
    clean_logits = model.lm_head.output

    # Calculate the difference between the correct answer and incorrect answer for the clean run and save it.
    clean_logit_diff = (
        clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
    ).save()

# Cell 9: corrupted run
with model.trace(corrupted_prompt) as tracer:
    corrupted_logits = model.lm_head.output

    # Calculate the difference between the correct answer and incorrect answer for the corrupted run and save it.
    corrupted_logit_diff = (
        corrupted_logits[0, -1, correct_index]
        - corrupted_logits[0, -1, incorrect_index]
    ).save()

# Cell 12's first lines
print(f"Clean logit difference: {clean_logit_diff.value:.3f}")
print(f"Corrupted logit difference: {corrupted_logit_diff.value:.3f}")

clean_decoded_tokens = [model.tokenizer.decode(token) for token in clean_tokens]
token_labels = [f"{token}_{index}" for index, token in enumerate(clean_decoded_tokens)]

# Cell 10: activation patching, one trace per layer and token
loop_results = None
if not args.skip_loop:
    started = time.perf_counter()
    ioi_patching_results = []

    # Iterate through all the layers
    for layer_idx in range(len(layers)):
        _ioi_patching_results = []

        # Iterate through all tokens
        for token_idx in range(len(clean_tokens)):
            # Patching corrupted run at given layer and token
            with model.trace(corrupted_prompt) as tracer:
                # Apply the patch from the clean hidden states to the corrupted hidden states.
                hidden_state(layers[layer_idx])[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]

                patched_logits = model.lm_head.output

                patched_logit_diff = (
                    patched_logits[0, -1, correct_index]
                    - patched_logits[0, -1, incorrect_index]
                )

                # Calculate the improvement in the correct token after patching.
                patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                    clean_logit_diff - corrupted_logit_diff
                )

                _ioi_patching_results.append(patched_result.save())

        ioi_patching_results.append(_ioi_patching_results)
    print(f"\ncell 10: {N_LAYERS * len(clean_tokens)} traces in {time.perf_counter() - started:.1f} s")
    loop_results = util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy)
    plot_ioi_patching_results(model, ioi_patching_results, token_labels,
                              "Residual Stream on IOI task, one trace per patch (cell 10)", "ioi-residual-loop")

# Cell 13: the same experiment as one batched trace
started = time.perf_counter()
with model.trace() as tracer:

    # Clean run
    with tracer.invoke(clean_prompt) as invoker:
        clean_tokens = invoker.inputs[0]['input_ids'][0]

        # No need to call .save() as we don't need the values after the run, just within the experiment run.
        clean_hs = [
            hidden_state(layers[layer_idx])
            for layer_idx in range(N_LAYERS)
        ]

        # Get logits from the lm_head.
        clean_logits = model.lm_head.output

        # Calculate the difference between the correct answer and incorrect answer for the clean run and save it.
        clean_logit_diff = (
            clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
        ).save()

    # Corrupted run
    with tracer.invoke(corrupted_prompt) as invoker:
        corrupted_logits = model.lm_head.output

        # Calculate the difference between the correct answer and incorrect answer for the corrupted run and save it.
        corrupted_logit_diff = (
            corrupted_logits[0, -1, correct_index]
            - corrupted_logits[0, -1, incorrect_index]
        ).save()

    ioi_patching_results = []

    # Iterate through all the layers
    for layer_idx in range(len(layers)):
        _ioi_patching_results = []

        # Iterate through all tokens
        for token_idx in range(len(clean_tokens)):
            # Patching corrupted run at given layer and token
            with tracer.invoke(corrupted_prompt) as invoker:
                # Apply the patch from the clean hidden states to the corrupted hidden states.
                hidden_state(layers[layer_idx])[:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]

                patched_logits = model.lm_head.output

                patched_logit_diff = (
                    patched_logits[0, -1, correct_index]
                    - patched_logits[0, -1, incorrect_index]
                )

                # Calculate the improvement in the correct token after patching.
                patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                    clean_logit_diff - corrupted_logit_diff
                )

                _ioi_patching_results.append(patched_result.save())

        ioi_patching_results.append(_ioi_patching_results)
print(f"\ncell 13: one trace of {2 + N_LAYERS * len(clean_tokens)} invocations in "
      f"{time.perf_counter() - started:.1f} s")
plot_ioi_patching_results(model, ioi_patching_results, token_labels,
                          "Patching Residual Stream on IOI task (cell 13)", "ioi-residual")
if loop_results is not None:
    batched = util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy)
    print(f"cells 10 and 13 differ by at most {np.abs(np.subtract(loop_results, batched)).max():.2e}")

# Cells 18-22: attention heads, the output projection's input split per head with einops
import einops

prompts = [
    "When Lisa and Sarah went to the cinema, Lisa gave the ticket to",
    "When Lisa and Sarah went to the cinema, Sarah gave the ticket to"
]
answers = [
    (" Sarah", " Lisa"),
    (" Lisa", " Sarah")
]
# The answer's token: the last id of " Sarah" (after a BOS token where the tokenizer adds one)
answer_token_indices = [
    [model.tokenizer(answers[i][j])["input_ids"][-1] for j in range(2)]
    for i in range(len(answers))
]
print("\nanswer_tokens = ", answer_token_indices)

N_HEADS = model.config.num_attention_heads
prompt_id = 0
corrupt_id = (prompt_id + 1 if prompt_id % 2 == 0 else prompt_id - 1)

started = time.perf_counter()
with model.trace(remote = True) as tracer:
    # STEP 1: Clean run, grab clean activations for each attention head
    with tracer.invoke(prompts[prompt_id]) as invoker:
        # Get clean attention output for later patching
        z_hs = {}
        for layer_idx in range(N_LAYERS):
            # attention output needs to be reshaped to look at individual heads
            z = attention_output_projection(layers[layer_idx]).input # [batch x seq x D_MODEL]
            z_reshaped = einops.rearrange(z, 'b s (nh dh) -> b s nh dh', nh=N_HEADS)
            for head_idx in range(N_HEADS):
                z_hs[layer_idx,head_idx] = z_reshaped[:,:,head_idx,:]

        # Get logits from the lm_head.
        clean_logits = model.lm_head.output
        clean_logit_diff = (
            clean_logits[0, -1, answer_token_indices[prompt_id][0]] - clean_logits[0, -1, answer_token_indices[prompt_id][1]]
        ).save()

    # STEP 2: Corrupted run, grab corrupted logits for later comparison.
    with tracer.invoke(prompts[corrupt_id]) as invoker:
        corrupted_logits = model.lm_head.output

        # Calculate the difference between the correct answer and incorrect answer for the corrupted run and save it.
        corrupted_logit_diff = (
            corrupted_logits[0, -1, answer_token_indices[prompt_id][0]] - corrupted_logits[0, -1, answer_token_indices[prompt_id][1]]
        ).save()

    # STEP 3: Patching runs, apply 'clean' model state at each layer and head,
    ioi_patching_results = []

    # Patching: Iterate through all the layers
    for layer_idx in range(N_LAYERS):
        _ioi_patching_results = []
        # Iterate through all attention heads
        for head_idx in range(N_HEADS):
            # Patching corrupted run at given layer and token
            with tracer.invoke(prompts[corrupt_id]) as invoker:
                # Apply the patch from the clean hidden states to the corrupted hidden state for given layer and head.
                projection = attention_output_projection(layers[layer_idx])
                z_corrupt = projection.input
                z_corrupt = einops.rearrange(z_corrupt, 'b s (nh dh) -> b s nh dh', nh=N_HEADS)
                z_corrupt[:,:,head_idx,:] = z_hs[layer_idx,head_idx]
                z_corrupt = einops.rearrange(z_corrupt, 'b s nh dh -> b s (nh dh)', nh=N_HEADS)
                projection.input = z_corrupt

                patched_logits = model.lm_head.output
                patched_logit_diff = (
                    patched_logits[0, -1, answer_token_indices[prompt_id][0]]
                    - patched_logits[0, -1, answer_token_indices[prompt_id][1]]
                )

                # Calculate the improvement in the correct token after patching.
                patched_result = (patched_logit_diff - corrupted_logit_diff) / (
                    clean_logit_diff - corrupted_logit_diff
                )

                _ioi_patching_results.append(patched_result.save())

        ioi_patching_results.append(_ioi_patching_results)

# Cell 23
print(f"\ncell 22: one trace of {2 + N_LAYERS * N_HEADS} invocations in {time.perf_counter() - started:.1f} s")
print(f"Clean logit difference: {clean_logit_diff.value:.3f}")
print(f"Corrupted logit difference: {corrupted_logit_diff.value:.3f}")

x_labels = [f"Head {i}" for i in range(N_HEADS)]
plot_ioi_patching_results(model, ioi_patching_results, x_labels, "Patching Attention Heads on IOI task",
                          "ioi-heads", x_title="Head")
sys.stdout.flush()
