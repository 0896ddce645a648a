"""``gmm-triton demo | eval | sample | bench``."""
from __future__ import annotations

import argparse
import os
import sys


def _floats(s):
    return tuple(float(v) for v in s.split(","))


def _ints(s):
    return tuple(int(v) for v in s.split(","))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gmm-triton", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="DDIM vs DDIM-GMM on the embedded oracle (digits): table, grid, steps plot; "
                                    "--family cld|blur|gddim: the gDDIM tables instead")
    d.add_argument("--family", default="ddim", choices=["ddim", "cld", "blur", "gddim"],
                   help="ddim: DDIM vs DDIM-GMM; cld, blur or gddim (both): gDDIM on CLD / BDM (CPU)")
    d.add_argument("--out", default=None, help="output folder (default gmm_triton_out/demo or .../gddim)")
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--samples", type=int, default=None,
                   help="samples per sampler and seed (default 2000; gDDIM: 400 for CLD, 500 for BDM)")
    d.add_argument("--steps", type=int, default=10)
    d.add_argument("--scale", type=float, default=0.3, help="gmm_scale s of the mixture samplers")
    d.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated sampling seeds")
    d.add_argument("--quick", action="store_true", help="a tiny configuration (tests, smoke runs)")

    e = sub.add_parser("eval", help="full sweep steps × η × sampler × scale (CSV + plots; resumable)")
    e.add_argument("--out", default="gmm_triton_out/eval")
    e.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    e.add_argument("--steps", type=_ints, default=(5, 10, 20, 50))
    e.add_argument("--etas", type=_floats, default=(0.0, 0.5, 1.0))
    e.add_argument("--scales", type=_floats, default=(0.1, 0.3, 1.0, 3.0))
    e.add_argument("--samples", type=int, default=2000)
    e.add_argument("--seeds", type=_ints, default=(0, 1))
    e.add_argument("--families", default="ddim", help="comma-separated: ddim,flow")

    s = sub.add_parser("sample", help="run a local diffusers pipeline with our scheduler and save images")
    s.add_argument("--pipeline", required=True, help="a local pipeline folder (or a cached hub id)")
    s.add_argument("--out", default="gmm_triton_out/samples")
    s.add_argument("--prompt", default=None, help="for text-conditioned pipelines")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--eta", type=float, default=0.0)
    s.add_argument("--num-images", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    s.add_argument("--kernel", default="gmm", choices=["gaussian", "gmm"])
    s.add_argument("--gmm-scale", type=float, default=1.0)
    s.add_argument("--gmm-components", type=int, default=8)
    s.add_argument("--gmm-offsets", default="ortho", choices=["ortho", "rand"])
    s.add_argument("--gmm-variance", default="vub", choices=["diag", "vub", "exact"])
    s.add_argument("--gmm-shared", action="store_true")
    s.add_argument("--gmm-clip-variance", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--noise-source", default="philox", choices=["philox", "torch"])

    b = sub.add_parser("bench", help="kernel throughput and step latency vs diffusers and torch.compile")
    from . import bench

    bench.add_arguments(b)

    args = p.parse_args(argv)
    if args.cmd == "demo" and args.family != "ddim":
        from .gddim.demo import run_gddim_demo

        run_gddim_demo(args.out or "gmm_triton_out/gddim", family=args.family, n=args.samples, quick=args.quick)
    elif args.cmd == "demo":
        from .demo import run_demo

        run_demo(args.out or "gmm_triton_out/demo", device=args.device, n=args.samples or 2000, steps=args.steps,
                 scale=args.scale, seeds=args.seeds, quick=args.quick)
    elif args.cmd == "eval":
        from .demo import run_eval

        run_eval(args.out, device=args.device, steps=args.steps, etas=args.etas, scales=args.scales,
                 n=args.samples, seeds=args.seeds, families=tuple(args.families.split(",")))
    elif args.cmd == "sample":
        return run_sample(args)
    else:
        return bench.main(args)
    return 0


def run_sample(args) -> int:
    """Loads a diffusers pipeline, swaps in our scheduler (DDIM-family or flow-matching), saves PNGs."""
    import inspect

    import torch
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    from .schedulers import GMMDDIMScheduler

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    pipe = DiffusionPipeline.from_pretrained(args.pipeline).to(device)
    opts = dict(kernel=args.kernel, noise_source=args.noise_source, gmm_scale=args.gmm_scale,
                gmm_components=args.gmm_components, gmm_offsets=args.gmm_offsets, gmm_variance=args.gmm_variance,
                gmm_shared=args.gmm_shared, gmm_clip_variance=args.gmm_clip_variance)
    call = dict(num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(args.seed),
                output_type="pil")
    params = inspect.signature(pipe.__call__).parameters
    if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        from .schedulers.flow import GMMFlowMatchScheduler

        pipe.scheduler = GMMFlowMatchScheduler.from_config(pipe.scheduler.config, eta=args.eta, **opts)
    else:
        # Assigned after construction: some pipelines' constructors convert any scheduler back to DDIM.
        pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, **opts)
        if "eta" in params:
            call["eta"] = args.eta
    if "batch_size" in params:
        call["batch_size"] = args.num_images
    elif "num_images_per_prompt" in params:
        call["num_images_per_prompt"] = args.num_images
    if "prompt" in params:
        if args.prompt is None:
            print("this pipeline needs --prompt", file=sys.stderr)
            return 2
        call["prompt"] = args.prompt
    images = pipe(**call).images
    os.makedirs(args.out, exist_ok=True)
    for i, im in enumerate(images):
        im.save(os.path.join(args.out, f"sample_{i:03d}.png"))
    print(f"wrote {len(images)} images to {args.out} with {type(pipe.scheduler).__name__}({args.kernel})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
