# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 from the public index is, on Linux, the CUDA build (several GB). For the CPU build give PyTorch's
# own CPU wheel index: make TORCH_INDEX=<that index's URL> demo. On a CUDA host: make TORCH='torch>=2.4' demo
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
OUT ?= results/demo

.PHONY: setup dev models demo lint test clean

# setup: the engine alone (what `make demo` needs); dev: also the test tools (triton, dlib-bin, the serving and
# Triton clients: Linux wheels), for `make test`
setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[serve]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
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

lint: dev
	$(VENV)/bin/ruff check .

# Triton kernels run on CPU tensors through the interpreter in the tests.
test: lint models
	TRITON_INTERPRET=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache
