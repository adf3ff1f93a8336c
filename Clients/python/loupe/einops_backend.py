"""An einops backend for proxies, so `einops.rearrange(z, 'b s (nh dh) -> b s nh dh', nh=9)`
and back record trace nodes: splitting the last axis is the trace's `split_heads`, merging
the last two `merge_heads` (both views, so an assignment into the result writes through),
any other reshape `reshape`, an axis reordering `permute`. einops finds backends among the
subclasses of its AbstractBackend whose `framework_name` is an imported module."""
from einops._backends import AbstractBackend

from .tracing import Proxy, cat, stack


class LoupeBackend(AbstractBackend):
    framework_name = "loupe"

    def is_appropriate_type(self, tensor):
        return isinstance(tensor, Proxy)

    def shape(self, x):
        return x.shape

    def reshape(self, x, shape):
        shape = tuple(int(n) for n in shape)
        old = tuple(x.shape)
        if len(shape) == len(old) + 1 and shape[:-2] == old[:-1] and shape[-2] * shape[-1] == old[-1]:
            return x.split_heads(shape[-2])
        if len(shape) == len(old) - 1 and shape[:-1] == old[:-2] and shape[-1] == old[-2] * old[-1]:
            return x.merge_heads()
        if shape == old:
            return x
        return x.reshape(*shape)

    def transpose(self, x, axes):
        return x.permute(*axes)

    def stack_on_zeroth_dimension(self, tensors):
        return stack(list(tensors))

    def concat(self, tensors, axis):
        return cat(list(tensors), axis)

    def add_axis(self, x, new_position):
        return x[(slice(None),) * new_position + (None,)]

    def is_float_type(self, x):
        return True  # every trace value is float32
