"""Loupe's Python client: nnsight's tracing surface over the Loupe daemon.

    from loupe import LanguageModel, util, Proxy
    model = LanguageModel("~/.cache/loupe/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    with model.trace("After John and Mary went to the store, Mary gave a bottle of milk to"):
        logits = model.lm_head.output.save()

The daemon (`loupe serve`) must be running; LOUPE_ENDPOINT or `endpoint=` says where.
Saved values are torch tensors when torch is importable, else numpy arrays
(`loupe.config.tensors = "torch" | "numpy"`, or LOUPE_TENSORS, decides otherwise).
`loupe.plot` (needs plotly) draws heatmaps; it is imported on first use."""
from . import util
from .interop import config
from .model import LanguageModel, Module, Sweep, Tokenizer
from .tracing import Cache, CacheEntry, Invoker, Proxy, TraceError, Tracer, cat, stack
from .wire import DaemonUnavailable, LoupeError

try:  # registers the einops backend for proxies when einops is installed
    from . import einops_backend  # noqa: F401
except ImportError:
    pass

__all__ = ["LanguageModel", "Module", "Sweep", "Tokenizer", "Proxy", "Tracer", "Invoker", "TraceError", "Cache",
           "CacheEntry", "LoupeError", "DaemonUnavailable", "config", "util", "stack", "cat", "plot"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "plot":  # plotly is optional: import it only when asked for
        import importlib

        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module 'loupe' has no attribute '{name}'")
