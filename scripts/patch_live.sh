#!/usr/bin/env bash
# `loupe patch` and `loupe heads` against a real `loupe serve` process (the debug build unless LOUPE names another) on
# the tiny GPT-2 fixture: --json's matrix equals the golden sweep vector's (computed by a
# numpy GPT-2, Protocol/vectors), and so do --method attribution's estimates and, with
# --compare, the exact matrix beside them; --svg / --html write a well-formed SVG carrying
# the labels and an HTML page without scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
loupe=${LOUPE:-.build/debug/loupe}
socket=$(mktemp -u /tmp/loupe-patch-XXXXXX.sock)
endpoint="ipc://$socket"
out=$(mktemp -d)
"$loupe" serve --endpoint "$endpoint" --models-dir Tests/Fixtures/models --model-root Tests/Fixtures/models --log-level warning &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do "$loupe" ps --endpoint "$endpoint" --timeout 0.2 >/dev/null 2>&1 && break; sleep 0.1; done
"$loupe" load tiny gpt2-tiny --endpoint "$endpoint" >/dev/null
ids=(--ids --clean "226,166,280,485,436,17,429" --corrupt "226,166,280,7,436,17,429" --answer 1 --wrong 2 --endpoint "$endpoint")
"$loupe" patch tiny "${ids[@]}" --json > "$out/patch.json"
"$loupe" heads tiny "${ids[@]}" --svg "$out/heads.svg" --html "$out/heads.html" > "$out/heads.txt"
"$loupe" heads tiny "${ids[@]}" --method attribution --compare --json > "$out/attribution.json"
"$loupe" patch tiny "${ids[@]}" --method attribution --site neurons --color never > "$out/neurons.txt"
python3 - "$out" <<'PY'
import glob, json, math, sys
import xml.etree.ElementTree as ET

out = sys.argv[1]
got = json.load(open(f"{out}/patch.json"))
assert sorted(got) == ["clean_logit_diff", "cols", "corrupted_logit_diff", "rows", "seconds", "values"], sorted(got)
golden = json.load(open(glob.glob("Protocol/vectors/*-sweep-residual-logit-diff.reply.json")[0]))
assert got["rows"] == golden["rows"] and got["cols"] == golden["cols"], (got["rows"], got["cols"])
assert math.isclose(got["clean_logit_diff"], golden["clean"], abs_tol=1e-4)
assert math.isclose(got["corrupted_logit_diff"], golden["corrupted"], abs_tol=1e-4)
for row, want in zip(got["values"], golden["values"]):
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(row, want)), (row, want)

svg = ET.parse(f"{out}/heads.svg").getroot()
assert svg.tag == "{http://www.w3.org/2000/svg}svg", svg.tag
texts = {"".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")}
for label in ["Head 0", "Head 3", "0", "1", "Layer", "Head", "Norm. Logit Diff"]:
    assert label in texts, (label, texts)
html = open(f"{out}/heads.html").read()
assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
assert "Clean logit difference" in open(f"{out}/heads.txt").read()

def close(got, want):
    return all(math.isclose(a, b, abs_tol=1e-3) for r, w in zip(got, want) for a, b in zip(r, w)) and len(got) == len(want)

got = json.load(open(f"{out}/attribution.json"))
assert got["method"] == "attribution" and got["approximation"] is True and got["backward_peak_bytes"] > 0, got
estimates = json.load(open(glob.glob("Protocol/vectors/*-sweep-attribution-kinds.reply.json")[0]))["results"]["heads"]
assert close(got["values"], estimates["values"]), (got["values"], estimates["values"])
exact = json.load(open(glob.glob("Protocol/vectors/*-sweep-heads-logit-diff.reply.json")[0]))["values"]
assert close(got["exact_values"], exact), (got["exact_values"], exact)
a, e = [v for row in got["values"] for v in row], [v for row in exact for v in row]
ma, me = sum(a) / len(a), sum(e) / len(e)
r = sum((x - ma) * (y - me) for x, y in zip(a, e)) / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - me) ** 2 for y in e))
assert math.isclose(got["correlation"], r, abs_tol=1e-4), (got["correlation"], r)
neurons = open(f"{out}/neurons.txt").read()
assert "(an approximation)" in neurons and "Layer 0, Neuron" in neurons, neurons
PY
# The daemon may exit before its reply to the shutdown has left (a known race: the reply is
# queued, then the process ends); that it stops is what `wait` checks.
"$loupe" stop --endpoint "$endpoint" >/dev/null 2>&1 || true
wait "$daemon"
echo "patch: loupe patch --json gives the golden sweep against loupe serve, and --method attribution (--compare) the golden estimates (and exact matrix); loupe heads writes a well-formed SVG and a script-free HTML page"
