"""diffusers-compatible schedulers whose step is gmm_triton's fused op."""
from .ddim import GMMDDIMScheduler

__all__ = ["GMMDDIMScheduler"]
