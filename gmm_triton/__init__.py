"""gmm-triton: fused Triton sampling kernels for diffusion and flow models.

    from gmm_triton import GMMDDIMScheduler
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config)            # drop-in DDIM
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm")  # DDIM-GMM

The op, for custom pipelines: :func:`ddim_step` (``torch.ops.gmm_triton.ddim_step`` underneath).
gDDIM for critically-damped Langevin and blurring diffusions: :class:`CLD`, :class:`GDDIMCLDScheduler`,
:class:`BlurProcess`, :class:`GDDIMBlurScheduler` (``gmm_triton.gddim``).
k-diffusion-convention samplers (ComfyUI, A1111, Forge): :func:`sample_ddim`, :func:`sample_ddim_gmm`,
:func:`sample_rfim`, :func:`sample_rfim_gmm` (``gmm_triton.samplers``).

The names below load on first use (PEP 562), so ``import gmm_triton`` and the command line's argument checks do
not pay for torch, triton and diffusers until something needs them.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ddim_table": "coefficients", "flow_table": "coefficients",
    "MixtureTensors": "mixture", "build_mixture": "mixture",
    "cpu_backend": "backends",
    "ddim_step": "ops",
    "draw_seed": "rng", "initial_noise": "rng", "philox_normal": "rng",
    "GMMDDIMScheduler": "schedulers", "GMMFlowMatchScheduler": "schedulers",
    "sample_ddim": "samplers", "sample_ddim_gmm": "samplers", "sample_rfim": "samplers", "sample_rfim_gmm": "samplers",
    "CLD": "gddim", "BlurProcess": "gddim", "GDDIMCLDScheduler": "gddim", "GDDIMBlurScheduler": "gddim",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gmm_triton' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
