#!/bin/sh
# The build steps of the harness image (compose/Dockerfile runs this; so do the tests, outside
# Docker). Usage: sh compose/image-build.sh PREFIX   (from the repository root)
#   PREFIX/venv   the project installed (not editable) with its pinned dependencies
#   PREFIX/gen    the generated gRPC stubs (PYTHONPATH=PREFIX/gen)
# PIP_INSTALL_ARGS adds pip options (the tests pass --no-deps --no-build-isolation and provide
# the dependencies themselves, since a test must not download them).
set -eu
PREFIX=${1:?usage: sh compose/image-build.sh PREFIX}
PIP_INSTALL_ARGS=${PIP_INSTALL_ARGS:-}

[ -x "$PREFIX/venv/bin/python" ] || python -m venv "$PREFIX/venv"
PY="$PREFIX/venv/bin/python"
# shellcheck disable=SC2086  # PIP_INSTALL_ARGS is a list of options
"$PY" -m pip install --no-cache-dir $PIP_INSTALL_ARGS .

rm -rf "$PREFIX/gen" && mkdir -p "$PREFIX/gen"
"$PY" -m grpc_tools.protoc -Iprotos --python_out="$PREFIX/gen" --pyi_out="$PREFIX/gen" \
  --grpc_python_out="$PREFIX/gen" $(find protos -name '*.proto')
find "$PREFIX/gen" -type d -exec touch {}/__init__.py \;
rm -f "$PREFIX/gen/__init__.py"

# Smoke test, away from the sources (`python -m` would import ./services): every installed
# service imports, stubs included, and parses its command line.
PREFIX_ABS=$(cd "$PREFIX" && pwd)
for service in router registry pool audit cost enginesim common.healthcheck devtools.seed_stack; do
  (cd / && PYTHONPATH="$PREFIX_ABS/gen" "$PREFIX_ABS/venv/bin/python" -m "services.$service" --help >/dev/null)
done
echo "image build steps done: $PREFIX"
