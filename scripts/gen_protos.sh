#!/usr/bin/env bash
# Regenerates the stubs from protos/ with the pinned grpcio-tools, into both
# service/_proto (the server) and clients/python/semcache_client/_proto (the
# thin client distribution, which must not import `service`).
# `scripts/gen_protos.sh --check` fails if either copy of the committed stubs is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
want="1.85.1"
have=$($PY -c "import importlib.metadata as m; print(m.version('grpcio-tools'))")
[ "$have" = "$want" ] || { echo "grpcio-tools $want required, found $have" >&2; exit 1; }

# the protoc plugins (protoc-gen-mypy...) live next to that python
export PATH="$(dirname "$($PY -c 'import sys; print(sys.executable)')"):$PATH"

# google/rpc/status.proto (imported by semcache.proto) ships in googleapis-common-protos;
# google/protobuf/*.proto comes with grpc_tools itself
google_protos=$($PY -c 'import os, google.rpc; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')

# each output directory, and the package its generated modules import each other through
targets=(
  "service/_proto service._proto"
  "clients/python/semcache_client/_proto semcache_client._proto"
)

gen() {
  local dest=$1 package=$2
  rm -rf "$dest" && mkdir -p "$dest"
  $PY -m grpc_tools.protoc -I protos -I "$google_protos" \
    --python_out="$dest" --grpc_python_out="$dest" --mypy_out="$dest" --mypy_grpc_out="$dest" \
    protos/semcache/v1/semcache.proto
  # generated modules import each other as `semcache.v1...`; make that package-relative
  sed -i "s/^from semcache\.v1 import/from ${package}.semcache.v1 import/" \
    "$dest"/semcache/v1/*.py "$dest"/semcache/v1/*.pyi
  touch "$dest/__init__.py" "$dest/semcache/__init__.py" "$dest/semcache/v1/__init__.py"
}

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  stale=0
  for target in "${targets[@]}"; do
    read -r out package <<<"$target"
    gen "$tmp/$out" "$package"
    if ! diff -r -x __pycache__ "$tmp/$out" "$out" >/dev/null; then
      echo "$out is stale: run scripts/gen_protos.sh and commit the result" >&2
      diff -r -x __pycache__ "$tmp/$out" "$out" | head -40 >&2 || true
      stale=1
    fi
  done
  [ "$stale" = 0 ] || exit 1
  echo "generated stubs are up to date"
else
  for target in "${targets[@]}"; do
    read -r out package <<<"$target"
    gen "$out" "$package"
    echo "regenerated $out"
  done
fi
