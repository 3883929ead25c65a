#!/usr/bin/env bash
# Generates the Python message code from proto/ into OUT (the public, versioned
# `sandbox_client.protocol.v1` package). No grpc stubs: client and server build their
# method tables from the service descriptor (sandbox_client/protocol/service.py).
# usage: gen_proto.sh PYTHON OUT [--check COMMITTED]
# With --check, generates into OUT and fails if it differs from COMMITTED.
set -euo pipefail
python=$1 out=$2
mkdir -p "$out"
"$python" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" \
  proto/sandbox/v1/*.proto
# protoc names modules after the proto path (sandbox/v1/...); ours live in the
# versioned package itself, so flatten the tree.
mv "$out"/sandbox/v1/* "$out"/
rm -rf "$out"/sandbox
cat > "$out"/__init__.py <<'PY'
"""Generated from proto/sandbox/v1/*.proto by scripts/gen_proto.sh; do not edit."""
PY
if [ "${3:-}" = "--check" ]; then
  if ! diff -r -x __pycache__ "$out" "$4"; then
    echo "generated proto code is stale: run 'make proto' and commit the result" >&2
    exit 1
  fi
fi
