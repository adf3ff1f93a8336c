"""The client's surface beyond the tutorial's cells: tokenizer, module tree, proxies,
util.apply, einops, errors that name the line, two processes on one daemon."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import loupe
from conftest import FIXTURES, Daemon
from loupe import DaemonUnavailable, LanguageModel, Proxy, TraceError, util

CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"


@pytest.fixture(scope="module")
def gpt2(endpoint, gpt2_random):
    return LanguageModel(gpt2_random, endpoint=endpoint)


@pytest.fixture(scope="module")
def smol(endpoint, smollm2):
    return LanguageModel(smollm2, endpoint=endpoint)


def test_tokenizer_runs_in_the_daemon(gpt2, smol):
    assert gpt2.tokenizer(" John")["input_ids"] == [1757]
    assert gpt2.tokenizer(CLEAN)["input_ids"] == [3260, 1757, 290, 5335, 1816, 284, 262, 3650, 11, 5335, 2921,
                                                    257, 9294, 286, 7545, 284]
    assert gpt2.tokenizer.decode(1757) == " John"
    assert gpt2.tokenizer.decode(np.int64(5335)) == " Mary"
    assert gpt2.tokenizer.decode([3260, 1757]) == "After John"
    batch = smol.tokenizer([CLEAN, CORRUPTED], return_tensors="pt")["input_ids"]
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 16)
    assert batch[0, 9] == 5099 and batch[1, 9] == 2322  # " Mary" / " John", SmolLM2 adds no BOS


def test_module_tree_mirrors_hf(gpt2, smol):
    assert len(gpt2.transformer.h) == 12 and len(smol.model.layers) == 30
    assert type(gpt2.transformer.h[3].attn.c_proj).__name__ == "Module"
    assert repr(smol.model.layers[2].self_attn.o_proj) == "Linear('model.layers.2.self_attn.o_proj')"
    assert [m._path for m in gpt2.transformer.h[:2]] == ["transformer.h.0", "transformer.h.1"]
    with pytest.raises(AttributeError, match="no submodule 'nope'"):
        gpt2.transformer.nope
    assert str(smol).startswith("LlamaForCausalLM(\n  (model): LlamaModel(")
    assert "(0-29): 30 x LlamaDecoderLayer(" in str(smol)
    with pytest.raises(RuntimeError, match="inside `with model.trace"):
        gpt2.lm_head.output


def test_proxies_index_assign_compute_and_save(gpt2):
    with gpt2.trace(CLEAN, remote=True) as tracer:
        tokens = tracer.invoker.inputs[0]["input_ids"][0]
        hidden = gpt2.transformer.h[5].output[0].save()
        c_proj_in = gpt2.transformer.h[5].attn.c_proj.input.save()
        logits = gpt2.lm_head.output.save()
        last = logits[0, -1]
        stats = (last.max() - last.mean(), last.softmax(-1).sum(), (2 * last[[1757, 5335]] + 1) ** 2)
        saved = [s.save() for s in stats]
        assert hidden.shape == (1, 16, 768) and logits.shape == (1, 16, 50257) and len(tokens) == 16
    row = logits.value[0, -1].astype(np.float64)
    assert c_proj_in.value.shape == (1, 16, 768)
    assert float(saved[0]) == pytest.approx(row.max() - row.mean(), abs=1e-4)
    assert float(saved[1]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(saved[2].value, (2 * row[[1757, 5335]] + 1) ** 2, rtol=1e-5)

    # module.output = ... and index assignment change the run; unsaved proxies have no value
    with gpt2.trace(CLEAN):
        gpt2.transformer.h[11].output[0][:, -1, :] = 0.0
        gpt2.transformer.h[11].output[0][:, 0, :] = hidden[:, 0, :] * 2
        written = gpt2.transformer.h[11].output[0].save()
        gpt2.transformer.ln_f.output = gpt2.transformer.ln_f.output * 0.0
        zeroed = gpt2.lm_head.output.save()
        unsaved = gpt2.lm_head.output
    assert not written.value[0, -1].any()
    np.testing.assert_allclose(written.value[0, 0], 2 * hidden.value[0, 0], rtol=1e-6)
    assert not zeroed.value.any()
    with pytest.raises(ValueError, match="not saved"):
        unsaved.value


def _safetensors(path):
    """A float32 safetensors file's tensors as numpy arrays."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return {name: np.frombuffer(data[8 + size + entry["data_offsets"][0]:8 + size + entry["data_offsets"][1]], dtype="<f4")
            .reshape(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def test_attribution_sweep_matches_torch_and_compares(smol):
    """Attribution patching of every kind from one sweep, against torch's (clean - corrupted) ·
    grad on the seed pair (smollm2-gradients.safetensors), then beside the exact heads sweep."""
    golden = _safetensors(FIXTURES / "models" / "smollm2-gradients.safetensors")
    assert smol.tokenizer(CLEAN)["input_ids"] == [int(t) for t in golden["clean_tokens"]]
    kinds = ["residual", "heads", "head_positions", "mlp", "neurons"]
    sweeps = smol.sweep(CLEAN, CORRUPTED, kind=kinds, answer=" John", wrong=" Mary", method="attribution", normalized=False)
    assert list(sweeps) == kinds
    for kind, sweep in sweeps.items():
        assert (sweep.kind, sweep.method, sweep.approximation) == (kind, "attribution", True)
        assert sweep.reply["backward"]["peak_bytes"] > 0
        expected = golden["attribution.neurons_last" if kind == "neurons" else f"attribution.{kind}"].reshape(30, -1)
        np.testing.assert_allclose(sweep.values - sweep.corrupted, expected, atol=1e-3)
    summed = smol.sweep(CLEAN, CORRUPTED, kind="neurons", answer=" John", wrong=" Mary", method="attribution",
                        normalized=False, neuron_positions="sum")
    np.testing.assert_allclose(summed.values - summed.corrupted, golden["attribution.neurons_sum"], atol=1e-3)

    heads = smol.sweep(CLEAN, CORRUPTED, kind="heads", answer=" John", wrong=" Mary", method="attribution", compare=True)
    exact = smol.sweep(CLEAN, CORRUPTED, kind="heads", answer=" John", wrong=" Mary")
    assert exact.method == "activation" and not exact.approximation and exact.exact is None
    np.testing.assert_allclose(heads.exact, exact.values, atol=1e-5)
    assert heads.correlation == pytest.approx(np.corrcoef(heads.values.ravel(), exact.values.ravel())[0, 1], abs=1e-6)


def test_util_apply_keeps_the_nesting():
    nested = [[1, "a"], (2, {"k": 3})]
    assert util.apply(nested, lambda x: x * 10, int) == [[10, "a"], (20, {"k": 30})]


def test_einops_round_trip_and_in_place_head_write(smol):
    import einops  # scripts/setup.sh installs it: a missing einops is a failure, not a skip
    with smol.trace(CLEAN):
        z = smol.model.layers[4].self_attn.o_proj.input
        original = z.clone().save()
        heads = einops.rearrange(z, "b s (nh dh) -> b s nh dh", nh=9)
        head3 = heads[:, :, 3, :].clone().save()  # a copy: the view itself is zeroed below, as in PyTorch
        back = einops.rearrange(heads, "b s nh dh -> b s (nh dh)", nh=9).save()
        assert heads.shape == (1, 16, 9, 64) and back.shape == (1, 16, 576)
        heads[:, :, 3, :] = 0.0
        merged = einops.rearrange(heads, "b s nh dh -> b s (nh dh)", nh=9)
        smol.model.layers[4].self_attn.o_proj.input = merged
        after = smol.model.layers[4].self_attn.o_proj.input.save()
    np.testing.assert_array_equal(head3.value, original.value.reshape(1, 16, 9, 64)[:, :, 3, :])
    assert not after.value[:, :, 3 * 64:4 * 64].any()
    np.testing.assert_array_equal(np.delete(after.value, np.s_[192:256], axis=2),
                                  np.delete(original.value, np.s_[192:256], axis=2))
    # after the trace, einops computes on the saved values with numpy
    np.testing.assert_array_equal(einops.rearrange(original, "b s (nh dh) -> b s nh dh", nh=9),
                                  original.value.reshape(1, 16, 9, 64))


def test_daemon_error_names_the_line_that_built_the_node(gpt2):
    with pytest.raises(TraceError) as caught:
        with gpt2.trace(CLEAN):
            early = gpt2.transformer.h[0].output[0]
            late = gpt2.transformer.h[5].output[0]
            early[:, 0, :] = late[:, 0, :]  # the failing node: layer 0 cannot wait for layer 5
    lines = open(__file__).read().splitlines()
    line = next(i + 1 for i, text in enumerate(lines) if "# the failing node" in text)
    assert caught.value.code == "out_of_order"
    assert f"{__file__}:{line}: early[:, 0, :] = late[:, 0, :]" in str(caught.value)
    # the daemon keeps serving, the model still traces
    with gpt2.trace(CLEAN):
        ok = gpt2.lm_head.output[0, -1, 1757].save()
    assert np.isfinite(float(ok))


def test_load_shows_progress_and_attaches_to_loaded_models(endpoint, smollm2, smol, capsys):
    again = LanguageModel(smollm2, endpoint=endpoint)
    assert again.name == smol.name  # attached: the same source is loaded once
    named = LanguageModel(smollm2, endpoint=endpoint, name="smol-second-name", progress=True)
    assert named.name == "smol-second-name"
    err = capsys.readouterr().err
    assert "loading smol-second-name: loaded (llama, shared the weights already in memory)" in err


def test_two_processes_share_one_daemon(endpoint, smollm2, smol):
    """Two Python processes at once on one daemon, each running the tutorial's cells 8-9
    and one patched run, get what this process gets."""
    script = textwrap.dedent(f"""
        import json, sys
        from loupe import LanguageModel
        model = LanguageModel({smollm2!r}, endpoint={endpoint!r})
        john, mary = model.tokenizer(" John")["input_ids"][0], model.tokenizer(" Mary")["input_ids"][0]
        out = []
        for _ in range(3):
            with model.trace({CLEAN!r}):
                clean_hs = model.model.layers[3].output.save()
                logits = model.lm_head.output
                clean = (logits[0, -1, john] - logits[0, -1, mary]).save()
            with model.trace({CORRUPTED!r}):
                model.model.layers[3].output[:, 9, :] = clean_hs[:, 9, :]
                logits = model.lm_head.output
                patched = (logits[0, -1, john] - logits[0, -1, mary]).save()
            out.append([float(clean), float(patched)])
        print(json.dumps(out))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    workers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for _ in range(2)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    with smol.trace(CLEAN):
        clean_hs = smol.model.layers[3].output.save()
        logits = smol.lm_head.output
        clean = (logits[0, -1, 2322] - logits[0, -1, 5099]).save()
    with smol.trace(CORRUPTED):
        smol.model.layers[3].output[:, 9, :] = clean_hs[:, 9, :]
        logits = smol.lm_head.output
        patched = (logits[0, -1, 2322] - logits[0, -1, 5099]).save()
    for result in results:
        np.testing.assert_allclose(result, [[float(clean), float(patched)]] * 3, atol=1e-4)


def test_misuse_is_reported_where_it_happens(gpt2):
    with pytest.raises(RuntimeError, match="traces do not nest"):
        with gpt2.trace(CLEAN):
            with gpt2.trace(CLEAN):
                pass
    with pytest.raises(RuntimeError, match="needs an invocation"):
        with gpt2.trace() as tracer:
            with tracer.invoke(CLEAN):
                pass
            gpt2.lm_head.output
    with pytest.raises(IndexError):
        with gpt2.trace(CLEAN):
            gpt2.lm_head.output[0, -1, 60000]
    assert isinstance(loupe.Proxy, type) and Proxy is loupe.tracing.Proxy


def test_no_daemon_and_a_restarted_daemon_are_reported_plainly(loupe_binary, tmp_path):
    nowhere = f"ipc://{tmp_path}/nobody.sock"
    with pytest.raises(DaemonUnavailable, match="no reply from a Loupe daemon on " + nowhere):
        LanguageModel(str(FIXTURES / "models" / "gpt2-tiny"), endpoint=nowhere, connect_timeout=0.5)

    daemon = Daemon(loupe_binary, workdir=str(tmp_path), args=["--models-dir", str(FIXTURES / "models")]).start()
    try:
        tiny = LanguageModel(str(FIXTURES / "models" / "gpt2-tiny"), endpoint=daemon.endpoint)
        with tiny.trace([1, 2, 3]):
            before = tiny.lm_head.output.save()
        daemon.stop()
        daemon.start()  # a new process on the same endpoint, without the model
        with pytest.raises(DaemonUnavailable, match=r"restarted \(instance \S+ -> \S+\)"):
            with tiny.trace([1, 2, 3]):
                tiny.lm_head.output.save()
        assert before.value.shape == (1, 3, tiny.config.vocab)
    finally:
        daemon.stop()
