"""``gmm-triton evidence run`` (``make evidence``): train the two UNets and the classifier, sample every cell of the
grid with the package's schedulers through the real UNet, score it, and write the committed results.

The grid (:func:`grid`; what issue 21 asks, sized to the budget in ``evidence/__init__.py``):

- DDIM vs DDIM-GMM ORTHO-VUB at 5, 10, 20 steps, η ∈ {0, 1}, s ∈ {0.1, 0.3, 1, 3} (ε model, GMMDDIMScheduler;
  s = 3 puts s/√D per pixel near the paper's best s = 10 on its 12288-element latents);
- RAND, ORTHO (diagonal variance) and ORTHO-VUB* (one offset table for all steps) at 10 steps, η = 1, s = 0.3;
- RFIM vs RFIM-GMM ORTHO-VUB (s = 0.3) at 5 and 10 steps, η ∈ {0, 0.5} (flow model, GMMFlowMatchScheduler);

each for every seed, n samples per cell and seed. Within a seed every sampler starts from the same initial noise
(``gmm_triton.initial_noise``, keyed by (seed, sample index)) and seeds its step noise alike; the mixture's offset
table is drawn from ``gmm_seed = seed``, so the spread over seeds includes the offsets' randomness. Sampling goes
through ``generate.sample_range`` (forwards of a fixed batch shape, so a sample does not depend on its batch).

A cell is one job for a pool of ``workers`` processes of one thread each; its result is written to
``OUT/cells/KEY.json`` and a rerun skips it when its settings match (the run resumes). The floor rows score real
training images (for seed i, the i-th of four disjoint 1000-image parts of the training split) the same way.
Written to ``RESULTS`` (committed): ``evidence.csv`` (one row per cell and seed), ``evidence.json`` (commit,
settings, the trainings' and classifier's records, the run's wall and CPU seconds), and through :mod:`.report` the
plot, the sample grids and ``table.md``.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..distill.loop import single_threaded, write_json
from .data import mnist5k, to_model_space, to_pixels
from .classifier import train_classifier
from .train import DEFAULT_ITERATIONS, train_unet

CSV_FIELDS = ("family", "sampler", "steps", "eta", "scale", "seed", "n", "fid", "precision", "recall", "class_tv",
              "images_per_cpu_s", "cpu_seconds")
FLOOR = "real (training images)"
GRID_IMAGES = 64


@dataclass(frozen=True)
class Settings:
    """Everything that defines a run (recorded in evidence.json; a cell's result is reused only under equal ones)."""

    n: int = 1000
    seeds: tuple = (0, 1, 2)
    train_iterations: int = DEFAULT_ITERATIONS
    quick: bool = False
    batch: int = 250          # samples per model forward (generate's model batch) and per scheduler step
    steps: tuple = (5, 10, 20)
    flow_steps: tuple = (5, 10)
    flow_etas: tuple = (0.0, 0.5)
    scales: tuple = (0.1, 0.3, 1.0, 3.0)
    variant_steps: int = 10   # RAND / ORTHO / VUB* cells, and the sample grids
    variant_eta: float = 1.0
    variant_scale: float = 0.3
    classifier: tuple = ()    # overrides of classifier.DEFAULTS, as (key, value) pairs
    train: tuple = ()         # overrides of train.DEFAULTS, as (key, value) pairs


FULL = Settings()
QUICK = Settings(n=32, seeds=(0,), train_iterations=30, quick=True, batch=16, steps=(3,), flow_steps=(3,),
                 flow_etas=(0.5,), scales=(0.3,), variant_steps=3, classifier=(("epochs", 1),),
                 train=(("warmup", 5), ("ema_decay", 0.9)))


@dataclass(frozen=True)
class Cell:
    sampler: str              # "DDIM", "DDIM-GMM-ORTHO-VUB", ..., "RFIM", "RFIM-GMM-ORTHO-VUB"
    family: str               # "ddim" (ε model) or "flow" (flow model)
    steps: int
    eta: float
    scale: float | None       # the mixture's s; None for DDIM / RFIM

    def key(self, seed: int) -> str:
        s = "none" if self.scale is None else f"{self.scale:g}"
        return f"{self.sampler}_steps{self.steps}_eta{self.eta:g}_s{s}_seed{seed}".replace("*", "star")


def samplers() -> dict:
    """name -> demo.Sampler (the paper's variants mapped to config keys, as lab.sampling defines them)."""
    from ..sampling import ddim_samplers, flow_samplers

    return {s.name: s for s in ddim_samplers() + flow_samplers()}


def grid(settings: Settings) -> list[Cell]:
    """The cells of the module docstring, for ``settings``."""
    cells = []
    for steps in settings.steps:
        for eta in (0.0, 1.0):
            cells.append(Cell("DDIM", "ddim", steps, eta, None))
            cells += [Cell("DDIM-GMM-ORTHO-VUB", "ddim", steps, eta, s) for s in settings.scales]
    v = dict(steps=settings.variant_steps, eta=settings.variant_eta, scale=settings.variant_scale)
    cells += [Cell(name, "ddim", **v) for name in ("DDIM-GMM-RAND", "DDIM-GMM-ORTHO", "DDIM-GMM-ORTHO-VUB*")]
    for steps in settings.flow_steps:
        for eta in settings.flow_etas:
            cells += [Cell("RFIM", "flow", steps, eta, None),
                      Cell("RFIM-GMM-ORTHO-VUB", "flow", steps, eta, settings.variant_scale)]
    return cells


# -- one cell in a worker -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _pipeline(path: str):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    return pipe.unet.eval().requires_grad_(False), dict(pipe.scheduler.config)


@functools.lru_cache(maxsize=1)
def _scorer(classifier_dir: str, seed: int, overrides: tuple):
    net, _ = train_classifier(classifier_dir, seed=seed, progress=False, **dict(overrides))
    xh, yh = mnist5k("held_out")
    fh, _ = net.features_and_labels(xh)
    return net, fh, yh


def scheduler_for(cell: Cell, pipeline_config: dict, seed: int):
    """Our scheduler for ``cell``, built from the saved pipeline's scheduler config (what a user of the pipeline
    gets), with the sampler's config keys, s and ``gmm_seed = seed``."""
    from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler

    sampler = samplers()[cell.sampler]
    opts = dict(sampler.options)
    if sampler.is_mixture:
        opts.update(gmm_scale=cell.scale, gmm_seed=seed)
    if cell.family == "flow":
        return GMMFlowMatchScheduler.from_config(pipeline_config, eta=cell.eta, **opts)
    return GMMDDIMScheduler.from_config(pipeline_config, **opts)


def score(images: torch.Tensor, scorer) -> dict:
    """Metrics of model-space images against the held-out digits, after rounding them to 8-bit pixels."""
    from .metrics import evaluate

    net, fh, yh = scorer
    f, labels = net.features_and_labels(to_model_space(to_pixels(images).numpy()))
    return evaluate(f, labels, fh, yh)


@single_threaded
def run_cell(cell: Cell, seed: int, *, pipeline: str, n: int, batch: int, classifier_dir: str, classifier: tuple,
             classifier_seed: int, grid_path: str | None) -> dict:
    """Samples and scores one (cell, seed); saves the first GRID_IMAGES samples (uint8) to ``grid_path`` if given."""
    from ..generate import sample_range

    c0, t0 = time.process_time(), time.perf_counter()
    model, pipe_cfg = _pipeline(pipeline)
    scorer = _scorer(classifier_dir, classifier_seed, classifier)
    sched = scheduler_for(cell, pipe_cfg, seed)
    shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    c1 = time.process_time()
    x = torch.cat([sample_range(model, sched, cell.family, first=i, n=min(batch, n - i), shape=shape, seed=seed,
                                steps=cell.steps, eta=cell.eta, model_batch=batch, device=torch.device("cpu"))
                   for i in range(0, n, batch)])
    sampling_cpu = time.process_time() - c1
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{cell.key(seed)}: the sampler produced non-finite values")
    row = score(x, scorer)
    if grid_path:
        np.save(grid_path, to_pixels(x[:GRID_IMAGES]).numpy())
    return dict(**row, n=n, images_per_cpu_s=n / sampling_cpu, cpu_seconds=time.process_time() - c0,
                seconds=time.perf_counter() - t0)


def _job(kind: str, kwargs: dict):
    """One job in a worker process (one thread); returns (kind, kwargs, result)."""
    if kind == "train":
        return kind, kwargs, train_unet(**kwargs)
    if kind == "classifier":
        _, record = train_classifier(**kwargs)
        return kind, kwargs, record
    cell, seed, path, opts = kwargs["cell"], kwargs["seed"], kwargs["path"], kwargs["opts"]
    result = run_cell(cell, seed, **opts)
    write_json({"settings": kwargs["settings"], "cell": asdict(cell), "seed": seed, "commit": kwargs["commit"],
                **result}, path)
    return kind, kwargs, result


# -- the run ----------------------------------------------------------------------------------------------------
def floor_rows(settings: Settings, scorer) -> list[dict]:
    """The real-data rows: for seed i, the i-th of four disjoint n-image parts (a fixed permutation) of the
    training split, scored like samples."""
    x, _ = mnist5k("train")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    parts = len(x) // settings.n
    rows = []
    for i, seed in enumerate(settings.seeds):
        if i >= parts:
            raise ValueError(f"the floor needs {len(settings.seeds)} disjoint parts of {settings.n} training images; "
                             f"the training split holds {parts}")
        row = score(x[order[i * settings.n:(i + 1) * settings.n]], scorer)
        rows.append(dict(family="real", sampler=FLOOR, steps="", eta="", scale="", seed=seed, n=settings.n, **row,
                         images_per_cpu_s="", cpu_seconds=""))
    return rows


def run_evidence(out: str, results: str, settings: Settings = FULL, *, workers: int = 2, progress: bool = True,
                 readme: str | None = None) -> dict:
    """The whole evidence run (module docstring); returns the evidence.json record."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    from ..generate import _commit
    from . import report

    t0 = time.perf_counter()
    commit = _commit()  # the code that runs (taken now: the tree may change while a long run goes on)
    settings_json = json.loads(json.dumps(asdict(settings)))
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    classifier_dir = os.path.join(out, "classifier")
    model_dirs = {obj: os.path.join(out, f"unet_{obj}") for obj in ("epsilon", "flow")}
    train_jobs = [("train", dict(out=model_dirs[obj], objective=obj, iterations=settings.train_iterations, seed=0,
                                 quick=settings.quick, progress=False, **dict(settings.train)))
                  for obj in ("epsilon", "flow")]
    classifier_job = ("classifier", dict(out=classifier_dir, seed=0, progress=False, **dict(settings.classifier)))
    records = {}

    def cell_jobs():
        jobs = []
        for cell in grid(settings):
            for seed in settings.seeds:
                path = os.path.join(out, "cells", cell.key(seed) + ".json")
                grid_path = (os.path.join(out, "grids", cell.key(seed) + ".npy")
                             if cell.steps == settings.variant_steps and seed == settings.seeds[0] else None)
                opts = dict(pipeline=os.path.join(model_dirs["epsilon" if cell.family == "ddim" else "flow"],
                                                  "pipeline"),
                            n=settings.n, batch=settings.batch, classifier_dir=classifier_dir,
                            classifier=settings.classifier, classifier_seed=0, grid_path=grid_path)
                if _cached(path, settings_json) and (grid_path is None or os.path.exists(grid_path)):
                    continue
                jobs.append(("cell", dict(cell=cell, seed=seed, path=path, opts=opts, settings=settings_json,
                                          commit=commit)))
        return jobs

    n_cells = len(grid(settings)) * len(settings.seeds)
    executor = (ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) if workers > 1
                else _InProcess())
    with executor as pool, \
            tqdm(total=3 + n_cells, desc=f"evidence ({workers} workers)", disable=not progress) as bar:
        pending = {pool.submit(_job, *job) for job in (*train_jobs, classifier_job)}
        prepared = 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                kind, kwargs, result = f.result()  # re-raises a worker's error
                bar.update(1)
                if kind == "train":
                    with open(os.path.join(kwargs["out"], "train.json")) as fh:
                        records[f"train_{kwargs['objective']}"] = {k: v for k, v in json.load(fh).items()
                                                                   if k != "log"}
                elif kind == "classifier":
                    records["classifier"] = result
                else:
                    bar.set_postfix_str(kwargs["cell"].key(kwargs["seed"]), refresh=False)
                if kind != "cell":
                    prepared += 1
                    if prepared == 3:  # both models and the classifier are on disk: every cell can run
                        jobs = cell_jobs()
                        bar.update(n_cells - len(jobs))
                        pending |= {pool.submit(_job, *job) for job in jobs}
    scorer = _scorer(classifier_dir, 0, settings.classifier)
    rows = floor_rows(settings, scorer)
    cell_commits = set()
    for cell in grid(settings):
        for seed in settings.seeds:
            with open(os.path.join(out, "cells", cell.key(seed) + ".json")) as fh:
                r = json.load(fh)
            cell_commits.add(r.get("commit"))
            rows.append(dict(family=cell.family, sampler=cell.sampler, steps=cell.steps, eta=cell.eta,
                             scale="" if cell.scale is None else cell.scale, seed=seed,
                             **{k: r[k] for k in ("n", "fid", "precision", "recall", "class_tv", "images_per_cpu_s",
                                                  "cpu_seconds")}))
    self_usage, child_usage = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    record = dict(commit=commit, torch=torch.__version__, settings=settings_json, workers=workers,
                  cpu_count=os.cpu_count(), wall_seconds=round(time.perf_counter() - t0, 1),
                  cpu_seconds=round(sum(u.ru_utime + u.ru_stime for u in (self_usage, child_usage)), 1),
                  cell_cpu_seconds=round(sum(r["cpu_seconds"] for r in rows if r["cpu_seconds"] != ""), 1),
                  cell_commits=sorted(cell_commits, key=str),  # more than one when a resumed run changed code
                  **records)
    os.makedirs(results, exist_ok=True)
    write_csv(rows, os.path.join(results, "evidence.csv"))
    write_json(record, os.path.join(results, "evidence.json"))
    seed0 = settings.seeds[0]
    panels = [(c.key(seed0), f"{c.sampler}\nη={c.eta:g}" + ("" if c.scale is None else f" s={c.scale:g}"))
              for c in grid(settings) if c.steps == settings.variant_steps and c.scale in (None, settings.variant_scale)]
    report.write_grids(os.path.join(out, "grids"), results, panels,
                       f"{settings.variant_steps} steps, seed {seed0}: the same initial noise in every panel")
    report.write_all(results, readme=readme)
    return record


class _InProcess:
    """The executor interface of ``workers=1``: each job runs in this process when submitted (no process start-up
    and no second import of torch and diffusers; what the tests' quick run uses)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # re-raised by f.result(), as a pool would
            f.set_exception(e)
        return f


def _cached(path: str, settings_json: dict) -> bool:
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("settings") == settings_json


def write_csv(rows: list[dict], path: str) -> None:
    """Rows with CSV_FIELDS, floats rounded to 6 significant digits, through a temporary file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})
    os.replace(tmp, path)
