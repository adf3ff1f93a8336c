"""nnsight-style tracing. Inside `with model.trace(...)` every module access and every
operation on a Proxy appends a node of the trace language (Sources/LoupeTrace/TRACE.md);
nothing runs until the outermost block ends, when the whole trace goes to the daemon as one
`trace` request. Saved proxies then hold their values as numpy arrays.

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

import numpy as np

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
    return value.value if isinstance(value, Proxy) else value


class Proxy:
    """A value of a trace. Inside the trace it records operations; after the trace a saved
    proxy holds its value (`.value`, a numpy array) and computes eagerly with numpy."""

    __array_ufunc__ = None  # numpy defers `array - proxy` to Proxy.__rsub__

    def __init__(self, trace, node_id, shape):
        self._trace, self._id, self._shape = trace, node_id, tuple(int(n) for n in shape)
        self._value = None
        self._saved = False
        self._gradient_of = None  # on `x.grad`: x's node, whose gradient a write into this one replaces

    # -- state ---------------------------------------------------------------------------

    @property
    def _live(self):
        return self._trace.state == "building"

    def _check_live(self, what):
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
        return self._shape if self._live else tuple(np.shape(self.value))

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
        value = np.asarray(self.value)
        return value.astype(dtype) if dtype is not None else value

    def item(self):
        return self.value.item()

    def tolist(self):
        return self.value.tolist()

    def numpy(self):
        return self.value

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
        self._check_live("save()")
        self._trace.save(self)
        return self

    def _apply(self, op, eager, shape, **fields):
        """A node `op` of this proxy inside its trace, else `eager(value)` with numpy."""
        if not self._live:
            return eager(self.value)
        self._check_live(op)
        return self._trace.node(op, shape, x=self._trace.arg(self), **fields)

    def __getitem__(self, key):
        if not self._live:
            return self.value[_numpy_key(key)]
        shape = _dummy(self._shape)[_numpy_key(key)].shape
        return self._apply("index", None, shape, key=_encode_key(key))

    def __setitem__(self, key, value):
        if not self._live:
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
            return _BINARY[op](_concrete(x), _concrete(y))
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


class Tracer:
    """`with model.trace(prompt) as tracer:` (one invocation) or `with model.trace() as
    tracer:` with `tracer.invoke(prompt)` blocks inside. Sends the trace when it ends."""

    def __init__(self, model, prompt=None, progress=False):
        self.model, self.progress = model, progress
        self.nodes, self.where, self.invokes, self.saves = [], {}, [], {}
        self.state = "building"
        self.active_invoker = self.invoker = None
        self.reply = None
        self._prompt = prompt

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

    # -- building nodes ----------------------------------------------------------------

    def node(self, op, shape, **fields):
        node_id = len(self.nodes)
        self.nodes.append({"id": node_id, "op": op, **fields})
        self.where[node_id] = _caller()
        return Proxy(self, node_id, shape) if shape is not None else None

    def arg(self, value):
        """A node field: a reference to a live proxy, else a literal."""
        if isinstance(value, Proxy):
            if value._live:
                value._check_live("an operation")
                return {"ref": value._id}
            value = value.value
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
        fields = {"site": site, "io": io, "invoke": invoker.index}
        if item is not None:
            fields["item"] = item
        return self.node("get", self._concrete_shape(shape, invoker), **fields)

    def set(self, site, io, shape, value, item=None):
        invoker = self._current_invoker(f"{site}.{io} = ...")
        np.broadcast_shapes(self._concrete_shape(shape, invoker), _shape_of(value))
        fields = {"site": site, "io": io, "invoke": invoker.index, "value": self.arg(value)}
        if item is not None:
            fields["item"] = item
        self.node("set", None, **fields)

    @staticmethod
    def _concrete_shape(shape, invoker):
        """A site's symbolic shape (-1 batch, -2 sequence) for one invocation."""
        return tuple(1 if n == -1 else len(invoker.tokens) if n == -2 else n for n in shape)

    def save(self, proxy):
        name = f"v{len(self.nodes)}"
        self.node("save", None, x={"ref": proxy._id}, name=name)
        self.saves[name] = proxy

    # -- running ---------------------------------------------------------------------

    def _run(self):
        if not self.invokes:
            raise RuntimeError("the trace has no invocation: give model.trace() a prompt or use tracer.invoke()")
        bar = ProgressBar("trace", enabled=self.progress or False)

        def on_reply(reply):
            if reply.get("status") == "progress":
                bar.update(reply["done"], reply["total"])

        try:
            self.reply = self.model._job("trace", {"invokes": self.invokes, "nodes": self.nodes}, on_reply)
        except LoupeError as error:
            if error.node is not None:
                raise TraceError(error, self.where.get(error.node)) from None
            raise
        finally:
            bar.close()
        saved = self.reply.get("saved", {})
        for name, proxy in self.saves.items():
            proxy._value = decode_tensor(saved[name])
            proxy._saved = True
        self.state = "done"


def stack(tensors, dim=0):
    """torch.stack for proxies (einops uses it for lists)."""
    trace = _live_trace(*tensors)
    if trace is None:
        return np.stack([_concrete(t) for t in tensors], axis=dim)
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
        return np.concatenate([_concrete(t) for t in tensors], axis=dim)
    shapes = [list(_shape_of(t)) for t in tensors]
    shape = shapes[0][:]
    shape[dim] = sum(s[dim] for s in shapes)
    return trace.node("cat", shape, xs=[trace.arg(t) for t in tensors], dim=dim)


__all__ = ["Proxy", "Tracer", "Invoker", "TraceError", "stack", "cat", "current_trace"]
