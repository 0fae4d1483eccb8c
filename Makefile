# make demo    : set up .venv (idempotent), build partdist, run the main job: synthetic data ->
#                train AlignedReID on the CPU -> evaluate (global / DMLI / re-ranked) -> pictures
# make test    : set up .venv (idempotent), build partdist, run the test suite
# make test-fast : the same without the tests marked slow, on every core (pytest-xdist; under a minute on 2 cores)
# make bench   : the microbenchmarks (DMLI, mining, neighborhood differences)
# make bench-market : Market-1501-size local distances and re-ranking (long)
# make cuda-check : compile the CUDA kernels out of tree with .venv's CUDA torch (no GPU needed) and smoke-test the import
# make sanitize : build the CPU kernels with ASan+UBSan and run the op tests under them
# make build   : set up .venv and build partdist's CPU kernels (does nothing when nothing changed; see below)
# make rebuild : a fresh editable install (after changing PARTDIST_* build variables)
# make gpu-check : on a GPU machine (no venv, $(PYTHON) with a CUDA torch): build for the GPU present,
#                  whole test suite (fails on any skipped CUDA test), compute-sanitizer, benchmarks on
#                  cuda + cpu with the GPU targets -> $(OUT)/report.md + report.json. STAGE=build|test|
#                  sanitize|bench (comma-separated) or all; DRYRUN=1 runs every stage on a CPU (tiny sizes); PACK=1
#                  moves the logs into one archive beside the report
# make docs   : the documentation site (MkDocs: docs/ + mkdocs.yml -> site/; API pages from the
#                docstrings); any warning fails the build. Its examples run in make test (tests/test_docs.py)
# make lint   : ruff check of the Python code and clang-format check of csrc/ (no changes made)
# make lint-cpp : clang-format check of csrc/ (.clang-format), no changes made
PYTHON ?= python3
# One venv serves make test, cuda-check and sanitize: its torch is the CUDA 13.0 build
# (requirements-dev.txt says why), which also runs on machines without a GPU.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all venv build rebuild test test-fast demo bench bench-market cuda-check sanitize gpu-check lint lint-py lint-cpp docs clean

all: test

$(VENV)/.stamp: requirements-dev.txt requirements-engines.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-engines.txt
	touch $@

venv: $(VENV)/.stamp

# `make build` when nothing changed does nothing (stamps in .venv). The editable install
# (package metadata, the `partdist` command) runs when the venv, setup.py or pyproject.toml
# changed; pip compiles every C++ file then, in a temporary folder. After a change under csrc/
# alone, `setup.py build_ext --inplace` rebuilds the extension in place, its objects kept in
# build/temp.*: ninja recompiles the changed files and those including a changed header (the
# first such call compiles everything once). The build variables (PARTDIST_CUDA, ...) are
# not seen by the stamps: `make rebuild` after changing them. The venv's torch is a CUDA build,
# so setup.py would compile the CUDA kernels too when nvcc is found (minutes); the test build
# leaves them out (PARTDIST_CUDA=0) unless PARTDIST_CUDA is set (`make rebuild PARTDIST_CUDA=1`);
# make cuda-check compiles them out of tree.
CSRC := $(shell find csrc -type f 2>/dev/null)
BUILD_ENV = PARTDIST_CUDA=$${PARTDIST_CUDA:-0}

$(VENV)/.editable: $(VENV)/.stamp setup.py pyproject.toml
	$(BUILD_ENV) $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# $? names .editable when pip has just compiled everything: nothing is left to build then.
$(VENV)/.built: $(VENV)/.editable $(CSRC)
	@case " $? " in *" $(VENV)/.editable "*) ;; *) \
	  echo "$(BUILD_ENV) $(PY) setup.py -q build_ext --inplace"; $(BUILD_ENV) $(PY) setup.py -q build_ext --inplace || exit 1 ;; esac
	touch $@

build: $(VENV)/.built

rebuild:
	rm -f $(VENV)/.editable $(VENV)/.built
	$(MAKE) build

test: build
	$(PY) -m pytest tests -q

# one worker per core (pytest-xdist), each test file on one worker (its module fixtures made
# once); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= auto
test-fast: build
	$(PY) -m pytest tests -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# make demo replaces its own earlier output in runs/demo (the command alone refuses to)
DEMO_FLAGS ?= --overwrite
demo: build
	$(VENV)/bin/partdist demo --out runs/demo $(DEMO_FLAGS)

