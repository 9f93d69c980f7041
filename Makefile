# Every habit of the project in one place. PYTHON may point at any venv.
PYTHON ?= .venv/bin/python

.PHONY: venv test test-python test-versions test-wheel test-trio-floor conformance build debug sanitize leaks lint docs demo bench bench-quick clean

venv:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test,uvloop]' ruff mypy

test:            ## the whole suite, as CI runs it
	$(PYTHON) -m pytest

test-python:     ## the suite with the pure-Python core only
	GREENBACK_LOOP_NO_EXTENSIONS=1 $(PYTHON) -m pytest

test-versions:   ## the whole suite on CPython 3.12 and 3.13 (pyenv) and 3.14, 3.15 (Debian's packages)
	bash .ci/versions.sh 3.12 3.13 3.14 3.15

test-trio-floor: ## on the floors (Trio 0.26.0, anyio 4.4.0, greenlet 3.0.0, uvloop 0.19.0), as CI runs it
	python3 -m venv .venv-trio-floor && .venv-trio-floor/bin/pip install -q -e '.[test]' 'trio==0.26.0' 'anyio==4.4.0' 'greenlet==3.0.0' 'uvloop==0.19.0'
	.venv-trio-floor/bin/pytest -q tests/test_trio.py tests/test_any_library.py tests/test_tree_portals.py tests/test_await.py tests/test_portal.py tests/test_lifecycle.py
	.venv-trio-floor/bin/python -m tests.conformance.run_greenback_suite --loop trio

test-wheel:      ## the sdist and both wheels, built, installed in fresh venvs and tested
	PYTHON=$(PYTHON) bash .ci/wheel.sh

conformance:     ## CPython's test_asyncio on our loops and policy, both cores, vs plain asyncio
	$(PYTHON) -m tests.conformance.run_test_asyncio

build:           ## (re)build the C core in place
	$(PYTHON) setup.py build_ext --inplace --force

debug:           ## the C core at -O0 -g3 with assertions, in place
	GREENBACK_LOOP_DEBUG_BUILD=1 $(PYTHON) setup.py build_ext --inplace --force

sanitize:        ## the whole suite against an ASan+UBSan build (in a temp copy)
	$(PYTHON) -m pytest tests/test_sanitizers.py

leaks:           ## the refleak scenarios
	$(PYTHON) -m pytest tests/test_leaks.py

lint:
	$(PYTHON) -m ruff check greenback_loop tests benchmarks
	$(PYTHON) -m ruff format --check greenback_loop tests benchmarks
	$(PYTHON) -m mypy

docs:
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

demo:
	$(PYTHON) -m greenback_loop.demo

bench:           ## the full benchmark run; refreshes docs/_generated/
	$(PYTHON) -m benchmarks --rst docs/_generated/benchmarks_table.rst --plot docs/_generated/benchmark_ratios.png

bench-quick:     ## proves every case still runs (CI does this in the suite)
	$(PYTHON) -m benchmarks --quick

clean:
	rm -rf build dist *.egg-info docs/_build .pytest_cache .mypy_cache .ruff_cache
