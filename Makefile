# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0   # the CPU wheel on this machine; on a CUDA host: make TORCH='torch>=2.4' ...
OUT ?= results/demo
export TRITON_INTERPRET ?= 1

.PHONY: setup models demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

models: setup
	$(VENV)/bin/guide-engine models fetch

demo: models
	$(VENV)/bin/guide-engine sample --seeds 0-15 --out $(OUT)/samples.png
	rm -rf $(OUT)/run $(OUT)/run.partial
	$(VENV)/bin/guide-engine unlearn --seed 0 --out $(OUT)/run
	@echo "demo results: $(OUT)/"

test: models
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache
