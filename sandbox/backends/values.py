"""Turns a run's last-expression value into the JSON the wire carries."""

from __future__ import annotations

import json
from typing import Any


def _reject(value: Any) -> Any:
    raise TypeError(type(value).__name__)


_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, default=_reject)


def value_to_json(value: Any) -> str:
    """JSON for `value`; anything JSON cannot hold exactly (sets, bytes, NaN, objects,
    structures too deep to walk) becomes its repr() string, itself JSON-encoded."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply to show>"
    return json.dumps(text, ensure_ascii=False)
