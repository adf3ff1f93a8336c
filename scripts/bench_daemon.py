#!/usr/bin/env python3
"""Benchmarks the Loupe daemon over loopback TCP and prints a Markdown section for
BENCHMARKS.md:

1. `hello` round trip (median, p99) from a pyzmq REQ client, beside the same client
   against a plain pyzmq REP echo server measured in the same run: the ratio is what
   the daemon adds over ZeroMQ and MessagePack themselves.
2. Requests per second with 4 client processes sending `hello` in lock step.
3. A reply of 50,257 float32 logits (GPT-2's vocabulary), in MB/s, as a MessagePack bin
   and as an attachment frame (`frames: true`), fetched again with `jobs.result` so that
   the forward pass that computed it is not in the timing.
4. Warm turnaround: the IOI experiment (both prompts, one forward pass) as
   `loupe ioi --endpoint` against a daemon that holds SmolLM2 warm (and as a bare request
   from Python), against `loupe ioi` in a fresh process that loads the model first.

Usage: bench_daemon.py --loupe .build/release/loupe [--smol PATH]
"""
import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

ROOT = Path(__file__).resolve().parent.parent
CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOB_REQUEST = msgpack.packb({"blob": True})
BLOB_FLOATS = 50257


def echo_server(endpoint, ready):
    """A REP socket that sends back what it receives, or a ready-made reply of 50,257 floats
    when asked for it: the floor any server stands on."""
    blob = msgpack.packb({"data": b"\0" * (BLOB_FLOATS * 4)})
    sock = zmq.Context().socket(zmq.REP)
    sock.bind(endpoint)
    ready.set()
    while True:
        message = sock.recv()
        if message == b"stop":
            sock.send(b"")
            return
        sock.send(blob if message == BLOB_REQUEST else message)


