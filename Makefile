# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel on this machine; on a CUDA host: make TORCH='torch>=2.4' demo
TORCH ?= torch==2.13.0
OUT ?= results/demo

.PHONY: setup models demo lint test clean

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
	$(VENV)/bin/guide-engine verify $(OUT)/run
	@echo "demo results: $(OUT)/samples.png, $(OUT)/run/before_after.png, $(OUT)/run/losses.png, $(OUT)/run/report.html (open it in a browser), $(OUT)/run/report.json"

lint: setup
	$(VENV)/bin/ruff check .

# Triton kernels run on CPU tensors through the interpreter in the tests.
test: lint models
	TRITON_INTERPRET=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache
