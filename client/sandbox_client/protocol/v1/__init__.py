"""Generated from proto/sandbox/v1/*.proto by scripts/gen_proto.sh; do not edit."""
