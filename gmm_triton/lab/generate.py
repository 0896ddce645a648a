"""``gmm-triton generate``: N samples of a model, sharded over the processes of torchrun / accelerate, resumable.

What it guarantees:

- **Sample i depends on (configuration, seed, i) only.** Its initial latent is ``initial_noise`` at global index i
  (Philox stream 3), every step draws its noise and mixture component at global index i (the schedulers'
  ``set_sample_offset``, each batch with a generator seeded alike, so every batch draws the same step seeds), and
  the model sees it in a forward of exactly ``--model-batch`` rows, at row i mod model_batch, the other rows being
  its aligned neighbours or zeros. The last point matters: a BLAS picks its kernel (and so its rounding) by the
  matrix shape, so a model's output for one sample can change with the batch it shares (with MKL the digits
  oracle gives other bits in batches of 1, 3 or 7 rows than in batches of 16 or more). On the CPU it also splits a
  product's reduction by thread count (MKL on an AVX-512/AMX Xeon: 2.4e-7 apart at 1 and 2 threads), so the run
  sets torch's intra-op threads to ``--threads`` (default 1, part of the configuration). With a fixed forward
  shape and thread count, the number of processes, the batch size, the shard layout of a resumed run and the
  order of work change no byte of ``samples.npy``, on one device type.
- **Layout.** Global indices are cut into shards of ``--shard-size`` (fixed at the first run). The shards still
  to do are split among the ranks in contiguous runs; a rank writes each finished shard as
  ``shards/shard_NNNNNN.npy`` (written to a temporary name with its space reserved, fsynced, renamed) and then its
  record ``shard_NNNNNN.json`` (the configuration's fingerprint, the data's sha256, rank, world size, batch size,
  seconds): a shard is finished once its record exists, and is never written again. After a barrier rank 0 checks
  every shard against its record and writes them in global index order, sequentially, into a temporary file whose
  space it reserved first; that file is read back and its sha256 compared with the bytes written, then renamed to
  ``samples.npy`` [N, *sample_shape] float32; ``manifest.json`` (the configuration and its fingerprint, seed, N,
  world and batch size, commit, per-shard records, the sha256 of samples.npy, timings) follows, atomically.
- **A transaction.** Rank 0 holds an exclusive lock on ``--out`` (``OUT/generate.lock``, naming its holder) for
  the whole run: a second run into the same folder fails at once, naming the first. Nothing is written before
  the arguments are checked, which includes sampling sample 0 once (so that a configuration the library refuses
  fails before the folder is touched); results of another configuration are never overwritten, and the only
  files ever removed are the temporary files of this module's own names. Non-finite samples stop the run with an
  error naming the shard; a full disk is an error naming the space needed.
- **Resume.** Rerun the same command (with any number of processes or batch size): the finished shards whose data
  match their records are kept and the others are computed. ``run.json`` holds everything that determines the
  bytes; a rerun whose configuration differs (sampler, η, steps, mixture, seed, N, shard size, model batch,
  threads, model, device type) is refused, naming the differences, and so is any shard record or manifest of
  another configuration (by fingerprint), with or without ``run.json``. A rerun of a finished run checks
  ``samples.npy`` against the sha256 in ``manifest.json`` (and merges it again from the shards if it differs).
- **Processes.** RANK / WORLD_SIZE / LOCAL_RANK come from the launcher (torchrun or accelerate launch); with
  more than one process ``torch.distributed`` is initialised with NCCL when sampling on CUDA (device
  ``cuda:LOCAL_RANK``) and gloo on the CPU. A plain single process needs no launcher.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .cli_args import add_mixture_arguments, nonneg_float, positive_int, seed
from .errors import CommandError, UsageError, os_message
from .files import atomic_write, read_json, write_json
from .sampling import Sampler, scheduler_for
from ..provenance import commit
from ..rng import initial_noise

FORMAT = 2  # 2: shard records and the manifest carry the configuration's fingerprint
SAMPLERS = ("ddim", "ddim-gmm", "rfim", "rfim-gmm")
RUN_CONFIG, MANIFEST, SAMPLES, SHARDS, LOCK = "run.json", "manifest.json", "samples.npy", "shards", "generate.lock"
RECORD_KEYS = ("shard", "start", "stop", "sha256", "config_sha256", "world_size", "batch_size", "commit")
_RECORD = re.compile(r"^shard_(\d{6})\.json$")
# the temporary names this module writes (files.temporary_name): the only files it ever removes
_TMP_TOP = re.compile(r"^(samples\.npy|manifest\.json|run\.json)\.tmp-\d+$")
_TMP_SHARD = re.compile(r"^shard_\d{6}\.(npy|json)\.tmp-\d+$")
# Test hook: the process SIGKILLs itself after writing this many shards (an interruption at a known point).
KILL_AFTER_ENV = "GMM_TRITON_TEST_KILL_AFTER_SHARDS"


class GenerateError(UsageError):
    """A bad argument or an output folder that cannot be resumed; the message says which and why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gmm-triton generate``."""
    p.add_argument("--samples", type=positive_int, required=True, help="N, the number of samples")
    p.add_argument("--out", default="gmm_triton_out/generate",
                   help="output folder (rerun the same command to resume an interrupted run)")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS,
                   help="ddim / ddim-gmm (GMMDDIMScheduler) or rfim / rfim-gmm (GMMFlowMatchScheduler)")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--eta", type=nonneg_float, default=0.0,
                   help="η: DDIM noise weight (>= 0), or the flow's σ = η s (in [0, 1])")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--pipeline", default=None,
                   help="a saved diffusers pipeline folder with an unconditional UNet2DModel (`unet`); its "
                        "scheduler config seeds ours. Default: the embedded digits oracle (VP for ddim*, flow for rfim*)")
    p.add_argument("--image-size", type=positive_int, default=16,
                   help="the oracle's resolution (digits resized to SIZE×SIZE); ignored with --pipeline")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="samples per scheduler step; a multiple of --model-batch; free to change on resume")
    p.add_argument("--model-batch", type=positive_int, default=64,
                   help="rows of every model forward (the last one zero-padded): fixes the model's rounding, so it "
                        "is part of the configuration")
    p.add_argument("--shard-size", type=positive_int, default=256,
                   help="samples per shard file; a multiple of --model-batch; fixed by the first run")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto: cuda:LOCAL_RANK if CUDA is available, else cpu")
    p.add_argument("--timeout-min", type=positive_int, default=120,
                   help="torch.distributed timeout: how long a rank that finished waits for the others")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch intra-op threads per process when sampling on the CPU: a BLAS's rounding depends "
                        "on it, so it is part of the configuration (default 1; run one process per core instead)")
    add_mixture_arguments(p)


# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1


@contextmanager
def distributed(device_arg: str, timeout_min: int = 120):
    """This process's Rank, from the launcher's environment; initialises torch.distributed when WORLD_SIZE > 1
    (NCCL on CUDA, gloo on the CPU) unless the caller already has, and tears down only what it set up."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise GenerateError("--device cuda: torch sees no CUDA device")
    cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = False
    if torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    elif world > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=timeout_min))
        created = True
    try:
        yield Rank(rank, world, device)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _broadcast(obj, r: Rank):
    """rank 0's ``obj`` on every rank."""
    if not r.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj, r: Rank) -> list:
    """Every rank's ``obj``, on every rank (also the barrier before the merge)."""
    if not r.distributed:
        return [obj]
    out = [None] * r.world
    torch.distributed.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------------------
