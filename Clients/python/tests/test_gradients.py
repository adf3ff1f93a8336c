"""Gradients through the client as nnsight users write them: nnsight 0.8's
`with metric.backward():` and the older `h.grad.save()` then `metric.backward()`, `h.grad = ...`
and `h.grad[...] = ...` in the backward block, and `.grad` on a module's output, a module's
input and a computed value. On SmolLM2 against torch autograd on the same weights
(Tests/Fixtures/models/smollm2-gradients.safetensors, scripts/make_gradient_fixtures.py:
the metric logit(" John") - logit(" Mary") at the last position of the corrupted IOI prompt),
the attribution-patching pattern included."""
import json
import struct

import numpy as np
import pytest

from conftest import FIXTURES
import loupe
from loupe import LanguageModel, TraceError

CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"
JOHN, MARY = 2322, 5099  # SmolLM2's " John" and " Mary"
LAYERS = 30


def read_safetensors(path):
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    out = {}
    for name, entry in header.items():
        if name != "__metadata__":
            start, end = entry["data_offsets"]
            out[name] = np.frombuffer(data[8 + size + start:8 + size + end], dtype="<f4").reshape(entry["shape"])
    return out


@pytest.fixture(scope="module")
def golden():
    return read_safetensors(FIXTURES / "models" / "smollm2-gradients.safetensors")


@pytest.fixture(scope="module")
def smol(endpoint, smollm2):
    return LanguageModel(smollm2, endpoint=endpoint)


