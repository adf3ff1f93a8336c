"""nnsight-style tracing. Inside `with model.trace(...)` every module access and every
operation on a Proxy appends a node of the trace language (Sources/LoupeTrace/TRACE.md);
nothing runs until the outermost block ends, when the whole trace goes to the daemon as one
`trace` request. Saved proxies then hold their values: torch tensors when torch is
importable, numpy arrays otherwise (`loupe.config.tensors` decides; interop.py).

`model.generate(...)` is a trace with a `generate` section: nodes made inside
`tracer.all()` or `tracer.iter[a:b]` (or read through `module.next()`) carry `steps`, and
their saved values are lists, one value per generation step.

Gradients read as nnsight writes them, in both of its forms: `with metric.backward():` and
`h.grad.save()` inside it (nnsight 0.8), or `h.grad.save()` and then `metric.backward()`
(before 0.5); `h.grad = ...` and `h.grad[...] = ...` replace a gradient as it flows. The
daemon computes them during the backward that follows the forward pass.

Each node remembers the line of user code that built it, so a daemon error naming a node
comes back as an exception naming that line."""
import linecache
import sys
import threading
from collections import namedtuple
from types import SimpleNamespace

import numpy as np

from .interop import is_torch_tensor, to_numpy, to_user
from .progress import ProgressBar
from .wire import LoupeError, decode_tensor, encode_tensor

_active = threading.local()

Where = namedtuple("Where", "filename lineno line")


def current_trace():
    return getattr(_active, "trace", None)


def _is_library_frame(frame):
    module = frame.f_globals.get("__name__", "")
    return module.split(".")[0] in ("loupe", "einops")


def _caller():
    """The innermost frame outside this package and einops: the line that built a node."""
    frame = sys._getframe(1)
    while frame is not None and _is_library_frame(frame):
        frame = frame.f_back
    if frame is None:
        return None
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    return Where(filename, lineno, linecache.getline(filename, lineno).strip())


class TraceError(LoupeError):
    """A daemon error about one node of a trace, naming the line of code that built it."""

    def __init__(self, error, where):
        self.where = where
        super().__init__(error.code, error.message, error.field, error.node)
        if where is not None:
            self.args = (f"{where.filename}:{where.lineno}: {where.line}\n    [{error.code}] {error.message}",)


# -- shapes: computed here as numpy would, so einops, len() and slicing know them --------

def _dummy(shape):
    return np.broadcast_to(np.zeros((), np.float32), shape)


def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return tuple(sorted(d % ndim for d in dims))


def _reduced_shape(shape, dim, keepdim):
    axes = _axes(dim, len(shape))
    if keepdim:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _matmul_shape(a, b):
    a1, b1 = len(a) == 1, len(b) == 1
    a2 = (1,) + tuple(a) if a1 else tuple(a)
    b2 = tuple(b) + (1,) if b1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ValueError(f"matmul: shapes {tuple(a)} and {tuple(b)} do not align")
    out = np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if a1:
        out = out[:-2] + out[-1:]
    if b1:
        out = out[:-1]
    return out


def _reshaped(shape, new):
    new = list(new)
    if -1 in new:
        known = int(np.prod([n for n in new if n != -1]))
        new[new.index(-1)] = int(np.prod(shape)) // max(known, 1)
    if int(np.prod(new)) != int(np.prod(shape)):
        raise ValueError(f"cannot reshape {tuple(shape)} to {tuple(new)}")
    return tuple(new)


