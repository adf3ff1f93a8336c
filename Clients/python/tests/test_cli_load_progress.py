"""`loupe load`'s progress line: on a terminal, stderr shows what the load job is doing and
the seconds so far, redrawn in place, and the line is cleared before the result (or the
error) is printed; when stderr is not a terminal nothing is drawn.

The daemon here is a stand-in that answers `models.load` as `loupe serve` does in `stream`
mode (PROTOCOL.md, "Jobs"): `accepted`, `queued`, `running`, then after a pause the final
reply, so the test controls how long the load takes and what it reports."""
import os
import pty
import re
import subprocess
import tempfile
import threading
import time

import msgpack
import pytest
import zmq

from conftest import _loupe_binary

LOAD_SECONDS = 0.8


class FakeDaemon:
    """Answers `hello` at once and `models.load` as a streamed job that takes LOAD_SECONDS."""

    def __init__(self, fail=False):
        self.fail = fail
        self.directory = tempfile.TemporaryDirectory()
        self.endpoint = f"ipc://{self.directory.name}/fake.sock"
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def reply(self, identity, body):
        self.socket.send_multipart([identity, msgpack.packb(body)])

    def serve(self):
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            identity, *frames = self.socket.recv_multipart()
            request = msgpack.unpackb(frames[0], raw=False)
            if request.get("op") == "hello":
                self.reply(identity, {"id": request["id"], "status": "ok", "protocol": 4, "instance": "fake"})
                continue
            assert request["op"] == "models.load" and request["mode"] == "stream", request
            job = {"id": request["id"], "job": "j1"}
            self.reply(identity, {**job, "status": "accepted"})
            self.reply(identity, {**job, "status": "queued", "position": 1})
            time.sleep(LOAD_SECONDS / 2)
            self.reply(identity, {**job, "status": "running"})
            time.sleep(LOAD_SECONDS / 2)
            if self.fail:
                self.reply(identity, {**job, "status": "error", "error": {
                    "code": "load_failed", "message": "cannot load 'fake.gguf': corrupt weights", "field": "source"}})
            else:
                self.reply(identity, {**job, "status": "ok", "name": request["name"], "architecture": "llama",
                                      "path": "/models/fake.gguf", "dimensions": {"layers": 30},
                                      "load_seconds": LOAD_SECONDS, "shared": False})

    def close(self):
        self.stop.set()
        self.thread.join()
        self.socket.close(0)
        self.directory.cleanup()


@pytest.fixture(scope="module")
def loupe():
    return _loupe_binary()


@pytest.fixture
def daemon():
    fake = FakeDaemon()
    yield fake
    fake.close()


def load_on_a_terminal(loupe, endpoint):
    """Runs `loupe load` with stderr on a pseudo-terminal; returns (stdout, stderr, status)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([loupe, "load", "tiny", "fake.gguf", "--endpoint", endpoint],
                               stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other end closed: the process has exited
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout = process.stdout.read().decode()
    return stdout, drawn.decode(), process.wait(timeout=30)


def test_load_draws_a_progress_line_on_a_terminal(loupe, daemon):
    stdout, drawn, status = load_on_a_terminal(loupe, daemon.endpoint)
    assert status == 0, drawn
    frames = [frame for frame in drawn.split("\r") if frame.strip()]
    assert any("loading tiny: queued behind other jobs (position 1)" in frame for frame in frames), drawn
    assert any("loading tiny: loading" in frame for frame in frames), drawn
    # Redrawn several times with the seconds so far, then cleared.
    assert len(frames) >= 4, drawn
    seconds = [float(shown) for shown in re.findall(r" (\d+\.\d)s\x1b\[K", drawn)]
    assert seconds == sorted(seconds) and max(seconds) >= LOAD_SECONDS / 2, drawn
    assert drawn.endswith("\r\x1b[K"), repr(drawn[-40:])
    assert stdout == f"loaded tiny (llama, 30 layers) from /models/fake.gguf, in {LOAD_SECONDS:.2f} s\n"


def test_load_draws_nothing_when_stderr_is_not_a_terminal(loupe, daemon):
    result = subprocess.run([loupe, "load", "tiny", "fake.gguf", "--endpoint", daemon.endpoint],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("loaded tiny (llama, 30 layers)")


def test_a_failed_load_clears_the_line_before_the_error(loupe):
    fake = FakeDaemon(fail=True)
    try:
        stdout, drawn, status = load_on_a_terminal(loupe, fake.endpoint)
    finally:
        fake.close()
    assert status != 0 and stdout == ""
    assert "\r\x1b[Kloupe: cannot load 'fake.gguf': corrupt weights" in drawn, repr(drawn[-200:])
