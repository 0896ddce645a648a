"""diffusers-compatible schedulers whose step is gmm_triton's fused op."""
from .ddim import GMMDDIMScheduler
from .flow import GMMFlowMatchScheduler

__all__ = ["GMMDDIMScheduler", "GMMFlowMatchScheduler"]
