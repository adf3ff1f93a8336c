#!/usr/bin/env python3
"""Compares the engine with an earlier commit's in the same run: forward 1x16 and 64x16 and
the tutorial's residual and head sweeps on SmolLM2, each binary run in turn REPEATS times,
medians and the ratio printed. The earlier commit is built in a git worktree of its own
(scratch path .build-base), so neither build disturbs the other.

    python3 scripts/bench_compare.py [--base HEAD~1] [--repeats 3]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "load (s)": re.compile(r"^load: ([0-9.]+) s"),
    "forward 1x16 (ms)": re.compile(r"^forward 1x16: ([0-9.]+) ms"),
    "forward 64x16 (ms)": re.compile(r"^forward 64x16: ([0-9.]+) ms"),
    "hooks that want no site, 1x16 (ratio to none)": re.compile(r"with hooks that want no site: .*\(([0-9.]+)x\)"),
    "residual sweep (s)": re.compile(r"^residual sweep \S+: ([0-9.]+) s"),
    "heads sweep (s)": re.compile(r"^heads sweep \S+: ([0-9.]+) s"),
}


def build(package, scratch):
    subprocess.run(["swift", "build", "-c", "release", "--product", "loupe-bench", "--package-path", str(package),
                    "--scratch-path", str(scratch)], check=True, stdout=sys.stderr)
    return Path(scratch) / "release" / "loupe-bench"


def figures(binary, model):
    # --python false: no torch or nnsight references; only the two binaries are compared.
    out = subprocess.run([str(binary), "--model", model, "--sweeps", "--sweep-kinds", "residual,heads", "--repeats", "5",
                          "--python", "false"], check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        for name, pattern in FIGURES.items():
            if (match := pattern.search(line)) and name not in found:
                found[name] = float(match.group(1))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=os.path.join(os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models")),
                                                          "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = parser.parse_args()
    worktree = Path(tempfile.mkdtemp(prefix="loupe-base-")) / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.base], check=True, stdout=sys.stderr)
    try:
        base = build(worktree, ROOT / ".build-base")
        head = build(ROOT, ROOT / ".build")
        runs = {"base": [], "head": []}
        for _ in range(args.repeats):
            runs["base"].append(figures(base, args.model))
            runs["head"].append(figures(head, args.model))
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True, text=True).stdout.strip()
        print(f"{'figure':48} {'base ' + commit:>14} {'this tree':>12} {'ratio':>8}")
        for name in FIGURES:
            b = statistics.median(r[name] for r in runs["base"] if name in r)
            h = statistics.median(r[name] for r in runs["head"] if name in r)
            print(f"{name:48} {b:14.3f} {h:12.3f} {h / b:8.3f}")
        print(f"medians of {args.repeats} runs each, the two binaries in turn; ratio = this tree / base")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)


if __name__ == "__main__":
    main()
