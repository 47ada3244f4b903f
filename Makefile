# Set-up and everyday commands. Each target creates (or reuses) the virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
# CPU build from this machine's local wheel; GPU users: make install TORCH_SPEC="torch" (see README).
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: otherwise pip resolves it through transformers and may pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m neumeta_hf.demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
