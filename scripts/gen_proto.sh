#!/usr/bin/env bash
# Generates the Python wire code from proto/ into OUT.
# usage: gen_proto.sh PYTHON OUT [--check COMMITTED]
# With --check, generates into OUT and fails if it differs from COMMITTED.
set -euo pipefail
python=$1 out=$2
mkdir -p "$out"
"$python" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/sandbox/v1/*.proto
# protoc names modules after the proto path (sandbox/v1/...); ours live in one flat
# private package, so flatten the tree and make the cross-imports relative.
mv "$out"/sandbox/v1/* "$out"/
rm -rf "$out"/sandbox
sed -i 's/^from sandbox\.v1 import /from . import /' "$out"/*.py "$out"/*.pyi
touch "$out"/__init__.py
if [ "${3:-}" = "--check" ]; then
  if ! diff -r -x __pycache__ "$out" "$4"; then
    echo "generated proto code is stale: run 'make proto' and commit the result" >&2
    exit 1
  fi
fi
