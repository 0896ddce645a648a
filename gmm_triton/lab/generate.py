"""``gmm-triton generate``: N samples of a model, sharded over the processes of torchrun / accelerate, resumable.

What it guarantees:

- **Sample i depends on (configuration, seed, i) only.** Its initial latent is ``initial_noise`` at global index i
  (Philox stream 3), every step draws its noise and mixture component at global index i (the schedulers'
  ``set_sample_offset``, each batch with a generator seeded alike, so every batch draws the same step seeds), and
  the model sees it in a forward of exactly ``--model-batch`` rows, at row i mod model_batch, the other rows being
  its aligned neighbours or zeros. The last point matters: a BLAS picks its kernel (and so its rounding) by the
  matrix shape, so a model's output for one sample can change with the batch it shares (with MKL the digits
  oracle gives other bits in batches of 1, 3 or 7 rows than in batches of 16 or more). With a fixed forward shape, the number of processes, the batch size, the
  shard layout of a resumed run and the order of work change no byte of ``samples.npy``, on one device type.
- **Layout.** Global indices are cut into shards of ``--shard-size`` (fixed at the first run). The shards still
  to do are split among the ranks in contiguous runs; a rank writes each finished shard as
  ``shards/shard_NNNNNN.npy`` (written to a temporary name, fsynced, renamed) and then its record
  ``shard_NNNNNN.json`` (sha256, rank, world size, batch size, seconds): a shard is finished once its record
  exists, and is never written again. After a barrier rank 0 checks every shard against its checksum and merges
  them in global index order into ``samples.npy`` [N, *sample_shape] float32 and ``manifest.json`` (the run
  configuration, seed, N, world and batch size, commit, per-shard checksums, timings), both written atomically.
- **Resume.** Rerun the same command (with any number of processes or batch size): the finished shards are kept
  and the others are computed. ``run.json``, written at the first run, holds everything that determines the
  bytes; once a shard is finished, a rerun whose configuration differs (sampler, η, steps, mixture, seed, N,
  shard size, model batch, model, device type) is refused, naming the differences. One job per output folder at
  a time.
- **Processes.** RANK / WORLD_SIZE / LOCAL_RANK come from the launcher (torchrun or accelerate launch); with
  more than one process ``torch.distributed`` is initialised with NCCL when sampling on CUDA (device
  ``cuda:LOCAL_RANK``) and gloo on the CPU. A plain single process needs no launcher.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .cli_args import add_mixture_arguments, nonneg_float, positive_int, seed
from .sampling import Sampler, scheduler_for
from ..rng import initial_noise

FORMAT = 1
SAMPLERS = ("ddim", "ddim-gmm", "rfim", "rfim-gmm")
RUN_CONFIG, MANIFEST, SAMPLES, SHARDS = "run.json", "manifest.json", "samples.npy", "shards"
TMP_MARK = ".tmp-"
# Test hook: the process SIGKILLs itself after writing this many shards (an interruption at a known point).
KILL_AFTER_ENV = "GMM_TRITON_TEST_KILL_AFTER_SHARDS"


class GenerateError(ValueError):
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
    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
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
        "device_type": device.type,
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
def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path, write):
    """write(f) into a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_json(path, obj):
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


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


