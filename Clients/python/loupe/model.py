"""LanguageModel: a model loaded in the Loupe daemon, seen from Python as nnsight sees a
PyTorch model: its HF module tree, a tokenizer, traces, and the daemon's sweeps."""
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .progress import ProgressBar, Spinner
from .tracing import Proxy, Tracer, current_trace
from .wire import Connection, LoupeError


def _model_name(source):
    """A daemon model name (1-64 of A-Z a-z 0-9 . _ -) for a file, directory or HF id."""
    base = os.path.basename(source.rstrip("/")) if os.path.exists(source) else source
    base = re.sub(r"\.(gguf|safetensors)$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")[:64] or "model"


class Module:
    """One module of the HF tree: children by attribute (`model.transformer.h`), list
    modules by index (`h[3]`, `len(h)`), and the `.output` / `.input` sites."""

    def __init__(self, model, tree):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", tree.get("path") or "")
        object.__setattr__(self, "_type", tree.get("type", "Module"))
        object.__setattr__(self, "_children", {c["name"]: Module(model, c) for c in tree.get("children") or []})

    def __getattr__(self, name):
        children = object.__getattribute__(self, "_children")
        if name in children:
            return children[name]
        raise AttributeError(f"{self._type} at '{self._path or '(root)'}' has no submodule '{name}' "
                             f"(it has: {', '.join(children) or 'none'})")

    def __getitem__(self, index):
        return list(self._children.values())[index]  # a module list's children are named 0, 1, ...

    def __len__(self):
        return len(self._children)

    def __iter__(self):
        return iter(self._children.values())

    def __dir__(self):
        return list(super().__dir__()) + list(self._children)

    def __repr__(self):
        return f"{self._type}('{self._path}')"

    @property
    def output(self):
        return self._model._site_value(self._path, "output")

    @property
    def input(self):
        return self._model._site_value(self._path, "input")

    def __setattr__(self, name, value):
        if name in ("output", "input"):
            self._model._set_site(self._path, name, value)
        else:
            raise AttributeError(f"cannot set '{name}' on a module: only .output and .input can be assigned")


class SiteTuple:
    """A site whose HF value is a tuple (a GPT-2 block's output): element 0 is the hidden state."""

    def __init__(self, model, path, io, shape):
        self._model, self._path, self._io, self._shape = model, path, io, shape

    def __getitem__(self, index):
        if index != 0:
            raise IndexError(f"{self._path}.{self._io}: Loupe exposes element 0 of this tuple (the hidden state)")
        return current_trace().get(self._path, self._io, self._shape, item=0)

    def __setitem__(self, index, value):
        if index != 0:
            raise IndexError(f"{self._path}.{self._io}: only element 0 of this tuple can be assigned")
        current_trace().set(self._path, self._io, self._shape, value, item=0)


