"""Which array type saved values come back as, and torch interop. torch is optional and
imported only when a value is converted or a torch function meets a proxy.

`loupe.config.tensors` is "torch" or "numpy"; unset (None), the environment variable
LOUPE_TENSORS decides, and without it values are torch tensors when torch is importable,
numpy arrays otherwise. Conversions go through the buffer protocol, not numpy's C API, so a
torch built against another numpy major version (Debian's, say) still converts."""
import importlib.util
import os
import sys

import numpy as np

_CHOICES = ("torch", "numpy")


class Config:
    """Client settings: `loupe.config.tensors = "torch" | "numpy"` (None: LOUPE_TENSORS, else auto)."""

    def __init__(self):
        self._tensors = None

    @property
    def tensors(self):
        if self._tensors is not None:
            return self._tensors
        choice = os.environ.get("LOUPE_TENSORS") or None
        if choice is None:
            return "torch" if torch_available() else "numpy"
        if choice not in _CHOICES:
            raise ValueError(f"LOUPE_TENSORS is 'torch' or 'numpy', not {choice!r}")
        return choice

    @tensors.setter
    def tensors(self, value):
        if value not in (None, *_CHOICES):
            raise ValueError(f"loupe.config.tensors is 'torch', 'numpy' or None, not {value!r}")
        if value == "torch" and not torch_available():
            raise ImportError("loupe.config.tensors = 'torch' needs torch installed")
        self._tensors = value


config = Config()


def torch_available():
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def torch_module():
    """torch, imported on first use."""
    import torch

    return torch


def loaded_torch():
    """torch when some code already imported it, else None (so no check imports it)."""
    return sys.modules.get("torch")


def is_torch_tensor(value):
    torch = loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)


_TORCH_DTYPES = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32", "bool": "bool"}


def to_user(array, kind=None):
    """A numpy array as the configured type (`kind` overrides it): a torch tensor or the array."""
    if (kind or config.tensors) != "torch":
        return array
    torch = torch_module()
    array = np.asarray(array)  # (not ascontiguousarray: it makes a scalar 1-D); tobytes() is C order
    dtype = getattr(torch, _TORCH_DTYPES.get(array.dtype.name, "float32"))
    if array.size == 0:
        return torch.empty(array.shape, dtype=dtype)
    if array.dtype.name not in _TORCH_DTYPES:
        array = array.astype(np.float32)
    # bytearray: a writable buffer, so torch owns a copy it may write into
    return torch.frombuffer(bytearray(array.tobytes()), dtype=dtype).reshape(array.shape)


def to_numpy(value):
    """A torch tensor (or anything array-like) as a numpy array."""
    if is_torch_tensor(value):
        value = value.detach().cpu()
        try:
            return value.numpy()
        except (RuntimeError, TypeError):  # a torch without numpy support for this numpy
            return np.asarray(value.tolist(), dtype=str(value.dtype).replace("torch.", ""))
    return np.asarray(value)
