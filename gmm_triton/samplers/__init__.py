"""Samplers in other libraries' conventions whose step is gmm_triton's fused op (k-diffusion's: k_diffusion.py)."""
from .k_diffusion import rf_ancestral_eta, sample_ddim, sample_ddim_gmm, sample_rfim, sample_rfim_gmm

__all__ = ["sample_ddim", "sample_ddim_gmm", "sample_rfim", "sample_rfim_gmm", "rf_ancestral_eta"]
