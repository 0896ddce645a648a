"""Fixtures shared by the op's test files (the root conftest.py sets up the interpreter and the seed)."""
import pytest

from gmm_triton import ddim_table


@pytest.fixture(scope="module")
def table():
    """The [1000, 8] coefficient table of a 10-step scaled-linear DDIM schedule (CPU)."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear")
    s.set_timesteps(10)
    return ddim_table(s.alphas_cumprod, float(s.final_alpha_cumprod), 1000, s.timesteps)
