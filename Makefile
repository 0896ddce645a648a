# `make demo` and `make test` each set up .venv on a fresh machine (tools/bootstrap.sh), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmm-triton-stamp
# The Triton kernels run on a CPU machine through the interpreter; on a GPU they compile for it.
HAS_CUDA = $(shell $(PY) -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)
TEST_ENV = HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.cache/inductor

.PHONY: demo test test-slow bench distill clean contract tables

$(STAMP): pyproject.toml setup.py requirements-dev.txt tools/bootstrap.sh $(wildcard csrc/*.cpp csrc/*.h)
	./tools/bootstrap.sh
	@touch $@

# `slow` tests (the > 2^31-element step, ~8.6 GB of RAM; the distillation acceptance, ~19 min) run only in test-slow
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra --benchmark-disable -m "not slow"

test-slow: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra --benchmark-disable -m slow

demo: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli demo

# the distillation tables (README): learned teacher, moment matching, EMD vs VSD, 3 seeds each; ~19 min on 2 quiet cores
distill: $(STAMP)
	$(TEST_ENV) $(PY) -m gmm_triton.cli distill all --out gmm_triton_out/distill --workers 2

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
