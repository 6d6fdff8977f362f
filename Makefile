# Developer entry points. `make demo` and `make test` are the README's two commands;
# both install what they need first (release/install-deps.sh, once per checkout).
PYTHON ?= python3
SMOLPACK = $(PYTHON) -m smolpack

.PHONY: demo test unit e2e lint bench guest stub deps

.deps-installed: pyproject.toml release/apt-packages.txt release/install-deps.sh
	release/install-deps.sh
	touch $@

deps: .deps-installed

# Pack examples/wordfreq (a busybox rootfs made from the host's static busybox: no network)
# into ONE executable, out/wordfreq, then run it as a user would.
demo: .deps-installed
	examples/make-busybox-rootfs.sh examples/wordfreq/rootfs
	mkdir -p out
	$(SMOLPACK) create -o out/wordfreq examples/wordfreq
	out/wordfreq --smol-info
	out/wordfreq -n 5 < README.md

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
	$(PYTHON) bench/bench_stages.py
	$(PYTHON) bench/bench_launcher.py
	$(PYTHON) bench/bench_memory.py
	$(PYTHON) bench/bench_pack_size.py
	$(PYTHON) bench/bench_tool.py
	$(PYTHON) bench/bench_restore.py
	$(PYTHON) bench/bench_payload_open.py
	$(PYTHON) bench/bench_embed.py
	$(PYTHON) bench/bench_krun_prestart.py

stub: .deps-installed
	$(SMOLPACK) stub build

guest:
	$(MAKE) -C guest
