# Every habit of the project in one place. PYTHON may point at any venv.
PYTHON ?= .venv/bin/python

.PHONY: venv test test-python lint docs demo bench clean

venv:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test,uvloop]' ruff mypy

test:            ## the whole suite, as CI runs it
	$(PYTHON) -m pytest

test-python:     ## the suite with the pure-Python core only
	GREENBACK_LOOP_NO_EXTENSIONS=1 $(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check greenback_loop tests
	$(PYTHON) -m ruff format --check greenback_loop tests
	$(PYTHON) -m mypy

docs:
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

demo:
	$(PYTHON) -m greenback_loop.demo

clean:
	rm -rf build dist *.egg-info docs/_build .pytest_cache .mypy_cache .ruff_cache
