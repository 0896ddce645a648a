#!/usr/bin/env bash
# The one call on a GPU machine: build the C++ twin against the machine's torch, run the GPU tests and
# benchmarks, then the benchmark table (python -m gmm_triton.tools.bench --device cuda), then the CPU suite as CI runs
# it if time is left. Everything lands in OUTDIR (8 files, at most 2 levels deep); the table is printed last.
#
#   bash benchmarks/run_gpu.sh OUTDIR [COMMIT]        (from a copy of the repository, on the GPU machine)
#
# An offline machine without diffusers needs its wheel in .whl/ of the copy (README, "Running on a GPU").
# COMMIT (or $GMM_TRITON_COMMIT) names the commit in meta.json when the copy on the machine has no .git.
# Budget, in the expected case: build ~1 min, GPU tests ~2 min (among them the GPU-vs-C++-twin noise check on the
# issue-19 launches: layouts, ragged D, device offsets), issue 19's launches timed ~1 min (benchmarks/cliffs_gpu.py:
# channels_last, mixed layouts, ragged D, mixtures, CLD, blur), table ~3 min: under 8.5 minutes in all; each stage
# has its own timeout (build 150 s, GPU tests 180 s, cliffs 90 s, table 240 s and no later than 480 s in) so the
# call ends inside the device's 10-minute limit with whatever was measured.
set -uo pipefail
OUT=${1:?usage: benchmarks/run_gpu.sh OUTDIR [COMMIT]}
mkdir -p "$OUT/bench" "$OUT/cliffs"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export GMM_TRITON_COMMIT=${2:-${GMM_TRITON_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}}
PY=${PYTHON:-python3}
END=${GMM_RUN_GPU_SECONDS:-510}   # seconds: the table must end 30 s before, the CPU suite starts only with 60 s left
LOG="$OUT/setup.log"
say() { echo "[run_gpu +${SECONDS}s] $*" | tee -a "$LOG"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing wheels: $(cd .whl && ls -- *.whl | tr '\n' ' ')"
  SITE=$(mktemp -d)   # outside OUTDIR: only results come back from there
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl >>"$LOG" 2>&1 \
    || say "wheel install failed (see setup.log)"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "commit: $GMM_TRITON_COMMIT"
  nvidia-smi
  $PY - <<'EOF'
import sys, torch, triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| triton", triton.__version__)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch")
try:
    import diffusers
    print("diffusers", diffusers.__version__)
except ImportError as e:
    print("diffusers: not importable:", e)
EOF
} >>"$LOG" 2>&1
if ! $PY -c "import diffusers" >/dev/null 2>&1; then
  say "diffusers is not importable, and gmm_triton needs it: carry .whl/ holding its wheel. Stopping."
  cat "$LOG"
  exit 2
fi

say "building gmm_triton._C in place"
if ! timeout 150 $PY setup.py build_ext --inplace >>"$LOG" 2>&1; then
  say "setup.py build_ext failed; trying pip install -e"
  timeout 150 $PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1
fi
$PY -c "import gmm_triton.ops as o; print('CPU backend:', o.cpu_backend())" >>"$LOG" 2>&1
tail -n 1 "$LOG"

say "GPU tests and benchmarks: pytest -m cuda tests benchmarks"
timeout 180 $PY -m pytest -m cuda tests benchmarks -q -raP -p no:cacheprovider \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name >"$OUT/pytest_cuda.log" 2>&1
rc=$?
say "pytest -m cuda: rc=$rc | $(tail -n 1 "$OUT/pytest_cuda.log")"

say "issue 19's launches: python benchmarks/cliffs_gpu.py"
timeout 90 $PY benchmarks/cliffs_gpu.py "$OUT/cliffs" >"$OUT/cliffs.log" 2>&1
say "cliffs: rc=$?"

say "benchmark table: python -m gmm_triton.tools.bench --device cuda"
limit=$((END - 30 - SECONDS)); [ "$limit" -gt 240 ] && limit=240; [ "$limit" -lt 60 ] && limit=60
timeout "$limit" $PY -m gmm_triton.tools.bench --device cuda --out "$OUT/bench" >"$OUT/bench.log" 2>&1
rc=$?
say "bench: rc=$rc (0: all measured; 1: some cells failed, see bench.log; 124: timed out, bench.csv has the rows so far)"

left=$((END - SECONDS))
if [ "$left" -gt 60 ]; then
  say "CPU suite as CI runs it (no GPU visible, Triton interpreter), ${left}s at most"
  CUDA_VISIBLE_DEVICES= timeout "$left" $PY -m pytest -q -ra -p no:cacheprovider --benchmark-disable tests benchmarks \
    >"$OUT/pytest_cpu.log" 2>&1
  rc=$?
  say "CPU suite: rc=$rc | $(tail -n 1 "$OUT/pytest_cpu.log")"
else
  echo "not run: ${SECONDS}s used, too little time left" >"$OUT/pytest_cpu.log"
fi

say "done in ${SECONDS}s: $OUT/{setup.log,pytest_cuda.log,cliffs.log,bench.log,pytest_cpu.log,bench/,cliffs/}"
echo
grep -E "^(FAILED|ERROR)" "$OUT/pytest_cuda.log" | head -n 20
grep -E "max \|z_gpu - z_cpp\|" "$OUT/pytest_cuda.log" | head -n 12   # the noise check (-raP keeps passed tests' output)
sed -n '/^copy bandwidth/,$p' "$OUT/cliffs.log"
grep -E "^error in " "$OUT/bench.log" | head -n 10
head -n 1 "$OUT/bench.log"
# the table last, compact (the full one is in bench.log and bench/bench.csv)
[ -s "$OUT/bench/bench.csv" ] || { echo "no bench.csv: see bench.log"; tail -n 5 "$OUT/bench.log"; exit 1; }
$PY - "$OUT/bench/bench.csv" <<'EOF'
import csv, sys
def f(v, d=1):
    return f"{float(v):.{d}f}" if v not in ("", None) else "-"
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
print(f"{'shape':>12} {'dtype':>4} {'variant':>13} {'µs':>9} {'%copy':>5} {'×diff':>5} {'×comp':>5}")
for r in rows:
    if r["error"]:
        print(f"{r['shape']:>12} {r['dtype']:>4} {r['variant']:>13} error: {r['error'][:60]}")
        continue
    print(f"{r['shape']:>12} {r['dtype']:>4} {r['variant']:>13} {f(r['median_us']):>9} {f(r['pct_copy'], 0):>5} "
          f"{f(r['ratio_diffusers'], 2):>5} {f(r['ratio_compile'], 2):>5}")
EOF
sed -n '/^=== end to end/,/^$/p' "$OUT/bench.log"
