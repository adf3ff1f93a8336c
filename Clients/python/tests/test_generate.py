"""Generation, module calls, weights and caches through the client (spec: PROTOCOL.md
`generate`, `call`, `weight`, `models.weights`), each checked against the daemon's own
plain traces on the tiny Llama fixture (token ids; EOS off so every row runs its steps)."""
import numpy as np
import pytest

from conftest import FIXTURES
from loupe import LanguageModel, TraceError

PROMPT = [1, 17, 42, 99, 7, 300]
SHORT = [5, 250, 3]
STEPS = 5


@pytest.fixture(scope="module")
def tiny(fixtures_endpoint):
    return LanguageModel(str(FIXTURES / "models" / "llama-tiny"), endpoint=fixtures_endpoint)


def _next_token(model, ids, edit=None):
    """The greedy next token of `ids` in a plain trace, with `edit(model)` applied in it."""
    with model.trace(ids):
        if edit is not None:
            edit(model)
        top = model.lm_head.output[0, -1].argmax().save()
    return int(top)


def test_greedy_generation_equals_plain_traces_and_saves_per_step(tiny):
    with tiny.generate(max_new_tokens=STEPS, eos=False) as tracer:
        with tracer.invoke(PROMPT):
            first = tiny.lm_head.output.save()  # outside all(): step 0 only
            with tracer.all():
                logits = tiny.lm_head.output.save()
                chosen = tiny.lm_head.output[0, -1].argmax().save()
        with tracer.invoke(SHORT):
            pass
        output = tiny.generator.output.save()
    tokens = tracer.generation["tokens"]
    assert tracer.generation["steps"] == STEPS and [len(t) for t in tokens] == [STEPS, STEPS]
    assert tracer.generation["finish"] == ["length", "length"]
    for prompt, new in zip([PROMPT, SHORT], tokens):
        ids = list(prompt)
        for token in new:  # each generated token is the plain trace's argmax of what came before
            assert _next_token(tiny, ids) == token
            ids.append(token)
    # per-step saves: one value per step, full prompt at step 0 and one position after
    assert logits.steps == list(range(STEPS)) and len(logits.value) == STEPS
    assert logits.value[0].shape == (1, len(PROMPT), 512) and logits.value[1].shape == (1, 1, 512)
    np.testing.assert_array_equal(logits.value[0], first.value)
    assert [int(v) for v in chosen.value] == tokens[0]
    # the generator's output as HF's generate returns it: prompts left-padded to the longest
    pad = tiny.tokenizer.pad_token_id
    expected = [PROMPT + tokens[0], [pad] * (len(PROMPT) - len(SHORT)) + SHORT + tokens[1]]
    np.testing.assert_array_equal(output.value, np.asarray(expected))
    assert output.value.dtype == np.int64


def test_steering_under_all_and_iter_equals_per_step_traces(tiny):
    vec = np.linspace(-3.0, 3.0, 64, dtype=np.float32)

    def steer(model):
        model.model.layers[0].output[:] += vec

    with tiny.generate(PROMPT, max_new_tokens=STEPS, eos=False) as tracer:
        with tracer.all():
            tiny.model.layers[0].output[:] += vec
    steered = tracer.generation["tokens"][0]
    with tiny.generate(PROMPT, max_new_tokens=STEPS, eos=False) as tracer:
        pass
    assert steered != tracer.generation["tokens"][0]  # the edit changes what is generated
    ids = list(PROMPT)
    for token in steered:  # the steered cache holds steered keys and values: edit every position
        assert _next_token(tiny, ids, steer) == token
        ids.append(token)

    # iter[1:3] edits only steps 1 and 2; next() reads a module's next step
    with tiny.generate(PROMPT, max_new_tokens=STEPS, eos=False) as tracer:
        with tracer.iter[1:3]:
            tiny.model.layers[0].output[:] += vec
        step0 = tiny.lm_head.output[0, -1].save()
        step1 = tiny.lm_head.next().output[0, -1].save()
        with tracer.iter[2]:
            step2 = tiny.lm_head.output[0, -1].save()
        for _ in tracer.iter[3:4]:  # nnsight 0.8's loop form
            step3 = tiny.lm_head.output[0, -1].save()
    window = tracer.generation["tokens"][0]
    n, ids = len(PROMPT), list(PROMPT)
    for s, token in enumerate(window):
        k = min(s, 2)  # steps 1..k were edited, each at the one position it ran: n + step - 1

        def edit(model, k=k):
            model.model.layers[0].output[:, n:n + k, :] += vec
        assert _next_token(tiny, ids, edit if k else None) == token
        ids.append(token)
    assert int(np.argmax(step0.value)) == window[0] and int(np.argmax(step1.value)) == window[1]
    assert step2.steps is None and int(np.argmax(step2.value)) == window[2]
    assert step3.steps == [3] and int(np.argmax(step3.value[0])) == window[3]
    assert step0.steps is None  # a single step saves one value


