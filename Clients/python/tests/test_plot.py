"""loupe.plot: the tutorial's heatmap figure and the HTML, SVG and PNG files it writes."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from loupe import plot
from pngread import read_png

TOKENS = ["After", " John", " and", " Mary", " John"]
VALUES = np.array([[0.0, -0.5, 0.25, 1.0, -2.0], [0.75, 0.0, -1.0, 0.5, 0.125]])


@pytest.fixture(scope="module")
def fig():
    return plot.heatmap(VALUES, TOKENS, ["0", "1"], title="Residual <&> patching",
                        x_title="Position", y_title="Layer")


def test_heatmap_is_the_tutorials_figure(fig):
    import plotly.colors

    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_array_equal(np.asarray(trace.z), VALUES)
    coloraxis = fig.layout.coloraxis
    assert coloraxis.cmid == 0.0
    scale = [colour for _, colour in coloraxis.colorscale]
    assert scale == plotly.colors.sequential.RdBu
    assert coloraxis.colorbar.title.text == "Norm. Logit Diff"
    assert fig.layout.title.text == "Residual <&> patching"
    assert fig.layout.xaxis.title.text == "Position"
    assert fig.layout.yaxis.title.text == "Layer"
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 on top, as px.imshow draws it


def test_equal_token_strings_stay_separate_columns(fig):
    assert list(fig.layout.xaxis.ticktext) == TOKENS
    assert list(fig.layout.xaxis.tickvals) == list(range(len(TOKENS)))
    assert list(fig.data[0].x) == list(range(len(TOKENS)))
    # The hover names each cell by its labels.
    assert fig.data[0].customdata[1][4].tolist() == [" John", "1"]


def test_heatmap_reads_saved_proxies_and_defaults_labels():
    class Saved:  # what util.apply leaves in place of a saved proxy
        def __init__(self, value):
            self.value = np.float32(value)

    fig = plot.heatmap([[Saved(0.5), Saved(-1.5)], [Saved(2.0), Saved(0.0)]])
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[0.5, -1.5], [2.0, 0.0]])
    assert list(fig.layout.xaxis.ticktext) == ["0", "1"]
    assert list(fig.layout.yaxis.ticktext) == ["0", "1"]


def test_heatmap_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        plot.heatmap([1.0, 2.0])
    with pytest.raises(ValueError, match="x_labels has 2 labels for 5 columns"):
        plot.heatmap(VALUES, ["a", "b"])
    with pytest.raises(ValueError, match="y_labels has 3 labels for 2 rows"):
        plot.heatmap(VALUES, TOKENS, ["0", "1", "2"])


def test_html_is_self_contained(fig, tmp_path):
    path = plot.write(fig, tmp_path / "sub" / "heatmap.html")
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.findall(r"<script[^>]*\bsrc=", page)  # nothing fetched
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined
    assert "Residual \\u003c&\\u003e patching" in page  # the figure's JSON, with HTML's < > escaped


def test_svg_is_well_formed_with_the_labels(fig, tmp_path):
    path = plot.write(fig, tmp_path / "heatmap.svg", width=800, height=450)
    root = ElementTree.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == ("800", "450")
    texts = [node.text for node in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "Residual <&> patching" in texts
    for label in ("Position", "Layer", "Norm. Logit Diff", "After", " and", " Mary"):
        assert label in texts
    assert texts.count(" John") == 2
    # The cells are an embedded bitmap of 5 x 2 pixels, one per cell.
    images = list(root.iter("{http://www.w3.org/2000/svg}image"))
    assert len(images) == 1


def test_png_decodes_at_the_requested_size(fig, tmp_path):
    path = plot.write(fig, tmp_path / "heatmap.png", width=640, height=400, scale=1.5)
    image = read_png(open(path, "rb").read())
    assert image.shape[:2] == (600, 960)
    rgb = image[:, :, :3].astype(int)
    # -2 is the deep red end of RdBu; +1 is half way to blue on a scale centred on 0.
    assert (np.abs(rgb - np.array([103, 0, 31])).max(axis=2) <= 10).sum() > 1000
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100


def test_write_rejects_other_formats(fig, tmp_path):
    with pytest.raises(ValueError, match=r"\.html, \.svg or \.png"):
        plot.write(fig, tmp_path / "heatmap.pdf")
    assert not os.path.exists(tmp_path / "heatmap.pdf")


def test_plotly_is_imported_only_when_plotting():
    """The client imports and works without plotly: it is needed only to draw."""
    script = (
        "import sys\n"
        "sys.modules['plotly'] = None  # as if plotly were not installed\n"
        "import loupe, loupe.plot\n"
        "try:\n"
        "    loupe.plot.heatmap([[1.0]])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert "loupe.plot needs plotly: pip install plotly" in result.stdout
