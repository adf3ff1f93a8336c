"""The HTML heatmap that loupe.plot.write makes, opened in headless Chromium (Debian's
`chromium` package, installed here with apt-get when missing): plotly.js must run from the
page itself and draw the title, the axis titles, every tick label (equal token strings as
separate columns) and the diverging colours."""

import html
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from loupe import plot
from pngread import read_png

WIDTH, HEIGHT = 900, 600
TITLE = "Patching the residual stream on IOI"
TOKENS = ["After", " John", " and", " Mary", " went", " John", " to"]
LAYERS = ["0", "1", "2"]
# The extremes of the colour scale (plotly's RdBu ends, -1 and +1 around the midpoint 0).
DEEP_RED, DEEP_BLUE = (103, 0, 31), (5, 48, 97)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path; installs Debian's package once when the machine has none."""
    def find():
        return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                     if (path := shutil.which(name))), None)

    path = find()
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=environment,
                       stdout=subprocess.DEVNULL)
        path = find()
    if path is None:
        pytest.fail("the screenshot test needs Chromium: apt-get install chromium")
    return path


def run_chromium(chromium: str, page: str, *arguments: str) -> bytes:
    """Chromium headless on a local page, scripts run to completion; returns its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", *arguments, f"file://{page}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout


def rendered_text(dom: str) -> dict:
    """The text plotly drew, by role: tick labels per axis and the titles."""
    def texts(pattern):
        return [html.unescape(text) for text in re.findall(pattern, dom)]

    return {
        "xtick": texts(r'<g class="xtick">\s*<text[^>]*>([^<]*)</text>'),
        "ytick": texts(r'<g class="ytick">\s*<text[^>]*>([^<]*)</text>'),
        **{role: texts(rf'<text class="{role}"[^>]*>([^<]*)</text>')
           for role in ("gtitle", "xtitle", "ytitle", "ycbcoloraxistitle")},
    }


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    values = np.linspace(-1.0, 1.0, len(LAYERS) * len(TOKENS)).reshape(len(LAYERS), len(TOKENS))
    fig = plot.heatmap(values, TOKENS, LAYERS, title=TITLE, x_title="Position", y_title="Layer")
    fig.update_layout(width=WIDTH, height=HEIGHT)
    return plot.write(fig, tmp_path_factory.mktemp("page") / "heatmap.html")


def test_page_draws_the_labels(chromium, page):
    drawn = rendered_text(run_chromium(chromium, page, "--dump-dom").decode())
    assert drawn["xtick"] == TOKENS  # " John" twice: two columns
    assert drawn["ytick"] == LAYERS
    assert drawn["gtitle"] == [TITLE]
    assert drawn["xtitle"] == ["Position"]
    assert drawn["ytitle"] == ["Layer"]
    assert drawn["ycbcoloraxistitle"] == ["Norm. Logit Diff"]


def test_screenshot_shows_the_diverging_colours(chromium, page, tmp_path):
    shot = tmp_path / "shot.png"
    run_chromium(chromium, page, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}")
    image = read_png(shot.read_bytes())[:, :, :3].astype(int)
    assert image.shape == (HEIGHT, WIDTH, 3)

    def pixels_near(colour, tolerance=10):
        return int((np.abs(image - np.array(colour)).max(axis=2) <= tolerance).sum())

    # One cell is about 70 x 100 pixels: the -1 and +1 cells and the colour bar's ends.
    assert pixels_near(DEEP_RED) > 2000
    assert pixels_near(DEEP_BLUE) > 2000
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200  # not a blank page


def test_a_page_whose_script_does_not_run_is_caught(chromium, tmp_path):
    """Without plotly.js the page draws nothing, and the label check sees that."""
    fig = plot.heatmap([[-1.0, 1.0]], ["a", "b"], ["0"], title=TITLE)
    broken = tmp_path / "broken.html"
    fig.write_html(broken, include_plotlyjs=False, full_html=True)
    drawn = rendered_text(run_chromium(chromium, str(broken), "--dump-dom").decode())
    assert drawn["xtick"] == [] and drawn["gtitle"] == []
