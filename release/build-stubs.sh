#!/usr/bin/env bash
# Build the launcher stub for THIS host into release/dist/stubs/<target>/smolstub.
# PyInstaller is not a cross-compiler: run this once on each host of the matrix
# (linux-x86_64, linux-aarch64, macos-arm64; see workflows/release.yml), then gather the
# three files into smolpack/_stubs/<target>/smolstub before building the wheel, so that
# `smolpack create --target T` finds every host's stub wherever smolpack is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
target=$(python3 -c 'from smolpack.stub_build import host_target; print(host_target())')
out="release/dist/stubs/$target/smolstub"
python3 -m smolpack stub build --force -q -o "$out"
if [ "$(uname -s)" = Darwin ]; then
    # The launcher runs libkrun in-process: it needs the hypervisor entitlement. Ad-hoc
    # signing here; `smolpack create` re-signs every tool after embedding its payload.
    codesign --force --sign - --entitlements release/entitlements.plist "$out"
fi
"$out" --smol-version
echo "$out"
