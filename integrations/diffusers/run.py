"""diffusers' own tests (the 58eb52c0 snapshot in shared/vendor/) with stock diffusers and with our schedulers swapped
in (swap.py), offline; writes the pass counts to results.json and the README's table from them.

    python integrations/diffusers/run.py          every selection in every mode; writes results.json and README's table
                                                  (hours on 2 cores: the flow selection's stock run alone ~1 h)
    ... --quick --check                           the quick selections (make test-integrations), then fail if ours
                                                  fails a test that stock passes (except, in Philox mode, the listed
                                                  value tests that compare against diffusers' own noise and the
                                                  listed tolerances stock meets only with some noise), or
                                                  DDIMSchedulerTest is not all green
    ... --readme                                  rewrite README.md's table from the committed results.json

The snapshot's tests are diffusers' at 0.40.0.dev0, run against the installed 0.42.1: every count compares ours with
stock on the same selection, and only tests that pass with stock count. Modes: "stock"; "torch" (ours,
noise_source="torch": diffusers' noise); "philox" (ours, in-kernel Philox noise: the default). Variants: the tests
as written ("default"), and with the stochastic paths forced on ("stochastic": every DDIM step at η = 1, flows with
stochastic_sampling=True, which ours runs as RFIM with η = 1), where the noise source matters.

Every entry also says how many of stock's passes step through the swapped scheduler (a test that passes without
calling ``step`` checks nothing of ours), and why each stock failure fails (swap.py's log): the hub repositories a test
asked for offline, else its exception. The flow selection is every fast pipeline test file of the snapshot whose
components build a FlowMatchEulerDiscreteScheduler; offline, most of their tests stop at a hub tokenizer or text
encoder with stock diffusers, so ours runs only the tests stock passes (the rest cannot count), and a file none of
whose stock passes steps the scheduler is listed as excluded, with the causes of its failures. The "flow-synthetic"
selections (SD3, Flux, Chroma; then "flow-synthetic-<group>", one family each) run those tests with the hub
repositories they ask for served from a local hub cache that hub_fixtures.py writes (synthetic tokenizers and random
tiny text encoders, the same for stock and ours). The "ddim-<group>" selections do the same for the DDIM pipelines
beyond the offline "pipelines" files (PixArt, CogVideoX, Stable Diffusion 1 / 2, ControlNet, AnimateDiff, ...).
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
from integrations.diffusers import hub_fixtures  # noqa: E402
from integrations.vendor import unpack  # noqa: E402

SNAPSHOT = "diffusers-tests-58eb52c0.tar.gz"
MODES = ("stock", "torch", "philox")
SCHEDULER_FILES = ["tests/schedulers/test_scheduler_ddim.py"]
# fast pipeline tests whose dummy components build a DDIMScheduler and that run offline (the FlowMatchEulerDiscrete-
# Scheduler pipelines are the flow selection: flow_files())
PIPELINE_FILES = [
    "tests/pipelines/ddim/test_ddim.py",
    "tests/pipelines/kandinsky2_2/test_kandinsky.py",
    "tests/pipelines/kandinsky2_2/test_kandinsky_img2img.py",
    "tests/pipelines/latent_diffusion/test_latent_diffusion.py",
    "tests/pipelines/stable_diffusion/test_stable_diffusion.py",
]
QUICK_FILES = ["tests/pipelines/ddim/test_ddim.py"]  # offline, the flow pipelines' tests need hub tokenizers
FLOW = "flow"  # the files are found in the snapshot: flow_files()
# flow pipelines whose fast tests ask the hub only for tiny-random-clip / tiny-random-t5, which hub_fixtures.py writes
# (synthetic) into a local hub cache: SD3 and Flux, and Chroma (T5 only, another transformer)
FLOW_SYNTHETIC_FILES = [
    "tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py",
    "tests/pipelines/flux/test_pipeline_flux.py",
    "tests/pipelines/chroma/test_pipeline_chroma.py",
]
# the other flow pipelines whose fast tests ask the hub only for repositories hub_fixtures.py builds (those two; for
# AuraFlow also tiny-random-umt5; Gemma, Llama and Qwen tokenizers for others), by family; each group is a pair of selections
# (as written, stochastic), "flow-synthetic-<group>-default" and "flow-synthetic-<group>", so that a group reruns alone
FLOW_SYNTHETIC_GROUPS = {
    "sd3": [
        "tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3_img2img.py",
        "tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3_inpaint.py",
        "tests/pipelines/controlnet_sd3/test_controlnet_sd3.py",
        "tests/pipelines/controlnet_sd3/test_controlnet_inpaint_sd3.py",
        "tests/pipelines/pag/test_pag_sd3.py",
        "tests/pipelines/pag/test_pag_sd3_img2img.py",
    ],
    "flux": [
        "tests/pipelines/flux/test_pipeline_flux_img2img.py",
        "tests/pipelines/flux/test_pipeline_flux_inpaint.py",
        "tests/pipelines/flux/test_pipeline_flux_fill.py",
        "tests/pipelines/flux/test_pipeline_flux_kontext.py",
        "tests/pipelines/flux/test_pipeline_flux_kontext_inpaint.py",
        "tests/pipelines/flux/test_pipeline_flux_control.py",
        "tests/pipelines/flux/test_pipeline_flux_control_img2img.py",
        "tests/pipelines/flux/test_pipeline_flux_control_inpaint.py",
    ],
    "flux-more": [
        "tests/pipelines/controlnet_flux/test_controlnet_flux.py",
        "tests/pipelines/controlnet_flux/test_controlnet_flux_img2img.py",
        "tests/pipelines/controlnet_flux/test_controlnet_flux_inpaint.py",
        "tests/pipelines/chroma/test_pipeline_chroma_img2img.py",
        "tests/pipelines/visualcloze/test_pipeline_visualcloze_combined.py",
        "tests/pipelines/visualcloze/test_pipeline_visualcloze_generation.py",
    ],
    "video": [
        "tests/pipelines/wan/test_wan.py",
        "tests/pipelines/wan/test_wan_image_to_video.py",
        "tests/pipelines/wan/test_wan_vace.py",
        "tests/pipelines/wan/test_wan_animate.py",
        "tests/pipelines/ltx/test_ltx.py",
        "tests/pipelines/ltx/test_ltx_condition.py",
        "tests/pipelines/ltx/test_ltx_image2video.py",
        "tests/pipelines/mochi/test_mochi.py",
    ],
    "t5-other": [
        "tests/pipelines/cosmos/test_cosmos2_text2image.py",
        "tests/pipelines/cosmos/test_cosmos2_video2world.py",
        "tests/pipelines/chronoedit/test_chronoedit.py",
        "tests/pipelines/motif_video/test_motif_video.py",
        "tests/pipelines/motif_video/test_motif_video_image2video.py",
        "tests/pipelines/bria/test_pipeline_bria.py",
        "tests/pipelines/bria_fibo/test_pipeline_bria_fibo.py",
        "tests/pipelines/bria_fibo_edit/test_pipeline_bria_fibo_edit.py",
        "tests/pipelines/longcat_audio_dit/test_longcat_audio_dit.py",
    ],
    "auraflow": ["tests/pipelines/aura_flow/test_pipeline_aura_flow.py"],  # and tiny-random-umt5
    "gemma": [  # only dummy-gemma (a tokenizer; the Gemma text encoders are built from configs)
        "tests/pipelines/lumina2/test_pipeline_lumina2.py",
        "tests/pipelines/lumina/test_lumina_nextdit.py",
        "tests/pipelines/sana/test_sana.py",
        "tests/pipelines/sana/test_sana_controlnet.py",
        "tests/pipelines/pag/test_pag_sana.py",
        "tests/pipelines/sana_video/test_sana_video_i2v.py",
        "tests/pipelines/prx/test_pipeline_prx.py",
    ],
    "llama": [  # dummy-hunyaunvideo's Llama tokenizer / tiny-random-LlamaForCausalLM, beside the two
        "tests/pipelines/hunyuan_video/test_hunyuan_video.py",
        "tests/pipelines/hunyuan_video/test_hunyuan_image2video.py",
        "tests/pipelines/hunyuan_video/test_hunyuan_skyreels_image2video.py",
        "tests/pipelines/hidream_image/test_pipeline_hidream.py",
    ],
    # only tiny-random-Qwen2VLForConditionalGeneration's tokenizer (text encoders built from configs); not Ovis, whose
    # text encoder is sized tokenizer.vocab_size + 4: the real vocabulary's 151643 regular tokens, not the synthetic's
    "qwen": [
        "tests/pipelines/qwenimage/test_qwenimage.py",
        "tests/pipelines/qwenimage/test_qwenimage_img2img.py",
        "tests/pipelines/qwenimage/test_qwenimage_inpaint.py",
        "tests/pipelines/qwenimage/test_qwenimage_controlnet.py",
        "tests/pipelines/z_image/test_z_image.py",
        "tests/pipelines/z_image/test_z_image_img2img.py",
        "tests/pipelines/z_image/test_z_image_inpaint.py",
        "tests/pipelines/flux2/test_pipeline_flux2_klein.py",
        "tests/pipelines/flux2/test_pipeline_flux2_klein_inpaint.py",
        "tests/pipelines/flux2/test_pipeline_flux2_klein_kv.py",
        "tests/pipelines/krea2/test_krea2.py",
        "tests/pipelines/hunyuan_image_21/test_hunyuanimage.py",
    ],
    "qwen-vl": [  # the same repository's Qwen2-VL processor (AutoProcessor / Qwen2VLProcessor / Qwen3VLProcessor)
        "tests/pipelines/kandinsky5/test_kandinsky5.py",
        "tests/pipelines/kandinsky5/test_kandinsky5_t2i.py",
        "tests/pipelines/kandinsky5/test_kandinsky5_i2i.py",
        "tests/pipelines/kandinsky5/test_kandinsky5_i2v.py",
        "tests/pipelines/qwenimage/test_qwenimage_edit.py",
        "tests/pipelines/qwenimage/test_qwenimage_edit_plus.py",
        "tests/pipelines/nucleusmoe_image/test_nucleusmoe_image.py",
    ],
}
# the fast pipeline tests whose dummy components build a DDIMScheduler and whose hub repositories hub_fixtures.py
# builds (beyond the offline PIPELINE_FILES), by family, each group a pair of selections as the flow groups are:
# "ddim-<group>-default" (as written) and "ddim-<group>" (every DDIM step at η = 1). Left out: the
# Kandinsky 2.1 files (YiYiXu/tiny-random-mclip-base) and AudioLDM 2 (tiny-random-roberta, tiny-random-T5Model), which
# hub_fixtures.py does not build; test_pipelines.py / test_pipeline_utils.py (loading and saving, not sampling)
DDIM_GROUPS = {
    "t5": [  # tiny-random-t5 only: PixArt-α / Σ, CogVideoX, Allegro, Latte, ConsisID, CogView3-Plus
        "tests/pipelines/pixart_alpha/test_pixart.py",
        "tests/pipelines/pixart_sigma/test_pixart.py",
        "tests/pipelines/pag/test_pag_pixart_sigma.py",
        "tests/pipelines/cogvideo/test_cogvideox.py",
        "tests/pipelines/cogvideo/test_cogvideox_image2video.py",
        "tests/pipelines/cogvideo/test_cogvideox_video2video.py",
        "tests/pipelines/cogvideo/test_cogvideox_fun_control.py",
        "tests/pipelines/allegro/test_allegro.py",
        "tests/pipelines/latte/test_latte.py",
        "tests/pipelines/consisid/test_consisid.py",
        "tests/pipelines/cogview3/test_cogview3plus.py",
    ],
    "sd": [  # tiny-random-clip: Stable Diffusion 1 / 2 and what builds on its UNet (SD 1 and LDM are offline
        # PIPELINE_FILES too, where their tests that load tiny-random-clip fail for stock and ours alike)
        "tests/pipelines/stable_diffusion/test_stable_diffusion.py",
        "tests/pipelines/stable_diffusion_2/test_stable_diffusion.py",
        "tests/pipelines/stable_diffusion_2/test_stable_diffusion_v_pred.py",
        "tests/pipelines/stable_diffusion_2/test_stable_diffusion_upscale.py",
        "tests/pipelines/latent_diffusion/test_latent_diffusion.py",
        "tests/pipelines/stable_unclip/test_stable_unclip.py",
        "tests/pipelines/stable_unclip/test_stable_unclip_img2img.py",
        "tests/pipelines/marigold/test_marigold_intrinsics.py",
        "tests/pipelines/pag/test_pag_sd.py",
    ],
    "controlnet-animatediff": [  # tiny-random-clip: ControlNet and AnimateDiff (SD and SDXL) on Stable Diffusion
        "tests/pipelines/controlnet/test_controlnet.py",
        "tests/pipelines/controlnet/test_controlnet_img2img.py",
        "tests/pipelines/controlnet/test_controlnet_inpaint.py",
        "tests/pipelines/pag/test_pag_controlnet_sd.py",
        "tests/pipelines/pag/test_pag_controlnet_sd_inpaint.py",
        "tests/pipelines/animatediff/test_animatediff.py",
        "tests/pipelines/animatediff/test_animatediff_sdxl.py",
        "tests/pipelines/animatediff/test_animatediff_controlnet.py",
        "tests/pipelines/animatediff/test_animatediff_sparsectrl.py",
        "tests/pipelines/animatediff/test_animatediff_video2video.py",
        "tests/pipelines/animatediff/test_animatediff_video2video_controlnet.py",
        "tests/pipelines/pag/test_pag_animatediff.py",
    ],
    "offline": [  # no hub repository at all, beyond PIPELINE_FILES
        "tests/pipelines/kandinsky2_2/test_kandinsky_controlnet.py",
        "tests/pipelines/kandinsky2_2/test_kandinsky_controlnet_img2img.py",
        "tests/pipelines/kandinsky2_2/test_kandinsky_inpaint.py",
        "tests/pipelines/latent_diffusion/test_latent_diffusion_superresolution.py",
        "tests/pipelines/dit/test_dit.py",
        "tests/pipelines/diffusion_gemma/test_diffusion_gemma.py",
    ],
}
# the hub repositories a group's tests ask for, where they are not the two
FLOW_SYNTHETIC_HUB = {"auraflow": (hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO, hub_fixtures.UMT5_REPO),
                      "gemma": (hub_fixtures.GEMMA_REPO,),
                      "llama": (hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO, hub_fixtures.HUNYUAN_REPO,
                                hub_fixtures.LLAMA_CAUSAL_REPO),
                      "qwen": (hub_fixtures.QWEN2_REPO,), "qwen-vl": (hub_fixtures.CLIP_REPO, hub_fixtures.QWEN2_REPO)}


class Selection(NamedTuple):
    name: str
    files: list  # test files (relative to the snapshot's root); FLOW: flow_files()
    stochastic: bool  # stochastic paths forced on
    quick: bool  # in the quick run (make test-integrations)
    ours_on_stock_passes: bool = False  # ours runs only the tests that stock passes
    hub: tuple = ()  # hub repositories served, synthetic, from hub_fixtures.py's local cache (every mode alike)


SELECTIONS = [
    Selection("schedulers", SCHEDULER_FILES, False, True),
    Selection("pipelines-quick", QUICK_FILES, True, True),
    Selection("pipelines", PIPELINE_FILES, True, False),
    Selection("pipelines-bf16", ["test_gmm_bf16_pipelines.py"], True, True),  # bf16_pipelines.py, in the snapshot
    Selection(FLOW, FLOW, True, False, ours_on_stock_passes=True),
    # as written (ours steps deterministically, as stock does) and with stochastic_sampling forced on (stock then
    # draws its step noise from the global RNG: the pipelines pass no generator to step)
    Selection("flow-synthetic-default", FLOW_SYNTHETIC_FILES, False, False, ours_on_stock_passes=True,
              hub=(hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO)),
    Selection("flow-synthetic", FLOW_SYNTHETIC_FILES, True, False, ours_on_stock_passes=True,
              hub=(hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO)),
] + [Selection(f"flow-synthetic-{group}{'' if stochastic else '-default'}", files, stochastic, False,
               ours_on_stock_passes=True,
               hub=FLOW_SYNTHETIC_HUB.get(group, (hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO)))
     for group, files in FLOW_SYNTHETIC_GROUPS.items() for stochastic in (False, True)
] + [Selection(f"ddim-{group}{'' if stochastic else '-default'}", files, stochastic, False, ours_on_stock_passes=True,
               hub=() if group == "offline" else (hub_fixtures.CLIP_REPO, hub_fixtures.T5_REPO))
     for group, files in DDIM_GROUPS.items() for stochastic in (False, True)]
# value tests that compare a stochastic run against numbers diffusers' own torch noise produced: in Philox mode the
# noise is other (equally distributed) numbers, so these may differ there, and only there
PHILOX_VALUE_TESTS = ("test_inference", "test_full_loop", "test_stable_diffusion_ddim", "test_ddim")
# tests whose tolerance a stochastic run meets only with some noise: stock itself passes them with its own numbers and
# fails them with others (measured by shifting the test's seed), so in Philox mode, with other numbers, they may fail
# alike; each with what was measured
PHILOX_NOISE_TOLERANCE = {
    "tests.pipelines.hidream_image.test_pipeline_hidream.HiDreamImagePipelineFastTests::"
    "test_attention_slicing_forward_pass":
        "max |sliced - unsliced| < 1e-3 after forced stochastic sampling: stock 0.00087 at the test's seed 0 but "
        "0.00102, 0.00107, 0.00102, 0.00112 at seeds 1-4; ours with diffusers' noise 0.00087 (the same as stock); "
        "Philox 0.00105, 0.00108, 0.00103, 0.00100, 0.00109 at seeds 0-4 (2026-12-06)",
}
# known breaks, tolerated by --check but printed and listed in README (none at present)
OPEN_BREAKS: dict = {}
RESULTS = HERE / "results.json"
README = REPO / "README.md"
BEGIN, END = "<!-- diffusers-suite:begin (integrations/diffusers/run.py --readme) -->", "<!-- diffusers-suite:end -->"


def flow_files(root: pathlib.Path) -> list:
    """Every fast pipeline test file (tests/pipelines/**/test_*.py) that builds a FlowMatchEulerDiscreteScheduler."""
    return sorted(str(f.relative_to(root)) for f in (root / "tests" / "pipelines").rglob("test_*.py")
                  if "FlowMatchEulerDiscreteScheduler(" in f.read_text())


def _outcomes(junit: pathlib.Path) -> dict:
    """test id -> passed | failed | skipped (errors count as failed)."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        kids = {c.tag for c in case}
        out[tid] = "failed" if kids & {"failure", "error"} else "skipped" if "skipped" in kids else "passed"
    return out


