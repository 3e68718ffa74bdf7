# mmvmamba: set-up, demo and tests. Every target is idempotent and works on a fresh machine with
# nothing but Python >= 3.10, pip and a C++ compiler (mmcv's ops are compiled from source once and
# the wheel is cached in $(WHEEL_CACHE), shared by every checkout on the machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
WHEEL_CACHE ?= $(HOME)/.cache/mmvmamba/wheels
MMCV_VERSION := 2.1.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= work_dirs/digits_demo

.PHONY: install install-gpu mmcv demo test test-kernels test-gpu clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements.txt requirements/*.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools<81" wheel ninja
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(MAKE) --no-print-directory mmcv
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements.txt
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation --no-deps -e .
	$(PY) -c "import mmvmamba, mmcv.ops; print('mmvmamba', mmvmamba.__version__, 'on mmcv', mmcv.__version__)"
	@touch $@

# Build mmcv with its compiled ops once per (python, torch) pair, then reuse the cached wheel.
mmcv:
	@set -e; \
	tag=$$($(PY) -c "import sys, torch; print(f'cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split(\"+\")[0]}')"); \
	dir=$(WHEEL_CACHE)/$$tag; mkdir -p $$dir; \
	whl=$$(ls $$dir/mmcv-$(MMCV_VERSION)-*.whl 2>/dev/null | head -n1); \
	if [ -z "$$whl" ]; then \
	  echo "building mmcv $(MMCV_VERSION) with ops from source (about 11 min on 2 cores); wheel cached in $$dir"; \
	  MMCV_WITH_OPS=1 MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(PIP) wheel -q --no-deps --no-build-isolation mmcv==$(MMCV_VERSION) -w $$dir; \
	  whl=$$(ls $$dir/mmcv-$(MMCV_VERSION)-*.whl | head -n1); \
	else echo "reusing cached $$whl"; fi; \
	$(PIP) install -q -c $(CONSTRAINTS) "$$whl"

# CUDA machines: keep the CUDA torch that is installed, build mmcv with its CUDA ops
# (OFFLINE=DIR: a folder of wheels and the mmcv sdist, for a machine without a registry).
install-gpu:
	PYTHON=$(PYTHON) VENV=$(VENV) WHEEL_CACHE=$(WHEEL_CACHE) tools/install_gpu.sh $(if $(OFFLINE),--offline $(OFFLINE))

demo: install
	$(PY) tools/demo.py --work-dir $(DEMO_DIR)

test: install
	$(PY) -m pytest tests -q

# the tests that need CUDA (skipped by `make test` on a machine without a GPU)
test-gpu:
	TRITON_INTERPRET=0 $(PY) -m pytest tests -q -m gpu

test-kernels: install
	$(PY) -m pytest tests/kernels -q

clean-venv:
	rm -rf $(VENV)
