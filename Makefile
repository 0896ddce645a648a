# `make demo` and `make test` each set up .venv on a fresh machine (tools/bootstrap.sh), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmm-triton-stamp
# The Triton kernels run on a CPU machine through the interpreter; on a GPU they compile for it.
HAS_CUDA = $(shell $(PY) -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)
TEST_ENV = HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.cache/inductor

.PHONY: demo test test-slow test-integrations bench distill evidence evidence-quick clean contract tables

$(STAMP): pyproject.toml setup.py requirements-dev.txt requirements-nodeps.txt tools/bootstrap.sh $(wildcard csrc/*.cpp csrc/*.h)
	./tools/bootstrap.sh
	@touch $@

# `slow` tests (the > 2^31-element step, ~8.6 GB of RAM; the distillation acceptance, about an hour) run only in test-slow
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra --benchmark-disable -m "not slow and not integrations"

# against third-party snapshots (shared/vendor/): ComfyUI with our node package, and diffusers' own scheduler and
# pipeline tests with our schedulers swapped in (integrations/diffusers/run.py); their packages go in --no-deps
INTEG_STAMP := $(VENV)/.gmm-triton-integrations-stamp
$(INTEG_STAMP): $(STAMP) requirements-integrations.txt requirements-torchvision.txt
	missing=$$($(PY) tools/missing_requirements.py requirements-integrations.txt); \
	if [ -n "$$missing" ]; then $(PY) -m pip install -q --no-deps $$missing; fi
	rm -rf .cache/site-torchvision
	$(PY) -m pip install -q --no-deps --target .cache/site-torchvision -r requirements-torchvision.txt
	@touch $@

test-integrations: $(INTEG_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra --benchmark-disable -m integrations
	$(TEST_ENV) $(PY) integrations/diffusers/run.py --quick --check --jobs 3

test-slow: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra --benchmark-disable -m slow

demo: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli demo

# the distillation tables (README): learned teacher, moment matching (both variants, k = 8, 4, 2, 1), EMD vs VSD, 3 seeds
# each; 63 runs, about an hour on 2 cores with the teacher already trained (docs/results/distill.json: per-run times)
distill: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli distill all --out gmm_triton_out/distill --workers 2

# DDIM vs DDIM-GMM on real digits (MNIST-5k) with two trained diffusers UNets: trains, sweeps, writes docs/evidence/
# and the README's evidence section; resumable (gmm_triton_out/evidence); ~35 min on 2 quiet cores (~4000 CPU s)
evidence: $(STAMP)
	$(TEST_ENV) OMP_NUM_THREADS=1 $(PY) -m gmm_triton.cli evidence run --workers 2 --readme README.md

# the same pipeline on a tiny UNet (seconds; what the tests run), into gmm_triton_out/evidence-quick
evidence-quick: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli evidence run --quick --workers 1 --out gmm_triton_out/evidence-quick/out \
		--results gmm_triton_out/evidence-quick/results

bench: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli bench $(if $(filter 1,$(HAS_CUDA)),,--device cpu)

# the result tables of README.md and benchmarks/RESULTS.md, from the committed run outputs in docs/results/
# (tests/test_tables.py fails when a document differs from them)
tables: $(STAMP)
	$(PY) -m gmm_triton.tools.tables

# csrc/contract.h is generated from gmm_triton/contract.py (tests/test_contract.py checks they agree)
contract: $(STAMP)
	$(PY) -c 'import gmm_triton.contract as c; print(c.header(), end="")' > csrc/contract.h

clean:
	rm -rf $(VENV) build .cache gmm_triton/_C*.so *.egg-info