def _sampler(args) -> Sampler:
    gmm = args.sampler.endswith("-gmm")
    opts = dict(kernel="gmm", gmm_components=args.gmm_components, gmm_offsets=args.gmm_offsets,
                gmm_variance=args.gmm_variance, gmm_shared=args.gmm_shared,
                gmm_clip_variance=args.gmm_clip_variance) if gmm else {}
    return Sampler(args.sampler, "flow" if args.sampler.startswith("rfim") else "ddim", opts)


def build(args, device):
    """(model, scheduler, sample_shape, model_identity) for the arguments, on ``device``."""
    sampler = _sampler(args)
    if sampler.family == "flow" and args.eta > 1:
        raise GenerateError(f"--eta {args.eta}: a flow sampler needs eta in [0, 1] (σ = eta·s cannot exceed s)")
    if args.pipeline is None:
        from .oracle import MixtureDenoiser, digits_mixture

        sched = scheduler_for(sampler, args.gmm_scale, args.eta)
        data = digits_mixture(args.image_size, std=0.1, device=device)
        if sampler.family == "flow":
            model = MixtureDenoiser(data, schedule="flow", num_train_timesteps=sched.config.num_train_timesteps)
        else:
            model = MixtureDenoiser(data, alphas_cumprod=sched.alphas_cumprod)
        ident = {"kind": "oracle", "data": "digits", "image_size": args.image_size, "std": 0.1,
                 "schedule": model.schedule}
        return model, sched, tuple(data.shape), ident
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DModel

    from ..schedulers import GMMDDIMScheduler, GMMFlowMatchScheduler

    if not os.path.isdir(args.pipeline):
        raise GenerateError(f"--pipeline {args.pipeline}: not a folder (a saved diffusers pipeline is expected)")
    try:  # diffusers reads weights with safetensors or torch.load(weights_only=True)
        pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GenerateError(f"--pipeline {args.pipeline}: cannot be loaded as a diffusers pipeline ({first})") from None
    model = getattr(pipe, "unet", None)
    if not isinstance(model, UNet2DModel) or model.config.num_class_embeds is not None:
        raise GenerateError(f"--pipeline {args.pipeline}: generate needs an unconditional UNet2DModel as `unet`, "
                            f"found {type(model).__name__}")
    flow_pipe = isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    if flow_pipe != (sampler.family == "flow"):
        raise GenerateError(f"--sampler {args.sampler} does not fit --pipeline {args.pipeline}, whose scheduler is "
                            f"{type(pipe.scheduler).__name__}: use {'rfim' if flow_pipe else 'ddim'}[-gmm]")
    opts = dict(sampler.options, gmm_scale=args.gmm_scale) if sampler.is_mixture else {}
    if flow_pipe:
        sched = GMMFlowMatchScheduler.from_config(pipe.scheduler.config, eta=args.eta, **opts)
    else:
        sched = GMMDDIMScheduler.from_config(pipe.scheduler.config, **opts)
    size = model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    model = model.to(device).eval()
    ident = {"kind": "pipeline", "path": os.path.abspath(args.pipeline), "class": type(model).__name__,
             "weights_sha256": _weights_sha256(model)}
    return model, sched, (model.config.in_channels, *size), ident


