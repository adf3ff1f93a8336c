"""LanguageModel: a model loaded in the Loupe daemon, seen from Python as nnsight sees a
PyTorch model: its HF module tree, a tokenizer, traces, generation, caches, and the
daemon's sweeps."""
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .interop import to_user
from .progress import ProgressBar, Spinner
from .tracing import Proxy, Tracer, combine, current_trace
from .wire import Connection, LoupeError, decode_tensor

# TransformerLens's hook names for the canonical sites of block L (Sources/LoupeModels/Sites.swift).
TL_HOOKS = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
            "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "mlp.hidden": "mlp.hook_post",
            "attn.q": "attn.hook_q", "attn.k": "attn.hook_k", "attn.v": "attn.hook_v", "attn.z": "attn.hook_z",
            "attn.pattern": "attn.hook_pattern"}


def _model_name(source):
    """A daemon model name (1-64 of A-Z a-z 0-9 . _ -) for a file, directory or HF id."""
    base = os.path.basename(source.rstrip("/")) if os.path.exists(source) else source
    base = re.sub(r"\.(gguf|safetensors)$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")[:64] or "model"


class Module:
    """One module of the HF tree: children by attribute (`model.transformer.h`), list
    modules by index (`h[3]`, `len(h)`), the `.output` / `.input` sites, its parameters
    (`.weight`, `.bias`) and, inside a trace, its own computation (`model.lm_head(x)`)."""

    def __init__(self, model, tree):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", tree.get("path") or "")
        object.__setattr__(self, "_type", tree.get("type", "Module"))
        object.__setattr__(self, "_children", {c["name"]: Module(model, c) for c in tree.get("children") or []})

    def __getattr__(self, name):
        children = object.__getattribute__(self, "_children")
        if name in children:
            return children[name]
        if name in ("weight", "bias"):
            return self._model._parameter(self._path, name)
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

    def __call__(self, x, *args, **kwargs):
        """The module's own computation on x inside a trace (a `call` node): no hooks fire and
        the pass is unchanged. HF's extra arguments (masks, positions) have no meaning here."""
        if args or kwargs:
            raise TypeError(f"{self._path}(x) takes one value inside a trace; extra arguments are not supported")
        return self._model._call(self, x)

    def next(self, count=1):
        """nnsight's `module.next()`: later reads of this module's values in the generation are
        of its next step (`model.lm_head.next().output`)."""
        trace = current_trace()
        if trace is None or trace.model is not self._model:
            raise RuntimeError(f"{self._path}.next() belongs inside `with model.generate(...)` of this model")
        trace.next_step(self._path, count)
        return self

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
        # What HF's generate pads with: the pad token, else the (first) EOS token, as HF falls back.
        eos = self.eos_token_id[0] if isinstance(self.eos_token_id, list) and self.eos_token_id else self.eos_token_id
        self.pad_token_id = self.info.get("pad", eos if eos is not None else 0)
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
        self._parameters = None
        self.generator = Generator(self)

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

    def _module_paths(self):
        """Every module of the tree that has a site, in tree order (tracer.cache()'s default)."""
        paths, stack = [], [self._root]
        while stack:
            module = stack.pop(0)
            if (module._path, "output") in self._sites or (module._path, "input") in self._sites:
                paths.append(module._path)
            stack[:0] = list(module)
        return paths

    def _call(self, module, x):
        trace = current_trace()
        if trace is None or trace.model is not self:
            raise RuntimeError(f"{module._path}(x) runs inside `with model.trace(...)` of this model; outside a trace "
                               f"Loupe does not run modules (read parameters with {module._path}.weight)")
        shape = tuple(x.shape) if isinstance(x, Proxy) else tuple(np.shape(x))
        site = self._sites.get((module._path, "output"))
        width = site[0][-1] if site and site[0] and site[0][-1] > 0 else (shape[-1] if shape else 1)
        if "Embedding" in module._type:  # ids of any shape -> [..., hidden]
            out = shape + (width,)
        else:
            out = shape[:-1] + (width,)
        return trace.call(module._path, x, out)

    def parameter_shapes(self):
        """The daemon's parameters of this model, `{name: shape}`, in module order."""
        if self._parameters is None:
            listed = self._request("models.weights", {"list": True})["parameters"]
            self._parameters = {p["name"]: tuple(p["shape"]) for p in listed}
        return dict(self._parameters)

    def _parameter(self, path, name):
        """`module.weight`: a `weight` node inside a trace of this model, else its value."""
        full = f"{path}.{name}" if path else name
        parameters = self.parameter_shapes()
        if full not in parameters:
            raise AttributeError(f"{path or 'model'} has no parameter '{name}'")
        trace = current_trace()
        if trace is not None and trace.model is self:
            return trace.weight(path, name, parameters[full])
        reply = self._request("models.weights", {"names": [full], "frames": True})
        return to_user(decode_tensor(reply["weights"][full]))

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

    def generate(self, prompt=None, max_new_tokens=None, do_sample=False, temperature=None, top_k=None, top_p=None,
                 seed=None, stop_tokens=None, eos=None, progress=False, remote=False, **_ignored):
        """`with model.generate(prompt, max_new_tokens=N) as tracer:` a trace that generates
        (PROTOCOL.md `generate`): greedy unless do_sample (then temperature, top_k, top_p and
        seed apply, as HF's). Code in the block applies to the first pass (step 0); inside
        `with tracer.all():` to every step, inside `with tracer.iter[a:b]:` to steps a..b-1.
        `model.generator.output.save()` gives every token id as HF's generate returns them."""
        if max_new_tokens is None:
            raise TypeError("model.generate() needs max_new_tokens=N")
        fields = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample)}
        if do_sample:  # as HF, the sampling settings mean nothing to greedy decoding
            for key, value, kind in (("temperature", temperature, float), ("top_k", top_k, int),
                                     ("top_p", top_p, float), ("seed", seed, int)):
                if value is not None:
                    fields[key] = kind(value)
        if stop_tokens is not None:
            fields["stop_tokens"] = [int(t) for t in stop_tokens]
        if eos is not None:
            fields["eos"] = bool(eos)
        return Tracer(self, prompt, progress=progress, generate=fields)

    def run_with_cache(self, prompt, names_filter=None):
        """TransformerLens's `logits, cache = model.run_with_cache(prompt)`: the logits and
        every canonical site of every block under TransformerLens's names
        (`blocks.L.hook_resid_pre`, `blocks.L.attn.hook_pattern`, `blocks.L.mlp.hook_post`, ...).
        `names_filter`: a name, a list of names, or a function of the name. A list of prompts
        runs as a batch (values concatenated along the batch when their lengths agree)."""
        names = {name: site for name, site in self.hook_names().items() if _selected(name, names_filter)}
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], (int, np.integer)) \
            else [prompt]
        logits, values = [], {name: [] for name in names}
        with self.trace() as tracer:
            for p in prompts:
                with tracer.invoke(p):
                    logits.append(self._canonical("logits").save())
                    for name, site in names.items():
                        values[name].append(self._canonical(site).save())
        return combine([v.value for v in logits]), {name: combine([v.value for v in vs]) for name, vs in values.items()}

    def hook_names(self):
        """TransformerLens's hook names of this model's canonical sites: `{name: site}`, by block
        in the model's firing order."""
        names = {}
        for path, io in self._sites:
            parts = path.split(".", 2)
            if io == "output" and len(parts) == 3 and parts[0] == "blocks" and parts[2] in TL_HOOKS:
                names[f"blocks.{parts[1]}.{TL_HOOKS[parts[2]]}"] = path
        return names

    def _canonical(self, path):
        shape, _ = self._site(path, "output")
        return current_trace().get(path, "output", shape)

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


class Generator:
    """`model.generator`: `.output` inside `with model.generate(...)` is every token id, prompt
    included, [batch, longest], left-padded with the pad id, as HF's generate returns it."""

    def __init__(self, model):
        self._model = model

    @property
    def output(self):
        trace = current_trace()
        if trace is None or trace.model is not self._model:
            raise RuntimeError("model.generator.output belongs inside `with model.generate(...)` of this model")
        return trace.generator_output()


def _selected(name, names_filter):
    if names_filter is None:
        return True
    if isinstance(names_filter, str):
        return name == names_filter
    if callable(names_filter):
        return bool(names_filter(name))
    return name in names_filter


def _token(answer):
    return answer if isinstance(answer, str) else int(answer)


def _prompt(prompt):
    return prompt if isinstance(prompt, str) else [int(t) for t in np.asarray(prompt).reshape(-1)]