def _shape_args(args):
    """reshape(2, 3) and reshape((2, 3)) alike."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = args[0]
    return [int(a) for a in args]


def _encode_key(key):
    """A Python index (ints, slices, ..., None, lists) as a trace `key`."""
    items = key if isinstance(key, tuple) else (key,)
    out = []
    for item in items:
        if isinstance(item, Proxy):
            raise TypeError("a proxy cannot be used as an index inside a trace: index with Python integers, "
                            "slices or lists")
        if item is Ellipsis:
            out.append("...")
        elif item is None:
            out.append(None)
        elif isinstance(item, slice):
            out.append({"slice": [_int_or_none(item.start), _int_or_none(item.stop), _int_or_none(item.step)]})
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            out.append(int(item))
        elif isinstance(item, (list, np.ndarray)):
            out.append([int(i) for i in np.asarray(item).reshape(-1)])
        else:
            raise TypeError(f"unsupported index {item!r}: use integers, slices, ..., None or lists of integers")
    return out


def _int_or_none(value):
    return None if value is None else int(value)


def _numpy_key(key):
    """The same key for numpy (lists become arrays so numpy treats them as advanced indices)."""
    items = key if isinstance(key, tuple) else (key,)
    return tuple(np.asarray(i) if isinstance(i, list) else i for i in items)


def _softmax(x, dim, log=False):
    shifted = x - np.max(x, axis=dim, keepdims=True)
    logsum = np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
    return shifted - logsum if log else np.exp(shifted - logsum)


# The element-wise ops: trace op name -> numpy function (for values that already exist).
_UNARY = {"neg": np.negative, "exp": np.exp, "log": np.log, "abs": np.abs, "sqrt": np.sqrt}
_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
           "matmul": np.matmul}
_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


def _concrete(value):
    """The numpy value of an operand outside any trace."""
    if isinstance(value, Proxy):
        return value.numpy()
    return to_numpy(value) if is_torch_tensor(value) else value


class Proxy:
    """A value of a trace. Inside the trace it records operations; after the trace a saved
    proxy holds its value (`.value`: a torch tensor or a numpy array, interop.py; a list of
    them, one per step in `.steps`, for a value saved at several generation steps) and
    computes eagerly on it."""

    __array_ufunc__ = None  # numpy defers `array - proxy` to Proxy.__rsub__

    def __init__(self, trace, node_id, shape):
        self._trace, self._id, self._shape = trace, node_id, tuple(int(n) for n in shape)
        self._value = None
        self._saved = False
        self.steps = None  # the generation steps of a value saved at several
        self._gradient_of = None  # on `x.grad`: x's node, whose gradient a write into this one replaces

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from .torch_functions import torch_function  # imports nothing of torch's itself

        return torch_function(func, args, kwargs or {})

    # -- state ---------------------------------------------------------------------------

    @property
    def _live(self):
        return self._trace.state == "building"

    def _check_live(self, what):
        if self._id is None:
            raise RuntimeError(f"{what}: model.generator.output is filled in from the generation's reply: "
                               f".save() it, and compute with its value after the block")
        if self._trace is not current_trace():
            raise RuntimeError(f"{what}: this proxy belongs to a trace that is not being built "
                               f"(use its saved .value outside its trace)")

    @property
    def value(self):
        if self._live:
            raise ValueError("a proxy has no value while its trace is being built: read .value after the "
                             "`with` block")
        if self._trace.state != "done":
            raise ValueError("the trace this proxy belongs to did not run")
        if not self._saved:
            raise ValueError("this proxy was not saved: call .save() on it inside the trace")
        return self._value

    @property
    def shape(self):
        return self._shape if self._live else tuple(np.shape(self.numpy()))

    @property
    def ndim(self):
        return len(self.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return self.ndim

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a scalar proxy")
        return self.shape[0]

    def __iter__(self):
        if not self._live:
            return iter(self.value)
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        if self._live and self._id is None:
            return "<loupe.Proxy model.generator.output>"
        if self._live:
            node = self._trace.nodes[self._id]
            return f"<loupe.Proxy node {self._id} ({node['op']}) shape {self._shape}>"
        if self._trace.state == "done" and self._saved:
            return repr(self._value)
        return "<loupe.Proxy without a value>"

    def __format__(self, spec):
        return format(self.value, spec) if not self._live else repr(self)

    def __float__(self):
        return float(self.value)

    def __int__(self):
        return int(self.value)

    def __bool__(self):
        if self._live:
            raise TypeError("a proxy has no truth value while its trace is being built")
        return bool(self.value)

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value.astype(dtype) if dtype is not None else value

    def item(self):
        return self.numpy().item()

    def tolist(self):
        return self.numpy().tolist()

    def numpy(self):
        """The value as a numpy array (a list of them for a value saved at several steps)."""
        value = self.value
        return [to_numpy(v) for v in value] if isinstance(value, list) else to_numpy(value)

    # torch-style no-ops, so code written for nnsight's tensors reads unchanged
    def detach(self):
        return self

    def cpu(self):
        return self

    def requires_grad_(self, requires_grad=True):
        return self  # every value of a trace with a backward has a gradient

    def retain_grad(self):
        pass

    # -- gradients -------------------------------------------------------------------------

    @property
    def grad(self):
        """The gradient of the trace's `backward` scalar with respect to this value, where it
        flows (a module's output or input: as the pass leaves the module); same shape. Save
        it to read it after the trace."""
        if not self._live:
            raise ValueError("a gradient is read inside the trace that computes it: `g = h.grad.save()`, "
                             "then g.value after the `with` block")
        self._check_live(".grad")
        gradient = self._trace.node("grad", self._shape, x=self._trace.arg(self))
        gradient._gradient_of = self._id
        return gradient

    @grad.setter
    def grad(self, value):
        """`h.grad = value`: the gradient flowing back through this value becomes `value`
        (broadcast to its shape) before it flows on."""
        self._check_live(".grad = ...")
        np.broadcast_shapes(self._shape, _shape_of(value))  # a mismatch fails here, on the user's line
        self._trace.node("set_grad", None, x=self._trace.arg(self), value=self._trace.arg(value))

    def backward(self, gradient=None, retain_graph=None, **_ignored):
        """`metric.backward()`: the scalar to differentiate, once the forward pass is over. It
        returns a context, so nnsight 0.8's `with metric.backward():` reads the same; the
        gradients may be read inside the block or, as before nnsight 0.5, before the call."""
        self._check_live("backward()")
        if gradient is not None:
            raise TypeError("backward() takes no gradient: differentiate a scalar (reduce first, e.g. .sum())")
        self._trace.node("backward", None, x=self._trace.arg(self))
        return _BackwardBlock()

    # -- recording -----------------------------------------------------------------------

    def save(self):
        """Marks the value for return: after the trace it is in `.value`."""
        if not self._live:
            return self
        if self._id is not None:  # model.generator.output has no node: the reply fills it in
            self._check_live("save()")
        self._trace.save(self)
        return self

    def _apply(self, op, eager, result_shape, **fields):
        """A node `op` of this proxy inside its trace, else `eager(value)` with numpy."""
        if not self._live:
            return to_user(eager(self.numpy()))
        self._check_live(op)
        return self._trace.node(op, result_shape, x=self._trace.arg(self), **fields)

    def __getitem__(self, key):
        if not self._live:
            return self.value[key] if isinstance(self.value, list) else to_user(self.numpy()[_numpy_key(key)])
        shape = _dummy(self._shape)[_numpy_key(key)].shape
        return self._apply("index", None, shape, key=_encode_key(key))

    def __setitem__(self, key, value):
        if not self._live:
            if is_torch_tensor(self.value):
                self.value[key] = to_user(np.asarray(_concrete(value), np.float32), kind="torch")
            else:
                self.value[_numpy_key(key)] = _concrete(value)
            return
        self._check_live("index assignment")
        target = _dummy(self._shape)[_numpy_key(key)].shape
        np.broadcast_shapes(target, _shape_of(value))  # a mismatch fails here, on the user's line
        written = self._trace.node("setindex", self._shape, x=self._trace.arg(self), key=_encode_key(key),
                                   value=self._trace.arg(value))
        self._id = written._id  # later uses depend on the write (its result is x itself)
        if self._gradient_of is not None:  # nnsight's `h.grad[:] = 0`: the written gradient flows on
            self._trace.node("set_grad", None, x={"ref": self._gradient_of}, value={"ref": written._id})

    # arithmetic: a node when either operand is live, numpy otherwise
    def _binary(self, op, other, reverse=False):
        x, y = (other, self) if reverse else (self, other)
        trace = _live_trace(x, y)
        if trace is None:
            return to_user(_BINARY[op](_concrete(x), _concrete(y)))
        shape = (_matmul_shape(_shape_of(x), _shape_of(y)) if op == "matmul"
                 else np.broadcast_shapes(_shape_of(x), _shape_of(y)))
        return trace.node(op, shape, x=trace.arg(x), y=trace.arg(y))

    def __add__(self, other): return self._binary("add", other)
    def __radd__(self, other): return self._binary("add", other, True)
    def __sub__(self, other): return self._binary("sub", other)
    def __rsub__(self, other): return self._binary("sub", other, True)
    def __mul__(self, other): return self._binary("mul", other)
    def __rmul__(self, other): return self._binary("mul", other, True)
    def __truediv__(self, other): return self._binary("div", other)
    def __rtruediv__(self, other): return self._binary("div", other, True)
    def __pow__(self, other): return self._binary("pow", other)
    def __rpow__(self, other): return self._binary("pow", other, True)
    def __matmul__(self, other): return self._binary("matmul", other)
    def __rmatmul__(self, other): return self._binary("matmul", other, True)

    def _unary(self, op):
        return self._apply(op, _UNARY[op], self._shape)

    def __neg__(self): return self._unary("neg")
    def __pos__(self): return self
    def __abs__(self): return self._unary("abs")
    def exp(self): return self._unary("exp")
    def log(self): return self._unary("log")
    def abs(self): return self._unary("abs")
    def sqrt(self): return self._unary("sqrt")

    def _reduce(self, op, dim, keepdim):
        eager = lambda v: _REDUCE[op](v, axis=None if dim is None else _axes(dim, v.ndim), keepdims=keepdim)
        return self._apply(op, eager, _reduced_shape(self._shape, dim, keepdim) if self._live else (),
                           dim=dim, keepdim=keepdim)

    def sum(self, dim=None, keepdim=False): return self._reduce("sum", dim, keepdim)
    def mean(self, dim=None, keepdim=False): return self._reduce("mean", dim, keepdim)
    def max(self, dim=None, keepdim=False): return self._reduce("max", dim, keepdim)
    def min(self, dim=None, keepdim=False): return self._reduce("min", dim, keepdim)

    def _arg(self, op, dim, keepdim):
        numpy_fn = np.argmax if op == "argmax" else np.argmin
        eager = lambda v: numpy_fn(v, axis=dim, keepdims=keepdim)
        shape = _reduced_shape(self._shape, dim, keepdim) if self._live else ()
        return self._apply(op, eager, shape, dim=dim, keepdim=keepdim)

    def argmax(self, dim=None, keepdim=False): return self._arg("argmax", dim, keepdim)
    def argmin(self, dim=None, keepdim=False): return self._arg("argmin", dim, keepdim)

    def softmax(self, dim):
        return self._apply("softmax", lambda v: _softmax(v, dim), self._shape, dim=dim)

    def log_softmax(self, dim):
        return self._apply("log_softmax", lambda v: _softmax(v, dim, log=True), self._shape, dim=dim)

    def reshape(self, *shape):
        shape = _shape_args(shape)
        new = _reshaped(self._shape, shape) if self._live else None
        return self._apply("reshape", lambda v: v.reshape(shape), new, shape=shape)

    def view(self, *shape):
        shape = _shape_args(shape)
        new = _reshaped(self._shape, shape) if self._live else None
        return self._apply("view", lambda v: v.reshape(shape), new, shape=shape)

    def transpose(self, dim0, dim1):
        order = list(range(len(self.shape)))
        order[dim0], order[dim1] = order[dim1], order[dim0]
        return self._apply("transpose", lambda v: np.swapaxes(v, dim0, dim1),
                           tuple(self._shape[i] for i in order) if self._live else None, dim0=dim0, dim1=dim1)

    def permute(self, *dims):
        dims = _shape_args(dims)
        return self._apply("permute", lambda v: np.transpose(v, dims),
                           tuple(self._shape[d] for d in dims) if self._live else None, dims=dims)

    @property
    def T(self):
        """The dims reversed (numpy's and torch's `.T`)."""
        return self.permute(*reversed(range(self.ndim)))

    def split_heads(self, heads):
        """`[..., nh*dh] -> [..., nh, dh]`, einops' 'b s (nh dh) -> b s nh dh'."""
        *lead, width = self.shape
        if width % heads:
            raise ValueError(f"split_heads: {width} does not split into {heads} heads")
        return self._apply("split_heads", lambda v: v.reshape(*lead, heads, width // heads),
                           (*lead, heads, width // heads), heads=int(heads))

    def merge_heads(self):
        """`[..., nh, dh] -> [..., nh*dh]`."""
        *lead, heads, width = self.shape
        return self._apply("merge_heads", lambda v: v.reshape(*lead, heads * width), (*lead, heads * width))

    def clone(self):
        return self._apply("clone", np.copy, self._shape)

    def zeros_like(self):
        return self._apply("zeros_like", np.zeros_like, self._shape)

    def ones_like(self):
        return self._apply("ones_like", np.ones_like, self._shape)


class _BackwardBlock:
    """What `metric.backward()` returns: `with metric.backward():` groups the gradient reads as
    nnsight 0.8 writes them; the daemon orders them itself."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _shape_of(value):
    return value.shape if isinstance(value, Proxy) else np.shape(value)


def _live_trace(*operands):
    for operand in operands:
        if isinstance(operand, Proxy) and operand._live:
            operand._check_live("an operation")
            return operand._trace
    return None


class Invoker:
    """One invocation (one prompt, one batch row): `with tracer.invoke(prompt) as invoker`.
    `invoker.inputs[0]['input_ids']` holds its token ids while the trace is being built."""

    def __init__(self, tracer, tokens):
        self.tracer, self.index = tracer, len(tracer.invokes)
        self.tokens = [int(t) for t in tokens]
        tracer.invokes.append({"tokens": self.tokens})
        ids = np.asarray([self.tokens], dtype=np.int64)
        self.inputs = ({"input_ids": ids, "attention_mask": np.ones_like(ids)},)

    def __enter__(self):
        if self.tracer.active_invoker is not None and self.tracer.active_invoker is not self:
            raise RuntimeError("invocations do not nest: close one `with tracer.invoke(...)` block before "
                               "opening the next")
        self.tracer.active_invoker = self
        return self

    def __exit__(self, *exc):
        self.tracer.active_invoker = None
        return False


class Steps:
    """What `tracer.all()` and `tracer.iter[...]` return: inside its `with` block every node
    made gets `steps` (the generation steps it runs at)."""

    def __init__(self, tracer, steps):
        self.tracer, self.steps = tracer, steps

    def __enter__(self):
        self.tracer._step_stack.append(self.steps)
        return self

    def __exit__(self, *exc):
        self.tracer._step_stack.pop()
        return False

    def __iter__(self):
        """nnsight 0.8's loop form, `for _ in tracer.iter[a:b]:`: the body is recorded once, as
        nodes with these steps (the daemon runs them at each step)."""
        with self:
            yield self


class _Iter:
    """`tracer.iter[a:b]` (steps a to b-1; either may be left out) and `tracer.iter[i]`."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __getitem__(self, key):
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError("tracer.iter[a:b] takes consecutive steps: no slice step")
            steps = "all" if key.start is None and key.stop is None else [_int_or_none(key.start),
                                                                           _int_or_none(key.stop)]
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            steps = int(key)
        else:
            raise TypeError(f"tracer.iter[...] takes a step or a slice of steps, not {key!r}")
        return self.tracer._steps_block(steps, "tracer.iter[...]")


def _first_step(steps):
    """The first step a node with these `steps` runs at."""
    if steps is None or steps == "all":
        return 0
    return steps if isinstance(steps, int) else steps[0] or 0


def _references(value):
    """The node ids a node's fields refer to."""
    if isinstance(value, dict):
        if set(value) == {"ref"}:
            yield value["ref"]
        else:
            for v in value.values():
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


_INHERIT = object()


class CacheEntry:
    """One module's cached values: `.output`, and `.input` when inputs were cached."""

    def __init__(self, output=None, input=None):
        self.output, self.input = output, input

    def __repr__(self):
        return f"CacheEntry(output={_describe(self.output)}, input={_describe(self.input)})"


def _describe(value):
    return "None" if value is None else f"shape {tuple(np.shape(value))}" if not isinstance(value, list) \
        else f"{len(value)} steps"


class Cache(dict):
    """`tracer.cache()`'s values once the trace ran, by module path: `cache["model.layers.0"].output`,
    nnsight's keys with the root's name (`cache["model.model.layers.0"]`) or attributes
    (`cache.model.layers[0].output`)."""

    def __getitem__(self, key):
        if not dict.__contains__(self, key) and key.startswith("model.") and dict.__contains__(self, key[6:]):
            key = key[6:]
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise KeyError(f"{key!r} is not in the cache (the trace may not have ended yet, or the module was not "
                           f"cached)") from None

    def __contains__(self, key):
        return dict.__contains__(self, key) or (isinstance(key, str) and key.startswith("model.")
                                                and dict.__contains__(self, key[6:]))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return _CachePath(self, name)


class _CachePath:
    def __init__(self, cache, path):
        self._cache, self._path = cache, path

    def __getattr__(self, name):
        if name in ("output", "input"):
            return getattr(self._cache[self._path], name)
        return _CachePath(self._cache, f"{self._path}.{name}")

    def __getitem__(self, index):
        return _CachePath(self._cache, f"{self._path}.{index}")


def combine(values):
    """One value from each invocation's: itself for one, else concatenated along the batch
    when the shapes allow it (nnsight's batch), else the list."""
    if len(values) == 1:
        return values[0]
    if any(isinstance(v, list) for v in values):
        return values
    arrays = [to_numpy(v) for v in values]
    if len({a.shape[1:] for a in arrays}) == 1:
        return to_user(np.concatenate(arrays, axis=0))
    return values


class Tracer:
    """`with model.trace(prompt) as tracer:` (one invocation) or `with model.trace() as
    tracer:` with `tracer.invoke(prompt)` blocks inside. Sends the trace when it ends.
    With `generate` (a request's `generate` map: model.generate) the trace generates."""

    def __init__(self, model, prompt=None, progress=False, generate=None):
        self.model, self.progress, self.generate = model, progress, generate
        self.nodes, self.where, self.invokes, self.saves = [], {}, [], {}
        self.state = "building"
        self.active_invoker = self.invoker = None
        self.reply = self.generation = None
        self.iter = _Iter(self)
        self._prompt = prompt
        self._step_stack, self._module_steps, self._caches = [], {}, []

    def __enter__(self):
        if current_trace() is not None:
            raise RuntimeError("traces do not nest: end one `with model.trace(...)` block before starting another")
        _active.trace = self
        if self._prompt is not None:
            self.invoke(self._prompt).__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        _active.trace = None
        self.active_invoker = None
        if exc_type is not None:
            self.state = "failed"
            return False
        try:
            self._run()
        except BaseException:
            self.state = "failed"
            raise
        return False

    def invoke(self, prompt):
        """A new invocation of `prompt` (a string, or token ids)."""
        if current_trace() is not self:
            raise RuntimeError("tracer.invoke() belongs inside its `with model.trace()` block")
        self.invoker = Invoker(self, self.model.tokenizer.ids_for(prompt))
        return self.invoker

    # -- generation steps --------------------------------------------------------------

    def all(self):
        """`with tracer.all():` the nodes made inside run at every generation step."""
        return self._steps_block("all", "tracer.all()")

    def _steps_block(self, steps, what):
        if self.generate is None:
            raise RuntimeError(f"{what} belongs inside `with model.generate(...)`: a trace has one step")
        return Steps(self, steps)

    def next_step(self, path, count=1):
        """`module.next()`: later reads of the module's values are of its next generation step."""
        if self.generate is None:
            raise RuntimeError(f"{path or 'model'}.next() belongs inside `with model.generate(...)`")
        self._module_steps[path] = self._module_steps.get(path, 0) + count

    def _site_steps(self, path):
        """The steps of a read or write of a module's value: the enclosing all()/iter block's,
        else the module's own after next(), else none given (step 0)."""
        if self._step_stack:
            return self._step_stack[-1]
        return self._module_steps.get(path) or None

    def _inherited_steps(self, fields):
        """A node's steps from its block, else from the values it uses: a per-step value makes it
        per-step, else it runs at the latest single step among them."""
        if self._step_stack:
            return self._step_stack[-1]
        steps = [self.nodes[r].get("steps") for r in _references(fields)]
        ranges = [s for s in steps if s is not None and not isinstance(s, int)]
        if ranges:
            return ranges[0]
        return max([s for s in steps if isinstance(s, int)], default=None) or None

    # -- building nodes ----------------------------------------------------------------

    def node(self, op, result_shape, steps=_INHERIT, **fields):
        """Appends a node; returns its proxy, or None for a node without a value (result_shape None)."""
        node_id = len(self.nodes)
        if steps is _INHERIT:
            steps = self._inherited_steps(fields)
        node = {"id": node_id, "op": op, **fields}
        if steps is not None and steps != 0:
            node["steps"] = steps
        self.nodes.append(node)
        self.where[node_id] = _caller()
        return Proxy(self, node_id, result_shape) if result_shape is not None else None

    def arg(self, value):
        """A node field: a reference to a live proxy, else a literal."""
        if isinstance(value, Proxy):
            if value._live:
                value._check_live("an operation")
                return {"ref": value._id}
            value = value.numpy()
        if is_torch_tensor(value):
            value = to_numpy(value)
        if isinstance(value, (bool, np.bool_, float, np.floating)):
            return float(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        return encode_tensor(value)

    def _current_invoker(self, what):
        if self.active_invoker is None:
            raise RuntimeError(f"{what} needs an invocation: use it inside `with tracer.invoke(prompt):`")
        return self.active_invoker

    def get(self, site, io, shape, item=None):
        invoker = self._current_invoker(f"{site}.{io}")
        return self._get(site, io, shape, invoker, self._site_steps(site), item)

    def _get(self, site, io, shape, invoker, steps, item=None):
        fields = {"site": site, "io": io, "invoke": invoker.index}
        if item is not None:
            fields["item"] = item
        return self.node("get", self._concrete_shape(shape, invoker, _first_step(steps)), steps=steps, **fields)

    def set(self, site, io, shape, value, item=None):
        invoker = self._current_invoker(f"{site}.{io} = ...")
        steps = self._site_steps(site)
        np.broadcast_shapes(self._concrete_shape(shape, invoker, _first_step(steps)), _shape_of(value))
        fields = {"site": site, "io": io, "invoke": invoker.index, "value": self.arg(value)}
        if item is not None:
            fields["item"] = item
        self.node("set", None, steps=_INHERIT if steps is None else steps, **fields)

    @staticmethod
    def _concrete_shape(shape, invoker, step=0):
        """A site's symbolic shape (-1 batch, -2 sequence) for one invocation at one generation
        step: from step 1 on, a pass runs one new position, and keys (an attention pattern's
        second sequence dim) span the prompt and the tokens generated so far."""
        out, seen_sequence = [], False
        for n in shape:
            if n == -1:
                n = 1
            elif n == -2:
                n = len(invoker.tokens) + step if step == 0 or seen_sequence else 1
                seen_sequence = True
            out.append(n)
        return tuple(out)

    def call(self, path, x, shape):
        """`model.lm_head(x)`: the module's own computation on x, a `call` node."""
        return self.node("call", shape, module=path, x=self.arg(x))

    def weight(self, path, name, shape):
        """`module.weight` inside the trace: a read-only `weight` node (runs once, before step 0)."""
        return self.node("weight", shape, steps=None, module=path, name=name)

    def generator_output(self):
        """`model.generator.output`: every token id, prompt included, filled in from the reply."""
        if self.generate is None:
            raise RuntimeError("model.generator.output belongs inside `with model.generate(...)`")
        return Proxy(self, None, ())

    def cache(self, modules=None, include_inputs=False, include_output=True):
        """nnsight's `tracer.cache()`: every module's output (and input, with include_inputs)
        saved, for every invocation, at the steps of the enclosing block. Returns a Cache,
        filled in when the trace has run: `cache["model.layers.3"].output`."""
        paths = self.model._module_paths() if modules is None else [
            m if isinstance(m, str) else m._path for m in modules]
        ios = [io for io, wanted in (("output", include_output), ("input", include_inputs)) if wanted]
        cache = Cache()
        self._caches.append((cache, paths, ios, self._step_stack[-1] if self._step_stack else None))
        return cache

    def _expand_caches(self):
        """Each cache() as get + save nodes, now that every invocation is known."""
        expanded = []
        for cache, paths, ios, steps in self._caches:
            proxies = {}
            for path in paths:
                for io in ios:
                    if (path, io) not in self.model._sites:
                        continue
                    shape, is_tuple = self.model._sites[(path, io)]
                    for invoker in self.invokers:
                        value = self._get(path, io, shape, invoker, steps, item=0 if is_tuple else None)
                        self.save(value)  # the trace is no longer current: save directly
                        value._saved = True
                        proxies.setdefault((path, io), []).append(value)
            expanded.append((cache, proxies))
        return expanded

    def save(self, proxy):
        name = f"v{len(self.nodes)}"
        if proxy._id is None:
            self.saves["generator.output"] = proxy
            return
        self.node("save", None, steps=self.nodes[proxy._id].get("steps"), x={"ref": proxy._id}, name=name)
        self.saves[name] = proxy

    # -- running ---------------------------------------------------------------------

    def _run(self):
        if not self.invokes:
            raise RuntimeError("the trace has no invocation: give model.trace() a prompt or use tracer.invoke()")
        caches = self._expand_caches()
        bar = ProgressBar("generate" if self.generate else "trace", enabled=self.progress or False)

        def on_reply(reply):
            if reply.get("status") == "progress":
                bar.update(reply["done"], reply["total"])

        fields = {"invokes": self.invokes, "nodes": self.nodes}
        if self.generate is not None:
            fields["generate"] = self.generate
        try:
            self.reply = self.model._job("trace", fields, on_reply)
        except LoupeError as error:
            if error.node is not None:
                raise TraceError(error, self.where.get(error.node)) from None
            raise
        finally:
            bar.close()
        saved, saved_steps = self.reply.get("saved", {}), self.reply.get("saved_steps") or {}
        self.generation = self.reply.get("generation")
        for name, proxy in self.saves.items():
            if proxy._id is None:
                proxy._value = to_user(self._generated_ids())
            elif name in saved_steps:
                proxy._value = [to_user(decode_tensor(v)) for v in saved[name]]
                proxy.steps = list(saved_steps[name])
            else:
                proxy._value = to_user(decode_tensor(saved[name]))
            proxy._saved = True
        self.state = "done"
        for cache, proxies in caches:
            for (path, io), values in proxies.items():
                entry = cache.setdefault(path, CacheEntry())
                setattr(entry, io, combine([v.value for v in values]))

    @property
    def invokers(self):
        return [SimpleNamespace(index=i, tokens=invoke["tokens"]) for i, invoke in enumerate(self.invokes)]

    def _generated_ids(self):
        """HF generate's output: every row's prompt left-padded to the longest, then its new
        tokens, then the pad id after it stopped, [batch, longest prompt + steps]."""
        generation, pad = self.generation, self.model.tokenizer.pad_token_id
        prompts = [len(out) - len(new) for out, new in zip(generation["output"], generation["tokens"])]
        width, steps = max(prompts), generation["steps"]
        rows = [[pad] * (width - p) + list(out) + [pad] * (steps - len(new))
                for p, out, new in zip(prompts, generation["output"], generation["tokens"])]
        return np.asarray(rows, dtype=np.int64)


def stack(tensors, dim=0):
    """torch.stack for proxies (einops uses it for lists)."""
    trace = _live_trace(*tensors)
    if trace is None:
        return to_user(np.stack([_concrete(t) for t in tensors], axis=dim))
    shapes = {tuple(_shape_of(t)) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: tensors of different shapes {sorted(shapes)}")
    shape = list(shapes.pop())
    shape.insert(dim % (len(shape) + 1), len(tensors))
    return trace.node("stack", shape, xs=[trace.arg(t) for t in tensors], dim=dim)


def cat(tensors, dim=0):
    """torch.cat for proxies."""
    trace = _live_trace(*tensors)
    if trace is None:
        return to_user(np.concatenate([_concrete(t) for t in tensors], axis=dim))
    shapes = [list(_shape_of(t)) for t in tensors]
    shape = shapes[0][:]
    shape[dim] = sum(s[dim] for s in shapes)
    return trace.node("cat", shape, xs=[trace.arg(t) for t in tensors], dim=dim)


__all__ = ["Proxy", "Tracer", "Invoker", "TraceError", "Cache", "CacheEntry", "stack", "cat", "current_trace"]
