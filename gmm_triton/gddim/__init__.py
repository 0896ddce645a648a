"""gDDIM (Zhang, Tao, Chen, arXiv 2206.05564) for non-isotropic linear diffusions: critically-damped Langevin
(CLD) and blurring (BDM) processes, their float64 coefficient engine, fused steps and schedulers."""
from .blur import BlurProcess
from .cld import CLD
from .engine import VP
from .schedulers import GDDIMBlurScheduler, GDDIMCLDScheduler

__all__ = ["CLD", "BlurProcess", "VP", "GDDIMCLDScheduler", "GDDIMBlurScheduler"]
