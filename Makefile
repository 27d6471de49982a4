# Two commands on a fresh machine: `make demo` and `make test`.  Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so that nothing pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/torchpint demo --out reports/demo

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest

bench: venv
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) reports runs build *.egg-info src/*.egg-info
