#!/usr/bin/env bash
# Prepare .whl/: the Python 3.12 manylinux wheels a GPU machine without farm's dependencies needs
# (one with torch, onnx, onnxruntime, typer, rich, psutil, py-cpuinfo, nvidia-ml-py, pyyaml,
# pillow and msgpack, as the borrowed H200's image has) to run the whole farm through a local Ray.
#
# Ray's wheel is 79 MB; without ray/jars/ (the Java workers farm never starts) it is about 46 MB,
# so the folder fits a 64 MiB transfer. The versions are this checkout's .venv's, so both ends run
# the same code. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.whl
# click, requests (and requests' own four): Ray's dependencies (`ray start` and `import ray` use them)
# that no package of the image requires; attrs: jsonschema's and referencing's.
PACKAGES=(ray pydantic pydantic-core annotated-types typing-inspection sqlalchemy alembic mako
          jsonschema jsonschema-specifications referencing rpds-py attrs onnxconverter-common torchao
          click requests urllib3 idna charset-normalizer certifi)
# Wanted where this checkout's venv has them, skipped where it does not: SQLAlchemy 2.1 no longer
# installs greenlet (only its asyncio extension needs it), so a fresh clone's .venv lacks it.
OPTIONAL=(greenlet)
if [[ ! -x "$PY" ]]; then
  echo "device-wheels: $PY not found: run scripts/bootstrap.sh first (the wheels are pinned to its versions)" >&2
  exit 2
fi
mkdir -p "$OUT"
pins=()
for name in "${PACKAGES[@]}" "${OPTIONAL[@]}"; do
  if version=$("$PY" -c "from importlib.metadata import version; print(version('$name'))" 2>/dev/null); then
    pins+=("$name==$version")
  elif [[ " ${OPTIONAL[*]} " == *" $name "* ]]; then
    echo "device-wheels: $name is not installed in $PY's environment; not needed, skipped" >&2
  else
    echo "device-wheels: $name is not installed in $PY's environment: run scripts/bootstrap.sh dev" >&2
    exit 2
  fi
done
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d "$OUT" "${pins[@]}"

# Repack Ray without its Java jars, and without their lines in RECORD so pip still verifies the rest.
ray_wheel=$(ls "$OUT"/ray-*.whl | head -n 1)
if unzip -Z1 "$ray_wheel" | grep "^ray/jars/" > /dev/null; then  # (not grep -q: it would close the pipe under pipefail)
  work=$(mktemp -d)
  unzip -q "$ray_wheel" -d "$work"
  rm -rf "$work"/ray/jars
  record=$(ls "$work"/ray-*.dist-info/RECORD)
  grep -v "^ray/jars/" "$record" > "$record.new" && mv "$record.new" "$record"
  rm "$ray_wheel"
  (cd "$work" && zip -q -r -X "$OLDPWD/$ray_wheel" .)
  rm -rf "$work"
fi
du -ch "$OUT"/*.whl | tail -n 1