def relative(actual, expected):
    """max |actual - expected| over max(1, max |expected|)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / max(1.0, np.abs(expected).max()))


def test_the_golden_prompts_are_the_clients(smol, golden):
    assert smol.tokenizer(CORRUPTED)["input_ids"] == [int(t) for t in golden["corrupted_tokens"]]
    assert smol.tokenizer(CLEAN)["input_ids"] == [int(t) for t in golden["clean_tokens"]]


def test_both_nnsight_forms_give_torchs_gradients(smol, golden):
    layers = smol.model.layers
    # nnsight 0.8: the outputs first, their gradients inside the backward block.
    with smol.trace(CORRUPTED):
        outs = [layers[L].output for L in (0, 14, 29)]
        logits = smol.lm_head.output
        logit_diff = logits[0, -1, JOHN] - logits[0, -1, MARY]
        with logit_diff.backward():
            new = [out.grad.save() for out in reversed(outs)][::-1]
        metric = logit_diff.save()
    # Before nnsight 0.5: .grad saved first, backward() called inside the trace.
    with smol.trace(CORRUPTED):
        old = [layers[L].output.grad.save() for L in (0, 14, 29)]
        logits = smol.lm_head.output
        (logits[0, -1, JOHN] - logits[0, -1, MARY]).backward()
    assert abs(float(metric) - float(golden["metric.corrupted"])) < 1e-3
    for L, a, b in zip((0, 14, 29), new, old):
        assert a.value.shape == (1, 16, 576)
        np.testing.assert_array_equal(a.value, b.value)
        assert relative(a.value[0], golden[f"grad.resid_post.{L}"]) < 1e-3, L


def test_attribution_patching_as_nnsight_users_write_it(smol, golden):
    """Clean layer outputs saved; on the corrupted run the outputs and their gradients of the
    logit difference; then (clean - corrupted) * grad summed over hidden, per layer."""
    clean_out, corrupted_out, corrupted_grads = [], [], []
    with smol.trace() as tracer:
        with tracer.invoke(CLEAN):
            for layer in smol.model.layers:
                clean_out.append(layer.output.save())
        with tracer.invoke(CORRUPTED):
            for layer in smol.model.layers:
                out = layer.output
                corrupted_out.append(out.save())
                corrupted_grads.append(out.grad.save())
            logits = smol.lm_head.output
            value = logits[0, -1, JOHN] - logits[0, -1, MARY]
            value.backward()
    attribution = np.stack([((clean.value - corrupted.value) * grad.value).sum(-1)[0]
                            for clean, corrupted, grad in zip(clean_out, corrupted_out, corrupted_grads)])
    assert attribution.shape == (LAYERS, 16)
    assert np.abs(attribution - golden["attribution.residual"]).max() < 1e-3

    # The same computed in the trace, in nnsight 0.8's form: one [30, 16] matrix comes back.
    with smol.trace() as tracer:
        with tracer.invoke(CLEAN):
            clean_out = [layer.output for layer in smol.model.layers]
        with tracer.invoke(CORRUPTED):
            corrupted_out = [layer.output for layer in smol.model.layers]
            logits = smol.lm_head.output
            with (logits[0, -1, JOHN] - logits[0, -1, MARY]).backward():
                rows = [((clean - corrupted) * corrupted.grad).sum(-1)[0]
                        for clean, corrupted in zip(clean_out, corrupted_out)]
                matrix = loupe.stack(rows).save()
    assert np.abs(matrix.value - golden["attribution.residual"]).max() < 1e-3


def test_setting_gradients_in_the_backward_block(smol):
    layers = smol.model.layers

    def run(edit):
        with smol.trace(CORRUPTED):
            outs = [layers[L].output for L in (10, 20, 25)]
            logits = smol.lm_head.output
            with (logits[0, -1, JOHN] - logits[0, -1, MARY]).backward():
                late = outs[2].grad.save()
                before = outs[1].grad.save()
                edit(outs[1])
                after = outs[1].grad.save()
                early = outs[0].grad.save()
        return late.value, before.value, after.value, early.value

    def double(out):
        out.grad = out.grad * 2

    def zero(out):
        out.grad[:] = 0

    plain = run(lambda out: None)
    doubled = run(double)
    np.testing.assert_array_equal(doubled[0], plain[0])          # layer 25: flowed past already
    np.testing.assert_array_equal(doubled[1], plain[1])          # read before the set
    np.testing.assert_array_equal(doubled[2], 2 * plain[1])      # read after it
    np.testing.assert_allclose(doubled[3], 2 * plain[3], rtol=1e-6, atol=1e-9)  # every earlier gradient doubles
    zeroed = run(zero)
    assert np.abs(zeroed[2]).max() == 0 and np.abs(zeroed[3]).max() == 0
    np.testing.assert_array_equal(zeroed[0], plain[0])


def test_grad_of_a_module_input_and_of_a_computed_value(smol, golden):
    with smol.trace(CORRUPTED):
        z = smol.model.layers[14].self_attn.o_proj.input
        probs = smol.lm_head.output[0, -1].softmax(-1)
        metric = probs[JOHN].log() - probs[MARY].log()   # the logit difference, through the softmax
        with metric.backward():
            z_grad = z.grad.save()
            probs_grad = probs.grad.save()
        p = probs.save()
    assert relative(z_grad.value[0], golden["grad.z.14"]) < 1e-3
    # d/dp (log p[John] - log p[Mary]) = e_John / p[John] - e_Mary / p[Mary]
    expected = np.zeros_like(p.value)
    expected[JOHN], expected[MARY] = 1 / p.value[JOHN], -1 / p.value[MARY]
    np.testing.assert_allclose(probs_grad.value, expected, rtol=1e-5, atol=1e-6)


def test_gradient_errors_name_the_line(smol):
    with pytest.raises(TraceError, match="one backward") as raised:
        with smol.trace(CORRUPTED):
            metric = smol.lm_head.output[0, -1, JOHN]
            metric.backward()
            metric.backward()
    assert "metric.backward()" in str(raised.value)
    with pytest.raises(TraceError, match="backward") as raised:
        with smol.trace(CORRUPTED):
            smol.model.layers[3].output.grad.save()
    assert raised.value.code == "bad_request" and "grad.save()" in str(raised.value)
    with pytest.raises(TraceError, match="scalar") as raised:
        with smol.trace(CORRUPTED):
            smol.model.layers[3].output.sum(-1).backward()
    assert raised.value.code == "shape_mismatch"
    with pytest.raises(ValueError, match="inside the trace"):
        with smol.trace(CORRUPTED):
            out = smol.model.layers[3].output.save()
        out.grad
