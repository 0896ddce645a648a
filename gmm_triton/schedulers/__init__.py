"""diffusers-compatible schedulers whose step is gmm_triton's fused op.

The classes load on first use (PEP 562): ``gmm_triton.schedulers.common`` (the mixture options and cache that the
k-diffusion samplers share) imports without diffusers.
"""
import importlib

_EXPORTS = {"GMMDDIMScheduler": "ddim", "GMMFlowMatchScheduler": "flow"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
