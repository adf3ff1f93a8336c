"""torch interop: saved values as torch tensors or numpy arrays, and torch's functions on
proxies recorded as trace ops, against numpy on the same saved values. On the tiny Llama
fixture (token ids, no tokenizer). torch is a test requirement (scripts/setup.sh installs
Debian's where pip's is absent): a missing torch fails here, it does not skip."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loupe
from conftest import FIXTURES
from loupe import LanguageModel

IDS = [1, 17, 42, 99, 7, 300]


@pytest.fixture(scope="module")
def tiny(fixtures_endpoint):
    return LanguageModel(str(FIXTURES / "models" / "llama-tiny"), endpoint=fixtures_endpoint)


@pytest.fixture
def tensors():
    """Sets loupe.config.tensors for one test and puts it back."""
    before = loupe.config._tensors

    def use(kind):
        loupe.config.tensors = kind
    yield use
    loupe.config._tensors = before


def _softmax(x, dim, log=False):
    shifted = x - x.max(axis=dim, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    return shifted - logsum if log else np.exp(shifted - logsum)


def test_torch_functions_on_proxies_equal_numpy(tiny, tensors):
    tensors("torch")
    w = torch.linspace(-1, 1, 64 * 8).reshape(64, 8)
    vec = torch.linspace(0, 1, 64)
    with tiny.trace(IDS):
        h = tiny.model.layers[1].output.save()
        logits = tiny.lm_head.output.save()
        q = tiny.model.layers[0].self_attn.q_proj.output
        q = q.reshape(1, len(IDS), 4, 16).save()
        out = {
            "softmax": torch.softmax(logits, -1), "F.softmax": F.softmax(logits, dim=-1),
            "log_softmax": F.log_softmax(logits, -1), "torch.log_softmax": torch.log_softmax(logits, dim=-1),
            "stack": torch.stack([h, h * 2], dim=1), "cat": torch.cat([h, h], dim=1),
            "argmax": torch.argmax(logits, dim=-1), "sum": torch.sum(h, dim=-1), "sum_all": torch.sum(h),
            "mean": torch.mean(h, 1, keepdim=True), "matmul": torch.matmul(h, w), "rmatmul": torch.matmul(w.T, h[0].T),
            "tensor_add": vec + h, "tensor_mul": vec * h, "tensor_sub": vec - h,
            "einsum_dot": torch.einsum("bsd,bsd->bs", h, h), "einsum_proj": torch.einsum("bsd,de->bse", h, w),
            "einsum_permute": torch.einsum("bsd->dsb", h), "einsum_outer": torch.einsum("d,e->de", h[0, 0], h[0, 1]),
            "einsum_heads": torch.einsum("bqhd,bkhd->bhqk", q, q), "einsum_ellipsis": torch.einsum("...d,de->...e", h, w),
            "einsum_implicit": torch.einsum("ij,jk", h[0], w), "einsum_three": torch.einsum("sd,de,s->e", h[0], w, h[0, :, 0]),
        }
        top = torch.topk(logits[0, -1], 5)
        out["topk_values"], out["topk_indices"] = top.values, top.indices
        out = {name: value.save() for name, value in out.items()}
        with pytest.raises(TypeError, match=r"torch\.nn\.functional\.gelu has no trace op"):
            F.gelu(h)
        with pytest.raises(TypeError, match=r"torch\.cumsum has no trace op"):
            torch.cumsum(h, dim=1)
    assert isinstance(h.value, torch.Tensor) and isinstance(out["einsum_heads"].value, torch.Tensor)
    hv, lv, qv = h.numpy().astype(np.float64), logits.numpy().astype(np.float64), q.numpy().astype(np.float64)
    wv, vv = w.numpy().astype(np.float64), vec.numpy().astype(np.float64)
    expected = {
        "softmax": _softmax(lv, -1), "F.softmax": _softmax(lv, -1), "log_softmax": _softmax(lv, -1, log=True),
        "torch.log_softmax": _softmax(lv, -1, log=True), "stack": np.stack([hv, hv * 2], 1),
        "cat": np.concatenate([hv, hv], 1), "argmax": lv.argmax(-1), "sum": hv.sum(-1), "sum_all": hv.sum(),
        "mean": hv.mean(1, keepdims=True), "matmul": hv @ wv, "rmatmul": wv.T @ hv[0].T,
        "tensor_add": vv + hv, "tensor_mul": vv * hv, "tensor_sub": vv - hv,
        "einsum_dot": np.einsum("bsd,bsd->bs", hv, hv), "einsum_proj": np.einsum("bsd,de->bse", hv, wv),
        "einsum_permute": np.einsum("bsd->dsb", hv), "einsum_outer": np.einsum("d,e->de", hv[0, 0], hv[0, 1]),
        "einsum_heads": np.einsum("bqhd,bkhd->bhqk", qv, qv), "einsum_ellipsis": np.einsum("...d,de->...e", hv, wv),
        "einsum_implicit": np.einsum("ij,jk", hv[0], wv), "einsum_three": np.einsum("sd,de,s->e", hv[0], wv, hv[0, :, 0]),
        "topk_values": np.sort(lv[0, -1])[::-1][:5], "topk_indices": np.argsort(-lv[0, -1], kind="stable")[:5],
    }
    for name, value in expected.items():
        got = out[name].numpy()
        assert got.shape == value.shape, name
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-4, err_msg=name)

    # after the trace a torch function computes in torch on the saved values
    after = torch.softmax(logits, -1)
    assert isinstance(after, torch.Tensor)
    np.testing.assert_allclose(after.numpy(), _softmax(lv, -1), rtol=1e-4, atol=1e-6)


def test_saved_values_are_torch_or_numpy_as_configured(tiny, tensors, monkeypatch):
    monkeypatch.delenv("LOUPE_TENSORS", raising=False)
    tensors(None)  # torch is importable here: torch tensors by default

    def run():
        with tiny.trace(IDS):
            saved = tiny.lm_head.output[0, -1].save()
            top = tiny.lm_head.output[0, -1].argmax().save()
        return saved, top

    saved, top = run()
    assert isinstance(saved.value, torch.Tensor) and saved.value.dtype == torch.float32
    assert int(top) == int(torch.argmax(saved.value))
    monkeypatch.setenv("LOUPE_TENSORS", "numpy")
    as_numpy, _ = run()
    assert isinstance(as_numpy.value, np.ndarray)
    np.testing.assert_array_equal(as_numpy.value, saved.numpy())
    tensors("torch")  # the setting wins over the environment
    assert isinstance(run()[0].value, torch.Tensor)
    # in-place edits of a site's value with a torch literal (a steering vector), both forms
    vec = torch.linspace(-2, 2, 64)
    with tiny.trace(IDS):
        before = tiny.model.layers[0].output.clone().save()
        tiny.model.layers[0].output[:] += vec
        edited = tiny.model.layers[0].output.clone().save()
        tiny.model.layers[1].output += vec
        logits = tiny.lm_head.output.save()
    np.testing.assert_allclose(edited.numpy(), before.numpy() + vec.numpy(), rtol=1e-6, atol=1e-6)
    with tiny.trace(IDS):
        plain = tiny.lm_head.output.save()
    assert np.abs(logits.numpy() - plain.numpy()).max() > 1e-2
    with pytest.raises(ValueError, match="'torch', 'numpy' or None"):
        loupe.config.tensors = "jax"
