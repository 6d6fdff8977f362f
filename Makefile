# Developer entry points. `make demo` and `make test` are the README's two commands;
# both install what they need first (release/install-deps.sh, once per checkout).
PYTHON ?= python3
SMOLPACK = $(PYTHON) -m smolpack

.PHONY: demo test unit e2e lint bench guest deps

.deps-installed: pyproject.toml release/apt-packages.txt release/install-deps.sh
	release/install-deps.sh
	touch $@

deps: .deps-installed

# Build the example pack from examples/hello (busybox rootfs, no network) and run it.
demo: .deps-installed
	examples/make-busybox-rootfs.sh examples/hello/rootfs
	mkdir -p out
	$(SMOLPACK) create -o out/hello.smolmachine examples/hello
	$(SMOLPACK) inspect out/hello.smolmachine
	$(SMOLPACK) verify out/hello.smolmachine
	$(SMOLPACK) run out/hello.smolmachine

test: .deps-installed
	$(PYTHON) -m pytest -q

unit: .deps-installed
	$(PYTHON) -m pytest -q -m "not vm"

e2e: .deps-installed
	$(PYTHON) -m pytest -q -m vm

lint:
	ruff check smolpack tests bench
	ruff format --check smolpack tests bench

bench: .deps-installed
	$(PYTHON) bench/bench_payload_open.py
	$(PYTHON) bench/bench_embed.py

guest:
	$(MAKE) -C guest
