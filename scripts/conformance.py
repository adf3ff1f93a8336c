#!/usr/bin/env python3
"""Replays Protocol/vectors/ against a live Loupe daemon and compares every reply field by
field (numbers within the manifest's tolerance, variable fields only for presence).

The daemon must be fresh and serve the tiny fixture models:
    loupe serve --endpoint ipc:///tmp/loupe.sock --models-dir Tests/Fixtures/models &
    python3 scripts/conformance.py --endpoint ipc:///tmp/loupe.sock
Uses a REQ socket (an empty delimiter frame before each request) unless --dealer is given.
Exits 1 on the first vector that does not conform.
"""
import argparse
import json
import math
import struct
import sys
from pathlib import Path

import msgpack
import zmq

VECTORS = Path(__file__).resolve().parent.parent / "Protocol" / "vectors"


def is_variable(path, patterns):
    return any(len(p) == len(path) and all(a == "*" or a == b for a, b in zip(p, path)) for p in patterns)


def close(a, b, tolerance):
    return math.isclose(a, b, rel_tol=tolerance["relative"], abs_tol=tolerance["absolute"])


def compare(expected, actual, path, patterns, tolerance):
    """Mismatches, as readable lines; fields the reply has beyond the expected ones are allowed."""
    where = ".".join(path) or "(reply)"
    if is_variable(path, patterns):
        return [] if actual is not None else [f"{where}: missing"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a map, got {actual!r}"]
        if expected.get("dtype") == "f32" and isinstance(expected.get("data"), bytes):
            if actual.get("shape") != expected["shape"] or not isinstance(actual.get("data"), bytes):
                return [f"{where}: expected an f32 tensor of shape {expected['shape']}"]
            count = len(expected["data"]) // 4
            want = struct.unpack(f"<{count}f", expected["data"])
            got = struct.unpack(f"<{count}f", actual["data"]) if len(actual["data"]) == 4 * count else ()
            bad = [i for i, (a, b) in enumerate(zip(want, got)) if not close(a, b, tolerance)]
            return [f"{where}: {len(bad)} values differ (first at {bad[0]})"] if bad or not got else []
        problems = []
        for key, value in expected.items():
            if key not in actual and not is_variable(path + [key], patterns):
                problems.append(f"{'.'.join(path + [key])}: missing")
            else:
                problems += compare(value, actual.get(key), path + [key], patterns, tolerance)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected {len(expected)} elements, got {actual!r}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual)) for p in compare(e, a, path + [str(i)], patterns, tolerance)]
    if isinstance(expected, float) or isinstance(actual, float):
        ok = isinstance(actual, (int, float)) and not isinstance(actual, bool) and close(expected, actual, tolerance)
        return [] if ok else [f"{where}: expected {expected!r}, got {actual!r}"]
    return [] if expected == actual and type(expected) is type(actual) else [f"{where}: expected {expected!r}, got {actual!r}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--dealer", action="store_true", help="use a DEALER socket without delimiter frames")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()

    manifest = json.loads((VECTORS / "manifest.json").read_text())
    patterns = [p.split(".") for p in manifest["variable"]]
    socket = zmq.Context().socket(zmq.DEALER if args.dealer else zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(args.timeout * 1000))
    socket.connect(args.endpoint)
    for vector in manifest["vectors"]:
        name = vector["name"]
        request = (VECTORS / f"{name}.request.msgpack").read_bytes()
        expected = msgpack.unpackb((VECTORS / f"{name}.reply.msgpack").read_bytes())
        socket.send(request)
        try:
            actual = msgpack.unpackb(socket.recv())
        except zmq.Again:
            print(f"{name}: no reply within {args.timeout} s", file=sys.stderr)
            return 1
        problems = compare(expected, actual, [], patterns + [p.split(".") for p in vector["variable"]],
                           manifest["float_tolerance"])
        if problems:
            print(f"{name}: does not conform\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print(f"{name}: ok")
    print(f"{len(manifest['vectors'])} vectors conform")
    return 0


if __name__ == "__main__":
    sys.exit(main())
