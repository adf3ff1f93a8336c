"""torch functions on proxies (Proxy.__torch_function__): torch.softmax(h, -1),
F.log_softmax, torch.stack/cat, argmax, topk, sum, mean, matmul, einsum, the arithmetic
dunders of a tensor meeting a proxy (`vec + h`), each as trace ops. Any other torch
function raises, naming it. After the trace, saved proxies are plain values again and the
function runs in torch on them."""
import re
from collections import namedtuple

import numpy as np

from .interop import is_torch_tensor, to_numpy, to_user
from .tracing import Proxy, _live_trace, cat, stack

TopK = namedtuple("TopK", "values indices")  # torch.topk's return, field for field

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def function_name(func):
    """How the user wrote it: torch.softmax, torch.nn.functional.gelu, torch.Tensor.add."""
    name = getattr(func, "__name__", repr(func))
    owner = getattr(func, "__qualname__", name).split(".")[0]
    module = getattr(func, "__module__", None) or ""
    if "TensorBase" in owner or owner == "Tensor":
        return f"torch.Tensor.{name}"
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"torch.nn.functional.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name


def _argument(args, kwargs, index, name, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _no_dtype(kwargs, name):
    dtype = kwargs.get("dtype")
    if dtype is not None and str(dtype) != "torch.float32":
        raise TypeError(f"{name}: trace values are float32; dtype={dtype} is not available in a trace")


def _softmax(name, log):
    def run(args, kwargs):
        dim = _argument(args, kwargs, 1, "dim")
        if dim is None:
            raise TypeError(f"{name}: give dim (the implicit dim of old torch is not guessed)")
        _no_dtype(kwargs, name)
        x = args[0]
        return x.log_softmax(dim) if log else x.softmax(dim)
    return run


def _reduce(method):
    def run(args, kwargs):
        _no_dtype(kwargs, method)
        return getattr(args[0], method)(_argument(args, kwargs, 1, "dim"), _argument(args, kwargs, 2, "keepdim", False))
    return run


def _argmax(args, kwargs):
    return args[0].argmax(_argument(args, kwargs, 1, "dim"), _argument(args, kwargs, 2, "keepdim", False))


def _topk(args, kwargs):
    x, k = args[0], int(_argument(args, kwargs, 1, "k"))
    dim, largest = _argument(args, kwargs, 2, "dim", -1), _argument(args, kwargs, 3, "largest", True)
    trace = x._trace
    shape = list(x.shape)
    shape[dim] = k
    fields = dict(x=trace.arg(x), k=k, dim=dim, largest=bool(largest))
    return TopK(trace.node("topk", shape, **fields), trace.node("topk", shape, indices=True, **fields))


def _sequence(function):
    def run(args, kwargs):
        tensors = args[0] if args else kwargs["tensors"]
        return function(list(tensors), _argument(args, kwargs, 1, "dim", kwargs.get("axis", 0)))
    return run


def _binary(op, swap=False):
    def run(args, kwargs):
        x, y = args[0], _argument(args, kwargs, 1, "other")
        if swap:
            x, y = y, x
        if isinstance(x, Proxy):
            return x._binary(op, y)
        return y._binary(op, x, reverse=True)
    return run


def _unary(op):
    return lambda args, kwargs: args[0]._unary(op)


# -- einsum: lowered to permutes, sums, reshapes and one matmul per pair of operands ---------

def _parse_einsum(equation, shapes):
    """Index letters per operand and of the output, with '...' given letters of its own."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(shapes):
        raise ValueError(f"einsum '{equation}': {len(inputs)} operands in the equation, {len(shapes)} given")
    used = set(re.sub(r"[^A-Za-z]", "", equation))
    spare = [c for c in _LETTERS if c not in used]
    ellipsis_dims = max([len(s) - len(t.replace("...", "")) for t, s in zip(inputs, shapes) if "..." in t], default=0)
    broadcast = "".join(spare[:ellipsis_dims])

    def expand(term, ndim):
        if "..." not in term:
            return term
        own = ndim - len(term.replace("...", ""))
        return term.replace("...", broadcast[ellipsis_dims - own:])

    inputs = [expand(t, len(s)) for t, s in zip(inputs, shapes)]
    for term, shape in zip(inputs, shapes):
        if len(term) != len(shape):
            raise ValueError(f"einsum '{equation}': '{term}' names {len(term)} dims of a value of shape {tuple(shape)}")
        if len(set(term)) != len(term):
            raise ValueError(f"einsum '{equation}': a repeated index within one operand (a diagonal) cannot be "
                             f"expressed in a trace")
    if arrow:
        output = rhs.replace("...", broadcast)
    else:  # implicit output: the broadcast dims, then the indices seen once, alphabetically
        counts = {}
        for term in inputs:
            for c in term:
                counts[c] = counts.get(c, 0) + 1
        output = broadcast + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in broadcast))
    return inputs, output


def _permute(x, term, order):
    if term == order:
        return x
    return x.permute(*[term.index(c) for c in order])


def _sum_away(x, term, keep):
    """Sums the indices of x that no later operand and not the output needs."""
    gone = [i for i, c in enumerate(term) if c not in keep]
    if not gone:
        return x, term
    return x.sum(dim=gone), "".join(c for c in term if c in keep)


def _contract(a, ta, b, tb, keep, sizes):
    """a (indices ta) times b (indices tb), summed over the indices in both that `keep` lacks."""
    a, ta = _sum_away(a, ta, keep | set(tb))
    b, tb = _sum_away(b, tb, keep | set(ta))
    batch = [c for c in ta if c in tb and c in keep]
    summed = [c for c in ta if c in tb and c not in keep]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    for c in batch + summed:
        if sizes[c][0] != sizes[c][1]:
            raise ValueError(f"einsum: index '{c}' has sizes {sizes[c][0]} and {sizes[c][1]}")
    size = {c: sizes[c][0] for c in sizes}

    def prod(cs):
        return int(np.prod([size[c] for c in cs])) if cs else 1

    a = _permute(a, ta, "".join(batch + left + summed))
    b = _permute(b, tb, "".join(batch + summed + right))
    lead = [size[c] for c in batch]
    a = _reshape(a, lead + [prod(left), prod(summed)])
    b = _reshape(b, lead + [prod(summed), prod(right)])
    out = _reshape(a @ b, lead + [size[c] for c in left + right])
    return out, "".join(batch + left + right)


def _reshape(x, shape):
    return x if tuple(x.shape) == tuple(shape) else x.reshape(*shape)


def einsum(equation, *operands):
    """torch.einsum for proxies, where the trace language can say it: permutes, sums over
    indices, and products summed over shared indices (matmuls), no diagonals."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    trace = _live_trace(*operands)
    if trace is None:
        return to_user(np.einsum(equation, *[np.asarray(_numpy(o), np.float32) for o in operands]))
    values = [o if isinstance(o, Proxy) else trace.node("constant", np.shape(_numpy(o)), value=trace.arg(o))
              for o in operands]
    terms, output = _parse_einsum(equation, [v.shape for v in values])
    sizes = {}
    for term, value in zip(terms, values):
        for c, n in zip(term, value.shape):
            sizes.setdefault(c, []).append(n)
    sizes = {c: (ns + ns)[:2] for c, ns in sizes.items()}
    x, tx = values[0], terms[0]
    for i in range(1, len(values)):
        needed = set(output).union(*[set(t) for t in terms[i + 1:]])
        x, tx = _contract(x, tx, values[i], terms[i], needed, sizes)
    x, tx = _sum_away(x, tx, set(output))
    return _permute(x, tx, output)


def _einsum(args, kwargs):
    return einsum(args[0], *args[1:])


def _numpy(value):
    if isinstance(value, Proxy):
        return value.numpy()
    return to_numpy(value) if is_torch_tensor(value) else np.asarray(value)


_FUNCTIONS = {
    "softmax": _softmax("softmax", False), "log_softmax": _softmax("log_softmax", True),
    "sum": _reduce("sum"), "mean": _reduce("mean"), "argmax": _argmax, "topk": _topk,
    "stack": _sequence(stack), "cat": _sequence(cat), "concat": _sequence(cat), "concatenate": _sequence(cat),
    "matmul": _binary("matmul"), "einsum": _einsum,
    "add": _binary("add"), "sub": _binary("sub"), "subtract": _binary("sub"), "mul": _binary("mul"),
    "multiply": _binary("mul"), "div": _binary("div"), "divide": _binary("div"), "true_divide": _binary("div"),
    "pow": _binary("pow"), "neg": _unary("neg"), "exp": _unary("exp"), "log": _unary("log"), "abs": _unary("abs"),
    "sqrt": _unary("sqrt"),
}
for _op in ("add", "sub", "mul", "matmul", "pow"):
    _FUNCTIONS[f"__{_op}__"] = _binary(_op)
    _FUNCTIONS[f"__r{_op}__"] = _binary(_op, swap=True)
_FUNCTIONS["__truediv__"], _FUNCTIONS["__rtruediv__"] = _binary("div"), _binary("div", swap=True)
_FUNCTIONS["__neg__"] = _unary("neg")


def _concrete_args(value):
    """Saved proxies inside (nested) arguments as torch tensors, for torch to compute on."""
    if isinstance(value, Proxy):
        return to_user(value.numpy(), kind="torch")
    if isinstance(value, (list, tuple)):
        return type(value)(_concrete_args(v) for v in value)
    return value


def _proxies(value):
    if isinstance(value, Proxy):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _proxies(v)


def torch_function(func, args, kwargs):
    """What a torch function called with a proxy among its arguments does."""
    proxies = list(_proxies(list(args) + list(kwargs.values())))
    if not any(p._live for p in proxies):  # after the trace: torch on the saved values
        return func(*_concrete_args(args), **{k: _concrete_args(v) for k, v in kwargs.items()})
    name = getattr(func, "__name__", None)
    handler = _FUNCTIONS.get(name)
    if handler is None:
        raise TypeError(f"{function_name(func)} has no trace op: inside a trace a proxy takes torch.softmax, "
                        f"log_softmax, stack, cat, argmax, topk, sum, mean, matmul, einsum and arithmetic")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("_stacklevel", "out") or v is not None}
    if kwargs.get("out") is not None:
        raise TypeError(f"{function_name(func)}: out= cannot write into a trace value")
    kwargs.pop("out", None)
    kwargs.pop("_stacklevel", None)
    return handler(args, kwargs)


__all__ = ["torch_function", "einsum", "TopK", "function_name"]