def _pytest(tests, mode: str, sel: "Selection", root: pathlib.Path, out: pathlib.Path) -> subprocess.Popen:
    """pytest on ``tests`` (files or node ids) in ``mode``, writing ``out``.xml (junit) and ``out``.json (swap.py's
    log); node ids go through a file (``@args``), there can be thousands. A selection with synthetic hub repositories
    reads the hub cache from hub_fixtures.py's folder (built by run_selection), offline as every run."""
    env = dict(os.environ, GMM_SWAP=mode, GMM_STOCHASTIC=str(int(sel.stochastic)), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", GMM_SWAP_LOG=str(out.with_suffix(".json")))
    if sel.hub:
        env["HF_HUB_CACHE"] = str(hub_fixtures.DEFAULT_CACHE)
    args = out.with_suffix(".args")
    args.write_text("\n".join(tests) + "\n")
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "swap", "-p", "no:cacheprovider",
                             "-W", "ignore", f"--junitxml={out.with_suffix('.xml')}", f"@{args}"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _counts(outcomes: dict) -> dict:
    return {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "skipped")}


def _run_modes(modes, tests, sel: Selection, root: pathlib.Path, tmp: pathlib.Path, jobs: int, per_mode, logs,
               seconds) -> None:
    """Runs ``tests`` in each of ``modes`` into the three dicts: ``jobs`` pytest processes at a time (one thread
    each); with more jobs than modes, each mode's tests are split into shards (round robin) run side by side."""
    shards = max(1, jobs // len(modes))
    tasks = [(m, i, tests[i::shards]) for m in modes for i in range(shards) if tests[i::shards]]
    for m in modes:
        per_mode[m], logs[m] = {}, {"nodeids": {}, "stepped": [], "failed": {}}
    start: dict = {}
    while tasks:
        batch, tasks = tasks[:jobs], tasks[jobs:]
        t0 = time.monotonic()
        procs = [(m, i, _pytest(part, m, sel, root, tmp / f"{m}-{i}")) for m, i, part in batch]
        for m, i, p in procs:
            if p.wait() not in (0, 1) or not (tmp / f"{m}-{i}.xml").exists():  # 1: some tests failed
                raise SystemExit(f"{sel.name} [{m}] shard {i}: pytest exited with {p.returncode} (a crash, or no "
                                 f"tests collected)")
            start[m] = min(start.get(m, t0), t0)
            seconds[m] = time.monotonic() - start[m]  # wall time, first shard's start to last shard's end
            outcomes = _outcomes(tmp / f"{m}-{i}.xml")
            per_mode[m].update(outcomes)
            part = json.loads((tmp / f"{m}-{i}.json").read_text())
            logs[m]["nodeids"].update(part["nodeids"])
            logs[m]["stepped"] += part["stepped"]
            logs[m]["failed"].update(part["failed"])
            print(f"{sel.name:22s} {m:7s} shard {i}: {_counts(outcomes)} in {time.monotonic() - t0:.0f} s",
                  flush=True)


def _commit() -> str:
    """The checkout's commit, with "-dirty" when tracked files differ from it (results.json itself aside)."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    return head + ("-dirty" if any(not line.endswith(RESULTS.name) for line in status) else "")


def _versions(*packages) -> dict:
    """package -> installed version (None where it is not installed)."""
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def _file_of(tid: str, nodeids: dict) -> str:
    return nodeids.get(tid, tid).split("::")[0]


def stock_failures(outcomes: dict, log: dict) -> dict:
    """file -> the causes of its stock failures: {"hub": {repo: tests}, "errors": {exception: tests}}."""
    out: dict = {}
    for tid, o in outcomes.items():
        if o != "failed":
            continue
        causes = out.setdefault(_file_of(tid, log["nodeids"]), {"hub": collections.Counter(),
                                                                  "errors": collections.Counter()})
        cause = log["failed"].get(tid, {"error": "no cause recorded"})
        for repo in cause.get("hub", []):
            causes["hub"][repo] += 1
        if "error" in cause:
            causes["errors"][cause["error"]] += 1
    return {f: {k: dict(sorted(v.items())) for k, v in c.items() if v} for f, c in sorted(out.items())}


def run_selection(sel: Selection, root: pathlib.Path, jobs: int, commit: str) -> dict:
    """The selection in every mode; its entry of results.json (``commit``: the checkout's when the run began)."""
    files = flow_files(root) if sel.files == FLOW else sel.files
    hub = hub_fixtures.build_cache(hub_fixtures.DEFAULT_CACHE, sel.hub) if sel.hub else {}
    per_mode, logs, seconds = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if sel.ours_on_stock_passes:
            _run_modes(["stock"], files, sel, root, tmp, jobs, per_mode, logs, seconds)
            passed = [logs["stock"]["nodeids"][t] for t, o in per_mode["stock"].items() if o == "passed"]
            _run_modes([m for m in MODES if m != "stock"], passed, sel, root, tmp, jobs, per_mode, logs, seconds)
        else:
            _run_modes(MODES, files, sel, root, tmp, jobs, per_mode, logs, seconds)
    stock_pass = {t for t, o in per_mode["stock"].items() if o == "passed"}
    entry = {"files": files, "stochastic": sel.stochastic, "seconds": {m: round(s) for m, s in seconds.items()},
             "ours_on_stock_passes": sel.ours_on_stock_passes, "commit": commit,
             "versions": _versions("diffusers", "transformers", "torch")}
    if hub:
        entry["synthetic_hub"] = hub  # repo id -> revision of hub_fixtures.py's build
    for mode in MODES:
        entry[mode] = _counts(per_mode[mode])
        if mode != "stock":
            entry[mode]["passed_of_stock_passed"] = sum(per_mode[mode].get(t) == "passed" for t in stock_pass)
            entry[mode]["regressions"] = sorted(t for t in stock_pass if per_mode[mode].get(t) != "passed")
            stepped = set(logs[mode]["stepped"])
            entry[mode]["stepped_of_stock_passed"] = sum(per_mode[mode].get(t) == "passed" and t in stepped
                                                         for t in stock_pass)
    entry["stock_failures"] = stock_failures(per_mode["stock"], logs["stock"])
    stepping = collections.Counter(_file_of(t, logs["torch"]["nodeids"]) for t in logs["torch"]["stepped"]
                                   if t in stock_pass)
    by_file = {f: collections.Counter() for f in files}
    for t, o in per_mode["stock"].items():
        by_file.setdefault(_file_of(t, logs["stock"]["nodeids"]), collections.Counter())[o] += 1
    entry["stock_by_file"] = {f: {"passed": c["passed"], "failed": c["failed"], "skipped": c["skipped"],
                                  "stepping": stepping[f]} for f, c in by_file.items()}
    entry["excluded"] = {f: entry["stock_failures"].get(f, {}) for f in files if not stepping[f]}
    ddim = {t for t in per_mode["stock"] if ".DDIMSchedulerTest::" in t}
    if ddim:
        entry["DDIMSchedulerTest"] = {m: f"{sum(per_mode[m].get(t) == 'passed' for t in ddim)}/{len(ddim)}"
                                      for m in MODES}
    return entry


def _philox_why(test: str):
    """Why a Philox-mode failure of a test that stock passes is tolerated (the README prints it), or None."""
    if test.rsplit("::", 1)[-1] in PHILOX_VALUE_TESTS:
        return "a value test against numbers from diffusers' own noise"
    if test in PHILOX_NOISE_TOLERANCE:
        return f"a tolerance stock meets only with some noise: {PHILOX_NOISE_TOLERANCE[test]}"
    if test in OPEN_BREAKS:
        return f"open: {OPEN_BREAKS[test]}"
    return None


def unexplained(results: dict) -> list:
    """Regressions that are not allowed: any in torch mode; in Philox mode, any without a _philox_why."""
    bad = []
    for name, entry in results["selections"].items():
        bad += [f"{name} [torch] {t}" for t in entry["torch"]["regressions"]]
        bad += [f"{name} [philox] {t}" for t in entry["philox"]["regressions"] if _philox_why(t) is None]
        if "DDIMSchedulerTest" in entry:
            bad += [f"{name} DDIMSchedulerTest {m}: {v}" for m, v in entry["DDIMSchedulerTest"].items()
                    if v.split("/")[0] != v.split("/")[1]]
    return bad


def _ordered(results: dict) -> list:
    order = [n for n, *_ in SELECTIONS]
    return sorted(results["selections"].items(), key=lambda kv: order.index(kv[0]))


def table(results: dict) -> str:
    """The README table: per selection and mode, tests passed (of those stock passes) and the Philox-only breaks."""
    lines = ["| selection | tests | stock passes | of them, stepping the scheduler | ours, `noise_source=\"torch\"` "
             "| ours, Philox noise |", "| --- | --- | --- | --- | --- | --- |"]
    for name, e in _ordered(results):
        total = sum(e["stock"][k] for k in ("passed", "failed", "skipped"))
        cells = [f"{e[m]['passed_of_stock_passed']} / {e['stock']['passed']}" for m in ("torch", "philox")]
        n = len(e["files"])
        lines.append(f"| {name} ({n} file{'s' * (n != 1)}{', forced η = 1 / stochastic' if e['stochastic'] else ''})"
                     f" | {total} | {e['stock']['passed']} | {e['torch'].get('stepped_of_stock_passed', '—')} "
                     f"| {cells[0]} | {cells[1]} |")
    notes = []
    only_passes = [name for name, e in _ordered(results) if e.get("ours_on_stock_passes")]
    if only_passes:
        notes.append(f"{', '.join(only_passes)}: ours ran only the tests that stock passes.")
    by_hub: dict = {}  # the selections that share a set of synthetic hub repositories, one note each
    for name, e in _ordered(results):
        if e.get("synthetic_hub"):
            by_hub.setdefault(tuple(sorted(e["synthetic_hub"])), []).append(name)
    for repos, names in by_hub.items():
        notes.append(f"{', '.join(names)}: the hub repositories {', '.join(f'`{r}`' for r in repos)} are synthetic "
                     f"(integrations/diffusers/hub_fixtures.py: tokenizers built from scratch, random tiny text "
                     f"encoders), served offline from a local hub cache to stock and ours alike; value tests against "
                     f"diffusers' recorded slices may fail for both, and only stock's passes count.")
    for name, e in _ordered(results):
        if e.get("excluded"):
            notes.append(f"{name}: {excluded_summary(e)}")
        if "DDIMSchedulerTest" in e:
            notes.append(f"DDIMSchedulerTest: {e['DDIMSchedulerTest']['torch']} (torch), "
                         f"{e['DDIMSchedulerTest']['philox']} (Philox), {e['DDIMSchedulerTest']['stock']} (stock).")
        for t in e["philox"]["regressions"]:
            notes.append(f"Philox mode, {name}: `{t}` fails ({_philox_why(t) or 'unexplained'}).")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def excluded_summary(entry: dict) -> str:
    """One line on the files none of whose stock passes steps the scheduler, by what their failures asked for."""
    by_repo, by_error = collections.Counter(), collections.Counter()
    for causes in entry["excluded"].values():
        by_repo.update(causes.get("hub", {}).keys())
        if not causes.get("hub"):
            by_error[max(causes["errors"], key=causes["errors"].get) if causes.get("errors")
                     else "no failure (its tests pass without calling step)"] += 1
    parts = [f"`{r}` {n}" for r, n in sorted(by_repo.items(), key=lambda kv: (-kv[1], kv[0]))]
    parts += [f"{err} {n}" for err, n in sorted(by_error.items(), key=lambda kv: (-kv[1], kv[0]))]
    return (f"{len(entry['excluded'])} of {len(entry['files'])} files have no stock pass that steps the scheduler "
            f"(excluded; results.json lists every file's failure causes); files per hub repository their tests stop "
            f"at offline (or, with none, their commonest error): {'; '.join(parts)}.")


def write_readme(results: dict) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail on a regression against stock")
    ap.add_argument("--quick", action="store_true", help="only the selections marked quick (make test-integrations); "
                                                         "results.json is left as it is")
    ap.add_argument("--jobs", type=int, default=1, help="modes run at a time (one thread each)")
    ap.add_argument("--only", action="append", help="run only this selection (repeatable); its entries replace "
                                                    "those in results.json")
    ap.add_argument("--readme", action="store_true", help="only rewrite README.md's table from results.json")
    args = ap.parse_args(argv)
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    root = unpack(SNAPSHOT) / "diffusers-tests"
    (root / "pytest.ini").write_text("[pytest]\n")  # the snapshot's own settings, not this repository's
    (root / "test_gmm_bf16_pipelines.py").write_text((HERE / "bf16_pipelines.py").read_text())
    commit = _commit()  # before anything runs (the run itself rewrites README.md)
    # a run that writes results.json starts from its entries and replaces each selection's as it finishes, written at
    # once: an interrupted run keeps what it finished and the entries it did not reach (selections no longer defined
    # drop); --quick checks only what it ran
    order = [n for n, *_ in SELECTIONS]
    results = {"snapshot": SNAPSHOT, "selections": {}}
    if RESULTS.exists() and not args.quick:
        results["selections"] = {k: v for k, v in json.loads(RESULTS.read_text())["selections"].items() if k in order}
    for sel in SELECTIONS:
        if (args.only and sel.name in args.only) or (not args.only and (sel.quick or not args.quick)):
            results["selections"][sel.name] = run_selection(sel, root, args.jobs, commit)
            if not args.quick:
                results["selections"] = dict(sorted(results["selections"].items(),
                                                    key=lambda kv: order.index(kv[0])))
                RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if not args.quick:
        write_readme(results)
    print(table(results))
    bad = unexplained(results)
    for b in bad:
        print("REGRESSION:", b)
    for t, why in OPEN_BREAKS.items():
        if any(t in e["philox"]["regressions"] for e in results["selections"].values()):
            print(f"OPEN (tolerated): {t}: {why}")
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
