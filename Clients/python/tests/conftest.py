"""A live `loupe serve` for the tests: started once per session on an ipc:// socket in a
temporary directory, stopped (server.shutdown) at the end. The binary is $LOUPE_BIN, else
what `swift build -c release --product loupe` builds in the repository (the debug build
works too, about four times slower).

Models: SmolLM2 and Gemma 3 270M from $LOUPE_MODELS (default ~/.cache/loupe/models;
scripts/fetch-models.sh puts them there) and a GPT-2-small-shaped model with the seeded random weights of
scripts/make_random_gpt2.py, generated on first use into $LOUPE_MODELS/gpt2-small-random
with GPT-2's real tokenizer files (gpt2-tokenizer/) linked beside them."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
import zmq

# The tests written against numpy values keep them whether or not torch is importable;
# test_torch.py sets loupe.config.tensors itself.
os.environ.setdefault("LOUPE_TENSORS", "numpy")

REPO = Path(__file__).resolve().parents[3]
MODELS = Path(os.environ.get("LOUPE_MODELS") or Path.home() / ".cache" / "loupe" / "models")
FIXTURES = REPO / "Tests" / "Fixtures"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"
GPT2_RANDOM = MODELS / "gpt2-small-random"


def _loupe_binary():
    if os.environ.get("LOUPE_BIN"):
        return os.environ["LOUPE_BIN"]
    release = ["swift", "build", "-c", "release"]
    subprocess.run(release + ["--product", "loupe"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    bin_dir = subprocess.run(release + ["--show-bin-path"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.strip()
    return os.path.join(bin_dir, "loupe")


def _ask(endpoint, op, timeout=1.0):
    """One request on a fresh socket; None when nothing answers in time."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(msgpack.packb({"id": 1, "op": op}))
        if not socket.poll(int(timeout * 1000)):
            return None
        return msgpack.unpackb(socket.recv_multipart()[0], raw=False)
    finally:
        socket.close(0)


class Daemon:
    """A `loupe serve` process on an ipc:// socket in its own temporary directory."""

    def __init__(self, binary, workdir=None, args=()):
        self.binary, self.args = binary, list(args)
        self.workdir = workdir or tempfile.mkdtemp(prefix="loupe-pytest-")
        self.endpoint = f"ipc://{self.workdir}/loupe.sock"
        self.process = None

    def start(self):
        log = open(os.path.join(self.workdir, "daemon.log"), "a")
        self.process = subprocess.Popen([self.binary, "serve", "--endpoint", self.endpoint, "--log-level", "warning",
                                         *self.args],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError(f"loupe serve exited with {self.process.returncode}: "
                                   f"{open(os.path.join(self.workdir, 'daemon.log')).read()}")
            if _ask(self.endpoint, "hello", timeout=0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("loupe serve did not answer within 10 s")

    def stop(self):
        if self.process is None:
            return
        _ask(self.endpoint, "server.shutdown")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def loupe_binary():
    return _loupe_binary()


@pytest.fixture(scope="session")
def endpoint(loupe_binary):
    """The endpoint of a daemon started for this test session."""
    daemon = Daemon(loupe_binary)
    try:
        yield daemon.start().endpoint
    finally:
        daemon.stop()
        shutil.rmtree(daemon.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures_endpoint(loupe_binary):
    """A daemon that may also load the tiny models of Tests/Fixtures/models (outside the default roots)."""
    daemon = Daemon(loupe_binary, args=["--models-dir", str(FIXTURES / "models")])
    try:
        yield daemon.start().endpoint
    finally:
        daemon.stop()
        shutil.rmtree(daemon.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2():
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: run scripts/fetch-models.sh")
    return str(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3():
    if not GEMMA3.is_file():
        pytest.fail(f"{GEMMA3} is missing: run scripts/fetch-models.sh")
    return str(GEMMA3)


@pytest.fixture(scope="session")
def gpt2_random():
    """An HF directory of the GPT-2-small-shaped seeded random model with GPT-2's tokenizer."""
    tokenizer = MODELS / "gpt2-tokenizer"
    if not (tokenizer / "encoder.json").is_file():
        pytest.fail(f"{tokenizer} is missing: run scripts/fetch-models.sh")
    if not (GPT2_RANDOM / "model.safetensors").is_file():
        staging = Path(tempfile.mkdtemp(prefix="gpt2-small-random-", dir=MODELS))
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_gpt2.py"), str(staging)],
                       check=True, stdout=subprocess.DEVNULL)
        try:
            staging.rename(GPT2_RANDOM)
        except OSError:  # another run made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    for name in ("encoder.json", "vocab.bpe"):
        link = GPT2_RANDOM / name
        if not link.exists():
            try:
                link.symlink_to(tokenizer / name)
            except FileExistsError:
                pass
    return str(GPT2_RANDOM)
