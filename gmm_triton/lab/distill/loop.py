"""The training loop every run here shares: a budget, a progress bar, periodic evaluation, and checkpoints that
make a run resumable and deterministic.

A run's numbers are a function of its seed and of the number of iterations that ran: all of its randomness comes
from one ``torch.Generator`` whose state is checkpointed with the modules and optimizers, so a run interrupted
at iteration j and resumed gives the same numbers as one that was not (one thread per process; the tests check
it bit for bit), and evaluations draw nothing from it. The budget is either

- ``iterations``: exactly that many iterations, or
- ``minutes``: wall-clock minutes of the loop itself (its iterations and periodic evaluations, summed over the
  sittings of a resumed run; not the set-up and first evaluation before it, the checkpoint writes, nor the final
  evaluation after it). The loop stops at the first iteration boundary past the budget; the iterations that ran
  are recorded (``iteration`` in the returned state, ``iterations`` in the results), and rerunning with that
  iteration budget reproduces the numbers. :func:`iterations_for` turns minutes into an *estimate* of the
  iterations (from a calibrated rate), used only to space the evaluations.

Ctrl-C (SIGINT) is deferred to the end of the current iteration, which is then checkpointed before the
``KeyboardInterrupt`` propagates; checkpoints are written atomically and loaded without unpickling code
(``files.save_torch`` / ``files.load_torch``).
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Callable

import torch

from ..errors import UsageError
from ..files import load_torch, save_torch
from ..files import write_json  # noqa: F401  (the distillation modules' JSON writer)


def iterations_for(minutes: float, iterations_per_second: float) -> int:
    """The iterations that ``minutes`` are estimated to hold at a calibrated rate (iterations per CPU second of one
    thread): the spacing of the evaluations of a run with a wall-clock budget, not its length."""
    if minutes is None:
        raise ValueError("give a budget: minutes (or iterations)")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a positive number, got {minutes}")
    return max(1, round(minutes * 60 * iterations_per_second))


def budget(iterations: int | None, minutes: float | None) -> dict:
    """The budget of a run as its results record it: ``{"iterations": N}`` (which wins) or ``{"minutes": M}``."""
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
        return {"iterations": iterations}
    if minutes is None:
        raise ValueError("give a budget: minutes (or iterations)")
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a positive number, got {minutes}")
    return {"minutes": float(minutes)}


def single_threaded(fn):
    """Runs ``fn`` with one torch thread (restored afterwards): a run's numbers then do not depend on the machine's
    core count (summation order), and parallel runs do not compete for cores."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def cached_result(path: str, config: dict) -> dict | None:
    """The JSON result at ``path`` if it exists and was made with ``config`` (else None: run it; a damaged file is
    run again, its result rewritten)."""
    if os.path.exists(path):
        try:
            with open(path) as f:
                result = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(result, dict) and result.get("config") == config:
            return result
    return None


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (plots are written to files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class EMA:
    """Exponential moving average of a module's parameters: ema ← decay · ema + (1 − decay) · θ."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p, 1 - self.decay)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)


class _DeferredInterrupt:
    """Within the block, SIGINT sets a flag instead of raising (main thread only; elsewhere it is a no-op)."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def run_loop(path: str, *, config: dict, objects: dict, generator: torch.Generator, iterations: int | None = None,
             minutes: float | None = None, step: Callable[[int], dict], evaluate: Callable[[], dict] | None = None,
             eval_every: int = 0, checkpoint_every: int = 500, desc: str = "training", progress: bool = True) -> dict:
    """Runs ``step(i)`` for i = done, done + 1, … from the checkpoint at ``path`` (if any) until the budget is spent
    and returns ``{"iteration", "seconds", "cpu_seconds", "loop_seconds", "log"}``.

    iterations / minutes: the budget (module docstring); ``iterations`` wins when both are given.
    config: what defines the run (a resumed checkpoint must match it; the budget is not part of it).
    objects: name -> anything with ``state_dict``/``load_state_dict`` (modules, optimizers, :class:`EMA`).
    generator: the run's only source of randomness; its state is checkpointed.
    step: one iteration; returns scalars to show on the progress bar.
    evaluate: returns a dict of metrics, recorded in the log with the iteration and the training seconds (wall
    and CPU time of ``step`` calls only) at iteration 0, every ``eval_every`` iterations and at the end.
    """
    limit = budget(iterations, minutes)
    state = {"iteration": 0, "seconds": 0.0, "cpu_seconds": 0.0, "loop_seconds": 0.0, "log": []}
    if os.path.exists(path):
        saved = load_torch(path, "checkpoint", ("config", "objects", "generator", "iteration", "log"))
        diff = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
        if diff:
            raise UsageError(f"the checkpoint {path} was made with a different configuration "
                             f"(key: (saved, requested)) {diff}; use another output folder")
        for name, obj in objects.items():
            obj.load_state_dict(saved["objects"][name])
        generator.set_state(saved["generator"])
        state = {k: saved.get(k, v) for k, v in state.items()}

    def spent(extra: float = 0.0) -> bool:
        """Whether the budget is spent (``extra``: seconds of the current iteration not yet added)."""
        if "iterations" in limit:
            return state["iteration"] >= limit["iterations"]
        return state["iteration"] >= 1 and state["loop_seconds"] + extra >= 60 * limit["minutes"]

    def save():
        save_torch({"config": config, "objects": {n: o.state_dict() for n, o in objects.items()},
                    "generator": generator.get_state(), **state}, path)

    def record():
        if evaluate is not None:
            state["log"].append({"iteration": state["iteration"], "seconds": round(state["seconds"], 3),
                                 "cpu_seconds": round(state["cpu_seconds"], 3), **evaluate()})

    if not state["log"] and evaluate is not None:
        record()
    if spent():
        return state
    from tqdm.auto import tqdm

    total = limit.get("iterations")
    bar = tqdm(total=total, initial=state["iteration"], disable=not progress, mininterval=1.0,
               desc=desc if total is not None else f"{desc} ({limit['minutes']:g} wall minutes)")
    with _DeferredInterrupt() as interrupt:
        while True:  # the budget is not spent here: checked above, then at the end of every iteration
            w0 = time.perf_counter()
            c0 = time.process_time()
            shown = step(state["iteration"])
            state["seconds"] += time.perf_counter() - w0
            state["cpu_seconds"] += time.process_time() - c0
            state["iteration"] += 1
            bar.update(1)
            done = spent(time.perf_counter() - w0)
            if eval_every and (state["iteration"] % eval_every == 0 or done):
                record()
                shown = {**shown, **{k: v for k, v in state["log"][-1].items()
                                     if k not in ("iteration", "seconds", "cpu_seconds")}}
            if shown and (state["iteration"] % 50 == 0 or done):
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if isinstance(v, (int, float))},
                                refresh=False)
            state["loop_seconds"] += time.perf_counter() - w0
            if done or interrupt.requested or state["iteration"] % checkpoint_every == 0:
                save()
            if interrupt.requested:
                bar.close()
                raise KeyboardInterrupt(f"interrupted at iteration {state['iteration']}; checkpoint saved to {path}")
            if done:
                break
    bar.close()
    return state
