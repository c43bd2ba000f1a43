# neurorecon: `make reproduce` runs the notebooks, `make test` runs pytest + nbval. Both set up .venv first.
PROFILE ?= demo
CONFIG ?=
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Installs the lock (exact versions, requirements/lock-$(TORCH).txt) by default: TORCH=cuda is PyPI's Linux torch
# (a CUDA build; it also runs on CPU), TORCH=cpu takes torch from PyTorch's CPU wheel index. LOCK=0 installs the
# ranges of pyproject.toml instead, with torch from TORCH_SPEC. Each mode has its own stamp, so switching reinstalls.
LOCK ?= 1
TORCH ?= cuda
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
LOCKFILE := requirements/lock-$(TORCH).txt
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neurorecon-installed-$(if $(filter 1,$(LOCK)),lock-$(TORCH),ranges)

.PHONY: reproduce seeds test test-gpu test-browser bench dryrun venv clean-home

venv: $(STAMP)

$(STAMP): pyproject.toml $(if $(filter 1,$(LOCK)),$(LOCKFILE))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(LOCK),1)
	$(PY) -m pip install --quiet -r $(LOCKFILE)
	$(PY) -m pip install --quiet --no-deps -e .
else
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
endif
	rm -f $(VENV)/.neurorecon-installed*
	touch $(STAMP)

## Run the numbered notebooks in order (PROFILE=demo|smoke|full; CONFIG=your run config YAML); completed stages are skipped.
reproduce: $(STAMP)
	$(PY) -m neurorecon.cli reproduce --profile $(PROFILE) $(if $(CONFIG),--config $(abspath $(CONFIG)))

## The demo chain for several simulator seeds (SEEDS=0,1,2), then the spread of its findings (benchmarks/seeds_*).
SEEDS ?= 0,1,2
seeds: $(STAMP)
	$(PY) -m neurorecon.cli seeds --profile $(PROFILE) --seeds $(SEEDS) $(if $(CONFIG),--config $(abspath $(CONFIG)))

## pytest on the package, then every notebook under nbval in the smoke profile, in a temporary home.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not browser and not gpu" tests
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  NEURORECON_HOME=$$tmp/home NEURORECON_FIGURES=$$tmp/figures NEURORECON_PROFILE=smoke \
	  $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

## The smoke chain on a real GPU with fp16 and bf16 frozen weights (a few minutes; skipped with a line without CUDA).
test-gpu: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -rs -m gpu tests/gpu

## JupyterLab in headless Chromium (Debian chromium + chromium-driver, installed here when apt is available).
test-browser: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null; }
	$(PY) -m pytest -q -p no:cacheprovider -m browser -s tests/browser

bench: $(STAMP)
	$(PY) benchmarks/run.py

## The full profile at real sizes on this CPU: random weights in the real formats, a real-geometry NSD tree,
## notebooks 01-08 with 1-2 steps; per-stage time, memory, parameters, FLOPs -> benchmarks/dryrun.csv (~37 GB disk).
dryrun: $(STAMP)
	$(PY) -m neurorecon.dryrun

clean-home:
	rm -rf neurorecon_home
