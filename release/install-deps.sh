#!/usr/bin/env bash
# Install what smolpack needs on a Debian/Ubuntu machine: system packages from
# release/apt-packages.txt, then smolpack itself (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    missing=$(while read -r pkg; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || echo "$pkg"
    done < release/apt-packages.txt)
    if [ -n "$missing" ]; then
        echo "==> apt-get install $(echo $missing)" >&2
        $SUDO apt-get update -qq
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
fi
echo "==> pip install -e .[test]" >&2
python3 -m pip install -q -e '.[test]' 2>&1 | grep -v -E "^WARNING: Running pip as|^\[notice\]" || true
