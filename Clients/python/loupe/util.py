"""nnsight's `util.apply`, for code written against nnsight."""


def apply(data, fn, cls, inplace=False):
    """Applies `fn` to every instance of `cls` in nested lists, tuples and dicts, keeping the
    nesting: `util.apply(results, lambda x: x.value.item(), Proxy)`."""
    if isinstance(data, cls):
        return fn(data)
    if isinstance(data, list):
        if inplace:
            data[:] = [apply(d, fn, cls, inplace) for d in data]
            return data
        return [apply(d, fn, cls, inplace) for d in data]
    if isinstance(data, tuple):
        return tuple(apply(d, fn, cls, inplace) for d in data)
    if isinstance(data, dict):
        if inplace:
            for key in data:
                data[key] = apply(data[key], fn, cls, inplace)
            return data
        return {key: apply(value, fn, cls, inplace) for key, value in data.items()}
    return data