class BatchEncoding(dict):
    """What a tokenizer call returns: `input_ids` and `attention_mask`, also as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Tokenizer:
    """The model's tokenizer, run in the daemon (`tokenize` and `detokenize`)."""

    def __init__(self, model, info):
        self._model = model
        self.info = info or {}
        self.vocab_size = self.info.get("vocab_size")
        self.bos_token_id, self.eos_token_id = self.info.get("bos"), self.info.get("eos")
        self._decoded, self._encoded = {}, {}

    def encode(self, text, add_special_tokens=True):
        """The ids of `text`; with add_special_tokens=False without the BOS a tokenizer that adds
        one (Gemma's) puts first, as HF's tokenizers do: the form for a lone answer token."""
        # Remembered: the tutorial's batched cells tokenize one prompt for hundreds of invocations.
        if text not in self._encoded:
            if len(self._encoded) >= 4096:
                self._encoded.clear()
            self._encoded[text] = self._model._request("tokenize", {"text": text})["tokens"]
        ids = list(self._encoded[text])
        return ids[1:] if not add_special_tokens and self.info.get("adds_bos") else ids

    def __call__(self, text, return_tensors=None, add_special_tokens=True, **_):
        def encode(t):
            return self.encode(t, add_special_tokens=add_special_tokens)

        rows = [encode(text)] if isinstance(text, str) else [encode(t) for t in text]
        if return_tensors is not None:  # "pt" or "np": a numpy array either way
            if len({len(r) for r in rows}) > 1:
                raise ValueError("return_tensors needs texts of one length in tokens (no padding here)")
            ids = np.asarray(rows, dtype=np.int64)
            return BatchEncoding(input_ids=ids, attention_mask=np.ones_like(ids))
        if isinstance(text, str):
            return BatchEncoding(input_ids=rows[0], attention_mask=[1] * len(rows[0]))
        return BatchEncoding(input_ids=rows, attention_mask=[[1] * len(r) for r in rows])

    def decode(self, ids):
        if isinstance(ids, Proxy):
            ids = ids.value
        if np.ndim(ids) == 0:
            token = int(ids)
            if token not in self._decoded:
                self._decoded[token] = self._model._request("detokenize", {"tokens": [token]})["text"]
            return self._decoded[token]
        return self._model._request("detokenize", {"tokens": [int(t) for t in np.asarray(ids).reshape(-1)]})["text"]

    def ids_for(self, prompt):
        """Token ids of an invocation: a prompt string, or ids (a list, an array [n] or [1, n])."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        ids = np.asarray(prompt.value if isinstance(prompt, Proxy) else prompt)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("an invocation is one prompt: a string or a 1-D sequence of token ids")
        return [int(t) for t in ids]


@dataclass
class Sweep:
    """A sweep's matrix with its labels: `values[row, col]`, rows are layers. An attribution
    sweep's values are estimates (`approximation`); with compare=True, `exact` holds the exact
    sweep's matrix and `correlation` Pearson's correlation of the two."""

    values: np.ndarray
    rows: list
    cols: list
    row_axis: str
    col_axis: str
    clean: float
    corrupted: float
    kind: str
    reply: dict = field(repr=False)
    method: str = "activation"
    approximation: bool = False
    exact: np.ndarray = field(default=None, repr=False)
    correlation: float = None

    @classmethod
    def from_reply(cls, reply):
        exact = reply.get("exact")
        return cls(values=np.asarray(reply["values"], dtype=np.float64), rows=reply["rows"], cols=reply["cols"],
                   row_axis=reply.get("row_axis", "Layer"), col_axis=reply.get("col_axis", ""),
                   clean=reply.get("clean"), corrupted=reply.get("corrupted"), kind=reply["kind"], reply=reply,
                   method=reply.get("method", "activation"), approximation=reply.get("approximation", False),
                   exact=None if exact is None else np.asarray(exact["values"], dtype=np.float64),
                   correlation=(reply.get("comparison") or {}).get("correlation"))

    def heatmap(self, title=None, **kwargs):
        """The matrix as a plotly heatmap (needs plotly: pip install 'loupe[plotly]')."""
        from . import plot

        return plot.heatmap(self.values, x_labels=self.cols, y_labels=self.rows, title=title,
                            **{"x_title": self.col_axis, "y_title": self.row_axis, **kwargs})


class LanguageModel:
    """A model in the Loupe daemon: `LanguageModel("path/or/hf-id")` loads it there (or attaches
    to the model already loaded from that source), then mirrors its HF module tree."""

    def __init__(self, source, endpoint=None, name=None, progress=None, keep_alive=None, connect_timeout=5.0,
                 **_ignored):
        # _ignored: nnsight's device_map, dispatch, ...: the daemon decides where models live.
        self._connection = Connection.to(endpoint, connect_timeout)
        self._progress = progress
        self._source = os.path.abspath(os.path.expanduser(source)) if os.path.exists(os.path.expanduser(source)) \
            else source
        self._keep_alive = keep_alive
        self._name = self._loaded_name(name) or self._load(name or _model_name(self._source))
        self._describe()

    # -- loading -----------------------------------------------------------------------

    def _loaded_name(self, name):
        """The loaded model to attach to: the one called `name`, else one loaded from our source."""
        for model in self._connection.request("models.list", {})["models"]:
            if model["name"] == name or (name is None and self._source in (model.get("source"), model.get("path"))):
                return model["name"]
        return None

    def _load(self, name):
        spinner = Spinner(f"loading {name}", enabled=self._progress)
        fields = {"name": name, "source": self._source}
        if self._keep_alive is not None:
            fields["keep_alive"] = self._keep_alive
        try:
            reply = self._connection.request("models.load", fields, job=True,
                                             on_reply=lambda r: spinner.tick(r.get("status")))
        except LoupeError:
            spinner.close()
            raise
        how = "shared the weights already in memory" if reply.get("shared") else f"{reply.get('load_seconds', 0):.1f}s"
        spinner.close(f"loaded ({reply.get('architecture')}, {how})")
        return name

    def _describe(self):
        d = self._request("models.describe", {"name": self._name, "sites": True})
        self.info = d
        self.printed = d.get("printed", "")
        dims = d.get("dimensions", {})
        self.config = SimpleNamespace(
            **dims, num_hidden_layers=dims.get("layers"), n_layer=dims.get("layers"), hidden_size=dims.get("hidden"),
            n_embd=dims.get("hidden"), num_attention_heads=dims.get("heads"), n_head=dims.get("heads"),
            num_key_value_heads=dims.get("kv_heads"), vocab_size=dims.get("vocab"), architecture=d.get("architecture"))
        self._sites = {}
        for site in d.get("sites") or []:
            path = site["site"]
            suffix = "." + site["io"]
            if path.endswith(suffix):
                path = path[: -len(suffix)]
            self._sites[(path, site["io"])] = (site["shape"], bool(site.get("tuple")))
        self._root = Module(self, d["tree"])
        self.tokenizer = Tokenizer(self, d.get("tokenizer"))

    @property
    def name(self):
        return self._name

    # -- requests ------------------------------------------------------------------------

    def _request(self, op, fields, job=False, on_reply=None):
        key = "name" if op == "models.describe" else "model"
        try:
            return self._connection.request(op, {key: self._name, **fields}, job=job, on_reply=on_reply)
        except LoupeError as error:
            if error.code == "unknown_model":
                self._connection.check_restart()  # says so plainly when the daemon is a new process
            raise

    def _job(self, op, fields, on_reply=None):
        return self._request(op, fields, job=True, on_reply=on_reply)

    # -- the module tree -----------------------------------------------------------------

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._root, name)

    def __getitem__(self, index):
        return self._root[index]

    def __repr__(self):
        return self.printed

    def _site(self, path, io):
        try:
            return self._sites[(path, io)]
        except KeyError:
            raise AttributeError(f"{self._name} has no site '{path}.{io}'") from None

    def _site_value(self, path, io):
        trace = current_trace()
        if trace is None or trace.model is not self:
            raise RuntimeError(f"{path}.{io} is read inside `with model.trace(...)` of this model")
        shape, is_tuple = self._site(path, io)
        if is_tuple:
            return SiteTuple(self, path, io, shape)
        return trace.get(path, io, shape)

    def _set_site(self, path, io, value):
        trace = current_trace()
        if trace is None or trace.model is not self:
            raise RuntimeError(f"{path}.{io} is assigned inside `with model.trace(...)` of this model")
        shape, is_tuple = self._site(path, io)
        trace.set(path, io, shape, value, item=0 if is_tuple else None)

    # -- experiments -------------------------------------------------------------------

    def trace(self, prompt=None, remote=False, progress=False, **_ignored):
        """`with model.trace(prompt):` or `with model.trace() as tracer:` + `tracer.invoke(...)`.
        `remote` is accepted for nnsight's code and means nothing here: the daemon is remote."""
        return Tracer(self, prompt, progress=progress)

    def sweep(self, clean, corrupted, kind="residual", answer=None, wrong=None, metric=None, normalized=True,
              progress=None, method="activation", compare=False, neuron_positions=None):
        """The daemon's activation-patching sweeps (PROTOCOL.md `sweep`): `residual` (layers x
        positions), `heads` (layers x heads), `head_positions`, `mlp` or `neurons` (layers x MLP
        hidden units; `neuron_positions` "last" or "sum"). The metric is the logit difference
        `answer - wrong` when both are given, else `metric`: a map as the protocol has it, or
        "logprob" (of `answer`) or "kl". Returns a Sweep with labelled numpy values.

        method="attribution" estimates every cell from one clean forward pass and one corrupted
        forward and backward pass (attribution patching); `kind` may then be a list of kinds,
        all from those passes, and the result is a dict of Sweeps by kind. compare=True also
        runs the exact sweep: each Sweep's `exact` and `correlation`."""
        if metric is None:
            if answer is None or wrong is None:
                raise ValueError("give answer= and wrong= (a logit difference) or a metric")
            metric = {"logit_diff": {"answer": _token(answer), "wrong": _token(wrong)}}
        elif metric == "logprob":
            metric = {"logprob": {"answer": _token(answer)}}
        elif metric == "kl":
            metric = {"kl": {}}
        label = kind if isinstance(kind, str) else "+".join(kind)
        bar = ProgressBar(f"{label} {'attribution ' if method == 'attribution' else ''}sweep",
                          enabled=self._progress if progress is None else progress)

        def on_reply(reply):
            if reply.get("status") == "progress":
                bar.update(reply["done"], reply["total"])

        fields = {"clean": _prompt(clean), "corrupted": _prompt(corrupted), "metric": metric, "normalized": normalized,
                  "kind": kind if isinstance(kind, str) else list(kind)}
        if method != "activation":
            fields["method"] = method
        if compare:
            fields["compare"] = True
        if neuron_positions is not None:
            fields["neuron_positions"] = neuron_positions
        try:
            reply = self._job("sweep", fields, on_reply)
        finally:
            bar.close()
        if "results" in reply:
            return {name: Sweep.from_reply(reply["results"][name]) for name in reply["kinds"]}
        return Sweep.from_reply(reply)


def _token(answer):
    return answer if isinstance(answer, str) else int(answer)


def _prompt(prompt):
    return prompt if isinstance(prompt, str) else [int(t) for t in np.asarray(prompt).reshape(-1)]
