"""The acceptance run's tables, plots and target checks, from the ``result.json`` files under ``OUT``.

Spreads are sample standard deviations over the training seeds. A target comparison is *paired*: a student and
its teacher's baseline share the sampling seed (the same initial and step noise), and "beats" counts the seeds
whose student FD is below the baseline's; a target is met when it holds for every seed. Targets are what the
acceptance requires (the alternating students at k = 8 and 4); claims are the paper's statements checked at every
k and for both variants, reported as the seeds on which they hold (``summary.json["claims"]``: [seeds, of]). For
EMD, an iteration count to mode TV ≤ 0.05 is the first evaluation at or below it (evaluations every 1/80 of the
budget); a run that never gets there counts as not reached (∞).

``python -m gmm_triton.lab.distill.report DIR`` rewrites the tables from the results under DIR. The README's come
from a committed copy of ``summary.json`` (``docs/results/distill.json``) through :func:`render_mm` and
:func:`render_emd` (``make tables``).
"""
from __future__ import annotations

import glob
import math
import os

from ..files import atomic_write, read_json, savefig
from .loop import pyplot, write_json


def _load(pattern):
    runs = []
    for path in sorted(glob.glob(pattern)):
        runs.append(read_json(path, "a distillation result"))
    return runs


def _ms(values, fmt="{:.3g}"):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    m = sum(values) / len(values)
    if len(values) < 2:
        return fmt.format(m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    sd = 0.0 if sd < 1e-9 * max(1.0, abs(m)) else sd          # equal values up to float rounding
    return f"{fmt.format(m)} ± {fmt.format(sd)}"


def _per_seed(values, fmt="{}"):
    return ", ".join("∞" if v is None else fmt.format(v) for v in values)


def _mean(values):
    return sum(values) / len(values)


MM_TEACHERS = ("learned", "oracle")
MM_VARIANTS = ("alternating", "instant")
# the acceptance's required targets (the issue that introduced the runs): alternating students at k = 8 and 4
REQUIRED_MM_STEPS = (8, 4)


def _beats(rs, key):
    """Seeds (paired: same sampling seed) whose student FD is below the run's ``key`` baseline."""
    return sum(r["fd"] < r[key] for r in rs)


def mm_section(runs: list, many: dict):
    """The moment-matching table (one row per teacher, variant and k, then the teachers' 50-step DDIM), the
    required targets, the claims of the paper checked at every k, and the rows for summary.json, from the runs'
    results and ``many`` = {teacher: its 50-step baseline's result or None}."""
    groups = {}
    for r in runs:
        c = r["config"]
        groups.setdefault((c["teacher"], c["variant"], c["steps"]), []).append(r)
    many_by_seed = {t: {s: row["fd"] for s, row in zip(m["config"]["seeds"], m["per_seed"])} if m else {}
                    for t, m in many.items()}
    lines = ["| teacher | variant | k | student FD | teacher DDIM FD | teacher ancestral FD | student mode TV "
             "| student NLL | seeds beating DDIM | seeds beating ancestral | iterations | CPU s | wall s |",
             "|" + " --- |" * 13]
    targets, claims, rows = {}, {}, []
    order = lambda kv: (MM_TEACHERS.index(kv[0][0]), MM_VARIANTS.index(kv[0][1]), -kv[0][2])  # noqa: E731
    for (teacher, variant, k), rs in sorted(groups.items(), key=order):
        rs.sort(key=lambda r: r["config"]["seed"])
        beat_ddim, beat_anc = _beats(rs, "teacher_ddim_fd"), _beats(rs, "teacher_ancestral_fd")
        lines.append(f"| {teacher} | {variant} | {k} | {_ms([r['fd'] for r in rs])} | "
                     f"{_ms([r['teacher_ddim_fd'] for r in rs])} | {_ms([r['teacher_ancestral_fd'] for r in rs])} | "
                     f"{_ms([r['mode_tv'] for r in rs])} | {_ms([r['nll'] for r in rs])} | {beat_ddim}/{len(rs)} | "
                     f"{beat_anc}/{len(rs)} | {rs[0]['iterations']} | "
                     f"{_ms([r['cpu_seconds'] for r in rs], '{:.0f}')} | {_ms([r['seconds'] for r in rs], '{:.0f}')} |")
        rows.append({"teacher": teacher, "variant": variant, "steps": k, "seeds": [r["config"]["seed"] for r in rs],
                     "fd": [r["fd"] for r in rs], "teacher_ddim_fd": [r["teacher_ddim_fd"] for r in rs],
                     "teacher_ancestral_fd": [r["teacher_ancestral_fd"] for r in rs],
                     "iterations": rs[0]["iterations"], "cpu_seconds": [r["cpu_seconds"] for r in rs],
                     "seconds": [r["seconds"] for r in rs]})
        name = f"mm_{variant}_k{k}_{teacher}"
        claims[f"{name}_beats_teacher_ddim"] = [beat_ddim, len(rs)]
        claims[f"{name}_beats_teacher_ancestral"] = [beat_anc, len(rs)]
        seeds50 = many_by_seed[teacher]
        if all(r["config"]["seed"] in seeds50 for r in rs):
            claims[f"{name}_beats_teacher_ddim50"] = [sum(r["fd"] < seeds50[r["config"]["seed"]] for r in rs), len(rs)]
        one = {r["config"]["seed"]: r["fd"] for r in groups.get((teacher, variant, 1), [])}
        if k > 1 and all(r["config"]["seed"] in one for r in rs):
            claims[f"{name}_beats_its_one_step_student"] = [sum(r["fd"] < one[r["config"]["seed"]] for r in rs),
                                                             len(rs)]
        if variant == "alternating" and k in REQUIRED_MM_STEPS:
            if teacher == "learned":
                targets[f"{name}_beats_teacher_ddim"] = beat_ddim == len(rs)
            targets[f"{name}_beats_teacher_ancestral"] = beat_anc == len(rs)
    for teacher, m in many.items():
        if m:
            per_seed = m["per_seed"]
            lines.append(f"| {teacher} | 50-step teacher DDIM | 50 | — | {_ms([r['fd'] for r in per_seed])} | — | "
                         f"{_ms([r['mode_tv'] for r in per_seed])} | {_ms([r['nll'] for r in per_seed])} | | | | | |")
    return "\n".join(lines), targets, claims, rows


CLAIMS = (("beats_teacher_ddim", "beats the teacher's DDIM at the same k"),
          ("beats_teacher_ancestral", "beats the teacher's ancestral sampler at the same k"),
          ("beats_its_one_step_student", "beats the same variant's 1-step student (multistep vs one-step)"),
          ("beats_teacher_ddim50", "beats the teacher's 50-step DDIM (the paper's headline)"))


def claims_table(claims: dict) -> str:
    """Seeds on which each claim holds (paired per seed), per teacher and variant, at every k: "3/3" is a claim
    reproduced at that k; "—" where it does not apply (the 1-step student against itself)."""
    ks = sorted({int(k.split("_k")[1].split("_")[0]) for k in claims}, reverse=True)
    head = " | ".join(f"{v} k = {', '.join(map(str, ks))}" for v in MM_VARIANTS)
    lines = [f"| claim (seeds where it holds) | teacher | {head} |", "| --- | --- |" + " --- |" * len(MM_VARIANTS)]
    for key, text in CLAIMS:
        for teacher in MM_TEACHERS:
            cells = []
            for variant in MM_VARIANTS:
                got = [claims.get(f"mm_{variant}_k{k}_{teacher}_{key}") for k in ks]
                cells.append(", ".join("—" if g is None else f"{g[0]}/{g[1]}" for g in got))
            if any(c.replace("—", "").replace(",", "").strip() for c in cells):
                lines.append(f"| {text} | {teacher} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emd_section(runs: list):
    """The EMD-vs-VSD table, its targets and rows, from the runs' results."""
    groups = {}
    for r in runs:
        groups.setdefault((r["config"]["dataset"], r["config"]["method"]), []).append(r)
    lines = ["| testbed | method | mode TV | modes covered | precision | iterations to TV ≤ 0.05 (per seed) "
             "| CPU s to TV ≤ 0.05 (per seed) | recall per mode (mean) | iterations | CPU s | wall s |",
             "|" + " --- |" * 11]
    targets, rows = {}, []
    for (ds, method), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["config"]["seed"])
        recall = [round(_mean(v), 2) for v in zip(*[r["recall"] for r in rs])]
        to_tv = [r["iterations_to_tv"] for r in rs]
        lines.append(f"| {ds} | {method} | {_ms([r['mode_tv'] for r in rs])} | "
                     f"{_ms([r['modes_covered'] for r in rs], '{:.2g}')} | {_ms([r['precision'] for r in rs])} | "
                     f"{_per_seed(to_tv)} | "
                     f"{_per_seed([r['cpu_seconds_to_tv'] for r in rs], '{:.0f}')} | {recall} | "
                     f"{rs[0]['iterations']} | "
                     f"{_ms([r['cpu_seconds'] for r in rs], '{:.0f}')} | {_ms([r['seconds'] for r in rs], '{:.0f}')} |")
        rows.append({"dataset": ds, "method": method, "seeds": [r["config"]["seed"] for r in rs],
                     "mode_tv": [r["mode_tv"] for r in rs], "modes_covered": [r["modes_covered"] for r in rs],
                     "iterations_to_tv": to_tv, "cpu_seconds_to_tv": [r["cpu_seconds_to_tv"] for r in rs],
                     "recall": recall, "iterations": rs[0]["iterations"],
                     "cpu_seconds": [r["cpu_seconds"] for r in rs]})
    by = {(r["dataset"], r["method"]): r for r in rows}
    inf = float("inf")
    if ("2d4", "emd") in by and ("2d4", "vsd") in by:
        e = [inf if v is None else v for v in by[("2d4", "emd")]["iterations_to_tv"]]
        v = [inf if v is None else v for v in by[("2d4", "vsd")]["iterations_to_tv"]]
        targets["emd_2d4_reaches_tv_0.05_in_fewer_iterations_than_vsd"] = max(e) < inf and _mean(e) < _mean(v)
        ec = [inf if x is None else x for x in by[("2d4", "emd")]["cpu_seconds_to_tv"]]
        vc = [inf if x is None else x for x in by[("2d4", "vsd")]["cpu_seconds_to_tv"]]
        targets["emd_2d4_reaches_tv_0.05_in_less_cpu_time_than_vsd (paper: equal wall time)"] = (
            max(ec) < inf and _mean(ec) < _mean(vc))
    if ("8d8", "emd") in by and ("8d8", "vsd") in by:
        targets["emd_8d8_covers_more_modes_than_vsd"] = (
            _mean(by[("8d8", "emd")]["modes_covered"]) > _mean(by[("8d8", "vsd")]["modes_covered"]))
    return "\n".join(lines), targets, rows


def plot_mm(runs, path):
    """FD against training CPU seconds, one panel per (variant, teacher), one line per run, the teacher's
    same-step samplers as horizontal lines."""
    plt = pyplot()
    teachers = [t for t in MM_TEACHERS if any(r["config"]["teacher"] == t for r in runs)]
    variants = [v for v in MM_VARIANTS if any(r["config"]["variant"] == v for r in runs)]
    fig, axes = plt.subplots(len(variants), len(teachers), figsize=(5.2 * len(teachers), 3.8 * len(variants)),
                             squeeze=False)
    colors = {8: "tab:blue", 4: "tab:orange", 2: "tab:green", 1: "tab:red"}
    for row, variant in zip(axes, variants):
        for ax, teacher in zip(row, teachers):
            rs = [r for r in runs if r["config"]["teacher"] == teacher and r["config"]["variant"] == variant]
            if not rs:
                ax.axis("off")
                continue
            for k in sorted({r["config"]["steps"] for r in rs}, reverse=True):
                c = colors.get(k, "k")
                group = [r for r in rs if r["config"]["steps"] == k]
                for i, r in enumerate(group):
                    ax.plot([e["cpu_seconds"] for e in r["log"]], [e["fd"] for e in r["log"]], color=c, alpha=0.7,
                            label=f"student k={k}" if i == 0 else None)
                ax.axhline(_mean([r["teacher_ddim_fd"] for r in group]), color=c, linestyle="--", linewidth=1,
                           label=f"teacher DDIM k={k}")
                ax.axhline(_mean([r["teacher_ancestral_fd"] for r in group]), color=c, linestyle=":", linewidth=1,
                           label=f"teacher ancestral k={k}")
            ax.set_yscale("log")
            ax.set_xlabel("training CPU seconds (one thread)")
            ax.set_ylabel(f"FD to the data moments (n={rs[0]['config']['eval_samples']})")
            ax.set_title(f"moment matching ({variant}), {teacher} teacher (one line per seed)", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    savefig(fig, path, dpi=80)
    plt.close(fig)


def plot_emd(runs, path):
    plt = pyplot()
    datasets = sorted({r["config"]["dataset"] for r in runs})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(12, 3.2 * len(datasets)), squeeze=False)
    colors = {"emd": "tab:blue", "vsd": "tab:red"}
    for row, ds in zip(axes, datasets):
        for method in ("emd", "vsd"):
            group = [r for r in runs if r["config"]["dataset"] == ds and r["config"]["method"] == method]
            for i, r in enumerate(group):
                kw = dict(color=colors[method], alpha=0.7, label=method.upper() if i == 0 else None)
                its = [e["iteration"] for e in r["log"]]
                row[0].plot(its, [e["mode_tv"] for e in r["log"]], **kw)
                row[1].plot([e["cpu_seconds"] for e in r["log"]], [e["mode_tv"] for e in r["log"]], **kw)
                row[2].plot(its, [e["modes_covered"] for e in r["log"]], **kw)
        for ax, xl, yl in ((row[0], "iterations", "mode-weight TV"), (row[1], "training CPU seconds", "mode-weight TV"),
                           (row[2], "iterations", "modes covered (f_m ≥ π_m / 2)")):
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(ds, fontsize=9)
            ax.legend(fontsize=7)
        for ax in row[:2]:
            ax.set_yscale("log")
            ax.axhline(0.05, color="gray", linestyle=":")
    fig.tight_layout()
    savefig(fig, path, dpi=80)
    plt.close(fig)


def _bundle(out: str) -> dict:
    """Every result the tables come from, as one JSON-able dict (the runs' ``result.json`` without their logs, the
    50-step baselines), with the commits the runs were made at and their settings: the file the README's tables
    are generated from (``docs/results/distill.json``, ``make tables``)."""
    strip = lambda r: {k: v for k, v in r.items() if k != "log"}  # noqa: E731
    mm = [strip(r) for r in _load(os.path.join(out, "mm", "*", "result.json"))]
    emd = [strip(r) for r in _load(os.path.join(out, "emd", "*", "result.json"))]
    many = {t: (_load(os.path.join(out, "baselines", f"{t}_ddim50.json")) or [None])[0] for t in MM_TEACHERS}
    commits = sorted({str(r.get("commit")) for r in mm + emd + [m for m in many.values() if m]})
    settings = {"mm_iterations": {v: sorted({r["iterations"] for r in mm if r["config"]["variant"] == v})
                                  for v in MM_VARIANTS},
                "mm_steps": sorted({r["config"]["steps"] for r in mm}, reverse=True),
                "seeds": sorted({r["config"]["seed"] for r in mm + emd}),
                "eval_samples": sorted({r["config"]["eval_samples"] for r in mm}),
                "emd_iterations": {f"{r['config']['dataset']}": r["iterations"] for r in emd}}
    return {"command": "gmm-triton distill all", "commit": ", ".join(commits), "settings": settings,
            "mm_runs": mm, "baselines": many, "emd_runs": emd}


def render_mm(bundle: dict) -> str:
    """The moment-matching table and the claims table (Markdown) from a results bundle (:func:`_bundle`)."""
    table, _, claims, _ = mm_section(bundle["mm_runs"], bundle["baselines"])
    return table + ("\n\n" + claims_table(claims) if claims else "") + "\n"


def render_emd(bundle: dict) -> str:
    """The EMD-vs-VSD table (Markdown) from a results bundle."""
    return emd_section(bundle["emd_runs"])[0] + "\n"


def write_report(out: str) -> dict:
    """Tables (``OUT/tables.md``), ``OUT/summary.json`` (the target checks, the claims, and the results bundle the
    README's tables are generated from) and the two summary plots."""
    bundle = _bundle(out)
    _, mm_targets, mm_claims, mm_rows = mm_section(bundle["mm_runs"], bundle["baselines"])
    _, emd_targets, emd_rows = emd_section(bundle["emd_runs"])
    tables = "## Moment matching (digits, D = 256)\n\n" + render_mm(bundle) + "\n## EMD vs VSD\n\n" + render_emd(bundle)
    targets = {**mm_targets, **emd_targets}
    tables += "\n## Targets\n\n" + "\n".join(f"- {k}: {'met' if v else 'NOT met'}" for k, v in targets.items()) + "\n"
    atomic_write(os.path.join(out, "tables.md"), lambda f: f.write(tables.encode()))
    mm_runs = _load(os.path.join(out, "mm", "*", "result.json"))
    emd_runs = _load(os.path.join(out, "emd", "*", "result.json"))
    if mm_runs:
        plot_mm(mm_runs, os.path.join(out, "distill_mm_fd.png"))
    if emd_runs:
        plot_emd(emd_runs, os.path.join(out, "distill_emd_modes.png"))
    summary = {"targets": targets, "claims": mm_claims, "mm": mm_rows, "emd": emd_rows, "tables": tables, **bundle}
    write_json(summary, os.path.join(out, "summary.json"))
    # the README's tables come from a committed copy of this file (docs/results/distill.json, make tables)
    write_json(bundle, os.path.join(out, "distill.json"))
    return summary


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m gmm_triton.lab.distill.report DIR (the folder `gmm-triton distill all` wrote)")
    print(write_report(sys.argv[1])["tables"], end="")
