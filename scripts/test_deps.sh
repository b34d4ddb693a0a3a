#!/usr/bin/env bash
# What the tests need besides the venv, from Debian's packages: redis-server
# (the rate-limit tests start their own), openssl (the TLS test makes a
# certificate), chromium (the live page's browser test) and nodejs with npm
# (the openai npm package's test and @grpc/proto-loader's; they run `npm ci` in
# tests/node themselves), protobuf-compiler and protoc-gen-go (the proto's Go compile test). Installs the missing ones when it can (root with apt-get);
# otherwise says so, and those tests skip: pytest -rs lists every skip and why.
# Called by `make test` (and so by .ci/run).
set -uo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v protoc-gen-go >/dev/null || missing+=(protoc-gen-go)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test-deps: installing ${missing[*]} (Debian packages) for the tests that use them"
  if apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "test-deps: warning: could not install ${missing[*]}" >&2
else
  echo "test-deps: warning: ${missing[*]} missing; installing them needs root and apt-get" >&2
fi
echo "test-deps: their tests will skip; the end of the pytest run lists each skip and why" >&2
