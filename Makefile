# Everything a fresh Linux machine needs, installed idempotently, then the job.
#   make test      lint + the test suite
#   make pretrain  the quickstart FCMAE pretraining (see README)
# Each install step leaves a stamp in .venv/ and is skipped when its inputs did not change.

PYTHON_BIN ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
PINS       := requirements/pins.txt
PIP_FLAGS  := --disable-pip-version-check -q -c $(PINS)
STAMPS     := $(VENV)/.stamps
# MinkowskiEngine builds with CUDA only when torch sees a GPU; Hopper needs arch 9.0.
ME_ENV     := SETUPTOOLS_USE_DISTUTILS=stdlib MAX_JOBS=$${MAX_JOBS:-$$(nproc)} \
              TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}"
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test lint format pretrain bench clean-venv

install: $(STAMPS)/project

$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then \
	  echo "[setup] installing the OpenBLAS headers (Debian libopenblas-dev)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas-dev; \
	fi
	@touch $@

$(PY):
	@echo "[setup] creating $(VENV) with $(PYTHON_BIN)"
	@$(PYTHON_BIN) -m venv $(VENV)

$(STAMPS)/torch: $(PINS) | $(PY)
	@mkdir -p $(STAMPS)
	@echo "[setup] installing torch, torchvision, numpy and build tools (pinned)"
	@$(PIP) install $(PIP_FLAGS) torch torchvision numpy ninja setuptools
	@touch $@

$(STAMPS)/minkowski: $(STAMPS)/system $(STAMPS)/torch
	@if $(PY) -m pip show MinkowskiEngine >/dev/null 2>&1; then \
	  echo "[setup] MinkowskiEngine already installed"; \
	else \
	  echo "[setup] building MinkowskiEngine from source (8-20 min on 2 cores; cached afterwards)"; \
	  $(ME_ENV) $(PIP) install $(PIP_FLAGS) --no-build-isolation --no-deps MinkowskiEngine \
	    > $(VENV)/minkowski-build.log 2>&1 \
	    || { tail -n 40 $(VENV)/minkowski-build.log; \
	         echo "[setup] MinkowskiEngine build failed; full log: $(VENV)/minkowski-build.log"; \
	         exit 1; }; \
	fi
	@touch $@

$(STAMPS)/project: $(STAMPS)/minkowski pyproject.toml $(PINS)
	@echo "[setup] installing fcmae (editable) with its dependencies"
	@$(PIP) install $(PIP_FLAGS) -e '.[dev]'
	@$(PY) -c "import sparse_ops; sparse_ops.import_minkowski()"
	@touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

pretrain: install
	$(VENV)/bin/fcmae-pretrain $(ARGS)

bench: install
	$(VENV)/bin/fcmae-bench $(ARGS)

clean-venv:
	rm -rf $(VENV)
