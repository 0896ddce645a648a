"""``gmm-triton train`` and ``gmm-triton distill mm | emd | all``: argument parsing and the acceptance run.

``distill all`` (``make distill``) trains the learned digits model once (cached in ``OUT/model``), then runs every
configuration of the tables over the training seeds in ``--workers`` processes of one thread each: moment matching
in both variants (alternating, instant) at k = 8, 4, 2 and 1 with the oracle and the learned teacher, EMD and VSD
on the 2-D and 8-D testbeds, plus the teachers' many-step DDIM. Each run lives in its own folder (checkpoint,
``result.json``, plot) and is skipped when its result exists, so an interrupted acceptance run resumes where it stopped. ``report.py`` then writes
the tables, the plots and the target checks (``OUT/summary.json``, ``OUT/tables.md``).

Ctrl-C stops ``distill all`` within about one training iteration: no queued run starts, each running one
checkpoints at the end of its iteration (or, outside a training loop, stops at once), every file is written
atomically, and the command exits with status 130; a rerun resumes.
"""
from __future__ import annotations

import math
import os

from ..cli_args import positive_int, seeds, value

DEFAULT_MODEL_DIR = "gmm_triton_out/model"
# the acceptance budgets, all in iterations (the tables are a function of the seeds): the learned model's default
# (teacher.DEFAULT_ITERATIONS), the students' (2 CPU minutes of one thread at each variant's calibrated rate,
# mm.ITERATIONS_PER_SECOND: equal compute for both variants), and EMD's and VSD's (equal for both: the comparison is
# per iteration). The students alone are 48 runs of ~2 CPU minutes: ~50 wall minutes on 2 quiet cores (an estimate
# from the calibrated rates, not a timed run)
ACCEPTANCE = dict(mm_iterations={"alternating": 2760, "instant": 1080}, emd_iterations={"2d4": 800, "8d8": 3000},
                  steps=(8, 4, 2, 1), variants=("alternating", "instant"), seeds=(0, 1, 2))


