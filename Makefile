# Developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3

.PHONY: demo test lint bench

demo:
	$(PYTHON) -m smolpack demo

test:
	$(PYTHON) -m pytest -q

lint:
	ruff check smolpack stub tests bench
	ruff format --check smolpack stub tests bench

bench:
	$(PYTHON) bench/bench_payload_open.py