def _rms_norm(x, w, eps=1e-5):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def test_logit_lens_by_module_calls_equals_numpy_on_weights(tiny):
    with tiny.trace(PROMPT):
        hidden = [layer.output.save() for layer in tiny.model.layers]
        lens = [tiny.lm_head(tiny.model.norm(layer.output)).save() for layer in tiny.model.layers]
        logits = tiny.lm_head.output.save()
        mlp = tiny.model.layers[1].mlp(hidden[0]).save()
        norm_weight = tiny.model.norm.weight.save()
    unembed, norm = tiny.lm_head.weight, tiny.model.norm.weight  # outside: models.weights
    assert unembed.shape == (512, 64) and norm.shape == (64,)
    np.testing.assert_array_equal(norm_weight.value, norm)
    for h, got in zip(hidden, lens):
        np.testing.assert_allclose(got.value, _rms_norm(h.value, norm) @ unembed.T.astype(np.float64), atol=1e-4)
    np.testing.assert_allclose(lens[-1].value, logits.value, atol=1e-4)  # the last layer's lens is the model's
    gate, up, down = (getattr(tiny.model.layers[1].mlp, name).weight for name in ("gate_proj", "up_proj", "down_proj"))
    x = hidden[0].value.astype(np.float64)
    g = x @ gate.T
    np.testing.assert_allclose(mlp.value, (g / (1 + np.exp(-g)) * (x @ up.T)) @ down.T, atol=1e-4)

    with pytest.raises(RuntimeError, match=r"lm_head\(x\) runs inside"):
        tiny.lm_head(hidden[0].value)
    with pytest.raises(TraceError, match="weights are read-only: clone it first") as caught:
        with tiny.trace(PROMPT):
            weight = tiny.lm_head.weight
            weight[0] = 0.0
    assert caught.value.code == "bad_request"
    with pytest.raises(AttributeError, match="has no parameter 'bias'"):
        tiny.model.norm.bias


def test_cache_and_run_with_cache_equal_single_saves(tiny):
    with tiny.trace(PROMPT) as tracer:
        cache = tracer.cache()
        layer = tiny.model.layers[1].output.save()
        o_proj = tiny.model.layers[0].self_attn.o_proj.output.save()
        o_proj_in = tiny.model.layers[0].self_attn.o_proj.input.save()
        partial = tracer.cache(modules=[tiny.model.layers[0].self_attn.o_proj], include_inputs=True)
    np.testing.assert_array_equal(cache["model.layers.1"].output, layer.value)
    np.testing.assert_array_equal(cache["model.model.layers.1"].output, layer.value)  # nnsight's key
    np.testing.assert_array_equal(cache.model.layers[0].self_attn.o_proj.output, o_proj.value)
    assert list(partial) == ["model.layers.0.self_attn.o_proj"]
    np.testing.assert_array_equal(partial["model.layers.0.self_attn.o_proj"].input, o_proj_in.value)

    logits, tl = tiny.run_with_cache(PROMPT)
    names = ["hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "mlp.hook_post", "hook_resid_post"]
    with tiny.trace(PROMPT):
        single = {name: tiny._canonical(site).save() for name, site in tiny.hook_names().items()}
        plain_logits = tiny.lm_head.output.save()
    np.testing.assert_array_equal(logits, plain_logits.value)
    assert {f"blocks.{L}.{n}" for L in range(2) for n in names} <= set(tl)
    assert set(tl) == set(single)
    for name, value in tl.items():
        np.testing.assert_array_equal(value, single[name].value, err_msg=name)
    assert tl["blocks.1.attn.hook_pattern"].shape == (1, 4, len(PROMPT), len(PROMPT))
    np.testing.assert_array_equal(tl["blocks.1.hook_resid_pre"], single["blocks.0.hook_resid_post"].value)
    _, only = tiny.run_with_cache(PROMPT, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(only) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_generator_output_pads_as_hf_generate():
    """Rows that stopped early get the pad id after their stop token, shorter prompts get it
    before theirs: HF generate's [batch, longest prompt + steps] (no daemon: the reply's
    `generation` as the daemon sends it)."""
    from types import SimpleNamespace

    from loupe.tracing import Tracer

    model = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=9))
    tracer = Tracer(model, generate={"max_new_tokens": 3})
    tracer.generation = {"steps": 3, "tokens": [[5, 2], [6, 7, 8]], "output": [[1, 2, 3, 5, 2], [4, 6, 7, 8]],
                         "finish": ["eos", "length"]}
    np.testing.assert_array_equal(tracer._generated_ids(), [[1, 2, 3, 5, 2, 9], [9, 9, 4, 6, 7, 8]])
