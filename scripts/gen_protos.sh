#!/usr/bin/env bash
# Regenerates service/_proto from protos/ with the pinned grpcio-tools.
# `scripts/gen_protos.sh --check` fails if the committed stubs are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
want="1.85.1"
have=$($PY -c "import importlib.metadata as m; print(m.version('grpcio-tools'))")
[ "$have" = "$want" ] || { echo "grpcio-tools $want required, found $have" >&2; exit 1; }

# the protoc plugins (protoc-gen-mypy...) live next to that python
export PATH="$(dirname "$($PY -c 'import sys; print(sys.executable)')"):$PATH"

out=service/_proto
gen() {
  local dest=$1
  rm -rf "$dest" && mkdir -p "$dest"
  $PY -m grpc_tools.protoc -I protos \
    --python_out="$dest" --grpc_python_out="$dest" --mypy_out="$dest" --mypy_grpc_out="$dest" \
    protos/semcache/v1/semcache.proto
  # generated modules import each other as `semcache.v1...`; make that package-relative
  sed -i 's/^from semcache\.v1 import/from service._proto.semcache.v1 import/' "$dest"/semcache/v1/*.py "$dest"/semcache/v1/*.pyi
  touch "$dest/__init__.py" "$dest/semcache/__init__.py" "$dest/semcache/v1/__init__.py"
}

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  gen "$tmp/_proto"
  if ! diff -r -x __pycache__ "$tmp/_proto" "$out" >/dev/null; then
    echo "service/_proto is stale: run scripts/gen_protos.sh and commit the result" >&2
    diff -r -x __pycache__ "$tmp/_proto" "$out" | head -40 >&2
    exit 1
  fi
  echo "generated stubs are up to date"
else
  gen "$out"
  echo "regenerated $out"
fi
