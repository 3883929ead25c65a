"""Turns a run's last-expression value into the JSON the wire carries. One implementation
for both backends: the container's runner computes the value with the same function, so
it lives in the frame schema the runner ships with (sandbox.backends.container.protocol,
standard library only; importing it does not import the container backend)."""

from __future__ import annotations

from sandbox.backends.container.protocol import value_to_json

__all__ = ["value_to_json"]
