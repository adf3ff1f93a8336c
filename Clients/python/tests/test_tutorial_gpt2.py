"""The activation-patching tutorial's cells 3-13 as the tutorial writes them, with only the
import lines and the line that makes the model changed, on a GPT-2-small-shaped model with
seeded random weights and GPT-2's tokenizer. nnsight's numbers for the same weights are in
Tests/Fixtures/python/tutorial-gpt2-random-nnsight.json (scripts/make_tutorial_golden.py)."""
import json

import numpy as np
import pytest

from conftest import FIXTURES

GOLDEN = json.loads((FIXTURES / "python" / "tutorial-gpt2-random-nnsight.json").read_text())
# The logit differences agree to float32 rounding; the normalized cells divide by
# clean - corrupted, so their tolerance scales with 1 / that.
LOGIT_TOLERANCE = 1e-4
CELL_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tutorial(endpoint, gpt2_random):
    """Runs the cells in order and returns what each left behind."""
    seen = {}

    # [3]
    import plotly.express as px
    from loupe import LanguageModel, util
    from loupe import Proxy

    # [4]
    model = LanguageModel(gpt2_random, endpoint=endpoint)

    # [5]
    seen["printed"] = repr(model)

    # [6]
    clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
    corrupted_prompt = (
        "After John and Mary went to the store, John gave a bottle of milk to"
    )

    # [7]
    correct_index = model.tokenizer(" John")["input_ids"][0] # includes a space
    incorrect_index = model.tokenizer(" Mary")["input_ids"][0] # includes a space

    print(f"' John': {correct_index}")
    print(f"' Mary': {incorrect_index}")
    seen["indices"] = (correct_index, incorrect_index)

    # [8]
    N_LAYERS = len(model.transformer.h)

    # Clean run
    with model.trace(clean_prompt) as tracer:
        clean_tokens = tracer.invoker.inputs[0]['input_ids'][0]

        # Get hidden states of all layers in the network.
        # We index the output at 0 because it's a tuple where the first index is the hidden state.

        clean_hs = [
            model.transformer.h[layer_idx].output[0].save()
            for layer_idx in range(N_LAYERS)
        ]

        # Get logits from the lm_head.
        clean_logits = model.lm_head.output

        # Calculate the difference between the correct answer and incorrect answer for the clean run and save it.
        clean_logit_diff = (
            clean_logits[0, -1, correct_index] - clean_logits[0, -1, incorrect_index]
        ).save()

    # [9]
    # Corrupted run
    with model.trace(corrupted_prompt) as tracer:
        corrupted_logits = model.lm_head.output

        # Calculate the difference between the correct answer and incorrect answer for the corrupted run and save it.
        corrupted_logit_diff = (
            corrupted_logits[0, -1, correct_index]
            - corrupted_logits[0, -1, incorrect_index]
        ).save()

    # [10]
    # Activation Patching Intervention
    ioi_patching_results = []

    # Iterate through all the layers
    for layer_idx in range(len(model.transformer.h)):
        _ioi_patching_results = []

        # Iterate through all tokens
        for token_idx in range(len(clean_tokens)):
            # Patching corrupted run at given layer and token
            with model.trace(corrupted_prompt) as tracer:
                # Apply the patch from the clean hidden states to the corrupted hidden states.
                model.transformer.h[layer_idx].output[0][:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]

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

    seen["cell10"] = ioi_patching_results
    seen["cell8_9"] = (clean_logit_diff, corrupted_logit_diff, clean_hs, clean_tokens)

    # [11]
    def plot_ioi_patching_results(model,
                                  ioi_patching_results,
                                  x_labels,
                                  plot_title="Normalized Logit Difference After Patching Residual Stream on the IOI Task"):

        ioi_patching_results = util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy)
        fig = px.imshow(
            ioi_patching_results,
            color_continuous_midpoint=0.0,
            color_continuous_scale="RdBu",
            labels={"x": "Position", "y": "Layer","color":"Norm. Logit Diff"},
            x=x_labels,
            title=plot_title,
        )

        return fig

    # [12] (without fig.show(): the figure is checked instead of displayed)
    print(f"Clean logit difference: {clean_logit_diff.value:.3f}")
    print(f"Corrupted logit difference: {corrupted_logit_diff.value:.3f}")

    clean_decoded_tokens = [model.tokenizer.decode(token) for token in clean_tokens]
    token_labels = [f"{token}_{index}" for index, token in enumerate(clean_decoded_tokens)]

    fig = plot_ioi_patching_results(model, ioi_patching_results,token_labels,"Patching GPT-2-small Residual Stream on IOI task")
    seen["fig"], seen["token_labels"] = fig, token_labels

    # [13]
    N_LAYERS = len(model.transformer.h)

    # Enter nnsight tracing context
    with model.trace() as tracer:

        # Clean run
        with tracer.invoke(clean_prompt) as invoker:
            clean_tokens = invoker.inputs[0]['input_ids'][0]

            # No need to call .save() as we don't need the values after the run, just within the experiment run.
            clean_hs = [
                model.transformer.h[layer_idx].output[0]
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
        for layer_idx in range(len(model.transformer.h)):
            _ioi_patching_results = []

            # Iterate through all tokens
            for token_idx in range(len(clean_tokens)):
                # Patching corrupted run at given layer and token
                with tracer.invoke(corrupted_prompt) as invoker:
                    # Apply the patch from the clean hidden states to the corrupted hidden states.
                    model.transformer.h[layer_idx].output[0][:, token_idx, :] = clean_hs[layer_idx][:, token_idx, :]

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

    seen["cell13"] = ioi_patching_results
    seen["cell13_diffs"] = (clean_logit_diff, corrupted_logit_diff)
    seen["util"], seen["Proxy"], seen["model"] = util, Proxy, model
    return seen


def matrix(t, results):
    return np.array(t["util"].apply(results, lambda x: x.value.item(), t["Proxy"]))


def test_cell5_prints_the_module_tree(tutorial):
    printed = tutorial["printed"]
    assert printed.startswith("GPT2LMHeadModel(\n  (transformer): GPT2Model(\n")
    for line in ["(wte): Embedding(50257, 768)", "(wpe): Embedding(1024, 768)", "(0-11): 12 x GPT2Block(",
                 "(c_attn): Conv1D()", "(ln_f): LayerNorm((768,), eps=1e-05, elementwise_affine=True)",
                 "(lm_head): Linear(in_features=768, out_features=50257, bias=False)"]:
        assert line in printed, line


def test_cell7_token_ids(tutorial):
    assert tutorial["indices"] == (1757, 5335) == (GOLDEN["correct_index"], GOLDEN["incorrect_index"])


def test_cells8_9_logit_differences_match_nnsight(tutorial):
    clean, corrupted, clean_hs, clean_tokens = tutorial["cell8_9"]
    assert [int(t) for t in clean_tokens] == GOLDEN["clean_tokens"]
    assert abs(float(clean) - GOLDEN["clean_logit_diff"]) < LOGIT_TOLERANCE
    assert abs(float(corrupted) - GOLDEN["corrupted_logit_diff"]) < LOGIT_TOLERANCE
    assert len(clean_hs) == 12 and clean_hs[0].value.shape == (1, 16, 768)


def test_cell12_figure_and_labels(tutorial):
    fig = tutorial["fig"]
    assert tutorial["token_labels"] == GOLDEN["token_labels"]
    assert list(fig.data[0].x) == GOLDEN["token_labels"]
    np.testing.assert_allclose(np.array(fig.data[0].z), GOLDEN["values"], atol=CELL_TOLERANCE)
    assert fig.layout.title.text == "Patching GPT-2-small Residual Stream on IOI task"


def test_cell13_batched_trace_matches_nnsight(tutorial):
    clean, corrupted = tutorial["cell13_diffs"]
    assert abs(float(clean) - GOLDEN["clean_logit_diff"]) < LOGIT_TOLERANCE
    assert abs(float(corrupted) - GOLDEN["corrupted_logit_diff"]) < LOGIT_TOLERANCE
    got = matrix(tutorial, tutorial["cell13"])
    assert got.shape == (12, 16)
    np.testing.assert_allclose(got, GOLDEN["values"], atol=CELL_TOLERANCE)


def test_cell10_per_patch_loop_gives_the_batched_matrix(tutorial):
    np.testing.assert_allclose(matrix(tutorial, tutorial["cell10"]), matrix(tutorial, tutorial["cell13"]),
                               atol=CELL_TOLERANCE)
