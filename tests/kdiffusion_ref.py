"""The installed k-diffusion's ``k_diffusion/sampling.py``, loaded alone (the reference the parity tests compare with).

``import k_diffusion`` imports its whole training stack (accelerate, clean-fid, kornia, wandb, torchvision, ...), which
sampling.py does not use: requirements-nodeps.txt installs k-diffusion without its dependencies, and this loader runs
sampling.py as a submodule of a private package. sampling.py's one use of ``k_diffusion.utils`` on the samplers' path
is ``append_dims`` (in ``to_d``); the private package's ``utils`` provides it (x[..., None, ...] up to n dims).
"""
import importlib.util
import pathlib
import sys
import types

_PKG = "_k_diffusion_sampling_only"


def _append_dims(x, target_dims):
    return x.reshape(x.shape + (1,) * (target_dims - x.ndim))


def load():
    """The k_diffusion.sampling module of the installed k-diffusion (cached in sys.modules)."""
    name = f"{_PKG}.sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")  # finds the package without running its __init__
    if spec is None:
        raise ImportError("k-diffusion is not installed (requirements-nodeps.txt: k-diffusion==0.1.1.post1)")
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(root)]
    utils = types.ModuleType(f"{_PKG}.utils")
    utils.append_dims = _append_dims
    pkg.utils = utils
    sys.modules[_PKG], sys.modules[utils.__name__] = pkg, utils
    sspec = importlib.util.spec_from_file_location(name, root / "sampling.py")
    mod = importlib.util.module_from_spec(sspec)
    sys.modules[name] = mod
    sspec.loader.exec_module(mod)
    return mod
