# cocoa-lens: every target builds .venv from nothing when it is missing (pip, offline model loading).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cocoa-lens-installed
CONFIG ?= experiments/default.yaml

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache
export PYTHONUNBUFFERED := 1

.PHONY: study test browser-test lab bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name cocoa-lens --display-name "cocoa-lens" >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/cocoa-lens study --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

# the compare widgets in JupyterLab, driven in headless Chromium (Debian's /usr/bin/chromium; nothing downloaded)
browser-test: $(STAMP)
	$(PY) -m pytest -q -m browser tests/browser

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/capture_overhead.py
	$(PY) benchmarks/parallel_probing.py

clean:
	rm -rf $(VENV) .numba_cache
