VENV ?= .venv
DEMO_FLAGS ?=
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test lint bench clean check-escnn

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		echo "note: no chromium on PATH (apt install chromium): the prompting page's browser tests will skip"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/medpeft demo --output runs/demo $(DEMO_FLAGS)

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: venv
	$(PY) benchmarks/train_step.py

# escnn pins numpy < 2, so its comparison runs in its own environment (needs the package registries).
check-escnn:
	test -x .venv-escnn/bin/python || python3 -m venv .venv-escnn
	.venv-escnn/bin/pip install -q -c constraints.txt torch==2.13.0
	.venv-escnn/bin/pip install -q "numpy<2" scipy joblib sympy autograd pymanopt requests
	.venv-escnn/bin/pip install -q --no-deps escnn lie_learn  # py3nj (escnn's optional CG solver) needs Fortran
	.venv-escnn/bin/pip install -q --no-deps -e .
	.venv-escnn/bin/python scripts/check_steerable_escnn.py --patch 4 --bases 4

clean:
	rm -rf runs .pytest_cache
