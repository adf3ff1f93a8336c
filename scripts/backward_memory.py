#!/usr/bin/env python3
"""Measures what a trace's backward holds on a real model, against the bound the daemon
refuses a backward by (`loupe serve --max-backward-mb`): for each shape, one trace of ROWS
invocations of LENGTH tokens whose scalar is the sum of each one's logit at its last
position, reading the gradient at one layer's output. Prints per shape the bound
(`backward.bound_bytes`), the tape's peak (`backward.peak_bytes`) and how far the daemon's
peak resident memory (VmHWM) rose over a forward pass of the same shape run first.

Usage: backward_memory.py --loupe .build/release/loupe [--model PATH] [--shape 4x128 ...]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

SMOLLM2 = Path(os.environ.get("LOUPE_MODELS") or Path.home() / ".cache" / "loupe" / "models") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def request(socket, body):
    socket.send(msgpack.packb({"id": 1, **body}))
    reply = msgpack.unpackb(socket.recv(), raw=False)
    if reply.get("status") != "ok":
        raise RuntimeError(reply.get("error"))
    return reply


def peak_resident(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def trace(rows, length, backward):
    invokes = [[100 + (row * 31 + i * 7) % 40_000 for i in range(length)] for row in range(rows)]
    nodes, total = [], None
    for invoke in range(rows):
        base = len(nodes)
        nodes += [{"id": base, "op": "get", "site": "logits", "invoke": invoke},
                  {"id": base + 1, "op": "index", "x": {"ref": base}, "key": [0, -1, 5]}]
        if total is not None:
            nodes.append({"id": base + 2, "op": "add", "x": {"ref": total}, "y": {"ref": base + 1}})
        total = nodes[-1]["id"]
    if backward:
        first = len(nodes)
        nodes += [{"id": first, "op": "get", "site": "blocks.3.resid_post", "invoke": 0},
                  {"id": first + 1, "op": "backward", "x": {"ref": total}},
                  {"id": first + 2, "op": "grad", "x": {"ref": first}},
                  {"id": first + 3, "op": "save", "x": {"ref": first + 2}, "name": "g"}]
    else:
        nodes.append({"id": len(nodes), "op": "save", "x": {"ref": total}, "name": "s"})
    return {"op": "trace", "model": "m", "invokes": invokes, "nodes": nodes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loupe", required=True)
    parser.add_argument("--model", default=str(SMOLLM2))
    parser.add_argument("--shape", action="append", help="ROWSxLENGTH (repeatable; default 4x128 and 1x512)")
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in (args.shape or ["4x128", "1x512"])]
    print("| shape | bound | tape peak | peak RSS rise |\n|---|---|---|---|")
    for rows, length in shapes:
        # A daemon per shape: VmHWM only grows.
        endpoint = f"ipc://{tempfile.mkdtemp(prefix='loupe-memory-')}/loupe.sock"
        daemon = subprocess.Popen([args.loupe, "serve", "--endpoint", endpoint, "--log-level", "warning",
                                   "--max-backward-mb", "65536"])
        socket = zmq.Context.instance().socket(zmq.REQ)
        socket.connect(endpoint)
        try:
            time.sleep(0.5)
            request(socket, {"op": "models.load", "name": "m", "source": args.model})
            request(socket, trace(rows, length, backward=False))
            before = peak_resident(daemon.pid)
            backward = request(socket, trace(rows, length, backward=True))["backward"]
            rise = peak_resident(daemon.pid) - before
            mib = 1 << 20
            print(f"| {rows} x {length} | {backward['bound_bytes'] / mib:.0f} MiB | {backward['peak_bytes'] / mib:.0f} MiB "
                  f"| {rise / mib:.0f} MiB |")
        finally:
            socket.close(0)
            daemon.terminate()
            daemon.wait()


if __name__ == "__main__":
    sys.exit(main())
