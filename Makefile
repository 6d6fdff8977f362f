# Developer entry points. `make demo` and `make test` are the README's two commands;
# both install what they need first (release/install-deps.sh, once per checkout).
PYTHON ?= python3
SMOLPACK = $(PYTHON) -m smolpack

.PHONY: demo test unit e2e lint bench guest stub deps kvm-test kvm-bench l1

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

# CI runs this before `make test` (.ci/run); ~3 s warm, ~10 s with a cold mypy cache.
lint: .deps-installed
	$(PYTHON) -m ruff check smolpack stub tests bench
	$(PYTHON) -m ruff format --check smolpack stub tests bench
	$(PYTHON) -m mypy --strict smolpack stub

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

# The krun engine needs a real KVM; ours is kvm_pvm. `kvm-test` boots L1 machines with a
# nested KVM (QEMU TCG emulating AMD SVM: tests/kvm_lane/l1.py), two side by side, and runs
# there the shared e2e tests under krun, a restore stress loop, and a restore on another
# CPU model. The launcher stub is built here first (PyInstaller under emulation takes minutes).
kvm-test: .deps-installed
	$(SMOLPACK) stub build -q -o out/stubs/linux-x86_64/smolstub
	SMOLPACK_STUB_DIR=$(CURDIR)/out/stubs $(PYTHON) -m pytest -q -s -p no:cacheprovider \
		tests/kvm_lane/lane_checks.py

# Run any command in such an L1: make l1 CMD='python3 -m smolpack doctor'
l1: .deps-installed
	$(PYTHON) tests/kvm_lane/l1.py -- sh -c '$(CMD)'

# bench/bench_krun.py inside an L1 (krun restore vs cold boot vs QEMU restore, one run).
kvm-bench: .deps-installed
	$(PYTHON) tests/kvm_lane/l1.py -- $(PYTHON) bench/bench_krun.py