bench: build
	$(PY) benchmarks/bench_dmli.py
	$(PY) benchmarks/bench_mining.py
	$(PY) benchmarks/bench_neighborhood.py
	$(PY) benchmarks/bench_parts.py

# Market-1501-size evaluation (local q x g distances, re-ranking): ~10 min on 2 CPU cores
bench-market: build
	$(PY) benchmarks/bench_market.py

# Builds out of tree so the CPU build in the source tree is left alone, then imports the
# CUDA build and runs the op tests on the CPU with it (CUDA tests skip without a GPU).
# Architectures: CUDA_CHECK_ARCHS (two, one with PTX, to keep the CI compile time down; a
# plain build without a GPU compiles setup.py's DEFAULT_CUDA_ARCHS, five of them).
CUDA_CHECK_ARCHS ?= 8.0;9.0+PTX
cuda-check: venv
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-$(CUDA_CHECK_ARCHS)}" \
	  PARTDIST_CUDA=1 tools/build_out_of_tree.sh $(PY) build/cuda-check
	cd build/cuda-check/run && PYTHONPATH=$(CURDIR)/build/cuda-check/lib $(CURDIR)/$(PY) -c \
	  "import torch, partdist; assert torch.version.cuda; print('partdist CUDA build imports; torch', torch.__version__, 'cuda', torch.version.cuda, 'CUDA kernels registered:', torch._C._dispatch_has_kernel_for_dispatch_key('partdist::dmli', 'CUDA'))"
	cd build/cuda-check/run && PYTHONPATH=$(CURDIR)/build/cuda-check/lib $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(addprefix $(CURDIR)/,$(OP_TESTS))

# CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (out of tree), the op
# tests run under them; any report aborts the run (halt_on_error). The CUDA kernels are left
# out (PARTDIST_CUDA=0): ASan checks host code; the venv's CUDA torch loads under it, and
# without a GPU no CUDA driver is loaded.
# the tests of the compiled ops (run with the CUDA build and under the sanitizers)
OP_TESTS ?= $(addprefix tests/ops/,test_dmli.py test_dmli_variants.py test_neighborhood.py test_mining.py test_properties.py test_stability.py test_part_dist.py test_dsr.py test_cuda_emulation.py)
SANITIZE_TESTS ?= $(OP_TESTS)
sanitize: venv
	PARTDIST_CUDA=0 PARTDIST_SANITIZE=1 tools/build_out_of_tree.sh $(PY) build/sanitize
	cd build/sanitize/run && \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PARTDIST_SANITIZED=1 ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  PYTHONPATH=$(CURDIR)/build/sanitize/lib $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider \
	  $(addprefix $(CURDIR)/,$(SANITIZE_TESTS))

# make lint: ruff (pyproject.toml: F, E9, B, I) over the Python code, clang-format over csrc/
lint: lint-py lint-cpp

lint-py: venv
	$(VENV)/bin/ruff check .

CPP_SOURCES = $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu')
lint-cpp: venv
	$(VENV)/bin/clang-format --dry-run --Werror $(CPP_SOURCES)

# The docs tools come with requirements-dev.txt (the venv stamp). mkdocstrings reads the sources
# statically, so no build is needed; --strict turns every warning (a broken link or anchor, a
# docstring it cannot parse, a page missing from the nav) into a failure.
docs: venv
	$(VENV)/bin/mkdocs build --strict --site-dir site

# No venv and no dependency on the targets above: the GPU machine's python3 already holds a CUDA torch.
STAGE ?= all
OUT ?= gpu-report
gpu-check:
	$(PYTHON) tools/gpu_check.py --stage $(STAGE) --out $(OUT) $(if $(DRYRUN),--dry-run) $(if $(ALLOW_CPU),--allow-cpu) \
	  $(if $(TESTS),--tests "$(TESTS)") $(if $(BENCHES),--benches $(BENCHES)) \
	  $(if $(SANITIZE_TOOLS),--sanitize-tools $(SANITIZE_TOOLS)) $(if $(STAGE_TIMEOUT),--stage-timeout $(STAGE_TIMEOUT)) \
	  $(if $(TOTAL_TIMEOUT),--total-timeout $(TOTAL_TIMEOUT)) \
	  $(if $(BUILD_MODE),--build-mode $(BUILD_MODE)) $(if $(PACK),--pack) $(GPU_CHECK_ARGS)

clean:
	rm -rf build site partdist/*.so *.egg-info $(VENV)/.editable $(VENV)/.built
