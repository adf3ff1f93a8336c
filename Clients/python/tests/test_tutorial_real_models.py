"""The tutorial's attention-head cells 16-23 as it writes them for Llama-3.1-8B, with the
import and model lines changed and Llama-3.1-8B's constants replaced by the model's, on two
real models. `remote = True` stays: the client accepts it.

  SmolLM2-135M  9 heads of 64, hidden 576, 30 layers. Its tokenizer adds no BOS token, so
                an answer's id is at index 0 of `llm.tokenizer(answer)["input_ids"]`, not
                at 1 as in the tutorial's Llama-3.1 cell.
  Gemma 3 270M  4 heads of 256 (attention width 1024, not the hidden 640), 18 layers. Its
                tokenizer adds BOS (id 2) as Llama-3.1's does, so an answer's id is at
                index 1, as the tutorial has it.

The cells run on the tutorial's own Lisa/Sarah prompts against nnsight on the same weights
(Tests/Fixtures/python/tutorial-MODEL-heads-nnsight.json, scripts/make_tutorial_golden.py);
the daemon's sweeps run on the seed's John/Mary pair against nnsight's batched cells there
(Tests/Fixtures/sweeps/MODEL-ioi-nnsight.json, scripts/nnsight_reference.py)."""
import json

import numpy as np
import pytest

from conftest import FIXTURES

TOLERANCE = 1e-3


class Case:
    """One model: the tutorial's constants for it and its nnsight references."""

    def __init__(self, name, n_layers, n_heads, d_model, d_heads, answer_index):
        self.name = name  # also the conftest fixture that gives the model's path
        self.n_layers, self.n_heads, self.d_model, self.d_heads = n_layers, n_heads, d_model, d_heads
        self.answer_index = answer_index
        self.lisa_sarah = json.loads((FIXTURES / "python" / f"tutorial-{name}-heads-nnsight.json").read_text())
        self.john_mary = json.loads((FIXTURES / "sweeps" / f"{name}-ioi-nnsight.json").read_text())


