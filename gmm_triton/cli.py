"""``gmm-triton demo | eval | sample | generate | bench | inspect | train | distill | evidence``.

The commands live in the two layers above the runtime library: the lab (``gmm_triton.lab``: demo, eval, generate,
train, distill) and the tools (``gmm_triton.tools``: bench, inspect). Only the module of the command that runs is
imported, so ``gmm-triton --help`` and the missing-extra check load neither torch nor triton."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from .lab.cli_args import add_mixture_arguments, eta, etas, families, nonneg_float, positive_int, scales, seed, seeds, \
    steps_list

# what `pip install "gmm-triton[demo]"` adds, by import name: plots (demo, eval, bench, distill) and the digits data
# set that the oracle samplers use (demo, eval, bench's end-to-end loops, train, distill)
DEMO_EXTRAS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn"}


def _missing_extras(argv) -> tuple:
    """(command, missing packages) for the command in ``argv``: a lookup, no import, before torch is imported."""
    cmd = _command(argv)
    if cmd not in ("demo", "eval", "bench", "train", "distill", "evidence") or "-h" in argv or "--help" in argv:
        return cmd, []
    modules = ("matplotlib",) if cmd == "bench" and "--no-e2e" in argv else DEMO_EXTRAS
    return cmd, [DEMO_EXTRAS[m] for m in modules if importlib.util.find_spec(m) is None]


# command -> (module defining add_arguments(parser) and main(args) -> int, help)
_MODULE_COMMANDS = {
    "generate": (".lab.generate", "N samples of the oracle or a pipeline, sharded over torchrun processes, resumable, "
                                  "the same bytes for any process count and batch size"),
    "bench": (".tools.bench", "kernel throughput and step latency vs diffusers and torch.compile"),
    "evidence": (".lab.evidence.cli", "DDIM vs DDIM-GMM on real digits (MNIST-5k) with trained diffusers UNets: "
                                      "train, sweep, CSV, plot, README table (make evidence)"),
    "inspect": (".tools.inspect", "compile every kernel specialisation for sm_80/sm_90a/sm_100a (no GPU needed): "
                                  "registers, spills, access widths, SASS per element, predicted bandwidth"),
}


def _command(argv) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv=()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmm-triton", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="DDIM vs DDIM-GMM on the embedded oracle (digits): table, grid, steps plot; "
                                    "--family cld|blur|gddim: the gDDIM tables instead")
    d.add_argument("--family", default="ddim", choices=["ddim", "cld", "blur", "gddim"],
                   help="ddim: DDIM vs DDIM-GMM; cld, blur or gddim (both): gDDIM on CLD / BDM (CPU)")
    d.add_argument("--out", default=None, help="output folder (default gmm_triton_out/demo or .../gddim)")
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--samples", type=positive_int, default=None,
                   help="samples per sampler and seed (default 2000; gDDIM: 400 for CLD, 500 for BDM)")
    d.add_argument("--steps", type=positive_int, default=10)
    d.add_argument("--scale", type=nonneg_float, default=0.3, help="gmm_scale s of the mixture samplers")
    d.add_argument("--seeds", type=seeds, default=(0, 1, 2), help="comma-separated sampling seeds")
    d.add_argument("--quick", action="store_true", help="a tiny configuration (tests, smoke runs)")
    d.add_argument("--learned-model", default="gmm_triton_out/model/model.pt",
                   help="rows for this learned model when the file exists (`gmm-triton train` makes it); '' for none")

    e = sub.add_parser("eval", help="full sweep steps × η × sampler × scale (CSV + plots; resumable)")
    e.add_argument("--out", default="gmm_triton_out/eval")
    e.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    e.add_argument("--steps", type=steps_list, default=(5, 10, 20, 50))
    e.add_argument("--etas", type=etas, default=(0.0, 0.5, 1.0))
    e.add_argument("--scales", type=scales, default=(0.1, 0.3, 1.0, 3.0))
    e.add_argument("--samples", type=positive_int, default=2000)
    e.add_argument("--seeds", type=seeds, default=(0, 1))
    e.add_argument("--families", type=families, default=("ddim",), help="comma-separated: ddim,flow")

    s = sub.add_parser("sample", help="run a local diffusers pipeline with our scheduler and save images")
    s.add_argument("--pipeline", required=True, help="a local pipeline folder (or a cached hub id)")
    s.add_argument("--out", default="gmm_triton_out/samples")
    s.add_argument("--prompt", default=None, help="for text-conditioned pipelines")
    s.add_argument("--steps", type=positive_int, default=10)
    s.add_argument("--eta", type=eta, default=0.0)
    s.add_argument("--num-images", type=positive_int, default=4)
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    s.add_argument("--kernel", default="gmm", choices=["gaussian", "gmm"])
    add_mixture_arguments(s)
    s.add_argument("--noise-source", default="philox", choices=["philox", "torch"])

    cmd = _command(argv)
    for name, (module, help_) in _MODULE_COMMANDS.items():
        if name == cmd:  # only the command that runs imports its module (and torch)
            importlib.import_module(module, __package__).add_arguments(sub.add_parser(name, help=help_))
        else:
            sub.add_parser(name, help=help_)
    if cmd in ("train", "distill"):
        from .lab.distill.cli import add_commands

        add_commands(sub)  # train, distill
    else:
        sub.add_parser("train", help="train the learned digits denoiser (residual MLP, ε and x̂₀ heads); resumable")
        sub.add_parser("distill", help="moment-matching and EM distillation on the mixture testbeds")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd, missing = _missing_extras(argv)
    if missing:  # in well under a second: gmm_triton's import is lazy and nothing heavy is loaded yet
        print(f"usage: gmm-triton {cmd} ...\ngmm-triton {cmd}: error: {cmd} needs {' and '.join(missing)}, not "
              f"installed: pip install \"gmm-triton[demo]\"", file=sys.stderr)
        raise SystemExit(2)
    p = build_parser(argv)
    args = p.parse_args(argv)
    if args.cmd == "demo" and args.family != "ddim":
        from .lab.gddim_demo import run_gddim_demo

        run_gddim_demo(args.out or "gmm_triton_out/gddim", family=args.family, n=args.samples, quick=args.quick)
    elif args.cmd == "demo":
        from .lab.demo import run_demo

        run_demo(args.out or "gmm_triton_out/demo", device=args.device, n=args.samples or 2000, steps=args.steps,
                 scale=args.scale, seeds=args.seeds, quick=args.quick, learned_model=args.learned_model)
    elif args.cmd == "eval":
        from .lab.demo import run_eval

        run_eval(args.out, device=args.device, steps=args.steps, etas=args.etas, scales=args.scales,
                 n=args.samples, seeds=args.seeds, families=args.families)
    elif args.cmd == "sample":
        return run_sample(args)
    elif args.cmd in ("train", "distill"):
        return args.func(args)
    else:
        return importlib.import_module(_MODULE_COMMANDS[args.cmd][0], __package__).main(args)
    return 0


def run_sample(args) -> int:
    """Loads a diffusers pipeline, swaps in our scheduler (DDIM-family or flow-matching), saves PNGs."""
    import inspect as pyinspect

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
    params = pyinspect.signature(pipe.__call__).parameters
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
