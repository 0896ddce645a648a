"""pytest plugin: diffusers' own tests run with DDIMScheduler / FlowMatchEulerDiscreteScheduler swapped for ours.

Loaded by run.py (``-p swap``) before any test module imports diffusers' classes. Environment:
    GMM_SWAP=stock|torch|philox   stock: diffusers' classes; torch: ours with noise_source="torch" (seed parity with
                                  diffusers); philox: ours with in-kernel Philox noise (the default)
    GMM_STOCHASTIC=1              force the stochastic paths on, in every mode alike: every DDIM step at η = 1 and
                                  every flow scheduler with stochastic_sampling=True
The swapped classes keep diffusers' names (a saved config says "DDIMScheduler", and loading it resolves to the
swapped class through the patched ``diffusers`` attributes), diffusers' signatures, and every config key; the mode's
settings are forced on whatever config a test passes.
"""
import functools
import importlib
import inspect
import os
import pathlib
import sys

MODE = os.environ.get("GMM_SWAP", "stock")
STOCHASTIC = os.environ.get("GMM_STOCHASTIC") == "1"
MODES = ("stock", "torch", "philox")

# (diffusers module, class name, our class's module, our class name)
_TARGETS = [
    ("diffusers.schedulers.scheduling_ddim", "DDIMScheduler", "gmm_triton.schedulers.ddim", "GMMDDIMScheduler"),
    ("diffusers.schedulers.scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler",
     "gmm_triton.schedulers.flow", "GMMFlowMatchScheduler"),
]


_STOCK_MODULE = {name: mod for mod, name, _, _ in _TARGETS}


def _swapped(name: str, base: type, config: dict, force_eta: bool) -> type:
    """A subclass of ``base`` named ``name`` whose construction forces ``config`` and whose step forces η = 1."""

    def __init__(self, *args, **kwargs):
        kwargs.update(config)
        base.__init__(self, *args, **kwargs)

    # diffusers reads the signature (from_config); a saved pipeline records (library of __module__, name), which
    # must resolve back to this class through the patched `diffusers` attributes
    attrs = {"__init__": functools.wraps(base.__init__)(__init__), "__module__": _STOCK_MODULE[name]}
    if force_eta:
        sig = inspect.signature(base.step)

        def step(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            bound.arguments["eta"] = 1.0
            return base.step(*bound.args, **bound.kwargs)

        attrs["step"] = functools.wraps(base.step)(step)
    return type(name, (base,), attrs)


def pytest_configure(config):
    if MODE not in MODES:
        raise ValueError(f"GMM_SWAP must be one of {MODES}, got {MODE!r}")
    # transformers imports torchvision lazily (e.g. when unittest's assertWarns sweeps sys.modules): in every mode
    # alike, the one installed for the integration tests (integrations/vendor.py)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from integrations.vendor import import_torchvision

    import_torchvision()
    if MODE == "stock" and not STOCHASTIC:
        return
    import diffusers
    import diffusers.schedulers

    for mod_name, name, ours_mod, ours_name in _TARGETS:
        mod = importlib.import_module(mod_name)
        stock = getattr(mod, name)
        base = stock if MODE == "stock" else getattr(importlib.import_module(ours_mod), ours_name)
        cfg = {} if MODE == "stock" else {"noise_source": MODE}
        ddim = name == "DDIMScheduler"
        if STOCHASTIC and not ddim:
            cfg["stochastic_sampling"] = True
        cls = _swapped(name, base, cfg, force_eta=STOCHASTIC and ddim)
        for holder in (mod, diffusers.schedulers, diffusers):
            setattr(holder, name, cls)


def pytest_report_header(config):
    return f"gmm-triton swap: GMM_SWAP={MODE} GMM_STOCHASTIC={int(STOCHASTIC)}"