CASES = {
    "smollm2": Case("smollm2", n_layers=30, n_heads=9, d_model=576, d_heads=64, answer_index=0),
    "gemma3": Case("gemma3", n_layers=18, n_heads=4, d_model=640, d_heads=256, answer_index=1),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return CASES[request.param]


@pytest.fixture(scope="module")
def llm(endpoint, case, request):
    model_path = request.getfixturevalue(case.name)
    # [16]
    from loupe import LanguageModel

    # [17]
    llm = LanguageModel(model_path, endpoint=endpoint)
    print(llm)
    return llm


def cells_20_to_23(llm, prompts, answers, case):
    """The cells after the prompts (cell 18) and answers (cell 19)."""
    from loupe import util, Proxy

    # [20]
    # Tokenize clean and corrupted inputs:
    clean_tokens = llm.tokenizer(prompts, return_tensors="pt")["input_ids"]
    corrupted_tokens = clean_tokens[
        [(i + 1 if i % 2 == 0 else i - 1) for i in range(len(clean_tokens))]
    ]

    # Tokenize answers for each prompt:
    answer_token_indices = [
            [llm.tokenizer(answers[i][j])["input_ids"][case.answer_index] for j in range(2)]
            for i in range(len(answers))
    ]

    print("answer_tokens = " , answer_token_indices)

    # [21]
    import einops

    # [22]
    # Enter nnsight tracing context
    N_LAYERS = len(llm.model.layers)
    batch = 1
    seq = len(prompts[0]) #15 length of input tokens
    N_HEADS = case.n_heads #9 attention heads (Gemma 3: 4)
    D_MODEL = int(case.d_model) #576 size of model hidden (Gemma 3: 640)
    D_HEADS = case.d_heads #64 size of attention head (Gemma 3: 256, not D_MODEL/N_HEADS)

    ioi_patching_results_all = []
    prompt_id = 0
    corrupt_id = (prompt_id + 1 if prompt_id % 2 == 0 else prompt_id - 1)

    with llm.trace(remote = True) as tracer:
        # STEP 1: Clean run, grab clean activations for each attention head
        with tracer.invoke(prompts[prompt_id]) as invoker:
            clean_tokens = invoker.inputs[0]['input_ids'][0]

            # Get clean attention output for later patching
            z_hs = {}
            for layer_idx in range(N_LAYERS):
                # attention output for llama models needs to be reshaped to look at individual heads
                z = llm.model.layers[layer_idx].self_attn.o_proj.input # dimensions [1x15x576] [batch x seq x D_MODEL]
                z_reshaped = einops.rearrange(z, 'b s (nh dh) -> b s nh dh',nh=N_HEADS)
                for head_idx in range(N_HEADS):
                    z_hs[layer_idx,head_idx] = z_reshaped[:,:,head_idx,:]

            # Get logits from the lm_head.
            clean_logits = llm.lm_head.output
            clean_logit_diff = (
                clean_logits[0, -1, answer_token_indices[prompt_id][0]] - clean_logits[0, -1, answer_token_indices[prompt_id][1]]
            ).save()

        # STEP 2: Corrupted run, grab corrupted logits for later comparison.
        with tracer.invoke(prompts[corrupt_id]) as invoker:
            corrupted_tokens = invoker.inputs[0]['input_ids'][0]
            corrupted_logits = llm.lm_head.output

            # Calculate the difference between the correct answer and incorrect answer for the corrupted run and save it.
            corrupted_logit_diff = (
                corrupted_logits[0, -1, answer_token_indices[prompt_id][0]] - corrupted_logits[0, -1, answer_token_indices[prompt_id][1]]
            ).save()

        # STEP 3: Patching runs, apply 'clean' model state at each layer and head,
        ioi_patching_results = []

        # Patching: Iterate through all the layers
        for layer_idx in range(len(llm.model.layers)):
            _ioi_patching_results = []
            # Iterate through all attention heads
            for head_idx in range(N_HEADS):
                # Patching corrupted run at given layer and token
                with tracer.invoke(prompts[corrupt_id]) as invoker:
                    # Apply the patch from the clean hidden states to the corrupted hidden state for given layer and head.
                    z_corrupt = llm.model.layers[layer_idx].self_attn.o_proj.input
                    z_corrupt = einops.rearrange(z_corrupt, 'b s (nh dh) -> b s nh dh',nh=N_HEADS)
                    z_corrupt[:,:,head_idx,:] = z_hs[layer_idx,head_idx]
                    z_corrupt = einops.rearrange(z_corrupt, 'b s nh dh -> b s (nh dh)', nh=N_HEADS)
                    llm.model.layers[layer_idx].self_attn.o_proj.input = z_corrupt

                    patched_logits = llm.lm_head.output
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

    # [23] (the plotting function of cell 11 is the GPT-2 test's; here its matrix is checked)
    print(f"Clean logit difference: {clean_logit_diff.value:.3f}")
    print(f"Corrupted logit difference: {corrupted_logit_diff.value:.3f}")

    x_labels = [f"Head {i}" for i in range(N_HEADS)]
    values = np.array(util.apply(ioi_patching_results, lambda x: x.value.item(), Proxy))
    return dict(answer_token_indices=answer_token_indices, clean_tokens=clean_tokens, x_labels=x_labels,
                corrupted_tokens=corrupted_tokens, clean_logit_diff=float(clean_logit_diff),
                corrupted_logit_diff=float(corrupted_logit_diff), values=values)


def test_cells_18_to_23_match_nnsight(llm, case):
    # [18]
    prompts = [
        "When Lisa and Sarah went to the cinema, Lisa gave the ticket to",
        "When Lisa and Sarah went to the cinema, Sarah gave the ticket to"
    ]

    # [19]
    answers = [
        (" Sarah", " Lisa"),
        (" Lisa", " Sarah")
    ]
    got = cells_20_to_23(llm, prompts, answers, case)
    LISA_SARAH = case.lisa_sarah
    assert got["answer_token_indices"] == LISA_SARAH["answer_token_indices"]
    # The same ids as HF's tokenizers give without special tokens: index 0 for both models.
    assert [[llm.tokenizer(a, add_special_tokens=False)["input_ids"] for a in pair] for pair in answers] == [
        [[i] for i in ids] for ids in LISA_SARAH["answer_token_indices"]]
    assert [llm.tokenizer.encode(a, add_special_tokens=False) for a in answers[0]] == [
        [i] for i in LISA_SARAH["answer_token_indices"][0]]
    assert [int(t) for t in got["clean_tokens"]] == LISA_SARAH["clean_tokens"]
    assert abs(got["clean_logit_diff"] - LISA_SARAH["clean_logit_diff"]) < TOLERANCE
    assert abs(got["corrupted_logit_diff"] - LISA_SARAH["corrupted_logit_diff"]) < TOLERANCE
    assert got["values"].shape == (case.n_layers, case.n_heads)
    np.testing.assert_allclose(got["values"], LISA_SARAH["values"], atol=TOLERANCE)
    assert got["x_labels"][:2] == ["Head 0", "Head 1"]


def test_sweeps_match_nnsight_with_a_progress_bar(llm, case, capsys):
    """The daemon's residual and head sweeps on the seed's John/Mary pair against nnsight's
    batched cells 13 and 22 on the same pair (MODEL-ioi-nnsight.json). The answers go to the
    daemon as text, which it tokenizes without special tokens (no BOS)."""
    JOHN_MARY = case.john_mary
    residual, heads = JOHN_MARY["residual"], JOHN_MARY["heads"]
    layers, positions = case.n_layers, len(JOHN_MARY["clean_tokens"])
    sweep = llm.sweep(JOHN_MARY["clean_prompt"], JOHN_MARY["corrupted_prompt"], answer=" John", wrong=" Mary",
                      progress=True)
    assert sweep.values.shape == (layers, positions) and sweep.cols == JOHN_MARY["token_labels"]
    assert (sweep.row_axis, sweep.col_axis) == ("Layer", "Position")
    np.testing.assert_allclose(sweep.values, residual["values"], atol=TOLERANCE)
    assert abs(sweep.clean - residual["clean_logit_diff"]) < TOLERANCE
    assert abs(sweep.corrupted - residual["corrupted_logit_diff"]) < TOLERANCE
    err = capsys.readouterr().err
    assert "residual sweep:" in err and f"{layers}/{layers} layers" in err and "100%|" in err

    sweep = llm.sweep(JOHN_MARY["clean_prompt"], JOHN_MARY["corrupted_prompt"], kind="heads", answer=" John",
                      wrong=" Mary")
    assert sweep.rows == [str(i) for i in range(layers)] and sweep.cols == [f"Head {i}" for i in range(case.n_heads)]
    assert (sweep.row_axis, sweep.col_axis) == ("Layer", "Head")
    np.testing.assert_allclose(sweep.values, heads["values"], atol=TOLERANCE)
    assert abs(sweep.clean - heads["clean_logit_diff"]) < TOLERANCE
