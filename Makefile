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

# The embedded default end to end: digits, base MLP, hypernetwork, sweep and a sampled network in outputs/.
demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py --config training/configs/digits_mlp.yaml

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
