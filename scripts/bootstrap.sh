#!/usr/bin/env bash
# Set up farm in ./.venv on a fresh clone. `scripts/bootstrap.sh` installs what `farm sweep` needs
# (with TensorRT-RTX and the dashboard); `scripts/bootstrap.sh dev` adds the test tools, the
# headless Chromium the dashboard's browser test drives and the PostgreSQL server the store's tests
# start (Debian's packages, as root). Safe to run again: it only adds what is missing.
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
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # Debian keeps initdb and pg_ctl off PATH, under /usr/lib/postgresql/VERSION/bin (tests/postgres.py looks there).
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
  if (( ${#missing[@]} )); then
    if [[ $(id -u) -eq 0 ]]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
        || echo "bootstrap: could not install ${missing[*]}; the tests that need them will fail" >&2
    else
      echo "bootstrap: install Debian's ${missing[*]} (sudo apt-get install ${missing[*]}) for the tests" >&2
    fi
  fi
fi