def _weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_config(args, sched, shape, ident, device) -> dict:
    """Everything that determines the bytes of samples.npy (compared on resume)."""
    return {
        "format": FORMAT, "seed": args.seed, "samples": args.samples, "shard_size": args.shard_size,
        "model_batch": args.model_batch, "sample_shape": list(shape), "dtype": "float32",
        "device_type": device.type, **({"cpu_threads": args.threads} if device.type == "cpu" else {}),
        "sampler": {"name": args.sampler, "steps": args.steps, "eta": args.eta,
                    **({k: getattr(args, k) for k in ("gmm_scale", "gmm_components", "gmm_offsets", "gmm_variance",
                                                      "gmm_shared", "gmm_clip_variance")}
                       if args.sampler.endswith("-gmm") else {})},
        "scheduler": {"class": type(sched).__name__,  # without diffusers' bookkeeping keys (_diffusers_version…)
                      **{k: v for k, v in json.loads(sched.to_json_string()).items() if not k.startswith("_")}},
        "model": ident,
    }


# ---------------------------------------------------------------------------------------------------------------
def forward_fixed(model, x: torch.Tensor, t, first: int, model_batch: int) -> torch.Tensor:
    """The model's prediction for samples first … first + len(x) − 1, computed in forwards of exactly
    ``model_batch`` rows aligned to global indices: sample g sits at row g mod model_batch of a fresh buffer
    (the rows of samples outside x are zeros). A sample's prediction thus depends on its own input only, for
    any model whose rows do not interact (no batch statistics), whatever batch it came in."""
    out = torch.empty_like(x)
    g, end = first, first + x.shape[0]
    while g < end:
        c0 = g - g % model_batch
        c1 = min(c0 + model_batch, end)
        buf = x.new_zeros((model_batch, *x.shape[1:]))
        buf[g - c0:c1 - c0] = x[g - first:c1 - first]
        out[g - first:c1 - first] = model(buf, t).sample[g - c0:c1 - c0]
        g = c1
    return out


