#!/usr/bin/env bash
# Set up farm in ./.venv on a fresh clone. `scripts/bootstrap.sh` installs what `farm sweep` needs
# (with TensorRT-RTX and the dashboard); `scripts/bootstrap.sh dev` adds the test tools and the
# headless Chromium the dashboard's browser test drives. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="rtx,dashboard"
if [[ "${1:-}" == "dev" ]]; then
  extras="$extras,dev"
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
# tensorrt-stubs depends on the datacenter `tensorrt` wheel, which cannot download here; the stubs
# alone are enough for mypy to check the datacenter API names.
if [[ "${1:-}" == "dev" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs>=10.13,<11"
  if ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "bootstrap: could not install chromium; the dashboard browser test will fail" >&2
    else
      echo "bootstrap: install Debian's chromium (sudo apt-get install chromium) for the dashboard browser test" >&2
    fi
  fi
fi
