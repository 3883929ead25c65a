"""One-line failure messages, fit for an LLM prompt: the same shape from every backend."""

from __future__ import annotations

from sandbox_client import Frame

_MAX_CHARS = 500


def one_line(text: str, frames: tuple[Frame, ...] = ()) -> str:
    """The first line of `text`, then where it happened: `(line N: source)`."""
    text = first_line(text)
    if frames:
        where = frames[-1]
        source = where.source_line.strip()
        text += f" (line {where.line}" + (f": {source})" if source else ")")
    return text


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 3] + "..."