def sample_range(model, sched, family: str, *, first: int, n: int, shape, seed: int, steps: int, eta: float,
                 model_batch: int, device) -> torch.Tensor:
    """Samples first … first + n − 1 of the run, [n, *shape]: the trajectory of sample i is a function of
    (scheduler config, seed, i) only (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)  # the same step seeds for every batch
    sched.set_sample_offset(first)
    if family == "flow" or sched.num_inference_steps != steps:
        sched.set_timesteps(steps, device=device)  # the flow scheduler's step index restarts here
    x = initial_noise((n, *shape), seed, sample_offset=first, device=device)
    with torch.inference_mode():
        for t in sched.timesteps:
            out = forward_fixed(model, x, t, first, model_batch)
            step = (sched.step(out, t, x, generator=g) if family == "flow"
                    else sched.step(out, t, x, eta=eta, generator=g))
            x = step.prev_sample
    return x


# ---------------------------------------------------------------------------------------------------------------
def _checked_build(args, device):
    """``build`` and then sample 0's whole trajectory on a copy of the scheduler, before any file is touched: a
    configuration the library refuses (K > D, an exact-variance scale past its limit, …) is a usage error here, not
    a traceback after the output folder was prepared. Returns what ``build`` does."""
    try:
        model, sched, shape, ident = build(args, device)
    except GenerateError:
        raise
    except ValueError as e:  # a scheduler option the library refuses
        raise GenerateError(f"this configuration is refused: {e}") from None
    try:
        sample_range(model, copy.deepcopy(sched), _sampler(args).family, first=0, n=1, shape=shape, seed=args.seed,
                     steps=args.steps, eta=args.eta, model_batch=args.model_batch, device=device)
    except ValueError as e:
        raise GenerateError(f"this configuration fails at its first sample: {e}") from None
    return model, sched, shape, ident


# ---------------------------------------------------------------------------------------------------------------
def fingerprint(cfg: dict) -> str:
    """sha256 of the configuration's canonical JSON: stamped into every shard record and the manifest, and
    compared before any of them is reused."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _shard_path(out, i, ext):
    return os.path.join(out, SHARDS, f"shard_{i:06d}.{ext}")


def shard_bounds(i: int, shard_size: int, n: int) -> tuple[int, int]:
    return i * shard_size, min((i + 1) * shard_size, n)


def _num_shards(cfg) -> int:
    return -(-cfg["samples"] // cfg["shard_size"])


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} (then) vs {b!r} (now)")
    return diffs


class OutputLock:
    """An exclusive lock on an output folder, held by rank 0 for the whole run: ``flock`` on ``OUT/generate.lock``
    (released by the kernel when the process ends, however it ends; on NFS, Linux maps it to a POSIX lock the
    server arbitrates). The file names its holder (pid, host, start, command) for whoever finds it held; it stays
    in place after the run (removing it would let two runs lock two different files)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self.fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise CommandError(f"{os.path.dirname(self.path)} is in use by another `gmm-triton generate` ({holder}): "
                               "wait for it to finish, or use another --out") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        holder = (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: "
                  + " ".join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock
        return False


def _remove_temporaries(out) -> None:
    """Removes the temporary files an interrupted run of this folder left (only names this module writes:
    ``samples.npy.tmp-PID``, ``shards/shard_NNNNNN.npy.tmp-PID``, …); called with the folder's lock held."""
    for d, pattern in ((out, _TMP_TOP), (os.path.join(out, SHARDS), _TMP_SHARD)):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if pattern.match(name):
                    os.remove(os.path.join(d, name))


def _read_record(out, i) -> dict:
    path = _shard_path(out, i, "json")
    rec = read_json(path, "a shard record")
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise CommandError(f"{path} is damaged (it lacks {', '.join(missing)}): delete it and its .npy, and rerun "
                           "to compute the shard again")
    return rec


