"""The blur rows of two `gmm-triton inspect --results` files side by side, as the markdown table of
benchmarks/RESULTS.md ("Issue 19: the blur step's padded sizes"): form, registers, spill, SASS per element, per-pipe %
of copy on an H100 (bound), roofline % and their ratio, per case.

    python benchmarks/blur_before_after.py BEFORE_COMMIT [AFTER_FILE]

BEFORE_COMMIT: a commit whose docs/results/inspect_sm90a.json is the "before"; AFTER_FILE: default the working tree's.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMS = {"_blur_step_kernel": "plane", "_blur_kron_kernel": "kron", "_blur_grid_kernel": "grid"}


def blur_rows(results: dict) -> dict:
    return {r["case"]: r for r in results["rows"] if "blur" in r["case"] and r["kernel"] in FORMS}


def cell(r) -> str:
    if r is None:
        return "–"
    roof, pipe = r["roofline_pct_copy"], r["pipe_pct_copy"]
    ratio = f"{100 * pipe['H100'] / roof['H100']:.0f} %" if roof else "–"
    return (f"{FORMS[r['kernel']]}, {r['registers']} regs, {r['spill_bytes']} B, {r['sass_per_element']:.1f}, "
            f"{pipe['H100']:.1f} ({r['bound']}), {roof['H100'] if roof else '–'}, {ratio}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    before = json.loads(subprocess.run(["git", "-C", str(ROOT), "show", f"{argv[0]}:docs/results/inspect_sm90a.json"],
                                       check=True, capture_output=True, text=True).stdout)
    after = json.loads(Path(argv[1] if len(argv) > 1 else ROOT / "docs/results/inspect_sm90a.json").read_text())
    old, new = blur_rows(before), blur_rows(after)
    print("| case | before: form, regs, spill, SASS/elem, per-pipe % H100 (bound), roofline %, ratio | after: same |")
    print("|---|---|---|")
    for case, r in new.items():
        print(f"| {case} | {cell(old.get(case))} | {cell(r)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
