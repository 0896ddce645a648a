"""pytest plugin: diffusers' own tests run with DDIMScheduler / FlowMatchEulerDiscreteScheduler swapped for ours.

Loaded by run.py (``-p swap``) before any test module imports diffusers' classes. Environment:
    GMM_SWAP=stock|torch|philox   stock: diffusers' classes; torch: ours with noise_source="torch" (seed parity with
                                  diffusers); philox: ours with in-kernel Philox noise (the default)
    GMM_STOCHASTIC=1              force the stochastic paths on, in every mode alike: every DDIM step at η = 1 and
                                  every flow scheduler with stochastic_sampling=True
    GMM_SWAP_LOG=PATH             write there (JSON) every test's node id (keyed by its junit id), the tests that
                                  stepped through a swapped scheduler (a test that passes without reaching ``step``
                                  says nothing about ours) and, for each failure (collection errors included), why:
                                  the hub repositories it asked for offline, else the exception's type and first line
The swapped classes keep diffusers' names (a saved config says "DDIMScheduler", and loading it resolves to the
swapped class through the patched ``diffusers`` attributes), diffusers' signatures, and every config key; the mode's
settings are forced on whatever config a test passes.
"""
import functools
import importlib
import inspect
import json
import os
import pathlib
import sys

import pytest

MODE = os.environ.get("GMM_SWAP", "stock")
STOCHASTIC = os.environ.get("GMM_STOCHASTIC") == "1"
MODES = ("stock", "torch", "philox")
LOG = os.environ.get("GMM_SWAP_LOG")
_NODEIDS: dict = {}  # junit id -> pytest node id (run.py reruns tests by node id)
_STEPPED: set = set()  # junit ids of the tests that called a swapped scheduler's step
_FAILED: dict = {}  # junit id -> {"hub": [repo ids]} or {"error": "Type: first line"}
_current = {"stepped": False}

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
    sig = inspect.signature(base.step)

    def step(self, *args, **kwargs):
        _current["stepped"] = True
        if not force_eta:
            return base.step(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.arguments["eta"] = 1.0
        return base.step(*bound.args, **bound.kwargs)

    attrs["step"] = functools.wraps(base.step)(step)
    return type(name, (base,), attrs)


def _junit_id(nodeid: str) -> str:
    """The id run.py reads from pytest's junit XML (``classname::name``) for a node id."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = names[0].replace("/", ".").removesuffix(".py")
    names[-1] += bracket + params
    return f"{'.'.join(names[:-1])}::{names[-1]}"


_HUB_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
_REPO_LOCALS = ("repo_id", "path_or_repo_id", "pretrained_model_name_or_path")


def _cause(exc: BaseException) -> dict:
    """Why a test failed: {"hub": repo ids} when it reached the hub offline, else {"error": "Type: first line"}.

    The repo ids are read from the frames of the exception chain that huggingface_hub, transformers and diffusers
    raise through (their ``repo_id`` / ``path_or_repo_id`` / ``pretrained_model_name_or_path`` locals): offline,
    transformers' message names no repository.
    """
    repos, hub, seen, e = [], False, set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        hub |= type(e).__name__ in _HUB_ERRORS or "couldn't connect to 'https://huggingface.co'" in str(e)
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_globals.get("__name__", "").split(".")[0] in ("huggingface_hub", "transformers", "diffusers"):
                for k in _REPO_LOCALS:
                    v = frame.f_locals.get(k)
                    if isinstance(v, str) and v.count("/") == 1 and not os.path.exists(v) and v not in repos:
                        repos.append(v)
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    if hub and repos:
        return {"hub": repos}
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return {"error": f"{type(exc).__name__}: {first}"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    tid = _junit_id(item.nodeid)
    _NODEIDS[tid] = item.nodeid
    if report.failed and call.excinfo is not None and tid not in _FAILED:
        _FAILED[tid] = _cause(call.excinfo.value)
    if _current["stepped"]:
        _STEPPED.add(tid)


def pytest_runtest_logstart(nodeid, location):
    _current["stepped"] = False


def pytest_collectreport(report):
    if report.failed:  # junit records a module that fails to import as one error case named after the module
        tid = "::" + report.nodeid.replace("/", ".").removesuffix(".py")
        lines = [ln for ln in str(report.longrepr).splitlines() if ln.startswith("E ")]
        _NODEIDS[tid] = report.nodeid
        _FAILED[tid] = {"error": lines[-1][1:].strip()[:200] if lines else "collection error"}


def pytest_sessionfinish(session):
    if LOG:
        pathlib.Path(LOG).write_text(json.dumps({"nodeids": _NODEIDS, "stepped": sorted(_STEPPED), "failed": _FAILED}))


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