def prepare(out, cfg) -> dict:
    """Rank 0, with the folder locked and before any rank writes: checks what the folder holds against the
    configuration and returns ``{"pending": shards still to do, "complete": manifest or None}``.

    - ``run.json`` (if any) and every shard record and manifest must carry this configuration (its fingerprint);
      a folder holding another configuration's results is refused (usage error) and nothing in it is touched.
      ``run.json`` is (re)written only while the folder holds no results.
    - A finished shard (record and data present) is reused only if its data match the sha256 in its record.
    - A finished run is complete only if ``samples.npy`` matches the sha256 in ``manifest.json``; if it does not,
      it is merged again from the (verified) shards.
    - Temporary files of an interrupted run of this folder are removed (only names this module writes).
    """
    fp = fingerprint(cfg)
    shards = os.path.join(out, SHARDS)
    os.makedirs(shards, exist_ok=True)
    run_json, samples, manifest_path = (os.path.join(out, f) for f in (RUN_CONFIG, SAMPLES, MANIFEST))
    records = {}
    for name in sorted(os.listdir(shards)):
        m = _RECORD.match(name)
        if m:
            records[int(m.group(1))] = _read_record(out, int(m.group(1)))
    manifest = read_json(manifest_path, "the manifest") if os.path.exists(manifest_path) else None
    recorded = read_json(run_json, "the run's configuration") if os.path.exists(run_json) else None
    if recorded is not None and recorded != json.loads(json.dumps(cfg)):
        if records or manifest is not None or os.path.exists(samples):
            raise GenerateError(f"refusing to resume {out}: it was started with another configuration ("
                                + "; ".join(_differences(recorded, json.loads(json.dumps(cfg))))
                                + "). Rerun with the original arguments or use another --out")
        recorded = None  # a run that failed before its first shard: nothing of it to keep
    for i, rec in records.items():
        if rec["config_sha256"] != fp:
            raise GenerateError(f"refusing to use {_shard_path(out, i, 'json')}: it was made with another "
                                f"configuration (fingerprint {rec['config_sha256'][:12]}…, this one {fp[:12]}…). "
                                "Rerun with the original arguments or use another --out")
    if manifest is not None and manifest.get("config_sha256") != fp:
        raise GenerateError(f"refusing to overwrite {manifest_path}: it belongs to another configuration. "
                            "Use another --out")
    if os.path.exists(samples) and manifest is None and recorded is None:
        raise GenerateError(f"refusing to overwrite {samples}: this run did not write it (the folder holds no "
                            f"{RUN_CONFIG} or {MANIFEST} of this configuration). Use another --out")
    if recorded is None:
        write_json(cfg, run_json)
    _remove_temporaries(out)
    if manifest is not None and os.path.exists(samples):
        if _sha256_file(samples) == manifest.get("sha256"):
            return {"pending": [], "complete": manifest}
        print(f"{samples} does not match the sha256 in {MANIFEST} (damaged): merging it again from the shards",
              file=sys.stderr)
    pending = []
    for i in range(_num_shards(cfg)):
        npy = _shard_path(out, i, "npy")
        rec = records.get(i)
        if rec is None or not os.path.exists(npy):
            pending.append(i)  # not finished (a record without data is computed again, its record rewritten)
        elif (rec["start"], rec["stop"]) != shard_bounds(i, cfg["shard_size"], cfg["samples"]) or \
                _sha256_file(npy) != rec["sha256"]:
            raise CommandError(f"{npy} does not match its record (sha256 or bounds): delete it and its .json and "
                               "rerun to compute it again")
    return {"pending": pending, "complete": None}


