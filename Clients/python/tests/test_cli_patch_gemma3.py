"""`loupe patch` and `loupe heads` on Gemma 3 270M end to end: the command line against the
test session's `loupe serve`, the answers given as text (" John", " Mary"), --json's matrices
against nnsight's batched cells 13 and 22 on the same pair and the same dequantized weights
(Tests/Fixtures/sweeps/gemma3-ioi-nnsight.json, scripts/nnsight_reference.py --model gemma3).

Gemma's tokenizer puts BOS (id 2) before every prompt; an answer is one token only without
it, so the daemon must tokenize answers without special tokens (" John" is 3415, not
[2, 3415]). `loupe ioi --endpoint` tokenizes its answers through the daemon the same way."""
import json
import subprocess

import numpy as np

from conftest import FIXTURES

TOLERANCE = 1e-3
REFERENCE = json.loads((FIXTURES / "sweeps" / "gemma3-ioi-nnsight.json").read_text())


def loupe(binary, *args):
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_patch_and_heads_on_gemma3_match_nnsight(loupe_binary, endpoint, gemma3):
    loupe(loupe_binary, "load", "gemma-3-270m", gemma3, "--endpoint", endpoint)
    pair = ["gemma-3-270m", "--clean", REFERENCE["clean_prompt"], "--corrupt", REFERENCE["corrupted_prompt"],
            "--answer", " John", "--wrong", " Mary", "--endpoint", endpoint, "--json"]
    assert REFERENCE["answer_ids"] == [3415, 8712] and REFERENCE["clean_tokens"][0] == 2
    for command, key, cols in (("patch", "residual", REFERENCE["token_labels"]),
                               ("heads", "heads", [f"Head {i}" for i in range(4)])):
        got = json.loads(loupe(loupe_binary, command, *pair))
        want = REFERENCE[key]
        assert got["rows"] == [str(i) for i in range(18)] and got["cols"] == cols, (got["rows"], got["cols"])
        assert abs(got["clean_logit_diff"] - want["clean_logit_diff"]) < TOLERANCE
        assert abs(got["corrupted_logit_diff"] - want["corrupted_logit_diff"]) < TOLERANCE
        np.testing.assert_allclose(np.array(got["values"]), np.array(want["values"]), atol=TOLERANCE, rtol=0)


def test_ioi_on_the_daemon_tokenizes_answers_without_bos(loupe_binary, endpoint, gemma3):
    out = loupe(loupe_binary, "ioi", "--model", gemma3, "--endpoint", endpoint)
    lines = {line.split(" logit difference")[0]: float(line.rsplit(":", 1)[1])
             for line in out.splitlines() if " logit difference (" in line}
    assert abs(lines["clean"] - REFERENCE["residual"]["clean_logit_diff"]) < TOLERANCE, out
    assert abs(lines["corrupted"] - REFERENCE["residual"]["corrupted_logit_diff"]) < TOLERANCE, out