def round_trips(endpoint, count, request, frames=False):
    """Seconds per request/reply over a REQ socket, packing and unpacking as a client must."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sock.send(msgpack.packb(request))
        parts = sock.recv_multipart(copy=False)
        reply = msgpack.unpackb(parts[0].bytes)
        times.append(time.perf_counter() - start)
    sock.close()
    return times, reply, [len(p.bytes) for p in parts]


def hammer(endpoint, seconds, counts, index):
    sock = zmq.Context().socket(zmq.REQ)
    sock.connect(endpoint)
    request = msgpack.packb({"id": 1, "op": "hello"})
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sock.send(request)
        msgpack.unpackb(sock.recv())
        done += 1
    counts[index] = done


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def call(endpoint, request, timeout=600):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout * 1000)
    sock.connect(endpoint)
    sock.send(msgpack.packb(request))
    reply = msgpack.unpackb(sock.recv())
    sock.close()
    if reply.get("status") != "ok":
        raise SystemExit(f"{request['op']} failed: {reply}")
    return reply


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loupe", required=True, help="the loupe executable (a release build)")
    parser.add_argument("--smol", default=os.path.join(os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models")),
                                                       "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    loupe = str(Path(args.loupe).resolve())
    lines = []

    work = Path(tempfile.mkdtemp(prefix="loupe-bench-"))
    # One layer of GPT-2 small's shape: the 50,257-token vocabulary without the wait.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_random_gpt2.py"), str(work / "gpt2-1layer"), "--layers", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = subprocess.Popen([loupe, "serve", "--endpoint", endpoint, "--log-level", "warning"])
    echo_endpoint = f"tcp://127.0.0.1:{free_port()}"
    ready = multiprocessing.Event()
    echo = multiprocessing.Process(target=echo_server, args=(echo_endpoint, ready), daemon=True)
    echo.start()
    ready.wait()
    try:
        for _ in range(100):
            try:
                call(endpoint, {"id": 0, "op": "hello"}, timeout=1)
                break
            except zmq.Again:
                time.sleep(0.1)

        # 1. hello against the daemon and against the echo, interleaved in rounds so that
        # both see the same machine.
        hello = {"id": 1, "op": "hello", "protocol": 3}
        loupe_times, echo_times = [], []
        for _ in range(5):
            loupe_times += round_trips(endpoint, args.count // 5, hello)[0]
            echo_times += round_trips(echo_endpoint, args.count // 5, hello)[0]
        lm, lp = statistics.median(loupe_times), percentile(loupe_times, 0.99)
        em, ep = statistics.median(echo_times), percentile(echo_times, 0.99)
        lines.append(f"| `hello` round trip, median | {lm * 1e6:.0f} µs | pyzmq REQ/REP echo: {em * 1e6:.0f} µs | {lm / em:.2f}x |")
        lines.append(f"| `hello` round trip, p99 | {lp * 1e6:.0f} µs | pyzmq REQ/REP echo: {ep * 1e6:.0f} µs | {lp / ep:.2f}x |")

        # 2. Four clients at once.
        counts = multiprocessing.Array("i", 4)
        workers = [multiprocessing.Process(target=hammer, args=(endpoint, 3.0, counts, i)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        lines.append(f"| `hello` requests/s, 4 client processes | {sum(counts) / 3.0:,.0f} /s | | |")

        # 3. 50,257 logits in one reply: a forward pass computes them once, then `jobs.result`
        # fetches the retained reply again and again, so only the transfer is timed.
        call(endpoint, {"id": 2, "op": "models.load", "name": "gpt2", "source": str(work / "gpt2-1layer")})
        forward = {"id": 3, "op": "forward", "model": "gpt2", "tokens": [[464]], "logits": True}
        computed = time.perf_counter()
        job = call(endpoint, forward)["job"]
        computed = time.perf_counter() - computed
        payload = 50257 * 4
        fetch = {"id": 4, "op": "jobs.result", "job": job}
        times, reply, _ = round_trips(endpoint, 300, fetch)
        assert reply["logits"]["shape"] == [1, 1, 50257], reply.get("error")
        frame_times, _, frame_sizes = round_trips(endpoint, 300, dict(fetch, frames=True))
        echo_big = round_trips(echo_endpoint, 300, {"blob": True})[0]
        t, f, e = statistics.median(times), statistics.median(frame_times), statistics.median(echo_big)
        lines.append(f"| 50,257-float reply (`jobs.result` of a logits forward), median | {t * 1e3:.2f} ms, "
                     f"{payload / t / 1e6:.0f} MB/s | pyzmq REP sending a ready {payload:,}-byte reply: {e * 1e3:.2f} ms, "
                     f"{payload / e / 1e6:.0f} MB/s | {t / e:.2f}x |")
        lines.append(f"| same, data in an attachment frame (`frames: true`) | {f * 1e3:.2f} ms, {payload / f / 1e6:.0f} MB/s "
                     f"| | {f / e:.2f}x |")
        lines.append(f"| the forward pass that made them (1-layer GPT-2 shape) | {computed * 1e3:.0f} ms | | |")

        # 4. Warm turnaround vs a fresh process.
        if Path(args.smol).exists():
            call(endpoint, {"id": 4, "op": "models.load", "name": "smol", "source": args.smol})
            ioi = {"id": 5, "op": "forward", "model": "smol", "prompts": [CLEAN, CORRUPTED], "top_k": 5}
            call(endpoint, ioi)  # the first experiment
            warm = []
            for _ in range(10):
                start = time.perf_counter()
                call(endpoint, ioi)
                warm.append(time.perf_counter() - start)
            cli = []
            for _ in range(5):
                start = time.perf_counter()
                subprocess.run([loupe, "ioi", "--model", args.smol, "--endpoint", endpoint], check=True, stdout=subprocess.DEVNULL)
                cli.append(time.perf_counter() - start)
            fresh = []
            for _ in range(3):
                start = time.perf_counter()
                subprocess.run([loupe, "ioi", "--model", args.smol], check=True, stdout=subprocess.DEVNULL)
                fresh.append(time.perf_counter() - start)
            w, c, f = statistics.median(warm), statistics.median(cli), statistics.median(fresh)
            lines.append(f"| IOI experiment (SmolLM2), `loupe ioi --endpoint` on the warm daemon | {c * 1e3:.0f} ms | "
                         f"fresh `loupe ioi` process (loads the model): {f:.2f} s | {f / c:.1f}x faster warm |")
            lines.append(f"| same experiment as one request from a Python client | {w * 1e3:.0f} ms | | |")
        else:
            lines.append(f"| warm turnaround | not measured: {args.smol} is missing (scripts/fetch-models.sh) | | |")
        call(endpoint, {"id": 9, "op": "server.shutdown"})
        daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(echo_endpoint)
        sock.send(b"stop")
        echo.join(timeout=2)
        shutil.rmtree(work, ignore_errors=True)

    print("| measure | Loupe | reference | ratio / note |")
    print("|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