def _my_runs(pending: list[int], r: Rank) -> list[list[int]]:
    """This rank's contiguous share of the pending shards, cut into runs of consecutive shard ids."""
    mine = pending[r.rank * len(pending) // r.world:(r.rank + 1) * len(pending) // r.world]
    runs = []
    for i in mine:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sample_my_shards(args, cfg, model, sched, family, runs, r: Rank) -> dict:
    """Computes and writes this rank's shards; returns its timing."""
    from tqdm.auto import tqdm

    S, N, shape = cfg["shard_size"], cfg["samples"], tuple(cfg["sample_shape"])
    total = sum(shard_bounds(i, S, N)[1] - shard_bounds(i, S, N)[0] for run in runs for i in run)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0"))
    written, t_start = 0, time.perf_counter()
    bar = tqdm(total=total, unit="sample", disable=r.rank != 0,
               desc=f"generate {args.sampler} (rank 0 of {r.world})")
    for run in runs:
        lo, hi = shard_bounds(run[0], S, N)[0], shard_bounds(run[-1], S, N)[1]
        pending, carry, carry_lo, t_shard = list(run), [], lo, time.perf_counter()
        for b0 in range(lo, hi, args.batch_size):
            n = min(args.batch_size, hi - b0)
            x = sample_range(model, sched, family, first=b0, n=n, shape=shape, seed=args.seed, steps=args.steps,
                             eta=args.eta, model_batch=args.model_batch, device=r.device)
            carry.append(x.cpu().numpy())
            bar.update(n)
            have = np.concatenate(carry) if len(carry) > 1 else carry[0]
            while pending and shard_bounds(pending[0], S, N)[1] <= b0 + n:
                i = pending.pop(0)
                s0, s1 = shard_bounds(i, S, N)
                _write_shard(args.out, i, have[s0 - carry_lo:s1 - carry_lo], s0, s1, r, args.batch_size,
                             time.perf_counter() - t_shard, cfg)
                t_shard = time.perf_counter()
                written += 1
                if written == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                have, carry_lo = have[s1 - carry_lo:], s1
            carry = [have]
    bar.close()
    secs = time.perf_counter() - t_start
    return {"rank": r.rank, "samples": total, "seconds": secs, "samples_per_s": total / secs if total else None,
            "host": socket.gethostname(), "device": _device_name(r.device)}


def _write_shard(out, i, arr, s0, s1, r: Rank, batch_size, seconds, cfg):
    """Shard i's data, then its record (the configuration's fingerprint and the data's sha256). Non-finite
    samples stop the run: nothing is written for the shard, so a rerun computes it again."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if bad.any():
        first = s0 + int(np.argmax(bad))
        raise CommandError(f"shard {i} (samples {s0}…{s1 - 1}): {int(bad.sum())} of its samples are not finite "
                           f"(NaN or ±inf; the first is sample {first}): this configuration diverges (e.g. --eta "
                           "too large). Nothing was written for this shard")
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    atomic_write(_shard_path(out, i, "npy"), lambda f: f.write(data), size=len(data))
    write_json({
        "format": FORMAT, "shard": i, "start": s0, "stop": s1, "sha256": hashlib.sha256(data).hexdigest(),
        "config_sha256": fingerprint(cfg), "rank": r.rank, "world_size": r.world, "batch_size": batch_size,
        "seconds": seconds, "host": socket.gethostname(), "device": _device_name(r.device), "commit": commit(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}, _shard_path(out, i, "json"))


def merge(out, cfg) -> tuple[list[dict], str, int]:
    """Rank 0: writes samples.npy [N, *sample_shape] float32 in global index order from the shards, each checked
    against its record, as one sequential write into a temporary file whose space is reserved first; the file is
    read back and its sha256 compared with that of the bytes written before it is renamed into place.
    Returns (the shard records, the sha256, the size in bytes)."""
    N, S, shape = cfg["samples"], cfg["shard_size"], tuple(cfg["sample_shape"])
    path = os.path.join(out, SAMPLES)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                  "fortran_order": False, "shape": (N, *shape)})
    header = header.getvalue()
    size = len(header) + N * math.prod(shape) * 4
    free = shutil.disk_usage(out).free
    if free < size:
        raise CommandError(f"not enough space in {out} for {SAMPLES}: it needs {size:,} bytes, {free:,} are free; "
                           "free some space and rerun (the shards are kept)")
    records, h = [], hashlib.sha256()

    def write(f):
        f.write(header)
        h.update(header)
        for i in range(_num_shards(cfg)):
            npy, s0_s1 = _shard_path(out, i, "npy"), shard_bounds(i, S, N)
            if not (os.path.exists(npy) and os.path.exists(_shard_path(out, i, "json"))):
                raise CommandError(f"{npy} or its record is missing after every rank finished: --out must be a "
                                   "folder that every rank sees (a shared filesystem across nodes)")
            rec = _read_record(out, i)
            with open(npy, "rb") as g:
                raw = g.read()
            arr = np.load(io.BytesIO(raw)) if hashlib.sha256(raw).hexdigest() == rec["sha256"] else None
            if arr is None or arr.dtype != np.float32 or arr.shape != (s0_s1[1] - s0_s1[0], *shape):
                raise CommandError(f"{npy} does not match its record: delete it and its .json and rerun to compute "
                                   "it again")
            data = np.ascontiguousarray(arr).tobytes()
            f.write(data)
            h.update(data)
            records.append(rec)

    def verify(tmp):
        if os.path.getsize(tmp) != size or _sha256_file(tmp) != h.hexdigest():
            raise CommandError(f"{tmp} does not read back as written (size or sha256 differ): the storage of {out} "
                               "corrupts writes; nothing was renamed into place")

    atomic_write(path, write, size=size, verify=verify)
    return records, h.hexdigest(), size


@contextmanager
def _cpu_threads(n: int, device: torch.device):
    """torch's intra-op threads set to ``n`` for the run (restored afterwards) when sampling on the CPU."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rank0(r: Rank, fn):
    """``fn()`` on rank 0, its result (or its failure) on every rank."""
    state = None
    if r.rank == 0:
        try:
            state = {"value": fn()}
        except (CommandError, OSError) as e:
            state = {"error": str(e) if isinstance(e, CommandError) else os_message(e),
                     "usage": isinstance(e, UsageError)}
    state = _broadcast(state, r)
    if "error" in state:
        raise (GenerateError if state["usage"] else CommandError)(state["error"])
    return state["value"]


def run(args) -> dict:
    """``gmm-triton generate``: returns the manifest (on every rank; only rank 0's holds the merge)."""
    if args.batch_size % args.model_batch or args.shard_size % args.model_batch:
        raise GenerateError(f"--batch-size ({args.batch_size}) and --shard-size ({args.shard_size}) must be "
                            f"multiples of --model-batch ({args.model_batch})")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise GenerateError(f"--out {args.out} is a file: give a folder (new or of this run)")
    t0 = time.perf_counter()
    with distributed(args.device, args.timeout_min) as r, _cpu_threads(args.threads, r.device), ExitStack() as stack:
        model, sched, shape, ident = _checked_build(args, r.device)
        cfg = run_config(args, sched, shape, ident, r.device)
        family = _sampler(args).family

        def start():
            os.makedirs(args.out, exist_ok=True)
            stack.enter_context(OutputLock(args.out))
            return prepare(args.out, cfg)

        state = _rank0(r, start)
        if state["complete"] is not None:
            if r.rank == 0:
                print(f"{args.out} is complete: nothing to do ({SAMPLES} matches the sha256 in {MANIFEST})")
            return state["complete"]
        runs = _my_runs(state["pending"], r)
        try:
            timing = _sample_my_shards(args, cfg, model, sched, family, runs, r)
        except (CommandError, OSError) as e:
            timing = {"rank": r.rank, "error": str(e) if isinstance(e, CommandError) else os_message(e)}
        timings = _gather(timing, r)
        errors = [t for t in timings if "error" in t]
        if errors:
            raise CommandError("; ".join((f"rank {t['rank']}: " if r.distributed else "") + t["error"]
                                         for t in errors))
        if r.rank != 0:
            return {}
        t_merge = time.perf_counter()
        records, sha, size = merge(args.out, cfg)
        samples = os.path.join(args.out, SAMPLES)
        manifest = {
            "format": FORMAT, "config": cfg, "config_sha256": fingerprint(cfg), "samples_file": SAMPLES,
            "sha256": sha, "bytes": size, "shape": [cfg["samples"], *cfg["sample_shape"]], "seed": args.seed,
            "samples": args.samples, "world_size": r.world, "batch_size": args.batch_size, "commit": commit(),
            "sessions": sorted({(rec["world_size"], rec["batch_size"], rec["commit"] or "") for rec in records}),
            "shards": records,
            "timings": {"ranks": timings, "merge_seconds": time.perf_counter() - t_merge,
                        "wall_seconds": time.perf_counter() - t0},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        write_json(manifest, os.path.join(args.out, MANIFEST))
        done = sum(t["samples"] for t in timings)
        print(f"wrote {samples} [{', '.join(map(str, manifest['shape']))}] and {MANIFEST}: {done} samples computed "
              f"now by {r.world} process(es), {len(records)} shards, sha256 {sha[:16]}…")
        return manifest


def main(args) -> int:
    """``gmm-triton generate`` (``cli.main`` turns its failures into one error line and an exit status)."""
    run(args)
    return 0