positive_float = value(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
run_seed = value(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")


def _budget(p, minutes):
    p.add_argument("--minutes", type=positive_float, default=minutes,
                   help="a wall-clock budget: minutes of the training loop (its iterations and evaluations; not the "
                        "set-up or the final evaluation), stopping at the first iteration past it; the iterations "
                        "that ran are recorded (--iterations N reproduces the numbers)"
                        + ("" if minutes else " (default: the default iterations)"))
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="an explicit iteration budget (wins over --minutes)")
    p.add_argument("--seed", type=run_seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    """Adds ``train`` and ``distill`` to the main parser's subcommands."""
    t = sub.add_parser("train", help="train the learned digits denoiser (residual MLP, ε and x̂₀ heads), or with "
                                     "--dataset mnist5k a diffusers UNet saved as a pipeline; resumable")
    t.add_argument("--out", default=None, help=f"default {DEFAULT_MODEL_DIR}; mnist5k: gmm_triton_out/mnist5k_OBJECTIVE")
    t.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits",
                   help="digits: the oracle's mixture (MLP); mnist5k: 4000 real MNIST digits (UNet2DModel, "
                        "gmm_triton.lab.evidence)")
    t.add_argument("--objective", choices=["epsilon", "flow"], default="epsilon",
                   help="mnist5k: ε-prediction (a DDIM pipeline) or rectified flow (a flow-matching pipeline)")
    t.add_argument("--quick", action="store_true", help="mnist5k: the tiny UNet of the tests")
    _budget(t, None)
    t.set_defaults(func=_train)

    d = sub.add_parser("distill", help="moment-matching and EM distillation on the mixture testbeds")
    dsub = d.add_subparsers(dest="method", required=True)
    m = dsub.add_parser("mm", help="k-step moment-matching student (alternating: auxiliary denoiser; instant: "
                                   "the teacher's parameter-space gradient)")
    m.add_argument("--steps", type=value(int, lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"), required=True,
                   help="the student's sampling steps k")
    m.add_argument("--teacher", choices=["oracle", "learned"], default="learned")
    m.add_argument("--variant", choices=["alternating", "instant"], default="alternating",
                   help="alternating (an auxiliary denoiser, Algorithm 2) or instant (no auxiliary network: the "
                        "squared norm of the teacher's own loss gradient, Algorithm 3)")
    m.add_argument("--model", default=os.path.join(DEFAULT_MODEL_DIR, "model.pt"),
                   help="the learned model (initialises the student; the teacher for --teacher learned); "
                        "trained with the default budget if missing")
    m.add_argument("--out", required=True)
    _budget(m, 2.0)
    m.set_defaults(func=_mm)

    e = dsub.add_parser("emd", help="one-step generator by EM distillation (or the VSD baseline)")
    e.add_argument("--dataset", choices=["2d4", "8d8"], default="2d4")
    e.add_argument("--method", dest="emd_method", choices=["emd", "vsd"], default="emd")
    e.add_argument("--out", required=True)
    _budget(e, 1.0)
    e.set_defaults(func=_emd)

    a = dsub.add_parser("all", help="the acceptance run (make distill): every table over the training seeds")
    a.add_argument("--out", default="gmm_triton_out/distill")
    a.add_argument("--workers", type=positive_int, default=2, help="worker processes (one thread each)")
    a.add_argument("--seeds", type=seeds, default=ACCEPTANCE["seeds"], help="comma-separated training seeds")
    a.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiplies every budget (e.g. 0.05 for a smoke run)")
    a.set_defaults(func=_all)


def _train(args) -> int:
    if args.dataset == "mnist5k":
        from ..evidence.train import train_unet, iterations_for_minutes

        iterations = args.iterations or (iterations_for_minutes(args.minutes) if args.minutes else None)
        path = train_unet(args.out or f"gmm_triton_out/mnist5k_{args.objective}", objective=args.objective,
                          seed=args.seed, quick=args.quick, progress=not args.quiet,
                          **({"iterations": iterations} if iterations else {}))
        print("pipeline:", path)
        return 0
    from .teacher import train_teacher

    path = train_teacher(args.out or DEFAULT_MODEL_DIR, minutes=args.minutes, iterations=args.iterations,
                         seed=args.seed, progress=not args.quiet)
    print("model:", path)
    return 0


def _ensure_model(path: str, progress: bool = True) -> str:
    """The learned model at ``path``, trained there with the acceptance budget if missing."""
    if not os.path.exists(path):
        from .teacher import train_teacher

        print(f"no learned model at {path}: training it (`gmm-triton train`'s default budget)")
        train_teacher(os.path.dirname(path) or ".", progress=progress)
    return path


def _mm(args) -> int:
    from .mm import distill_mm

    r = distill_mm(args.out, steps=args.steps, teacher=args.teacher, variant=args.variant,
                   model_path=_ensure_model(args.model), minutes=args.minutes, iterations=args.iterations,
                   seed=args.seed, progress=not args.quiet)
    print(f"student FD {r['fd']:.4g} (teacher DDIM {r['teacher_ddim_fd']:.4g}, ancestral "
          f"{r['teacher_ancestral_fd']:.4g}); {r['iterations']} iterations, {r['seconds']:.0f} s; "
          f"{os.path.join(args.out, 'result.json')}")
    return 0


def _emd(args) -> int:
    from .emd import distill_emd

    r = distill_emd(args.out, dataset_name=args.dataset, method=args.emd_method, minutes=args.minutes,
                    iterations=args.iterations, seed=args.seed, progress=not args.quiet)
    print(f"mode TV {r['mode_tv']:.4g}, modes covered {r['modes_covered']}, recall {r['recall']}; "
          f"{r['iterations']} iterations, {r['seconds']:.0f} s; {os.path.join(args.out, 'result.json')}")
    return 0


def _all(args) -> int:
    from .report import write_report

    run_all(args.out, workers=args.workers, seeds=args.seeds, scale=args.scale)
    summary = write_report(args.out)
    print(summary["tables"])
    return 0


# -- the acceptance run ----------------------------------------------------------------------------------------
_STOPPED = False  # in a worker: a SIGINT arrived (no further job starts)
_RUNNING = False  # in a worker: a job is running (a SIGINT then interrupts it)


def _on_sigint(signum, frame):
    global _STOPPED
    _STOPPED = True
    if _RUNNING:
        raise KeyboardInterrupt


def _worker_init() -> None:
    """A worker of ``distill all``: SIGINT stops the running job (a training loop finishes its iteration and
    checkpoints first) and every later one, and is only recorded between jobs (so that no multiprocessing lock is
    abandoned). Ctrl-C at a terminal reaches the workers directly; the parent also forwards it."""
    import signal
    import sys

    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGALRM, _on_sigint)
    default_hook = sys.unraisablehook

    def redeliver(unraisable):
        # The handler's KeyboardInterrupt can land in code whose exceptions Python cannot propagate (a weakref
        # callback such as importlib's module-lock cleanup, a __del__): Python would print it as "Exception ignored"
        # and the job would run on. Deliver it again 10 ms later instead (SIGALRM, same handler), once this
        # callback has returned to the job's own frames; should it land in such code again, this repeats.
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and _RUNNING:
            signal.setitimer(signal.ITIMER_REAL, 0.01)
        else:
            default_hook(unraisable)

    sys.unraisablehook = redeliver


def _job(kind: str, kwargs: dict):
    """One run in a worker process (one thread): returns (kind, kwargs, finished) when it ends; a run stopped by
    Ctrl-C (or not started after it) is not finished."""
    global _RUNNING, _STOPPED
    import torch

    torch.set_num_threads(1)
    _RUNNING = True  # before the check: a SIGINT after it interrupts the job
    try:
        if _STOPPED:
            return kind, kwargs, False
        if kind == "train":
            from .teacher import train_teacher

            train_teacher(**kwargs)
        elif kind == "mm":
            from .mm import distill_mm

            distill_mm(**kwargs)
        elif kind == "emd":
            from .emd import distill_emd

            distill_emd(**kwargs)
        else:
            from .mm import many_step_baseline

            many_step_baseline(**kwargs)
    except KeyboardInterrupt:  # also the training loop's own (it consumed the SIGINT)
        _STOPPED = True
        return kind, kwargs, False
    finally:
        _RUNNING = False
    return kind, kwargs, True


def run_all(out: str, *, workers: int = 2, seeds=ACCEPTANCE["seeds"], scale: float = 1.0) -> None:
    """Every run of the tables, teacher first; EMD runs fill the other workers while it trains. Ctrl-C: see the
    module docstring (raises KeyboardInterrupt once the workers have stopped; a worker's error is re-raised the
    same way, after the others stopped)."""
    import contextlib
    import multiprocessing as mp
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    from .teacher import DEFAULT_ITERATIONS

    model_dir = os.path.join(out, "model")
    model = os.path.join(model_dir, "model.pt")
    teacher_job = ("train", dict(out=model_dir, iterations=max(1, round(DEFAULT_ITERATIONS * scale)), progress=False))
    emd_jobs = [("emd", dict(out=os.path.join(out, "emd", f"{ds}_{method}_seed{seed}"), dataset_name=ds, method=method,
                             iterations=max(1, round(ACCEPTANCE["emd_iterations"][ds] * scale)), seed=seed,
                             progress=False))
                for ds in ("2d4", "8d8") for method in ("emd", "vsd") for seed in seeds]
    after_teacher = [("mm", dict(out=os.path.join(out, "mm", f"{variant}_k{k}_{teacher}_seed{seed}"), steps=k,
                                 teacher=teacher, variant=variant, model_path=model,
                                 iterations=max(1, round(ACCEPTANCE["mm_iterations"][variant] * scale)), seed=seed,
                                 progress=False))
                     for k in ACCEPTANCE["steps"] for variant in ACCEPTANCE["variants"]
                     for teacher in ("learned", "oracle") for seed in seeds]
    after_teacher += [("baseline", dict(out=os.path.join(out, "baselines"), teacher=teacher, model_path=model,
                                        seeds=tuple(seeds)))
                      for teacher in ("learned", "oracle")]
    total = 1 + len(emd_jobs) + len(after_teacher)
    # SIGINT to this process is recorded and acted on by the loop below, never raised from the handler: Python's own
    # KeyboardInterrupt can land in a __del__ or a weakref callback (the pool's and its processes' are many here),
    # where it is printed as "Exception ignored" and lost, and every queued run then went on (seen on a loaded
    # machine: kill -INT of the parent ended with all 23 runs done and status 0)
    interrupted = []
    own_handler = threading.current_thread() is threading.main_thread()
    if own_handler:
        outer = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    bar = tqdm(total=total, desc=f"distill all ({workers} workers)")
    try:
        pending = {pool.submit(_job, *teacher_job)}
        pending |= {pool.submit(_job, *job) for job in emd_jobs}
        while pending:
            if interrupted:
                raise KeyboardInterrupt
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                kind, kwargs, finished = f.result()          # re-raises a worker's error
                if not finished:  # a SIGINT reached this worker (Ctrl-C reaches the workers as well)
                    raise KeyboardInterrupt(f"{kind} {kwargs['out']} was interrupted")
                bar.update(1)
                bar.set_postfix_str(f"{kind} {os.path.basename(kwargs['out'])}")
                if kind == "train":
                    pending |= {pool.submit(_job, *job) for job in after_teacher}
    except BaseException:
        # Ctrl-C (or a failed run): no queued run starts, running ones stop at their next iteration boundary
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the workers
        try:
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in mp.active_children():  # kill -INT of the parent alone: forward it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGINT)
            pool.shutdown(wait=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True)
        if own_handler:
            signal.signal(signal.SIGINT, outer)