def finished_shards(out, cfg) -> set[int]:
    """The shards whose record exists and matches the layout (a record is written after its data)."""
    done = set()
    num = -(-cfg["samples"] // cfg["shard_size"])
    for i in range(num):
        rec = _shard_path(out, i, "json")
        if os.path.exists(rec) and os.path.exists(_shard_path(out, i, "npy")):
            with open(rec) as f:
                r = json.load(f)
            if (r["start"], r["stop"]) == shard_bounds(i, cfg["shard_size"], cfg["samples"]):
                done.add(i)
    return done


def _commit():
    """The git commit of this package's source (suffixed "+dirty" with uncommitted changes), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} (then) vs {b!r} (now)")
    return diffs


def prepare(out, cfg) -> list[int]:
    """Rank 0, before any rank writes: records the configuration, or checks it against the recorded one if any
    shard is finished; removes temporary files left by an interrupted run; returns the shards still to do."""
    os.makedirs(os.path.join(out, SHARDS), exist_ok=True)
    path = os.path.join(out, RUN_CONFIG)
    diffs = []
    if os.path.exists(path):
        with open(path) as f:
            diffs = _differences(json.load(f), json.loads(json.dumps(cfg)))
        if diffs and any(name.endswith(".json") for name in os.listdir(os.path.join(out, SHARDS))):
            raise GenerateError(f"refusing to resume {out}: it was started with another configuration ("
                                + "; ".join(diffs) + "). Rerun with the original arguments or use another --out")
    if diffs or not os.path.exists(path):  # a new run, or one that failed before finishing any shard
        for stale in (SAMPLES, MANIFEST):  # of an older configuration whose shards were deleted
            if os.path.exists(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
        _write_json(path, cfg)
    for d in (out, os.path.join(out, SHARDS)):
        for name in os.listdir(d):
            if TMP_MARK in name:
                os.remove(os.path.join(d, name))
    done = finished_shards(out, cfg)
    return [i for i in range(-(-cfg["samples"] // cfg["shard_size"])) if i not in done]


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


def _sample_my_shards(args, cfg, model, sched, family, runs, r: Rank, commit) -> dict:
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
                             time.perf_counter() - t_shard, commit)
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


def _write_shard(out, i, arr, s0, s1, r: Rank, batch_size, seconds, commit):
    path = _shard_path(out, i, "npy")
    _atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(arr, dtype=np.float32)))
    _write_json(_shard_path(out, i, "json"), {
        "shard": i, "start": s0, "stop": s1, "sha256": _sha256_file(path), "rank": r.rank, "world_size": r.world,
        "batch_size": batch_size, "seconds": seconds, "host": socket.gethostname(),
        "device": _device_name(r.device), "commit": commit,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()})


def merge(out, cfg) -> dict:
    """Rank 0: checks each shard against its recorded sha256 and writes samples.npy in global index order;
    returns the shard records."""
    N, S = cfg["samples"], cfg["shard_size"]
    records = []
    path = os.path.join(out, SAMPLES)
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(N, *cfg["sample_shape"]))
    try:
        for i in range(-(-N // S)):
            npy = _shard_path(out, i, "npy")
            if not (os.path.exists(npy) and os.path.exists(_shard_path(out, i, "json"))):
                raise GenerateError(f"{npy} or its record is missing after every rank finished: --out must be a "
                                    "folder that every rank sees (a shared filesystem across nodes)")
            with open(_shard_path(out, i, "json")) as f:
                rec = json.load(f)
            if _sha256_file(npy) != rec["sha256"]:
                raise GenerateError(f"{npy} does not match the sha256 in its record: delete it and its .json and "
                                    "rerun to compute it again")
            s0, s1 = shard_bounds(i, S, N)
            merged[s0:s1] = np.load(npy)
            records.append(rec)
        merged.flush()
    except BaseException:
        del merged
        os.remove(tmp)
        raise
    del merged
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(out)
    return records


def run(args) -> dict:
    """``gmm-triton generate``: returns the manifest (on every rank; only rank 0's holds the merge)."""
    if args.batch_size % args.model_batch or args.shard_size % args.model_batch:
        raise GenerateError(f"--batch-size ({args.batch_size}) and --shard-size ({args.shard_size}) must be "
                            f"multiples of --model-batch ({args.model_batch})")
    t0 = time.perf_counter()
    with distributed(args.device, args.timeout_min) as r:
        model, sched, shape, ident = build(args, r.device)
        cfg = run_config(args, sched, shape, ident, r.device)
        commit = _commit()
        try:
            state = {"pending": prepare(args.out, cfg)} if r.rank == 0 else None
        except GenerateError as e:
            state = {"error": str(e)}
        state = _broadcast(state, r)
        if "error" in state:
            raise GenerateError(state["error"])
        runs = _my_runs(state["pending"], r)
        family = _sampler(args).family
        timing = _sample_my_shards(args, cfg, model, sched, family, runs, r, commit)
        timings = _gather(timing, r)
        if r.rank != 0:
            return {}
        if not state["pending"] and all(os.path.exists(os.path.join(args.out, f)) for f in (SAMPLES, MANIFEST)):
            print(f"{args.out} is complete: nothing to do")
            with open(os.path.join(args.out, MANIFEST)) as f:
                return json.load(f)
        t_merge = time.perf_counter()
        records = merge(args.out, cfg)
        samples = os.path.join(args.out, SAMPLES)
        manifest = {
            "format": FORMAT, "config": cfg, "samples_file": SAMPLES, "sha256": _sha256_file(samples),
            "shape": [cfg["samples"], *cfg["sample_shape"]], "seed": args.seed, "samples": args.samples,
            "world_size": r.world, "batch_size": args.batch_size, "commit": commit,
            "sessions": sorted({(rec["world_size"], rec["batch_size"], rec["commit"] or "") for rec in records}),
            "shards": records,
            "timings": {"ranks": timings, "merge_seconds": time.perf_counter() - t_merge,
                        "wall_seconds": time.perf_counter() - t0},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        _write_json(os.path.join(args.out, MANIFEST), manifest)
        done = sum(t["samples"] for t in timings)
        print(f"wrote {samples} [{', '.join(map(str, manifest['shape']))}] and {MANIFEST}: {done} samples computed "
              f"now by {r.world} process(es), {len(records)} shards, sha256 {manifest['sha256'][:16]}…")
        return manifest


def main(args) -> int:
    """``gmm-triton generate``: a user's mistake ends in one error line (exit 2), not a traceback."""
    try:
        run(args)
    except GenerateError as e:
        print(f"gmm-triton generate: error: {e}", file=sys.stderr)
        return 2
    return 0
