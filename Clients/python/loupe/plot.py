"""Heatmaps as the activation-patching tutorial draws them, and files to keep them in.

`heatmap` returns the figure the tutorial's `plot_ioi_patching_results` makes with
`px.imshow`: the diverging `RdBu` scale centred on 0, labelled axes and colour bar.
`write` saves a figure as a self-contained HTML page (plotly.js inlined, nothing fetched
when it is opened), or as SVG or PNG rendered by kaleido 0.2.1's own headless Chromium (no
browser needed on the machine).

plotly (and kaleido, for SVG and PNG) are imported only when these functions run, so the
rest of the client works without them: `pip install -e 'Clients/python[plot]'`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = ["heatmap", "write"]

_INSTALL_HINT = "pip install plotly 'kaleido==0.2.1' (or pip install -e 'Clients/python[plot]')"


def heatmap(
    values: Any,
    x_labels: Optional[Sequence[Any]] = None,
    y_labels: Optional[Sequence[Any]] = None,
    title: Optional[str] = None,
    x_title: str = "Position",
    y_title: str = "Layer",
    color_title: str = "Norm. Logit Diff",
):
    """A plotly figure of a rows x columns matrix, as the tutorial's `px.imshow` draws it.

    `values` is anything numpy makes a 2-D float array of (nested lists of numbers or of
    saved proxies, whose `.value` is read). `x_labels` and `y_labels` name the columns and
    rows (default: their indices). Equal labels stay separate columns: two tokens that
    decode to the same text are two positions, where plotly would merge equal category
    names into one column.
    """
    px = _plotly_express()
    matrix = _as_matrix(values)
    rows, cols = matrix.shape
    x_text = _labels(x_labels, cols, "x_labels")
    y_text = _labels(y_labels, rows, "y_labels")

    # Cells sit at integer coordinates and the labels are tick texts, so duplicate labels
    # cannot collapse; the hover shows the labels, not the coordinates.
    fig = px.imshow(
        matrix,
        x=list(range(cols)),
        y=list(range(rows)),
        color_continuous_midpoint=0.0,
        color_continuous_scale="RdBu",
        labels={"x": x_title, "y": y_title, "color": color_title},
        title=title,
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(cols)), ticktext=x_text)
    fig.update_yaxes(tickmode="array", tickvals=list(range(rows)), ticktext=y_text)
    label_grid = np.empty((rows, cols, 2), dtype=object)
    label_grid[:, :, 0] = np.array(x_text, dtype=object)[None, :]
    label_grid[:, :, 1] = np.array(y_text, dtype=object)[:, None]
    fig.update_traces(
        customdata=label_grid,
        hovertemplate=(
            f"{x_title}: %{{customdata[0]}}<br>{y_title}: %{{customdata[1]}}"
            f"<br>{color_title}: %{{z:.4f}}<extra></extra>"
        ),
    )
    return fig


def write(fig, path: str | os.PathLike, width: Optional[int] = None, height: Optional[int] = None,
          scale: Optional[float] = None) -> str:
    """Writes `fig` to `path`; the extension picks the format: `.html`, `.svg` or `.png`.

    HTML is one file that opens offline (plotly.js is inlined). SVG and PNG are rendered by
    kaleido 0.2.1, which ships its own headless Chromium; `width`/`height` default to 700 x 500
    pixels and `scale` multiplies them for PNG. Returns the path as a string.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if extension in (".html", ".htm"):
        fig.write_html(path, include_plotlyjs=True, full_html=True, include_mathjax=False)
    elif extension in (".svg", ".png"):
        with warnings.catch_warnings():  # kaleido 0.2.1 starts its reader thread the old way
            warnings.simplefilter("ignore", DeprecationWarning)
            image = _kaleido_scope().transform(
                fig.to_dict(), format=extension[1:], width=width, height=height, scale=scale)
        with open(path, "wb") as file:
            file.write(image)
    else:
        raise ValueError(f"loupe.plot.write: '{path}' should end in .html, .svg or .png")
    return path


def _as_matrix(values: Any) -> np.ndarray:
    """A 2-D float array from numbers, numpy arrays or saved proxies (anything with `.value`)."""

    def number(item: Any) -> Any:
        if hasattr(item, "value"):
            item = item.value
        if isinstance(item, (list, tuple)):
            return [number(element) for element in item]
        return item

    matrix = np.asarray(number(values), dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"loupe.plot.heatmap: values must be a 2-D matrix (rows x columns), got shape {matrix.shape}")
    return matrix


def _labels(labels: Optional[Iterable[Any]], count: int, name: str) -> list:
    if labels is None:
        return [str(index) for index in range(count)]
    text = [str(label) for label in labels]
    if len(text) != count:
        raise ValueError(f"loupe.plot.heatmap: {name} has {len(text)} labels for {count} {'columns' if name == 'x_labels' else 'rows'}")
    return text


def _plotly_express():
    try:
        import plotly.express as px
    except ImportError as error:
        raise ImportError(f"loupe.plot needs plotly: {_INSTALL_HINT}") from error
    return px


_scope = None


def _kaleido_scope():
    """One kaleido renderer per process, pointed at the plotly.js that plotly ships, so
    rendering fetches nothing. (plotly 6 and later only call kaleido 1.x, which needs a
    Chrome installed separately; 0.2.1's scope works with them when called directly.)"""
    global _scope
    if _scope is None:
        try:
            import plotly
            from kaleido.scopes.plotly import PlotlyScope
        except ImportError as error:
            raise ImportError(f"loupe.plot.write needs kaleido 0.2.1 for SVG and PNG: {_INSTALL_HINT}") from error
        plotly_js = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
        _scope = PlotlyScope(plotlyjs=plotly_js, mathjax=False)
    return _scope
