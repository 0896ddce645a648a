"""gmm-triton: fused Triton sampling kernels for diffusion and flow models.

    from gmm_triton import GMMDDIMScheduler
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config)            # drop-in DDIM
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm")  # DDIM-GMM

The op, for custom pipelines: :func:`ddim_step` (``torch.ops.gmm_triton.ddim_step`` underneath).
gDDIM for critically-damped Langevin and blurring diffusions: :class:`CLD`, :class:`GDDIMCLDScheduler`,
:class:`BlurProcess`, :class:`GDDIMBlurScheduler` (``gmm_triton.gddim``).
"""
__version__ = "0.1.0"

from .coefficients import ddim_table, flow_table
from .gddim import CLD, BlurProcess, GDDIMBlurScheduler, GDDIMCLDScheduler
from .mixture import MixtureTensors, build_mixture
from .ops import cpu_backend, ddim_step, draw_seed, philox_normal
from .schedulers import GMMDDIMScheduler, GMMFlowMatchScheduler

__all__ = [
    "__version__", "ddim_step", "draw_seed", "philox_normal", "cpu_backend", "ddim_table", "flow_table",
    "MixtureTensors", "build_mixture", "GMMDDIMScheduler",
    "GMMFlowMatchScheduler", "CLD", "BlurProcess", "GDDIMCLDScheduler", "GDDIMBlurScheduler",
]
